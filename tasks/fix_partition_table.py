"""FixPartitionTable: make the partition table fit the instance's disk.

The image was written onto a disk usually larger than the image. This task
moves the GPT backup header to the real end of the disk and grows the
partition that ends last (on msdos, the extended partition and its last
logical partition when the extended one is last) up to 2048 sectors (1 MiB)
before the end of the disk, as the original did. It never shrinks a
partition.

With the ``SWAP`` property in the form ``N:SIZE`` it also creates partition
``N``, ``SIZE`` MiB of Linux swap, at the end of the disk (msdos: ``N`` 1-4
is a primary partition, 5 and above a logical one, creating an extended
partition if needed; ``N`` must be the number the table assigns next).
AddSwap formats it later. The ``SWAP`` form naming a whole disk (``b``,
``c``, ...) needs nothing here.

Supported: msdos and GPT tables. FreeBSD images must use GPT. OpenBSD and
NetBSD images (MBR slice a6/a9 holding a disklabel): the slice grows to the
end of the disk (when it is the last partition), and in the disklabel the
disk size, cylinders, the raw partitions (OpenBSD ``c``, NetBSD ``c`` and
``d``) and the last partition (unless it is swap; OpenBSD's rounded down to
32 sectors) follow (:mod:`helper.disklabel`, checksum recomputed). SWAP
``N:SIZE`` is Linux only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import parted

from helper import detect, disklabel, disks, ufs
from helper.commands import TaskError
from helper.framework import ALL, Context, Task

from ._swap import swap_partition

TASK = Task(
    name="FixPartitionTable",
    order=10,
    families=ALL,
    excludable=True,
    mounted=False,
    resize=False,
    cloudinit_skip=True,
    overridable=False,
)

MIB = 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """A partition as the planner sees it: number, kind (primary/extended/logical), first and last sector."""

    number: int
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """What to change: partitions to grow (number -> new last sector) and partitions to create."""

    grow: dict[int, int]
    create: list[Part]


def plan(label: str, length: int, sector_size: int, parts: list[Part], swap: tuple[int, int] | None) -> Plan:
    """Decide the new layout; pure, so it is tested on its own.

    ``length`` is the disk size in sectors. Partitions end at most at
    ``length - 1 MiB - 1``; a swap partition takes the end of that space.
    """
    mib = max(1, MIB // sector_size)
    limit = length - mib - 1
    outer = [p for p in parts if p.kind != "logical"]
    logical = [p for p in parts if p.kind == "logical"]
    if not outer:
        raise TaskError("The partition table has no partitions")
    last = max(outer, key=lambda p: p.end)
    extended = last if last.kind == "extended" else None
    if extended is not None:
        if not logical:
            raise TaskError("The last partition is an empty extended partition")
        data = max(logical, key=lambda p: p.end)
    else:
        data = last

    grow: dict[int, int] = {}
    create: list[Part] = []
    if swap is None:
        data_end = limit
        ext_end = limit
    else:
        number, size_mib = swap
        if any(p.number == number for p in parts):
            raise TaskError(f"SWAP: partition {number} already exists")
        swap_start = limit + 1 - size_mib * mib
        if label == "gpt":
            expected = min(set(range(1, len(parts) + 2)) - {p.number for p in parts})
            if number != expected:
                raise TaskError(f"SWAP: the new partition would be number {expected}, not {number}")
            create.append(Part(number, "primary", swap_start, limit))
            data_end = ext_end = swap_start - 1
        elif number <= 4:
            free = sorted(set(range(1, 5)) - {p.number for p in outer})
            if not free:
                raise TaskError("SWAP: no free primary partition slot")
            if number != free[0]:
                raise TaskError(f"SWAP: the new primary partition would be number {free[0]}, not {number}")
            create.append(Part(number, "primary", swap_start, limit))
            data_end = ext_end = swap_start - 1
        else:
            expected = max((p.number for p in logical), default=4) + 1
            if number != expected:
                raise TaskError(f"SWAP: the new logical partition would be number {expected}, not {number}")
            data_end = swap_start - mib - 1  # room for the EBR, aligned
            ext_end = limit
            if extended is None:
                if len(outer) >= 4:
                    raise TaskError("SWAP: no free primary partition slot for an extended partition")
                ext_number = min(set(range(1, 5)) - {p.number for p in outer})
                create.append(Part(ext_number, "extended", data_end + 1, limit))
            create.append(Part(number, "logical", swap_start, limit))
        if data_end < data.end:
            raise TaskError("Not enough space for swap partition")
    if data_end > data.end:
        grow[data.number] = data_end
    if extended is not None and ext_end > extended.end:
        grow[extended.number] = ext_end
    return Plan(grow, create)


_KINDS = {
    parted.PARTITION_NORMAL: "primary",
    parted.PARTITION_LOGICAL: "logical",
    parted.PARTITION_EXTENDED: "extended",
}
_PARTED_KINDS = {v: k for k, v in _KINDS.items()}


def _apply(disk: parted.Disk, the_plan: Plan) -> None:
    device = disk.device
    by_number = {p.number: p for p in disk.partitions}
    # the extended partition first, so that its logical partitions can grow into it
    order = sorted(the_plan.grow, key=lambda n: by_number[n].type != parted.PARTITION_EXTENDED)
    for number in order:
        part = by_number[number]
        geom = parted.Geometry(device=device, start=part.geometry.start, end=the_plan.grow[number])
        disk.setPartitionGeometry(
            partition=part, constraint=parted.Constraint(exactGeom=geom), start=geom.start, end=geom.end
        )
    for new in the_plan.create:
        geom = parted.Geometry(device=device, start=new.start, end=new.end)
        fs = None if new.kind == "extended" else parted.FileSystem(type="linux-swap(v1)", geometry=geom)
        part = parted.Partition(disk=disk, type=_PARTED_KINDS[new.kind], fs=fs, geometry=geom)
        disk.addPartition(partition=part, constraint=parted.Constraint(exactGeom=geom))
        if part.number != new.number:
            raise TaskError(f"SWAP: the new partition got number {part.number}, not {new.number}")
    # the table only: the kernel is told below, partition by partition
    disk.commitToDevice()


BSD_SLICE_TYPES = {"openbsd": "a6", "netbsd": "a9"}


def plan_bsd(
    mbr: bytes, read_label: Callable[[int], bytes], disk_sectors: int, family: str
) -> tuple[bytes, int, bytes] | None:
    """(new MBR, label sector number, new label sector) for an Open/NetBSD disk, or None if nothing changes.

    ``read_label(sector_number) -> bytes`` reads the label sector (pure otherwise).
    """
    wanted = BSD_SLICE_TYPES[family]
    slices = disklabel.mbr_slices(mbr)
    ours = [s for s in slices if s[1] == wanted]
    if not ours:
        raise TaskError(f"No {family} MBR partition (type {wanted}) found")
    slot, _, start, size = ours[0]
    last_end = max(s[2] + s[3] for s in slices)
    new_size = disk_sectors - start if start + size == last_end else size
    if start + new_size > min(disk_sectors, 1 << 32):
        new_size = min(disk_sectors, (1 << 32) - 1) - start
    label_lba = start + disklabel.LABEL_SECTOR
    try:
        label = disklabel.parse(read_label(label_lba), family, start)
        grown = disklabel.grow(label, disk_sectors, start, max(new_size, size))
    except disklabel.LabelError as exc:
        raise TaskError(f"The {family} disklabel cannot be grown: {exc}") from exc
    if grown == label and new_size <= size:
        return None
    return disklabel.set_mbr_entry(mbr, slot, start, max(new_size, size)), label_lba, disklabel.to_bytes(grown)


def run_bsd(ctx: Context) -> None:
    """Grow the Open/NetBSD MBR slice and its disklabel, then tell the kernel."""
    ufs.require_kernel_support(ctx.osfamily)
    if swap_partition(ctx.properties.get("SWAP")) is not None:
        ctx.warning("SWAP partitions are created for Linux images only; ignoring SWAP")
    device = ctx.device
    if disks.sector_size(device) != disklabel.SECTOR:
        raise TaskError("BSD disklabels are supported on 512-byte sector disks only")
    disk_sectors = disks.size_bytes(device) // disklabel.SECTOR
    with open(device, "r+b") as f:

        def read(lba: int) -> bytes:
            f.seek(lba * disklabel.SECTOR)
            return f.read(disklabel.SECTOR)

        changes = plan_bsd(read(0), read, disk_sectors, ctx.osfamily)
        if changes is None:
            log.info("The %s slice and disklabel already fill the disk", ctx.osfamily)
        else:
            mbr, label_lba, label = changes
            f.seek(0)
            f.write(mbr)
            f.seek(label_lba * disklabel.SECTOR)
            f.write(label)
            f.flush()
            os.fsync(f.fileno())
    # Re-read the whole table (nothing is mounted yet): BLKPG cannot resize a BSD slice or
    # its partitions one by one, the kernel refuses ranges that overlap (the slice holds them).
    ctx.run(["blockdev", "--rereadpt", device])


def run(ctx: Context) -> None:
    """Grow the last partition (and create the swap partition) on the deployed disk."""
    if ctx.osfamily in BSD_SLICE_TYPES:
        run_bsd(ctx)
        return
    swap = swap_partition(ctx.properties.get("SWAP"))
    device = ctx.device
    # the type from the raw sectors: libparted must not see a misplaced GPT backup header first
    label = detect.read_table(device).label
    if ctx.osfamily == "freebsd" and label != "gpt":
        raise TaskError("For FreeBSD images only GUID Partition Tables are supported.")
    if label == "gpt":
        # move the backup header and its entries to the end of the (larger) disk
        ctx.run(["sgdisk", "--move-second-header", device])
    the_plan = _update_table(device, swap)
    table = detect.read_table(device)
    ss = table.sector_size
    disks.sync_partitions(
        device, {p.number: (p.start * ss, p.size * ss, p.kind == "extended") for p in table.partitions}
    )
    for new in the_plan.create:
        if new.kind != "extended":
            ctx.partition(new.number)


def _update_table(device: Path, swap: tuple[int, int] | None) -> Plan:
    """Plan and write the new table with libparted; the kernel is not told here."""
    try:
        pdev = parted.getDevice(str(device))
    except Exception as exc:  # pyparted raises _ped exceptions of several unrelated classes
        raise TaskError(f"Unable to open {device}: {exc}") from exc
    try:
        try:
            disk = parted.newDisk(pdev)
        except Exception as exc:
            raise TaskError(f"Unable to read the partition table: {exc}") from exc
        if disk.type not in ("msdos", "gpt"):
            raise TaskError(f"Unsupported partition table type: {disk.type}")
        parts = [
            Part(p.number, _KINDS.get(p.type, "primary"), p.geometry.start, p.geometry.end) for p in disk.partitions
        ]
        the_plan = plan(disk.type, pdev.length, pdev.sectorSize, parts, swap)
        if not the_plan.grow and not the_plan.create:
            log.info("The partition table already fills the disk; nothing to change")
            return the_plan
        try:
            _apply(disk, the_plan)
        except TaskError:
            raise
        except Exception as exc:
            raise TaskError(f"Unable to update the partition table: {exc}") from exc
        return the_plan
    finally:
        # libparted caches devices by path, size included: a later open must see the disk anew
        pdev.removeFromCache()
