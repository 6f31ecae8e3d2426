"""Synthetic Windows roots for tests: the directory tree and REAL registry hives written with hivex.

Hives start from the hivex project's empty ``minimal`` hive
(/work/shared/fixtures/hives/minimal, or tests/data/hives/minimal) and get
the keys a test needs. The same tree serves the fake-root unit tests and,
copied into an NTFS made by mkntfs, the VM tests.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hivex

MINIMAL_HIVE_PATHS = (
    Path(__file__).resolve().parent / "data" / "hives" / "minimal",
    Path("/work/shared/fixtures/hives/minimal"),
)
MiB = 1 << 20
IMAGE_SIZE = 64 * MiB
REG_SZ = 1
REG_DWORD = 4

Value = str | int


def minimal_hive() -> Path:
    for path in MINIMAL_HIVE_PATHS:
        if path.is_file():
            return path
    raise FileNotFoundError("the hivex 'minimal' hive fixture is missing")


def make_hive(path: Path, keys: dict[str, dict[str, Value]]) -> Path:
    """A hive file at ``path`` with ``keys`` (backslash paths) holding values (str: REG_SZ, int: REG_DWORD)."""
    shutil.copyfile(minimal_hive(), path)
    path.chmod(0o644)
    h = hivex.Hivex(str(path), write=True)
    for key, values in keys.items():
        node = h.root()
        for part in key.split("\\"):
            child = h.node_get_child(node, part)
            node = child if child else h.node_add_child(node, part)
        for name, value in values.items():
            if isinstance(value, int):
                h.node_set_value(node, {"key": name, "t": REG_DWORD, "value": value.to_bytes(4, "little")})
            else:
                h.node_set_value(node, {"key": name, "t": REG_SZ, "value": (value + "\0").encode("utf-16-le")})
    h.commit(None)
    return path


def read_value(path: Path, key: str, name: str) -> Value | None:
    """A value read back with hivex (None if missing)."""
    h = hivex.Hivex(str(path))
    node = h.root()
    for part in key.split("\\"):
        node = h.node_get_child(node, part)
        if not node:
            return None
    try:
        value = h.node_get_value(node, name)
    except RuntimeError:
        return None
    vtype, _ = h.value_type(value)
    return h.value_dword(value) if vtype == REG_DWORD else h.value_string(value)


def subkeys(path: Path, key: str) -> list[str]:
    h = hivex.Hivex(str(path))
    node = h.root()
    for part in key.split("\\"):
        node = h.node_get_child(node, part)
    return [h.node_name(c) for c in h.node_children(node)]


UNATTEND_WITH_COMPONENTS = b"""\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\r
<!-- made by Windows System Image Manager -->\r
<unattend xmlns="urn:schemas-microsoft-com:unattend">\r
    <settings pass="specialize">\r
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" \
publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" \
xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\r
            <ComputerName>*</ComputerName>\r
            <TimeZone>UTC</TimeZone>\r
        </component>\r
        <component name="Microsoft-Windows-Deployment" processorArchitecture="amd64" \
publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" \
xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">\r
            <RunSynchronous>\r
                <RunSynchronousCommand wcm:action="add">\r
                    <Order>1</Order>\r
                    <Path>cmd /c echo image's own</Path>\r
                </RunSynchronousCommand>\r
            </RunSynchronous>\r
        </component>\r
    </settings>\r
    <settings pass="oobeSystem">\r
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" \
publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" \
xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">\r
            <UserAccounts>\r
                <LocalAccounts>\r
                    <LocalAccount wcm:action="add">\r
                        <Name>operator</Name>\r
                        <Group>Administrators</Group>\r
                    </LocalAccount>\r
                </LocalAccounts>\r
            </UserAccounts>\r
        </component>\r
    </settings>\r
