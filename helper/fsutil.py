"""Paths inside the guest's root that never lead out of it, nor anywhere a task did not mean.

Two kinds of path meet here. A *guest path* is what the image itself would
call a file (``/etc/fstab``, ``/Windows/System32``); a *path in the jail* is
where that file is for the helper, below the mount point of the guest root
(``/mnt/target/etc/fstab``). :func:`resolve` turns the first into the second
and :func:`guest_path` back.

The image is hostile: any component of a path (``/etc``, ``/etc/hostname``,
``/root/.ssh``) may be a symlink meant to make the jail read or write
somewhere else. Every path is walked component by component, as if the guest
root were ``/``: an absolute link target restarts at the guest root and
``..`` never climbs above it (the semantics of openat2's RESOLVE_IN_ROOT).
Windows matches names without case, so for Windows guests each component may
be matched that way too. Every task and the detection go through this module.

Reading (:func:`resolve`, :func:`read_text`) follows symlinks as the guest
would, inside the root: what the guest reads at boot is what we read. Only
regular files are read (a FIFO or a device could block the jail), and at
most :data:`MAX_READ_BYTES` of them.

Writing follows a stricter policy, so that a write lands on the path the task
meant and nowhere else in the guest either (a symlinked directory on the way
is as dangerous as a symlinked file):

* the last component is never followed: a file written whole
  (:func:`write_file`) replaces a symlink, FIFO or device node there; a file
  edited in place (:func:`write_text`, which keeps its mode, owner and the
  rest of its text) must be a regular file, and a symlink there is refused;
* a symlinked directory on the way is followed only if it is one of the
  standard layouts' links (:data:`LAYOUT_LINKS`: merged /usr's ``/bin ->
  usr/bin``, ``/var/run -> /run``, FreeBSD's ``/home -> usr/home``, ostree's
  ``/home -> var/home`` and ``/root -> var/roothome``, ...) pointing where
  that layout points it; any other is refused (:class:`UnsafePathError`, a
  TaskError naming the link and its target), and so is a symlink loop.

:func:`entry` (what a task replaces or removes) and :func:`directory` (a
directory a task writes in) resolve by this policy; make_dirs, write_file,
write_text and remove use them.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path, PurePosixPath

from .commands import TaskError

MAX_SYMLINKS = 40
#: The largest guest file a task reads: configuration files are small; a 2 GiB /etc/passwd is an attack.
MAX_READ_BYTES = 16 * 1024 * 1024
#: The symlinked directories of standard layouts, and where each may point (guest paths): the only
#: symlinks a write follows. Merged /usr (Debian 12, Ubuntu, Fedora, Arch); /run (every systemd
#: distribution); FreeBSD's /home; ostree's (Fedora CoreOS, Silverblue) writable locations.
LAYOUT_LINKS: dict[str, frozenset[str]] = {
    "/bin": frozenset({"/usr/bin"}),
    "/sbin": frozenset({"/usr/sbin", "/usr/bin"}),
    "/lib": frozenset({"/usr/lib"}),
    "/lib32": frozenset({"/usr/lib32"}),
    "/lib64": frozenset({"/usr/lib64", "/usr/lib"}),
    "/libx32": frozenset({"/usr/libx32"}),
    "/usr/sbin": frozenset({"/usr/bin"}),
    "/var/run": frozenset({"/run"}),
    "/var/lock": frozenset({"/run/lock"}),
    "/home": frozenset({"/usr/home", "/var/home"}),
    "/root": frozenset({"/var/roothome"}),
    "/opt": frozenset({"/var/opt"}),
    "/srv": frozenset({"/var/srv"}),
    "/mnt": frozenset({"/var/mnt"}),
    "/media": frozenset({"/run/media"}),
    "/usr/local": frozenset({"/var/usrlocal"}),
}


class UnsafePathError(TaskError):
    """A guest path a task may not use: a symlink loop, or a write through a symlink the policy refuses."""


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


def _walk(root: Path, guest_path: str | PurePosixPath, *, ignore_case: bool, last: str, writing: str = "") -> Path:
    """The path in the jail of ``guest_path``, walked component by component inside ``root``.

    ``last``: "follow" (any symlink, as the guest), "keep" (the last component is not followed)
    or "layout" (followed only as a directory on the way of a write is). ``writing``: the guest
    path a task writes, for which only :data:`LAYOUT_LINKS` are followed on the way; empty
    when reading.
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
        if not pending and last == "keep":
            done.append(part)
            break
        candidate = root.joinpath(*done, part)
        try:
            st = candidate.lstat()
        except (FileNotFoundError, NotADirectoryError):  # absent, or below a file: what the caller makes of it
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafePathError(f"too many levels of symbolic links in {guest_path} in the image")
            target = PurePosixPath(os.readlink(candidate))
            base = [] if target.is_absolute() else list(done)
            if writing:
                _check_layout_link([*done, part], base, target, writing)
            done = base
            pending.extend(reversed([p for p in target.parts if p not in ("/", "", ".")]))
            continue
        done.append(part)
    return root.joinpath(*done)


