"""Container headers, checked on the host before any parser of the format sees the file.

The rules are OpenStack's format inspector's (``oslo.utils`` ``imageutils.format_inspector``),
applied to the very descriptor that is then hashed and handed to the converter: a container
may not refer to any other file. Refused: qcow2 backing files, external data files, encryption
and unknown incompatible features; VMDKs other than a single monolithicSparse or
streamOptimized file (descriptor files, external or several extents, parents, a descriptor
anywhere but right after the header, a footer that disagrees with the header); differencing
VHD, VHDX and VDI images (they have parents). The converter runs without backing files on its
command line anyway and sees no file of the host: these checks are the first of two walls, and
they give the operator one clear line instead of qemu's error.

Every read is bounded (a few KiB, at most 2 MiB for a qcow2 header cluster) and every offset
taken from the file is checked against its size before use.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ImageError
from .sniff import NAMES, QCOW2, VDI, VHDX, VMDK, VMDK_DESCRIPTOR_FILE, VPC

KiB, MiB = 1024, 1024 * 1024


@dataclass(frozen=True)
class ContainerHeader:
    """What the checks learnt: the qemu driver to use and the disk size the container declares."""

    kind: str
    virtual_size: int

    @property
    def name(self) -> str:
        return NAMES[self.kind]


class _File:
    """Bounded reads of the checked descriptor, with the container's name for messages."""

    def __init__(self, fd: int, kind: str) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.name = NAMES[kind]

    def at(self, offset: int, length: int, what: str) -> bytes:
        """Exactly ``length`` bytes at ``offset``, or ImageError naming ``what`` lies past the end."""
        if offset < 0 or offset + length > self.size:
            raise self.invalid(f"its {what} lies past the end of the file")
        return os.pread(self.fd, length, offset)

    def invalid(self, reason: str) -> ImageError:
        return ImageError(f"the image is not a valid {self.name} file: {reason}")

    def refuse(self, reason: str) -> ImageError:
        return ImageError(f"refusing a {self.name} image {reason}")


def read_header(kind: str, fd: int) -> ContainerHeader:
    """Check the header of a ``kind`` container (one of sniff.CONTAINERS) read from ``fd``."""
    file = _File(fd, kind)
    header = _CHECKS[kind](file)
    if header.virtual_size <= 0:
        raise file.refuse("that declares a virtual size of 0")
    return header


def check_fits(header: ContainerHeader, disk_size: int) -> None:
    """The disk the container declares must fit the instance's disk."""
    if header.virtual_size > disk_size:
        raise ImageError(
            f"the {header.name} image's virtual size ({header.virtual_size} bytes)"
            f" is larger than the disk ({disk_size} bytes)"
        )


# --- qcow2 (docs/interop/qcow2.txt) --------------------------------------------------------------

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_KNOWN_INCOMPAT = (1 << 5) - 1  # dirty, corrupt, external data file, compression type, extended L2
_QCOW2_EXT_END, _QCOW2_EXT_DATA_FILE = 0, 0x44415441


def _qcow2(file: _File) -> ContainerHeader:
    head = file.at(0, 72, "header")
    magic, version, backing_offset, backing_size, cluster_bits, size, crypt = struct.unpack_from(">4sIQIIQI", head)
    if magic != _QCOW2_MAGIC:
        raise file.invalid("bad magic")
    if version not in (2, 3):
        raise file.refuse(f"of version {version} (only 2 and 3 are read)")
    if backing_offset or backing_size:
        raise file.refuse("with a backing file")
    if crypt:
        raise file.refuse("that is encrypted")
    if not 9 <= cluster_bits <= 21:
        raise file.invalid(f"cluster size 2^{cluster_bits}")
    cluster = 1 << cluster_bits
    header_length = 72
    if version == 3:
        incompatible, header_length = struct.unpack_from(">Q20xI", file.at(72, 32, "header"))
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise file.refuse("with an external data file")
        if incompatible & ~_QCOW2_KNOWN_INCOMPAT:
            raise file.refuse(f"with unknown incompatible features (0x{incompatible:x})")
        if not 104 <= header_length <= cluster:
            raise file.invalid(f"header length {header_length}")
    _qcow2_extensions(file, header_length, cluster)
    return ContainerHeader(QCOW2, size)


def _qcow2_extensions(file: _File, header_length: int, cluster: int) -> None:
    """Walk the header extensions (they end with the first cluster): no data-file name may appear."""
    start, end = (header_length + 7) & ~7, min(cluster, file.size)
    area = file.at(start, end - start, "header extensions") if start < end else b""
    offset = 0
    while offset + 8 <= len(area):
        ext_type, ext_len = struct.unpack_from(">II", area, offset)
        if ext_type == _QCOW2_EXT_END:
            return
        if ext_type == _QCOW2_EXT_DATA_FILE:
            raise file.refuse("with an external data file")
        offset += 8 + ((ext_len + 7) & ~7)
    if offset > len(area):
        raise file.invalid("a header extension runs past the first cluster")


