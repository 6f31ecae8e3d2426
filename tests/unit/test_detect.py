"""Partition-table parsing and OS detection on synthetic sectors (no devices, no mounts)."""

from __future__ import annotations

import struct
import uuid
import zlib

import pytest

from helper import detect, disklabel
from helper.commands import TaskError
from helper.detect import Partition, Table

SECTOR = 512


class Image:
    """A sparse in-memory disk: sector number -> bytes."""

    def __init__(self) -> None:
        self.sectors: dict[int, bytearray] = {}

    def sector(self, n: int) -> bytearray:
        return self.sectors.setdefault(n, bytearray(SECTOR))

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            n, skip = divmod(offset + len(out), SECTOR)
            out += bytes(self.sectors.get(n, bytes(SECTOR)))[skip:]
        return bytes(out[:length])


def put_mbr(img: Image, lba: int, entries: list[tuple[int, int, int]]) -> None:
    sector = img.sector(lba)
    for i, (ptype, start, size) in enumerate(entries):
        raw = struct.pack("<B3sB3sII", 0, b"\0\0\0", ptype, b"\0\0\0", start, size)
        sector[446 + 16 * i : 446 + 16 * (i + 1)] = raw
    sector[510:512] = b"\x55\xaa"


def msdos_with_logicals() -> Image:
    img = Image()
    # p1 linux, p2 extended [100000, +100000) with logicals 5 (ntfs) and 6 (linux), p3 bsd
    put_mbr(img, 0, [(0x83, 2048, 10000), (0x05, 100000, 100000), (0xA5, 300000, 5000)])
    put_mbr(img, 100000, [(0x07, 2048, 20000), (0x05, 30000, 60000)])
    put_mbr(img, 130000, [(0x83, 2048, 50000)])
    return img


def test_msdos_primary_extended_logical() -> None:
    table = detect.parse_table(msdos_with_logicals().read)
    assert table.label == "msdos"
    assert [(p.number, p.kind, p.type, p.start, p.size) for p in table.partitions] == [
        (1, "primary", "83", 2048, 10000),
        (2, "extended", "05", 100000, 100000),
        (3, "primary", "a5", 300000, 5000),
        (5, "logical", "07", 102048, 20000),
        (6, "logical", "83", 132048, 50000),
    ]


def test_ebr_loop_terminates() -> None:
    img = Image()
    put_mbr(img, 0, [(0x0F, 1000, 10000)])
    put_mbr(img, 1000, [(0x83, 1, 100), (0x05, 2000, 100)])
    put_mbr(img, 3000, [(0x83, 1, 100), (0x05, 2000, 100)])  # points back to itself
    table = detect.parse_table(img.read)
    assert [p.number for p in table.partitions] == [1, 5, 6]


def test_no_signature_is_an_error() -> None:
    with pytest.raises(TaskError, match="No partition table"):
        detect.parse_table(Image().read)


def put_gpt(img: Image, types: list[tuple[int, str, int, int]], count: int = 128) -> None:
    """A protective MBR and a primary GPT (header and entries at LBA 2) with their CRCs."""
    put_mbr(img, 0, [(0xEE, 1, 0xFFFFFFFF)])
    for index, guid, first, last in types:
        offset = 2 * SECTOR + index * 128
        entry = uuid.UUID(guid).bytes_le + uuid.uuid4().bytes_le + struct.pack("<QQ", first, last)
        n, skip = divmod(offset, SECTOR)
        img.sector(n)[skip : skip + len(entry)] = entry
    seal_gpt(img, count)


def seal_gpt(img: Image, count: int = 128) -> None:
    """(Re)write the GPT header of ``img`` for ``count`` entries at LBA 2, with both CRCs right."""
    header = img.sector(1)
    header[0:8] = b"EFI PART"
    entries_crc = zlib.crc32(img.read(2 * SECTOR, count * 128))
    header[12:20] = struct.pack("<II", 92, 0)
    header[72:92] = struct.pack("<QIII", 2, count, 128, entries_crc)
    header[16:20] = struct.pack("<I", zlib.crc32(bytes(header[:92])))


