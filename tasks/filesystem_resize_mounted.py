"""FilesystemResizeMounted: grow the resized partition's filesystem while it is mounted.

XFS (``xfs_growfs``) and btrfs (``btrfs filesystem resize <devid>:max``)
can only grow while mounted; this task finds where MountImage mounted
RESIZE_PART and grows it there. ext2/3/4 (and swap) were already grown
unmounted. A RESIZE_PART that is not mounted (not in the image's fstab) is
left as it is, with a warning, and so is any other filesystem.

NTFS (Windows): Windows grows it itself at first boot -- the diskpart
script ``%WINDIR%\\SnfScripts\\ExtendFilesystem.txt`` that InstallUnattend
put in the specialize pass gets ``extend filesystem`` for RESIZE_PART --
unless it is grown offline after unmounting (``windows-legacy``, or the
``OFFLINE_NTFSRESIZE`` property: FilesystemResizeAfterUmount).

BSDs (no UFS growfs exists for Linux): the guest grows its own UFS at
first boot. FreeBSD: ``growfs_enable="YES"`` in ``/etc/rc.conf`` and the
``/firstboot`` sentinel its ``rc.d/growfs`` needs (root only). NetBSD:
``resize_root="YES"`` (root only). OpenBSD: a ``growfs`` of the (unmounted)
filesystem from ``/etc/rc.firsttime`` -- not for root, which OpenBSD cannot
grow while mounted. A last partition these cannot grow gets a warning.

Properties: OFFLINE_NTFSRESIZE.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from helper import detect, disks, fsutil, ufs
from helper.framework import ALL, BSD, WINDOWS, Context, Task

from . import _bsd
from ._windows import guest as windows_guest
from ._windows.scripts import EXTEND_SCRIPT, diskpart_script

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


def fstab_mountpoint(fstab: str, letter: str, duid: str) -> tuple[str, str] | None:
    """(device, mount point) of the OpenBSD fstab entry for disklabel partition ``letter`` of disk 0."""
    for line in fstab.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        device = fields[0]
        if (duid and device.lower() == f"{duid}.{letter}") or re.fullmatch(rf"/dev/r?[a-z]+0{letter}", device):
            return device, fields[1]
    return None


def arrange_bsd_growth(ctx: Context, part: Path) -> None:
    """Make the BSD guest grow the UFS of RESIZE_PART at its first boot."""
    if ufs.linux_ufstype(part) is None:
        return  # swap at the end: nothing to grow
    is_root = ctx.resize_partition == ctx.root_partition
    if ctx.osfamily == "freebsd":
        if not is_root:
            ctx.warning(f"FreeBSD grows only its root filesystem at boot; partition {ctx.resize_partition} is not")
            return
        _bsd.edit_rc_conf(ctx, {"growfs_enable": "YES"})
        if not fsutil.exists(ctx.target, "/firstboot"):
            fsutil.write_file(ctx.target, "/firstboot", b"", mode=0o644)
    elif ctx.osfamily == "netbsd":
        if not is_root:
            ctx.warning(f"NetBSD grows only its root filesystem at boot; partition {ctx.resize_partition} is not")
            return
        _bsd.edit_rc_conf(ctx, {"resize_root": "YES"})
    else:
        if is_root:
            ctx.warning("OpenBSD cannot grow its mounted root filesystem; the root partition keeps its size")
            return
        table = detect.read_table(ctx.device)
        entry = table.get(ctx.resize_partition)
        fstab = fsutil.read_optional(ctx.target, "/etc/fstab") or ""
        duid = ctx.bsd_duid
        found = fstab_mountpoint(fstab, entry.letter, duid) if entry is not None and entry.letter else None
        if found is None:
            ctx.warning(f"Partition {ctx.resize_partition} is not in the image's fstab; its filesystem was not grown")
            return
        device, mountpoint = found
        _bsd.add_firstboot(ctx, _bsd.openbsd_growfs_job(device, mountpoint))


def grow_ntfs_at_boot(ctx: Context) -> None:
    """The diskpart script the specialize pass runs, unless the NTFS grows offline after unmounting."""
    if ctx.resize_partition is None or ctx.osfamily not in WINDOWS or windows_guest.offline_resize(ctx):
        return
    win = windows_guest.image(ctx)
    windows_guest.write_bytes(ctx, f"{win.snf_dir}/{EXTEND_SCRIPT}", diskpart_script(ctx.resize_partition).encode())


def run(ctx: Context) -> None:
    """Grow an xfs or btrfs filesystem on RESIZE_PART to fill its partition."""
    if ctx.resize_partition is None:
        return
    part = ctx.partition(ctx.resize_partition)
    if ctx.osfamily in BSD:
        arrange_bsd_growth(ctx, part)
        return
    fstype = disks.fs_type(part)
    if fstype in DONE_UNMOUNTED:
        return
    if fstype == "ntfs":
        grow_ntfs_at_boot(ctx)
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
