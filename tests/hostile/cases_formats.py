"""Format attacks: containers that refer to host files, bombs, broken streams, lies about the format or size.

Every container is made here by qemu-img (from the sane small guest, so that one which passed
every check would deploy for real) and then patched byte by byte; compressed streams by Python's
own gzip and lzma, a zstd frame by hand. The canary is the host file they try to pull in.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

from tests.hostile.case import Case, tasks_did_their_work
from tests.hostile.guest import MiB, sh
from tests.hostile.lab import Deployment, Lab
from tests.integration.test_containers import VMDK_DESCRIPTOR, vhdx_metadata_entries


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def qemu_img(*args: object) -> None:
    sh("qemu-img", *map(str, args))


def container(lab: Lab, fmt: str, *options: str) -> Path:
    """The sane guest converted to ``fmt`` by qemu-img, in IMAGE_DIR."""
    raw = lab.linux_image(name="sane.raw").path
    image = lab.image_dir / f"guest.{fmt}"
    qemu_img("convert", "-q", "-f", "raw", "-O", fmt, *options, raw, image)
    raw.unlink()
    return image


def qcow2_backing(lab: Lab) -> Deployment:
    qemu_img("create", "-q", "-f", "qcow2", "-b", lab.canary.path, "-F", "raw", lab.image_dir / "b.qcow2", "64M")
    return Deployment("local://b.qcow2")


def qcow2_backing_json(lab: Lab) -> Deployment:
    """The backing file as a json: pseudo-protocol naming the canary (qemu-img -u: not opened here)."""
    spec = f'json:{{"driver": "raw", "file": {{"driver": "file", "filename": "{lab.canary.path}"}}}}'
    qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", spec, "-F", "raw", lab.image_dir / "j.qcow2", "64M")
    return Deployment("local://j.qcow2")


def qcow2_data_file(lab: Lab) -> Deployment:
    """An external data file named as the canary (made with a same-length decoy name, then patched)."""
    decoy = lab.canary.path.with_name(lab.canary.path.name[:-1] + "z")
    image = lab.image_dir / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={decoy},data_file_raw=on", image, "32M")
    decoy.unlink()
    data = image.read_bytes()
    image.write_bytes(data.replace(os.fsencode(decoy), os.fsencode(lab.canary.path)))
    return Deployment("local://d.qcow2")


def qcow2_bigger_than_disk(lab: Lab) -> Deployment:
    qemu_img("create", "-q", "-f", "qcow2", lab.image_dir / "big.qcow2", "1T")
    return Deployment("local://big.qcow2")


def qcow2_l1_past_end(lab: Lab) -> Deployment:
    """A qcow2 whose header passes every check but whose L1 table lies far past the end of the file."""
    image = container(lab, "qcow2")
    patch(image, 40, struct.pack(">Q", 1 << 40))  # l1_table_offset
    return Deployment(f"local://{image.name}")


def qcow2_in_gzip(lab: Lab) -> Deployment:
    image = container(lab, "qcow2")
    (lab.image_dir / "guest.qcow2.gz").write_bytes(gzip.compress(image.read_bytes(), 1))
    return Deployment("local://guest.qcow2.gz")


def vmdk_descriptor(lab: Lab) -> Deployment:
    """A VMDK descriptor file whose one extent is the canary."""
    text = VMDK_DESCRIPTOR.format(type="monolithicFlat", extents=f'RW 8192 FLAT "{lab.canary.path}" 0')
    (lab.image_dir / "d.vmdk").write_text(text)
    return Deployment("local://d.vmdk")


def vmdk_external_extent(lab: Lab) -> Deployment:
    """A monolithicSparse VMDK whose embedded descriptor lists the canary as a flat extent."""
    image = container(lab, "vmdk", "-o", "subformat=monolithicSparse")
    text = VMDK_DESCRIPTOR.format(type="monolithicSparse", extents=f'RW 8192 FLAT "{lab.canary.path}" 0')
    patch(image, 512, text.encode().ljust(20 * 512, b"\0"))
    return Deployment(f"local://{image.name}")


def vhdx_parent(lab: Lab) -> Deployment:
    image = container(lab, "vhdx")
    _, entries = vhdx_metadata_entries(image)
    parameters = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
    entry = next(offset for offset, guid, _ in entries if guid == parameters)
    patch(image, entry, uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le)  # a parent locator
    return Deployment(f"local://{image.name}")


def vdi_parent(lab: Lab) -> Deployment:
    image = container(lab, "vdi")
    patch(image, 0x1B8, uuid.uuid4().bytes)  # the parent's UUID
    return Deployment(f"local://{image.name}")


def vhd_differencing(lab: Lab) -> Deployment:
    image = container(lab, "vpc")
    patch(image, 60, struct.pack(">I", 4))  # disk type 4: differencing
    return Deployment(f"local://{image.name}")


def gzip_bomb(lab: Lab) -> Deployment:
    """4 GiB of zeros in 64 gzip members of 64 MiB each (4 MiB on disk) for a 64 MiB disk."""
    member = gzip.compress(bytes(64 * MiB), 9)
    (lab.image_dir / "bomb.img.gz").write_bytes(member * 64)
    return Deployment("local://bomb.img.gz")


def zstd_window(lab: Lab) -> Deployment:
    """A zstd frame made by hand whose window descriptor asks for 2 GiB."""
    payload = b"\0" * 4096
    header = b"\x28\xb5\x2f\xfd" + bytes([0x00, 21 << 3])  # no size, windowLog 10 + 21
    block = struct.pack("<I", 1 | (len(payload) << 3))[:3]  # last block, raw
    (lab.image_dir / "w.img.zst").write_bytes(header + block + payload)
    return Deployment("local://w.img.zst")


def xz_dictionary(lab: Lab) -> Deployment:
    """An xz stream whose LZMA2 filter asks for a 4 GiB dictionary (block header patched, CRC32 redone)."""
    data = bytearray(lzma.compress(bytes(MiB), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    start = 12  # the block header follows the stream header
    size = (data[start] + 1) * 4
    props = data.index(b"\x21\x01", start, start + size) + 2
    data[props] = 40  # dictionary size 4 GiB - 1
    data[start + size - 4 : start + size] = struct.pack("<I", zlib.crc32(data[start : start + size - 4]))
    (lab.image_dir / "dict.img.xz").write_bytes(bytes(data))
    return Deployment("local://dict.img.xz")


def gzip_truncated(lab: Lab) -> Deployment:
    raw = lab.linux_image(name="sane.raw").path
    packed = gzip.compress(raw.read_bytes(), 1)
    (lab.image_dir / "cut.img.gz").write_bytes(packed[: len(packed) // 2])
    return Deployment("local://cut.img.gz")


def empty(lab: Lab) -> Deployment:
    (lab.image_dir / "empty.img").write_bytes(b"")
    return Deployment("local://empty.img")


def empty_gzip(lab: Lab) -> Deployment:
    (lab.image_dir / "empty.img.gz").write_bytes(gzip.compress(b""))
    return Deployment("local://empty.img.gz")


def http_hangs_up(lab: Lab) -> Deployment:
    """An image server (credentials and a token in the URL) that hangs up after every 8 MiB it sends."""
    raw = lab.linux_image(name="sane.raw").path
    server = lab.http({"/guest.img": raw.read_bytes()})
    server.behaviour.truncate_after = 8 * MiB
    server.behaviour.truncate_times = -1
    return Deployment(lab.secret_url(server, "/guest.img"))


def http_trickle(lab: Lab) -> Deployment:
    """An image server that sends 1 MiB, then one byte every tenth of a second: it would never end."""
    raw = lab.linux_image(name="sane.raw").path
    server = lab.http({"/guest.img": raw.read_bytes()})
    server.behaviour.trickle_after = 1 * MiB
    return Deployment(
        lab.secret_url(server, "/guest.img"), settings={"DOWNLOAD_MIN_RATE": "65536", "DOWNLOAD_RATE_WINDOW": "2"}
    )


def extdump_is_a_disk(lab: Lab) -> Deployment:
    image = lab.linux_image()
    return Deployment(f"local://{image.path.name}", img_format="extdump")


def diskdump_is_a_filesystem(lab: Lab) -> Deployment:
    image = lab.linux_image()
    fs = lab.image_dir / "root.ext4"
    subprocess.run(["dd", f"if={image.path}", f"of={fs}", "bs=1M", "skip=1", "status=none"], check=True)
    return Deployment("local://root.ext4")


def larger_than_disk(lab: Lab) -> Deployment:
    image = lab.linux_image()
    return Deployment(f"local://{image.path.name}", disk_size=32 * MiB)


def good_qcow2(lab: Lab) -> Deployment:
    """The control: the sane guest as a qcow2 deploys and is customized."""
    image = container(lab, "qcow2")
    return Deployment(f"local://{image.name}")


CASES = [
    Case("fmt-qcow2-backing-file", "qcow2 with the canary as its backing file", qcow2_backing,
         "refusing a qcow2 image with a backing file", boots=False),
    Case("fmt-qcow2-backing-json", "qcow2 backing file as a json: pseudo-protocol naming the canary",
         qcow2_backing_json, "refusing a qcow2 image with a backing file", boots=False),
    Case("fmt-qcow2-data-file", "qcow2 with the canary as its external data file", qcow2_data_file,
         "refusing a qcow2 image with an external data file", boots=False),
    Case("fmt-qcow2-l1-past-end", "qcow2 whose L1 table lies 1 TiB past the end of the file (read as zeros)",
         qcow2_l1_past_end, "no partition table"),
    Case("fmt-qcow2-larger-than-disk", "qcow2 declaring 1 TiB for a 64 MiB disk", qcow2_bigger_than_disk,
         r"virtual size \(\d+ bytes\) is larger than the disk", boots=False),
    Case("fmt-qcow2-in-gzip", "a qcow2 container inside a gzip stream", qcow2_in_gzip,
         "holds a qcow2 container", boots=False),
    Case("fmt-vmdk-descriptor", "VMDK descriptor file whose extent is the canary", vmdk_descriptor,
         "descriptor file", boots=False),
    Case("fmt-vmdk-external-extent", "monolithicSparse VMDK listing the canary as an extent",
         vmdk_external_extent, "external extent", boots=False),
    Case("fmt-vhdx-parent", "VHDX with a parent locator (differencing)", vhdx_parent,
         "differencing disk", boots=False),
    Case("fmt-vdi-parent", "VDI naming a parent image", vdi_parent, "differencing or undo disk", boots=False),
    Case("fmt-vhd-differencing", "differencing VHD", vhd_differencing, "differencing disk", boots=False),
    Case("fmt-gzip-bomb", "4 GiB of zeros in 4 MiB of gzip, for a 64 MiB disk", gzip_bomb,
         "larger than the disk", boots=False),
    Case("fmt-zstd-window", "zstd frame asking for a 2 GiB window", zstd_window, "window", boots=False),
    Case("fmt-xz-dictionary", "xz stream asking for a 4 GiB dictionary", xz_dictionary, "memory", boots=False),
    Case("fmt-gzip-truncated", "gzip stream cut in the middle", gzip_truncated, "gzip", boots=False),
    Case("fmt-empty", "an empty image file", empty, "the image is empty", boots=False),
    Case("fmt-empty-gzip", "a gzip stream of nothing", empty_gzip, "the image is empty once gzip-decoded",
         boots=False),
    Case("fmt-http-hangs-up", "image server hanging up after every 8 MiB (credentials and token in the URL)",
         http_hangs_up, harmless=lambda lab: tasks_did_their_work(lab) and None),
    Case("fmt-http-trickle", "image server sending one byte a tenth of a second after 1 MiB", http_trickle,
         "rate|slow|bytes/s", boots=False),
    Case("fmt-extdump-is-a-disk", "img_format=extdump for a whole disk", extdump_is_a_disk,
         "img_format is extdump but", boots=False),
    Case("fmt-diskdump-is-a-filesystem", "img_format=diskdump for a bare ext4", diskdump_is_a_filesystem,
         "use img_format=extdump", boots=False),
    Case("fmt-larger-than-disk", "a 40 MiB raw image for a 32 MiB disk", larger_than_disk,
         "larger than the disk", boots=False),
    Case("fmt-qcow2-control", "control: the sane guest as a qcow2 (the converter's path works)", good_qcow2,
         harmless=lambda lab: tasks_did_their_work(lab) and None),
]  # fmt: skip
