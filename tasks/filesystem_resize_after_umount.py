"""FilesystemResizeAfterUmount: grow a Windows NTFS offline with ntfsresize.

Runs after UmountImage on the resized partition (RESIZE_PART) when it holds
NTFS and the growth is offline: always for ``windows-legacy`` (XP cannot
extend its system volume), for ``windows`` with ``OFFLINE_NTFSRESIZE``
(by default Windows extends it itself at first boot, see
FilesystemResizeMounted). A dirty NTFS is refused. ntfsresize leaves the
volume marked for a check, so Windows runs CHKDSK at first boot; with
``OFFLINE_NTFSRESIZE_NOCHECK`` the mark is cleared (``ntfsfix -d``).

Properties: OFFLINE_NTFSRESIZE, OFFLINE_NTFSRESIZE_NOCHECK.
"""

from __future__ import annotations

from helper import disks
from helper.commands import TaskError
from helper.framework import WINDOWS, Context, Task

from ._windows import guest

TASK = Task(
    name="FilesystemResizeAfterUmount",
    order=81,
    families=WINDOWS,
    excludable=True,
    mounted=False,
    resize=True,
    cloudinit_skip=True,
    overridable=False,
)

PROP_NOCHECK = "OFFLINE_NTFSRESIZE_NOCHECK"


def run(ctx: Context) -> None:
    """ntfsresize RESIZE_PART to fill its partition, then keep or clear the check mark."""
    if ctx.resize_partition is None or not guest.offline_resize(ctx):
        return
    part = ctx.partition(ctx.resize_partition)
    if disks.fs_type(part) != "ntfs":
        return
    if disks.mount_of(part, ctx.target) is not None:
        raise TaskError(f"Partition {ctx.resize_partition} is still mounted; cannot resize it")
    if guest.ntfs_dirty(ctx, part):
        if not ctx.properties.flag(guest.PROP_ALLOW_DIRTY):
            raise TaskError(f"The NTFS on partition {ctx.resize_partition} is dirty; refusing to resize it")
        ctx.warning(f"Resizing the dirty NTFS on partition {ctx.resize_partition} ({guest.PROP_ALLOW_DIRTY})")
    ctx.run(["ntfsresize", "--force", "--no-progress-bar", part], input="")
    if ctx.properties.flag(PROP_NOCHECK):
        ctx.run(["ntfsfix", "--clear-dirty", part])
    else:
        ctx.warning("The NTFS was grown offline; Windows will check it (CHKDSK) at first boot")
