"""FilesystemResizeUnmounted: grow the filesystem of the resized partition while it is not mounted.

Runs on the partition FixPartitionTable grew (RESIZE_PART). ext2/3/4 are
grown here: a filesystem not marked clean is refused (the image was not
shut down properly and a check could lose data silently), then ``e2fsck
-f -p`` and ``resize2fs``. XFS and btrfs grow only while mounted
(FilesystemResizeMounted); NTFS after unmounting. Anything else is left
alone with a warning.

BSDs: UFS is grown by the guest itself at first boot (there is no UFS
growfs for Linux; FilesystemResizeMounted arranges it while the image is
mounted); here a swap partition at the end (disklabel ``b``) is skipped.
"""

from __future__ import annotations

import logging
import re

from helper import disks, ufs
from helper.commands import TaskError
from helper.framework import ALL, BSD, Context, Task

TASK = Task(
    name="FilesystemResizeUnmounted",
    order=20,
    families=ALL,
    excludable=True,
    mounted=False,
    resize=True,
    cloudinit_skip=True,
    overridable=False,
)

EXT = frozenset({"ext2", "ext3", "ext4"})
MOUNTED_RESIZE = frozenset({"xfs", "btrfs"})
LATER_RESIZE = frozenset({"ntfs"})
E2FSCK_OK = 3  # e2fsck exit codes 0-3: clean, corrected, corrected (reboot advised)

log = logging.getLogger(__name__)


def ext_header(dumpe2fs_output: str) -> dict[str, str]:
    """The ``Key: value`` lines of ``dumpe2fs -h``."""
    header = {}
    for line in dumpe2fs_output.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            header[key.strip()] = value.strip()
    return header


def ext_problem(header: dict[str, str]) -> str | None:
    """Why an ext filesystem must not be touched, or None."""
    state = header.get("Filesystem state", "")
    if state != "clean":
        return f"state is {state or 'unknown'!r}"
    return None


def run(ctx: Context) -> None:
    """Grow an ext filesystem on RESIZE_PART to fill its partition."""
    if ctx.resize_partition is None:
        ctx.warning("No partition to resize")
        return
    if ctx.osfamily in BSD:
        ufs.require_kernel_support(ctx.osfamily)
    part = ctx.partition(ctx.resize_partition)
    if ctx.osfamily in BSD:
        if ufs.linux_ufstype(part) is None:
            log.info("partition %d holds no UFS (swap?): nothing to grow", ctx.resize_partition)
        else:
            log.info("UFS on partition %d is grown by the guest at first boot", ctx.resize_partition)
        return
    fstype = disks.fs_type(part)
    if fstype in EXT:
        resize_ext(ctx, part)
    elif fstype in MOUNTED_RESIZE:
        log.info("%s on %s is grown while mounted", fstype, part)
    elif fstype in LATER_RESIZE:
        log.info("%s on %s is grown after unmounting", fstype, part)
    else:
        ctx.warning(f"Don't know how to resize unmounted partition {ctx.resize_partition} ({fstype or 'unknown'})")


def resize_ext(ctx: Context, part: object) -> None:
    """Check and grow an ext2/3/4 filesystem."""
    header = ext_header(ctx.run(["dumpe2fs", "-h", part]).stdout)
    problem = ext_problem(header)
    if problem is not None:
        raise TaskError(f"Filesystem on partition {ctx.resize_partition} is not clean ({problem})")
    if re.search(r"\bneeds_recovery\b", header.get("Filesystem features", "")):
        ctx.warning(f"Filesystem on partition {ctx.resize_partition} needs journal recovery")
    fsck = ctx.run(["e2fsck", "-f", "-p", part], check=False)
    if fsck.returncode > E2FSCK_OK:
        raise TaskError(f"e2fsck failed on partition {ctx.resize_partition} (exit code {fsck.returncode})")
    ctx.run(["resize2fs", part])
