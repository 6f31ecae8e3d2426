"""Container images (qcow2, VMDK, VHD, VHDX, VDI) through the real copy path and the sandboxed converter.

Every image is made here by qemu-img (hostile ones are then patched byte by byte), deployed with
deploy.write_image onto a disk full of old data, and read back: a good image lands byte-identical
to what qemu-img itself converts it to; a hostile one is one clear ImageError, the disk untouched.
"""

import hashlib
import os
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from snf_image.errors import ImageError
from snf_image.transfer import FdStream
from tests.copyrun import MiB, make_disk_image, old_data_disk, run_copy

FORMATS = [
    pytest.param("qcow2", [], id="qcow2"),
    pytest.param("vmdk", ["-o", "subformat=monolithicSparse"], id="vmdk-monolithicSparse"),
    pytest.param("vmdk", ["-o", "subformat=streamOptimized"], id="vmdk-streamOptimized"),
    pytest.param("vpc", [], id="vhd"),
    pytest.param("vhdx", [], id="vhdx"),
    pytest.param("vdi", [], id="vdi"),
]


def qemu_img(*args: object) -> None:
    result = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def container(tmp_path: Path, fmt: str, options: list[str], size: int = 16 * MiB) -> tuple[Path, bytes]:
    """A disk image with data, converted to ``fmt`` by qemu-img, readable by root only."""
    raw, image = tmp_path / "source.raw", tmp_path / f"image.{fmt}"
    content = make_disk_image(raw, size, data_at=(1, 7))
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, raw, image)
    image.chmod(0o600)  # the converter's user could not open it: it reads our descriptor
    return image, content


def refused(tmp_path: Path, image: Path, message: str, img_format: str = "diskdump", disk_mib: int = 16) -> None:
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, disk_mib * MiB)
    with pytest.raises(ImageError, match=message):
        run_copy(image, disk, img_format)
    assert disk.read_bytes() == b"\xa5" * (disk_mib * MiB)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(("fmt", "options"), FORMATS)
def test_container_lands_byte_identical(tmp_path, fmt, options):
    image, content = container(tmp_path, fmt, options)
    reference, disk = tmp_path / "reference.raw", tmp_path / "disk.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", image, reference)
    expected = reference.read_bytes()
    assert expected[: len(content)] == content and not any(expected[len(content) :])  # VHD rounds up to CHS
    old_data_disk(disk, 32 * MiB)
    seen = run_copy(image, disk, checksum="sha256:" + hashlib.sha256(image.read_bytes()).hexdigest())
    got = disk.read_bytes()
    assert got[: len(expected)] == expected
    assert got[len(expected) :] == b"\xa5" * (32 * MiB - len(expected))
    progress = [m for m in seen if m["type"] == "image-copy-progress"]
    assert progress[-1]["position"] == progress[-1]["total"] == len(expected)


def test_checksum_is_verified_before_the_converter_runs(tmp_path):
    image, _ = container(tmp_path, "qcow2", [])
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, 16 * MiB)
    with pytest.raises(ImageError, match="image checksum mismatch"):
        run_copy(image, disk, checksum="sha256:" + "0" * 64)
    assert disk.read_bytes() == b"\xa5" * (16 * MiB)  # verified before anything was converted


def test_container_must_be_declared_diskdump(tmp_path):
    image, _ = container(tmp_path, "vdi", [])
    refused(tmp_path, image, "^a VDI image holds a whole disk: use img_format=diskdump, not extdump$", "extdump")


def test_container_from_a_stream_without_a_file_is_refused(tmp_path):
    image, _ = container(tmp_path, "qcow2", [])
    read, write = os.pipe()
    with os.fdopen(write, "wb") as pipe:
        pipe.write(image.read_bytes()[: 64 * 1024])
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, 16 * MiB)
    with os.fdopen(read, "rb") as pipe, pytest.raises(ImageError, match=r"^qcow2 images can only be read from a local"):
        run_copy(image, disk, wrap=lambda _raw: FdStream(pipe.fileno()))


