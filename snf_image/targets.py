"""Disk targets: where the image bytes go.

A target writes at offsets and can make a range read as zeros cheaply, which
is what makes sparse copies safe on a disk holding old data (a reinstall):
files and block devices get a punched hole (fallocate; a loop device passes it
to its backing file, thin LVM unmaps), else BLKZEROOUT, else written zeros;
NBD exports get NBD_CMD_WRITE_ZEROES.

Userspace disks (``DISK_N_URI``) are reached over NBD with libnbd: an
``nbd://`` or ``nbd+unix://`` URI directly, anything else qemu understands
(``rbd:``, ``gluster://``, ``iscsi://``, ...) through a private ``qemu-nbd``
that exports it on a unix socket for the duration of the copy. qemu-nbd is our
child, not a daemon, so it is stopped with the copy, on a signal too, and dies
with us (:mod:`snf_image.lifecycle`).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import tempfile
import time

from . import lifecycle, tempdirs
from .errors import OperatorError, SnfImageError

log = logging.getLogger(__name__)

BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
ZERO_CHUNK = 4 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 0x2
#: WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on the disk when it returns.
SYNC_FILE_RANGE_WAIT_ALL = 0x7
#: Userspace disks that both the copy and the helper VM's qemu can open (nbds:// is NBD over TLS:
#: qemu would need certificates the helper has not).
USERSPACE_SCHEMES = ("nbd", "nbd+tcp", "nbd+unix", "rbd", "iscsi", "gluster")
#: What libnbd reaches directly; the other userspace disks go through a private qemu-nbd.
NBD_SCHEMES = ("nbd://", "nbd+unix://")
QEMU_NBD_START_TIMEOUT = 10.0
#: Seconds qemu-nbd gets to flush and exit on SIGTERM before it is killed.
QEMU_NBD_STOP_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_ZEROS = bytes(ZERO_CHUNK)


class TargetError(SnfImageError):
    """Writing to the instance disk failed."""


class DiskTarget(abc.ABC):
    """An open instance disk."""

    #: Size in bytes; images larger than this are refused before writing.
    size: int
    #: What to call it in messages.
    name: str

    @abc.abstractmethod
    def write(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset``."""

    @abc.abstractmethod
    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros, without writing them where possible."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make written data durable."""

    def start_writeback(self, offset: int, length: int) -> None:  # noqa: B027 - optional hook
        """Begin writing a range just written out to the disk, without waiting (a copy's write-behind)."""

    def settle(self, offset: int, length: int) -> None:  # noqa: B027 - optional hook
        """Wait until a range is on the disk and drop it from the page cache (nobody reads it back)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DiskTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FdTarget(DiskTarget):
    """A local regular file or block device, never truncated."""

    def __init__(self, path: str) -> None:
        self.name = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TargetError(f"cannot open disk {path}: {exc.strerror}") from exc
        self.size = self._size()

    @abc.abstractmethod
    def _size(self) -> int: ...

    def write(self, offset: int, data: memoryview) -> None:
        while data:
            try:
                written = os.pwrite(self.fd, data, offset)
            except OSError as exc:
                raise TargetError(f"cannot write to disk {self.name}: {exc.strerror}") from exc
            data = data[written:]
            offset += written

    def _write_zeros(self, offset: int, length: int) -> None:
        while length > 0:
            step = min(length, ZERO_CHUNK)
            self.write(offset, memoryview(_ZEROS)[:step])
            offset += step
            length -= step

    def zero(self, offset: int, length: int) -> None:
        """Punch a hole: files and block devices (Linux >= 4.9) guarantee zeros and may unmap the range."""
        if length <= 0:
            return
        if _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV):
            raise TargetError(f"cannot zero a range of disk {self.name}: {os.strerror(err)}")
        self._zero_fallback(offset, length)

    @abc.abstractmethod
    def _zero_fallback(self, offset: int, length: int) -> None: ...

    def start_writeback(self, offset: int, length: int) -> None:
        _libc.sync_file_range(self.fd, offset, length, SYNC_FILE_RANGE_WRITE)  # advice: errors surface in flush

    def settle(self, offset: int, length: int) -> None:
        _libc.sync_file_range(self.fd, offset, length, SYNC_FILE_RANGE_WAIT_ALL)
        with contextlib.suppress(OSError):  # advice too
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise TargetError(f"cannot flush disk {self.name}: {exc.strerror}") from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileTarget(_FdTarget):
    """A regular file (Ganeti's file and sharedfile disk templates)."""

    def _size(self) -> int:
        return os.fstat(self.fd).st_size

    def _zero_fallback(self, offset: int, length: int) -> None:
        self._write_zeros(offset, length)


class BlockTarget(_FdTarget):
    """A block device (LVM, DRBD, an adopted device, a loop device)."""

    def _size(self) -> int:
        buf = fcntl.ioctl(self.fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]

    def _zero_fallback(self, offset: int, length: int) -> None:
        """BLKZEROOUT: the device zeroes the range itself (write-zeroes), else the kernel writes zeros."""
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                raise TargetError(f"cannot zero a range of disk {self.name}: {exc.strerror}") from exc
            self._write_zeros(offset, length)


class NbdTarget(DiskTarget):
    """A userspace disk reached over NBD (directly, or through a private qemu-nbd).

    ``readonly`` (export): the private qemu-nbd opens the disk read-only, so a
    read-only backend (a snapshot) can be exported too.
    """

    def __init__(self, uri: str, readonly: bool = False) -> None:
        import nbd  # python3-libnbd; only userspace disks need it

        self.name = uri
        self._readonly = readonly
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._dir_fd: int | None = None
        self._children = contextlib.ExitStack()
        self._handle = nbd.NBD()
        self._nbd_error = nbd.Error
        try:
            if uri.startswith(NBD_SCHEMES):
                self._handle.connect_uri(uri)
            else:
                self._handle.connect_unix(self._start_qemu_nbd(uri))
            self.size = self._handle.get_size()
            self._can_zero = bool(self._handle.can_zero())
        except nbd.Error as exc:
            self.close()
            raise TargetError(f"cannot connect to disk {uri}: {exc.string}") from exc
        except BaseException:
            self.close()
            raise

    def _start_qemu_nbd(self, uri: str) -> str:
        """Export ``uri`` (any qemu block protocol) on a private unix socket; return its path once it listens."""
        self._tmpdir = tempdirs.private("nbd")
        # a unix socket's path has at most 107 bytes and TMPDIR may be longer: both qemu-nbd and we
        # reach the directory through this descriptor (qemu-nbd inherits it under the same number)
        self._dir_fd = os.open(self._tmpdir.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        socket_path = f"/proc/self/fd/{self._dir_fd}/disk.sock"
        argv = [
            "qemu-nbd",
            "--format=raw",
            "--cache=none",
            "--persistent",
            "--shared=1",
            f"--socket={socket_path}",
            *(["--read-only"] if self._readonly else []),
            uri,
        ]
        proc = self._children.enter_context(
            lifecycle.spawned(
                argv,
                grace=QEMU_NBD_STOP_TIMEOUT,
                pass_fds=(self._dir_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        deadline = time.monotonic() + QEMU_NBD_START_TIMEOUT
        while not _listening(socket_path):
            if proc.poll() is not None:
                assert proc.stderr is not None
                reason = (proc.stderr.read().decode("utf-8", "replace").strip().splitlines() or ["unknown error"])[-1]
                raise TargetError(f"qemu-nbd cannot open disk {uri}: {reason}")
            if time.monotonic() > deadline:
                raise TargetError(f"qemu-nbd did not export disk {uri} within {QEMU_NBD_START_TIMEOUT:g} s")
            time.sleep(0.02)
        return socket_path

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (export)."""
        try:
            return self._handle.pread(length, offset)
        except self._nbd_error as exc:
            raise TargetError(f"cannot read from disk {self.name}: {exc.string}") from exc

    def write(self, offset: int, data: memoryview) -> None:
        try:
            self._handle.pwrite(data, offset)
        except self._nbd_error as exc:
            raise TargetError(f"cannot write to disk {self.name}: {exc.string}") from exc

    def zero(self, offset: int, length: int) -> None:
        try:
            if self._can_zero:
                while length > 0:
                    step = min(length, 1 << 30)
                    self._handle.zero(step, offset)
                    offset += step
                    length -= step
                return
            while length > 0:
                step = min(length, ZERO_CHUNK)
                self._handle.pwrite(_ZEROS[:step], offset)
                offset += step
                length -= step
        except self._nbd_error as exc:
            raise TargetError(f"cannot zero a range of disk {self.name}: {exc.string}") from exc

    def flush(self) -> None:
        try:
            self._handle.flush()
        except self._nbd_error as exc:
            raise TargetError(f"cannot flush disk {self.name}: {exc.string}") from exc

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):  # already disconnected: nothing to release
                handle.shutdown()
        self._children.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _listening(socket_path: str) -> bool:
    """Whether a server accepts connections on this unix socket yet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(socket_path) == 0


def is_local(path: str) -> bool:
    """A node path (file or block device), as opposed to a userspace URI (``nbd://...``, ``rbd:pool/img``)."""
    scheme, sep, _ = path.partition(":")
    return not sep or "/" in scheme


def unsupported_disk(path: str) -> str | None:
    """Why a disk cannot be deployed onto, or None: a userspace URI neither the copy nor the jail could use."""
    if is_local(path):
        return None
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", path)
    if scheme and scheme.group(1) in USERSPACE_SCHEMES:
        return None
    return (
        f"unsupported disk {path.split('?')[0][:200]!r}: expected a path or a {'/'.join(USERSPACE_SCHEMES)} URI "
        "(the helper VM's qemu could not open it)"
    )


def open_target(path: str) -> DiskTarget:
    """Open what Ganeti gave as the disk: a regular file, a block device, or a userspace URI."""
    problem = unsupported_disk(path)
    if problem is not None:
        raise OperatorError(problem)
    if not is_local(path):
        return NbdTarget(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise OperatorError(f"cannot use disk {path}: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        return FileTarget(path)
    if stat.S_ISBLK(mode):
        return BlockTarget(path)
    raise OperatorError(f"cannot use disk {path}: neither a regular file nor a block device")
