"""Windows guests: the pure editors (answer files, scripts, decisions) and the I/O the Windows tasks share.

Editors are functions text -> text (or bytes -> bytes for XML, whose encoding
lives in its declaration), unit-tested without a VM: the unattend.xml
editor (lxml; the ``urn:schemas-microsoft-com:unattend`` default namespace
and the ``wcm`` prefix Windows setup requires are kept), the INI editor for
sysprep.inf and CmdLines.txt (comments, CRLF and UTF-16 kept), the
first-boot scripts, and the checks of what the registry says.

What runs in the guest at first boot, all under ``%WINDIR%\\SnfScripts``:

- ``ChangePassword.cmd`` (specialize pass / CmdLines.txt): runs
  ``SetPassword.vbs``, which reads the password from the file ``Password``
  (UTF-16), overwrites and deletes that file, and sets it for each user
  through ADSI -- the password is never on any command line -- then
  ``net user "<name>" /ACTIVE:YES /EXPIRES:NEVER /PASSWORDREQ:YES``.
- ``ExtendFilesystem.txt``: the diskpart script of the online resize
  (``exit`` unless FilesystemResizeMounted writes one).
- ``SnfSetupComplete.cmd``: called first from
  ``%WINDIR%\\Setup\\Scripts\\SetupComplete.cmd`` (the image's own commands
  there are kept after our block): restores Remote Desktop, overwrites
  and deletes what may hold secrets (password file, answer files), then the
  caller removes ``SnfScripts``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from helper import disks, fsutil, registry
from helper.commands import TaskError
from helper.framework import Context
from helper.windows import SNF_DIR, WindowsImage

from . import _unix

# --- constants -------------------------------------------------------------

UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
PUBLIC_KEY_TOKEN = "31bf3856ad364e35"
SHELL_SETUP = "Microsoft-Windows-Shell-Setup"
DEPLOYMENT = "Microsoft-Windows-Deployment"

PASSWORD_FILE = "Password"
PASSWORD_SCRIPT = "ChangePassword.cmd"
PASSWORD_VBS = "SetPassword.vbs"
EXTEND_SCRIPT = "ExtendFilesystem.txt"
SNF_SETUP_COMPLETE = "SnfSetupComplete.cmd"
BEGIN_MARK = "@rem snf-image: begin"
END_MARK = "@rem snf-image: end"

CRLF = "\r\n"
DEFAULT_USER = "Administrator"
GENERALIZED = frozenset({"IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE", "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT"})
ARCHITECTURES = {"amd64": "amd64", "x86": "x86", "arm64": "arm64", "ia64": "ia64"}
COMPUTER_NAME_MAX = 15
COMPUTER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Characters Windows refuses in account names, and the ones our scripts would have to escape.
BAD_USER_CHARS = set('"/\\[]:;|=,+*?<>@%^&!') | {chr(c) for c in range(32)}

PROP_OFFLINE = "OFFLINE_NTFSRESIZE"
PROP_NOCHECK = "OFFLINE_NTFSRESIZE_NOCHECK"
PROP_IGNORE_UNATTEND = "IGNORE_UNATTEND"
PROP_ALLOW_DIRTY = "ALLOW_DIRTY_NTFS"


# --- registry decisions (pure) ---------------------------------------------


def nt_major(current_version: Any, major_number: Any) -> int:
    """The NT major version from the SOFTWARE hive's CurrentVersion / CurrentMajorVersionNumber."""
    major = registry.nt_major_of(current_version, major_number)
    if major is None:
        raise TaskError("Cannot tell the Windows version: no CurrentVersion in the SOFTWARE hive")
    return major


def family_of(major: int) -> str:
    """OSFAMILY of an NT version: windows for NT 6 (Vista) and later, windows-legacy before."""
    return "windows" if major >= 6 else "windows-legacy"


def check_family(osfamily: str, major: int) -> None:
    """The image's NT version must fit its OSFAMILY: the answer file format depends on it."""
    if osfamily == "windows" and major < 6:
        raise TaskError(f"This is Windows NT {major} (XP/2003): use OSFAMILY 'windows-legacy'")
    if osfamily == "windows-legacy" and major >= 6:
        raise TaskError(f"This is Windows NT {major} (Vista or later): use OSFAMILY 'windows'")


def check_image_state(state: str | None) -> None:
    """A Vista+ image must be generalized by sysprep, or every instance would share its SID and identity."""
    if state in GENERALIZED:
        return
    advice = "run 'sysprep /generalize /oobe /shutdown' in it before making the image"
    if state is None:
        raise TaskError(f"The image has no sysprep ImageState; it is not generalized: {advice}")
    if state == "IMAGE_STATE_COMPLETE":
        raise TaskError(f"The image is not generalized (ImageState {state}): {advice}")
    if state == "IMAGE_STATE_UNDEPLOYABLE":
        raise TaskError(f"The image is undeployable (ImageState {state}: sysprep failed or was interrupted); {advice}")
    raise TaskError(f"The image is not generalized (ImageState {state}): {advice}")


