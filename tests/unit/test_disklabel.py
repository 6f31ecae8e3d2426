"""BSD disklabels: layout, checksum, growth, the kernel's numbering, and detection through them."""

from __future__ import annotations

import struct

import pytest

from helper import detect, disklabel
from helper.commands import TaskError
from helper.disklabel import FS_BSDFFS, FS_SWAP, FS_UNUSED, LabelError
from tests.unit.test_detect import Image, put_mbr

GIB = 2 * 1024 * 1024  # sectors

# OpenBSD as its installer lays out a small disk: slice 4 from 64, a / b swap / d /usr / e /home.
OPENBSD_PARTS = {
    "a": (64, 400000, FS_BSDFFS),
    "b": (400064, 100000, FS_SWAP),
    "d": (500064, 300000, FS_BSDFFS),
    "e": (800064, 248512, FS_BSDFFS),
}
NETBSD_PARTS = {
    "a": (2048, 800000, FS_BSDFFS),
    "b": (802048, 100000, FS_SWAP),
    "e": (902048, 146528, FS_BSDFFS),
}


def openbsd(disk: int = 1048576) -> disklabel.DiskLabel:
    return disklabel.build("openbsd", disk, 64, disk - 64, OPENBSD_PARTS, duid="b7c4d0e1f2a39586")


def netbsd(disk: int = 1048576) -> disklabel.DiskLabel:
    return disklabel.build("netbsd", disk, 2048, disk - 2048, NETBSD_PARTS)


def test_openbsd_layout_and_round_trip() -> None:
    label = openbsd()
    raw = disklabel.to_bytes(label)
    assert struct.unpack_from("<I", raw, 0)[0] == disklabel.MAGIC == struct.unpack_from("<I", raw, 132)[0]
    assert struct.unpack_from("<H", raw, 138)[0] == 5  # a..e
    assert raw[64:72].hex() == "b7c4d0e1f2a39586"
    # partition d at entry 3: size, offset, offseth, sizeh, fstype
    assert struct.unpack_from("<IIHHB", raw, 148 + 3 * 16) == (300000, 500064, 0, 0, FS_BSDFFS)
    again = disklabel.parse(raw, "openbsd")
    assert again.partitions == label.partitions
    assert again.duid == "b7c4d0e1f2a39586"
    assert (again.bstart, again.bend, again.secperunit) == (64, 1048576, 1048576)
    assert again.get("c") == disklabel.BsdPartition("c", 1048576, 0, FS_UNUSED)
    assert again.last().letter == "e"


def test_openbsd_48bit_fields() -> None:
    big = 5 << 32  # sectors: beyond 32 bits
    label = disklabel.build("openbsd", big, 64, big - 64, {"a": (64, big - 64, FS_BSDFFS)})
    raw = disklabel.to_bytes(label)
    assert struct.unpack_from("<H", raw, 112)[0] == 5  # d_secperunith
    assert struct.unpack_from("<HH", raw, 148 + 8) == (0, 4)  # a: offseth, sizeh
    assert disklabel.parse(raw, "openbsd").get("a").size == big - 64


def test_netbsd_raw_partitions() -> None:
    label = netbsd()
    assert label.get("c") == disklabel.BsdPartition("c", 1048576 - 2048, 2048, FS_UNUSED)
    assert label.get("d") == disklabel.BsdPartition("d", 1048576, 0, FS_UNUSED)
    assert [p.letter for p in label.used()] == ["a", "b", "e"]
    raw = disklabel.to_bytes(label)
    assert struct.unpack_from("<IIIBB", raw, 148 + 4 * 16)[:4] == (146528, 902048, 0, FS_BSDFFS)


def test_checksum_is_the_xor_of_the_words() -> None:
    raw = disklabel.to_bytes(netbsd())
    npart = struct.unpack_from("<H", raw, 138)[0]
    words = struct.unpack_from(f"<{(148 + 16 * npart) // 2}H", raw)
    total = 0
    for w in words:
        total ^= w
    assert total == 0  # the stored checksum cancels the rest
    assert disklabel.checksum(raw, npart) == struct.unpack_from("<H", raw, 136)[0]


@pytest.mark.parametrize("offset", [60, 148 + 16, 148 + 4 * 16 + 12])
def test_corrupt_label_is_refused(offset: int) -> None:
    raw = bytearray(disklabel.to_bytes(netbsd()))
    raw[offset] ^= 0x01
    with pytest.raises(LabelError, match="checksum"):
        disklabel.parse(bytes(raw), "netbsd")


