"""Partition tables, filesystems and fstabs that lie: the helper VM parses and mounts them, the host never does.

Partition tables are patched byte by byte after sfdisk made a sane one; filesystems are built with
``mke2fs -d`` and broken with ``debugfs -w`` or a byte patch; fstabs are written into the tree.
The image's own properties (which the image's author sets) are part of the attack where they let
it reach further (``EXCLUDE_TASK_FilesystemResizeUnmounted`` keeps e2fsck from repairing a damage
before the tasks meet it).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from tests.hostile import guest
from tests.hostile.case import Case, tasks_did_their_work
from tests.hostile.guest import SECTOR, Disk, MiB, Tree
from tests.hostile.lab import Deployment, Lab

#: The image's properties that skip the unmounted resize, and e2fsck -p with it.
NO_FSCK = {"EXCLUDE_TASK_FilesystemResizeUnmounted": "yes"}
MBR_ENTRY = 446
GPT_CRC, GPT_ENTRIES_LBA, GPT_COUNT = 16, 72, 80


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def mbr_entry(bootable: int, kind: int, start: int, size: int) -> bytes:
    return struct.pack("<B3sB3sII", bootable, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", start, size)


def image_id(disk: Disk) -> str:
    return f"local://{disk.path.name}"


# --- partition tables --------------------------------------------------------------------------------


def mbr_past_end(lab: Lab) -> Deployment:
    """The root partition's entry claims 1 TiB on a 40 MiB image (64 MiB disk)."""
    disk = lab.linux_image()
    patch(disk.path, MBR_ENTRY, mbr_entry(0x80, 0x83, 2048, 1 << 31))
    return Deployment(image_id(disk))


def mbr_overlap(lab: Lab) -> Deployment:
    """A second Linux partition covering the root partition's sectors, shifted by one MiB."""
    disk = lab.linux_image()
    patch(disk.path, MBR_ENTRY + 16, mbr_entry(0, 0x83, 4096, 60000))
    return Deployment(image_id(disk))