def check_legacy_setup(system_setup: Any, mini_setup: Any) -> None:
    """An XP/2003 image must be resealed with ``sysprep -mini -reseal`` so mini-setup runs at first boot."""
    if system_setup != 1 or mini_setup != 1:
        raise TaskError(
            "The image is not sysprepped (Setup\\SystemSetupInProgress and MiniSetupInProgress are not 1): "
            "run 'sysprep -mini -reseal -quiet' in it before making the image"
        )


def unattend_arch(processor_architecture: Any) -> str:
    """processorArchitecture for unattend.xml from PROCESSOR_ARCHITECTURE (AMD64 -> amd64, x86 -> x86)."""
    value = str(processor_architecture or "").strip().lower()
    if value not in ARCHITECTURES:
        raise TaskError(f"Unknown PROCESSOR_ARCHITECTURE {processor_architecture!r} in the SYSTEM hive")
    return ARCHITECTURES[value]


def computer_name(instance_name: str) -> str:
    """The ComputerName for an instance: the first label of its name, checked as Windows wants it.

    At most 15 characters (the original counted the newline of ``wc -c``
    and so refused 15), letters, digits, '-' and '_', not all digits.
    """
    name = instance_name.strip().split(".", 1)[0]
    if not name or len(name) > COMPUTER_NAME_MAX:
        raise TaskError(f"Invalid Windows computer name {name!r}: 1 to {COMPUTER_NAME_MAX} characters are allowed")
    if not COMPUTER_NAME.match(name):
        raise TaskError(f"Invalid Windows computer name {name!r}: only letters, digits, '-' and '_' are allowed")
    if name.isdigit():
        raise TaskError(f"Invalid Windows computer name {name!r}: it cannot be all digits")
    return name


def check_user_name(name: str) -> str:
    """``name`` if it can be a Windows account name our scripts can carry without escaping."""
    if not name or len(name) > 20 or any(c in BAD_USER_CHARS for c in name) or name.strip(" .") != name:
        raise TaskError(f"Invalid Windows user name {name!r}")
    return name


def missing_users(wanted: Iterable[str], existing: Iterable[str]) -> list[str]:
    """The ``wanted`` users that are not accounts: whole names, compared without case as Windows does.

    (The original grepped, so ``Admin`` matched ``Administrator``.)
    """
    known = {name.casefold() for name in existing}
    return [user for user in wanted if user.casefold() not in known]


# --- text helpers ----------------------------------------------------------


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, codec) of a Windows text file: UTF-16 with a BOM, UTF-8 with or without one, else cp1252."""
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le"), "utf-16-le-bom"
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be"), "utf-16-be-bom"
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-bom"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def encode_text(text: str, codec: str) -> bytes:
    """``text`` back in the file's own encoding (see :func:`decode_text`)."""
    if codec == "utf-16-le-bom":
        return b"\xff\xfe" + text.encode("utf-16-le")
    if codec == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    if codec == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if codec == "cp1252":
        return text.encode("cp1252", errors="replace")
    return text.encode("utf-8")


def ini_codec(text: str) -> str:
    """How to store a new INI file: ASCII as such; anything else as UTF-16 with a BOM, which XP's setup reads."""
    return "utf-8" if text.isascii() else "utf-16-le-bom"


def newline_of(text: str) -> str:
    """The file's line end; Windows' own is CRLF."""
    return "\n" if "\n" in text and "\r\n" not in text else CRLF


# --- INI (sysprep.inf, CmdLines.txt) ---------------------------------------


def _section_of(line: str) -> str | None:
    m = re.match(r"^\s*\[([^\]]*)\]", line)
    return m.group(1).strip().lower() if m else None


def _key_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith(";") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip().lower()


def _section_range(lines: list[str], section: str) -> tuple[int, int] | None:
    """(header index, end index exclusive) of the first ``[section]``, case-insensitive."""
    wanted = section.lower()
    start = None
    for i, line in enumerate(lines):
        name = _section_of(line)
        if name is None:
            continue
        if start is not None:
            return start, i
        if name == wanted:
            start = i
    return (start, len(lines)) if start is not None else None


