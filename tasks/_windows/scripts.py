"""The first-boot scripts snf-image leaves under %WINDIR%\\SnfScripts, as text (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from helper.commands import TaskError
from helper.windows import SNF_DIR

from .checks import check_user_name
from .ini import CRLF, newline_of

PASSWORD_FILE = "Password"
PASSWORD_SCRIPT = "ChangePassword.cmd"
PASSWORD_VBS = "SetPassword.vbs"
EXTEND_SCRIPT = "ExtendFilesystem.txt"
SNF_SETUP_COMPLETE = "SnfSetupComplete.cmd"
BEGIN_MARK = "@rem snf-image: begin"
END_MARK = "@rem snf-image: end"
SNF_SCRIPTS = f"%WINDIR%\\{SNF_DIR}"  # our directory, as the first-boot scripts name it


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
    return [
        BEGIN_MARK,
        f'@if exist "{SNF_SCRIPTS}\\{SNF_SETUP_COMPLETE}" call "{SNF_SCRIPTS}\\{SNF_SETUP_COMPLETE}"',
        f'@rmdir /s /q "{SNF_SCRIPTS}"',
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
