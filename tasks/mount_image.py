"""MountImage: mount the image's root filesystem and the filesystems its /etc/fstab lists.

The root partition (ROOT_PARTITION) is mounted read-write at the target; it
must contain ``/etc``. Then every ``/etc/fstab`` entry naming its device by
``UUID=`` or ``LABEL=`` is mounted below the target, sorted by mount point:
``/``, swap, ``none``, proc, tmpfs, ``noauto`` entries and floppy/cdrom
entries are skipped, as are filesystem types the jail does not handle.
A device given by a kernel name (``/dev/sda2``) is an error: the name
depends on the hypervisor, so the image would not boot reliably anyway.
UUIDs and labels are looked up on the instance's own disks only.

Linux only for now; Windows and the BSDs fail with a clear message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from helper import disks, fsutil
from helper.framework import ALL, Context, Task, TaskError

TASK = Task(
    name="MountImage",
    order=30,
    families=ALL,
    excludable=False,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=False,
    structural=True,
)

LINUX_FSTYPES = frozenset({"auto", "ext2", "ext3", "ext4", "msdos", "vfat", "ntfs", "btrfs", "xfs"})
SKIP_FSTYPES = frozenset({"swap", "none", "proc", "tmpfs", "sysfs", "devpts", "nfs", "nfs4", "cifs"})
BTRFS_OPTIONS = ("subvol=", "subvolid=")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FstabEntry:
    """One line of /etc/fstab."""

    device: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def parse_fstab(text: str) -> list[FstabEntry]:
    """The entries of an fstab, comments and malformed lines ignored."""
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3:
            continue
        options = tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",)
        entries.append(FstabEntry(_unescape(fields[0]), _unescape(fields[1]), fields[2], options))
    return entries


def to_mount(entries: list[FstabEntry]) -> list[FstabEntry]:
    """The entries MountImage mounts, sorted by mount point; TaskError for a non-persistent device name."""
    chosen = []
    for e in entries:
        if e.mountpoint in ("/", "none", "swap") or not e.mountpoint.startswith("/"):
            continue
        if e.fstype in SKIP_FSTYPES or e.device in ("none", "proc", "tmpfs") or "noauto" in e.options:
            continue
        if any(word in f"{e.device} {e.mountpoint}" for word in ("floppy", "cdrom")):
            continue
        if e.fstype not in LINUX_FSTYPES:
            log.info("fstab: skipping %s (%s)", e.mountpoint, e.fstype)
            continue
        if not e.device.upper().startswith(("UUID=", "LABEL=")):
            raise TaskError(f"fstab contains non-persistent block device name: {e.device} ({e.mountpoint})")
        chosen.append(e)
    return sorted(chosen, key=lambda e: os.path.normpath(e.mountpoint))


def find_device(spec: str, candidates: list[Path]) -> Path:
    """The partition among ``candidates`` that a ``UUID=``/``LABEL=`` spec names."""
    key, _, value = spec.partition("=")
    key = key.upper()
    value = value.strip('"')
    for device in candidates:
        info = disks.probe(device)
        if info.get(key) == value or (key == "UUID" and info.get(key, "").lower() == value.lower()):
            return device
    raise TaskError(f"fstab entry {spec} does not match any partition of the instance's disks")


def instance_partitions(ctx: Context) -> list[Path]:
    """Every partition of every instance disk, nodes made if needed."""
    found = []
    for disk in ctx.disks:
        found.extend(disks.partition_device(disk, n) for n in disks.partition_numbers(disk))
    return found


def run(ctx: Context) -> None:
    """Mount root, check /etc, mount the fstab filesystems."""
    if ctx.osfamily != "linux":
        raise TaskError(f"MountImage: {ctx.osfamily} images are not supported yet")
    root = ctx.partition(ctx.root_partition)
    ctx.target.mkdir(parents=True, exist_ok=True)
    disks.mount(root, ctx.target, options="rw")
    if not fsutil.is_dir(ctx.target, "/etc"):
        raise TaskError("`/etc' is missing from the root partition; is ROOT_PARTITION right?")
    fstab = fsutil.resolve(ctx.target, "/etc/fstab")
    if not fstab.is_file():
        ctx.warning("The image has no /etc/fstab")
        return
    entries = to_mount(parse_fstab(fsutil.read_text(ctx.target, "/etc/fstab")))
    if not entries:
        return
    partitions = instance_partitions(ctx)
    for entry in entries:
        device = find_device(entry.device, partitions)
        if device == root:
            continue
        mountpoint = fsutil.resolve(ctx.target, entry.mountpoint)
        if not mountpoint.is_dir():
            raise TaskError(f"fstab mount point {entry.mountpoint} is not a directory in the image")
        options = ["rw"]
        if entry.fstype == "btrfs":
            options += [o for o in entry.options if o.startswith(BTRFS_OPTIONS)]
        fstype = None if entry.fstype == "auto" else entry.fstype
        disks.mount(device, mountpoint, fstype=fstype, options=",".join(options))
