"""The ``null`` source: copy nothing and customize the disk as it already is."""

from __future__ import annotations

from typing import ClassVar

from .base import ImageSource, ImageStream


class _EmptyStream(ImageStream):
    size = 0

    def readinto(self, buffer: memoryview) -> int:
        return 0


class NullSource(ImageSource):
    """``img_id=null``: the disk already holds the system (e.g. re-run the customization)."""

    name: ClassVar[str] = "null"
    default_priority: ClassVar[int] = 30
    delivers_image: ClassVar[bool] = False

    def probe(self, img_id: str) -> bool:
        return img_id == "null"

    def open(self, img_id: str) -> ImageStream:
        return _EmptyStream()
