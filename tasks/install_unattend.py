"""InstallUnattend: prepare the Windows answer file and the first-boot scripts.

Reads the image's registry (hivex): the current control set, the processor
architecture, the NT version (it must fit OSFAMILY: ``windows`` is Vista /
2008 and later, ``windows-legacy`` XP / 2003) and the sysprep state -- an
image that was not generalized by sysprep is refused with a message saying
how to run it, since every instance would share its identity.

``windows``: the answer file is the image's own (``%WINDIR%\\Panther\\Unattend\\
Unattend.xml``, ``Panther\\Unattend.xml``, ``System32\\Sysprep\\unattend.xml``,
``C:\\unattend.xml`` ..., in Windows' search order), or the one from the host
(``os_answer_file``, or the shipped template with WINDOWS_TIMEZONE) when the
image has none or ``IGNORE_UNATTEND`` is set. Its specialize pass gets two
RunSynchronous commands: grow the filesystem (diskpart, see
FilesystemResizeMounted) and set the users' password (ChangePassword), and
Shell-Setup gets ``ProductKey`` from ``os_product_key``.

``windows-legacy``: ``C:\\sysprep\\sysprep.inf`` (or the host's when missing or
with IGNORE_UNATTEND) gets ``[UserData] ProductKey``, and
``<InstallFilesPath>\\$OEM$\\CmdLines.txt`` the commands that set the
password and run SetupComplete.cmd at the end of mini-setup.

For both, ``%WINDIR%\\Setup\\Scripts\\SetupComplete.cmd`` (the image's own
commands kept) first removes what held secrets: the password file (overwritten,
then deleted) and the answer files.

Properties: IGNORE_UNATTEND.
"""

from __future__ import annotations

from pathlib import PureWindowsPath

from helper import registry
from helper.commands import TaskError
from helper.framework import WINDOWS, Context, Task
from helper.windows import WindowsImage

from ._windows import checks, guest, ini, scripts, unattend

TASK = Task(
    name="InstallUnattend",
    order=35,
    families=WINDOWS,
    excludable=False,
    mounted=True,
    resize=False,
    cloudinit_skip=True,
    overridable=True,
)

PROP_IGNORE_UNATTEND = "IGNORE_UNATTEND"
DEFAULT_INSTALL_FILES = "C:\\sysprep\\i386"
SETUP_STATE_KEY = "Microsoft\\Windows\\CurrentVersion\\Setup\\State"
SETUP_STATE_INI = "{windir}/Setup/State/State.ini"


def run(ctx: Context) -> None:
    """Check the image, install and edit the answer file, lay out the first-boot scripts."""
    win = guest.image(ctx)
    checks.check_family(ctx.osfamily, win.major)
    make_scripts(ctx, win)
    if ctx.osfamily == "windows":
        check_generalized(ctx, win)
        win.answer_file = install_unattend(ctx, win)
    else:
        check_resealed(ctx, win)
        win.answer_file = install_sysprep(ctx, win)
    guest.append_setup_complete(ctx, scripts.wipe_lines(scripts.windows_path(win.answer_file)))


def make_scripts(ctx: Context, win: WindowsImage) -> None:
    """Placeholders the later tasks fill, and the cleanup of the password file."""
    guest.write_bytes(ctx, f"{win.snf_dir}/{scripts.PASSWORD_SCRIPT}", scripts.cmd_lines(["@echo off"]).encode())
    guest.write_bytes(ctx, f"{win.snf_dir}/{scripts.EXTEND_SCRIPT}", scripts.cmd_lines(["exit"]).encode())
    snf = scripts.SNF_SCRIPTS
    guest.append_setup_complete(
        ctx, [*scripts.wipe_lines(f"{snf}\\{scripts.PASSWORD_FILE}"), f'del /f /q "{snf}\\{scripts.PASSWORD_VBS}"']
    )


def image_state(ctx: Context, win: WindowsImage) -> str | None:
    """ImageState from the SOFTWARE hive, or from Setup\\State\\State.ini (Vista writes both)."""
    with registry.opened(guest.hive_file(ctx, win.hive("SOFTWARE"))) as software:
        state = software.value(SETUP_STATE_KEY, "ImageState")
    if isinstance(state, str) and state:
        return state
    state_ini = guest.read_bytes(ctx, SETUP_STATE_INI.format(windir=win.windir))  # case-insensitive
    if state_ini is not None:
        return ini.ini_get(ini.decode_text(state_ini)[0], "State", "ImageState")
    return None


def check_generalized(ctx: Context, win: WindowsImage) -> None:
    checks.check_image_state(image_state(ctx, win))


