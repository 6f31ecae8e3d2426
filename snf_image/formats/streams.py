"""The image stream peeked at for sniffing, and decompressed in the stream with bounded memory.

A compressed image is decoded as it is copied, in constant memory: gzip's window is 32 KiB by
design; an xz stream may ask for a dictionary of up to 4 GiB and a zstd frame for a window of up
to 2 GiB, so both decoders get a limit (the zstd tool's own default), and an image that asks for
more is one clear error, never an out-of-memory kill. A small image that decodes into a huge one
(a decompression bomb) costs nothing more: the copy refuses the first byte past the disk's end.
"""

from __future__ import annotations

import gzip
import io
import lzma

import zstandard

from ..errors import ImageError
from ..sources.base import ImageStream
from .sniff import GZIP, SNIFF_BYTES, XZ, ZSTD

#: Memory an xz stream may ask for (its dictionary): xz -9 needs 65 MiB.
XZ_MEMORY_LIMIT = 256 * 1024 * 1024
#: The largest zstd window accepted (2**27, zstd's default limit; ``--long`` frames use more).
ZSTD_MAX_WINDOW = 128 * 1024 * 1024
_READ_SIZE = 1024 * 1024
_MEMORY_LIMIT_REACHED = "Memory usage limit"


class _RawAdapter(io.RawIOBase):
    """An ImageStream seen as a file, for the stdlib and zstandard decoders."""

    def __init__(self, stream: ImageStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._stream.readinto(memoryview(buffer).cast("B"))


class _XzReader(io.RawIOBase):
    """Concatenated xz streams, each decoded under XZ_MEMORY_LIMIT (lzma.LZMAFile takes no limit)."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self._decoder = self._new_decoder()

    @staticmethod
    def _new_decoder() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while True:
            if self._decoder.eof:
                rest = self._decoder.unused_data or self._raw.read(_READ_SIZE)
                if not rest:
                    return 0
                self._decoder = self._new_decoder()
                try:
                    data = self._decoder.decompress(rest, max_length=len(buffer))
                except lzma.LZMAError as exc:
                    if _MEMORY_LIMIT_REACHED in str(exc):
                        raise
                    return 0  # as lzma.LZMAFile: bytes after the last stream that start no other one
            elif self._decoder.needs_input:
                chunk = self._raw.read(_READ_SIZE)
                if not chunk:
                    raise EOFError("the stream ends before its end marker")
                data = self._decoder.decompress(chunk, max_length=len(buffer))
            else:
                data = self._decoder.decompress(b"", max_length=len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)


class DecodedStream(ImageStream):
    """Decompresses gzip, xz or zstd on the fly, in bounded memory."""

    def __init__(self, inner: ImageStream, codec: str) -> None:
        self._inner = inner
        raw = io.BufferedReader(_RawAdapter(inner), buffer_size=_READ_SIZE)
        if codec == GZIP:
            self._file: io.IOBase = gzip.GzipFile(fileobj=raw, mode="rb")
        elif codec == XZ:
            self._file = io.BufferedReader(_XzReader(raw), buffer_size=_READ_SIZE)
        elif codec == ZSTD:
            decoder = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
            self._file = decoder.stream_reader(raw, read_size=_READ_SIZE, read_across_frames=True)
        else:
            raise ValueError(codec)
        self._codec = codec
        self.size = None

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._file.readinto(buffer) or 0
        except lzma.LZMAError as exc:
            if _MEMORY_LIMIT_REACHED in str(exc):
                raise ImageError(
                    f"the xz-compressed image needs more than {XZ_MEMORY_LIMIT >> 20} MiB of memory to decode"
                    " (its dictionary is too large); recompress it with xz -9 or less"
                ) from exc
            raise self._corrupt(exc) from exc
        except zstandard.ZstdError as exc:
            if "too much memory" in str(exc):
                raise ImageError(
                    f"the zstd-compressed image needs a window larger than {ZSTD_MAX_WINDOW >> 20} MiB to decode;"
                    " recompress it without --long or with --long=27 or less"
                ) from exc
            raise self._corrupt(exc) from exc
        except (EOFError, OSError, ValueError) as exc:
            raise self._corrupt(exc) from exc

    def _corrupt(self, exc: Exception) -> ImageError:
        return ImageError(f"the {self._codec}-compressed image is corrupt or truncated: {exc}")

    def close(self) -> None:
        self._file.close()
        self._inner.close()


class PeekedStream(ImageStream):
    """Reads the first bytes for sniffing, then replays them before the rest."""

    def __init__(self, inner: ImageStream, length: int = SNIFF_BYTES) -> None:
        self._inner = inner
        self.size = inner.size
        self.local_fd = inner.local_fd
        head = bytearray(length)
        view = memoryview(head)
        filled = 0
        while filled < length:
            n = inner.readinto(view[filled:])
            if n == 0:
                break
            filled += n
        self.head = bytes(head[:filled])
        self._pending = memoryview(self.head)

    def readinto(self, buffer: memoryview) -> int:
        if self._pending:
            n = min(len(buffer), len(self._pending))
            buffer[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        return self._inner.readinto(buffer)

    def skip_hole(self) -> int:
        return 0 if self._pending else self._inner.skip_hole()

    def close(self) -> None:
        self._inner.close()