@pytest.mark.parametrize(("fmt", "options"), FORMATS)
def test_virtual_size_must_fit_the_disk(tmp_path, fmt, options):
    image, _ = container(tmp_path, fmt, options, size=24 * MiB)
    refused(tmp_path, image, r"image's virtual size \(2[0-9]{7} bytes\) is larger than the disk \(16777216 bytes\)")


def test_absurd_virtual_size_is_refused(tmp_path):
    image, _ = container(tmp_path, "qcow2", [])
    patch(image, 24, struct.pack(">Q", 1 << 62))
    refused(tmp_path, image, r"^the qcow2 image's virtual size \(4611686018427387904 bytes\) is larger than the disk")


@pytest.mark.parametrize("attack", ["backing", "data-file"])
def test_qcow2_referring_to_a_host_file_is_refused(tmp_path, attack):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"SECRET" * 100000)
    image = tmp_path / "evil.qcow2"
    if attack == "backing":
        qemu_img("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", image, "1M")
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", image, "1M")
    refused(tmp_path, image, "^refusing a qcow2 image with (a backing file|an external data file)$")


def test_qcow2_with_unknown_incompatible_features_is_refused(tmp_path):
    image, _ = container(tmp_path, "qcow2", [])
    patch(image, 79, b"\x80")  # incompatible feature bit 7
    refused(tmp_path, image, r"^refusing a qcow2 image with unknown incompatible features \(0x80\)$")


def test_encrypted_qcow2_is_refused(tmp_path):
    image, _ = container(tmp_path, "qcow2", [])
    patch(image, 32, struct.pack(">I", 2))  # crypt_method: LUKS (qemu-img's own LUKS set-up times its PBKDF)
    refused(tmp_path, image, "^refusing a qcow2 image that is encrypted$")


@pytest.mark.parametrize(("fmt", "name"), [("qcow", "qcow \\(version 1\\)"), ("qed", "QED")])
def test_formats_we_never_read_are_refused_by_name(tmp_path, fmt, name):
    image = tmp_path / f"image.{fmt}"
    qemu_img("create", "-q", "-f", fmt, image, "4M")
    refused(tmp_path, image, f"^the image is a {name} file, which snf-image does not read")


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_vmdk_descriptor_files_are_refused(tmp_path, subformat):
    image = tmp_path / "image.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", image, "4M")
    refused(tmp_path, image, rf"^refusing a VMDK image descriptor file \(createType {subformat}\): its data lives in")


def test_vmdk_with_a_parent_is_refused(tmp_path):
    base, image = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", base, "4M")
    qemu_img("create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", image)
    refused(tmp_path, image, r"^refusing a VMDK image with a parent \(a differencing VMDK\)$")


def embedded_descriptor(image: Path, text: str) -> None:
    """Replace a monolithicSparse VMDK's embedded descriptor (20 sectors at sector 1)."""
    patch(image, 512, text.encode().ljust(20 * 512, b"\0"))


VMDK_DESCRIPTOR = (
    '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="{type}"\n\n{extents}\n'
)


@pytest.mark.parametrize(
    ("create_type", "extents", "message"),
    [
        ("monolithicSparse", 'RW 32768 FLAT "/etc/shadow" 0', "with an external extent"),
        ("monolithicSparse", 'RW 16384 SPARSE "a.vmdk"\nRW 16384 SPARSE "b.vmdk"', "with 2 extents"),
        ("vmfsSparse", 'RW 32768 SPARSE "image.vmdk"', "of type vmfsSparse: only monolithicSparse and streamOptimized"),
        (
            "monolithicSparse",
            'RW 32768 SPARSE "image.vmdk"\n!include /etc/passwd',
            "whose descriptor has a line snf-image does not understand",
        ),
    ],
)
def test_vmdk_embedded_descriptor_is_checked_line_by_line(tmp_path, create_type, extents, message):
    image, _ = container(tmp_path, "vmdk", [])
    embedded_descriptor(image, VMDK_DESCRIPTOR.format(type=create_type, extents=extents))
    refused(tmp_path, image, f"^refusing a VMDK image {message}")


