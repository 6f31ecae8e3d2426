"""Which UFS a partition holds, from its superblock: what Linux's ``ufstype=`` mount option needs.

Linux cannot guess: ``ufstype`` is mandatory and a wrong one fails or, worse,
mounts garbage. The superblock says it: UFS1 (FreeBSD's old default, NetBSD's
FFSv1, OpenBSD's FFS) has magic 0x011954 at 8 KiB; UFS2 (FreeBSD, NetBSD
FFSv2, OpenBSD FFS2) 0x19540119 at 64 KiB. The magic sits 1372 bytes into
the superblock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from .commands import TaskError

UFS1_SBLOCK = 8192
UFS2_SBLOCK = 65536
MAGIC_OFFSET = 1372
UFS1_MAGIC = 0x011954
UFS2_MAGIC = 0x19540119
#: Linux's names for them (fs/ufs: ufstype=44bsd reads UFS1 the way the BSDs write it).
LINUX_TYPES = {"ufs1": "44bsd", "ufs2": "ufs2"}


def ufs_version(read: Callable[[int, int], bytes]) -> str | None:
    """ "ufs2", "ufs1" or None, from ``read(offset, length)`` of the partition."""
    for version, offset, magic in (("ufs2", UFS2_SBLOCK, UFS2_MAGIC), ("ufs1", UFS1_SBLOCK, UFS1_MAGIC)):
        raw = read(offset + MAGIC_OFFSET, 4)
        if len(raw) == 4 and struct.unpack("<I", raw)[0] == magic:
            return version
    return None


def device_version(device: Path | str) -> str | None:
    """ "ufs2", "ufs1" or None for the partition ``device``."""
    with open(device, "rb") as f:

        def read(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        return ufs_version(read)


def linux_ufstype(device: Path | str) -> str | None:
    """The ``ufstype=`` for ``device`` (44bsd or ufs2), or None if it holds no UFS."""
    version = device_version(device)
    return LINUX_TYPES[version] if version else None


PROC_FILESYSTEMS = Path("/proc/filesystems")


def require_kernel_support(family: str, proc_filesystems: Path = PROC_FILESYSTEMS) -> None:
    """Fail with the fix when the helper's kernel has no UFS at all (Debian's cloud kernel).

    Such a kernel also ignores BSD disklabels, so without this check the first
    symptom would be a missing /dev/vdX5. (A kernel with read-only UFS is caught
    when MountImage mounts read-write.)
    """
    try:
        names = {line.split()[-1] for line in proc_filesystems.read_text().splitlines() if line.strip()}
    except OSError:
        return
    if "ufs" not in names:
        raise TaskError(
            f"This helper's kernel has no UFS support, which {family} images need: "
            "rebuild the helper with 'snf-image helper build --kernel custom'"
        )
