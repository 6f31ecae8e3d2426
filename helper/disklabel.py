"""BSD disklabels (OpenBSD, NetBSD, FreeBSD bsdlabel) inside an MBR slice: read, grow, write.

OpenBSD and NetBSD images put their partitions (``a`` root, ``b`` swap,
``d``... more filesystems) in a disklabel in sector 1 of their MBR slice
(type a6/a9). Deploying onto a larger disk means growing the slice, the
label's disk size and raw partitions, and the last partition; the guest
grows its filesystem at first boot.

Layouts (little-endian, 148-byte header, then 16-byte partition entries):

- NetBSD (4.4BSD): 32-bit sizes and offsets, absolute on the disk. ``c``
  is the NetBSD slice, ``d`` (RAW_PART on i386/amd64) the whole disk.
- OpenBSD (version 1): 48-bit sizes and offsets (high 16 bits apart), a
  DUID (``d_uid``) at byte 64, the usable region ``bstart``/``bend``.
  ``c`` is the whole disk.
- FreeBSD's bsdlabel in an a5 slice is read only (for detection): its
  offsets are relative to the slice when ``c`` starts at 0.

The checksum is the XOR of the 16-bit words from the start of the label to
the end of the last partition entry, with the checksum field taken as 0.

The kernel (block/partitions/msdos.c, ``parse_bsd``) names the label's
partitions after the primary and logical ones, skipping unused entries, the
one equal to the slice and any that do not fit in the slice: :func:`kernel_partitions`
computes the same numbers, so a letter maps to a Linux partition without
guessing (the original called an undefined function for this).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

MAGIC = 0x82564557
SECTOR = 512
LABEL_SECTOR = 1  # in the slice
MAX_PARTITIONS = 16
HEADER_SIZE = 148
ENTRY_SIZE = 16
LETTERS = "abcdefghijklmnop"
#: OpenBSD's last partition is rounded down to this many sectors, as the original did.
OPENBSD_ROUND = 32

FS_UNUSED = 0
FS_SWAP = 1
FS_BSDFFS = 7
FS_NAMES = {0: "unused", 1: "swap", 7: "4.2BSD", 8: "MSDOS", 17: "ext2fs", 27: "RAID"}

FLAVOURS = {"a5": "freebsd", "a6": "openbsd", "a9": "netbsd"}
#: The raw ("whole") partitions the flavour keeps: never grown as data, never the "last" one.
RAW = {"openbsd": "c", "netbsd": "cd", "freebsd": "c"}
#: The partition covering the whole disk (NetBSD's c is its slice).
RAW_WHOLE = {"openbsd": "c", "netbsd": "d", "freebsd": "c"}

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class LabelError(ValueError):
    """Not a disklabel, or one we refuse to edit."""


@dataclass(frozen=True)
class BsdPartition:
    """One label entry; ``offset`` is absolute on the disk (FreeBSD relative offsets are converted)."""

    letter: str
    size: int
    offset: int
    fstype: int

    @property
    def end(self) -> int:
        """First sector after the partition."""
        return self.offset + self.size

    @property
    def fstype_name(self) -> str:
        return FS_NAMES.get(self.fstype, str(self.fstype))


@dataclass(frozen=True)
class DiskLabel:
    """A parsed label: the raw 512-byte sector plus the fields we read and may change."""

    flavour: str
    raw: bytes
    secpercyl: int
    ncylinders: int
    secperunit: int
    partitions: tuple[BsdPartition, ...]
    bstart: int = 0  # OpenBSD only
    bend: int = 0  # OpenBSD only
    duid: str = ""  # OpenBSD only: 16 hex digits, as fstab writes it
    relative: int = field(default=0)  # FreeBSD: the slice start added to the stored offsets

    def get(self, letter: str) -> BsdPartition | None:
        return next((p for p in self.partitions if p.letter == letter), None)

    def used(self) -> list[BsdPartition]:
        """Partitions holding something: neither unused nor a raw partition."""
        return [p for p in self.partitions if p.fstype != FS_UNUSED and p.letter not in RAW[self.flavour]]

    def last(self) -> BsdPartition | None:
        """The used partition that ends last on the disk (the one that can grow)."""
        used = self.used()
        return max(used, key=lambda p: (p.end, p.offset)) if used else None


def checksum(data: bytes, npartitions: int) -> int:
    """The label's XOR checksum over its header and ``npartitions`` entries (checksum field as 0)."""
    end = HEADER_SIZE + ENTRY_SIZE * npartitions
    buf = bytearray(data[:end])
    buf[136:138] = b"\0\0"
    total = 0
    for (word,) in struct.iter_unpack("<H", buf):
        total ^= word
    return total


