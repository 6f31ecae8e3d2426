"""create end to end on synthetic Windows images, in the real helper VM, checked from outside.

Each image is an MBR disk whose NTFS partition is made by mkntfs and filled
through a host ntfs-3g mount with a Windows tree and REAL hives written with
hivex (tests/wintree.py). After ``create`` the test mounts the instance's
NTFS read-only itself and reads back every file, XML element, INI key and
registry value the tasks were to set, and the sizes of the grown partition
and filesystem (ntfsresize --info).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
from lxml import etree

from tasks._windows import ini, scripts, unattend
from tests import helpervm, wintree
from tests.osenv import create_env, install, monitor_messages, task_events

pytestmark = pytest.mark.vm

MiB = 1 << 20
SECTOR = 512
IMAGE_SIZE = wintree.IMAGE_SIZE
DISK_SIZE = 160 * MiB
NS = {"u": unattend.UNATTEND_NS}
PASSWORD = 's3cr3t "pass" %PATH% ^&|'
KEY = "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture(scope="module")
def helper_dir():
    return helpervm.ensure_helper()


@pytest.fixture
def osdef(tmp_path, helper_dir):
    definition = install(tmp_path / "inst")
    definition.configure(HELPER_DIR=str(helper_dir), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(definition.image_dir))
    return definition


def create(osdef, tmp_path: Path, image: str, name: str = "win1.example.test", **params: str):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(DISK_SIZE)
    env = create_env(
        name,
        disk,
        OSP_IMG_ID=f"local://{image}",
        OSP_IMG_FORMAT="diskdump",
        **{f"OSP_{k.upper()}": v for k, v in params.items()},
    )
    start = time.monotonic()
    result = osdef.run("create", env)
    print(f"create took {time.monotonic() - start:.1f} s")
    no_leftovers(disk, osdef.tmpdir)
    return disk, result


def no_leftovers(disk: Path, tmpdir: Path) -> None:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(disk) in line]
    assert not list(tmpdir.iterdir())


def volume_size(loop: str) -> int:
    info = run("ntfsresize", "--info", "--force", "--no-progress-bar", loop).stdout
    line = next(ln for ln in info.splitlines() if ln.startswith("Current volume size"))
    return int(line.split(":")[1].split()[0])


def is_dirty(loop: str) -> bool:
    proc = subprocess.run(["ntfsinfo", "-m", loop], capture_output=True, text=True)
    return proc.returncode != 0 and "scheduled for check" in proc.stdout + proc.stderr


def text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def sync_paths(data: bytes) -> list[str]:
    root = etree.fromstring(data)
    return [c.findtext("u:Path", namespaces=NS) for c in root.iterfind(".//u:RunSynchronousCommand", NS)]


def helper_warnings(result) -> list[str]:
    return [
        m
        for msg in monitor_messages(result.stderr)
        if msg["type"] == "image-helper" and msg["subtype"] == "warning"
        for m in msg["messages"]
    ]


def test_windows_image_with_its_own_answer_file(osdef, tmp_path):
    spec = wintree.WindowsSpec(
        setup_complete="@echo image's own setup\r\n",
        extra_files={"Users/Public/Desktop/readme.txt": b"image's readme"},
    )
    wintree.build_image(osdef.image_dir / "win10.img", spec)
    personality = json.dumps(
        [
            {"path": "/Users/Public/Desktop/README.TXT", "contents": base64.b64encode(b"injected").decode()},
            {"path": "/ProgramData/snf/id.txt", "contents": base64.b64encode(b"42").decode(), "mode": 384},
        ]
    )
    disk, result = create(
        osdef, tmp_path, "win10.img", img_passwd=PASSWORD, os_product_key=KEY, img_personality=personality
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert "Detected OSFAMILY: windows" in helper_warnings(result)
    started = [t for kind, t in task_events(monitor_messages(result.stderr)) if kind == "task-start"]
    for task in ("InstallUnattend", "DisableRemoteDesktopConnections", "FilesystemResizeAfterUmount"):
        assert task in started

    with wintree.deployed(disk, tmp_path / "check") as (root, loop, entry):
        assert entry["start"] + entry["size"] == DISK_SIZE // SECTOR - 2048  # the partition fills the disk
        assert volume_size(loop) <= IMAGE_SIZE - MiB  # online growth: Windows extends it at first boot
        assert not is_dirty(loop)
        answer = (root / "Windows/Panther/unattend.xml").read_bytes()
        assert answer.startswith(b"\xef\xbb\xbf<?xml") and b"\r\n" in answer
        assert sync_paths(answer) == [
            "cmd /c echo image's own",
            "cmd.exe /c diskpart.exe /s %WINDIR%\\SnfScripts\\ExtendFilesystem.txt",
            "cmd.exe /c %WINDIR%\\SnfScripts\\ChangePassword.cmd",
        ]
        assert unattend.shell_setup_value(answer, "amd64", "ComputerName") == "win1"
        assert unattend.shell_setup_value(answer, "amd64", "ProductKey") == KEY
        assert unattend.shell_setup_value(answer, "amd64", "TimeZone") == "UTC"  # the image's own, kept
        assert etree.fromstring(answer).nsmap["wcm"] == unattend.WCM_NS

        snf = root / "Windows/SnfScripts"
        assert (snf / "Password").read_bytes() == b"\xff\xfe" + PASSWORD.encode("utf-16-le")
        assert (
            text(snf / "ExtendFilesystem.txt") == "select disk 0\r\nselect partition 1\r\nextend filesystem\r\nexit\r\n"
        )
        change = text(snf / "ChangePassword.cmd")
        assert 'net user "Administrator" /ACTIVE:YES /EXPIRES:NEVER /PASSWORDREQ:YES\r\n' in change
        assert 'cscript.exe //nologo //B "%~dp0SetPassword.vbs"' in change
        vbs = text(snf / "SetPassword.vbs")
        assert 'users = Array("Administrator")' in vbs
        for name in ("ChangePassword.cmd", "SetPassword.vbs", "SnfSetupComplete.cmd", "ExtendFilesystem.txt"):
            assert "s3cr3t" not in text(snf / name)
        cleanup = text(snf / "SnfSetupComplete.cmd")
        assert "echo " + "X" * 200 + '> "%WINDIR%\\SnfScripts\\Password"' in cleanup
        assert 'del /f /q "%SystemDrive%\\Windows\\Panther\\unattend.xml"' in cleanup
        assert (
            'reg add "HKLM\\SYSTEM\\CurrentControlSet\\Control\\Terminal Server" /f /v fDenyTSConnections '
            "/t REG_DWORD /d 0\r\n"
        ) in cleanup
        setup_complete = text(root / "Windows/Setup/Scripts/SetupComplete.cmd")
        assert setup_complete.startswith(scripts.BEGIN_MARK + "\r\n")
        assert setup_complete.endswith("@echo image's own setup\r\n")
        assert '@rmdir /s /q "%WINDIR%\\SnfScripts"' in setup_complete

        system = root / "Windows/System32/config/SYSTEM"
        terminal = "ControlSet001\\Control\\Terminal Server"
        assert wintree.read_value(system, terminal, "fDenyTSConnections") == 1
        assert wintree.read_value(system, terminal, "fSingleSessionPerUser") == 1
        assert wintree.read_value(system, "ControlSet002\\Control\\Terminal Server", "fDenyTSConnections") == 1

        desktop = root / "Users/Public/Desktop"
        assert (desktop / "readme.txt").read_bytes() == b"injected"  # the image's spelling kept
        backups = [p for p in desktop.iterdir() if p.name.startswith("readme.txt.bak.")]
        assert len(backups) == 1 and backups[0].read_bytes() == b"image's readme"
        assert (root / "ProgramData/snf/id.txt").read_bytes() == b"42"


def test_windows_legacy_is_detected_and_grown_offline(osdef, tmp_path):
    wintree.build_image(osdef.image_dir / "xp.img", wintree.legacy_spec())
    disk, result = create(osdef, tmp_path, "xp.img", name="abcdefghijklmno", img_passwd="pw1", os_product_key=KEY)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert "Detected OSFAMILY: windows-legacy" in helper_warnings(result)
    with wintree.partition(disk) as (loop, entry):
        size = entry["size"] * SECTOR
        assert volume_size(loop) > size - 4 * MiB  # ntfsresize filled the partition
        assert is_dirty(loop)  # left for CHKDSK at first boot (no OFFLINE_NTFSRESIZE_NOCHECK)
        with wintree.ntfs_mounted(Path(loop), tmp_path / "check", readonly=True) as root:
            sysprep = text(root / "sysprep/sysprep.inf")
            assert sysprep.startswith(";SetupMgrTag\r\n")
            assert ini.ini_get(sysprep, "UserData", "ComputerName") == "abcdefghijklmno"  # 15 characters
            assert ini.ini_get(sysprep, "UserData", "ProductKey") == KEY
            assert ini.ini_get(sysprep, "GuiUnattended", "AdminPassword") == "pw1"
            assert ini.ini_get(sysprep, "GuiUnattended", "EncryptedAdminPassword") == "No"
            assert text(root / "sysprep/i386/$OEM$/CmdLines.txt") == (
                "[Commands]\r\n"
                '"cmd.exe /c %WINDIR%\\SnfScripts\\ChangePassword.cmd"\r\n'
                '"cmd.exe /c %WINDIR%\\Setup\\Scripts\\SetupComplete.cmd"\r\n'
            )
            assert text(root / "Windows/SnfScripts/ExtendFilesystem.txt") == "exit\r\n"
            cleanup = text(root / "Windows/SnfScripts/SnfSetupComplete.cmd")
            assert 'del /f /q "%SystemDrive%\\sysprep\\sysprep.inf"' in cleanup
            system = root / "Windows/System32/config/SYSTEM"
            assert wintree.read_value(system, "ControlSet001\\Control\\Terminal Server", "fDenyTSConnections") == 1


def test_windows_without_answer_file_gets_the_template_and_offline_growth(osdef, tmp_path):
    osdef.configure(
        HELPER_DIR=str(helpervm.ensure_helper()),
        HELPER_SOFT_TIMEOUT="300",
        IMAGE_DIR=str(osdef.image_dir),
        WINDOWS_TIMEZONE="tokyo standard time",
    )
    spec = wintree.WindowsSpec(version="6.1", major_number=None, unattend=None)
    wintree.build_image(osdef.image_dir / "win7.img", spec)
    props = json.dumps({"OFFLINE_NTFSRESIZE": "yes", "OFFLINE_NTFSRESIZE_NOCHECK": "yes", "USERS": "Guest"})
    disk, result = create(osdef, tmp_path, "win7.img", img_passwd="pw", img_properties=props)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    with wintree.partition(disk) as (loop, entry):
        assert volume_size(loop) > entry["size"] * SECTOR - 4 * MiB
        assert not is_dirty(loop)  # OFFLINE_NTFSRESIZE_NOCHECK cleared the mark
        with wintree.ntfs_mounted(Path(loop), tmp_path / "check", readonly=True) as root:
            answer = (root / "Windows/Panther/unattend.xml").read_bytes()
            assert unattend.shell_setup_value(answer, "amd64", "TimeZone") == "Tokyo Standard Time"
            assert unattend.shell_setup_value(answer, "amd64", "ComputerName") == "win1"
            assert unattend.shell_setup_value(answer, "amd64", "ProductKey") is None  # no os_product_key
            assert 'net user "Guest"' in text(root / "Windows/SnfScripts/ChangePassword.cmd")
            assert text(root / "Windows/SnfScripts/ExtendFilesystem.txt") == "exit\r\n"


def failure(result) -> str:
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(
    ("spec", "params", "expected"),
    [
        (wintree.WindowsSpec(image_state="IMAGE_STATE_COMPLETE"), {}, "sysprep /generalize"),
        (wintree.WindowsSpec(), {"img_properties": '{"USERS": "Admin"}'}, "User(s) Admin do not exist"),
        (wintree.WindowsSpec(), {"img_passwd_hash": "$6$abc$def"}, "password hash is not applicable"),
        (wintree.WindowsSpec(), {"dirty": "yes"}, "is dirty"),
    ],
    ids=["not-generalized", "user-substring", "password-hash", "dirty-ntfs"],
)
def test_windows_errors_are_clear(osdef, tmp_path, spec, params, expected):
    dirty = params.pop("dirty", None) is not None
    wintree.build_image(osdef.image_dir / "bad.img", spec, dirty=dirty)
    params.setdefault("img_passwd", "pw")
    if "img_passwd_hash" in params:
        params.pop("img_passwd")
    _, result = create(osdef, tmp_path, "bad.img", **params)
    assert expected in failure(result)


def test_an_unknown_timezone_fails_before_the_copy(osdef, tmp_path):
    osdef.configure(IMAGE_DIR=str(osdef.image_dir), WINDOWS_TIMEZONE="Mars Standard Time")
    wintree.build_image(osdef.image_dir / "win.img", wintree.WindowsSpec())
    disk, result = create(osdef, tmp_path, "win.img")
    assert "WINDOWS_TIMEZONE" in failure(result)
    with open(disk, "rb") as f:
        assert not any(f.read(MiB))  # nothing was copied
    env = {"OS_API_VERSION": "20", "OS_NAME": "snf-image", "OS_VARIANT": "default", "DEBUG_LEVEL": "0"}
    env.update(OSP_IMG_ID="local://win.img", OSP_IMG_FORMAT="diskdump")
    verify = osdef.run("verify", env, "parameters")
    assert verify.returncode != 0 and b"WINDOWS_TIMEZONE" in verify.stderr