def test_bytes_beyond_the_partitions_do_not_count() -> None:
    raw = bytearray(disklabel.to_bytes(netbsd()))
    raw[400] ^= 0xFF  # after entry e: outside the checksum, as in the BSDs' dkcksum
    assert disklabel.parse(bytes(raw), "netbsd").get("e").size == 146528


def test_no_magic() -> None:
    with pytest.raises(LabelError, match="magic"):
        disklabel.parse(bytes(512), "openbsd")


def test_grow_openbsd() -> None:
    new_disk = 4 * GIB
    grown = disklabel.grow(openbsd(), new_disk, 64, new_disk - 64)
    assert (grown.secperunit, grown.bend, grown.bstart) == (new_disk, new_disk, 64)
    assert grown.ncylinders == new_disk // (255 * 63)
    assert grown.get("c") == disklabel.BsdPartition("c", new_disk, 0, FS_UNUSED)
    e = grown.get("e")
    assert e.offset == 800064 and e.size % disklabel.OPENBSD_ROUND == 0
    assert new_disk - disklabel.OPENBSD_ROUND < e.end <= new_disk
    assert grown.get("a") == openbsd().get("a") and grown.get("b") == openbsd().get("b")
    again = disklabel.parse(disklabel.to_bytes(grown), "openbsd")
    assert again.partitions == grown.partitions and again.bend == new_disk


def test_grow_netbsd() -> None:
    new_disk = 4 * GIB
    grown = disklabel.grow(netbsd(), new_disk, 2048, new_disk - 2048)
    assert grown.get("d") == disklabel.BsdPartition("d", new_disk, 0, FS_UNUSED)
    assert grown.get("c") == disklabel.BsdPartition("c", new_disk - 2048, 2048, FS_UNUSED)
    assert grown.get("e").end == new_disk
    assert disklabel.parse(disklabel.to_bytes(grown), "netbsd").partitions == grown.partitions


def test_swap_at_the_end_is_not_grown() -> None:
    parts = {"a": (64, 800000, FS_BSDFFS), "b": (800064, 100000, FS_SWAP)}
    label = disklabel.build("openbsd", 1048576, 64, 1048576 - 64, parts)
    grown = disklabel.grow(label, 4 * GIB, 64, 4 * GIB - 64)
    assert grown.get("b").size == 100000 and grown.get("a").size == 800000
    assert grown.last().letter == "b"


def test_partition_outside_the_slice_is_refused() -> None:
    label = disklabel.build("netbsd", 1048576, 2048, 500000, {"a": (2048, 600000, FS_BSDFFS)})
    with pytest.raises(LabelError, match="outside"):
        disklabel.grow(label, 4 * GIB, 2048, 500000)


def test_kernel_numbering_skips_unused_raw_and_whole_slice() -> None:
    # after logical partitions 5 and 6 the label's partitions start at 7; c (whole disk) is skipped
    assert disklabel.kernel_partitions(openbsd(), 64, 1048576 - 64, 7) == {
        "a": (7, 64, 400000),
        "b": (8, 400064, 100000),
        "d": (9, 500064, 300000),
        "e": (10, 800064, 248512),
    }
    # NetBSD: c equals the slice (already partition N), d is unused; i after a gap of unused letters
    parts = dict(NETBSD_PARTS)
    parts["i"] = (1048000, 100, FS_BSDFFS)
    parts["e"] = (902048, 145000, FS_BSDFFS)
    label = disklabel.build("netbsd", 1048576, 2048, 1048576 - 2048, parts)
    assert disklabel.kernel_partitions(label, 2048, 1048576 - 2048, 5) == {
        "a": (5, 2048, 800000),
        "b": (6, 802048, 100000),
        "e": (7, 902048, 145000),
        "i": (8, 1048000, 100),  # i is the ninth letter, not e again
    }


def test_mbr_entry_and_chs() -> None:
    img = Image()
    put_mbr(img, 0, [(0xA6, 64, 1000)])
    mbr = disklabel.set_mbr_entry(img.read(0, 512), 1, 64, 16 * GIB - 64)
    assert disklabel.mbr_slices(mbr) == [(1, "a6", 64, 16 * GIB - 64)]
    assert mbr[446 + 1 : 446 + 4] == bytes([1, 2, 0])  # LBA 64: head 1, sector 2, cylinder 0
    assert mbr[446 + 5 : 446 + 8] == b"\xfe\xff\xff"  # beyond 1023 cylinders


