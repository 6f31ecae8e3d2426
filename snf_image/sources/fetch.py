"""How a deployment gets its image: through the node-local cache when it can.

:func:`open_image` is the stream the copy reads. :func:`local_image` is for
readers that need a seekable local file (qemu-img on qcow2, VMDK, VHD, VDI):
the image fetched at most once per node, handed over as the open descriptor
that was checked, so nothing can swap the file between the check and the use.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OperatorError
from .base import ImageSource, ImageStream
from .cache import IMAGE_SUFFIX, ImageCache
from .cachefill import FillingStream, open_through
from .local import LocalStream

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


def open_image(source: ImageSource, img_id: str, settings: Settings, checksum: str | None = None) -> ImageStream:
    """The stream a deployment copies: from the node's cache, filling it while it streams, or straight.

    ``checksum`` is the deployment's ``img_checksum`` (``alg:hex``): a strong
    one names the cache entry, and a fill whose bytes do not match it is not
    kept (the copy reports the mismatch as always).
    """
    identity = source.cache_identity(img_id)
    cache = ImageCache.from_settings(settings) if identity is not None else None
    if cache is None or identity is None:
        return source.open(img_id)
    return open_through(cache, source, img_id, identity, checksum)


def local_image(img_id: str, settings: Settings, checksum: str | None = None) -> LocalStream:
    """``img_id`` as a local, seekable file at offset 0, fetched at most once; the caller closes it.

    - a local image: its own file (never copied);
    - a remote image with the cache on: the verified cache entry, fetched now
      if it was not there (concurrent callers fetch it once);
    - otherwise a private unnamed file (0600) in ``IMAGE_CACHE_DIR`` (or the
      temporary directory), gone when closed or when the process dies.

    ``local_fd`` is the descriptor to read (seekable; hand it to a child
    rather than a path), ``local_path`` the file's name (None for a private
    copy), ``size`` its size. With ``checksum`` the bytes behind that descriptor match it.
    Raises OperatorError, SourceError, or ImageError for a checksum mismatch.
    """
    from . import select_source

    source = select_source(img_id, settings)
    source.check(img_id)
    if not source.delivers_image:
        raise OperatorError(f"img_id: {img_id!r} delivers no image")
    identity = source.cache_identity(img_id)
    cache = ImageCache.from_settings(settings) if identity is not None else None
    if identity is None or cache is None:
        stream = source.open(img_id)
        if isinstance(stream, LocalStream) and stream.local_path is not None:
            return _checked(stream, checksum)
        return _private_copy(stream, settings, checksum)
    stream = open_through(cache, source, img_id, identity, checksum)
    if isinstance(stream, LocalStream):  # a hit: a strong checksum named (and so verified) the entry
        named_by_checksum = cache.key(source.name, identity, checksum).checksum is not None
        return stream if named_by_checksum else _checked(stream, checksum)
    if not isinstance(stream, FillingStream):  # not cacheable (too large, no validators)
        return _private_copy(stream, settings, checksum)
    from ..copy import HashingStream, verify_checksum

    with stream:
        hasher = HashingStream(stream, checksum.partition(":")[0]) if checksum else None
        _drain(hasher or stream)
        if hasher is not None and checksum:
            verify_checksum(hasher, checksum)
        fd = stream.take_file()
    if fd is None:  # the cache could not keep it (full disk, ...): this caller gets a private copy
        return _private_copy(source.open(img_id), settings, checksum)
    os.lseek(fd, 0, os.SEEK_SET)
    return LocalStream(cache.directory / f"{stream.key.name}{IMAGE_SUFFIX}", os.fdopen(fd, "rb", buffering=0))


def _drain(stream: ImageStream) -> None:
    buffer = memoryview(bytearray(_CHUNK))
    while stream.skip_hole() or stream.readinto(buffer):
        pass


def _checked(stream: LocalStream, checksum: str | None) -> LocalStream:
    """``stream`` rewound after its whole content was hashed against ``checksum`` (if any)."""
    from ..copy import HashingStream, verify_checksum

    if checksum:
        try:
            hasher = HashingStream(stream, checksum.partition(":")[0])
            _drain(hasher)
            verify_checksum(hasher, checksum)
            os.lseek(stream.local_fd, 0, os.SEEK_SET)
        except BaseException:
            stream.close()
            raise
    return stream


def _private_copy(stream: ImageStream, settings: Settings, checksum: str | None) -> LocalStream:
    """Copy ``stream`` into an unnamed 0600 file, hashing it on the way; the rewound file."""
    from ..copy import HashingStream, verify_checksum

    with stream:
        # unnamed where the filesystem allows it (O_TMPFILE), else unlinked at once; 0600
        file = tempfile.TemporaryFile(dir=_private_dir(settings), buffering=0)  # noqa: SIM115 - handed over
        try:
            source: ImageStream = HashingStream(stream, checksum.partition(":")[0]) if checksum else stream
            buffer = memoryview(bytearray(_CHUNK))
            while count := source.readinto(buffer):
                view = buffer[:count]
                while view:
                    view = view[file.write(view) or 0 :]
            if checksum and isinstance(source, HashingStream):
                verify_checksum(source, checksum)
            file.seek(0)
        except BaseException:
            file.close()
            raise
    return LocalStream(None, file)


def _private_dir(settings: Settings) -> Path:
    """IMAGE_CACHE_DIR (made 0700) when usable, as it is where image-sized files belong; else TMPDIR."""
    problem = ImageCache(settings.image_cache_dir, 0).prepare()
    if problem is None:
        return settings.image_cache_dir
    log.info("private image copy goes to the temporary directory: %s", problem)
    return Path(tempfile.gettempdir())