# --- VMDK (VMware's Virtual Disk Format 5.0; qemu's block/vmdk.c) --------------------------------

_VMDK_MAGIC = b"KDMV"
_VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF
_VMDK_SPARSE_HEADER = struct.Struct("<4sIIQQQQIQQ")
_VMDK_DESCRIPTOR_MAX = MiB - 1  # qemu reads at most this much descriptor
_VMDK_QEMU_DESCRIPTOR_READ = 20 * 512  # what qemu reads at 0x200 looking for a parent
_VMDK_TYPES = ("monolithicsparse", "streamoptimized")
_VMDK_EXTENT = re.compile(r'(rw|rdonly|noaccess)\s+\d+\s+(\w+)\s+"([^"]*)"(\s+\d+)?')
_VMDK_MARKER = struct.Struct("<QII496s")
_VMDK_MARKER_EOS, _VMDK_MARKER_FOOTER = 0, 3


def _vmdk(file: _File) -> ContainerHeader:
    if file.at(0, len(VMDK_DESCRIPTOR_FILE), "header") == VMDK_DESCRIPTOR_FILE:
        create_type = _vmdk_create_type(file, _vmdk_text(file, file.at(0, min(file.size, 64 * KiB), "descriptor")))
        raise file.refuse(
            f"descriptor file (createType {create_type}): its data lives in other files;"
            " convert it to a single monolithicSparse or streamOptimized VMDK"
        )
    header = _VMDK_SPARSE_HEADER.unpack(file.at(0, _VMDK_SPARSE_HEADER.size, "header"))
    magic, version, _flags, capacity, _grain, desc_sector, desc_sectors, _gtes, _rgd, gd_offset = header
    if magic != _VMDK_MAGIC:
        raise file.invalid("bad magic")
    if version not in (1, 2, 3):
        raise file.refuse(f"of version {version}")
    if desc_sector != 1 or not 0 < desc_sectors * 512 <= _VMDK_DESCRIPTOR_MAX:
        raise file.refuse("whose descriptor is not embedded right after its header")
    if capacity == 0:  # qemu would open the files its descriptor lists as extents
        raise file.refuse("that declares a virtual size of 0")
    length = max(desc_sectors * 512, min(_VMDK_QEMU_DESCRIPTOR_READ, file.size - 512))
    _vmdk_check_descriptor(file, _vmdk_text(file, file.at(512, length, "descriptor")))
    if gd_offset == _VMDK_GD_AT_END:
        _vmdk_check_footer(file, header)
    return ContainerHeader(VMDK, capacity * 512)


def _vmdk_text(file: _File, data: bytes) -> str:
    """The descriptor up to its first NUL (where qemu's string functions stop), as ASCII."""
    try:
        return data.split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise file.invalid("its descriptor is not ASCII text") from None


def _vmdk_create_type(file: _File, text: str) -> str:
    found = re.findall(r'createType\s*=\s*"([^"\n]{0,64})"', text, flags=re.IGNORECASE)
    if text.lower().count("createtype") != 1 or len(found) != 1:
        raise file.refuse("whose descriptor does not name exactly one createType")
    return found[0]


def _vmdk_check_descriptor(file: _File, text: str) -> None:
    """Every line understood; one createType we read; one SPARSE extent (this file); no parent."""
    extents = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#") or line.lower().startswith("ddb."):
            continue
        if _VMDK_EXTENT.fullmatch(line.lower()):
            extents.append(line)
        elif not re.fullmatch(r'[A-Za-z][\w.]*\s*=\s*("[^"]*"|\S+)', line):
            raise file.refuse("whose descriptor has a line snf-image does not understand")
    create_type = _vmdk_create_type(file, text)
    if create_type.lower() not in _VMDK_TYPES:
        raise file.refuse(f"of type {create_type}: only monolithicSparse and streamOptimized VMDKs are read")
    lowered = text.lower()
    if "parentfilenamehint" in lowered or re.search(r"parentcid\s*=\s*(?!ffffffff\b)", lowered):
        raise file.refuse("with a parent (a differencing VMDK)")
    if len(extents) != 1:
        raise file.refuse(f"with {len(extents)} extents (only one, in the file itself, is read)")
    match = _VMDK_EXTENT.fullmatch(extents[0].lower())
    assert match is not None
    if match.group(2) != "sparse" or "/" in match.group(3) or match.group(4):
        raise file.refuse("with an external extent")


