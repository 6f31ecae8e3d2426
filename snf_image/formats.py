"""Image containers and formats, decided from the bytes, never guessed by qemu.

Two questions, answered from the first bytes of the stream with
python-magic (libmagic):

* the *container*: raw, gzip, xz or zstd (decoded in the stream), or qcow2
  (converted by ``qemu-img -f qcow2``, after checking that it has no backing
  file and no external data file -- how hostile images read host files);
  other virtual-disk containers (VMDK, VDI, VHD) are refused;
* the *content* against the declared ``img_format``: ``extdump`` must be a
  bare ext2/3/4 filesystem, ``ntfsdump`` a bare NTFS, and ``diskdump`` must
  not be one of those (nor a container we could not open).

``extdump``/``ntfsdump`` get a 1 MiB MBR prefix so that the filesystem
lands in partition 1 (sector 2048, bootable, type 0x83/0x07).
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import magic
import parted

from .contract.constants import FORMAT_DISKDUMP, FORMAT_EXTDUMP, FORMAT_NTFSDUMP
from .errors import ImageError
from .sources.base import ImageStream

SNIFF_BYTES = 64 * 1024
SECTOR = 512
PREFIX_SECTORS = 2048
PREFIX_BYTES = PREFIX_SECTORS * SECTOR
MBR_BOOT_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")

RAW, GZIP, XZ, ZSTD, QCOW2 = "raw", "gzip", "xz", "zstd", "qcow2"
COMPRESSED = (GZIP, XZ, ZSTD)

_REFUSED_CONTAINERS = {
    "VMware4 disk image": "VMDK",
    "VirtualBox Disk Image": "VDI",
    "Microsoft Disk Image": "VHD/VHDX",
    "QEMU QCOW Image (v1)": "qcow (version 1)",
    "bzip2 compressed data": "bzip2",
}


def describe(head: bytes) -> tuple[str, str]:
    """libmagic's (mime type, description) of the first bytes."""
    return magic.from_buffer(head, mime=True), magic.from_buffer(head)


def detect_container(head: bytes) -> str:
    """raw, gzip, xz, zstd or qcow2; ImageError for containers we do not open."""
    mime, text = describe(head)
    if mime == "application/gzip":
        return GZIP
    if mime == "application/x-xz":
        return XZ
    if mime == "application/zstd":
        return ZSTD
    for prefix, name in _REFUSED_CONTAINERS.items():
        if text.startswith(prefix):
            raise ImageError(f"the image is a {name} file, which snf-image does not read; convert it to raw or qcow2")
    if mime == "application/x-qemu-disk" and text.startswith("QEMU QCOW"):
        return QCOW2
    return RAW


def content_kind(head: bytes) -> str:
    """What the decoded bytes look like: 'ext', 'ntfs', 'iso9660' or 'other'."""
    _, text = describe(head)
    if " ext2 filesystem" in text or " ext3 filesystem" in text or " ext4 filesystem" in text:
        return "ext"
    if 'OEM-ID "NTFS    "' in text:
        return "ntfs"
    if text.startswith("ISO 9660"):
        return "iso9660"
    return "other"


def check_declared_format(img_format: str, head: bytes) -> None:
    """Refuse an image whose bytes contradict its declared img_format."""
    kind = content_kind(head)
    expected = {FORMAT_EXTDUMP: "ext", FORMAT_NTFSDUMP: "ntfs"}.get(img_format)
    names = {"ext": "an ext2/3/4 filesystem", "ntfs": "an NTFS filesystem", "iso9660": "an ISO 9660 CD image"}
    if expected is not None and kind != expected:
        found = names.get(kind, "not " + names[expected])
        raise ImageError(f"img_format is {img_format} but the image is {found}")
    if img_format == FORMAT_DISKDUMP and kind in names:
        hint = {"ext": "; use img_format=extdump", "ntfs": "; use img_format=ntfsdump"}.get(kind, "")
        raise ImageError(f"img_format is diskdump but the image is {names[kind]}, not a whole disk{hint}")


# --- qcow2 -----------------------------------------------------------------------------------------

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_EXT_END = 0


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    virtual_size: int


