"""The contract every image source implements.

A source is probed with an image id; the first source (by priority) whose
probe accepts the id opens it as an :class:`ImageStream`. Sources never
interpret the image's contents: they deliver bytes.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar


class ImageStream(abc.ABC):
    """A readable stream of image bytes with an optional known size."""

    #: Size in bytes as announced by the source, or None when unknown.
    size: int | None = None
    #: A local regular file holding exactly the image, when there is one (for messages).
    local_path: Path | None = None
    #: An open, read-only descriptor of that file, when there is one: container formats
    #: (qcow2, VMDK, ...) need seeking, and are checked, hashed and converted from this very
    #: descriptor, never from a path opened again.
    local_fd: int | None = None
    #: What identifies this version of the image at its source (ETag, Last-Modified, MDTM, ...):
    #: the node-local cache revalidates its copy with them. Empty when the source has none.
    validators: Mapping[str, str] = MappingProxyType({})

    @abc.abstractmethod
    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (partially is fine); return the bytes read, 0 at the end.

        Raises :class:`snf_image.errors.SourceError` with a user-facing reason
        when the image cannot be read to its end.
        """

    def skip_hole(self) -> int:
        """Skip a run of zeros the source knows about without reading it (a file's hole).

        Returns how many bytes were skipped (0 by default); they count as zeros.
        """
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""

    def __enter__(self) -> ImageStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class CacheIdentity:
    """How the node-local image cache names one image of a source (see :mod:`.cache`)."""

    #: What the image is, without secrets (e.g. the URL without credentials and query).
    public: str
    #: What selects what the server lets us see (URL credentials, query, token): only a keyed hash is kept.
    secret: str
    #: What messages and the cache's metadata show.
    display: str


class ImageSource(abc.ABC):
    """One way to fetch images (local directory, http, pithos, ...)."""

    #: Short name used in settings (``backends/src/<name>.conf``, ``.priority``, ``.disabled``).
    name: ClassVar[str]
    #: Higher runs first, as in the original (pithos 50, null 30, network 20, local 10).
    default_priority: ClassVar[int] = 50
    #: False for a source that leaves the disk as it is (null): nothing is copied.
    delivers_image: ClassVar[bool] = True

    def __init__(self, config: Mapping[str, str]) -> None:
        #: This source's own settings (KEY=value from ``backends/src/<name>.conf``).
        self.config = config

    @abc.abstractmethod
    def probe(self, img_id: str) -> bool:
        """Whether this source handles ``img_id``; cheap, no I/O beyond the local host."""

    def check(self, img_id: str) -> None:  # noqa: B027 - optional hook
        """Verify-time check that ``img_id`` looks resolvable (syntax, local existence).

        Raises :class:`snf_image.errors.OperatorError`. Must not download anything.
        """

    @abc.abstractmethod
    def open(self, img_id: str) -> ImageStream:
        """Start delivering the image; raises :class:`snf_image.errors.SourceError`."""

    def cache_identity(self, img_id: str) -> CacheIdentity | None:
        """How the node-local cache names this image; None (the default: local files) keeps it out."""
        return None

    def open_if_changed(self, img_id: str, validators: Mapping[str, str]) -> ImageStream | None:
        """Like :meth:`open`, but None when a copy with ``validators`` is still current (a revalidation)."""
        return self.open(img_id)