def _check_layout_link(link: list[str], base: list[str], target: PurePosixPath, writing: str) -> None:
    """Refuse to write ``writing`` through the symlink ``link`` unless it is a layout link to its usual place."""
    where = "/" + "/".join(link)
    parts = list(base)
    for part in target.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("/", "", "."):
            parts.append(part)
    points_to = "/" + "/".join(parts)
    if points_to in LAYOUT_LINKS.get(where, frozenset()):
        return
    raise UnsafePathError(
        f"{where} is a symbolic link in the image (to {target}): refusing to write {writing} through it; "
        "a write follows no symbolic link but the standard layout's (see the README, Security)"
    )


def resolve(
    root: Path, guest_path: str | PurePosixPath, *, ignore_case: bool = False, follow_last: bool = True
) -> Path:
    """The path in the jail of ``guest_path``, following symlinks as the guest would, clamped to ``root``.

    For reading. Components that do not exist are kept as they are, so the
    result also names files yet to be created. The result is always ``root``
    or below it. ``ignore_case``: each component matches an existing entry
    whatever its case (Windows), and the result keeps the image's own
    spelling. ``follow_last=False``: the last component is not followed when
    it is a symlink. A symlink loop is an UnsafePathError.
    """
    return _walk(root, guest_path, ignore_case=ignore_case, last="follow" if follow_last else "keep")


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