def test_vmdk_of_capacity_zero_listing_a_host_file_is_refused(tmp_path):
    """qemu reads such a file's descriptor as a descriptor file: its extent would be the host's file."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"SECRET" * 100000)
    image, _ = container(tmp_path, "vmdk", [])
    patch(image, 12, struct.pack("<Q", 0))
    embedded_descriptor(image, VMDK_DESCRIPTOR.format(type="monolithicFlat", extents=f'RW 2048 FLAT "{secret}" 0'))
    refused(tmp_path, image, "^refusing a VMDK image that declares a virtual size of 0$")


def test_differencing_vhd_is_refused(tmp_path):
    image, _ = container(tmp_path, "vpc", [])
    patch(image, 60, struct.pack(">I", 4))  # disk type: differencing
    refused(tmp_path, image, r"^refusing a VHD image that is a differencing disk \(it has a parent\)$")


def vhdx_metadata_entries(image: Path) -> tuple[int, list[tuple[int, bytes, int]]]:
    """The metadata region's offset and its entries as (entry offset, GUID, item offset)."""
    data = image.read_bytes()
    count = struct.unpack_from("<I", data, 192 * 1024 + 8)[0]
    region = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    entries = [struct.unpack_from("<16sQ", data, 192 * 1024 + 16 + 32 * i) for i in range(count)]
    metadata = next(offset for guid, offset in entries if guid == region)
    items = struct.unpack_from("<H", data, metadata + 10)[0]
    found = []
    for i in range(items):
        guid, offset = struct.unpack_from("<16sI", data, metadata + 32 + 32 * i)
        found.append((metadata + 32 + 32 * i, guid, offset))
    return metadata, found


@pytest.mark.parametrize("attack", ["has-parent flag", "parent locator"])
def test_differencing_vhdx_is_refused(tmp_path, attack):
    image, _ = container(tmp_path, "vhdx", [])
    metadata, entries = vhdx_metadata_entries(image)
    parameters = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
    entry, _, item = next(e for e in entries if e[1] == parameters)
    if attack == "has-parent flag":
        patch(image, metadata + item + 4, struct.pack("<I", 2))
        message = r"a differencing disk \(it has a parent\)$"
    else:
        patch(image, entry, uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le)
        message = r"a differencing disk \(it has a parent locator\)$"
    refused(tmp_path, image, f"^refusing a VHDX image that is {message}")


@pytest.mark.parametrize(("offset", "data"), [(0x4C, struct.pack("<I", 4)), (0x1B8, uuid.uuid4().bytes)])
def test_differencing_vdi_is_refused(tmp_path, offset, data):
    image, _ = container(tmp_path, "vdi", [])
    patch(image, offset, data)  # image type "diff", or a parent UUID
    refused(tmp_path, image, r"^refusing a VDI image that is a differencing or undo disk \(it has a parent\)$")


def test_qcow2_inside_a_vmdk_is_refused(tmp_path):
    inner, outer = tmp_path / "inner.qcow2", tmp_path / "outer.vmdk"
    qemu_img("create", "-q", "-f", "qcow2", inner, "8M")
    qemu_img("convert", "-f", "raw", "-O", "vmdk", inner, outer)  # the qcow2 file as the VMDK's disk
    refused(tmp_path, outer, "^the VMDK image holds a qcow2 container, not a disk$")


def test_qcow2_inside_xz_is_refused(tmp_path):
    inner, packed = tmp_path / "inner.qcow2", tmp_path / "inner.qcow2.xz"
    qemu_img("create", "-q", "-f", "qcow2", inner, "8M")
    subprocess.run(["xz", "-k", "-0", inner], check=True)
    refused(tmp_path, packed, "^the xz-compressed image holds a qcow2 container; decompress it first$")


def test_truncated_container_header_is_one_clear_error(tmp_path):
    image, _ = container(tmp_path, "vhdx", [])
    os.truncate(image, 200 * 1024)  # the identifier survives, the region table does not
    refused(tmp_path, image, "^the image is not a valid VHDX file: its region table lies past the end of the file$")