def ini_unquote(value: str) -> str:
    """An INI value without surrounding quotes and blanks."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def ini_get(text: str, section: str, key: str) -> str | None:
    """The value of ``key`` in ``[section]`` (first one, unquoted), or None."""
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        return None
    for line in lines[found[0] + 1 : found[1]]:
        if _key_of(line) == key.lower():
            return ini_unquote(line.split("=", 1)[1].split(";", 1)[0] if '"' not in line else line.split("=", 1)[1])
    return None


def _insert_at_section_end(lines: list[str], start: int, end: int, new: str) -> None:
    """Insert ``new`` after the last non-blank line of the section (before blank lines that separate sections)."""
    at = end
    while at > start + 1 and not lines[at - 1].strip():
        at -= 1
    lines.insert(at, new)


def _indent_of(lines: list[str], start: int, end: int) -> str:
    for line in lines[start + 1 : end]:
        if line.strip() and not line.strip().startswith(";"):
            return line[: len(line) - len(line.lstrip())]
    return ""


def ini_set(text: str, section: str, key: str, value: str) -> str:
    """INI text with ``key=value`` in ``[section]``: the first such key replaced, later duplicates dropped.

    A missing key goes at the end of the section, a missing section at the
    end of the file. Comments, indentation, other lines and the line ends
    are kept.
    """
    newline = newline_of(text)
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", f"{key}={value}"]
        return newline.join(lines) + newline
    start, end = found
    indent = _indent_of(lines, start, end)
    placed = False
    out = lines[: start + 1]
    for line in lines[start + 1 : end]:
        if _key_of(line) == key.lower():
            if not placed:
                out.append(f"{line[: len(line) - len(line.lstrip())]}{key}={value}")
                placed = True
            continue
        out.append(line)
    if not placed:
        _insert_at_section_end(out, start, len(out), f"{indent}{key}={value}")
    out += lines[end:]
    return newline.join(out) + newline


def ini_add_line(text: str, section: str, entry: str) -> str:
    """INI text with the bare line ``entry`` (a CmdLines.txt command) at the end of ``[section]``, once."""
    newline = newline_of(text)
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [f"[{section}]", entry]
        return newline.join(lines) + newline
    start, end = found
    if any(line.strip() == entry for line in lines[start + 1 : end]):
        return newline.join(lines) + newline
    _insert_at_section_end(lines, start, end, entry)
    return newline.join(lines) + newline


def ini_quote(value: str) -> str:
    """A sysprep.inf value in double quotes; TaskError for what quotes cannot hold."""
    if '"' in value or any(c in value for c in "\r\n\0"):
        raise TaskError("A sysprep.inf value cannot contain double quotes or line breaks")
    return f'"{value}"'


# --- unattend.xml (lxml) ---------------------------------------------------


def _q(tag: str) -> str:
    return f"{{{UNATTEND_NS}}}{tag}"


def _wcm(attr: str) -> str:
    return f"{{{WCM_NS}}}{attr}"


def parse_unattend(data: bytes) -> Any:
    """The element tree of an answer file; TaskError if it is not an unattend document."""
    from lxml import etree

    parser = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise TaskError(f"The answer file is not well-formed XML: {exc}") from exc
    if root.tag != _q("unattend"):
        raise TaskError(f"The answer file's root element is {root.tag}, not unattend in {UNATTEND_NS}")
    return root.getroottree()


def _serialize(tree: Any) -> bytes:
    """The document as bytes in its own declared encoding (UTF-8 if none), comments and layout kept."""
    from lxml import etree

    encoding = tree.docinfo.encoding or "utf-8"
    data: bytes = etree.tostring(tree, xml_declaration=True, encoding=encoding)
    return data


def _declare_wcm(tree: Any, keep: list[str]) -> None:
    """Declare ``wcm`` on the root, where Windows setup looks for it, and use it for wcm:action.

    Called after the edit: lxml names an undeclared namespace ``ns0`` on the
    element, and cleanup_namespaces with top_nsmap moves it to the root as
    ``wcm``. Every prefix the document declared (``keep``) stays, used or not.
    """
    from lxml import etree

    etree.cleanup_namespaces(tree, top_nsmap={"wcm": WCM_NS}, keep_ns_prefixes=[*keep, "wcm"])


def _prefixes(tree: Any) -> list[str]:
    root = tree.getroot()
    return sorted({p for element in root.iter() if isinstance(element.tag, str) for p in element.nsmap if p})


def settings_pass(root: Any, name: str, create: bool = True) -> Any:
    """The ``<settings pass="name">`` element (the first), created at the end if missing."""
    from lxml import etree

    for element in root.findall(_q("settings")):
        if element.get("pass") == name:
            return element
    if not create:
        return None
    element = etree.SubElement(root, _q("settings"))
    element.set("pass", name)
    return element


def component(root: Any, pass_name: str, name: str, arch: str, create: bool = True) -> Any:
    """The ``<component name=... processorArchitecture=arch>`` of a pass, created as Windows setup wants it."""
    from lxml import etree

    settings = settings_pass(root, pass_name, create)
    if settings is None:
        return None
    for element in settings.findall(_q("component")):
        if element.get("name") == name and (element.get("processorArchitecture") or "").lower() == arch:
            return element
    if not create:
        return None
    element = etree.SubElement(settings, _q("component"))
    for key, value in (
        ("name", name),
        ("processorArchitecture", arch),
        ("publicKeyToken", PUBLIC_KEY_TOKEN),
        ("language", "neutral"),
        ("versionScope", "nonSxS"),
    ):
        element.set(key, value)
    return element


def _child(parent: Any, tag: str) -> Any:
    from lxml import etree

    found = parent.find(_q(tag))
    return found if found is not None else etree.SubElement(parent, _q(tag))


def _edit(data: bytes, change: Any) -> bytes:
    """Parse, change, serialize -- keeping the input's BOM and CRLF line ends (XML parsing turns CRLF into LF)."""
    tree = parse_unattend(data)
    keep = _prefixes(tree)
    change(tree.getroot())
    _declare_wcm(tree, keep)
    out = _serialize(tree)
    encoding = (tree.docinfo.encoding or "utf-8").lower()
    if encoding.replace("-", "") in ("utf16", "utf16le", "utf16be"):
        text = out.decode("utf-16")
        if b"\r\x00\n\x00" in data or b"\x00\r\x00\n" in data:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        return b"\xff\xfe" + text.encode("utf-16-le")
    if b"\r\n" in data:
        out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"\xef\xbb\xbf") and not out.startswith(b"\xef\xbb\xbf"):
        out = b"\xef\xbb\xbf" + out
    return out


