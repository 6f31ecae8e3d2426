"""Partition tables, OS family and root partition detection (OSFAMILY, ROOT_PARTITION, RESIZE_PART).

The partition table is parsed here from the raw sectors rather than with
libparted: we need the msdos system ids and the GPT type GUIDs, which
pyparted does not expose, and libparted stops to ask questions about a GPT
whose backup header is not at the end of the (grown) disk -- the normal
state of a freshly deployed image. The parsing is pure (bytes in, table
out) and so is the decision; only :func:`probe_partition` mounts anything,
read-only.

Detection (as the original's ``detect_image_properties``): partitions in
order, first hit wins. The partition type names the family to look for;
a look inside confirms it. msdos a5/a6/a9 are FreeBSD/OpenBSD/NetBSD slices
whose root is the ``a`` partition of the slice's disklabel, numbered as the
kernel numbers it (after the logical partitions); 07 (NTFS) with
``Windows/System32`` (or ``WINNT``, any case) is Windows; 83 with
``/etc/fstab`` is Linux. GPT: the FreeBSD UFS GUID is FreeBSD, the Microsoft
basic data GUID Windows; the types that never hold a root (swap, boot
loaders, EFI system) are passed over and anything else is checked for
Linux. A BSD root is a UFS1 or UFS2 filesystem (the superblock says which,
and Linux must be told) with ``/etc/fstab``. Every candidate turned down is
named, with the reason, in a warning the operator sees.
"""

from __future__ import annotations

import logging
import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import disklabel, disks, fsutil, registry, ufs, windows
from .commands import CommandError, TaskError

log = logging.getLogger(__name__)

MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_GPT_PROTECTIVE = 0xEE
MBR_FAMILIES = {"a5": "freebsd", "a6": "openbsd", "a9": "netbsd"}
MBR_NTFS = "07"
MBR_LINUX = "83"
MAX_LOGICAL = 256
MAX_GPT_ENTRIES_BYTES = 4 * 1024 * 1024
GPT_HEADER_MIN = 92

GUID_FREEBSD_UFS = "516E7CB6-6ECF-11D6-8FF8-00022D09712B"
GUID_MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
GUID_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
GUID_BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
GUID_EFI_SYSTEM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GUID_MS_RESERVED = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
GUID_MS_RECOVERY = "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"
GUID_FREEBSD_BOOT = "83BD6B9D-7F41-11DC-BE0B-001560B84F0F"
GUID_FREEBSD_SWAP = "516E7CB5-6ECF-11D6-8FF8-00022D09712B"
GUID_NOT_ROOT = frozenset(
    {GUID_LINUX_SWAP, GUID_BIOS_BOOT, GUID_EFI_SYSTEM, GUID_MS_RESERVED, GUID_MS_RECOVERY, GUID_FREEBSD_BOOT,
     GUID_FREEBSD_SWAP}
)  # fmt: skip

