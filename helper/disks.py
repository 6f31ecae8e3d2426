"""Block devices, partitions and mounts inside the jail, without udev.

The jail has devtmpfs but no udev, and the test machine has neither for
loop partitions, so everything is looked up in sysfs and, when a partition
node is missing, made with mknod from the kernel's own numbers. Mounting is
only ever done here, so that every mount has a matching unmount.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .commands import CommandError, TaskError, run_command

log = logging.getLogger(__name__)

SYS_BLOCK = Path("/sys/block")
SYS_CLASS_BLOCK = Path("/sys/class/block")
MOUNTINFO = Path("/proc/self/mountinfo")
NODE_WAIT = 5.0
FUSE_EXIT_WAIT = 60.0


def partition_path(device: Path | str, number: int) -> Path:
    """The conventional node of partition ``number``: /dev/vdb -> /dev/vdb1, /dev/loop0 -> /dev/loop0p1."""
    device = Path(device)
    sep = "p" if device.name[-1:].isdigit() else ""
    return device.with_name(f"{device.name}{sep}{number}")


def _sysfs_dev(name: str) -> tuple[int, int] | None:
    try:
        major, minor = (SYS_CLASS_BLOCK / name / "dev").read_text().strip().split(":")
    except (OSError, ValueError):
        return None
    return int(major), int(minor)


def ensure_node(path: Path, wait: float = NODE_WAIT) -> Path:
    """Make sure the block node ``path`` exists, creating it from sysfs if nobody else did.

    Waits up to ``wait`` seconds for the kernel to publish the device.
    """
    deadline = time.monotonic() + wait
    while True:
        numbers = _sysfs_dev(path.name)
        if numbers is not None:
            break
        if time.monotonic() >= deadline:
            raise TaskError(f"Device {path} does not exist")
        time.sleep(0.1)
    rdev = os.makedev(*numbers)
    try:
        st = path.lstat()
    except FileNotFoundError:
        log.info("creating device node %s (%d:%d)", path, *numbers)
        os.mknod(path, 0o600 | stat.S_IFBLK, rdev)
        return path
    if not stat.S_ISBLK(st.st_mode):
        raise TaskError(f"{path} is not a block device")
    if st.st_rdev != rdev:
        # a node left from before the partitions changed (no udev to fix it): the kernel's name wins
        log.info("replacing stale device node %s (%d:%d)", path, *numbers)
        path.unlink()
        os.mknod(path, 0o600 | stat.S_IFBLK, rdev)
    return path


def partition_device(device: Path | str, number: int) -> Path:
    """The node of partition ``number`` of ``device``, existing and checked against sysfs."""
    return ensure_node(partition_path(device, number))


def partition_numbers(device: Path | str) -> list[int]:
    """The partition numbers the kernel currently knows on ``device``."""
    name = Path(device).name
    numbers = []
    for entry in (SYS_BLOCK / name).glob(f"{name}*"):
        part = entry / "partition"
        if part.exists():
            numbers.append(int(part.read_text().strip()))
    return sorted(numbers)


def sector_size(device: Path | str) -> int:
    """The logical sector size of ``device`` in bytes (partition tables count in these)."""
    path = SYS_BLOCK / Path(device).name / "queue" / "logical_block_size"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 512


def size_bytes(device: Path | str) -> int:
    """The size of a block device (or of a regular file, for tests)."""
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)


def find_by_serial(serial: str, sys_block: Path = SYS_BLOCK, dev: Path = Path("/dev")) -> Path | None:
    """The virtio disk whose /sys/block/<name>/serial is ``serial``, or None."""
    for entry in sorted(sys_block.iterdir()):
        try:
            value = (entry / "serial").read_text().strip()
        except OSError:
            continue
        if value == serial:
            return dev / entry.name
    return None


BLKPG = 0x1269
BLKPG_ADD_PARTITION = 1
BLKPG_DEL_PARTITION = 2
BLKPG_RESIZE_PARTITION = 3
KERNEL_SECTOR = 512


class _BlkpgPartition(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_longlong),
        ("length", ctypes.c_longlong),
        ("pno", ctypes.c_int),
        ("devname", ctypes.c_char * 64),
        ("volname", ctypes.c_char * 64),
    ]


class _BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("datalen", ctypes.c_int),
        ("data", ctypes.c_void_p),
    ]


def _blkpg(fd: int, op: int, number: int, start: int = 0, length: int = 0) -> None:
    part = _BlkpgPartition(start=start, length=length, pno=number)
    data = ctypes.cast(ctypes.pointer(part), ctypes.c_void_p)
    arg = _BlkpgIoctlArg(op=op, flags=0, datalen=ctypes.sizeof(part), data=data)
    fcntl.ioctl(fd, BLKPG, arg)


def kernel_partitions(device: Path | str) -> dict[int, tuple[int, int]]:
    """Partition number -> (start, length) in bytes, as the kernel currently has them."""
    name = Path(device).name
    found = {}
    for entry in (SYS_BLOCK / name).glob(f"{name}*"):
        try:
            number = int((entry / "partition").read_text())
            start = int((entry / "start").read_text())
            size = int((entry / "size").read_text())
        except (OSError, ValueError):
            continue
        found[number] = (start * KERNEL_SECTOR, size * KERNEL_SECTOR)
    return found


def sync_partitions(device: Path | str, wanted: dict[int, tuple[int, int, bool]]) -> None:
    """Make the kernel's partitions of ``device`` match ``wanted`` (number -> start, length in bytes, extended).

    With BLKPG, one partition at a time, as libparted and partx do: it works
    while other partitions of the disk are in use, and where BLKRRPART does
    nothing (loop devices on some kernels). The kernel shows an extended
    partition as 1 KiB, so only its start is compared.
    """
    current = kernel_partitions(device)
    fd = os.open(device, os.O_RDONLY)
    try:
        for number, (start, _length) in sorted(current.items()):
            if number not in wanted or wanted[number][0] != start:
                log.info("%s: removing partition %d from the kernel", device, number)
                _blkpg(fd, BLKPG_DEL_PARTITION, number)
                del current[number]
        for number, (start, length, extended) in sorted(wanted.items()):
            if extended:
                length = min(length, 1024)
            if number not in current:
                log.info("%s: adding partition %d to the kernel", device, number)
                _blkpg(fd, BLKPG_ADD_PARTITION, number, start, length)
            elif current[number][1] != length and not extended:
                log.info("%s: resizing partition %d in the kernel", device, number)
                _blkpg(fd, BLKPG_RESIZE_PARTITION, number, start, length)
    except OSError as exc:
        raise TaskError(f"Unable to update the kernel's partitions of {device}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def probe(device: Path | str) -> dict[str, str]:
    """What blkid knows of ``device`` (TYPE, UUID, LABEL, ...); empty when nothing is recognised."""
    proc = run_command(["blkid", "-p", "-o", "export", device], check=False)
    # blkid -p: low-level probe, no cache; exit 2 means nothing found
    info = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value
    return info


def fs_type(device: Path | str) -> str:
    """The filesystem type on ``device`` as blkid names it (ext4, xfs, btrfs, ntfs, swap, ...) or ''."""
    return probe(device).get("TYPE", "")


# --- mounts ---------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    mountpoint: Path
    source: str
    fstype: str
    dev: tuple[int, int]


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text (fields escaped as \\040 etc.), in mount order."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        major, minor = fields[2].split(":")
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                mountpoint=Path(_unescape(fields[4])),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
                dev=(int(major), int(minor)),
            )
        )
    return mounts


def mounts() -> list[Mount]:
    """The current mounts of this process's namespace."""
    return parse_mountinfo(MOUNTINFO.read_text())


