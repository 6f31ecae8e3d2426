"""Paths inside the guest's root that never lead out of it.

Two kinds of path meet here. A *guest path* is what the image itself would
call a file (``/etc/fstab``, ``/Windows/System32``); a *path in the jail* is
where that file is for the helper, below the mount point of the guest root
(``/mnt/target/etc/fstab``). :func:`resolve` turns the first into the second
and :func:`guest_path` back.

The image is hostile: any component of a path we write to (``/etc``,
``/etc/hostname``, ``/root/.ssh``) may be a symlink meant to make the jail
write somewhere else. :func:`resolve` therefore walks the guest path
component by component, as if the guest root were ``/``: an absolute link
target restarts at the guest root and ``..`` never climbs above it (the
semantics of openat2's RESOLVE_IN_ROOT). Windows matches names without
case, so for Windows guests each component may be matched that way too.
Every task and the detection go through this one function.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path, PurePosixPath

from .commands import TaskError

MAX_SYMLINKS = 40


class UnsafePathError(OSError):
    """A guest path that cannot be resolved safely (symlink loop, too many links)."""


def _spelling(directory: Path, name: str) -> str:
    """``name`` as an entry of ``directory`` spells it when the two differ only in case, else ``name``."""
    if os.path.lexists(directory / name):
        return name
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return name
    wanted = name.casefold()
    return next((entry for entry in entries if entry.casefold() == wanted), name)


def resolve(
    root: Path, guest_path: str | PurePosixPath, *, ignore_case: bool = False, follow_last: bool = True
) -> Path:
    """The path in the jail of ``guest_path``, following symlinks as the guest would, clamped to ``root``.

    Components that do not exist are kept as they are, so the result also
    names files yet to be created. The result is always ``root`` or below it.
    ``ignore_case``: each component matches an existing entry whatever its
    case (Windows), and the result keeps the image's own spelling.
    ``follow_last=False``: the last component is not followed when it is a
    symlink (the entry itself is what the caller replaces or removes).
    """
    root = Path(root)
    pending = [p for p in PurePosixPath(guest_path).parts if p not in ("/", "", ".")]
    pending.reverse()  # a stack: the next component at the end
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        if ignore_case:
            part = _spelling(root.joinpath(*done), part)
        if not pending and not follow_last:
            done.append(part)
            break
        candidate = root.joinpath(*done, part)
        try:
            st = candidate.lstat()
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafePathError(f"too many levels of symbolic links in {guest_path}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                done = []
            pending.extend(reversed([p for p in target.parts if p not in ("/", "", ".")]))
            continue
        done.append(part)
    return root.joinpath(*done)


def guest_path(root: Path, jail_path: Path) -> str:
    """The guest path (``/etc/fstab``) of a path in the jail under ``root``: for messages, and to write there."""
    relative = Path(jail_path).relative_to(root).as_posix()
    return "/" if relative == "." else "/" + relative


def exists(root: Path, path: str) -> bool:
    """Whether guest ``path`` exists (after in-root symlink resolution)."""
    return resolve(root, path).exists()


def is_dir(root: Path, path: str) -> bool:
    """Whether guest ``path`` is a directory (after in-root symlink resolution)."""
    return resolve(root, path).is_dir()


def read_text(root: Path, path: str, encoding: str = "utf-8") -> str:
    """The text of a regular file in the guest; refuses devices and FIFOs, which could block the jail."""
    found = resolve(root, path)
    if not found.is_file():
        raise FileNotFoundError(f"{path} is not a regular file in the image")
    return found.read_text(encoding=encoding, errors="surrogateescape")


def read_optional(root: Path, path: str) -> str | None:
    """The text of guest file ``path``, or None when it is absent (or not a regular file)."""
    try:
        return read_text(root, path)
    except FileNotFoundError:
        return None


def _replace(target: Path, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """Put ``data`` at ``target`` atomically: a temp file in the same directory, fsynced, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)  # after chown, which clears set-id bits
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(root: Path, path: str, text: str, mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Replace the text of guest file ``path`` (a symlink followed inside the root), atomically.

    For editing the image's own files: keeps the old file's mode, owner and
    group unless ``mode`` is given; a new file gets ``mode`` or 0644 and
    root ownership.
    """
    target = resolve(root, path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"directory of {path} does not exist in the image")
    old = target.stat() if target.is_file() else None
    if mode is None:
        mode = stat.S_IMODE(old.st_mode) if old is not None else 0o644
    uid, gid = (old.st_uid, old.st_gid) if old is not None else (0, 0)
    _replace(target, text.encode(encoding, "surrogateescape"), mode=mode, uid=uid, gid=gid)
    return target


def entry(root: Path, path: str, *, ignore_case: bool = False) -> Path:
    """The path in the jail of the directory entry ``path`` itself: a final symlink is not followed.

    What a task replaces or removes; ``path`` must be absolute and plain
    (no ``..``), else TaskError.
    """
    guest = PurePosixPath(path)
    if not guest.is_absolute() or ".." in guest.parts or guest.name in ("", ".", ".."):
        raise TaskError(f"Invalid path in the image: {path!r}")
    return resolve(root, guest, ignore_case=ignore_case, follow_last=False)


def write_file(
    root: Path, path: str, data: bytes, *, mode: int, uid: int = 0, gid: int = 0, ignore_case: bool = False
) -> Path:
    """Create or replace guest file ``path`` atomically with exactly this owner and mode.

    A symlink (or any non-directory) at ``path`` is replaced, never followed;
    a directory there is an error. The parent must exist.
    """
    target = entry(root, path, ignore_case=ignore_case)
    if not target.parent.is_dir():
        raise TaskError(f"Cannot write {path}: its directory does not exist in the image")
    if target.is_dir() and not target.is_symlink():
        raise TaskError(f"Cannot write {path}: it is a directory in the image")
    _replace(target, data, mode=mode, uid=uid, gid=gid)
    return target


def make_dirs(root: Path, path: str, *, mode: int, uid: int = 0, gid: int = 0, ignore_case: bool = False) -> list[str]:
    """Create the missing directories of guest ``path`` (itself included) with this owner and mode.

    Existing components are left as they are (a symlink to a directory
    inside the guest is followed, as the guest would); an existing
    non-directory is an error. Returns the guest paths created.
    """
    guest = PurePosixPath(path)
    if not guest.is_absolute() or ".." in guest.parts:
        raise TaskError(f"Invalid path in the image: {path!r}")
    created = []
    for i in range(2, len(guest.parts) + 1):
        prefix = str(PurePosixPath(*guest.parts[:i]))
        directory = resolve(root, prefix, ignore_case=ignore_case)
        if directory.is_dir():
            continue
        if os.path.lexists(directory):
            raise TaskError(f"Cannot create {path}: {prefix} exists in the image and is not a directory")
        try:
            directory.mkdir()
        except OSError as exc:
            raise TaskError(f"Cannot create directory {prefix} in the image: {exc.strerror}") from exc
        os.chown(directory, uid, gid, follow_symlinks=False)
        os.chmod(directory, mode)
        created.append(prefix)
    return created


def remove(root: Path, path: str) -> bool:
    """Remove guest file (or symlink) ``path`` without following a final symlink; True if it was there."""
    target = entry(root, path)
    try:
        st = target.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise TaskError(f"Cannot remove {path}: it is a directory in the image")
    target.unlink()
    return True
