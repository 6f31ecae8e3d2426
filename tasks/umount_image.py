"""UmountImage: unmount everything MountImage mounted, innermost first.

Also done by the runner after a failure, so no task leaves a mount behind.
"""

from __future__ import annotations

from helper import disks
from helper.framework import ALL, Context, Task

TASK = Task(
    name="UmountImage",
    order=80,
    families=ALL,
    excludable=False,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=False,
    structural=True,
)


def run(ctx: Context) -> None:
    """Unmount the target and everything below it."""
    disks.umount_all(ctx.target)
