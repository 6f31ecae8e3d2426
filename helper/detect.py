"""Partition tables, OS family and root partition detection (OSFAMILY, ROOT_PARTITION, RESIZE_PART).

The partition table is parsed here from the raw sectors rather than with
libparted: we need the msdos system ids and the GPT type GUIDs, which
pyparted does not expose, and libparted stops to ask questions about a GPT
whose backup header is not at the end of the (grown) disk -- the normal
state of a freshly deployed image. The parsing is pure (bytes in, table
out) and so is the decision; only :func:`probe_partition` mounts anything,
read-only.

Detection (as the original's ``detect_image_properties``): partitions in
order, first hit wins. msdos a5/a6/a9 are FreeBSD/OpenBSD/NetBSD slices;
07 (NTFS) with ``Windows/System32`` (or ``WINNT``, any case) is Windows; 83 with ``/etc/fstab`` is
Linux; for the BSD slices the root is the ``a`` partition of the slice's
disklabel, numbered as the kernel numbers it (after the logical partitions).
GPT: the FreeBSD UFS GUID with ``/etc/fstab`` is FreeBSD, the
Microsoft basic data GUID with ``Windows/System32`` is Windows, anything
else is checked for Linux.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import disklabel, disks, fsutil, registry, windows
from .commands import CommandError, TaskError

log = logging.getLogger(__name__)

MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_GPT_PROTECTIVE = 0xEE
MBR_FAMILIES = {"a5": "freebsd", "a6": "openbsd", "a9": "netbsd"}
MBR_NTFS = "07"
MBR_LINUX = "83"
MAX_LOGICAL = 256
MAX_GPT_ENTRIES_BYTES = 4 * 1024 * 1024

GUID_FREEBSD_UFS = "516E7CB6-6ECF-11D6-8FF8-00022D09712B"
GUID_MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
GUID_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
GUID_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GUID_NOT_ROOT = frozenset({GUID_LINUX_SWAP, GUID_BIOS_BOOT})

LINUX_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "jfs", "btrfs", "reiserfs", "reiser4", "zfs_member"})
WINDOWS_FS = frozenset({"ntfs", "vfat", "msdos"})
FREEBSD_FS = frozenset({"ufs"})

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Partition:
    """One partition as the kernel numbers it; sectors in the table's sector size."""

    number: int
    start: int
    size: int
    type: str  # msdos: two lower-case hex digits ("83"); gpt: upper-case type GUID; bsd: "4.2BSD", "swap"...
    kind: str = "primary"  # "primary", "extended", "logical" or "bsd" (in a BSD slice's disklabel)
    letter: str = ""  # bsd: the disklabel letter
    parent: int = 0  # bsd: the number of the MBR slice holding the label

    @property
    def end(self) -> int:
        """Last sector (inclusive), as parted prints it."""
        return self.start + self.size - 1