def _bsd_disk(flavour: str, label: disklabel.DiskLabel, slice_type: int, start: int) -> Image:
    img = Image()
    put_mbr(img, 0, [(0x83, 2048 if start > 2048 else 0, 0), (slice_type, start, 1048576 - start)])
    img.sector(start + 1)[:] = disklabel.to_bytes(label)
    return img


def test_openbsd_root_candidate_through_the_label() -> None:
    img = _bsd_disk("openbsd", openbsd(), 0xA6, 64)
    table = detect.parse_table(img.read)
    bsd = [(p.number, p.letter, p.type, p.parent) for p in table.partitions if p.kind == "bsd"]
    assert bsd == [(5, "a", "4.2BSD", 2), (6, "b", "swap", 2), (7, "d", "4.2BSD", 2), (8, "e", "4.2BSD", 2)]
    assert [(p.number, check) for p, check in detect.candidates(table)] == [(5, "openbsd")]
    assert detect.partition_to_resize(table) == 8


def test_netbsd_root_candidate_with_swap_last() -> None:
    parts = {"a": (2048, 900000, FS_BSDFFS), "b": (902048, 146528, FS_SWAP)}
    img = _bsd_disk("netbsd", disklabel.build("netbsd", 1048576, 2048, 1048576 - 2048, parts), 0xA9, 2048)
    table = detect.parse_table(img.read)
    assert [(p.number, check) for p, check in detect.candidates(table)] == [(5, "netbsd")]
    assert detect.partition_to_resize(table) == 6  # swap: FilesystemResizeUnmounted leaves it


def test_bsd_slice_without_label_is_itself_the_candidate() -> None:
    img = Image()
    put_mbr(img, 0, [(0xA9, 2048, 100000)])
    table = detect.parse_table(img.read)
    assert [p.kind for p in table.partitions] == ["primary"]
    assert [(p.number, check) for p, check in detect.candidates(table)] == [(1, "netbsd")]


def test_fix_partition_table_plan_bsd() -> None:
    from tasks import fix_partition_table as fpt

    img = _bsd_disk("openbsd", openbsd(), 0xA6, 64)
    new_disk = 4 * GIB
    mbr, lba, raw = fpt.plan_bsd(img.read(0, 512), lambda n: img.read(n * 512, 512), new_disk, "openbsd")
    assert lba == 65
    assert disklabel.mbr_slices(mbr)[-1] == (2, "a6", 64, new_disk - 64)
    grown = disklabel.parse(raw, "openbsd")
    assert grown.secperunit == new_disk and grown.get("e").end > new_disk - 32
    # already grown: nothing to do
    img.sector(0)[:] = mbr
    img.sector(65)[:] = raw
    assert fpt.plan_bsd(mbr, lambda n: img.read(n * 512, 512), new_disk, "openbsd") is None
    with pytest.raises(TaskError, match="No netbsd MBR partition"):
        fpt.plan_bsd(mbr, lambda n: img.read(n * 512, 512), new_disk, "netbsd")


def test_ufs_version_and_kernel_support(tmp_path) -> None:
    from helper import ufs

    data = bytearray(128 * 1024)
    assert ufs.ufs_version(lambda o, n: bytes(data[o : o + n])) is None
    struct.pack_into("<I", data, 8192 + 1372, ufs.UFS1_MAGIC)
    assert ufs.ufs_version(lambda o, n: bytes(data[o : o + n])) == "ufs1"
    struct.pack_into("<I", data, 65536 + 1372, ufs.UFS2_MAGIC)
    assert ufs.ufs_version(lambda o, n: bytes(data[o : o + n])) == "ufs2"
    image = tmp_path / "fs"
    image.write_bytes(data)
    assert ufs.linux_ufstype(image) == "ufs2"
    proc = tmp_path / "filesystems"
    proc.write_text("nodev\tsysfs\nnodev\ttmpfs\n\text4\n")
    with pytest.raises(TaskError, match="--kernel custom"):
        ufs.require_kernel_support("openbsd", proc)
    proc.write_text("nodev\tsysfs\n\text4\n\tufs\n")
    ufs.require_kernel_support("openbsd", proc)