def check_qcow2_header(data: bytes) -> Qcow2Header:
    """Parse enough of a qcow2 header to refuse backing files and external data files.

    Done before qemu ever opens the file: qemu would follow either reference
    and read a file of the host into the instance disk.
    """
    if len(data) < 72 or data[:4] != _QCOW2_MAGIC:
        raise ImageError("the image is not a valid qcow2 file")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", data, 4)
    (virtual_size,) = struct.unpack_from(">Q", data, 24)
    if version not in (2, 3):
        raise ImageError(f"unsupported qcow2 version {version}")
    if backing_offset or backing_size:
        raise ImageError("refusing a qcow2 image with a backing file")
    header_length = 72
    if version == 3:
        if len(data) < 104:
            raise ImageError("the image is not a valid qcow2 file (short header)")
        (incompatible,) = struct.unpack_from(">Q", data, 72)
        (header_length,) = struct.unpack_from(">I", data, 100)
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise ImageError("refusing a qcow2 image with an external data file")
    offset = (header_length + 7) & ~7
    while offset + 8 <= len(data):
        ext_type, ext_len = struct.unpack_from(">II", data, offset)
        if ext_type == _QCOW2_EXT_END:
            break
        if ext_type == _QCOW2_EXT_DATA_FILE:
            raise ImageError("refusing a qcow2 image with an external data file")
        offset += 8 + ((ext_len + 7) & ~7)
    return Qcow2Header(version=version, virtual_size=virtual_size)


# --- streams ---------------------------------------------------------------------------------------


class _RawAdapter(io.RawIOBase):
    """An ImageStream seen as a file, for the stdlib and zstandard decoders."""

    def __init__(self, stream: ImageStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._stream.readinto(memoryview(buffer).cast("B"))


class DecodedStream(ImageStream):
    """Decompresses gzip, xz or zstd on the fly, in constant memory."""

    def __init__(self, inner: ImageStream, codec: str) -> None:
        self._inner = inner
        raw = io.BufferedReader(_RawAdapter(inner), buffer_size=1 << 20)
        if codec == GZIP:
            self._file: io.IOBase = gzip.GzipFile(fileobj=raw, mode="rb")
        elif codec == XZ:
            self._file = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 - closed by close()
        elif codec == ZSTD:
            import zstandard

            self._file = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, read_across_frames=True)
        else:
            raise ValueError(codec)
        self._codec = codec
        self.size = None

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._file.readinto(buffer) or 0
        except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"the {self._codec}-compressed image is corrupt or truncated: {exc}") from exc

    def close(self) -> None:
        self._file.close()
        self._inner.close()


class PeekedStream(ImageStream):
    """Reads the first bytes for sniffing, then replays them before the rest."""

    def __init__(self, inner: ImageStream, length: int = SNIFF_BYTES) -> None:
        self._inner = inner
        self.size = inner.size
        self.local_path = inner.local_path
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


# --- the MBR prefix of filesystem dumps -----------------------------------------------------------


def mbr_prefix(img_format: str, fs_size: int | None, disk_size: int) -> bytes:
    """The 1 MiB that puts a bare filesystem into a bootable partition 1 at sector 2048.

    The partition ends where the filesystem ends (rounded up to a sector), or
    2048 sectors before the disk end when the size is not known in advance
    (a compressed dump); FixPartitionTable grows it in the jail either way.
    """
    fs_type = {FORMAT_EXTDUMP: "ext2", FORMAT_NTFSDUMP: "ntfs"}[img_format]
    disk_sectors = disk_size // SECTOR
    length = disk_sectors - 2 * PREFIX_SECTORS if fs_size is None else -(-fs_size // SECTOR)
    if length <= 0 or PREFIX_SECTORS + length > disk_sectors:
        raise ImageError("the image is larger than the disk")
    with tempfile.NamedTemporaryFile(prefix="snf-image-mbr-") as scratch:
        os.ftruncate(scratch.fileno(), (PREFIX_SECTORS + length) * SECTOR)
        device = parted.getDevice(scratch.name)
        disk = parted.freshDisk(device, "msdos")
        geometry = parted.Geometry(device=device, start=PREFIX_SECTORS, length=length)
        partition = parted.Partition(
            disk=disk,
            type=parted.PARTITION_NORMAL,
            fs=parted.FileSystem(type=fs_type, geometry=geometry),
            geometry=geometry,
        )
        disk.addPartition(partition, constraint=parted.Constraint(exactGeom=geometry))
        partition.setFlag(parted.PARTITION_BOOT)
        disk.commitToDevice()
        scratch.seek(0)
        prefix = bytearray(scratch.read(PREFIX_BYTES))
    if MBR_BOOT_CODE.is_file():
        code = MBR_BOOT_CODE.read_bytes()[:440]
        prefix[: len(code)] = code
    return bytes(prefix)
