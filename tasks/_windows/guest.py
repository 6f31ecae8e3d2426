"""Reading and writing the mounted Windows image: names matched without case, as Windows matches them.

Every guest path of the Windows tasks goes through here (and so through
:func:`helper.fsutil.resolve` with ``ignore_case``): a file is found however
the image spells it, and a replaced file keeps the image's spelling
(lowntfs-3g's own ignore_case would list, and so rewrite, every name in
lower case).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from helper import fsutil, registry
from helper.commands import TaskError
from helper.framework import Context
from helper.windows import WindowsImage, windows_dir

from .checks import unattend_arch
from .ini import decode_text, encode_text
from .scripts import SNF_SETUP_COMPLETE, cmd_lines, insert_setup_complete

PROP_OFFLINE = "OFFLINE_NTFSRESIZE"
PROP_ALLOW_DIRTY = "ALLOW_DIRTY_NTFS"

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


def jail_path(ctx: Context, path: str) -> Path:
    """The path in the jail of guest ``path``, matched without case and never outside the root."""
    return fsutil.resolve(ctx.target, path, ignore_case=True)


def read_bytes(ctx: Context, path: str) -> bytes | None:
    """A regular file of the guest, or None if it does not exist."""
    return fsutil.read_bytes(ctx.target, path, ignore_case=True)


def write_bytes(ctx: Context, path: str, data: bytes) -> None:
    """Create or replace a guest file, its missing directories made (NTFS ignores modes)."""
    parent = str(PurePosixPath(path).parent)
    fsutil.make_dirs(ctx.target, parent, mode=0o755, ignore_case=True)
    fsutil.write_file(ctx.target, path, data, mode=0o644, ignore_case=True)


def hive_file(ctx: Context, guest_path: str) -> Path:
    """The path in the jail of a hive; TaskError if the image lacks it."""
    found = fsutil.entry(ctx.target, guest_path, ignore_case=True)  # hivex writes it: never through a link
    if found.is_symlink() or not found.is_file():
        raise TaskError(f"The image has no registry hive {guest_path} (or it is not a regular file)")
    return found


def image(ctx: Context) -> WindowsImage:
    """The image's Windows facts, read from its hives the first time a task asks."""
    if ctx.windows is not None:
        return ctx.windows
    windir = windows_dir(ctx.target)
    if windir is None:
        raise TaskError("No Windows directory with System32 in the root partition; is ROOT_PARTITION right?")
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


def sam_users(ctx: Context) -> list[str]:
    """The local account names of the image (SAM hive, SAM\\Domains\\Account\\Users\\Names)."""
    win = image(ctx)
    try:
        with registry.opened(hive_file(ctx, win.hive("SAM"))) as sam:
            return sam.subkeys("SAM\\Domains\\Account\\Users\\Names")
    except registry.HiveError as exc:
        raise TaskError(str(exc)) from exc


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


def find_unattend(ctx: Context, win: WindowsImage) -> str | None:
    """The guest path of the image's answer file Windows would read first, or None.

    The path is the entry's own, not where a symbolic link there points: the answer file is
    rewritten at this path, and a write never follows a link (helper/fsutil.py).
    """
    for pattern in UNATTEND_CANDIDATES:
        found = fsutil.entry(ctx.target, pattern.format(windir=win.windir), ignore_case=True)
        if found.is_file():
            return fsutil.guest_path(ctx.target, found)
    return None


def answer_file(ctx: Context) -> str:
    """The answer file the tasks edit: InstallUnattend's, or the image's own when it did not run."""
    win = image(ctx)
    if win.answer_file is None:
        found = find_unattend(ctx, win) if ctx.osfamily == "windows" else SYSPREP_INF
        if found is None or not jail_path(ctx, found).is_file():
            raise TaskError("The image has no answer file (unattend.xml / sysprep.inf) and InstallUnattend did not run")
        win.answer_file = found
    return win.answer_file


def ntfs_dirty(ctx: Context, device: Path) -> bool:
    """Whether the NTFS on ``device`` is marked dirty (a check is scheduled): ntfsinfo refuses it then."""
    proc = ctx.run(["ntfsinfo", "-m", device], check=False)
    if proc.returncode == 0:
        return False
    if "scheduled for check" in (proc.stdout + proc.stderr):
        return True
    raise TaskError(f"ntfsinfo cannot read the NTFS on {device}: " + (proc.stderr.strip().splitlines() or ["?"])[-1])


def offline_resize(ctx: Context) -> bool:
    """Whether NTFS grows offline with ntfsresize (always for windows-legacy, OFFLINE_NTFSRESIZE for windows)."""
    return ctx.osfamily == "windows-legacy" or ctx.properties.flag(PROP_OFFLINE)
