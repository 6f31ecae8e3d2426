"""Paths inside the guest's root that never lead out of it.

The image is hostile: any component of a path we write to (``/etc``,
``/etc/hostname``, ``/root/.ssh``) may be a symlink meant to make the jail
write somewhere else. Every path is resolved here component by component,
as if the guest root were ``/``: an absolute link target restarts at the
guest root and ``..`` never climbs above it (the semantics of openat2's
RESOLVE_IN_ROOT). Every task that touches the guest goes through this
module.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path, PurePosixPath

MAX_SYMLINKS = 40


class UnsafePathError(OSError):
    """A guest path that cannot be resolved safely (symlink loop, too many links)."""


def resolve(root: Path, path: str | PurePosixPath) -> Path:
    """The host path of guest ``path``, following symlinks as the guest would, clamped to ``root``.

    Components that do not exist are kept as they are, so the result also
    names files yet to be created. The result is always ``root`` or below it.
    """
    root = Path(root)
    pending = [p for p in PurePosixPath(path).parts if p not in ("/", "", ".")]
    pending.reverse()  # a stack: the next component at the end
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = candidate.lstat()
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafePathError(f"too many levels of symbolic links in {path}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                done = []
            parts = [p for p in target.parts if p not in ("/", "", ".")]
            pending.extend(reversed(parts))
            continue
        done.append(part)
    return root.joinpath(*done)


def guest_path(root: Path, host_path: Path) -> str:
    """The guest's name (``/etc/fstab``) of a host path under ``root``, for messages."""
    relative = Path(host_path).relative_to(root).as_posix()
    return "/" if relative == "." else "/" + relative


def exists(root: Path, path: str) -> bool:
    """Whether guest ``path`` exists (after in-root symlink resolution)."""
    return resolve(root, path).exists()


def is_dir(root: Path, path: str) -> bool:
    """Whether guest ``path`` is a directory (after in-root symlink resolution)."""
    return resolve(root, path).is_dir()


def read_text(root: Path, path: str, encoding: str = "utf-8") -> str:
    """The text of a regular file in the guest; refuses devices and FIFOs, which could block the jail."""
    host = resolve(root, path)
    if not host.is_file():
        raise FileNotFoundError(f"{path} is not a regular file in the image")
    return host.read_text(encoding=encoding, errors="surrogateescape")


def write_text(root: Path, path: str, text: str, mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Replace guest file ``path`` with ``text`` atomically (temp file + rename in the same directory).

    Keeps the old file's mode, owner and group unless ``mode`` is given; a new
    file gets ``mode`` or 0644 and root ownership.
    """
    host = resolve(root, path)
    parent = host.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"directory of {path} does not exist in the image")
    old = host.stat() if host.is_file() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{host.name}.", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.chmod(tmp, mode if mode is not None else (stat.S_IMODE(old.st_mode) if old else 0o644))
        os.replace(tmp, host)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return host