def check_resealed(ctx: Context, win: WindowsImage) -> None:
    with registry.opened(guest.hive_file(ctx, win.hive("SYSTEM"))) as system:
        checks.check_legacy_setup(
            system.value("Setup", "SystemSetupInProgress"), system.value("Setup", "MiniSetupInProgress")
        )


def host_file(ctx: Context, name: str) -> str:
    """An answer file the host sent (rules.files); a host too old to send one is an error."""
    text = ctx.rules.files.get(name)
    if not text:
        raise TaskError(f"The host sent no {name} to install (is snf-image on the host up to date?)")
    return text


def install_unattend(ctx: Context, win: WindowsImage) -> str:
    """The guest path of the edited unattend.xml."""
    existing = guest.find_unattend(ctx, win)
    path = existing or guest.DEFAULT_UNATTEND.format(windir=win.windir)
    ignore = ctx.properties.flag(PROP_IGNORE_UNATTEND)
    if existing is None or ignore:
        text = host_file(ctx, "unattend.xml")
        data = text.encode("utf-8")
        if text.lstrip().startswith("<?xml") and "utf-16" in text.split("?>", 1)[0].lower():
            data = b"\xff\xfe" + text.encode("utf-16-le")
        ctx.warning(
            f"Installing the host's answer file as {path}"
            + (" (IGNORE_UNATTEND)" if existing is not None else " (the image has none)")
        )
        data, moved = unattend.retarget_arch(data, win.arch)
        if moved:
            ctx.warning(f"The answer file had no components for {win.arch}; they were retargeted to it")
    else:
        data = guest.read_bytes(ctx, existing) or b""
    snf = scripts.SNF_SCRIPTS
    try:
        data = unattend.add_sync_commands(
            data,
            win.arch,
            [
                (f"cmd.exe /c diskpart.exe /s {snf}\\{scripts.EXTEND_SCRIPT}", "Extend the file system"),
                (f"cmd.exe /c {snf}\\{scripts.PASSWORD_SCRIPT}", "Change user passwords"),
            ],
        )
        key = ctx.rules.os_product_key
        if key:
            data = unattend.set_shell_setup(data, win.arch, {"ProductKey": key})
    except TaskError as exc:
        raise TaskError(f"{path}: {exc}") from exc
    guest.write_bytes(ctx, path, data)
    return path


def install_files_dir(value: str | None) -> str:
    """The guest path of sysprep.inf's InstallFilesPath, which must be under C:\\sysprep."""
    raw = (value or DEFAULT_INSTALL_FILES).strip()
    path = PureWindowsPath(raw)
    parts = [p for p in path.parts[1:] if p not in ("\\", "/")]
    if path.drive.lower() != "c:" or not parts or parts[0].lower() != "sysprep" or ".." in parts:
        raise TaskError(f"sysprep.inf's InstallFilesPath {raw!r} is not under C:\\sysprep")
    return "/" + "/".join(parts)


def install_sysprep(ctx: Context, win: WindowsImage) -> str:
    """The guest path of the edited sysprep.inf (C:\\sysprep\\sysprep.inf, created from the host's if missing)."""
    current = guest.read_bytes(ctx, guest.SYSPREP_INF)
    if current is None or ctx.properties.flag(PROP_IGNORE_UNATTEND):
        text = host_file(ctx, "sysprep.inf")
        codec = ini.ini_codec(text)
        ctx.warning(f"Installing the host's sysprep.inf as {guest.SYSPREP_INF}")
    else:
        text, codec = ini.decode_text(current)
    if ini.ini_get(text, "Unattended", "InstallFilesPath") is None:
        text = ini.ini_set(text, "Unattended", "InstallFilesPath", DEFAULT_INSTALL_FILES)
    install_dir = install_files_dir(ini.ini_get(text, "Unattended", "InstallFilesPath"))
    key = ctx.rules.os_product_key
    if key:
        text = ini.ini_set(text, "UserData", "ProductKey", ini.ini_quote(key))
    guest.write_bytes(ctx, guest.SYSPREP_INF, ini.encode_text(text, codec))

    cmdlines = f"{install_dir}/$OEM$/CmdLines.txt"
    old = guest.read_bytes(ctx, cmdlines)
    lines, lines_codec = ini.decode_text(old) if old is not None else ("[Commands]\r\n", "utf-8")
    snf = scripts.SNF_SCRIPTS
    for command in (
        f"cmd.exe /c {snf}\\{scripts.PASSWORD_SCRIPT}",
        "cmd.exe /c %WINDIR%\\Setup\\Scripts\\SetupComplete.cmd",
    ):
        lines = ini.ini_add_line(lines, "Commands", f'"{command}"')
    guest.write_bytes(ctx, cmdlines, ini.encode_text(lines, lines_codec))
    return guest.SYSPREP_INF