def mounts_under(root: Path) -> list[Mount]:
    """Mounts at or below ``root``, in mount order."""
    root = Path(os.path.realpath(root))
    return [m for m in mounts() if m.mountpoint == root or root in m.mountpoint.parents]


def mount(device: Path | str, mountpoint: Path, *, fstype: str | None = None, options: str = "rw") -> None:
    """Mount ``device`` on ``mountpoint`` (the only place the jail mounts anything)."""
    argv: list[str | os.PathLike[str]] = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    argv += ["-o", options, device, mountpoint]
    run_command(argv)


def umount_all(root: Path) -> None:
    """Unmount everything at or below ``root``, innermost first; lazily as a last resort.

    A FUSE filesystem (ntfs-3g) is only written out when its daemon exits,
    which happens after umount returns: wait for it, so that nothing (a
    resize, the power-off) comes before its last writes.
    """
    for m in reversed(mounts_under(root)):
        try:
            run_command(["umount", m.mountpoint])
        except CommandError as exc:
            log.warning("umount %s failed (%s); detaching it lazily", m.mountpoint, exc)
            run_command(["umount", "-l", m.mountpoint], check=False)
        if m.fstype.startswith("fuse") and m.source.startswith("/"):
            wait_for_daemon(m.source)


def _processes_using(source: str) -> list[int]:
    """PIDs whose command line names ``source`` (a FUSE daemon serving it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(source) in args:
            found.append(int(entry.name))
    return found


def wait_for_daemon(source: str, timeout: float = FUSE_EXIT_WAIT) -> None:
    """Wait until no FUSE daemon serves ``source`` any more."""
    deadline = time.monotonic() + timeout
    while _processes_using(source):
        if time.monotonic() >= deadline:
            log.warning("the FUSE daemon of %s is still running after %.0f s", source, timeout)
            return
        time.sleep(0.1)


def mount_of(device: Path | str, root: Path) -> Mount | None:
    """The mount under ``root`` whose source is block device ``device``, or None."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return None
    for m in mounts_under(root):
        try:
            if m.source.startswith("/") and os.stat(m.source).st_rdev == rdev:
                return m
        except OSError:
            continue
    return None


@contextlib.contextmanager
def mounted(device: Path | str, *, fstype: str | None = None, options: str = "ro") -> Iterator[Path]:
    """Mount ``device`` on a fresh temporary directory for the duration of a with-block."""
    mountpoint = Path(tempfile.mkdtemp(prefix="snf-mnt-"))
    try:
        mount(device, mountpoint, fstype=fstype, options=options)
        try:
            yield mountpoint
        finally:
            umount_all(mountpoint)
    finally:
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