def parse(sector: bytes, flavour: str, slice_start: int = 0) -> DiskLabel:
    """The label in ``sector`` (sector 1 of the slice); LabelError if it is not a valid one."""
    if flavour not in RAW:
        raise LabelError(f"unknown disklabel flavour {flavour!r}")
    if len(sector) < SECTOR:
        raise LabelError("short label sector")
    sector = bytes(sector[:SECTOR])
    magic, magic2 = _U32.unpack_from(sector, 0)[0], _U32.unpack_from(sector, 132)[0]
    if magic != MAGIC or magic2 != MAGIC:
        raise LabelError("no disklabel magic")
    stored, npart = struct.unpack_from("<HH", sector, 136)
    if not 3 <= npart <= MAX_PARTITIONS:
        raise LabelError(f"disklabel with {npart} partitions")
    if checksum(sector, npart) != stored:
        raise LabelError("disklabel checksum mismatch")
    secpercyl, secperunit = struct.unpack_from("<II", sector, 56)
    ncylinders = _U32.unpack_from(sector, 52)[0]
    kw: dict = {}
    if flavour == "openbsd":
        secperunit |= _U16.unpack_from(sector, 112)[0] << 32
        bstarth, bendh, bstart, bend = struct.unpack_from("<HHII", sector, 76)
        kw = {"bstart": bstart | bstarth << 32, "bend": bend | bendh << 32, "duid": sector[64:72].hex()}
    relative = 0
    if flavour == "freebsd" and _U32.unpack_from(sector, HEADER_SIZE + 2 * ENTRY_SIZE + 4)[0] == 0:
        relative = slice_start  # as the kernel: relative offsets when c starts at 0
    parts = []
    for i in range(npart):
        base = HEADER_SIZE + ENTRY_SIZE * i
        size, offset = struct.unpack_from("<II", sector, base)
        fstype = sector[base + 12]
        if flavour == "openbsd":
            offseth, sizeh = struct.unpack_from("<HH", sector, base + 8)
            size |= sizeh << 32
            offset |= offseth << 32
        parts.append(BsdPartition(LETTERS[i], size, offset + relative, fstype))
    return DiskLabel(flavour, sector, secpercyl, ncylinders, secperunit, tuple(parts), relative=relative, **kw)


def to_bytes(label: DiskLabel) -> bytes:
    """The 512-byte sector of ``label``: its raw bytes with our fields written back and a new checksum."""
    if label.flavour == "freebsd":
        raise LabelError("FreeBSD labels are read only here")
    buf = bytearray(label.raw)
    npart = len(label.partitions)
    _U32.pack_into(buf, 52, label.ncylinders)
    _U32.pack_into(buf, 56, label.secpercyl)
    _U32.pack_into(buf, 60, label.secperunit & 0xFFFFFFFF)
    if label.flavour == "openbsd":
        _U16.pack_into(buf, 112, label.secperunit >> 32)
        struct.pack_into(
            "<HHII", buf, 76, label.bstart >> 32, label.bend >> 32, label.bstart & 0xFFFFFFFF, label.bend & 0xFFFFFFFF
        )
    for i, p in enumerate(label.partitions):
        base = HEADER_SIZE + ENTRY_SIZE * i
        struct.pack_into("<II", buf, base, p.size & 0xFFFFFFFF, p.offset & 0xFFFFFFFF)
        if label.flavour == "openbsd":
            struct.pack_into("<HH", buf, base + 8, p.offset >> 32, p.size >> 32)
        elif p.size >> 32 or p.offset >> 32:
            raise LabelError(f"partition {p.letter} does not fit a 32-bit NetBSD label")
        buf[base + 12] = p.fstype
    struct.pack_into("<H", buf, 136, 0)
    struct.pack_into("<H", buf, 136, checksum(bytes(buf), npart))
    return bytes(buf)


