"""Ganeti's import and export: raw disk bytes through a pipe, fast and in constant memory.

Export reports the size on EXP_SIZE_FD first, then writes the disk to stdout:
a local disk is spliced into stdout when stdout is a pipe (no copies through
user space); a userspace disk (``nbd://``, ``rbd:``, ...) is read over NBD,
read-only, one chunk at a time. Import is the same sparse-aware copy as
create, reading stdin, onto any disk create can write.
"""

from __future__ import annotations

import errno
import os
import stat

from .copy import copy_stream
from .sources.base import ImageStream
from .targets import NbdTarget, TargetError, is_local, open_target

CHUNK = 8 * 1024 * 1024


class FdStream(ImageStream):
    """A file descriptor (stdin) read as an image stream of unknown size."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def readinto(self, buffer: memoryview) -> int:
        return os.readv(self._fd, [buffer])


def import_disk(path: str, fd: int = 0) -> int:
    """Write what arrives on ``fd`` onto the disk at ``path`` (never truncating it); return the bytes."""
    with open_target(path) as target:
        written = copy_stream(FdStream(fd), target)
        target.flush()
    return written


def disk_size(fd: int) -> int:
    """Size of an open regular file or block device."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fstat(fd).st_size
    return os.lseek(fd, 0, os.SEEK_END)


def _report_size(size_fd: int | None, size: int) -> None:
    if size_fd is not None:
        os.write(size_fd, f"{size}\n".encode())


def export_disk(path: str, out_fd: int = 1, size_fd: int | None = None) -> int:
    """Write the disk at ``path`` to ``out_fd``; report its size on ``size_fd`` first."""
    if not is_local(path):
        return _export_userspace(path, out_fd, size_fd)
    try:
        in_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TargetError(f"cannot open disk {path}: {exc.strerror}") from exc
    try:
        size = disk_size(in_fd)
        os.lseek(in_fd, 0, os.SEEK_SET)
        _report_size(size_fd, size)
        return _pump(in_fd, out_fd, size)
    finally:
        os.close(in_fd)


def _export_userspace(uri: str, out_fd: int, size_fd: int | None) -> int:
    """A userspace disk to ``out_fd``, CHUNK bytes in memory at a time."""
    with NbdTarget(uri, readonly=True) as disk:
        _report_size(size_fd, disk.size)
        copied = 0
        while copied < disk.size:
            data = disk.read(copied, min(CHUNK, disk.size - copied))
            _write_all(out_fd, data)
            copied += len(data)
    return copied


def _write_all(out_fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view) :]


def _pump(in_fd: int, out_fd: int, size: int) -> int:
    copied = 0
    use_splice = stat.S_ISFIFO(os.fstat(out_fd).st_mode)
    while copied < size:
        count = min(CHUNK, size - copied)
        if use_splice:
            try:
                n = os.splice(in_fd, out_fd, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                use_splice = False
                continue
        else:
            data = os.read(in_fd, count)
            n = len(data)
            _write_all(out_fd, data)
        if n == 0:
            raise TargetError(f"the disk ended after {copied} of {size} bytes")
        copied += n
    return copied