def retarget_arch(data: bytes, arch: str) -> tuple[bytes, bool]:
    """(answer file, changed): components moved to ``arch`` when the file has none for it.

    A file written for the other architecture would be ignored by setup
    whole; one that has components for ``arch`` is left as it is.
    """
    tree = parse_unattend(data)
    components = tree.getroot().iter(_q("component"))
    arches = {(c.get("processorArchitecture") or "").lower() for c in components}
    if not arches or arch in arches:
        return data, False

    def change(root: Any) -> None:
        for c in root.iter(_q("component")):
            c.set("processorArchitecture", arch)

    return _edit(data, change), True


def add_sync_commands(data: bytes, arch: str, commands: Sequence[tuple[str, str]]) -> bytes:
    """Append specialize-pass RunSynchronousCommands (path, description) after the existing ones.

    Orders continue from the highest existing Order; a command whose Path
    is already there is not added twice.
    """

    def change(root: Any) -> None:
        from lxml import etree

        deployment = component(root, "specialize", DEPLOYMENT, arch)
        run = _child(deployment, "RunSynchronous")
        existing = run.findall(_q("RunSynchronousCommand"))
        orders = [int(o.text) for c in existing if (o := c.find(_q("Order"))) is not None and (o.text or "").isdigit()]
        paths = {(p.text or "").strip() for c in existing if (p := c.find(_q("Path"))) is not None}
        order = max(orders, default=0)
        for path, description in commands:
            if path in paths:
                continue
            order += 1
            command = etree.SubElement(run, _q("RunSynchronousCommand"))
            command.set(_wcm("action"), "add")
            etree.SubElement(command, _q("Order")).text = str(order)
            etree.SubElement(command, _q("Path")).text = path
            etree.SubElement(command, _q("Description")).text = description

    return _edit(data, change)


def set_shell_setup(data: bytes, arch: str, values: dict[str, str], pass_name: str = "specialize") -> bytes:
    """Set simple elements (ComputerName, ProductKey, TimeZone) of Shell-Setup in a pass."""

    def change(root: Any) -> None:
        shell = component(root, pass_name, SHELL_SETUP, arch)
        for tag, value in values.items():
            _child(shell, tag).text = value

    return _edit(data, change)


def shell_setup_value(data: bytes, arch: str, tag: str, pass_name: str = "specialize") -> str | None:
    """The text of a Shell-Setup element of a pass, or None."""
    root = parse_unattend(data).getroot()
    shell = component(root, pass_name, SHELL_SETUP, arch, create=False)
    if shell is None:
        return None
    element = shell.find(_q(tag))
    return None if element is None else (element.text or "")


def answer_file_accounts(data: bytes) -> list[str]:
    """Names of the LocalAccounts the answer file creates (wcm:action="add") at OOBE."""
    root = parse_unattend(data).getroot()
    names = []
    for account in root.iter(_q("LocalAccount")):
        if account.get(_wcm("action")) == "add":
            name = account.find(_q("Name"))
            if name is not None and name.text:
                names.append(name.text.strip())
    return names


