"""Windows: the answer-file and INI editors, the registry decisions, and the tasks on fake Windows roots.

The roots are directory trees with REAL hives (hivex-written, tests/wintree.py);
the tasks run against them as they do against the ntfs-3g mount in the jail.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path

import pytest
from lxml import etree

from helper import detect, registry
from helper.commands import TaskError
from snf_image import windows as host_windows
from snf_image.contract.rules import PersonalityFile
from snf_image.errors import OperatorError
from tasks import (
    assign_hostname,
    change_password,
    disable_remote_desktop,
    enforce_personality,
    filesystem_resize_mounted,
    install_unattend,
)
from tasks._windows import checks, ini, scripts, unattend
from tests import wintree
from tests.fakeguest import make_ctx, warnings

NS = {"u": unattend.UNATTEND_NS, "wcm": unattend.WCM_NS}
PANTHER = "Windows/Panther/unattend.xml"


def xml(data: bytes):
    return etree.fromstring(data)


def commands(data: bytes) -> list[tuple[str, str, str]]:
    root = xml(data)
    action = f"{{{unattend.WCM_NS}}}action"
    return [
        (c.findtext("u:Order", namespaces=NS), c.findtext("u:Path", namespaces=NS), c.get(action))
        for c in root.iterfind(".//u:RunSynchronousCommand", NS)
    ]


# --- unattend.xml editor ---------------------------------------------------


def test_sync_commands_continue_the_order_and_keep_bom_crlf_comments_namespaces():
    out = unattend.add_sync_commands(wintree.UNATTEND_WITH_COMPONENTS, "amd64", [("cmd /c a", "A"), ("cmd /c b", "B")])
    assert out.startswith(b"\xef\xbb\xbf<?xml")
    assert b"\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")
    assert b"<!-- made by Windows System Image Manager -->" in out
    assert commands(out) == [
        ("1", "cmd /c echo image's own", "add"),
        ("2", "cmd /c a", "add"),
        ("3", "cmd /c b", "add"),
    ]
    root = xml(out)
    assert root.nsmap[None] == unattend.UNATTEND_NS and root.nsmap["wcm"] == unattend.WCM_NS
    assert b"ns0:" not in out and b'wcm:action="add"' in out
    assert b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"' in out  # unused declarations kept
    # idempotent: the same Path is not added twice
    assert commands(unattend.add_sync_commands(out, "amd64", [("cmd /c a", "A")])) == commands(out)


def test_a_missing_component_is_created_as_setup_wants_it():
    doc = b'<?xml version="1.0"?>\n<unattend xmlns="urn:schemas-microsoft-com:unattend"/>'
    out = unattend.set_shell_setup(doc, "x86", {"ComputerName": "vm1", "ProductKey": "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"})
    (component,) = xml(out).iterfind("u:settings[@pass='specialize']/u:component", NS)
    assert dict(component.attrib) == {
        "name": "Microsoft-Windows-Shell-Setup",
        "processorArchitecture": "x86",
        "publicKeyToken": "31bf3856ad364e35",
        "language": "neutral",
        "versionScope": "nonSxS",
    }
    assert component.findtext("u:ComputerName", namespaces=NS) == "vm1"
    assert unattend.shell_setup_value(out, "x86", "ProductKey") == "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"


def test_existing_values_are_replaced_in_the_matching_architecture_only():
    both = wintree.UNATTEND_WITH_COMPONENTS.replace(
        b'</settings>\r\n    <settings pass="oobeSystem">',
        (
            b'<component name="Microsoft-Windows-Shell-Setup" processorArchitecture="x86" '
            b'publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">'
            b'<ComputerName>*</ComputerName></component></settings>\r\n    <settings pass="oobeSystem">'
        ),
        1,
    )
    out = unattend.set_shell_setup(both, "amd64", {"ComputerName": "web1"})
    assert unattend.shell_setup_value(out, "amd64", "ComputerName") == "web1"
    assert unattend.shell_setup_value(out, "x86", "ComputerName") == "*"
    assert unattend.shell_setup_value(out, "amd64", "TimeZone") == "UTC"


def test_utf16_answer_file_stays_utf16():
    doc = '<?xml version="1.0" encoding="utf-16"?>\r\n<unattend xmlns="urn:schemas-microsoft-com:unattend"/>\r\n'
    out = unattend.set_shell_setup(doc.encode("utf-16"), "amd64", {"ComputerName": "vm1"})
    assert out.startswith(b"\xff\xfe")
    text = out[2:].decode("utf-16-le")
    assert "vm1" in text and "\r\n" in text


def test_retarget_only_when_no_component_has_the_architecture():
    out, moved = unattend.retarget_arch(wintree.UNATTEND_WITH_COMPONENTS, "x86")
    assert moved and b'processorArchitecture="amd64"' not in out
    same, moved = unattend.retarget_arch(wintree.UNATTEND_WITH_COMPONENTS, "amd64")
    assert not moved and same == wintree.UNATTEND_WITH_COMPONENTS


def test_not_an_answer_file_is_a_clear_error():
    with pytest.raises(TaskError, match="not well-formed"):
        unattend.add_sync_commands(b"<unattend", "amd64", [])
    with pytest.raises(TaskError, match="root element"):
        unattend.add_sync_commands(b"<unattend/>", "amd64", [])


# --- INI editor ------------------------------------------------------------


def test_ini_set_replaces_in_place_keeping_comments_indent_and_crlf():
    text = wintree.SYSPREP_INF
    out = ini.ini_set(text, "userdata", "ComputerName", "VM1")
    assert "    ComputerName=VM1\r\n" in out and "ComputerName=*" not in out
    assert out.startswith(";SetupMgrTag\r\n") and "\n" not in out.replace("\r\n", "")
    assert ini.ini_get(out, "UserData", "computername") == "VM1"
    assert ini.ini_get(out, "UserData", "FullName") == "Owner"


def test_ini_set_adds_keys_at_the_section_end_and_new_sections_at_the_end():
    out = ini.ini_set(wintree.SYSPREP_INF, "GuiUnattended", "EncryptedAdminPassword", "No")
    assert "    TimeZone=85\r\n    EncryptedAdminPassword=No\r\n\r\n[UserData]" in out
    out = ini.ini_set(out, "Identification", "JoinWorkgroup", "WORKGROUP")
    assert out.endswith("\r\n\r\n[Identification]\r\nJoinWorkgroup=WORKGROUP\r\n")


def test_ini_set_drops_duplicates_and_ignores_comments():
    text = "[UserData]\n; ComputerName=old\nComputerName=a\nComputerName=b\n"
    assert ini.ini_set(text, "UserData", "ComputerName", "c") == "[UserData]\n; ComputerName=old\nComputerName=c\n"


def test_cmdlines_lines_are_added_once():
    text = '[Commands]\r\n"C:\\own.cmd"\r\n'
    out = ini.ini_add_line(text, "Commands", '"cmd.exe /c x"')
    assert out == '[Commands]\r\n"C:\\own.cmd"\r\n"cmd.exe /c x"\r\n'
    assert ini.ini_add_line(out, "Commands", '"cmd.exe /c x"') == out
    assert ini.ini_add_line("", "Commands", '"x"') == '[Commands]\r\n"x"\r\n'


def test_utf16_and_bom_text_round_trip():
    for data in (
        b"\xff\xfe" + "[UserData]\r\nFullName=Zoë\r\n".encode("utf-16-le"),
        b"\xef\xbb\xbf[UserData]\r\n",
        "[UserData]\r\nOrgName=Caf\xe9\r\n".encode("cp1252"),
        b"[UserData]\n",
    ):
        text, codec = ini.decode_text(data)
        assert text.startswith("[UserData]")
        assert ini.encode_text(text, codec) == data
    assert ini.ini_codec("plain") == "utf-8" and ini.ini_codec("Zoë") == "utf-16-le-bom"


def test_ini_quote_refuses_quotes():
    assert ini.ini_quote("p w") == '"p w"'
    with pytest.raises(TaskError):
        ini.ini_quote('a"b')


# --- decisions ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "WEB-01", "abcdefghijklmno", "x_1"])
def test_computer_names_up_to_15_characters_are_accepted(name):
    assert checks.computer_name(name) == name


def test_computer_name_is_the_first_label():
    assert checks.computer_name("web1.example.org") == "web1"


@pytest.mark.parametrize("name", ["abcdefghijklmnop", "12345", "a b", "a$", "", "über"])
def test_bad_computer_names_are_refused(name):
    with pytest.raises(TaskError, match="computer name"):
        checks.computer_name(name)


def test_users_match_whole_names_without_case():
    existing = ["Administrator", "Guest"]
    assert checks.missing_users(["Admin"], existing) == ["Admin"]
    assert checks.missing_users(["administrator", "Guest"], existing) == []


@pytest.mark.parametrize(
    "state",
    [None, "IMAGE_STATE_COMPLETE", "IMAGE_STATE_UNDEPLOYABLE", "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE"],
)
def test_images_not_generalized_are_refused_naming_sysprep(state):
    with pytest.raises(TaskError, match="sysprep /generalize"):
        checks.check_image_state(state)


def test_generalized_states_pass():
    checks.check_image_state("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
    checks.check_image_state("IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT")


def test_versions():
    assert checks.nt_major("6.3", 10) == 10
    assert checks.nt_major("6.1", None) == 6
    with pytest.raises(TaskError, match="windows-legacy"):
        checks.check_family("windows", 5)
    with pytest.raises(TaskError, match="'windows'"):
        checks.check_family("windows-legacy", 10)
    assert checks.unattend_arch("AMD64") == "amd64" and checks.unattend_arch("x86") == "x86"
    with pytest.raises(TaskError):
        checks.unattend_arch("MIPS")


def test_password_scripts_never_hold_the_password():
    password = 'p@ss "w0rd" %PATH% ^&|'
    text = scripts.password_cmd(["Administrator", "web admin"]) + scripts.password_vbs(["Administrator", "web admin"])
    assert "w0rd" not in text and "PATH%" not in text
    assert 'net user "web admin" /ACTIVE:YES /EXPIRES:NEVER /PASSWORDREQ:YES\r\n' in text
    assert scripts.password_file(password) == b"\xff\xfe" + password.encode("utf-16-le")
    with pytest.raises(TaskError):
        checks.check_user_name('evil" & del')


def test_diskpart_selects_the_partition_not_a_volume():
    assert scripts.diskpart_script(2) == "select disk 0\r\nselect partition 2\r\nextend filesystem\r\nexit\r\n"


def test_rdp_restore():
    assert scripts.rdp_restore_line(0).endswith("/v fDenyTSConnections /t REG_DWORD /d 0")
    assert scripts.rdp_restore_line(None).startswith("reg delete ")


def test_setup_complete_keeps_the_image_commands_after_ours():
    out = scripts.insert_setup_complete("echo own\r\n")
    assert out.startswith(scripts.BEGIN_MARK) and out.endswith("echo own\r\n")
    assert scripts.insert_setup_complete(out) == out


# --- registry ----------------------------------------------------------------


def test_registry_reads_real_hives(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root")
    with registry.opened(root / "Windows/System32/config/SYSTEM") as system:
        assert registry.current_control_set(system) == "ControlSet001"
        env = "ControlSet001\\Control\\Session Manager\\Environment"
        assert system.value(env, "processor_architecture") == "AMD64"
        assert system.value(env, "missing") is None
    with registry.opened(root / "Windows/System32/config/SOFTWARE") as software:
        assert registry.nt_major(software) == 10


def test_a_hive_hivex_cannot_open_is_one_error_and_no_traceback(tmp_path, monkeypatch):
    """hivex's half-made object must not print a traceback when collected (sys.unraisablehook does that)."""
    import gc
    import sys

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    hive = tmp_path / "SYSTEM"
    hive.write_bytes(b"regf" + bytes(range(256)) * 256)
    with pytest.raises(registry.HiveError, match=r"^cannot open registry hive SYSTEM: "):
        registry.Hive(hive)
    gc.collect()
    assert unraisable == []


