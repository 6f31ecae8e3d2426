"""MountImage: mount the image's root filesystem and the filesystems its /etc/fstab lists.

The root partition (ROOT_PARTITION) is mounted read-write at the target; it
must contain ``/etc``. Then every ``/etc/fstab`` entry naming its device by
``UUID=`` or ``LABEL=`` is mounted below the target, sorted by mount point:
``/``, swap, ``none``, proc, tmpfs, ``noauto`` entries and floppy/cdrom
entries are skipped, as are filesystem types the jail does not handle.
A device given by a kernel name (``/dev/sda2``) is an error: the name
depends on the hypervisor, so the image would not boot reliably anyway.
UUIDs and labels are looked up on the instance's own disks only; a btrfs
entry keeps its ``subvol=``/``subvolid=`` option.

BSDs: the root must be UFS; it is mounted with the ``ufstype`` its
superblock shows (``ufs2`` or ``44bsd``), read-write -- which needs the
helper's own kernel (``snf-image helper build --kernel custom``): Debian's
mounts UFS read-only. fstab entries of type ``ufs`` (FreeBSD) or ``ffs``
(OpenBSD, NetBSD) are mounted too: FreeBSD devices ``/dev/<disk>0p<N>`` are
GPT partition N; OpenBSD/NetBSD devices ``/dev/<disk>0<letter>`` and DUIDs
``<duid>.<letter>`` (matching the image's disklabel) are the disklabel's
partition ``<letter>``, mapped to the kernel's partition number through the
label (:mod:`helper.disklabel`). Labels (``/dev/gpt/...``, ``/dev/ufs/...``)
and other disks' entries are skipped with a warning.

Windows: the NTFS root is mounted read-write with lowntfs-3g (``windows_names``:
no name Windows could not open is created); names are looked up without
case by the Windows tasks themselves. A dirty NTFS (Windows not shut down
cleanly, or a check scheduled) or an unclean journal (hibernation, Fast
Startup) is refused unless the ``ALLOW_DIRTY_NTFS`` property says
otherwise: editing it could lose what Windows still had to write. Only
the root volume is mounted.

Properties: ALLOW_DIRTY_NTFS.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helper import detect, disks, fsutil, ufs
from helper.commands import CommandError, TaskError
from helper.framework import BSD, WINDOWS, Context, Task

from ._windows import guest as windows_guest

LINUX_FSTYPES = frozenset({"auto", "ext2", "ext3", "ext4", "msdos", "vfat", "ntfs", "btrfs", "xfs"})
SKIP_FSTYPES = frozenset({"swap", "none", "proc", "tmpfs", "sysfs", "devpts", "nfs", "nfs4", "cifs"})
BTRFS_OPTIONS = ("subvol=", "subvolid=")
# No ignore_case: it lists every name in lower case, so a replaced file would lose the
# image's spelling; the Windows tasks match names without case themselves.
NTFS_MOUNT_OPTIONS = "rw,windows_names"
BSD_FSTYPES = {"freebsd": frozenset({"ufs"}), "openbsd": frozenset({"ffs"}), "netbsd": frozenset({"ffs", "ufs"})}
FREEBSD_GPT_DEVICE = re.compile(r"^/dev/[a-z]+0p([0-9]+)$")
BSD_LABEL_DEVICE = re.compile(r"^/dev/r?[a-z]+([0-9]+)([a-p])$")
DUID_DEVICE = re.compile(r"^([0-9a-f]{16})\.([a-p])$")

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
        if e.mountpoint in ("none", "swap") or not e.mountpoint.startswith("/"):
            continue
        if not os.path.normpath(e.mountpoint).strip("/"):
            continue  # the root, however spelt ("/", "/.", "//"): never mounted over
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


def bsd_to_mount(
    entries: list[FstabEntry], family: str, letters: dict[str, int], duid: str
) -> tuple[list[tuple[FstabEntry, int]], list[str]]:
    """(entry, partition number) of the BSD fstab entries to mount, sorted by mount point; and warnings.

    ``letters`` maps disklabel letters to the kernel's partition numbers
    (Open/NetBSD); ``duid`` is the label's DUID (OpenBSD, else empty).
    """
    chosen: list[tuple[FstabEntry, int]] = []
    problems: list[str] = []
    for e in entries:
        if e.mountpoint == "/" or not e.mountpoint.startswith("/") or "noauto" in e.options or "sw" in e.options:
            continue
        if e.fstype not in BSD_FSTYPES[family]:
            log.info("fstab: skipping %s (%s)", e.mountpoint, e.fstype)
            continue
        number = None
        if family == "freebsd":
            m = FREEBSD_GPT_DEVICE.match(e.device)
            number = int(m.group(1)) if m else None
        else:
            m = DUID_DEVICE.match(e.device.lower())
            letter = None
            if m and m.group(1) == duid:
                letter = m.group(2)
            elif (m2 := BSD_LABEL_DEVICE.match(e.device)) and m2.group(1) == "0":
                letter = m2.group(2)
            number = letters.get(letter) if letter else None
        if number is None:
            problems.append(f"fstab: not mounting {e.mountpoint}: {e.device} is not a partition of the image's disk")
            continue
        chosen.append((e, number))
    return sorted(chosen, key=lambda c: os.path.normpath(c[0].mountpoint)), problems


def mount_ufs(ctx: Context, device: Path, mountpoint: Path) -> None:
    """Mount a UFS read-write with the ufstype its superblock shows."""
    ufstype = ufs.linux_ufstype(device)
    if ufstype is None:
        raise TaskError(f"For {ctx.osfamily} images only UFS root partitions are supported.")
    try:
        disks.mount(device, mountpoint, fstype="ufs", options=f"ufstype={ufstype},rw")
    except CommandError as exc:
        raise TaskError(
            f"Unable to mount the {ctx.osfamily} UFS ({ufstype}) read-write: the helper's kernel must write UFS "
            f"(snf-image helper build --kernel custom): {exc}"
        ) from exc


def mount_bsd(ctx: Context) -> None:
    """Mount a BSD root and its fstab's UFS filesystems from the image's disk."""
    ufs.require_kernel_support(ctx.osfamily)
    root = ctx.partition(ctx.root_partition)
    ctx.target.mkdir(parents=True, exist_ok=True)
    mount_ufs(ctx, root, ctx.target)
    if not fsutil.is_dir(ctx.target, "/etc"):
        raise TaskError("`/etc' is missing from the root partition; is ROOT_PARTITION right?")
    if not fsutil.resolve(ctx.target, "/etc/fstab").is_file():
        ctx.warning("The image has no /etc/fstab")
        return
    table = detect.read_table(ctx.device)
    letters = {p.letter: p.number for p in table.partitions if p.kind == "bsd"}
    duid = ""
    root_part = table.get(ctx.root_partition)
    if root_part is not None and root_part.kind == "bsd":
        slice_ = table.get(root_part.parent)
        with open(ctx.device, "rb") as f:

            def read(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            label = detect.read_label(read, table.sector_size, slice_) if slice_ else None
        duid = label.duid if label is not None else ""
    ctx.bsd_duid = duid  # FilesystemResizeMounted names OpenBSD devices by it
    entries = parse_fstab(fsutil.read_text(ctx.target, "/etc/fstab"))
    chosen, problems = bsd_to_mount(entries, ctx.osfamily, letters, duid)
    for message in problems:
        ctx.warning(message)
    for entry, number in chosen:
        if number == ctx.root_partition:
            continue
        mountpoint = fsutil.directory(ctx.target, entry.mountpoint)
        if not mountpoint.is_dir():
            raise TaskError(f"fstab mount point {entry.mountpoint} is not a directory in the image")
        mount_ufs(ctx, ctx.partition(number), mountpoint)


def mount_linux(ctx: Context) -> None:
    """Mount root, check /etc, mount the fstab filesystems."""
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
        mountpoint = fsutil.directory(ctx.target, entry.mountpoint)
        if not mountpoint.is_dir():
            raise TaskError(f"fstab mount point {entry.mountpoint} is not a directory in the image")
        options = ["rw"]
        if entry.fstype == "btrfs":
            options += [o for o in entry.options if o.startswith(BTRFS_OPTIONS)]
        fstype = None if entry.fstype == "auto" else entry.fstype
        disks.mount(device, mountpoint, fstype=fstype, options=",".join(options))


def mount_windows(ctx: Context) -> None:
    """The NTFS root with lowntfs-3g; a dirty NTFS or an unclean journal refused unless ALLOW_DIRTY_NTFS."""
    part = ctx.partition(ctx.root_partition)
    fstype = disks.fs_type(part)
    if fstype != "ntfs":
        raise TaskError(f"The Windows root partition {ctx.root_partition} holds {fstype or 'no filesystem'}, not NTFS")
    allow_dirty = windows_guest.PROP_ALLOW_DIRTY
    allow = ctx.properties.flag(allow_dirty)
    if windows_guest.ntfs_dirty(ctx, part):
        if not allow:
            raise TaskError(
                f"The NTFS on partition {ctx.root_partition} is dirty (Windows was not shut down cleanly or a check "
                f"is scheduled): boot the image and shut it down cleanly, or set the {allow_dirty} property"
            )
        ctx.warning(f"The NTFS on partition {ctx.root_partition} is dirty; mounting it anyway ({allow_dirty})")
    if not Path("/dev/fuse").exists():
        ctx.run(["modprobe", "fuse"], check=False)
    ctx.target.mkdir(parents=True, exist_ok=True)
    try:
        disks.mount(part, ctx.target, fstype="lowntfs-3g", options=NTFS_MOUNT_OPTIONS + ",norecover")
    except TaskError as exc:
        if not allow:
            raise TaskError(
                f"Cannot mount the NTFS on partition {ctx.root_partition} without replaying its journal "
                f"(hibernated, or Fast Startup on?): {exc}; set {allow_dirty} to mount it anyway"
            ) from exc
        ctx.warning(f"Mounting partition {ctx.root_partition} with journal recovery ({allow_dirty}): {exc}")
        disks.mount(part, ctx.target, fstype="lowntfs-3g", options=NTFS_MOUNT_OPTIONS)
    windows_guest.image(ctx)  # fail early on an image without Windows or hives


FAMILY_HANDLERS: dict[str, Callable[[Context], None]] = {
    "linux": mount_linux,
    **dict.fromkeys(BSD, mount_bsd),
    **dict.fromkeys(WINDOWS, mount_windows),
}

TASK = Task(
    name="MountImage",
    order=30,
    families=frozenset(FAMILY_HANDLERS),
    excludable=False,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=False,
    structural=True,
)


def run(ctx: Context) -> None:
    """Mount the image the way its OS family needs."""
    FAMILY_HANDLERS[ctx.osfamily](ctx)