# --- first-boot scripts (pure) ---------------------------------------------


def cmd_lines(lines: Iterable[str]) -> str:
    """A .cmd file: CRLF line ends, as cmd.exe expects."""
    return "".join(line + CRLF for line in lines)


def windows_path(guest_path: str) -> str:
    """``%SystemDrive%\\Windows\\...`` for a guest path ``/Windows/...``."""
    return "%SystemDrive%" + guest_path.replace("/", "\\")


def password_file(password: str) -> bytes:
    """The password as SetPassword.vbs reads it: UTF-16LE with a BOM (FileSystemObject's Unicode)."""
    if any(c in password for c in "\r\n\0"):
        raise TaskError("The password cannot contain line breaks or NUL characters on Windows")
    return b"\xff\xfe" + password.encode("utf-16-le")


def password_vbs(users: Sequence[str]) -> str:
    """SetPassword.vbs: read, wipe and delete the password file, then set the password of ``users`` via ADSI."""
    names = ", ".join('"' + check_user_name(u).replace('"', '""') + '"' for u in users)
    return cmd_lines(
        [
            "' snf-image: sets the users' password at first boot; the password never appears on a command line.",
            "Option Explicit",
            "Dim fso, folder, path, f, pw, users, i, computer, account",
            'Set fso = CreateObject("Scripting.FileSystemObject")',
            "folder = fso.GetParentFolderName(WScript.ScriptFullName)",
            f'path = folder & "\\{PASSWORD_FILE}"',
            "If Not fso.FileExists(path) Then WScript.Quit 2",
            "Set f = fso.OpenTextFile(path, 1, False, -1)",
            "pw = f.ReadAll",
            "f.Close",
            "Set f = fso.OpenTextFile(path, 2, False, -1)",
            'f.Write String(Len(pw) + 64, "X")',
            "f.Close",
            "fso.DeleteFile path, True",
            f"users = Array({names})",
            'computer = CreateObject("WScript.Network").ComputerName',
            "On Error Resume Next",
            "For i = 0 To UBound(users)",
            '  Set account = GetObject("WinNT://" & computer & "/" & users(i) & ",user")',
            "  If Err.Number <> 0 Then WScript.Quit 3",
            "  account.SetPassword pw",
            "  account.SetInfo",
            "  If Err.Number <> 0 Then WScript.Quit 4",
            "Next",
            "pw = Empty",
            "WScript.Quit 0",
        ]
    )


def password_cmd(users: Sequence[str]) -> str:
    """ChangePassword.cmd: run SetPassword.vbs, then the account flags (no password in them)."""
    lines = ["@echo off", "rem snf-image: set the users' password (read from a file, never passed as an argument)"]
    lines.append(f'cscript.exe //nologo //B "%~dp0{PASSWORD_VBS}"')
    for user in users:
        lines.append(f'net user "{check_user_name(user)}" /ACTIVE:YES /EXPIRES:NEVER /PASSWORDREQ:YES')
    return cmd_lines(lines)


def diskpart_script(partition: int) -> str:
    """Grow the NTFS of ``partition`` of the first disk to fill it (diskpart numbers partitions as the table does).

    The original selected *volume* <partition number>, which names another
    volume whenever a CD-ROM or a second partition comes first.
    """
    return cmd_lines(["select disk 0", f"select partition {partition}", "extend filesystem", "exit"])


def rdp_restore_line(original: int | None) -> str:
    """SetupComplete line restoring fDenyTSConnections as the image had it (deleted if it had none)."""
    key = '"HKLM\\SYSTEM\\CurrentControlSet\\Control\\Terminal Server"'
    if original is None:
        return f"reg delete {key} /v fDenyTSConnections /f"
    return f"reg add {key} /f /v fDenyTSConnections /t REG_DWORD /d {int(original)}"


def wipe_lines(path: str) -> list[str]:
    """Overwrite a file holding secrets with X's, then delete it (path in Windows form)."""
    return [f'if exist "{path}" (', f'  echo {"X" * 200}> "{path}"', f'  del /f /q "{path}"', ")"]


def setup_complete_block() -> list[str]:
    """What SetupComplete.cmd runs first: our script, then the removal of our directory."""
    snf = f"%WINDIR%\\{SNF_DIR}"
    return [
        BEGIN_MARK,
        f'@if exist "{snf}\\{SNF_SETUP_COMPLETE}" call "{snf}\\{SNF_SETUP_COMPLETE}"',
        f'@rmdir /s /q "{snf}"',
        END_MARK,
    ]