def test_a_hive_too_big_to_edit_is_refused_by_size_but_read_in_place(tmp_path, monkeypatch):
    root = wintree.make_windows_root(tmp_path / "root")
    system = root / "Windows/System32/config/SYSTEM"
    with open(system, "r+b") as f:
        f.truncate(64 << 20)
    monkeypatch.setattr(registry, "_editable_size_limit", lambda: 32 << 20)
    with pytest.raises(registry.HiveError, match=r"^registry hive SYSTEM is 64 MiB: larger than the helper can edit"):
        registry.Hive(system, write=True)
    with registry.opened(system) as read_only:
        assert registry.current_control_set(read_only) == "ControlSet001"


def test_detect_tells_legacy_from_modern(tmp_path):
    assert detect.windows_version(wintree.make_windows_root(tmp_path / "a")) == "windows"
    assert detect.windows_version(wintree.make_windows_root(tmp_path / "b", wintree.legacy_spec())) == "windows-legacy"
    old = wintree.WindowsSpec(version="6.1", major_number=None)
    assert detect.windows_version(wintree.make_windows_root(tmp_path / "c", old)) == "windows"


# --- tasks on fake roots -------------------------------------------------------


def files_for(timezone: str = "GMT Standard Time") -> dict[str, str]:
    class S:
        windows_timezone = timezone

    return host_windows.answer_files(S(), None)[0]  # type: ignore[arg-type]


