"""create end to end: a real Debian image copied onto a bigger disk and customized in the real helper VM.

Checked from outside afterwards: the partition table, the filesystem (size, clean), the progress
stream. Failures: a hanging task, an image without partition table, an unclean filesystem -- each a
clear error with nothing left behind.
"""

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import guests, helpervm
from tests.osenv import create_env, install, monitor_messages, public_key_of, task_events, task_seconds

pytestmark = pytest.mark.vm

GiB = 1 << 30
SECTOR = 512


@pytest.fixture(scope="module")
def helper_dir():
    return helpervm.ensure_helper()


@pytest.fixture
def osdef(tmp_path, helper_dir):
    definition = install(tmp_path / "inst")
    definition.configure(HELPER_DIR=str(helper_dir), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(guests.cache_dir()))
    return definition


def new_disk(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def sfdisk_json(disk: Path) -> dict:
    return json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]


def no_leftovers(disk: Path, tmpdir: Path):
    """No helper VM of this deployment still running, nothing left in the deployment's TMPDIR."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(disk) in line]
    assert not list(tmpdir.iterdir())


def test_ext4_msdos_image_fills_a_bigger_disk(osdef, tmp_path):
    image = guests.guest_image("ext4-msdos")
    disk = new_disk(tmp_path / "disk.raw", 3 * GiB)
    env = create_env("vm1.example.test", disk, OSP_IMG_ID=f"local://{image.path.name}", OSP_IMG_FORMAT="diskdump")
    result = osdef.run("create", env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]

    table = sfdisk_json(disk)
    assert table["label"] == "dos"
    (root,) = table["partitions"]
    assert root["start"] == 2048
    assert root["start"] + root["size"] == 3 * GiB // SECTOR - 2048  # grown to the end minus 2048 sectors
    fs = f"{disk}?offset={root['start'] * SECTOR}"
    check = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    info = subprocess.run(["dumpe2fs", "-h", fs], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    blocks, block_size = int(fields["Block count"]), int(fields["Block size"])
    assert blocks * block_size > root["size"] * SECTOR - 4 * 1024 * 1024  # the filesystem fills the partition

    # the instance's own SSH host keys, made on the host: not the image's, and a private key fits its public one
    for kind in ("rsa", "ecdsa", "ed25519"):
        private = guests.read_fs_file(disk, root["start"] * SECTOR, None, "ext4", f"/etc/ssh/ssh_host_{kind}_key")
        public = guests.read_fs_file(disk, root["start"] * SECTOR, None, "ext4", f"/etc/ssh/ssh_host_{kind}_key.pub")
        assert private != image.read_file(f"/etc/ssh/ssh_host_{kind}_key")
        assert public.decode().endswith(" root@vm1\n")
        assert public_key_of(private.decode(), tmp_path) == public.decode().split()[:2]

    messages = monitor_messages(result.stderr)
    events = task_events(messages)
    started = [task for kind, task in events if kind == "task-start"]
    ended = [task for kind, task in events if kind == "task-end"]
    assert started == ended and started[0] == "FixPartitionTable"
    assert started.index("UmountImage") > started.index("MountImage")
    for task in ("FilesystemResizeUnmounted", "MountImage", "FilesystemResizeMounted"):
        assert task in started
    assert messages[-1] == {
        **messages[-1],
        "type": "image-info",
        "messages": ["Image customization finished successfully."],
    }
    assert not [m for m in messages if m["type"] == "image-error"]
    stamps = {m["messages"][0]: m["timestamp"] for m in messages if m["type"] == "image-info"}
    after_copy = stamps["Starting customization VM..."] - stamps["Image copy finished."]  # the host keys' wait, if any
    took = task_seconds(messages)["DeleteSSHKeys"]
    print(f"\n[timing] ext4-msdos: DeleteSSHKeys {took:.2f}s; copy end to helper start {after_copy:.2f}s")
    no_leftovers(disk, osdef.tmpdir)


def test_xfs_gpt_image_fills_a_bigger_disk(osdef, tmp_path):
    image = guests.guest_image("xfs-gpt")
    disk = new_disk(tmp_path / "disk.raw", 4 * GiB)
    env = create_env("vm2.example.test", disk, OSP_IMG_ID=f"local://{image.path.name}", OSP_IMG_FORMAT="diskdump")
    result = osdef.run("create", env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]

    verify = subprocess.run(["sgdisk", "--verify", str(disk)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout  # backup header moved to the new end
    table = sfdisk_json(disk)
    last = max(table["partitions"], key=lambda p: p["start"])
    assert last["start"] + last["size"] == 4 * GiB // SECTOR - 2048
    root_number = image.meta["root_partition"]
    root = next(p for p in table["partitions"] if p["node"].endswith(str(root_number)))
    loop = subprocess.run(
        [
            "losetup",
            "--find",
            "--show",
            "--read-only",
            "--offset",
            str(root["start"] * SECTOR),
            "--sizelimit",
            str(root["size"] * SECTOR),
            str(disk),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        repair = subprocess.run(["xfs_repair", "-n", loop], capture_output=True, text=True)
        assert repair.returncode == 0, repair.stderr
        dblocks = subprocess.run(
            ["xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks", "-c", "p blocksize", loop],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        size = int(dblocks[2]) * int(dblocks[5])
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    if root is last:
        assert size > root["size"] * SECTOR - 16 * 1024 * 1024  # grown with xfs_growfs, mounted, in the jail
    events = task_events(monitor_messages(result.stderr))
    assert ("task-end", "FilesystemResizeMounted") in events and ("task-end", "UmountImage") in events
    no_leftovers(disk, osdef.tmpdir)


def failing_create(osdef, tmp_path, image_name, **params):
    disk = new_disk(tmp_path / "disk.raw", 3 * GiB)
    env = create_env(
        "vm3.example.test",
        disk,
        OSP_IMG_ID=f"local://{image_name}",
        OSP_IMG_FORMAT="diskdump",
        **{f"OSP_{k.upper()}": v for k, v in params.items()},
    )
    result = osdef.run("create", env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, errors
    messages = monitor_messages(result.stderr)
    assert len([m for m in messages if m["type"] == "image-error"]) == 1
    no_leftovers(disk, osdef.tmpdir)
    return errors[0]


def test_a_hanging_task_is_stopped_on_time(osdef, tmp_path):
    image = guests.guest_image("ext4-msdos")
    osdef.configure(
        HELPER_DIR=str(helpervm.ensure_helper()),
        HELPER_SOFT_TIMEOUT="45",
        HELPER_HARD_TIMEOUT="3",
        IMAGE_DIR=str(guests.cache_dir()),
    )
    hang = base64.b64encode(b"#!/bin/sh\nsleep 1000\n").decode()
    props = json.dumps({"CUSTOM_TASK": hang, "EXCLUDE_TASK_DeleteSSHKeys": "yes"})
    error = failing_create(osdef, tmp_path, image.path.name, img_properties=props)
    assert "did not finish on time" in error


def test_an_image_without_partition_table_is_a_clear_error(osdef, tmp_path):
    raw = tmp_path / "images" / "blank.img"
    raw.parent.mkdir()
    raw.write_bytes(b"\x5a" * (8 << 20))
    osdef.configure(HELPER_DIR=str(helpervm.ensure_helper()), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(raw.parent))
    error = failing_create(osdef, tmp_path, "blank.img")
    assert "partition" in error.lower(), error


def test_an_unclean_filesystem_is_refused(osdef, tmp_path):
    image = guests.guest_image("ext4-msdos")
    images = tmp_path / "images"
    images.mkdir()
    broken = images / "unclean.img"
    subprocess.run(["cp", "--sparse=always", str(image.path), str(broken)], check=True)
    offset = image.meta["partitions"][0]["start"]
    subprocess.run(["debugfs", "-w", "-R", "ssv state 2", f"{broken}?offset={offset}"], check=True, capture_output=True)
    osdef.configure(HELPER_DIR=str(helpervm.ensure_helper()), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(images))
    error = failing_create(
        osdef, tmp_path, "unclean.img", img_properties='{"OSFAMILY": "linux", "ROOT_PARTITION": "1"}'
    )
    assert "not clean" in error, error
    shutil.rmtree(images)