def _read_regular(found: Path, path: str) -> bytes:
    """The bytes of regular file ``found`` (guest ``path``), if it holds at most MAX_READ_BYTES, else TaskError."""
    with open(found, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_READ_BYTES:
            raise TaskError(f"{path} in the image is {size} bytes, larger than the {MAX_READ_BYTES >> 20} MiB read")
        return f.read(MAX_READ_BYTES + 1)[:MAX_READ_BYTES]


def read_bytes(root: Path, path: str, *, ignore_case: bool = False) -> bytes | None:
    """The bytes of regular guest file ``path`` (at most MAX_READ_BYTES, else TaskError), or None if there is none."""
    found = resolve(root, path, ignore_case=ignore_case)
    return _read_regular(found, path) if found.is_file() else None


def read_text(root: Path, path: str, encoding: str = "utf-8") -> str:
    """The text of a regular file in the guest; refuses devices and FIFOs (they could block the jail) and huge files."""
    found = resolve(root, path)
    if not found.is_file():
        raise FileNotFoundError(f"{path} is not a regular file in the image")
    return _read_regular(found, path).decode(encoding, "surrogateescape")


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


def _writable(root: Path, path: str, *, ignore_case: bool = False) -> Path:
    """The entry a task writes at guest ``path``: its directory exists; it is no directory itself."""
    target = entry(root, path, ignore_case=ignore_case)
    if not target.parent.is_dir():
        raise TaskError(f"Cannot write {path}: its directory does not exist in the image")
    if target.is_dir() and not target.is_symlink():
        raise TaskError(f"Cannot write {path}: it is a directory in the image")
    return target


def _refuse_link(target: Path, path: str) -> None:
    if target.is_symlink():
        raise UnsafePathError(
            f"Refusing to edit {path}: it is a symbolic link in the image (to {os.readlink(target)}); "
            "a file is never edited through a symbolic link (see the README, Security)"
        )


def write_text(root: Path, path: str, text: str, mode: int | None = None, encoding: str = "utf-8") -> Path:
    """Replace the text of guest file ``path`` atomically: an edit of the image's own file.

    Keeps the old file's mode, owner and group unless ``mode`` is given; a
    new file gets ``mode`` or 0644 and root ownership. The file must be a
    regular file (or absent, or a node a write replaces): a symlink there is
    refused, since the text being edited would be its target's.
    """
    target = _writable(root, path)
    _refuse_link(target, path)
    old = target.stat() if target.is_file() else None
    if mode is None:
        mode = stat.S_IMODE(old.st_mode) if old is not None else 0o644
    uid, gid = (old.st_uid, old.st_gid) if old is not None else (0, 0)
    _replace(target, text.encode(encoding, "surrogateescape"), mode=mode, uid=uid, gid=gid)
    return target


def _plain(path: str, *, directory: bool = False) -> PurePosixPath:
    guest = PurePosixPath(path)
    if not guest.is_absolute() or ".." in guest.parts or (not directory and guest.name in ("", ".", "..")):
        raise TaskError(f"Invalid path in the image: {path!r}")
    return guest


def entry(root: Path, path: str, *, ignore_case: bool = False) -> Path:
    """The path in the jail of the entry ``path`` itself, by the write policy: what a task replaces or removes.

    The last component is not followed; a symlink on the way other than a
    layout link is an UnsafePathError. ``path`` must be absolute and plain
    (no ``..``), else TaskError.
    """
    guest = _plain(path)
    return _walk(root, guest, ignore_case=ignore_case, last="keep", writing=path)


def directory(root: Path, path: str, *, ignore_case: bool = False) -> Path:
    """The path in the jail of directory ``path`` that a task writes in, by the write policy.

    Like :func:`entry`, but the directory itself may be a layout link (``/home``).
    """
    guest = _plain(path, directory=True)
    return _walk(root, guest, ignore_case=ignore_case, last="layout", writing=path)


def write_file(
    root: Path,
    path: str,
    data: bytes,
    *,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    ignore_case: bool = False,
    edit: bool = False,
) -> Path:
    """Create or replace guest file ``path`` atomically with exactly this owner and mode.

    A symlink (or any non-directory) at ``path`` is replaced, never followed;
    a directory there is an error. The parent must exist. ``edit``: ``data``
    was made from the file's old text, so a symlink there is refused as
    :func:`write_text` refuses it.
    """
    target = _writable(root, path, ignore_case=ignore_case)
    if edit:
        _refuse_link(target, path)
    _replace(target, data, mode=mode, uid=uid, gid=gid)
    return target


def make_dirs(root: Path, path: str, *, mode: int, uid: int = 0, gid: int = 0, ignore_case: bool = False) -> list[str]:
    """Create the missing directories of guest ``path`` (itself included) with this owner and mode.

    Existing components are left as they are; a layout link among them is
    followed, any other symlink refused (the write policy); an existing
    non-directory is an error. Returns the guest paths created.
    """
    guest = _plain(path, directory=True)
    created = []
    for i in range(2, len(guest.parts) + 1):
        prefix = str(PurePosixPath(*guest.parts[:i]))
        found = _walk(root, prefix, ignore_case=ignore_case, last="layout", writing=path)
        if found.is_dir():
            continue
        if os.path.lexists(found):
            raise TaskError(f"Cannot create {path}: {prefix} exists in the image and is not a directory")
        try:
            found.mkdir()
        except OSError as exc:
            raise TaskError(f"Cannot create directory {prefix} in the image: {exc.strerror}") from exc
        os.chown(found, uid, gid, follow_symlinks=False)
        os.chmod(found, mode)
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
