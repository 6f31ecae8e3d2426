"""The copy pipeline on real files: sparse and exact, compression decoded with bounded memory, formats checked."""

import gzip
import hashlib
import lzma
import os
import struct
import subprocess
import zlib
from pathlib import Path

import parted
import pytest
import zstandard

from snf_image.copy import BUFFER_SIZE
from snf_image.errors import ImageError
from snf_image.formats.sniff import SNIFF_BYTES
from snf_image.sources.local import LocalStream
from tests.copyrun import MiB, make_disk_image, old_data_disk, run_copy


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


def test_holes_are_skipped_not_read_as_zeros(tmp_path):
    """Holes that begin inside a buffer are skipped too: only the image's data is read.

    (And the head the format is sniffed from, zeros included.)
    """
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 64 * MiB, data_at=(3, 40))  # data: the table, then 1 MiB at 3 and at 40
    data = sum(length for _, length in data_extents(image))
    old_data_disk(disk, 64 * MiB)
    reads: list[int] = []

    class Counting(LocalStream):
        def __init__(self, inner: LocalStream) -> None:
            super().__init__(inner.local_path)
            inner.close()

        def readinto(self, buffer: memoryview) -> int:
            n = super().readinto(buffer)
            reads.append(n)
            return n

    run_copy(image, disk, wrap=Counting)
    assert disk.read_bytes() == content
    assert sum(reads) <= data + SNIFF_BYTES < 4 * MiB


def test_the_copy_leaves_the_page_cache_to_the_node(tmp_path):
    """Write-behind: once copied, at most a few buffers of the image stay in the node's page cache."""
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    with open(image, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(MiB))
    with open(disk, "wb") as f:
        f.truncate(96 * MiB)
    run_copy(image, disk)
    cached = int(subprocess.run(["fincore", "-bno", "RES", str(disk)], capture_output=True, check=True).stdout)
    assert cached <= 3 * BUFFER_SIZE < 64 * MiB
    assert disk.read_bytes()[: 64 * MiB] == image.read_bytes()


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each data run of a sparse file, as SEEK_DATA/SEEK_HOLE see them."""
    extents = []
    with open(path, "rb") as f:
        size, position = os.fstat(f.fileno()).st_size, 0
        while position < size:
            try:
                start = os.lseek(f.fileno(), position, os.SEEK_DATA)
            except OSError:
                break
            position = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            extents.append((start, position - start))
    return extents


def xz_declaring_dictionary(data: bytes, dict_code: int) -> bytes:
    """xz-compress ``data``, then make its block header declare a larger LZMA2 dictionary (CRC fixed)."""
    packed = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}]))
    block = 12  # the block header follows the 12-byte stream header
    length = (packed[block] + 1) * 4
    assert packed[block + 1] == 0 and packed[block + 2 : block + 4] == b"\x21\x01"  # one LZMA2 filter, no sizes
    packed[block + 4] = dict_code
    packed[block + length - 4 : block + length] = struct.pack("<I", zlib.crc32(packed[block : block + length - 4]))
    return bytes(packed)


def zstd_declaring_window(data: bytes, window_log: int) -> bytes:
    """zstd-compress ``data`` in a frame whose header declares a window of 2**window_log bytes."""
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    packed = bytearray(compressor.compress(data) + compressor.flush())
    assert packed[4] & 0x20 == 0  # not single-segment: byte 5 is the window descriptor
    packed[5] = (window_log - 10) << 3
    return bytes(packed)


def test_xz_asking_for_too_much_memory_is_one_clear_error(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 4 * MiB, data_at=(1,))
    packed = tmp_path / "image.xz"
    packed.write_bytes(xz_declaring_dictionary(content, 20))  # 8 MiB: decodes fine
    old_data_disk(disk, 8 * MiB)
    run_copy(packed, disk)
    assert disk.read_bytes()[: len(content)] == content
    packed.write_bytes(xz_declaring_dictionary(content, 36))  # 1 GiB dictionary
    with pytest.raises(ImageError, match=r"^the xz-compressed image needs more than 256 MiB of memory to decode"):
        run_copy(packed, disk)


def test_zstd_asking_for_a_huge_window_is_one_clear_error(tmp_path):
    image, disk = tmp_path / "image.raw", tmp_path / "disk.raw"
    content = make_disk_image(image, 4 * MiB, data_at=(1,))
    packed = tmp_path / "image.zst"
    packed.write_bytes(zstd_declaring_window(content, 27))
    old_data_disk(disk, 8 * MiB)
    run_copy(packed, disk)
    assert disk.read_bytes()[: len(content)] == content
    packed.write_bytes(zstd_declaring_window(content, 31))  # a 2 GiB window (zstd --long=31)
    with pytest.raises(ImageError, match=r"^the zstd-compressed image needs a window larger than 128 MiB"):
        run_copy(packed, disk)


BOMB_RUN = """
import sys
from pathlib import Path
from snf_image.copy import BUFFER_SIZE
from snf_image.errors import ImageError
from snf_image.formats.sniff import SNIFF_BYTES
from snf_image.sources.local import LocalStream
from tests.copyrun import run_copy
try:
    run_copy(Path(sys.argv[1]), Path(sys.argv[2]))
except ImageError as exc:
    print("ERROR:", exc)
"""


@pytest.mark.parametrize(("codec", "gib"), [("gzip", 1), ("zstd", 8)])
def test_a_decompression_bomb_is_refused_in_bounded_memory(tmp_path, codec, gib):
    """GiBs of zeros in a few MiB, onto a 16 MiB disk, decoded under a 768 MiB address-space limit."""
    bomb, disk = tmp_path / f"bomb.{codec}", tmp_path / "disk.raw"
    zero = bytes(MiB)
    with open(bomb, "wb") as out:
        if codec == "gzip":
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as packer:
                for _ in range(gib * 1024):
                    packer.write(zero)
        else:
            packer = zstandard.ZstdCompressor(level=1).compressobj()
            for _ in range(gib * 1024):
                out.write(packer.compress(zero))
            out.write(packer.flush())
    assert bomb.stat().st_size < 8 * MiB
    old_data_disk(disk, 16 * MiB)
    limited = ["prlimit", f"--as={768 * MiB}", "--", "/usr/bin/python3", "-c", BOMB_RUN, str(bomb), str(disk)]
    result = subprocess.run(limited, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ERROR: the image is larger than the disk ({16 * MiB} bytes)"
