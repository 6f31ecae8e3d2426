"""The streaming copy from an image source onto the instance disk.

Constant memory (one buffer), no temporary copy, and sparse where that is
safe: runs of zeros -- read as zeros or skipped as holes of a local file --
are not written but *zeroed* on the target (a punched hole, BLKZEROOUT,
NBD write-zeroes), so the disk holds exactly the image's bytes even over the
old data of a reinstall, and a mostly-empty image costs little I/O.

Speed (``benchmarks/copy_throughput.py``): a thread reads the next buffers
while the caller writes, a local source's holes end a buffer (they are
skipped, never read as zeros), and the written data is pushed to the disk
behind the copy (:class:`_WriteBehind`): the final flush has little left to
wait for, and the copy never fills the node's page cache with an image
nobody reads again.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
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


def _fill(stream: ImageStream, view: memoryview, stop: threading.Event) -> tuple[int, int]:
    """Read until the buffer is full, the stream ends or a hole begins (or until told to stop).

    Returns the bytes read and the hole skipped after them: a local file's holes are
    passed over unread, never read as zeros (a short read that is not at a hole just
    reads on, so zero blocks stay aligned to the buffer).
    """
    filled = 0
    while filled < len(view) and not stop.is_set():
        n = stream.readinto(view[filled:])
        if n == 0:
            break
        filled += n
        hole = stream.skip_hole()
        if hole:
            return filled, hole
    return filled, 0


def zero_runs(data: memoryview) -> Iterator[tuple[int, int, bool]]:
    """The runs of ``data`` as (start, end, all zeros), judged per ZERO_BLOCK block."""
    run_start = 0
    run_is_zero: bool | None = None
    for block in range(0, len(data), ZERO_BLOCK):
        end = min(block + ZERO_BLOCK, len(data))
        is_zero = _ZEROS.startswith(data[block:end])  # a memcmp, no copy
        if run_is_zero is None:
            run_is_zero = is_zero
        elif is_zero != run_is_zero:
            yield run_start, block, run_is_zero
            run_start, run_is_zero = block, is_zero
    if run_is_zero is not None:
        yield run_start, len(data), run_is_zero


def _write_runs(target: DiskTarget, data: memoryview, offset: int) -> None:
    """Write the data runs of ``data`` at ``offset`` and zero its all-zero blocks."""
    for start, end, zero in zero_runs(data):
        if zero:
            target.zero(offset + start, end - start)
        else:
            target.write(offset + start, data[start:end])


class _ReadAhead:
    """Reads the next buffers in a thread while the caller writes the previous one.

    Reads and writes are system calls that release the GIL, so source and disk
    work at the same time (as qemu-img's coroutines do); memory stays at
    ``depth`` buffers. Each item is (hole, buffer, n): ``hole`` zero bytes skipped
    unread, then ``n`` bytes of ``buffer``. Errors of the reading side are
    re-raised in the caller.
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
            hole = self._stream.skip_hole()
            while not self._stop.is_set():
                buffer = self._free.get()
                if self._stop.is_set():
                    break
                n, next_hole = _fill(self._stream, memoryview(buffer), self._stop)
                self._ready.put((hole, buffer, n))
                if n == 0 and not hole:
                    break
                hole = next_hole
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


class _WriteBehind:
    """Pushes each written buffer to the disk right away and lets go of the one ``lag`` buffers back.

    Without it the whole image sits dirty in the page cache until the final flush,
    which then waits for all of it (0.4 s per GiB here) and evicts the node's useful
    cache. With it the disk writes while the copy reads, the final flush waits only
    for the last buffers, and the copy's footprint in the page cache stays a few buffers.
    """

    def __init__(self, target: DiskTarget, lag: int = 2) -> None:
        self._target = target
        self._lag = lag
        self._pending: deque[tuple[int, int]] = deque()

    def written(self, offset: int, length: int) -> None:
        self._target.start_writeback(offset, length)
        self._pending.append((offset, length))
        if len(self._pending) > self._lag:
            self._target.settle(*self._pending.popleft())


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
    behind = _WriteBehind(target)
    try:
        for hole, buffer, n in reader:
            if hole:
                _check_fits(target, offset + position + hole)
                target.zero(offset + position, hole)
                position += hole
            if n:
                _check_fits(target, offset + position + n)
                _write_runs(target, memoryview(buffer)[:n], offset + position)
                behind.written(offset + position, n)
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
