"""The disk tasks on real loop devices: grown image files with real tables and filesystems.

This runs jail code on the host, acceptable only because the images are
the test's own. Each test builds a small image, makes the file larger (a
bigger instance disk), runs the helper's ``run()`` on it, and checks the
result from outside with sfdisk, dumpe2fs, xfs_info, btrfs and fsck.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helper import disks, framework, fsutil, runner
from helper.commands import TaskError
from helper.framework import Context, LoadedTask, Task
from snf_image.contract.rules import RulesDisk
from tests.fakeguest import make_rules
from tests.loopdev import attach, grow, make_image, mounted, sh

MiB = 1024 * 1024
DISK_TASKS = [
    "FixPartitionTable",
    "FilesystemResizeUnmounted",
    "MountImage",
    "FilesystemResizeMounted",
    "RecordMounts",
    "UmountImage",
]


SEEN_MOUNTS: list[str] = []


def _record_mounts(ctx: Context) -> None:
    """A test task between the mounted tasks: what is mounted where, as the guest sees it."""
    SEEN_MOUNTS[:] = [fsutil.guest_path(ctx.target, m.mountpoint) for m in disks.mounts_under(ctx.target)]


def deploy(device: Path, properties: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """Run the helper on ``device``; returns the progress lines (each valid helper_line)."""
    stream = io.StringIO()
    target = tmp_path / "target"
    target.mkdir()
    size = int(sh("blockdev", "--getsize64", device))
    disk_tasks = [t for t in framework.discover() if t.name in DISK_TASKS]
    tasks = [*disk_tasks, LoadedTask(Task(name="RecordMounts", order=60), _record_mounts)]
    tasks.sort(key=lambda t: (t.task.order, t.name))
    SEEN_MOUNTS.clear()
    try:
        rules = make_rules(
            instance_name="test.example.org", properties=properties, disks=(RulesDisk(index=0, size_bytes=size),)
        )
        runner.run(rules, [device], runner.ProgressReporter(stream), target=target, tasks=tasks)
    finally:
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        print("\n".join(json.dumps(line) for line in lines))
        assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(target) in m]
    return lines


def table(device: Path) -> dict[str, Any]:
    return json.loads(sh("sfdisk", "--json", device))["partitiontable"]


def sectors(device: Path) -> int:
    return int(sh("blockdev", "--getsz", device))


def ext_size(part: Path) -> int:
    header = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in sh("dumpe2fs", "-h", part).splitlines())
    )
    return int(header["Block count"]) * int(header["Block size"])


def part_bytes(tab: dict[str, Any], number: int) -> int:
    entry = next(p for p in tab["partitions"] if p["node"].endswith(f"p{number}"))
    return entry["size"] * tab.get("sectorsize", 512)


def write_root(root_part: Path, fstab: str, dirs: tuple[str, ...]) -> None:
    with mounted(root_part) as root:
        (root / "etc").mkdir()
        (root / "etc" / "fstab").write_text(fstab)
        for d in dirs:
            (root / d).mkdir(parents=True)


def uuid_of(part: Path) -> str:
    return sh("blkid", "-p", "-o", "value", "-s", "UUID", part).strip()


def fsck_clean(part: Path) -> None:
    subprocess.run(["sync"], check=True)
    sh("e2fsck", "-f", "-n", part)


def test_msdos_logical_ext4_with_swap(tmp_path: Path) -> None:
    image = tmp_path / "msdos.img"
    make_image(image, 200, "label: dos\n,64MiB,83\n,,5\n,,83\n")
    with attach(image) as loop:
        sh("mkfs.ext4", "-q", "-L", "root", loop.part(1))
        sh("mkfs.ext4", "-q", loop.part(5))
        fstab = (
            f"# test fstab\nUUID={uuid_of(loop.part(1))} / ext4 errors=remount-ro 0 1\n"
            f"UUID={uuid_of(loop.part(5))} /srv ext4 defaults 0 2\n"
            "proc /proc proc defaults 0 0\n/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n"
        )
        write_root(loop.part(1), fstab, ("srv",))
    grow(image, 400)
    with attach(image) as loop:
        lines = deploy(loop.path, {"SWAP": "6:32"}, tmp_path)
        assert [ln["task"] for ln in lines if ln["subtype"] == "task-start"] == DISK_TASKS
        assert [ln["task"] for ln in lines if ln["subtype"] == "task-end"] == DISK_TASKS
        warnings = [m for ln in lines if ln["subtype"] == "warning" for m in ln["messages"]]
        assert "Detected OSFAMILY: linux" in warnings
        assert "Detected ROOT_PARTITION: 1" in warnings

        tab = table(loop.path)
        total = sectors(loop.path)
        by_num = {int(p["node"].rsplit("p", 1)[1]): p for p in tab["partitions"]}
        assert sorted(by_num) == [1, 2, 5, 6]
        assert by_num[2]["start"] + by_num[2]["size"] - 1 == total - 2049  # extended reaches the limit
        swap = by_num[6]
        assert swap["type"] == "82" and swap["size"] == 32 * 2048
        assert swap["start"] + swap["size"] - 1 == total - 2049
        assert by_num[5]["start"] + by_num[5]["size"] - 1 == swap["start"] - 2048 - 1
        assert ext_size(loop.part(5)) == part_bytes(tab, 5)  # grown to fill the partition
        assert ext_size(loop.part(5)) > 250 * MiB
        assert SEEN_MOUNTS == ["/", "/srv"]
        fsck_clean(loop.part(1))
        fsck_clean(loop.part(5))
        assert loop.cleanup() == []  # nothing left mounted by the helper


def test_gpt_xfs_backup_header_and_swap(tmp_path: Path) -> None:
    image = tmp_path / "gpt.img"
    make_image(image, 420, "label: gpt\n,64MiB,L\n,,L\n")
    with attach(image) as loop:
        sh("mkfs.ext4", "-q", loop.part(1))
        sh("mkfs.xfs", "-q", "-L", "data", loop.part(2))
        fstab = f"UUID={uuid_of(loop.part(1))} / ext4 defaults 0 1\nLABEL=data /data xfs defaults 0 0\n"
        write_root(loop.part(1), fstab, ("data",))
    grow(image, 800)
    with attach(image) as loop:
        deploy(loop.path, {"OSFAMILY": "linux", "ROOT_PARTITION": "1", "SWAP": "3:16"}, tmp_path)
        tab = table(loop.path)
        total = sectors(loop.path)
        with open(loop.path, "rb") as disk:  # the backup header moved to the end
            disk.seek((total - 1) * 512)
            assert disk.read(8) == b"EFI PART"
        sh("sgdisk", "--verify", loop.path)
        by_num = {int(p["node"].rsplit("p", 1)[1]): p for p in tab["partitions"]}
        swap = by_num[3]
        assert swap["type"] == "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"
        assert swap["start"] + swap["size"] - 1 == total - 2049 and swap["size"] == 16 * 2048
        assert by_num[2]["start"] + by_num[2]["size"] == swap["start"]
        info = sh("xfs_info", loop.part(2))
        bsize, blocks = (int(x) for x in re.search(r"data\s+=\s+bsize=(\d+)\s+blocks=(\d+)", info).groups())
        assert bsize * blocks > 700 * MiB
        assert part_bytes(tab, 2) - bsize * blocks < 4 * MiB
        sh("xfs_repair", "-n", loop.part(2))
        assert SEEN_MOUNTS == ["/", "/data"]
        fsck_clean(loop.part(1))


def test_msdos_btrfs_grows_mounted(tmp_path: Path) -> None:
    image = tmp_path / "btrfs.img"
    make_image(image, 400, "label: dos\n,64MiB,83\n,,83\n")
    with attach(image) as loop:
        sh("mkfs.ext4", "-q", loop.part(1))
        sh("mkfs.btrfs", "-q", loop.part(2))
        write_root(loop.part(1), f"UUID={uuid_of(loop.part(2))} /home btrfs defaults 0 0\n", ("home",))
    grow(image, 700)
    with attach(image) as loop:
        deploy(loop.path, {}, tmp_path)
        tab = table(loop.path)
        super_block = sh("btrfs", "inspect-internal", "dump-super", loop.part(2))
        total_bytes = int(re.search(r"^total_bytes\s+(\d+)", super_block, re.M).group(1))
        assert part_bytes(tab, 2) - total_bytes < MiB
        assert total_bytes > 600 * MiB
        assert SEEN_MOUNTS == ["/", "/home"]


def test_unclean_ext4_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "dirty.img"
    make_image(image, 100, "label: dos\n,,83\n")
    with attach(image) as loop:
        sh("mkfs.ext4", "-q", loop.part(1))
        write_root(loop.part(1), "", ())
        sh("debugfs", "-w", "-R", "ssv state 0", loop.part(1))
    grow(image, 150)
    with attach(image) as loop, pytest.raises(TaskError, match="is not clean"):
        deploy(loop.path, {"OSFAMILY": "linux", "ROOT_PARTITION": "1"}, tmp_path)


def test_non_persistent_fstab_fails_and_unmounts(tmp_path: Path) -> None:
    image = tmp_path / "sda.img"
    make_image(image, 100, "label: dos\n,40MiB,83\n,,83\n")
    with attach(image) as loop:
        sh("mkfs.ext4", "-q", loop.part(1))
        sh("mkfs.ext4", "-q", loop.part(2))
        write_root(loop.part(1), "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 /srv ext4 defaults 0 2\n", ("srv",))
    with attach(image) as loop:
        with pytest.raises(TaskError, match="non-persistent block device name: /dev/sda2"):
            deploy(loop.path, {"EXCLUDE_TASK_FIXPARTITIONTABLE": "yes"}, tmp_path)
        assert loop.cleanup() == []