@dataclass(frozen=True)
class Table:
    """A partition table: label "msdos" or "gpt", partitions in number order."""

    label: str
    sector_size: int
    partitions: tuple[Partition, ...]

    def get(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int]]:
    """(type, start, size) of the four entries of an MBR/EBR sector."""
    entries = []
    for i in range(4):
        raw = sector[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = raw[4]
        start, size = struct.unpack_from("<II", raw, 8)
        entries.append((ptype, start, size))
    return entries


def _has_signature(sector: bytes) -> bool:
    return len(sector) >= 512 and sector[510:512] == b"\x55\xaa"


def parse_table(read: Reader, sector_size: int = 512) -> Table:
    """Parse the partition table read through ``read(offset, length)``; TaskError if there is none."""
    mbr = read(0, 512)
    if not _has_signature(mbr):
        raise TaskError("No partition table found on the disk (no MBR signature)")
    entries = _mbr_entries(mbr)
    if any(t == MBR_GPT_PROTECTIVE for t, _, _ in entries):
        return _parse_gpt(read, sector_size)
    partitions = []
    for index, (ptype, start, size) in enumerate(entries, start=1):
        if ptype == 0 or size == 0:
            continue
        if ptype in MBR_EXTENDED:
            partitions.append(Partition(index, start, size, f"{ptype:02x}", "extended"))
            partitions.extend(_parse_logical(read, sector_size, start, size))
        else:
            partitions.append(Partition(index, start, size, f"{ptype:02x}"))
    partitions.extend(_parse_bsd_slices(read, sector_size, partitions))
    return Table("msdos", sector_size, tuple(sorted(partitions, key=lambda p: p.number)))


def read_label(read: Reader, sector_size: int, slice_: Partition) -> disklabel.DiskLabel | None:
    """The disklabel of a BSD slice, or None (no label, bad checksum: the kernel ignores it too)."""
    flavour = disklabel.FLAVOURS.get(slice_.type)
    if flavour is None or sector_size != disklabel.SECTOR:
        return None
    sector = read((slice_.start + disklabel.LABEL_SECTOR) * sector_size, disklabel.SECTOR)
    try:
        return disklabel.parse(sector, flavour, slice_.start)
    except disklabel.LabelError as exc:
        log.info("partition %d: %s", slice_.number, exc)
        return None


def _parse_bsd_slices(read: Reader, sector_size: int, partitions: list[Partition]) -> list[Partition]:
    """The disklabel partitions of the BSD slices, numbered after the logical ones as Linux does."""
    found = []
    number = max([p.number + 1 for p in partitions if p.kind == "logical"], default=5)
    for slice_ in sorted((p for p in partitions if p.kind == "primary"), key=lambda p: p.number):
        label = read_label(read, sector_size, slice_)
        if label is None:
            continue
        for letter, (n, start, size) in disklabel.kernel_partitions(label, slice_.start, slice_.size, number).items():
            fstype = label.get(letter).fstype_name  # type: ignore[union-attr]
            found.append(Partition(n, start, size, fstype, "bsd", letter, slice_.number))
            number = n + 1
    return found


def _parse_logical(read: Reader, sector_size: int, ext_start: int, ext_size: int) -> list[Partition]:
    """Follow the EBR chain of an extended partition; numbers from 5 in chain order, as Linux does."""
    logical = []
    ebr = ext_start
    seen = set()
    number = 5
    while ebr not in seen and len(seen) < MAX_LOGICAL:
        seen.add(ebr)
        sector = read(ebr * sector_size, 512)
        if not _has_signature(sector):
            break
        (ptype, rel, size), (ntype, nrel, _), *_ = _mbr_entries(sector)
        if ptype != 0 and size != 0:
            logical.append(Partition(number, ebr + rel, size, f"{ptype:02x}", "logical"))
            number += 1
        if ntype not in MBR_EXTENDED or nrel == 0 or nrel >= ext_size:
            break
        ebr = ext_start + nrel
    return logical


def _parse_gpt(read: Reader, sector_size: int) -> Table:
    header = read(sector_size, 92)
    if header[:8] != b"EFI PART":
        raise TaskError("Protective MBR found but no GPT header")
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 128 or count * entry_size > MAX_GPT_ENTRIES_BYTES:
        raise TaskError("Corrupt GPT header (entry size or count)")
    data = read(entries_lba * sector_size, count * entry_size)
    partitions = []
    for i in range(count):
        raw = data[i * entry_size : i * entry_size + 128]
        if len(raw) < 128 or raw[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        guid = str(uuid.UUID(bytes_le=bytes(raw[:16]))).upper()
        if last >= first:
            partitions.append(Partition(i + 1, first, last - first + 1, guid))
    return Table("gpt", sector_size, tuple(partitions))


def read_table(device: Path | str) -> Table:
    """The partition table of a block device (or image file)."""
    with open(device, "rb") as f:

        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return parse_table(read, disks.sector_size(device))


def partition_to_resize(table: Table) -> int | None:
    """RESIZE_PART: the partition that ends last on the disk, the one FixPartitionTable can grow.

    On msdos, if that is the extended partition, its last logical partition.
    By position rather than by number (the original took the highest
    number): only the partition at the end of the disk can grow.
    """
    outer = [p for p in table.partitions if p.kind in ("primary", "extended")]
    if not outer:
        return None
    last = max(outer, key=lambda p: p.end)
    inner = [p for p in table.partitions if p.kind == "bsd" and p.parent == last.number]
    if inner:  # a BSD slice: the disklabel partition that ends last in it
        return max(inner, key=lambda p: (p.end, p.start)).number
    if last.kind == "extended":
        logical = [p for p in table.partitions if p.kind == "logical"]
        return max(logical, key=lambda p: p.end).number if logical else None
    return last.number


# What to look for on a candidate partition.
CHECK_LINUX = "linux"
CHECK_WINDOWS = "windows"
CHECK_FREEBSD = "freebsd"

Probe = Callable[[int, str], str | None]


def candidates(table: Table) -> list[tuple[Partition, str | None, str | None]]:
    """(partition, family if decided by type alone, check to run otherwise), in detection order."""
    found: list[tuple[Partition, str | None, str | None]] = []
    for p in table.partitions:
        if p.kind in ("extended", "bsd"):
            continue
        if table.label == "msdos":
            if p.type in MBR_FAMILIES:
                root = next((q for q in table.partitions if q.parent == p.number and q.letter == "a"), p)
                found.append((root, MBR_FAMILIES[p.type], None))
            elif p.type == MBR_NTFS:
                found.append((p, None, CHECK_WINDOWS))
            elif p.type == MBR_LINUX:
                found.append((p, None, CHECK_LINUX))
        elif p.type == GUID_FREEBSD_UFS:
            found.append((p, None, CHECK_FREEBSD))
        elif p.type == GUID_MS_BASIC_DATA:
            found.append((p, None, CHECK_WINDOWS))
        elif p.type not in GUID_NOT_ROOT:
            found.append((p, None, CHECK_LINUX))
    return found


def detect(table: Table, probe: Probe) -> tuple[str, int] | None:
    """(OSFAMILY, ROOT_PARTITION) of the first partition that looks like a root, or None.

    ``probe(number, check)`` looks inside partition ``number`` and returns
    the family it found for ``check`` (or None): the only impure step.
    """
    for partition, family, check in candidates(table):
        if family is None and check is not None:
            family = probe(partition.number, check)
        if family is not None:
            return family, partition.number
    return None


def windows_version(root: Path) -> str:
    """The OSFAMILY of a mounted Windows root: "windows", or "windows-legacy" for NT < 6 (XP/2003).

    The version is the SOFTWARE hive's (read with hivex); a missing or
    unreadable hive leaves it "windows", and InstallUnattend reports the
    problem with the image.
    """
    windir = windows.windows_dir(root)
    software = fsutil.resolve(root, f"{windir}/System32/config/SOFTWARE", ignore_case=True) if windir else None
    if software is None or not software.is_file():
        log.info("no SOFTWARE hive under the Windows directory")
        return "windows"
    try:
        with registry.opened(software) as hive:
            major = registry.nt_major(hive)
    except registry.HiveError as exc:
        log.info("cannot read the Windows version: %s", exc)
        return "windows"
    return "windows" if major >= 6 else "windows-legacy"


def probe_partition(device: Path, number: int, check: str) -> str | None:
    """Mount partition ``number`` read-only and look for the mark of ``check``'s OS family."""
    part = disks.partition_device(device, number)
    fstype = disks.fs_type(part)
    allowed = {CHECK_LINUX: LINUX_FS, CHECK_WINDOWS: WINDOWS_FS, CHECK_FREEBSD: FREEBSD_FS}[check]
    if fstype not in allowed:
        log.info("partition %d: filesystem %r cannot hold a %s root", number, fstype, check)
        return None
    options = "ro,ufstype=ufs2" if check == CHECK_FREEBSD else "ro"
    mount_type = "ufs" if check == CHECK_FREEBSD else None
    try:
        with disks.mounted(part, fstype=mount_type, options=options) as root:
            if check == CHECK_WINDOWS:
                return windows_version(root) if windows.windows_dir(root) is not None else None
            return check if fsutil.resolve(root, "/etc/fstab").is_file() else None
    except CommandError as exc:
        log.info("partition %d: cannot mount it (%s)", number, exc)
        return None


def detect_device(device: Path) -> tuple[str, int] | None:
    """:func:`detect` on a real disk."""
    return detect(read_table(device), lambda number, check: probe_partition(device, number, check))