def build(
    flavour: str,
    disk_sectors: int,
    slice_start: int,
    slice_size: int,
    partitions: dict[str, tuple[int, int, int]],
    *,
    duid: str = "0123456789abcdef",
    secpercyl: int = 255 * 63,
) -> DiskLabel:
    """A fresh label (for tests and test images): ``partitions`` maps letter -> (offset, size, fstype).

    The raw partitions are filled in as the flavour's disklabel(8) would.
    """
    entries = dict(partitions)
    if flavour == "openbsd":
        entries["c"] = (0, disk_sectors, FS_UNUSED)
    elif flavour == "netbsd":
        entries["c"] = (slice_start, slice_size, FS_UNUSED)
        entries["d"] = (0, disk_sectors, FS_UNUSED)
    else:
        raise LabelError("only OpenBSD and NetBSD labels are built here")
    npart = max(LETTERS.index(k) for k in entries) + 1
    parts = []
    for i in range(npart):
        offset, size, fstype = entries.get(LETTERS[i], (0, 0, FS_UNUSED))
        parts.append(BsdPartition(LETTERS[i], size, offset, fstype))
    raw = bytearray(SECTOR)
    _U32.pack_into(raw, 0, MAGIC)
    struct.pack_into("<HH", raw, 4, 5 if flavour == "openbsd" else 3, 0)  # DTYPE_SCSI / DTYPE_ESDI
    raw[8:24] = b"SCSI disk".ljust(16, b"\0")
    raw[24:40] = b"snf-image test".ljust(16, b"\0")
    struct.pack_into("<IIII", raw, 40, SECTOR, 63, 255, disk_sectors // secpercyl)
    if flavour == "openbsd":
        raw[64:72] = bytes.fromhex(duid)
        _U16.pack_into(raw, 114, 1)  # d_version
    else:
        struct.pack_into("<HH", raw, 72, 3600, 1)  # rpm, interleave
    _U32.pack_into(raw, 132, MAGIC)
    struct.pack_into("<HII", raw, 138, npart, 8192, 65536)
    label = DiskLabel(
        flavour,
        bytes(raw),
        secpercyl,
        disk_sectors // secpercyl,
        disk_sectors,
        tuple(parts),
        bstart=slice_start if flavour == "openbsd" else 0,
        bend=slice_start + slice_size if flavour == "openbsd" else 0,
        duid=duid if flavour == "openbsd" else "",
    )
    return parse(to_bytes(label), flavour)


def grow(label: DiskLabel, disk_sectors: int, slice_start: int, slice_size: int) -> DiskLabel:
    """``label`` after its slice became ``slice_start``/``slice_size`` on a disk of ``disk_sectors``.

    Disk size, cylinders and the raw partitions follow the disk and the slice;
    the last used partition grows to the end of the slice unless it is swap
    (a swap partition at the end is left alone: nothing to grow). Never shrinks.
    """
    if label.flavour == "freebsd":
        raise LabelError("FreeBSD disklabels are not supported: FreeBSD images must use GPT")
    slice_end = slice_start + slice_size
    if any(p.end > slice_end or p.offset < slice_start for p in label.used()):
        raise LabelError("a disklabel partition lies outside its MBR slice")
    last = label.last()
    parts = []
    for p in label.partitions:
        if p.letter == RAW_WHOLE[label.flavour]:
            p = replace(p, offset=0, size=disk_sectors)
        elif p.letter == "c" and label.flavour == "netbsd":
            p = replace(p, offset=slice_start, size=slice_size)
        elif last is not None and p.letter == last.letter and p.fstype != FS_SWAP:
            size = slice_end - p.offset
            if label.flavour == "openbsd":
                size -= size % OPENBSD_ROUND
            p = replace(p, size=max(size, p.size))
        parts.append(p)
    secpercyl = label.secpercyl or 1
    changes: dict = {
        "secperunit": disk_sectors,
        "ncylinders": disk_sectors // secpercyl,
        "partitions": tuple(parts),
    }
    if label.flavour == "openbsd":
        changes["bend"] = slice_end
        changes["bstart"] = label.bstart or slice_start
    return replace(label, **changes)


def kernel_partitions(
    label: DiskLabel, slice_start: int, slice_size: int, first: int
) -> dict[str, tuple[int, int, int]]:
    """letter -> (Linux partition number, start, size) as Linux's parse_bsd names them, from ``first`` on."""
    found = {}
    number = first
    for p in label.partitions:
        if p.fstype == FS_UNUSED:
            continue
        if p.offset == slice_start and p.size == slice_size:
            continue  # "full parent partition, we have it already"
        if slice_start > p.offset or slice_start + slice_size < p.end:
            continue  # "bad subpartition - ignored"
        found[p.letter] = (number, p.offset, p.size)
        number += 1
    return found


# --- the MBR slice ---------------------------------------------------------


def _chs(lba: int, heads: int = 255, sectors: int = 63) -> bytes:
    """The 3-byte CHS address of ``lba`` (1023/254/63 when it does not fit, as every tool writes)."""
    cyl, rest = divmod(lba, heads * sectors)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sec = divmod(rest, sectors)
    return bytes([head, ((cyl >> 2) & 0xC0) | (sec + 1), cyl & 0xFF])


def set_mbr_entry(mbr: bytes, slot: int, start: int, size: int) -> bytes:
    """``mbr`` with primary entry ``slot`` (1-4) moved to ``start``/``size``, CHS recomputed, type kept."""
    if not 1 <= slot <= 4:
        raise LabelError(f"bad primary slot {slot}")
    buf = bytearray(mbr[:SECTOR])
    base = 446 + 16 * (slot - 1)
    buf[base + 1 : base + 4] = _chs(start)
    buf[base + 5 : base + 8] = _chs(start + size - 1)
    struct.pack_into("<II", buf, base + 8, start, size)
    return bytes(buf)


def mbr_slices(mbr: bytes) -> list[tuple[int, str, int, int]]:
    """(slot, type as two hex digits, start, size) of the used primary entries."""
    found = []
    for slot in range(1, 5):
        base = 446 + 16 * (slot - 1)
        ptype = mbr[base + 4]
        start, size = struct.unpack_from("<II", mbr, base + 8)
        if ptype and size:
            found.append((slot, f"{ptype:02x}", start, size))
    return found