def _vmdk_check_footer(file: _File, header: tuple) -> None:
    """A streamOptimized VMDK's footer overrides its header in qemu: it must repeat it."""
    tail = file.at(file.size - 1536, 1536, "footer")
    marker = _VMDK_MARKER.unpack_from(tail, 0)
    footer = _VMDK_SPARSE_HEADER.unpack_from(tail, 512)
    end = _VMDK_MARKER.unpack_from(tail, 1024)
    if marker[1:] != (0, _VMDK_MARKER_FOOTER, bytes(496)) or end != (0, 0, _VMDK_MARKER_EOS, bytes(496)):
        raise file.invalid("its footer markers are missing")
    if footer[9] == _VMDK_GD_AT_END or footer[:4] != header[:4] or footer[5:7] != header[5:7]:
        raise file.refuse("whose footer disagrees with its header")


# --- VHD (Microsoft's Virtual Hard Disk Image Format; qemu's "vpc") -------------------------------

_VHD_FIXED, _VHD_DYNAMIC, _VHD_DIFFERENCING = 2, 3, 4


def _vpc(file: _File) -> ContainerHeader:
    footer = file.at(0, 512, "footer")
    if footer[:8] != b"conectix":
        raise file.invalid("bad cookie")
    (current_size,) = struct.unpack_from(">Q", footer, 48)
    (disk_type,) = struct.unpack_from(">I", footer, 60)
    if disk_type == _VHD_DIFFERENCING:
        raise file.refuse("that is a differencing disk (it has a parent)")
    if disk_type not in (_VHD_FIXED, _VHD_DYNAMIC):
        raise file.invalid(f"disk type {disk_type}")
    return ContainerHeader(VPC, current_size)


# --- VHDX (Microsoft's VHDX Format Specification v1.00) -----------------------------------------

_VHDX_REGION_TABLE = 192 * KiB
_VHDX_TABLE_SIZE = 64 * KiB
_VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
_VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
_VHDX_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
_VHDX_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
_VHDX_HAS_PARENT = 1 << 1


def _vhdx(file: _File) -> ContainerHeader:
    if file.at(0, 8, "identifier") != b"vhdxfile":
        raise file.invalid("bad identifier")
    table = file.at(_VHDX_REGION_TABLE, _VHDX_TABLE_SIZE, "region table")
    signature, _checksum, count = struct.unpack_from("<4sII", table)
    if signature != b"regi" or 16 + 32 * count > len(table):
        raise file.invalid("bad region table")
    regions = (struct.unpack_from("<16sQI", table, 16 + 32 * i) for i in range(count))
    metadata = next((offset for guid, offset, _length in regions if guid == _VHDX_METADATA_REGION), None)
    if metadata is None:
        raise file.invalid("no metadata region")
    items = file.at(metadata, _VHDX_TABLE_SIZE, "metadata table")
    signature, _reserved, entries = struct.unpack_from("<8sHH", items)
    if signature != b"metadata" or 32 + 32 * entries > len(items):
        raise file.invalid("bad metadata table")
    virtual_size = None
    for i in range(entries):
        guid, item_offset, _length = struct.unpack_from("<16sII", items, 32 + 32 * i)
        if guid == _VHDX_PARENT_LOCATOR:
            raise file.refuse("that is a differencing disk (it has a parent locator)")
        if guid == _VHDX_FILE_PARAMETERS:
            (flags,) = struct.unpack("<4xI", file.at(metadata + item_offset, 8, "file parameters"))
            if flags & _VHDX_HAS_PARENT:
                raise file.refuse("that is a differencing disk (it has a parent)")
        elif guid == _VHDX_VIRTUAL_DISK_SIZE:
            (virtual_size,) = struct.unpack("<Q", file.at(metadata + item_offset, 8, "virtual disk size"))
    if virtual_size is None:
        raise file.invalid("no virtual disk size")
    return ContainerHeader(VHDX, virtual_size)


# --- VDI (VirtualBox; qemu's block/vdi.c) --------------------------------------------------------

_VDI_SIGNATURE = 0xBEDA107F
_VDI_DYNAMIC, _VDI_FIXED = 1, 2


def _vdi(file: _File) -> ContainerHeader:
    head = file.at(0, 0x1C8, "header")
    signature, version, _header_size, image_type = struct.unpack_from("<IIII", head, 0x40)
    if signature != _VDI_SIGNATURE:
        raise file.invalid("bad signature")
    if version >> 16 != 1:
        raise file.refuse(f"of version {version >> 16}.{version & 0xFFFF}")
    if image_type not in (_VDI_DYNAMIC, _VDI_FIXED) or any(head[0x1A8:0x1C8]):
        raise file.refuse("that is a differencing or undo disk (it has a parent)")
    (disk_size,) = struct.unpack_from("<Q", head, 0x170)
    return ContainerHeader(VDI, disk_size)


_CHECKS: dict[str, Callable[[_File], ContainerHeader]] = {
    QCOW2: _qcow2,
    VMDK: _vmdk,
    VPC: _vpc,
    VHDX: _vhdx,
    VDI: _vdi,
}