def windows_ctx(root: Path, osfamily: str = "windows", **rules):
    base = {"files": files_for(), "password": "s3cr3t!", "os_product_key": "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"}
    properties = rules.pop("properties", {})
    return make_ctx(root, rules={**base, **rules}, properties=properties, osfamily=osfamily)


def run_windows_tasks(ctx) -> None:
    for module in (install_unattend, assign_hostname, change_password, disable_remote_desktop):
        module.run(ctx)
    filesystem_resize_mounted.grow_ntfs_at_boot(ctx)


def test_windows_tasks_on_an_image_with_its_own_unattend(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.WindowsSpec(setup_complete="echo own\r\n"))
    ctx = windows_ctx(root)
    ctx.resize_partition = 2
    run_windows_tasks(ctx)
    data = (root / PANTHER).read_bytes()
    assert [c[1] for c in commands(data)] == [
        "cmd /c echo image's own",
        "cmd.exe /c diskpart.exe /s %WINDIR%\\SnfScripts\\ExtendFilesystem.txt",
        "cmd.exe /c %WINDIR%\\SnfScripts\\ChangePassword.cmd",
    ]
    assert unattend.shell_setup_value(data, "amd64", "ComputerName") == "vm1"
    assert unattend.shell_setup_value(data, "amd64", "ProductKey") == "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"
    snf = root / "Windows/SnfScripts"
    assert (snf / "Password").read_bytes() == b"\xff\xfe" + "s3cr3t!".encode("utf-16-le")
    for script in ("ChangePassword.cmd", "SetPassword.vbs", "SnfSetupComplete.cmd"):
        assert "s3cr3t" not in (snf / script).read_bytes().decode()
    assert (snf / "ExtendFilesystem.txt").read_bytes().decode() == scripts.diskpart_script(2)
    cleanup = (snf / "SnfSetupComplete.cmd").read_bytes().decode()
    assert 'del /f /q "%WINDIR%\\SnfScripts\\Password"' in cleanup
    assert 'del /f /q "%SystemDrive%\\Windows\\Panther\\unattend.xml"' in cleanup
    assert scripts.rdp_restore_line(0) in cleanup
    setup_complete = (root / "Windows/Setup/Scripts/SetupComplete.cmd").read_bytes().decode()
    assert setup_complete.startswith(scripts.BEGIN_MARK) and setup_complete.endswith("echo own\r\n")
    system = root / "Windows/System32/config/SYSTEM"
    assert wintree.read_value(system, "ControlSet001\\Control\\Terminal Server", "fDenyTSConnections") == 1
    assert wintree.read_value(system, "ControlSet001\\Control\\Terminal Server", "fSingleSessionPerUser") == 1


