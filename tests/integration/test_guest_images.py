"""Build each kind of real guest image (or take it from the cache) and check its structure from outside.

Needs root (debootstrap, chroot, loop mounts) and Debian's archive; the first run
builds the base (~2 min) and each kind (~0.5-2 min), later runs read the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time

import pytest

from tests import guests

KINDS = list(guests.KINDS)
PARTITIONED = [name for name, spec in guests.KINDS.items() if spec.table]


@pytest.fixture(scope="module", params=KINDS)
def image(request: pytest.FixtureRequest) -> guests.GuestImage:
    return guests.guest_image(request.param)


@pytest.fixture(scope="module", params=PARTITIONED)
def partitioned_image(request: pytest.FixtureRequest) -> guests.GuestImage:
    return guests.guest_image(request.param)


def _sfdisk_json(path) -> dict:
    out = subprocess.run(
        [guests._tool("sfdisk"), "--json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)["partitiontable"]


def _blkid(path, offset: int) -> dict[str, str]:
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "--offset", str(offset), str(path)], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_metadata_matches_the_file(image: guests.GuestImage) -> None:
    meta = image.meta
    assert image.metadata_path.exists()
    assert meta["kind"] in guests.KINDS
    assert image.path.stat().st_size == meta["virtual_size"] <= 1536 * guests.MiB
    # sparse: far less allocated than its size
    assert guests.disk_usage(image.path) < meta["virtual_size"]
    h = hashlib.sha256()
    with open(image.path, "rb") as fh:
        while chunk := fh.read(8 * guests.MiB):
            h.update(chunk)
    assert h.hexdigest() == meta["sha256"]
    for key in (
        "partition_table",
        "partitions",
        "root_partition",
        "fs_type",
        "fs_uuids",
        "kernel",
        "initrd",
        "kernel_file",
        "initrd_file",
        "kernel_cmdline",
        "packages",
        "build_seconds",
        "built_at",
        "cache_key",
        "ssh_host_keys",
        "machine_id",
    ):
        assert key in meta, key
    assert meta["cache_key"] == guests.cache_key(meta["kind"])
    assert f"root=UUID={image.root_uuid}" in meta["kernel_cmdline"]


def test_partition_table(partitioned_image: guests.GuestImage) -> None:
    image = partitioned_image
    meta = image.meta
    table = _sfdisk_json(image.path)
    assert table["label"] == {"msdos": "dos", "gpt": "gpt"}[meta["partition_table"]]
    got = [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]
    assert got == [(p["start"], p["size"]) for p in meta["partitions"]]
    if meta["partition_table"] == "gpt":
        with open(image.path, "rb") as fh:
            fh.seek(meta["virtual_size"] - 512)
            assert fh.read(8) == b"EFI PART", "backup GPT header at the end of the disk"
        assert table["partitions"][meta["root_partition"] - 1]["type"] == guests.GPT_ROOT_X86_64
    else:
        assert table["partitions"][0]["start"] == 2048


def test_filesystems_have_the_recorded_types_and_uuids(image: guests.GuestImage) -> None:
    meta = image.meta
    parts = meta["partitions"] or [{"start": 0, "fs_type": meta["fs_type"], "mountpoint": "/"}]
    for p in parts:
        info = _blkid(image.path, p["start"])
        assert info["TYPE"] == p["fs_type"]
        assert info["UUID"] == meta["fs_uuids"][p["mountpoint"]]
    root = next(p for p in parts if p["mountpoint"] == "/")
    assert root["fs_type"] == meta["fs_type"]


def test_fstab_names_filesystems_by_uuid(image: guests.GuestImage) -> None:
    fstab = image.read_file("/etc/fstab").decode()
    entries = {f[1]: f[0] for f in (line.split() for line in fstab.splitlines()) if f and not f[0].startswith("#")}
    assert entries == {mp: f"UUID={u}" for mp, u in image.meta["fs_uuids"].items()}


def test_identity_files(image: guests.GuestImage) -> None:
    assert image.read_file("/etc/hostname").decode() == guests.HOSTNAME + "\n"
    assert re.search(rf"^127\.0\.1\.1\s+{guests.HOSTNAME}$", image.read_file("/etc/hosts").decode(), re.M)
    assert image.read_file("/etc/machine-id").decode().strip() == image.meta["machine_id"]
    root = next(line for line in image.read_file("/etc/shadow").decode().splitlines() if line.startswith("root:"))
    assert root.split(":")[1].startswith(("!", "*")), "root password locked"
    assert image.meta["ssh_host_keys"]
    for key in image.meta["ssh_host_keys"]:
        assert image.exists(key), key


def test_kernel_and_initrd_are_in_the_guest_and_beside_the_image(image: guests.GuestImage) -> None:
    meta = image.meta
    assert re.fullmatch(r"/boot/vmlinuz-.*-cloud-amd64", meta["kernel"])
    assert meta["initrd"] == meta["kernel"].replace("vmlinuz", "initrd.img")
    assert image.read_file(meta["kernel"]) == image.kernel_file.read_bytes()
    assert image.initrd_file.stat().st_size > 1_000_000
    assert not image.exists("/etc/systemd/system/serial-getty@.service")  # not masked
    assert "linux-image-cloud-amd64" in meta["packages"]


def test_network_configuration(image: guests.GuestImage) -> None:
    style = image.meta["network"]
    if style == "networkd":
        assert not image.exists("/etc/network/interfaces")
        assert "renderer: networkd" in image.read_file("/etc/netplan/50-snf-guest.yaml").decode()
        assert image.exists("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        assert "netplan.io" in image.meta["packages"]
        assert "ifupdown" not in image.meta["packages"]
        return
    if style == "systemd-networkd":
        assert not image.exists("/etc/network/interfaces") and not image.exists("/etc/netplan")
        assert "DHCP=yes" in image.read_file("/etc/systemd/network/50-snf-guest.network").decode()
        assert image.exists("/etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
        assert "netplan.io" not in image.meta["packages"] and "ifupdown" not in image.meta["packages"]
        return
    interfaces = image.read_file("/etc/network/interfaces").decode()
    assert "iface lo inet loopback" in interfaces
    if style == "ifupdown":
        assert "iface eth0 inet dhcp" in interfaces
    else:
        assert "eth0" not in interfaces
    if style == "nm":
        assert image.exists("/usr/sbin/NetworkManager")
        assert "network-manager" in image.meta["packages"]
    if style == "cloudinit":
        assert image.exists("/usr/bin/cloud-init")
        assert "cloud-init" in image.meta["packages"]


def test_xfs_gpt_boot_partition_holds_the_kernel() -> None:
    image = guests.guest_image("xfs-gpt")
    boot = image.meta["partitions"][0]
    assert boot["mountpoint"] == "/boot"
    kernel = image.meta["kernel"].removeprefix("/boot")
    assert guests.fs_path_exists(image.path, boot["start"], boot["size"], "ext4", kernel)
    assert "xfsprogs" in image.meta["packages"]


def test_extdump_is_the_ext4_msdos_root() -> None:
    ext = guests.guest_image("extdump")
    disk = guests.guest_image("ext4-msdos")
    part = disk.meta["partitions"][0]
    assert ext.meta["virtual_size"] == part["size"]
    assert ext.root_uuid == disk.root_uuid
    with open(ext.path, "rb") as a, open(disk.path, "rb") as b:
        b.seek(part["start"])
        for _ in range(4):  # superblock and the first block groups
            assert a.read(guests.MiB) == b.read(guests.MiB)


def test_sample_image_is_a_whole_disk() -> None:
    sample = guests.sample_image()
    assert sample.meta["partition_table"] is not None
    assert sample.kind == guests.SAMPLE_KIND


@pytest.mark.vm
@pytest.mark.parametrize("kind", ["ext4-msdos", "xfs-gpt"])
def test_guest_boots_to_a_serial_login(kind: str, tmp_path) -> None:
    """The guest's own kernel and initrd boot its root (by fstab UUIDs) to a ttyS0 getty under TCG."""
    image = guests.guest_image(kind)
    console = tmp_path / "console.log"
    argv = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-machine",
        "accel=tcg",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel_file),
        "-initrd",
        str(image.initrd_file),
        "-append",
        image.meta["kernel_cmdline"] + " panic=-1",
        "-drive",
        f"file={image.path},format=raw,if=virtio,snapshot=on",
        "-serial",
        f"file:{console}",
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = console.read_text(errors="replace") if console.exists() else ""
            if re.search(rf"{guests.HOSTNAME} login:", text):
                break
            time.sleep(1)
        assert re.search(rf"{guests.HOSTNAME} login:", text), text[-3000:]
        plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
        assert "emergency mode" not in plain.lower()
        assert "fsck not present" not in plain
        if kind == "xfs-gpt":
            assert re.search(r"Mounted boot\.mount", plain), "the /boot partition is mounted by its fstab UUID"
    finally:
        proc.kill()
        proc.wait()