</unattend>\r
"""

SYSPREP_INF = (
    ";SetupMgrTag\r\n"
    "[Unattended]\r\n"
    "    OemSkipEula=Yes\r\n"
    "    InstallFilesPath=C:\\sysprep\\i386\r\n"
    "\r\n"
    "[GuiUnattended]\r\n"
    "    AdminPassword=*\r\n"
    "    OEMSkipRegional=1\r\n"
    "    TimeZone=85\r\n"
    "\r\n"
    "[UserData]\r\n"
    '    FullName="Owner"\r\n'
    "    ComputerName=*\r\n"
)


@dataclass
class WindowsSpec:
    """What a synthetic Windows root holds."""

    version: str = "6.3"
    major_number: int | None = 10
    arch: str = "AMD64"
    image_state: str | None = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
    deny_ts: int | None = 0
    users: tuple[str, ...] = ("Administrator", "Guest", "DefaultAccount")
    unattend: bytes | None = UNATTEND_WITH_COMPONENTS  # at Windows/Panther/unattend.xml
    sysprep_inf: bytes | None = None  # at sysprep/sysprep.inf
    setup_complete: str | None = None  # the image's own SetupComplete.cmd
    legacy_setup: bool = False  # SystemSetupInProgress / MiniSetupInProgress = 1
    extra_files: dict[str, bytes] = field(default_factory=dict)


def legacy_spec(**changes: object) -> WindowsSpec:
    """An XP/2003-shaped spec: NT 5.2, x86, resealed, sysprep.inf."""
    values: dict[str, object] = {
        "version": "5.2",
        "major_number": None,
        "arch": "x86",
        "image_state": None,
        "unattend": None,
        "sysprep_inf": SYSPREP_INF.encode("ascii"),
        "legacy_setup": True,
    }
    values.update(changes)
    return WindowsSpec(**values)  # type: ignore[arg-type]


def make_windows_root(root: Path, spec: WindowsSpec | None = None) -> Path:
    """Lay out a Windows root in directory ``root`` (Windows\\System32\\config hives, Panther, Setup\\Scripts)."""
    spec = spec or WindowsSpec()
    config = root / "Windows" / "System32" / "config"
    config.mkdir(parents=True)
    (root / "Windows" / "Panther").mkdir()
    (root / "Windows" / "Setup" / "Scripts").mkdir(parents=True)
    (root / "Windows" / "System32" / "cmd.exe").write_bytes(b"MZ")
    environment: dict[str, Value] = {"PROCESSOR_ARCHITECTURE": spec.arch, "OS": "Windows_NT"}
    terminal: dict[str, Value] = {"fSingleSessionPerUser": 1}
    if spec.deny_ts is not None:
        terminal["fDenyTSConnections"] = spec.deny_ts
    system_keys: dict[str, dict[str, Value]] = {
        "Select": {"Current": 1, "Default": 1, "LastKnownGood": 2},
        "ControlSet001\\Control\\Session Manager\\Environment": environment,
        "ControlSet001\\Control\\Terminal Server": terminal,
        "ControlSet002\\Control\\Terminal Server": {"fDenyTSConnections": 1},
    }
    if spec.legacy_setup:
        system_keys["Setup"] = {"SystemSetupInProgress": 1, "MiniSetupInProgress": 1}
    make_hive(config / "SYSTEM", system_keys)
    version: dict[str, Value] = {"CurrentVersion": spec.version, "ProductName": "Synthetic Windows"}
    if spec.major_number is not None:
        version["CurrentMajorVersionNumber"] = spec.major_number
    software_keys: dict[str, dict[str, Value]] = {"Microsoft\\Windows NT\\CurrentVersion": version}
    if spec.image_state is not None:
        software_keys["Microsoft\\Windows\\CurrentVersion\\Setup\\State"] = {"ImageState": spec.image_state}
    make_hive(config / "SOFTWARE", software_keys)
    make_hive(config / "SAM", {f"SAM\\Domains\\Account\\Users\\Names\\{user}": {} for user in spec.users})
    if spec.unattend is not None:
        (root / "Windows" / "Panther" / "unattend.xml").write_bytes(spec.unattend)
    if spec.sysprep_inf is not None:
        (root / "sysprep").mkdir()
        (root / "sysprep" / "sysprep.inf").write_bytes(spec.sysprep_inf)
    if spec.setup_complete is not None:
        (root / "Windows" / "Setup" / "Scripts" / "SetupComplete.cmd").write_text(spec.setup_complete)
    for name, data in spec.extra_files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, **kwargs)


def wait_for_fuse(source: Path) -> None:
    """Wait until no ntfs-3g daemon serves ``source`` (it writes after umount returns)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if not [line for line in ps.splitlines() if "ntfs-3g" in line and str(source) in line]:
            return
        time.sleep(0.1)
    raise AssertionError(f"ntfs-3g still serves {source}")


@contextlib.contextmanager
def ntfs_mounted(source: Path, mountpoint: Path, readonly: bool = False) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    _run("ntfs-3g", "-o", "ro" if readonly else "rw", str(source), str(mountpoint))
    try:
        yield mountpoint
    finally:
        _run("umount", str(mountpoint))
        wait_for_fuse(source)


def build_image(
    path: Path,
    spec: WindowsSpec,
    dirty: bool = False,
    edit: Callable[[Path], None] | None = None,
    size: int = IMAGE_SIZE,
) -> Path:
    """An MBR disk image: partition 1 (type 07) from 1 MiB to the end, NTFS with the Windows tree of ``spec``.

    ``edit`` changes the mounted tree afterwards (hostile cases); ``dirty`` leaves the volume marked for a check.
    """
    part = path.with_suffix(".part")
    with open(part, "wb") as f:
        f.truncate(size - MiB)
    _run("mkntfs", "-F", "-Q", "-q", "-p", "2048", "-H", "255", "-S", "63", "-L", "Windows", str(part))
    with ntfs_mounted(part, path.parent / "build-mnt") as root:
        make_windows_root(root, spec)
        if edit is not None:
            edit(root)
    if dirty:  # ntfsresize leaves the volume marked for a check, as an unclean shutdown does
        _run("ntfsresize", "--force", "--no-progress-bar", "--size", str(size - 3 * MiB), str(part), input="")
    with open(path, "wb") as f:
        f.truncate(size)
    _run("sfdisk", "--quiet", str(path), input="label: dos\nstart=2048, type=7, bootable\n")
    _run("dd", f"if={part}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    part.unlink()
    return path


@contextlib.contextmanager
def partition(disk: Path, number: int = 1) -> Iterator[tuple[str, dict]]:
    """A read-only loop device over partition ``number`` of ``disk`` and its sfdisk entry."""
    table = json.loads(_run("sfdisk", "--json", str(disk)).stdout)["partitiontable"]
    entry = table["partitions"][number - 1]
    loop = _run(
        "losetup", "--find", "--show", "--read-only",
        "--offset", str(entry["start"] * 512), "--sizelimit", str(entry["size"] * 512), str(disk),
    ).stdout.strip()  # fmt: skip
    try:
        yield loop, entry
    finally:
        _run("losetup", "-d", loop)


@contextlib.contextmanager
def deployed(disk: Path, mountpoint: Path) -> Iterator[tuple[Path, str, dict]]:
    """Partition 1 of a deployed ``disk``, mounted read-only: (its root, its loop device, its sfdisk entry)."""
    with partition(disk) as (loop, entry), ntfs_mounted(Path(loop), mountpoint, readonly=True) as root:
        yield root, loop, entry
