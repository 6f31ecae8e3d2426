"""The ``local`` source: images in a directory of the node (IMAGE_DIR).

Ids are ``local://NAME``, the deprecated ``file://NAME``, or a bare NAME
without a scheme. NAME is resolved inside IMAGE_DIR with every symlink
followed; a result outside IMAGE_DIR (``..``, an absolute path, a symlink
pointing out) is refused, and so is anything in HELPER_DIR (by default
inside IMAGE_DIR): the helper VM's own image is not an image to deploy.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import BinaryIO, ClassVar

from ..errors import OperatorError, SourceError
from ..settings import DEFAULTS
from .base import ImageSource, ImageStream

log = logging.getLogger(__name__)

DEFAULT_IMAGE_DIR = "/var/lib/snf-image"


class LocalStream(ImageStream):
    """A local regular file, read from its start; holes are skipped unread.

    ``file`` hands over a file already open (the stream closes it): what was
    checked on that descriptor is what is read, whatever ``path`` names now.
    An unnamed file (a private copy) has no ``path``.
    """

    def __init__(self, path: Path | None, file: BinaryIO | None = None) -> None:
        self.local_path = path
        if file is None:
            assert path is not None
            file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._file = file
        self._name = str(path) if path is not None else "the image's local copy"
        self.local_fd = self._file.fileno()
        self.size = os.fstat(self._file.fileno()).st_size

    def readinto(self, buffer: memoryview) -> int:
        fd = self._file.fileno()
        try:
            position = os.lseek(fd, 0, os.SEEK_CUR)
            # Stop at the next hole so that skip_hole() can pass over it unread.
            hole = os.lseek(fd, position, os.SEEK_HOLE) if position < self.size else self.size
            os.lseek(fd, position, os.SEEK_SET)
            return self._file.readinto(buffer[: max(hole - position, 0)] if hole > position else buffer) or 0
        except OSError as exc:
            raise SourceError(f"cannot read image file {self._name}: {exc.strerror}") from exc

    def skip_hole(self) -> int:
        fd = self._file.fileno()
        position = os.lseek(fd, 0, os.SEEK_CUR)
        if position >= self.size:
            return 0
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: only a hole up to the end of the file
                raise SourceError(f"cannot read image file {self._name}: {exc.strerror}") from exc
            data = self.size
        os.lseek(fd, data, os.SEEK_SET)
        return data - position

    def close(self) -> None:
        self._file.close()


class LocalSource(ImageSource):
    """Images stored under IMAGE_DIR on the node."""

    name: ClassVar[str] = "local"
    default_priority: ClassVar[int] = 10

    def probe(self, img_id: str) -> bool:
        return img_id.startswith(("local://", "file://")) or ":" not in img_id

    @property
    def image_dir(self) -> Path:
        return Path(self.config.get("IMAGE_DIR") or DEFAULT_IMAGE_DIR)

    def resolve(self, img_id: str) -> Path:
        """The image file for ``img_id``; OperatorError if it would leave IMAGE_DIR or does not exist."""
        name = img_id
        if img_id.startswith("file://"):
            log.warning("image ids of the form file://NAME are deprecated; use local://NAME")
            name = img_id[len("file://") :]
        elif img_id.startswith("local://"):
            name = img_id[len("local://") :]
        if not name or "\x00" in name:
            raise OperatorError(f"img_id: invalid local image name {name!r}")
        root = self.image_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise OperatorError(f"img_id: {img_id!r} points outside the image directory {root}")
        helper_dir = Path(self.config.get("HELPER_DIR") or DEFAULTS["HELPER_DIR"]).resolve()
        if path.is_relative_to(helper_dir):  # by default IMAGE_DIR holds HELPER_DIR: never deploy the helper
            raise OperatorError(f"img_id: {img_id!r} is in the helper VM's directory {helper_dir}, not an image")
        if not path.exists():
            raise OperatorError(f"img_id: image {name!r} not found in {root}")
        if not path.is_file():  # a FIFO would block the copy forever; a directory or a device is no image
            raise OperatorError(f"img_id: image {name!r} in {root} is not a regular file")
        return path

    def check(self, img_id: str) -> None:
        self.resolve(img_id)

    def open(self, img_id: str) -> ImageStream:
        path = self.resolve(img_id)
        try:
            return LocalStream(path)
        except OSError as exc:
            raise SourceError(f"cannot open image file {path}: {exc.strerror}") from exc
