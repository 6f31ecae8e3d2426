"""FilesystemResizeMounted: grow the resized partition's filesystem while it is mounted.

XFS (``xfs_growfs``) and btrfs (``btrfs filesystem resize <devid>:max``)
can only grow while mounted; this task finds where MountImage mounted
RESIZE_PART and grows it there. ext2/3/4 were already grown unmounted.
A RESIZE_PART that is not mounted (not in the image's fstab) is left as it
is, with a warning. NTFS (Windows) is a later addition.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from helper import disks
from helper.framework import ALL, Context, Task

TASK = Task(
    name="FilesystemResizeMounted",
    order=40,
    families=ALL,
    excludable=True,
    mounted=True,
    resize=True,
    cloudinit_skip=True,
    overridable=True,
)

DONE_UNMOUNTED = frozenset({"ext2", "ext3", "ext4", "swap"})

log = logging.getLogger(__name__)


def btrfs_devid(show_output: str, device: Path) -> str | None:
    """The devid of ``device`` in ``btrfs filesystem show`` output."""
    for line in show_output.splitlines():
        m = re.match(r"\s*devid\s+(\d+)\s.*\spath\s+(\S+)\s*$", line)
        if m and Path(m.group(2)) == Path(device):
            return m.group(1)
    return None


def run(ctx: Context) -> None:
    """Grow an xfs or btrfs filesystem on RESIZE_PART to fill its partition."""
    if ctx.resize_partition is None:
        return
    part = ctx.partition(ctx.resize_partition)
    fstype = disks.fs_type(part)
    if fstype in DONE_UNMOUNTED:
        return
    if fstype not in ("xfs", "btrfs"):
        ctx.warning(f"Don't know how to resize mounted partition {ctx.resize_partition} ({fstype or 'unknown'})")
        return
    mount = disks.mount_of(part, ctx.target)
    if mount is None:
        ctx.warning(f"Partition {ctx.resize_partition} ({fstype}) is not mounted; its filesystem was not grown")
        return
    if fstype == "xfs":
        ctx.run(["xfs_growfs", mount.mountpoint])
    else:
        show = ctx.run(["btrfs", "filesystem", "show", mount.mountpoint]).stdout
        devid = btrfs_devid(show, part) or "1"
        ctx.run(["btrfs", "filesystem", "resize", f"{devid}:max", mount.mountpoint])