def insert_setup_complete(existing: str | None) -> str:
    """SetupComplete.cmd with our block first; the image's own commands are kept after it, once."""
    if existing and BEGIN_MARK in existing:
        return existing
    block = cmd_lines(setup_complete_block())
    if not existing:
        return block
    newline = newline_of(existing)
    return block.replace(CRLF, newline) + existing


# --- I/O shared by the tasks -----------------------------------------------


def backup_name(path: str, now: datetime.datetime | None = None) -> str:
    """``<path>.bak.<YYYYmmdd.HHMMSS>``, the original's name for a replaced file."""
    now = now or datetime.datetime.now()
    return f"{path}.bak.{now:%Y%m%d.%H%M%S}"


def icase(root: Path, path: str) -> str:
    """Guest ``path`` with each existing component spelt as in the image, matched without case as Windows does.

    The Windows tasks reach every guest path through here, so the image's own
    spelling is kept when a file is replaced (lowntfs-3g's ignore_case would
    list, and so rewrite, every name in lower case).
    """
    done = PurePosixPath("/")
    for part in PurePosixPath(path).parts[1:]:
        directory = fsutil.resolve(root, str(done))
        name = part
        if directory.is_dir() and not (directory / part).exists():
            try:
                name = next((e.name for e in directory.iterdir() if e.name.casefold() == part.casefold()), part)
            except OSError:
                name = part
        done = done / name
    return str(done)


def host(ctx: Context, path: str) -> Path:
    """The host path of guest ``path``, case-insensitively and never outside the root."""
    return ctx.guest(icase(ctx.target, path))


def find_windows_dir(root: Path) -> str:
    """The guest path of the Windows directory (``/Windows``, or ``/WINNT`` on upgraded systems)."""
    for name in ("Windows", "WINNT"):
        path = icase(root, f"/{name}/System32")
        if fsutil.resolve(root, path).is_dir():
            return str(PurePosixPath(path).parent)
    raise TaskError("No Windows directory with System32 in the root partition; is ROOT_PARTITION right?")


def read_bytes(ctx: Context, path: str) -> bytes | None:
    """A regular file of the guest, or None if it does not exist."""
    found = host(ctx, path)
    if not found.is_file():
        return None
    return found.read_bytes()


def write_bytes(ctx: Context, path: str, data: bytes) -> None:
    """Create or replace a guest file, its missing directories made (NTFS ignores modes)."""
    path = icase(ctx.target, path)
    _unix.make_dirs(ctx.target, str(PurePosixPath(path).parent), mode=0o755)
    _unix.write_file(ctx.target, path, data, mode=0o644)


def hive_file(ctx: Context, guest_path: str) -> Path:
    """The host path of a hive; TaskError if the image lacks it."""
    found = host(ctx, guest_path)
    if not found.is_file():
        raise TaskError(f"The image has no registry hive {guest_path}")
    return found


def image(ctx: Context) -> WindowsImage:
    """The image's Windows facts, read from its hives the first time a task asks."""
    if ctx.windows is not None:
        return ctx.windows
    windir = find_windows_dir(ctx.target)
    try:
        with registry.opened(hive_file(ctx, f"{windir}/System32/config/SYSTEM")) as system:
            control_set = registry.current_control_set(system)
            arch = unattend_arch(
                system.value(f"{control_set}\\Control\\Session Manager\\Environment", "PROCESSOR_ARCHITECTURE")
            )
        with registry.opened(hive_file(ctx, f"{windir}/System32/config/SOFTWARE")) as software:
            major = registry.nt_major(software)
    except registry.HiveError as exc:
        raise TaskError(str(exc)) from exc
    ctx.windows = WindowsImage(windir, arch, control_set, major)
    return ctx.windows


def append_setup_complete(ctx: Context, lines: Sequence[str]) -> None:
    """Append ``lines`` to SnfSetupComplete.cmd, wiring it into SetupComplete.cmd if not done yet."""
    win = image(ctx)
    path = f"{win.snf_dir}/{SNF_SETUP_COMPLETE}"
    old = read_bytes(ctx, path)
    text = old.decode("utf-8") if old is not None else cmd_lines(["@echo off", "rem snf-image: first-boot cleanup"])
    write_bytes(ctx, path, (text + cmd_lines(lines)).encode("utf-8"))
    setup_complete = f"{win.windir}/Setup/Scripts/SetupComplete.cmd"
    current = read_bytes(ctx, setup_complete)
    existing, codec = decode_text(current) if current is not None else (None, "utf-8")
    updated = insert_setup_complete(existing)
    if updated != existing:
        write_bytes(ctx, setup_complete, encode_text(updated, codec))


def partition_fstype(ctx: Context, number: int) -> str:
    """blkid's type of a partition of the instance disk."""
    return disks.fs_type(ctx.partition(number))


