"""The copy pipeline on real files: sparse and exact, containers decoded, formats checked, qcow2 guarded."""

import gzip
import hashlib
import lzma
import os
import subprocess
from pathlib import Path

import parted
import pytest
import zstandard

from snf_image import deploy
from snf_image.copy import HashingStream, verify_checksum
from snf_image.errors import ImageError
from snf_image.progress import Progress
from snf_image.sources.local import LocalStream
from snf_image.targets import open_target

MiB = 1024 * 1024


def make_disk_image(path: Path, size: int, data_at: tuple[int, ...] = (10,)) -> bytes:
    """A sparse msdos-partitioned image with random MiBs at the given offsets (in MiB)."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["parted", "-s", str(path), "mklabel", "msdos", "mkpart", "primary", "1MiB", "100%"], check=True)
    with open(path, "r+b") as f:
        for mib in data_at:
            f.seek(mib * MiB)
            f.write(os.urandom(MiB))
    return path.read_bytes()


def old_data_disk(path: Path, size: int) -> None:
    """A disk full of old data, as on a reinstall."""
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(b"\xa5" * MiB)


def run_copy(image: Path, disk: Path, img_format: str = "diskdump", checksum: str | None = None) -> list[dict]:
    seen: list[dict] = []
    with open_target(str(disk)) as target, LocalStream(image) as raw:
        stream = HashingStream(raw, checksum.split(":")[0]) if checksum else raw
        outcome = deploy.write_image(stream, target, img_format, Progress(listener=seen.append))
        if checksum:
            verify_checksum(stream, checksum)
    seen.append({"type": "outcome", "implied": dict(outcome.implied_properties)})
    return seen


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_diskdump_over_old_data_is_exact_and_sparse(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 64 * MiB, data_at=(3, 40))
    old_data_disk(disk, 96 * MiB)
    seen = run_copy(image, disk)
    got = disk.read_bytes()
    assert got[: len(content)] == content
    assert got[len(content) :] == b"\xa5" * (32 * MiB)  # beyond the image: untouched
    assert allocated(disk) < 32 * MiB + 8 * MiB  # zero runs became holes, not written zeros
    assert os.path.getsize(disk) == 96 * MiB  # never truncated
    progress = [m for m in seen if m["type"] == "image-copy-progress"]
    assert progress[-1]["position"] == progress[-1]["total"] == 64 * MiB
    assert progress[-1]["progress"] == 100.0


@pytest.mark.parametrize("codec", ["gzip", "xz", "zstd"])
def test_compressed_images_are_decoded_in_the_stream(tmp_path, codec):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 16 * MiB)
    packed = tmp_path / f"image.{codec}"
    encode = {"gzip": gzip.compress, "xz": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}[codec]
    packed.write_bytes(encode(content))
    old_data_disk(disk, 32 * MiB)
    run_copy(packed, disk)
    assert disk.read_bytes()[: len(content)] == content


def test_truncated_compressed_image_is_a_clear_error(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 16 * MiB)
    packed = tmp_path / "image.xz"
    packed.write_bytes(lzma.compress(content)[:-1000])
    old_data_disk(disk, 32 * MiB)
    with pytest.raises(ImageError, match="xz-compressed image is corrupt or truncated"):
        run_copy(packed, disk)


def test_extdump_gets_a_bootable_partition_one(tmp_path):
    fs, disk = tmp_path / "root.ext4", tmp_path / "disk.raw"
    with open(fs, "wb") as f:
        f.truncate(20 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    old_data_disk(disk, 48 * MiB)
    seen = run_copy(fs, disk, "extdump")
    assert seen[-1]["implied"] == {"OSFAMILY": "linux", "ROOT_PARTITION": "1"}
    table = parted.newDisk(parted.getDevice(str(disk)))
    (part,) = table.partitions
    assert table.type == "msdos" and part.number == 1 and part.getFlag(parted.PARTITION_BOOT)
    assert part.geometry.start == 2048 and part.geometry.length == 20 * MiB // 512
    assert disk.read_bytes()[MiB : 21 * MiB] == fs.read_bytes()
    assert disk.read_bytes()[:440] == Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()


@pytest.mark.parametrize(
    ("declared", "make", "message"),
    [
        ("diskdump", "ext4", "is an ext2/3/4 filesystem, not a whole disk; use img_format=extdump"),
        ("extdump", "disk", "img_format is extdump but the image is not an ext2/3/4 filesystem"),
        ("ntfsdump", "ext4", "img_format is ntfsdump but the image is an ext2/3/4 filesystem"),
    ],
)
def test_declared_format_must_match_the_bytes(tmp_path, declared, make, message):
    image, disk = tmp_path / "image", tmp_path / "disk.raw"
    if make == "ext4":
        with open(image, "wb") as f:
            f.truncate(8 * MiB)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    else:
        make_disk_image(image, 8 * MiB)
    old_data_disk(disk, 16 * MiB)
    before = disk.read_bytes()
    with pytest.raises(ImageError, match=message):
        run_copy(image, disk, declared)
    assert disk.read_bytes() == before  # refused before anything was written


def test_image_larger_than_disk_is_refused_before_writing(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    make_disk_image(image, 32 * MiB)
    old_data_disk(disk, 16 * MiB)
    before = disk.read_bytes()
    with pytest.raises(ImageError, match="larger than the disk"):
        run_copy(image, disk)
    assert disk.read_bytes() == before


def test_checksum_is_verified_while_streaming(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 16 * MiB, data_at=(2, 9))
    old_data_disk(disk, 16 * MiB)
    good = "sha256:" + hashlib.sha256(content).hexdigest()
    run_copy(image, disk, checksum=good)
    with pytest.raises(ImageError, match="image checksum mismatch: expected sha256:0000"):
        run_copy(image, disk, checksum="sha256:" + "0" * 64)
    run_copy(image, disk, checksum="md5:" + hashlib.md5(content).hexdigest().upper())


def test_qcow2_is_converted_with_an_explicit_format(tmp_path):
    raw, image, disk = tmp_path / "image.raw", tmp_path / "image.qcow2", tmp_path / "disk.raw"
    content = make_disk_image(raw, 16 * MiB, data_at=(1, 7))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    old_data_disk(disk, 32 * MiB)
    run_copy(image, disk)
    got = disk.read_bytes()
    assert got[: len(content)] == content and got[len(content) :] == b"\xa5" * (16 * MiB)


@pytest.mark.parametrize("attack", ["backing", "data-file"])
def test_hostile_qcow2_is_refused_before_qemu_opens_it(tmp_path, attack):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"SECRET" * 100000)
    image, disk = tmp_path / "evil.qcow2", tmp_path / "disk.raw"
    if attack == "backing":
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(image), "1M"]
    else:
        cmd = [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={secret},data_file_raw=on",
            str(image),
            "1M",
        ]
    subprocess.run(cmd, check=True)
    old_data_disk(disk, 16 * MiB)
    with pytest.raises(ImageError, match=r"refusing a qcow2 image with (a backing file|an external data file)"):
        run_copy(image, disk)
    assert b"SECRET" not in disk.read_bytes()


@pytest.mark.parametrize(("fmt", "name"), [("vmdk", "VMDK"), ("vdi", "VDI"), ("vpc", "VHD")])
def test_other_containers_are_refused_by_name(tmp_path, fmt, name):
    image, disk = tmp_path / "image", tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image), "8M"], check=True)
    old_data_disk(disk, 16 * MiB)
    with pytest.raises(ImageError, match=name):
        run_copy(image, disk)