def test_gpt_types_and_numbers() -> None:
    img = Image()
    put_gpt(
        img,
        [
            (0, detect.GUID_BIOS_BOOT, 34, 2047),
            (1, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 2048, 9999),
            (4, detect.GUID_MS_BASIC_DATA, 10000, 19999),
        ],
    )
    table = detect.parse_table(img.read)
    assert table.label == "gpt"
    assert [(p.number, p.type, p.end) for p in table.partitions] == [
        (1, detect.GUID_BIOS_BOOT, 2047),
        (2, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 9999),
        (5, detect.GUID_MS_BASIC_DATA, 19999),
    ]


def test_gpt_checked_as_the_kernel_checks_it() -> None:
    """A header or entries whose CRC does not match, or entries past the disk's end: the kernel sees no GPT."""
    img = Image()
    put_gpt(img, [(0, "0FC63DAF-8483-4772-8E79-3D69D8477DE4", 2048, 9999)])
    img.sector(2)[40] ^= 1  # an entry changed behind the header's back
    with pytest.raises(TaskError, match="their CRC does not match"):
        detect.parse_table(img.read)
    seal_gpt(img)
    assert [p.number for p in detect.parse_table(img.read).partitions] == [1]
    img.sector(1)[88] ^= 1  # the header changed, its CRC not
    with pytest.raises(TaskError, match=r"Corrupt GPT header \(its CRC does not match\)"):
        detect.parse_table(img.read)
    seal_gpt(img)
    with pytest.raises(TaskError, match="entries lie past the end of the disk"):
        detect.parse_table(lambda offset, length: img.read(offset, length)[: max(0, 4 * SECTOR - offset)])


def test_gpt_without_header_is_an_error() -> None:
    img = Image()
    put_mbr(img, 0, [(0xEE, 1, 1000)])
    with pytest.raises(TaskError, match="no GPT header"):
        detect.parse_table(img.read)


def test_partition_to_resize_is_the_one_ending_last() -> None:
    table = detect.parse_table(msdos_with_logicals().read)
    assert detect.partition_to_resize(table) == 3  # the BSD slice lies after the extended one
    img = Image()
    put_mbr(img, 0, [(0x05, 100000, 100000), (0x83, 2048, 10000)])
    put_mbr(img, 100000, [(0x83, 2048, 20000), (0x05, 30000, 60000)])
    put_mbr(img, 130000, [(0x82, 2048, 50000)])
    assert detect.partition_to_resize(detect.parse_table(img.read)) == 6
    gpt = Table("gpt", 512, (Partition(1, 5000, 100, "X"), Partition(2, 2048, 100, "Y")))
    assert detect.partition_to_resize(gpt) == 1
    assert detect.partition_to_resize(Table("gpt", 512, ())) is None


class Prober:
    """A scripted probe: partition number -> the family found, or the reason it is turned down."""

    def __init__(self, answers: dict[int, str]) -> None:
        self.answers = answers
        self.asked: list[tuple[int, str]] = []
        self.warnings: list[str] = []

    def __call__(self, number: int, check: str) -> str:
        self.asked.append((number, check))
        answer = self.answers.get(number, "nothing there")
        if answer.startswith("="):
            return answer[1:]
        raise detect.Rejected(answer)

    def detect(self, table: Table) -> tuple[str, int] | None:
        return detect.detect(table, self, self.warnings.append)


def test_detect_first_hit_wins_and_rejections_are_said() -> None:
    table = detect.parse_table(msdos_with_logicals().read)
    probe = Prober({1: "its ext4 filesystem has no /etc/fstab", 3: "=freebsd"})
    assert probe.detect(table) == ("freebsd", 3)
    assert probe.asked == [(1, "linux"), (3, "freebsd")]  # numbers in order; the a5 slice is checked for a UFS root
    assert probe.warnings == ["Partition 1 is not a linux root: its ext4 filesystem has no /etc/fstab"]
    assert Prober({1: "=linux", 3: "=freebsd"}).detect(table) == ("linux", 1)


