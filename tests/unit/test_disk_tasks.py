"""Pure parts of the disk tasks and helpers: partition plans, fstab, mountinfo, in-root paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from helper import disks
from helper.commands import TaskError
from tasks import filesystem_resize_mounted, filesystem_resize_unmounted, mount_image
from tasks._swap import swap_partition
from tasks.fix_partition_table import Part, plan

MIB = 2048  # sectors
LENGTH = 1000 * MIB
LIMIT = LENGTH - 2049


def test_swap_partition() -> None:
    assert swap_partition("") is None
    assert swap_partition("b") is None
    assert swap_partition("2:512") == (2, 512)
    for bad in ("0:5", "2:", "2:0", "x:1", "bb", "2:5:1"):
        with pytest.raises(TaskError, match="Invalid SWAP"):
            swap_partition(bad)


def test_plan_grows_last_primary() -> None:
    parts = [Part(1, "primary", 2048, 100 * MIB), Part(2, "primary", 100 * MIB + 1, 200 * MIB)]
    assert plan("msdos", LENGTH, 512, parts, None).grow == {2: LIMIT}


def test_plan_by_position_not_number() -> None:
    parts = [Part(1, "primary", 500 * MIB, 600 * MIB), Part(2, "primary", 2048, 100 * MIB)]
    assert plan("msdos", LENGTH, 512, parts, None).grow == {1: LIMIT}


def test_plan_never_shrinks() -> None:
    parts = [Part(1, "primary", 2048, LENGTH - 40)]
    the_plan = plan("gpt", LENGTH, 512, parts, None)
    assert the_plan.grow == {} and the_plan.create == []


def test_plan_extended_and_logical() -> None:
    parts = [
        Part(1, "primary", 2048, 100 * MIB),
        Part(2, "extended", 100 * MIB + 1, 200 * MIB),
        Part(5, "logical", 101 * MIB, 200 * MIB),
    ]
    assert plan("msdos", LENGTH, 512, parts, None).grow == {5: LIMIT, 2: LIMIT}


def test_plan_swap_logical_in_existing_extended() -> None:
    parts = [
        Part(1, "primary", 2048, 100 * MIB),
        Part(2, "extended", 100 * MIB + 1, 200 * MIB),
        Part(5, "logical", 101 * MIB, 200 * MIB),
    ]
    the_plan = plan("msdos", LENGTH, 512, parts, (6, 64))
    swap_start = LIMIT + 1 - 64 * MIB
    assert the_plan.create == [Part(6, "logical", swap_start, LIMIT)]
    assert the_plan.grow == {5: swap_start - MIB - 1, 2: LIMIT}


def test_plan_swap_logical_creates_extended() -> None:
    parts = [Part(1, "primary", 2048, 100 * MIB)]
    the_plan = plan("msdos", LENGTH, 512, parts, (5, 64))
    swap_start = LIMIT + 1 - 64 * MIB
    assert the_plan.create == [Part(2, "extended", swap_start - MIB, LIMIT), Part(5, "logical", swap_start, LIMIT)]
    assert the_plan.grow == {1: swap_start - MIB - 1}


def test_plan_swap_primary_and_gpt() -> None:
    parts = [Part(1, "primary", 2048, 100 * MIB)]
    swap_start = LIMIT + 1 - 32 * MIB
    for label in ("msdos", "gpt"):
        the_plan = plan(label, LENGTH, 512, parts, (2, 32))
        assert the_plan.create == [Part(2, "primary", swap_start, LIMIT)]
        assert the_plan.grow == {1: swap_start - 1}


@pytest.mark.parametrize(
    ("label", "swap", "message"),
    [
        ("msdos", (3, 32), "would be number 2"),
        ("msdos", (6, 32), "would be number 5"),
        ("gpt", (1, 32), "already exists"),
        ("gpt", (3, 32), "would be number 2"),
        ("msdos", (2, 2000), "Not enough space"),
    ],
)
def test_plan_swap_errors(label: str, swap: tuple[int, int], message: str) -> None:
    parts = [Part(1, "primary", 2048, 100 * MIB)]
    with pytest.raises(TaskError, match=message):
        plan(label, LENGTH, 512, parts, swap)


def test_plan_no_partitions() -> None:
    with pytest.raises(TaskError, match="no partitions"):
        plan("msdos", LENGTH, 512, [], None)


FSTAB = """\
# /etc/fstab: static file system information.
UUID=1111 /               ext4    errors=remount-ro 0       1
UUID=2222 /home           xfs     defaults          0       2
LABEL=var /var            ext4    defaults          0       2
LABEL=my\\040data /srv/my\\040data ext4 defaults 0 2
UUID=3333 none            swap    sw                0       0
proc      /proc           proc    defaults          0       0
tmpfs     /tmp            tmpfs   defaults          0       0
/dev/sr0  /media/cdrom0   udf,iso9660 user,noauto   0       0
/dev/fd0  /media/floppy   auto    rw,user,noauto    0       0
UUID=4444 /backup         ext4    noauto            0       0
UUID=5555 /z              zfs     defaults          0       0
server:/x /nfs            nfs     defaults          0       0
"""


def test_fstab_entries_to_mount() -> None:
    entries = mount_image.to_mount(mount_image.parse_fstab(FSTAB))
    assert [(e.device, e.mountpoint) for e in entries] == [
        ("UUID=2222", "/home"),
        ("LABEL=my data", "/srv/my data"),
        ("LABEL=var", "/var"),
    ]


def test_fstab_never_mounts_over_the_root() -> None:
    """The root spelt otherwise ("/.", "//", "/./") is skipped as "/" is."""
    fstab = "UUID=1 /. ext4 rw 0 2\nUUID=2 // ext4 rw 0 2\nUUID=3 /./ ext4 rw 0 2\nUUID=4 /proc ext4 rw 0 2\n"
    assert [e.mountpoint for e in mount_image.to_mount(mount_image.parse_fstab(fstab))] == ["/proc"]


def test_fstab_non_persistent_name_is_an_error() -> None:
    with pytest.raises(TaskError, match="non-persistent block device name: /dev/vda2"):
        mount_image.to_mount(mount_image.parse_fstab("/dev/vda1 / ext4 defaults 0 1\n/dev/vda2 /home ext4 rw 0 2\n"))


def test_ext_header_state() -> None:
    header = filesystem_resize_unmounted.ext_header("Filesystem state:         not clean\nBlock count: 5\n")
    assert header == {"Filesystem state": "not clean", "Block count": "5"}
    assert filesystem_resize_unmounted.ext_problem(header) == "state is 'not clean'"
    assert filesystem_resize_unmounted.ext_problem({"Filesystem state": "clean"}) is None


def test_btrfs_devid() -> None:
    show = (
        "Label: none  uuid: 5e0c\n\tTotal devices 2 FS bytes used 144.00KiB\n"
        "\tdevid    1 size 335.00MiB used 16.00MiB path /dev/vdb2\n"
        "\tdevid    2 size 1.00GiB used 0.00B path /dev/vdc\n"
    )
    assert filesystem_resize_mounted.btrfs_devid(show, Path("/dev/vdc")) == "2"
    assert filesystem_resize_mounted.btrfs_devid(show, Path("/dev/vdb2")) == "1"
    assert filesystem_resize_mounted.btrfs_devid(show, Path("/dev/vdd")) is None


def test_partition_path() -> None:
    assert disks.partition_path("/dev/vdb", 1) == Path("/dev/vdb1")
    assert disks.partition_path("/dev/loop3", 5) == Path("/dev/loop3p5")
    assert disks.partition_path("/dev/nvme0n1", 2) == Path("/dev/nvme0n1p2")


def test_parse_mountinfo() -> None:
    text = (
        "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext4 /dev/vdb1 rw,errors=continue\n"
        "37 36 0:45 / /mnt/a\\040b/home rw shared:2 - btrfs /dev/vdb2 rw\n"
    )
    mounts = disks.parse_mountinfo(text)
    assert [(m.mountpoint, m.fstype, m.source, m.dev) for m in mounts] == [
        (Path("/mnt/a b"), "ext4", "/dev/vdb1", (98, 0)),
        (Path("/mnt/a b/home"), "btrfs", "/dev/vdb2", (0, 45)),
    ]