def ebr_loop(lab: Lab) -> Deployment:
    """An extended partition whose second EBR links to itself: a loop of logical partitions."""
    disk = lab.linux_image(second=second_fs(lab))
    extended_start = (guest.IMAGE_SIZE - 8 * MiB) // SECTOR
    patch(disk.path, MBR_ENTRY + 16, mbr_entry(0, 0x05, extended_start, 8 * MiB // SECTOR))
    first, second = extended_start * SECTOR, (extended_start + 4096) * SECTOR
    patch(disk.path, first + MBR_ENTRY, mbr_entry(0, 0x83, 2048, 2048) + mbr_entry(0, 0x05, 4096, 2048))
    patch(disk.path, second + MBR_ENTRY, mbr_entry(0, 0x83, 2048, 1024) + mbr_entry(0, 0x05, 4096, 2048))
    for ebr in (first, second):
        patch(disk.path, ebr + 510, b"\x55\xaa")
    return Deployment(image_id(disk))


def gpt_disk(lab: Lab) -> Disk:
    return lab.linux_image(table="gpt")


def gpt_bad_crcs(lab: Lab) -> Deployment:
    """Both GPT headers' CRCs are wrong: the kernel sees only the protective MBR's one partition."""
    disk = gpt_disk(lab)
    size = disk.path.stat().st_size
    for header in (SECTOR, size - SECTOR):
        patch(disk.path, header + GPT_CRC, b"\xde\xad\xbe\xef")
    return Deployment(image_id(disk))


def gpt_absurd_count(lab: Lab) -> Deployment:
    """The primary GPT header declares 2^32 - 1 entries (its CRC made right)."""
    disk = gpt_disk(lab)
    patch(disk.path, SECTOR + GPT_COUNT, struct.pack("<I", 0xFFFFFFFF))
    _fix_header_crc(disk.path, SECTOR)
    return Deployment(image_id(disk))


def gpt_entries_past_end(lab: Lab) -> Deployment:
    """The primary GPT header puts its entries 512 TiB into the disk (its CRC made right)."""
    disk = gpt_disk(lab)
    patch(disk.path, SECTOR + GPT_ENTRIES_LBA, struct.pack("<Q", 1 << 40))
    _fix_header_crc(disk.path, SECTOR)
    return Deployment(image_id(disk))


def _fix_header_crc(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        header = bytearray(f.read(92))
        header[GPT_CRC : GPT_CRC + 4] = bytes(4)
        f.seek(offset + GPT_CRC)
        f.write(struct.pack("<I", zlib.crc32(header)))


def no_table(lab: Lab) -> Deployment:
    (lab.image_dir / "zeros.img").write_bytes(bytes(4 * MiB))
    return Deployment("local://zeros.img")


# --- filesystems -----------------------------------------------------------------------------------


def bad_superblock(lab: Lab) -> Deployment:
    """The root ext4's superblock claims a block size of 2^30 KiB (its magic intact)."""
    disk = lab.linux_image()
    patch(disk.path, disk.offset + 1024 + 24, struct.pack("<I", 20))  # s_log_block_size
    return Deployment(image_id(disk), properties={"OSFAMILY": "linux", "ROOT_PARTITION": "1"})


def dirty_journal(lab: Lab) -> Deployment:
    """The root ext4 says its journal needs a replay (and e2fsck would be skipped too)."""
    disk = lab.linux_image()
    guest.debugfs_write(disk, "feature needs_recovery", "ssv state 0")
    return Deployment(image_id(disk))


def directory_loop(lab: Lab) -> Deployment:
    """/etc/ssh/loop and /etc/NetworkManager/system-connections/up are hard links to directories above them."""

    def edit(t: Tree) -> None:
        (t.root / "etc/NetworkManager/system-connections").mkdir(parents=True)

    disk = lab.linux_image(edit)
    guest.debugfs_write(disk, "link /etc /etc/ssh/loop", "link / /etc/NetworkManager/system-connections/up")
    return Deployment(image_id(disk), properties={**NO_FSCK, "NM_NETWORKING": "yes"})


def corrupt_file(lab: Lab) -> Deployment:
    """/etc/hosts's extent tree is garbage: reading it fails in the kernel (EUCLEAN)."""
    disk = lab.linux_image()
    guest.debugfs_write(disk, "sif /etc/hosts block[0] 0x12345678", "sif /etc/hosts block[1] 0x9abcdef0")
    return Deployment(image_id(disk), properties=NO_FSCK)


def huge(path: str):
    def make(lab: Lab) -> Deployment:
        def edit(t: Tree) -> None:
            t.sparse(path, 2 << 30, t.text(path))

        return Deployment(image_id(lab.linux_image(edit)))

    return make


def no_free_inodes(lab: Lab) -> Deployment:
    """A root ext4 with no inode to spare, on a disk that gives it no room to grow."""
    options = ("-N", "64")
    disk = lab.linux_image(name="probe.img", mke2fs=options)
    info = guest.sh("dumpe2fs", "-h", f"{disk.path}?offset={disk.offset}")
    free = int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("Free inodes:")))
    disk.path.unlink()

    def fill(t: Tree) -> None:
        for i in range(free):
            t.write(f"var/filler/{i}", "")
        t.path("var/filler/0").unlink()  # the directory took one

    disk = lab.linux_image(fill, mke2fs=options)
    return Deployment(image_id(disk), disk_size=guest.IMAGE_SIZE)


# --- fstab -----------------------------------------------------------------------------------------


def second_fs(lab: Lab, *dirs: str) -> Tree:
    tree = Tree(lab.work / "second")
    for directory in dirs:
        (tree.root / directory).mkdir(parents=True, exist_ok=True)
    tree.root.mkdir(exist_ok=True)
    return tree


def fstab_hundreds(lab: Lab) -> Deployment:
    """500 fstab lines: junk, and 40 entries mounting the second partition inside itself, ever deeper."""
    second = second_fs(lab, "n")
    depth = 40
    options = "suid,dev,exec,X-mount.mkdir=0777"  # ignored: the helper mounts rw, whatever fstab asks
    entries = [f"UUID={second.fs_uuid} /mnt{'/n' * level} ext4 {options} 0 2" for level in range(1, depth + 1)]
    junk = [f"# {i}\n garbage line {i}\tx" for i in range(230)]

    def edit(t: Tree) -> None:
        (t.root / "mnt/n").mkdir(parents=True)
        t.write("etc/fstab", "\n".join([t.text("etc/fstab").strip(), *junk, *entries]) + "\n")

    disk = lab.linux_image(edit, second=second)
    return Deployment(image_id(disk))


def fstab_helper_devices(lab: Lab) -> Deployment:
    """fstab mounts the helper's devices: its root disk, its result port, the rules disk by serial."""
    lines = [
        "/dev/vda /mnt ext4 defaults 0 0",
        "/dev/ttyS1 /mnt/tty none bind 0 0",
        "/dev/disk/by-id/virtio-snf-rules /mnt/rules ext4 defaults 0 0",
    ]

    def edit(t: Tree) -> None:
        t.write("etc/fstab", t.text("etc/fstab") + "\n".join(lines) + "\n")

    return Deployment(image_id(lab.linux_image(edit)))


def fstab_over_root(lab: Lab) -> Deployment:
    """fstab mounts the second partition over the root itself (spelt /.) and over /proc."""
    second = second_fs(lab, "x")

    def edit(t: Tree) -> None:
        t.write("etc/fstab", t.text("etc/fstab") + f"UUID={second.fs_uuid} /. ext4 defaults 0 2\n"
                f"UUID={second.fs_uuid} /proc ext4 defaults 0 2\n")  # fmt: skip

    return Deployment(image_id(lab.linux_image(edit, second=second)))


def fstab_through_link(lab: Lab) -> Deployment:
    """fstab mounts the second partition at /boot, a symlink to /etc: the tasks' files would land in it."""
    second = second_fs(lab)

    def edit(t: Tree) -> None:
        t.link("boot", "/etc")
        t.write("etc/fstab", t.text("etc/fstab") + f"UUID={second.fs_uuid} /boot ext4 defaults 0 2\n")

    return Deployment(image_id(lab.linux_image(edit, second=second)))


def fstab_foreign_uuid(lab: Lab) -> Deployment:
    """fstab names a filesystem by a UUID no partition of the instance has (the helper's own disks have theirs)."""

    def edit(t: Tree) -> None:
        t.write("etc/fstab", t.text("etc/fstab") + "UUID=00000000-1111-2222-3333-444444444444 /srv ext4 rw 0 2\n")

    return Deployment(image_id(lab.linux_image(edit)))


def hundreds_harmless(lab: Lab) -> None:
    tasks_did_their_work(lab)


CASES = [
    Case("tbl-mbr-past-end", "MBR root entry claiming 1 TiB on a 64 MiB disk", mbr_past_end, "partition"),
    Case("tbl-mbr-overlap", "a second MBR partition overlapping the root", mbr_overlap, "partition|overlap"),
    Case("tbl-ebr-loop", "extended partition whose EBR chain links to itself", ebr_loop,
         harmless=hundreds_harmless),
    Case("tbl-gpt-bad-crcs", "GPT with both header CRCs wrong", gpt_bad_crcs, "GPT|partition"),
    Case("tbl-gpt-absurd-count", "GPT header declaring 2^32-1 entries", gpt_absurd_count, "GPT header"),
    Case("tbl-gpt-entries-past-end", "GPT entries 512 TiB into the disk", gpt_entries_past_end, "GPT|partition"),
    Case("tbl-none", "zeros: no partition table at all", no_table, "No partition table"),
    Case("fs-bad-superblock", "root ext4 superblock with an absurd block size", bad_superblock,
         "partition 1|superblock|mount"),
    Case("fs-dirty-journal", "root ext4 whose journal needs a replay", dirty_journal, "clean|journal|recovery"),
    Case("fs-directory-loop", "directory hard links making loops in /etc/ssh and NM's connections (fsck skipped)",
         directory_loop, harmless=hundreds_harmless),
    Case("fs-corrupt-file", "/etc/hosts with a garbage extent tree (fsck skipped)", corrupt_file, "/etc/hosts"),
    Case("fs-huge-fstab", "a 2 GiB (sparse) /etc/fstab", huge("/etc/fstab"), "/etc/fstab.*larger than"),
    Case("fs-huge-passwd", "a 2 GiB (sparse) /etc/passwd", huge("/etc/passwd"), "/etc/passwd.*larger than"),
    Case("fs-huge-hosts", "a 2 GiB (sparse) /etc/hosts", huge("/etc/hosts"), "/etc/hosts.*larger than"),
    Case("fs-no-free-inodes", "root ext4 with no inode to spare and no room to grow", no_free_inodes,
         "No space left|inode"),
    Case("fstab-hundreds", "500 fstab lines, 40 mounting a partition inside itself ever deeper", fstab_hundreds,
         harmless=hundreds_harmless),
    Case("fstab-helper-devices", "fstab mounting the helper's root disk, result port and rules disk",
         fstab_helper_devices, "non-persistent block device name: /dev/vda"),
    Case("fstab-over-root", "fstab mounting a partition over the root (/.) and /proc", fstab_over_root,
         harmless=hundreds_harmless),
    Case("fstab-through-link", "fstab mount point /boot -> /etc", fstab_through_link, "/boot is a symbolic link"),
    Case("fstab-foreign-uuid", "fstab naming a filesystem on no instance disk", fstab_foreign_uuid,
         "does not match any partition"),
]  # fmt: skip