# Windows' implicit answer-file search order for the specialize pass (no removable media here).
UNATTEND_CANDIDATES = (
    "{windir}/Panther/Unattend/Unattend.xml",
    "{windir}/Panther/Unattend/Autounattend.xml",
    "{windir}/Panther/Unattend.xml",
    "{windir}/Panther/Autounattend.xml",
    "{windir}/System32/Sysprep/unattend.xml",
    "/unattend.xml",
    "/autounattend.xml",
)
DEFAULT_UNATTEND = "{windir}/Panther/unattend.xml"
SYSPREP_INF = "/sysprep/sysprep.inf"


def find_unattend(ctx: Context, win: WindowsImage) -> str | None:
    """The image's answer file Windows would read first, or None."""
    for pattern in UNATTEND_CANDIDATES:
        path = icase(ctx.target, pattern.format(windir=win.windir))
        if ctx.guest(path).is_file():
            return path
    return None


def answer_file(ctx: Context) -> str:
    """The answer file the tasks edit: InstallUnattend's, or the image's own when it did not run."""
    win = image(ctx)
    if win.answer_file is None:
        found = find_unattend(ctx, win) if ctx.osfamily == "windows" else SYSPREP_INF
        if found is None or not host(ctx, found).is_file():
            raise TaskError("The image has no answer file (unattend.xml / sysprep.inf) and InstallUnattend did not run")
        win.answer_file = found
    return win.answer_file


# --- what the family branches of the shared tasks call ---------------------

# No ignore_case: it lists every name in lower case, so a replaced file would lose the
# image's spelling; lookups are case-insensitive through icase() instead.
NTFS_MOUNT_OPTIONS = "rw,windows_names"


def ntfs_dirty(ctx: Context, device: Path) -> bool:
    """Whether the NTFS on ``device`` is marked dirty (a check is scheduled): ntfsinfo refuses it then."""
    proc = ctx.run(["ntfsinfo", "-m", device], check=False)
    if proc.returncode == 0:
        return False
    if "scheduled for check" in (proc.stdout + proc.stderr):
        return True
    raise TaskError(f"ntfsinfo cannot read the NTFS on {device}: " + (proc.stderr.strip().splitlines() or ["?"])[-1])


def mount_root(ctx: Context) -> None:
    """MountImage for Windows: the NTFS root with lowntfs-3g (names are looked up without case by :func:`icase`).

    A dirty NTFS (Windows not shut down cleanly, or a check scheduled) or an
    unclean journal (hibernation, Fast Startup) is refused unless the
    ALLOW_DIRTY_NTFS property says otherwise: editing it could lose what
    Windows still had to write.
    """
    part = ctx.partition(ctx.root_partition)
    fstype = disks.fs_type(part)
    if fstype != "ntfs":
        raise TaskError(f"The Windows root partition {ctx.root_partition} holds {fstype or 'no filesystem'}, not NTFS")
    allow = ctx.properties.flag(PROP_ALLOW_DIRTY)
    if ntfs_dirty(ctx, part):
        if not allow:
            raise TaskError(
                f"The NTFS on partition {ctx.root_partition} is dirty (Windows was not shut down cleanly or a check "
                f"is scheduled): boot the image and shut it down cleanly, or set the {PROP_ALLOW_DIRTY} property"
            )
        ctx.warning(f"The NTFS on partition {ctx.root_partition} is dirty; mounting it anyway ({PROP_ALLOW_DIRTY})")
    if not Path("/dev/fuse").exists():
        ctx.run(["modprobe", "fuse"], check=False)
    ctx.target.mkdir(parents=True, exist_ok=True)
    try:
        disks.mount(part, ctx.target, fstype="lowntfs-3g", options=NTFS_MOUNT_OPTIONS + ",norecover")
    except TaskError as exc:
        if not allow:
            raise TaskError(
                f"Cannot mount the NTFS on partition {ctx.root_partition} without replaying its journal "
                f"(hibernated, or Fast Startup on?): {exc}; set {PROP_ALLOW_DIRTY} to mount it anyway"
            ) from exc
        ctx.warning(f"Mounting partition {ctx.root_partition} with journal recovery ({PROP_ALLOW_DIRTY}): {exc}")
        disks.mount(part, ctx.target, fstype="lowntfs-3g", options=NTFS_MOUNT_OPTIONS)
    image(ctx)  # fail early on an image without Windows or hives


def offline_resize(ctx: Context) -> bool:
    """Whether NTFS grows offline with ntfsresize (always for windows-legacy, OFFLINE_NTFSRESIZE for windows)."""
    return ctx.osfamily == "windows-legacy" or ctx.properties.flag(PROP_OFFLINE)


