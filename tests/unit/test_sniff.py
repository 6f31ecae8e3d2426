"""Sniffing with libmagic restricted to its magic database: every format we read is still told apart.

The inputs are made here: compressed streams by the codecs, containers by qemu-img, filesystems
by mkfs, an ISO 9660 volume descriptor by hand.
"""

import gzip
import lzma
import subprocess

import magic
import pytest
import zstandard

from snf_image.errors import ImageError
from snf_image.formats import sniff

MiB = 1024 * 1024


def head(path) -> bytes:
    with open(path, "rb") as f:
        return f.read(sniff.SNIFF_BYTES)


def test_the_builtin_parsers_are_off():
    """Text, JSON and CSV come from libmagic's built-in parsers, not its database: restricted, they are data."""
    samples = [b"plain words of text\n" * 20, b'{"a": [1, 2, {"b": null}]}\n', b"a,b,c\n1,2,3\n4,5,6\n" * 10]
    for sample in samples:
        assert magic.from_buffer(sample) != "data"
        assert sniff.describe(sample) == "data"


def test_the_limits_are_set():
    for param, value in sniff.RESTRICTED_PARAMS.items():
        assert sniff._magic().getparam(param) == value


@pytest.mark.parametrize(
    ("codec", "encode"),
    [
        (sniff.GZIP, gzip.compress),
        (sniff.XZ, lzma.compress),
        (sniff.ZSTD, lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_compressed_streams_are_detected(codec, encode):
    assert sniff.detect_container(encode(bytes(MiB))) == codec


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vpc", "vhdx", "vdi"])
def test_containers_are_detected(tmp_path, fmt):
    image = tmp_path / f"image.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(image), "64M"], check=True)
    assert sniff.detect_container(head(image)) == fmt


def test_a_vmdk_descriptor_file_is_a_vmdk(tmp_path):
    image = tmp_path / "image.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(image), "8M"], check=True
    )
    assert sniff.detect_container(head(image)) == sniff.VMDK


@pytest.mark.parametrize(
    ("mkfs", "kind"), [(["mkfs.ext4", "-q", "-F"], "ext"), (["mkfs.ntfs", "-q", "-F", "-f"], "ntfs")]
)
def test_filesystems_are_detected(tmp_path, mkfs, kind):
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    assert sniff.detect_container(head(image)) == sniff.RAW
    assert sniff.content_kind(head(image)) == kind


def test_iso9660_is_detected():
    volume = bytearray(64 * 1024)
    volume[32768 : 32768 + 7] = b"\x01CD001\x01"  # a primary volume descriptor
    volume[32768 + 40 : 32768 + 72] = b"SNF_IMAGE_TEST".ljust(32)
    assert sniff.content_kind(bytes(volume)) == "iso9660"
    with pytest.raises(ImageError, match=r"^img_format is diskdump but the image is an ISO 9660 CD image"):
        sniff.check_declared_format("diskdump", bytes(volume))


def test_a_disk_is_raw_and_other():
    disk = bytearray(MiB)
    disk[510:512] = b"\x55\xaa"
    assert sniff.detect_container(bytes(disk)) == sniff.RAW
    assert sniff.content_kind(bytes(disk)) == "other"