LINUX_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "jfs", "btrfs", "reiserfs", "reiser4", "zfs_member"})
WINDOWS_FS = frozenset({"ntfs", "vfat", "msdos"})

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
    """The primary GPT, its header and entries checked as the kernel checks them (sizes, CRCs)."""
    header = read(sector_size, sector_size)
    if header[:8] != b"EFI PART":
        raise TaskError("Protective MBR found but no GPT header")
    header_size, header_crc = struct.unpack_from("<II", header, 12)
    if not GPT_HEADER_MIN <= header_size <= min(len(header), sector_size):
        raise TaskError(f"Corrupt GPT header (header size {header_size})")
    checked = bytearray(header[:header_size])
    checked[16:20] = bytes(4)
    if zlib.crc32(checked) != header_crc:
        raise TaskError("Corrupt GPT header (its CRC does not match): the kernel ignores this partition table")
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if entry_size < 128 or count * entry_size > MAX_GPT_ENTRIES_BYTES:
        raise TaskError("Corrupt GPT header (entry size or count)")
    data = read(entries_lba * sector_size, count * entry_size)
    if len(data) < count * entry_size:
        raise TaskError("Corrupt GPT header: its partition entries lie past the end of the disk")
    if zlib.crc32(data) != entries_crc:
        raise TaskError("Corrupt GPT partition entries (their CRC does not match the header's)")
    partitions = []
    for i in range(count):
        raw = data[i * entry_size : i * entry_size + 128]
        if raw[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        guid = str(uuid.UUID(bytes_le=bytes(raw[:16]))).upper()
        if last >= first:
            partitions.append(Partition(i + 1, first, last - first + 1, guid))
    return Table("gpt", sector_size, tuple(partitions))


def read_table(device: Path | str) -> Table:
    """The partition table of a block device (or image file); what lies past its end reads as nothing."""
    with open(device, "rb") as f:
        size = f.seek(0, os.SEEK_END)

        def read(offset: int, length: int) -> bytes:
            if offset >= size:
                return b""
            f.seek(offset)
            return f.read(min(length, size - offset))

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


# What to look for on a candidate partition: the family whose root it may be.
CHECK_LINUX = "linux"
CHECK_WINDOWS = "windows"
#: A BSD root: UFS (1 or 2) with /etc/fstab.
BSD_FAMILIES = frozenset(MBR_FAMILIES.values())


class Rejected(Exception):
    """A candidate partition is not the root; the message says why."""


#: ``probe(number, check)``: the family found on partition ``number``, or Rejected.
Probe = Callable[[int, str], str]


def candidates(table: Table) -> list[tuple[Partition, str]]:
    """(partition, family to check it for), in detection order."""
    found: list[tuple[Partition, str]] = []
    for p in table.partitions:
        if p.kind in ("extended", "bsd"):
            continue
        if table.label == "msdos":
            if p.type in MBR_FAMILIES:
                root = next((q for q in table.partitions if q.parent == p.number and q.letter == "a"), p)
                found.append((root, MBR_FAMILIES[p.type]))
            elif p.type == MBR_NTFS:
                found.append((p, CHECK_WINDOWS))
            elif p.type == MBR_LINUX:
                found.append((p, CHECK_LINUX))
        elif p.type == GUID_FREEBSD_UFS:
            found.append((p, "freebsd"))
        elif p.type == GUID_MS_BASIC_DATA:
            found.append((p, CHECK_WINDOWS))
        elif p.type not in GUID_NOT_ROOT:
            found.append((p, CHECK_LINUX))
    return found


def detect(table: Table, probe: Probe, warn: Callable[[str], None]) -> tuple[str, int] | None:
    """(OSFAMILY, ROOT_PARTITION) of the first partition that looks like a root, or None.

    ``probe`` looks inside a partition: the only impure step. Each partition
    it turns down is reported through ``warn``, with the reason.
    """
    for partition, check in candidates(table):
        try:
            return probe(partition.number, check), partition.number
        except Rejected as exc:
            warn(f"Partition {partition.number} is not a {check} root: {exc}")
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


def _mount_spec(part: Path, check: str) -> tuple[str, str | None, str]:
    """(what the partition holds, mount type, mount options) for ``check``; Rejected if it cannot be that root."""
    if check in BSD_FAMILIES:
        version = ufs.device_version(part)
        if version is None:
            raise Rejected("it holds no UFS (no UFS1 or UFS2 superblock)")
        return f"{version.upper()} filesystem", "ufs", f"ro,ufstype={ufs.LINUX_TYPES[version]}"
    fstype = disks.fs_type(part)
    if fstype not in (WINDOWS_FS if check == CHECK_WINDOWS else LINUX_FS):
        raise Rejected(f"it holds {fstype or 'no filesystem blkid knows'}")
    return f"{fstype} filesystem", None, "ro"


def probe_partition(device: Path, number: int, check: str) -> str:
    """Mount partition ``number`` read-only and look for the mark of ``check``'s OS family.

    A helper kernel without UFS is an error here, not a rejection: no BSD
    image can be detected (or deployed) with it, and the message says how to
    get one that can.
    """
    if check in BSD_FAMILIES:
        ufs.require_kernel_support(check)
    part = disks.partition_device(device, number)
    holds, mount_type, options = _mount_spec(part, check)
    try:
        with disks.mounted(part, fstype=mount_type, options=options) as root:
            if check == CHECK_WINDOWS:
                if windows.windows_dir(root) is None:
                    raise Rejected(f"its {holds} has no Windows/System32")
                return windows_version(root)
            if not fsutil.resolve(root, "/etc/fstab").is_file():
                raise Rejected(f"its {holds} has no /etc/fstab")
            return check
    except CommandError as exc:
        raise Rejected(f"its {holds} cannot be mounted ({exc})") from exc


def detect_device(device: Path, warn: Callable[[str], None]) -> tuple[str, int] | None:
    """:func:`detect` on a real disk."""
    return detect(read_table(device), lambda number, check: probe_partition(device, number, check), warn)
