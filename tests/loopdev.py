"""Loop devices with partition nodes for tests, always cleaned up.

This machine has no udev, and its kernel neither creates the partitions
on ``losetup -P`` nor the /dev nodes for them: ``partx -u`` makes the
kernel partitions (BLKPG) and we mknod their nodes from sysfs. On exit
everything goes: mounts of the device or its partitions, the partition
nodes, the loop device.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SYS_BLOCK = Path("/sys/block")


def sh(*argv: str | os.PathLike[str], input: str | None = None) -> str:
    """Run a test-side command; its failure fails the test with the command's stderr."""
    proc = subprocess.run([os.fspath(a) for a in argv], input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class LoopDevice:
    """An attached loop device; ``part(n)`` is the node of partition n."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    def part(self, number: int) -> Path:
        self.refresh()
        node = Path(f"/dev/{self.name}p{number}")
        if not node.exists():
            raise AssertionError(f"{node} does not exist after refresh")
        return node

    def refresh(self) -> None:
        """Sync the kernel's partitions with the table and make their nodes."""
        # partx -u stops at the first gap in the numbering (msdos 1, 2, 5); -a adds the rest
        subprocess.run(["partx", "-u", self.path], capture_output=True, check=False)
        subprocess.run(["partx", "-a", self.path], capture_output=True, check=False)
        self._remove_nodes()
        for entry in (SYS_BLOCK / self.name).glob(f"{self.name}p*"):
            major, minor = (entry / "dev").read_text().strip().split(":")
            os.mknod(f"/dev/{entry.name}", 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))

    def _remove_nodes(self) -> None:
        for node in Path("/dev").glob(f"{self.name}p*"):
            with contextlib.suppress(OSError):
                node.unlink()

    def mounts(self) -> list[str]:
        """Mount points of this device or its partitions, innermost first."""
        found = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                source = fields[sep + 2] if len(fields) > sep + 2 else ""
                if source == str(self.path) or source.startswith(f"/dev/{self.name}p"):
                    found.append(fields[4].replace("\\040", " "))
        return list(reversed(found))

    def cleanup(self) -> list[str]:
        """Unmount, remove nodes, detach; returns what it had to unmount (a test may assert it is empty)."""
        leftovers = self.mounts()
        for mountpoint in leftovers:
            if subprocess.run(["umount", mountpoint], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
        self._remove_nodes()
        subprocess.run(["losetup", "-d", self.path], capture_output=True, check=False)
        return leftovers


@contextlib.contextmanager
def attach(image: Path) -> Iterator[LoopDevice]:
    """Attach ``image`` as a loop device with partition nodes; detach it whatever happens."""
    path = Path(sh("losetup", "--find", "--show", "--partscan", image).strip())
    loop = LoopDevice(path)
    try:
        loop.refresh()
        yield loop
    finally:
        loop.cleanup()


@contextlib.contextmanager
def mounted(device: Path) -> Iterator[Path]:
    """Mount ``device`` on a temporary directory (test-side image preparation only)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="snf-test-mnt-"))
    try:
        sh("mount", device, mountpoint)
        try:
            yield mountpoint
        finally:
            if subprocess.run(["umount", mountpoint], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


def make_image(path: Path, size_mib: int, sfdisk_script: str) -> None:
    """A sparse image file of ``size_mib`` MiB with the partition table ``sfdisk_script``."""
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    sh("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path, input=sfdisk_script)


def grow(path: Path, size_mib: int) -> None:
    """Make the image file larger, as a bigger instance disk would be."""
    with open(path, "r+b") as f:
        f.truncate(size_mib * 1024 * 1024)