def resize_online(ctx: Context) -> None:
    """FilesystemResizeMounted for NTFS: the diskpart script the specialize pass runs (unless resized offline)."""
    if ctx.resize_partition is None or ctx.osfamily not in ("windows", "windows-legacy") or offline_resize(ctx):
        return
    win = image(ctx)
    write_bytes(ctx, f"{win.snf_dir}/{EXTEND_SCRIPT}", diskpart_script(ctx.resize_partition).encode())


def assign_hostname(ctx: Context, fqdn: str) -> None:
    """AssignHostname for Windows: ComputerName in the answer file (specialize Shell-Setup / [UserData])."""
    name = computer_name(fqdn)
    path = answer_file(ctx)
    data = read_bytes(ctx, path) or b""
    if ctx.osfamily == "windows":
        data = set_shell_setup(data, image(ctx).arch, {"ComputerName": name})
    else:
        text, codec = decode_text(data)
        data = encode_text(ini_set(text, "UserData", "ComputerName", name), codec)
    write_bytes(ctx, path, data)


def sam_users(ctx: Context) -> list[str]:
    """The local account names of the image (SAM hive, SAM\\Domains\\Account\\Users\\Names)."""
    win = image(ctx)
    try:
        with registry.opened(hive_file(ctx, win.hive("SAM"))) as sam:
            return sam.subkeys("SAM\\Domains\\Account\\Users\\Names")
    except registry.HiveError as exc:
        raise TaskError(str(exc)) from exc


def change_password(ctx: Context) -> None:
    """ChangePassword for Windows: the scripts that set the USERS' password at first boot."""
    if ctx.rules.password_hash:
        raise TaskError("On Windows images a password hash is not applicable (img_passwd_hash); use img_passwd")
    if ctx.rules.auth_keys:
        ctx.warning("SSH keys (auth_keys) are ignored on Windows images")
    password = ctx.rules.password
    if not password:
        return
    users = ctx.properties.value("USERS").split()
    if not users:
        users = [DEFAULT_USER]
        ctx.warning(f"Image property `USERS' is missing or empty. Using the default user: `{DEFAULT_USER}'.")
    for user in users:
        check_user_name(user)
    missing = missing_users(users, sam_users(ctx))
    if missing:
        raise TaskError(f"User(s) {', '.join(missing)} do not exist in the image's SAM (local accounts)")
    win = image(ctx)
    write_bytes(ctx, f"{win.snf_dir}/{PASSWORD_FILE}", password_file(password))
    write_bytes(ctx, f"{win.snf_dir}/{PASSWORD_VBS}", password_vbs(users).encode("utf-8"))
    write_bytes(ctx, f"{win.snf_dir}/{PASSWORD_SCRIPT}", password_cmd(users).encode("utf-8"))
    if ctx.osfamily == "windows-legacy":
        set_admin_password(ctx, password)


def set_admin_password(ctx: Context, password: str) -> None:
    """sysprep.inf [GuiUnattended] AdminPassword, when the file leaves it empty (mini-setup applies it)."""
    path = answer_file(ctx)
    text, codec = decode_text(read_bytes(ctx, path) or b"")
    current = ini_get(text, "GuiUnattended", "AdminPassword")
    if current not in (None, "", "*"):
        return
    if '"' in password:
        ctx.warning("The password contains a double quote; sysprep.inf's AdminPassword is left as it is")
        return
    text = ini_set(text, "GuiUnattended", "AdminPassword", ini_quote(password))
    text = ini_set(text, "GuiUnattended", "EncryptedAdminPassword", "No")
    write_bytes(ctx, path, encode_text(text, codec))


def inject_files(ctx: Context, files: Sequence[Any]) -> None:
    """EnforcePersonality for Windows: each file written as is; a file it replaces is kept as <path>.bak.<time>.

    Owner, group and mode mean nothing on NTFS here and are ignored, as the
    original did. Paths resolve inside the root (case-insensitively).
    """
    stamp = datetime.datetime.now()
    for f in files:
        path = icase(ctx.target, f.path)
        parent = PurePosixPath(path).parent
        _unix.make_dirs(ctx.target, str(parent), mode=0o755)
        parent_host = fsutil.resolve(ctx.target, str(parent))
        existing = parent_host / PurePosixPath(path).name  # the entry itself, a symlink not followed
        if existing.is_dir() and not existing.is_symlink():
            raise TaskError(f"Personality: {f.path} is a directory in the image")
        if existing.exists() or existing.is_symlink():
            existing.rename(parent_host / PurePosixPath(backup_name(path, stamp)).name)
        _unix.write_file(ctx.target, path, f.contents, mode=0o644)