def test_detect_windows_and_linux_checks() -> None:
    img = Image()
    put_mbr(img, 0, [(0x07, 2048, 1000), (0x83, 4096, 1000)])
    table = detect.parse_table(img.read)
    assert Prober({1: "=windows-legacy"}).detect(table) == ("windows-legacy", 1)
    probe = Prober({1: "its ntfs filesystem has no windows/system32", 2: "=linux"})
    assert probe.detect(table) == ("linux", 2)
    assert probe.asked == [(1, "windows"), (2, "linux")]
    probe = Prober({})
    assert probe.detect(table) is None
    assert probe.warnings == [
        "Partition 1 is not a windows root: nothing there",
        "Partition 2 is not a linux root: nothing there",
    ]


def bsd_slice(flavour: str, slot_type: int) -> Table:
    """An MBR disk with a Linux partition, then a BSD slice (disklabel: a root, b swap, e /home)."""
    img = Image()
    put_mbr(img, 0, [(0x83, 2048, 2048), (slot_type, 8192, 100000)])
    parts = {"a": (8192 + 16, 50000, disklabel.FS_BSDFFS), "b": (60000, 8000, disklabel.FS_SWAP),
             "e": (70000, 38192, disklabel.FS_BSDFFS)}  # fmt: skip
    img.sector(8193)[:] = disklabel.to_bytes(disklabel.build(flavour, 200000, 8192, 100000, parts))
    return detect.parse_table(img.read)


@pytest.mark.parametrize(("flavour", "slot_type"), [("openbsd", 0xA6), ("netbsd", 0xA9)])
def test_bsd_slices_are_checked_on_their_a_partition(flavour: str, slot_type: int) -> None:
    table = bsd_slice(flavour, slot_type)
    a = next(p for p in table.partitions if p.letter == "a")
    probe = Prober({a.number: f"={flavour}"})
    assert probe.detect(table) == (flavour, a.number) and a.number == 5  # a, b, e as 5, 6, 7
    assert probe.asked == [(1, "linux"), (5, flavour)]
    probe = Prober({5: "it holds no UFS (no UFS1 or UFS2 superblock)"})
    assert probe.detect(table) is None
    assert probe.warnings[-1] == f"Partition 5 is not a {flavour} root: it holds no UFS (no UFS1 or UFS2 superblock)"


def test_gpt_candidates() -> None:
    table = Table(
        "gpt",
        512,
        (
            Partition(1, 34, 2000, detect.GUID_BIOS_BOOT),
            Partition(2, 2048, 100, detect.GUID_FREEBSD_UFS),
            Partition(3, 4096, 100, detect.GUID_MS_BASIC_DATA),
            Partition(4, 8192, 100, detect.GUID_LINUX_SWAP),
            Partition(5, 9000, 100, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            Partition(6, 9100, 100, detect.GUID_EFI_SYSTEM),
            Partition(7, 9200, 100, detect.GUID_FREEBSD_BOOT),
            Partition(8, 9300, 100, detect.GUID_FREEBSD_SWAP),
            Partition(9, 9400, 100, detect.GUID_MS_RESERVED),
            Partition(10, 9500, 100, detect.GUID_MS_RECOVERY),
        ),
    )
    assert [(p.number, check) for p, check in detect.candidates(table)] == [
        (2, "freebsd"),
        (3, "windows"),
        (5, "linux"),
    ]


def test_freebsd_gpt_root_after_a_rejected_ufs_partition() -> None:
    table = Table(
        "gpt",
        512,
        (
            Partition(1, 40, 1024, detect.GUID_FREEBSD_BOOT),
            Partition(2, 2048, 16384, detect.GUID_FREEBSD_SWAP),
            Partition(3, 18432, 20000, detect.GUID_FREEBSD_UFS),
            Partition(4, 38432, 90000, detect.GUID_FREEBSD_UFS),
        ),
    )
    probe = Prober({3: "its UFS2 filesystem has no /etc/fstab", 4: "=freebsd"})
    assert probe.detect(table) == ("freebsd", 4)
    assert probe.warnings == ["Partition 3 is not a freebsd root: its UFS2 filesystem has no /etc/fstab"]


def test_windows_version_is_windows_for_now(tmp_path) -> None:
    assert detect.windows_version(tmp_path) == "windows"