def test_without_an_answer_file_the_template_is_installed_with_the_timezone(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.WindowsSpec(unattend=None, arch="x86", deny_ts=None))
    ctx = windows_ctx(root, files=files_for("w. europe standard time"))
    run_windows_tasks(ctx)
    data = (root / PANTHER).read_bytes()
    assert unattend.shell_setup_value(data, "x86", "TimeZone") == "W. Europe Standard Time"
    assert unattend.shell_setup_value(data, "x86", "ComputerName") == "vm1"
    assert any("retargeted" in m for m in warnings(ctx))
    cleanup = (root / "Windows/SnfScripts/SnfSetupComplete.cmd").read_bytes().decode()
    assert scripts.rdp_restore_line(None) in cleanup


def test_ignore_unattend_replaces_the_image_answer_file(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root")
    ctx = windows_ctx(root, properties={"IGNORE_UNATTEND": "yes"})
    install_unattend.run(ctx)
    data = (root / PANTHER).read_bytes()
    assert "cmd /c echo image's own" not in [c[1] for c in commands(data)]
    assert unattend.shell_setup_value(data, "amd64", "TimeZone") == "GMT Standard Time"


def test_an_answer_file_that_is_a_link_is_never_written_through(tmp_path):
    """Panther/unattend.xml a link to a valid answer file elsewhere: the link is replaced, its target kept."""
    root = wintree.make_windows_root(tmp_path / "root")
    elsewhere = root / "Windows/System32/other.xml"
    (root / PANTHER).rename(elsewhere)
    (root / PANTHER).symlink_to("../System32/other.xml")
    before = elsewhere.read_bytes()
    install_unattend.run(windows_ctx(root))
    assert elsewhere.read_bytes() == before
    assert not (root / PANTHER).is_symlink() and "ChangePassword.cmd" in (root / PANTHER).read_text()


def test_an_image_not_generalized_is_refused(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.WindowsSpec(image_state="IMAGE_STATE_COMPLETE"))
    with pytest.raises(TaskError, match="sysprep"):
        install_unattend.run(windows_ctx(root))


def test_a_legacy_image_as_windows_is_refused(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.legacy_spec())
    with pytest.raises(TaskError, match="windows-legacy"):
        install_unattend.run(windows_ctx(root))


def test_users_must_exist_in_the_sam_by_whole_name(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root")
    ctx = windows_ctx(root, properties={"USERS": "Admin"})
    install_unattend.run(ctx)
    with pytest.raises(TaskError, match="Admin do not exist"):
        change_password.run(ctx)
    ctx = windows_ctx(root, properties={"USERS": "administrator Guest"})
    change_password.run(ctx)
    assert 'net user "Guest"' in (root / "Windows/SnfScripts/ChangePassword.cmd").read_bytes().decode()


def test_a_password_hash_is_an_error_on_windows(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root")
    ctx = windows_ctx(root, password=None, password_hash="$6$x$y")
    with pytest.raises(TaskError, match="hash is not applicable"):
        change_password.run(ctx)


def test_legacy_tasks_edit_sysprep_inf_and_cmdlines(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.legacy_spec())
    ctx = windows_ctx(root, osfamily="windows-legacy", instance_name="abcdefghijklmno.example.org")
    run_windows_tasks(ctx)
    text = (root / "sysprep/sysprep.inf").read_bytes().decode()
    assert ini.ini_get(text, "UserData", "ComputerName") == "abcdefghijklmno"
    assert ini.ini_get(text, "UserData", "ProductKey") == "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"
    assert ini.ini_get(text, "GuiUnattended", "AdminPassword") == "s3cr3t!"
    assert ini.ini_get(text, "GuiUnattended", "EncryptedAdminPassword") == "No"
    assert text.startswith(";SetupMgrTag\r\n")
    cmdlines = (root / "sysprep/i386/$OEM$/CmdLines.txt").read_bytes().decode()
    assert cmdlines == (
        "[Commands]\r\n"
        '"cmd.exe /c %WINDIR%\\SnfScripts\\ChangePassword.cmd"\r\n'
        '"cmd.exe /c %WINDIR%\\Setup\\Scripts\\SetupComplete.cmd"\r\n'
    )
    assert not (root / "Windows/SnfScripts/ExtendFilesystem.txt").read_bytes().decode().startswith("select")  # offline


def test_legacy_without_sysprep_inf_gets_the_template(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.legacy_spec(sysprep_inf=None))
    ctx = windows_ctx(root, osfamily="windows-legacy", files=files_for("Pacific Standard Time"))
    run_windows_tasks(ctx)
    text = (root / "sysprep/sysprep.inf").read_bytes().decode()
    assert ini.ini_get(text, "GuiUnattended", "TimeZone") == "004"
    assert ini.ini_get(text, "UserData", "ComputerName") == "vm1"


def test_legacy_not_resealed_is_refused(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.legacy_spec(legacy_setup=False))
    with pytest.raises(TaskError, match="sysprep -mini"):
        install_unattend.run(windows_ctx(root, osfamily="windows-legacy"))


def test_install_files_path_must_stay_under_sysprep():
    assert install_unattend.install_files_dir("C:\\Sysprep\\i386") == "/Sysprep/i386"
    for bad in ("D:\\sysprep\\i386", "C:\\Windows", "C:\\sysprep\\..\\Windows"):
        with pytest.raises(TaskError):
            install_unattend.install_files_dir(bad)


def test_personality_backs_up_what_it_replaces(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root", wintree.WindowsSpec(extra_files={"Users/Public/a.txt": b"old"}))
    personality = (
        PersonalityFile(path="/users/public/A.txt", contents=base64.b64encode(b"new").decode()),
        PersonalityFile(path="/ProgramData/snf/new.txt", contents=base64.b64encode(b"x").decode(), mode=0o600),
    )
    ctx = windows_ctx(root, personality=personality)
    enforce_personality.run(ctx)
    public = root / "Users/Public"
    assert (public / "a.txt").read_bytes() == b"new"  # the image's spelling, found without case
    backups = [p for p in public.iterdir() if ".bak." in p.name]
    assert len(backups) == 1 and backups[0].read_bytes() == b"old"
    stamp = backups[0].name.split(".bak.", 1)[1]
    datetime.datetime.strptime(stamp, "%Y%m%d.%H%M%S")
    assert (root / "ProgramData/snf/new.txt").read_bytes() == b"x"


def test_online_resize_is_skipped_when_offline(tmp_path):
    root = wintree.make_windows_root(tmp_path / "root")
    ctx = windows_ctx(root, properties={"OFFLINE_NTFSRESIZE": "yes"})
    install_unattend.run(ctx)
    filesystem_resize_mounted.grow_ntfs_at_boot(ctx)
    assert (root / "Windows/SnfScripts/ExtendFilesystem.txt").read_bytes().decode() == "exit\r\n"
    assert filesystem_resize_mounted.TASK.resize


# --- host side -----------------------------------------------------------------


def test_timezones():
    assert host_windows.timezone("gmt standard time").index == "085"
    assert host_windows.timezone("Pacific Standard Time").name == "Pacific Standard Time"
    assert len(host_windows.timezones()) >= 75
    with pytest.raises(OperatorError, match="WINDOWS_TIMEZONE"):
        host_windows.timezone("Mars Standard Time")


def test_templates_are_filled_with_crlf_kept():
    files = files_for("Tokyo Standard Time")
    assert "<TimeZone>Tokyo Standard Time</TimeZone>\r\n" in files["unattend.xml"]
    assert "TimeZone=235\r\n" in files["sysprep.inf"]
    assert "@" not in files["unattend.xml"] + files["sysprep.inf"]
    xml(files["unattend.xml"].encode())  # well-formed


def test_a_bad_timezone_fails_verify(tmp_path):
    from snf_image import deploy

    class S:
        windows_timezone = "Nowhere Time"
        param_defaults: dict[str, str] = {}

    with pytest.raises(OperatorError, match="WINDOWS_TIMEZONE"):
        deploy.verify_params({"img_id": "x", "img_format": "diskdump", "config_url": "http://h/c"}, S())  # type: ignore[arg-type]
