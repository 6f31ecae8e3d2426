"""The streaming copy from an image source onto the instance disk.

Constant memory (one buffer), no temporary copy, and sparse where that is
safe: runs of zeros -- read as zeros or skipped as holes of a local file --
are not written but *zeroed* on the target (a punched hole, BLKZEROOUT,
NBD write-zeroes), so the disk holds exactly the image's bytes even over the
old data of a reinstall, and a mostly-empty image costs little I/O.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ImageError
from .sources.base import ImageStream
from .targets import DiskTarget

BUFFER_SIZE = 8 * 1024 * 1024
ZERO_BLOCK = 64 * 1024
_ZEROS = bytes(ZERO_BLOCK)
PROGRESS_INTERVAL = 3.0
#: Seconds to wait for the reader thread to stop when the copy ends early.
READER_STOP_TIMEOUT = 2.0
_HASH_ZEROS = bytes(1024 * 1024)


class HashingStream(ImageStream):
    """Computes the digest of the bytes the source delivers, holes included, as they pass."""

    def __init__(self, inner: ImageStream, algorithm: str) -> None:
        self._inner = inner
        self.size = inner.size
        self.local_path = inner.local_path
        self.local_fd = inner.local_fd
        self._hash = hashlib.new(algorithm)

    def readinto(self, buffer: memoryview) -> int:
        n = self._inner.readinto(buffer)
        self._hash.update(buffer[:n])
        return n

    def skip_hole(self) -> int:
        skipped = self._inner.skip_hole()
        remaining = skipped
        while remaining:
            step = min(remaining, len(_HASH_ZEROS))
            self._hash.update(memoryview(_HASH_ZEROS)[:step])
            remaining -= step
        return skipped

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._inner.close()


def verify_checksum(stream: HashingStream, expected: str) -> None:
    """Compare after the copy: a mismatch fails the deployment."""
    algorithm, _, digest = expected.partition(":")
    actual = stream.hexdigest()
    if actual.lower() != digest.lower():
        raise ImageError(f"image checksum mismatch: expected {algorithm}:{digest.lower()}, got {algorithm}:{actual}")


def _fill(stream: ImageStream, view: memoryview, stop: threading.Event) -> int:
    """Read until the buffer is full or the stream ends, so zero blocks stay aligned (or until told to stop)."""
    filled = 0
    while filled < len(view) and not stop.is_set():
        n = stream.readinto(view[filled:])
        if n == 0:
            break
        filled += n
    return filled


def _write_runs(target: DiskTarget, buffer: bytearray, length: int, offset: int) -> None:
    """Write the data runs of ``buffer[:length]`` and zero its all-zero blocks."""
    view = memoryview(buffer)
    run_start = 0
    run_is_zero: bool | None = None
    for block in range(0, length, ZERO_BLOCK):
        end = min(block + ZERO_BLOCK, length)
        is_zero = buffer.startswith(_ZEROS[: end - block], block, end)
        if run_is_zero is None:
            run_is_zero = is_zero
        elif is_zero != run_is_zero:
            _flush_run(target, view, run_start, block, offset, run_is_zero)
            run_start, run_is_zero = block, is_zero
    if run_is_zero is not None:
        _flush_run(target, view, run_start, length, offset, run_is_zero)


def _flush_run(target: DiskTarget, view: memoryview, start: int, end: int, offset: int, zero: bool) -> None:
    if zero:
        target.zero(offset + start, end - start)
    else:
        target.write(offset + start, view[start:end])


class _ReadAhead:
    """Reads the next buffers in a thread while the caller writes the previous one.

    Reads and writes are system calls that release the GIL, so source and disk
    work at the same time (as qemu-img's coroutines do); memory stays at
    ``depth`` buffers. Errors of the reading side are re-raised in the caller.
    """

    _END = object()

    def __init__(self, stream: ImageStream, buffer_size: int, depth: int = 3) -> None:
        self._stream = stream
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(depth):
            self._free.put(bytearray(buffer_size))
        self._ready: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snf-image-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                hole = self._stream.skip_hole()
                buffer = self._free.get()
                if self._stop.is_set():
                    break
                n = _fill(self._stream, memoryview(buffer), self._stop)
                self._ready.put((hole, buffer, n))
                if n == 0 and not hole:
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._ready.put(exc)
        finally:
            self._ready.put(self._END)

    def __iter__(self) -> Iterator[tuple[int, bytearray, int]]:
        while True:
            item = self._ready.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def close(self) -> None:
        """Stop the reader (also after an error of the writing side or a signal) and wait for it, boundedly.

        A reader blocked on a stalled source (a server that sends nothing) is left behind: a
        daemon thread, it ends with its read, or with the process.
        """
        self._stop.set()
        self._free.put(bytearray(0))
        self._thread.join(READER_STOP_TIMEOUT)


def copy_stream(
    stream: ImageStream,
    target: DiskTarget,
    offset: int = 0,
    total: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    buffer_size: int = BUFFER_SIZE,
    interval: float = PROGRESS_INTERVAL,
) -> int:
    """Copy ``stream`` to ``target`` at ``offset``; return the bytes copied.

    ``on_progress(position, total)`` is called every ``interval`` seconds and at
    the end (position relative to the stream). Writing past the end of the
    target raises ImageError before the overflowing bytes are written.
    """
    position = 0
    last_report = time.monotonic()
    reader = _ReadAhead(stream, buffer_size)
    try:
        for hole, buffer, n in reader:
            if hole:
                _check_fits(target, offset + position + hole)
                target.zero(offset + position, hole)
                position += hole
            if n:
                _check_fits(target, offset + position + n)
                _write_runs(target, buffer, n, offset + position)
                position += n
            reader.release(buffer)
            if on_progress is not None and time.monotonic() - last_report >= interval:
                on_progress(position, total or 0)
                last_report = time.monotonic()
    finally:
        reader.close()
    if total is not None and position != total:
        raise ImageError(f"the image source delivered {position} bytes instead of the announced {total}")
    if on_progress is not None:
        on_progress(position, position if total is None else total)
    return position


def _check_fits(target: DiskTarget, end: int) -> None:
    if end > target.size:
        raise ImageError(f"the image is larger than the disk ({target.size} bytes)")
