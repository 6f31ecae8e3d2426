"""Opening an image through the node-local cache, and filling an entry while a deployment streams.

The fill is a tee, not a second pass: every buffer the deployment reads from
the source is also written to an unnamed file in the cache directory (its
zero blocks left as holes: an entry takes the image's data, not its size), with
its CRC-32 (and the ``img_checksum`` digest) computed on the way. When the
source ends whole the file becomes the entry (:meth:`.cache.ImageCache.commit`);
when anything goes wrong with the cache (a full disk, an image larger than
``IMAGE_CACHE_SIZE``, a checksum that does not match, a deployment that stops
reading) the fill is dropped and the deployment goes on uncached. The cache
never fails a deployment.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib

from ..copy import zero_runs
from .base import CacheIdentity, ImageSource, ImageStream
from .cache import CacheKey, EntryLock, EntryMeta, ImageCache, usable_validators

log = logging.getLogger(__name__)


def open_through(
    cache: ImageCache, source: ImageSource, img_id: str, identity: CacheIdentity, checksum: str | None
) -> ImageStream:
    """A verified cached copy, or the source's stream filling the entry, or (not cacheable) the source's."""
    key = cache.key(source.name, identity, checksum)
    lock = cache.lock(key)
    try:
        return _open_locked(cache, source, img_id, key, lock, checksum)
    except BaseException:
        lock.release()
        raise


def _open_locked(
    cache: ImageCache, source: ImageSource, img_id: str, key: CacheKey, lock: EntryLock, checksum: str | None
) -> ImageStream:
    meta = cache.read_meta(key)
    fresh = None
    if meta is not None:
        if key.checksum is None:
            fresh = source.open_if_changed(img_id, meta.validators)
        if fresh is None:
            hit = cache.open_verified(key, meta)
            if hit is not None:
                lock.release()
                return hit
    stream = fresh if fresh is not None else source.open(img_id)
    try:
        return _filling(cache, key, stream, lock, checksum)
    except BaseException:
        stream.close()
        raise


def _filling(
    cache: ImageCache, key: CacheKey, stream: ImageStream, lock: EntryLock, checksum: str | None
) -> ImageStream:
    reason = None
    if stream.size is not None and stream.size > cache.limit:
        reason = f"its {stream.size} bytes exceed IMAGE_CACHE_SIZE={cache.limit}"
    elif key.checksum is None and not usable_validators(stream.validators):
        reason = "the server gives no validator (ETag, Last-Modified, MDTM) to revalidate a copy with"
    if reason is None:
        try:
            cache.evict(room=stream.size or 0)
            return FillingStream(cache, key, stream, cache.new_file(), lock, checksum)
        except OSError as exc:
            reason = f"cannot write to IMAGE_CACHE_DIR {cache.directory}: {exc.strerror}"
    log.info("image %s is not cached: %s", key.display, reason)
    lock.release()
    return stream


class FillingStream(ImageStream):
    """The source's stream, teed into a new cache entry (see the module docstring)."""

    def __init__(
        self,
        cache: ImageCache,
        key: CacheKey,
        inner: ImageStream,
        fd: int,
        lock: EntryLock,
        checksum: str | None,
    ) -> None:
        self.size = inner.size
        self.validators = inner.validators
        self._cache = cache
        #: The entry being filled.
        self.key = key
        self._inner = inner
        self._fd: int | None = fd
        self._lock = lock
        self._crc = 0
        self._written = 0
        algorithm, _, digest = (checksum or "").partition(":")
        self._check = hashlib.new(algorithm) if checksum else None
        self._expected = digest.lower()
        #: Whether the entry was stored (the file stays open for :meth:`take_file`).
        self.committed = False

    def readinto(self, buffer: memoryview) -> int:
        count = self._inner.readinto(buffer)
        if self._fd is not None and not self.committed:
            if count:
                self._tee(memoryview(buffer).cast("B")[:count])
            else:
                self._finish()
        return count

    def skip_hole(self) -> int:
        skipped = self._inner.skip_hole()
        if skipped and self._fd is not None and not self.committed:
            self._drop("the source skipped a hole")  # remote sources deliver every byte
        return skipped

    def _tee(self, data: memoryview) -> None:
        """Write ``data`` at its place in the entry, its zero blocks as holes (an entry takes the image's data)."""
        assert self._fd is not None
        try:
            for start, end, zero in zero_runs(data):
                if not zero:
                    _pwrite_all(self._fd, data[start:end], self._written + start)
        except OSError as exc:
            self._drop(f"cannot write to IMAGE_CACHE_DIR {self._cache.directory}: {exc.strerror}")
            return
        self._crc = zlib.crc32(data, self._crc)
        if self._check is not None:
            self._check.update(data)
        self._written += len(data)
        if self._written > self._cache.limit:
            self._drop(f"it is larger than IMAGE_CACHE_SIZE={self._cache.limit}")

    def _finish(self) -> None:
        assert self._fd is not None
        if self.size is not None and self._written != self.size:
            self._drop(f"{self._written} bytes arrived of {self.size}")
            return
        if self._check is not None and self._check.hexdigest() != self._expected:
            self._drop("its bytes do not match img_checksum")
            return
        meta = EntryMeta(self._written, self._crc, dict(self.validators), self.key.display, self.key.checksum)
        try:
            os.ftruncate(self._fd, self._written)  # the holes at its end
            self._cache.commit(self.key, self._fd, meta)
        except OSError as exc:
            self._drop(f"cannot store it in IMAGE_CACHE_DIR {self._cache.directory}: {exc.strerror}")
            return
        self.committed = True
        self._lock.release()
        log.info("image %s is now in the node's image cache", self.key.display)
        try:
            self._cache.evict()
        except OSError as exc:
            log.warning("image cache: eviction failed: %s", exc.strerror)

    def _drop(self, reason: str) -> None:
        log.info("image %s is not cached: %s", self.key.display, reason)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # unnamed: the data is gone with it
        self._lock.release()

    def take_file(self) -> int | None:
        """The committed entry's descriptor (the caller closes it); None when the fill was dropped."""
        if not self.committed:
            return None
        fd, self._fd = self._fd, None
        return fd

    def close(self) -> None:
        if self._fd is not None and not self.committed:
            self._drop("the deployment stopped reading before the end")
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._lock.release()
        self._inner.close()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
