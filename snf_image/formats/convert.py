"""Container images read as raw disks: qemu-storage-daemon in the sandbox, read over NBD.

The sandbox (``sandbox.py``) gets the image's file descriptor -- the one whose header was
checked and whose bytes were hashed -- and nothing else of the host. Inside, ``nbdserve.py``
serves that descriptor to qemu-storage-daemon over a socket pair (an unprivileged process cannot
re-open a root-only file through /dev/fd/N), and qemu-storage-daemon opens it with the driver the
header check named (never a probed format) and, where the driver has them, backing files
disabled on its command line (``backing: null``). It exports the raw disk read-only on a
listening socket this process made in a directory only root can enter.

This process reads that export with libnbd, as an ordinary image stream (holes found with NBD
block status): the converted bytes go through the same sparse copy, progress messages and size
checks as every image, onto any disk (a file, a block device, or an ``nbd://``/``rbd:`` URI).
The converter never sees the instance's disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import nbd  # python3-libnbd

from .. import lifecycle, tempdirs
from ..errors import ImageError
from ..sources.base import ImageStream
from . import sandbox
from .headers import ContainerHeader
from .sniff import QCOW2, VMDK

QEMU_STORAGE_DAEMON = "/usr/bin/qemu-storage-daemon"
PYTHON = "/usr/bin/python3"
#: Run with ``python3 -c``: the sandbox need not (and cannot always) see our package's files.
NBDSERVE = Path(__file__).with_name("nbdserve.py")
#: qemu's block node and NBD export name.
EXPORT = "image"
#: Drivers that know backing files (and take ``backing: null``); the others cannot open one.
WITH_BACKING = (QCOW2, VMDK)
#: Seconds the converter may take to open the image and start serving.
START_TIMEOUT = 60.0
#: Block-status queries cover at most this much (NBD lengths are 32-bit).
STATUS_SPAN = 1 << 30
_NBD_STATE_ZERO = 2
_STDERR_TAIL = 4096


def converter_argv(header: ContainerHeader, image_fd: int, served_fd: int, client_fd: int, listen_fd: int) -> list[str]:
    """nbdserve.py serving ``image_fd`` on ``served_fd``, starting qemu-storage-daemon on ``client_fd``."""
    node: dict[str, object] = {
        "driver": header.kind,
        "node-name": EXPORT,
        "read-only": True,
        "file": {"driver": "nbd", "server": {"type": "fd", "str": str(client_fd)}, "export": EXPORT},
    }
    if header.kind in WITH_BACKING:
        node["backing"] = None
    daemon = [
        QEMU_STORAGE_DAEMON,
        "--blockdev",
        json.dumps(node),
        "--nbd-server",
        f"addr.type=fd,addr.str={listen_fd},max-connections=1",
        "--export",
        f"type=nbd,id={EXPORT},node-name={EXPORT},name={EXPORT},writable=off",
    ]
    program = NBDSERVE.read_text("utf-8")
    serve = [PYTHON, "-I", "-S", "-c", program, str(image_fd), str(served_fd), f"{client_fd},{listen_fd}"]
    return [*serve, "--", *daemon]


class ConvertedImage(ImageStream):
    """The raw disk inside a checked container, read from the sandboxed converter."""

    def __init__(self, fd: int, header: ContainerHeader, config: sandbox.SandboxConfig) -> None:
        self.header = header
        self._config = config
        self._handle: nbd.NBD | None = None
        self._process: sandbox.Sandbox | None = None
        self._position = 0
        self._extent_end = 0
        self._tmpdir = tempdirs.private("convert")
        self._dir_fd: int | None = None
        try:
            self._log = open(Path(self._tmpdir.name) / "converter.log", "w+b")  # noqa: SIM115 - closed by close()
            # a unix socket's path has at most 107 bytes and TMPDIR may be longer: reach it through a descriptor
            self._dir_fd = os.open(self._tmpdir.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            socket_path = f"/proc/self/fd/{self._dir_fd}/export.sock"
            self._start(fd, socket_path)
            self._handle = self._connect(socket_path)
            self.size = self._handle.get_size()
            self._block_status = self._handle.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        except BaseException:
            self.close()
            raise

    def _start(self, fd: int, socket_path: str) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        served, client = socket.socketpair()
        try:
            listener.bind(socket_path)
            listener.listen(1)
            fds = (fd, served.fileno(), client.fileno(), listener.fileno())
            argv = converter_argv(self.header, *fds)
            binds = {PYTHON: PYTHON, QEMU_STORAGE_DAEMON: QEMU_STORAGE_DAEMON}
            with lifecycle.uninterrupted():  # a signal now must not lose the sandbox between start and here
                self._process = sandbox.spawn(self._config, argv, binds, fds, self._log.fileno())
        finally:  # the sandbox holds its own copies: once it is gone, the sockets close
            for sock in (listener, served, client):
                sock.close()

    def _connect(self, socket_path: str) -> nbd.NBD:
        handle = nbd.NBD()
        handle.set_export_name(EXPORT)
        handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        assert self._process is not None
        watchdog = threading.Timer(START_TIMEOUT, self._process.process.kill)
        watchdog.start()
        try:
            handle.connect_unix(socket_path)
        except nbd.Error as exc:
            raise self._failure(exc, timed_out=not watchdog.is_alive()) from exc
        finally:
            watchdog.cancel()
        return handle

    def readinto(self, buffer: memoryview) -> int:
        count = min(len(buffer), (self.size or 0) - self._position)
        if count <= 0 or self._handle is None:
            return 0
        try:
            data = self._handle.pread(count, self._position)
        except nbd.Error as exc:
            raise self._failure(exc) from exc
        buffer[:count] = data
        self._position += count
        return count

    def skip_hole(self) -> int:
        """Skip an extent the converter reports as reading zeros (an unallocated or zero cluster)."""
        size = self.size or 0
        if not self._block_status or self._handle is None or self._position >= size:
            return 0
        if self._position < self._extent_end:
            return 0  # still inside the data extent found last time
        span = min(size - self._position, STATUS_SPAN)
        extents: list[tuple[int, int]] = []

        def collect(_context: str, _offset: int, entries: list[int], _error: object) -> int:
            extents.extend(zip(entries[::2], entries[1::2], strict=False))
            return 0

        try:
            self._handle.block_status(span, self._position, collect)
        except nbd.Error as exc:
            raise self._failure(exc) from exc
        if not extents or extents[0][0] <= 0:
            self._block_status = False  # nothing usable: read everything
            return 0
        length, flags = min(extents[0][0], span), extents[0][1]
        if not flags & _NBD_STATE_ZERO:
            self._extent_end = self._position + length
            return 0
        self._position += length
        return length

    def _failure(self, exc: Exception, timed_out: bool = False) -> ImageError:
        """One line saying why the converter stopped: a limit it hit, or qemu's last word."""
        killed_by = self._exit_signal()
        if timed_out:
            reason = f"it did not open the image within {START_TIMEOUT:.0f} s"
        elif killed_by == signal.SIGXCPU:
            reason = f"it used up its CPU time ({self._config.cpu_seconds} s, setting CONVERTER_CPU_TIME)"
        elif killed_by == signal.SIGXFSZ:
            reason = "it wrote too many messages"
        else:
            reason = self._last_message() or str(exc)
            if killed_by is not None:
                reason += (
                    f" (killed by signal {killed_by}; its address space is limited to"
                    f" {self._config.memory_mib} MiB, setting CONVERTER_MEMORY)"
                )
        return ImageError(f"the {self.header.name} image cannot be converted: {reason}")

    def _exit_signal(self) -> int | None:
        """The signal that ended the converter, if one did (bubblewrap reports 128 + N)."""
        assert self._process is not None
        try:
            status = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # the connection broke but it runs on: close() kills it
            return None
        if status < 0:
            return -status
        return status - 128 if status > 128 else None

    def _last_message(self) -> str:
        """The converter's last line of output, printable and short (it may quote the image)."""
        self._log.seek(0, 2)
        end = self._log.tell()
        self._log.seek(max(0, end - _STDERR_TAIL))
        lines = [line for line in self._log.read().decode("ascii", "replace").splitlines() if line.strip()]
        if not lines:
            return ""
        line = re.sub(r"^qemu-storage-daemon: --blockdev \{.*?\}: ", "", lines[-1])
        return re.sub(r"[^\x20-\x7e]", "?", line)[:300]

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(Exception):  # the converter may already be gone
                handle.shutdown()
        process, self._process = self._process, None
        if process is not None:
            process.stop()
        if getattr(self, "_log", None) is not None:
            self._log.close()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self._tmpdir.cleanup()