def test_truncated_container_data_reads_as_zeros_as_in_qemu_img(tmp_path):
    """Clusters cut off the end read as zeros (qemu's rule); nothing else of the host fills them."""
    image, _ = container(tmp_path, "qcow2", [])
    os.truncate(image, 256 * 1024)  # the header and tables survive, the data clusters do not
    reference, disk = tmp_path / "reference.raw", tmp_path / "disk.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", image, reference)
    old_data_disk(disk, 16 * MiB)
    run_copy(image, disk)
    assert disk.read_bytes() == reference.read_bytes()


def snf_image_deploy(tmp_path: Path, image: Path, disk: Path, *settings: str) -> subprocess.CompletedProcess:
    """``snf-image deploy --no-customize`` of ``image`` (in IMAGE_DIR) onto ``disk``: the create pipeline."""
    conf = tmp_path / "etc"
    conf.mkdir(exist_ok=True)
    (conf / "snf-image.conf").write_text(f"IMAGE_DIR={image.parent}\n")
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    checksum = "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()
    command = ["--config-dir", conf, "deploy", "--disk", disk, "--image", f"local://{image.name}", "--format"]
    command += ["diskdump", "--checksum", checksum, "--no-customize", *overrides]
    return subprocess.run(
        ["/usr/bin/python3", "-m", "snf_image", *map(str, command)],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_create_pipeline_converts_with_the_settings_converter(tmp_path):
    image, content = container(tmp_path, "vhdx", [])
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, 32 * MiB)
    result = snf_image_deploy(tmp_path, image, disk, "CONVERTER_MEMORY=512", "CONVERTER_CPU_TIME=2m")
    assert result.returncode == 0, result.stderr
    assert "converting the VHDX image" in result.stdout and "copied 16.0 MiB (100.0%)" in result.stdout
    assert disk.read_bytes()[: len(content)] == content


def test_create_pipeline_refuses_a_root_converter(tmp_path):
    image, _ = container(tmp_path, "vdi", [])
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, 32 * MiB)
    result = snf_image_deploy(tmp_path, image, disk, "HELPER_USER=root")
    assert result.returncode != 0
    reason = "setting HELPER_USER: 'root' is privileged; the helper VM and the image converter must not run as root"
    assert result.stderr.strip().splitlines() == [f"snf-image: error: {reason}"]
    assert disk.read_bytes() == b"\xa5" * (32 * MiB)


def vmware_footer(tmp_path: Path, footer_capacity_delta: int = 0, markers: bool = True) -> tuple[Path, bytes]:
    """A streamOptimized VMDK as VMware writes it: the header says "grain directory at the end", a footer follows.

    qemu then takes its header from the footer, which must repeat the real one.
    """
    image, content = container(tmp_path, "vmdk", ["-o", "subformat=streamOptimized"])
    data = bytearray(image.read_bytes())
    header = bytes(data[:512])
    footer = bytearray(header)
    capacity = struct.unpack_from("<Q", header, 12)[0]
    struct.pack_into("<Q", footer, 12, capacity + footer_capacity_delta)
    struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)  # grain directory offset: "at the end"
    marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0") if markers else bytes(512)
    end_of_stream = bytes(512) if markers else b"\xff" * 512
    image.write_bytes(bytes(data) + marker + bytes(footer) + end_of_stream)
    return image, content


def test_vmdk_with_a_footer_lands_byte_identical(tmp_path):
    image, content = vmware_footer(tmp_path)
    disk = tmp_path / "disk.raw"
    old_data_disk(disk, 32 * MiB)
    run_copy(image, disk)
    assert disk.read_bytes()[: len(content)] == content


@pytest.mark.parametrize(
    ("delta", "markers", "message"),
    [
        (MiB, True, "^refusing a VMDK image whose footer disagrees with its header$"),
        (0, False, "^the image is not a valid VMDK file: its footer markers are missing$"),
    ],
)
def test_vmdk_footer_must_repeat_the_header(tmp_path, delta, markers, message):
    image, _ = vmware_footer(tmp_path, delta // 512, markers)
    refused(tmp_path, image, message, disk_mib=32)
