"""The 1 MiB MBR prefix that turns a bare filesystem dump into a whole disk.

``extdump``/``ntfsdump`` images get it so that the filesystem lands in partition 1 (sector 2048,
bootable, type 0x83/0x07); FixPartitionTable grows the partition in the jail.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..contract.constants import FORMAT_EXTDUMP, FORMAT_NTFSDUMP
from ..errors import ImageError

SECTOR = 512
PREFIX_SECTORS = 2048
PREFIX_BYTES = PREFIX_SECTORS * SECTOR
MBR_BOOT_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")


def mbr_prefix(img_format: str, fs_size: int | None, disk_size: int) -> bytes:
    """The 1 MiB that puts a bare filesystem into a bootable partition 1 at sector 2048.

    The partition ends where the filesystem ends (rounded up to a sector), or
    2048 sectors before the disk end when the size is not known in advance
    (a compressed dump); FixPartitionTable grows it in the jail either way.
    """
    # libparted runs dmidecode through popen(3) when it loads: only now, once the entry point has
    # taken the OS parameters (the secrets) out of our environment (lifecycle.forget_parameters)
    import parted

    fs_type = {FORMAT_EXTDUMP: "ext2", FORMAT_NTFSDUMP: "ntfs"}[img_format]
    disk_sectors = disk_size // SECTOR
    length = disk_sectors - 2 * PREFIX_SECTORS if fs_size is None else -(-fs_size // SECTOR)
    if length <= 0 or PREFIX_SECTORS + length > disk_sectors:
        raise ImageError("the image is larger than the disk")
    with tempfile.NamedTemporaryFile(prefix="snf-image-mbr-") as scratch:
        os.ftruncate(scratch.fileno(), (PREFIX_SECTORS + length) * SECTOR)
        device = parted.getDevice(scratch.name)
        disk = parted.freshDisk(device, "msdos")
        geometry = parted.Geometry(device=device, start=PREFIX_SECTORS, length=length)
        partition = parted.Partition(
            disk=disk,
            type=parted.PARTITION_NORMAL,
            fs=parted.FileSystem(type=fs_type, geometry=geometry),
            geometry=geometry,
        )
        disk.addPartition(partition, constraint=parted.Constraint(exactGeom=geometry))
        partition.setFlag(parted.PARTITION_BOOT)
        disk.commitToDevice()
        scratch.seek(0)
        prefix = bytearray(scratch.read(PREFIX_BYTES))
    if MBR_BOOT_CODE.is_file():
        code = MBR_BOOT_CODE.read_bytes()[:440]
        prefix[: len(code)] = code
    return bytes(prefix)
