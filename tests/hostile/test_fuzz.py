"""Hypothesis against the parsers of untrusted bytes: never anything but their documented error.

On the host: format sniffing (libmagic, restricted) and the container header checks, which read
the image; the result and progress readers, the helper's messages and the contract's decoding,
which read the helper VM. In the jail: the partition-table parser and the disklabel reader, which
read the image's first sectors. Each property is "the documented error type or a value", plus the
round trips where a writer exists. Bounded and derandomized, so that every run (CI's too) tries
the same few hundred inputs in a few seconds; a failure prints the input that found it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helper import detect, disklabel
from helper.commands import TaskError
from snf_image import schemas
from snf_image.contract import codec, constants, messages
from snf_image.contract.messages import HelperLine, MessageError, Result
from snf_image.contract.rules import HostKey, PersonalityFile, Rules, RulesDisk, RulesError, RulesNic, RulesSettings
from snf_image.errors import ImageError
from snf_image.formats import headers, sniff
from snf_image.jail import channels
from snf_image.jail.channels import ProtocolViolation

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECTOR = 512
TOKEN = "ab" * 32

# --- the image's first bytes, on the host ----------------------------------------------------------

#: The first bytes of every kind the sniffer names (and of some it refuses), to start inputs from.
MAGICS = [
    b"",
    b"\x1f\x8b\x08\x00",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"QFI\xfb\x00\x00\x00\x03",
    b"QFI\xfb\x00\x00\x00\x01",
    b"QEMU QED",
    b"KDMV\x01\x00\x00\x00",
    b"COWD",
    b"# Disk DescriptorFile\n",
    b"conectix",
    b"vhdxfile",
    b"<<< Oracle VM VirtualBox Disk Image >>>\n",
    b"BZh91AY&SY",
    b"\x33\xc0\x8e\xd0\xbc\x00\x7c",  # an MBR's boot code
]


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=2048), st.sampled_from(["diskdump", "extdump", "ntfsdump"]))
def test_sniffing_never_fails_but_with_an_image_error(magic: bytes, tail: bytes, img_format: str) -> None:
    head = magic + tail
    try:
        kind = sniff.detect_container(head)
    except ImageError:
        return
    assert kind in (sniff.RAW, *sniff.COMPRESSED, *sniff.CONTAINERS)
    assert sniff.content_kind(head) in ("ext", "ntfs", "iso9660", "other")
    with contextlib.suppress(ImageError):
        sniff.check_declared_format(img_format, head)


#: qemu-img's own options for each container kind the header checks read.
CONTAINER_OPTIONS = {
    sniff.QCOW2: ["-f", "qcow2"],
    sniff.VMDK: ["-f", "vmdk", "-o", "subformat=monolithicSparse"],
    sniff.VPC: ["-f", "vpc"],
    sniff.VHDX: ["-f", "vhdx"],
    sniff.VDI: ["-f", "vdi"],
}
#: Where each kind's header lives: mutations land there (the VHDX region and metadata tables are far in).
HEADER_SPANS = {
    sniff.QCOW2: [(0, 512)],
    sniff.VMDK: [(0, 512), (512, 1024)],
    sniff.VPC: [(0, 512)],
    sniff.VHDX: [(0, 64), (64 * 1024, 512), (192 * 1024, 256), (2 << 20, 256)],
    sniff.VDI: [(0, 512)],
}


@functools.cache
def real_container(kind: str) -> bytes:
    """A small container of ``kind`` as qemu-img makes it (a VHD's footer-copy included)."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image"
        subprocess.run(["qemu-img", "create", "-q", *CONTAINER_OPTIONS[kind], str(image), "4M"], check=True)
        return image.read_bytes()


@st.composite
def mutated_container(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(CONTAINER_OPTIONS)))
    data = bytearray(real_container(kind))
    for _ in range(draw(st.integers(1, 8))):
        start, length = draw(st.sampled_from(HEADER_SPANS[kind]))
        at = draw(st.integers(start, min(start + length, len(data)) - 1))
        value = (
            draw(st.sampled_from([b"\x00", b"\xff", b"\x7f\xff\xff\xff", b"\xff" * 8]))
            if draw(st.booleans())
            else draw(st.binary(min_size=1, max_size=8))
        )
        data[at : at + len(value)] = value
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    return kind, bytes(data)


@FUZZ
@given(mutated_container())
def test_container_header_checks_never_fail_but_with_an_image_error(case: tuple[str, bytes]) -> None:
    kind, data = case
    fd = os.memfd_create("fuzz-container")
    try:
        os.write(fd, data)
        try:
            header = headers.read_header(kind, fd)
        except ImageError:
            return
        assert header.kind == kind and header.virtual_size > 0
        with contextlib.suppress(ImageError):
            headers.check_fits(header, 64 << 20)
    finally:
        os.close(fd)


def test_the_real_containers_pass_their_checks() -> None:
    """The seeds of the mutations are valid: the fuzzing starts from what the checks accept."""
    for kind in CONTAINER_OPTIONS:
        fd = os.memfd_create("container")
        try:
            os.write(fd, real_container(kind))
            assert abs(headers.read_header(kind, fd).virtual_size - (4 << 20)) < 64 << 10  # VHD rounds to CHS
        finally:
            os.close(fd)


# --- what the helper VM sends, on the host --------------------------------------------------------


@FUZZ
@given(
    st.lists(
        st.one_of(st.binary(max_size=80), st.sampled_from([b"SUCCESS ", b"ERROR: x", b"\n", b"\r\n", TOKEN.encode()])),
        max_size=12,
    )
)
def test_the_result_port_means_success_only_for_the_runners_one_line(parts: list[bytes]) -> None:
    data = b"".join(parts)
    verdict = channels.result_verdict(data, TOKEN)
    lines = [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip(b"\r")]
    if verdict is None:
        assert not lines
    elif verdict.success:
        assert lines == [b"SUCCESS " + TOKEN.encode()]
    else:
        assert lines != [b"SUCCESS " + TOKEN.encode()]


def encoded(value: object) -> bytes:
    return json.dumps(value).encode()


def encoded_line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


def rules_document(value: object) -> bytes:
    return json.dumps({"format": 1, "x": value}).encode()


def json_values() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    keys = st.sampled_from(["subtype", "task", "messages", "stderr", "type", "timestamp", "x"]) | st.text(max_size=8)

    def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
        return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5)

    return st.recursive(scalars, containers, max_leaves=12)


@FUZZ
@given(st.one_of(st.binary(max_size=200), json_values().map(encoded)))
def test_a_progress_line_is_a_helper_line_or_a_message_error(raw: bytes) -> None:
    try:
        line = HelperLine.from_json(raw)
    except MessageError:
        return
    assert HelperLine.from_json(line.to_json().encode()) == line


GOOD_LINE = b'{"subtype": "task-start", "task": "T"}\n'


@FUZZ
@given(
    st.lists(
        st.binary(max_size=300) | json_values().map(encoded_line) | st.sampled_from([b"\n", GOOD_LINE]), max_size=20
    )
)
def test_the_progress_reader_relays_valid_messages_or_stops(chunks: list[bytes]) -> None:
    relayed: list[dict] = []
    reader = channels.ProgressReader(relayed.append)
    try:
        for chunk in chunks:
            reader.feed(chunk)
        reader.finish()
    except ProtocolViolation:
        pass
    for message in relayed:
        assert message["type"] == constants.MSG_HELPER
        assert schemas.first_error("progress", message) is None


text = st.text(max_size=300)


@FUZZ
@given(st.sampled_from(["task-start", "task-end", "warning", "error"]), text)
def test_progress_lines_round_trip_through_the_reader(subtype: str, words: str) -> None:
    made = {
        "task-start": lambda: messages.task_start("Task" + str(len(words))),
        "task-end": lambda: messages.task_end("Task" + str(len(words))),
        "warning": lambda: messages.warning(words),
        "error": lambda: messages.error(words),
    }[subtype]()
    relayed: list[dict] = []
    reader = channels.ProgressReader(relayed.append)
    reader.feed(made.to_json().encode() + b"\n")
    (message,) = relayed
    assert {k: v for k, v in message.items() if k != "timestamp"} == {**made.to_object(), "type": "image-helper"}


@FUZZ
@given(text, st.from_regex(r"\A[0-9a-f]{64}\Z"))
def test_result_lines_round_trip(reason: str, token: str) -> None:
    failure = Result.failure(reason)
    assert Result.parse_line(failure.to_line().encode()) == failure
    assert "\n" not in failure.to_line()[:-1] and len(failure.reason) <= constants.RESULT_MAX_REASON
    assert Result.parse_line(Result.succeeded(token).to_line().encode()) == Result.succeeded(token)


def rules() -> st.SearchStrategy[Rules]:
    """Rules with every field exercised, as the host could write them."""
    words = st.text(max_size=30)
    optional = st.none() | words
    nic = st.builds(
        RulesNic,
        index=st.integers(0, 7),
        mac=optional,
        tags=st.lists(words, max_size=3).map(tuple),
        ip=optional,
        gateway6=optional,
    )
    disk = st.builds(RulesDisk, index=st.integers(0, 7), size_bytes=st.integers(0, 1 << 50), frontend_type=optional)
    personality = st.builds(PersonalityFile, path=words, contents=words, mode=st.integers(0, 0o7777))
    return st.builds(
        Rules,
        instance_name=words,
        img_format=words,
        properties=st.dictionaries(words, words, max_size=4),
        nics=st.lists(nic, max_size=3).map(tuple),
        disks=st.lists(disk, min_size=1, max_size=3).map(tuple),
        settings=st.builds(
            RulesSettings, dhcp_tags=st.lists(words, max_size=2).map(tuple), cloud_init_debug=st.booleans()
        ),
        result_token=st.from_regex(r"\A[0-9a-f]{64}\Z"),
        password=optional,
        personality=st.lists(personality, max_size=2).map(tuple),
        files=st.dictionaries(words, words, max_size=2),
        ssh_host_keys=st.lists(st.builds(HostKey, kind=words, private=words, public=words), max_size=2).map(tuple),
        only_tasks=st.none() | st.lists(words, max_size=2).map(tuple),
    )


@FUZZ
@given(rules())
def test_rules_round_trip(made: Rules) -> None:
    assert Rules.from_json(made.to_json()) == made


@FUZZ
@given(st.one_of(st.binary(max_size=200), json_values().map(rules_document), json_values().map(encoded)))
def test_decoding_is_a_value_or_a_decode_error(raw: bytes) -> None:
    with contextlib.suppress(RulesError):
        Rules.from_json(raw)
    with contextlib.suppress(ValueError):  # DecodeError is a ValueError, as are json's and UTF-8's errors
        codec.decode(HelperLine, json.loads(raw))


# --- the image's partition tables, in the jail --------------------------------------------------------


class Disk:
    """A sparse disk of ``size`` bytes, sector number -> contents, read as read_table reads a device."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sectors: dict[int, bytes] = {}

    def put(self, offset: int, data: bytes) -> None:
        for i in range(0, len(data), SECTOR):
            n, skip = divmod(offset + i, SECTOR)
            old = bytearray(self.sectors.get(n, bytes(SECTOR)))
            chunk = data[i : i + SECTOR - skip]
            old[skip : skip + len(chunk)] = chunk
            self.sectors[n] = bytes(old)

    def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        out = bytearray()
        while len(out) < length:
            n, skip = divmod(offset + len(out), SECTOR)
            out += self.sectors.get(n, bytes(SECTOR))[skip:]
        return bytes(out[:length])


LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MBR_TYPES = [0x00, 0x05, 0x0F, 0x85, 0xEE, 0x07, 0x83, 0xA5, 0xA6, 0xA9, 0x82]
sector_numbers = st.integers(0, 4096)


def mbr(entries: list[tuple[int, int, int]]) -> bytes:
    sector = bytearray(SECTOR)
    for i, (kind, start, size) in enumerate(entries[:4]):
        sector[446 + 16 * i : 462 + 16 * i] = struct.pack("<B3sB3sII", 0, bytes(3), kind, bytes(3), start, size)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


entry = st.tuples(st.sampled_from(MBR_TYPES) | st.integers(0, 255), sector_numbers, st.integers(0, (1 << 32) - 1))


def gpt(entries: list[tuple[str, int, int]], count: int, entry_size: int, entries_lba: int) -> tuple[bytes, bytes]:
    """A GPT header with right CRCs and its entries array."""
    table = bytearray(count * entry_size)
    for i, (guid, first, last) in enumerate(entries[:count]):
        raw = uuid.UUID(guid).bytes_le + uuid.uuid4().bytes_le + struct.pack("<QQ", first, last)
        table[i * entry_size : i * entry_size + len(raw)] = raw
    header = bytearray(SECTOR)
    header[0:8] = b"EFI PART"
    struct.pack_into("<II", header, 8, 0x10000, 92)
    struct.pack_into("<QIII", header, 72, entries_lba, count, entry_size, zlib.crc32(table))
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:92])))
    return bytes(header), bytes(table)


@st.composite
def hostile_disk(draw: st.DrawFn) -> Disk:
    disk = Disk(draw(st.integers(0, 8 << 20)))
    if draw(st.booleans()):
        disk.put(0, mbr(draw(st.lists(entry, max_size=4))))
    for _ in range(draw(st.integers(0, 6))):  # EBRs, disklabels, garbage where the entries point
        where = draw(sector_numbers) * SECTOR
        labels = st.builds(label_sector, st.sampled_from(sorted(disklabel.RAW)), st.binary())
        disk.put(where, draw(st.builds(mbr, st.lists(entry, max_size=4)) | st.binary(max_size=SECTOR) | labels))
    if draw(st.booleans()):
        guids = st.sampled_from([detect.GUID_FREEBSD_UFS, detect.GUID_LINUX_SWAP, LINUX_FS, str(uuid.UUID(int=0))])
        parts = draw(st.lists(st.tuples(guids, sector_numbers, sector_numbers), max_size=6))
        header, table = gpt(
            parts,
            draw(st.integers(0, 64)),
            draw(st.sampled_from([0, 64, 128, 256, 4096])),
            draw(st.sampled_from([2, 3, 1 << 20])),
        )
        disk.put(0, mbr([(0xEE, 1, 0xFFFFFFFF)]))
        disk.put(SECTOR, header)
        disk.put(2 * SECTOR, table)
    return disk


@FUZZ
@given(hostile_disk())
def test_partition_tables_parse_or_fail_with_a_task_error(disk: Disk) -> None:
    started = time.monotonic()
    try:
        table = detect.parse_table(disk.read)
    except TaskError:
        return
    assert table.label in ("msdos", "gpt")
    detect.partition_to_resize(table)
    detect.candidates(table)
    assert time.monotonic() - started < 2, "the parse took too long"


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from([0x07, 0x83, 0x82, 0x0C, 0x8E]), st.integers(1, 1 << 31), st.integers(1, 1 << 31)),
        min_size=1,
        max_size=4,
    )
)
def test_primary_partitions_round_trip(entries: list[tuple[int, int, int]]) -> None:
    disk = Disk(1 << 40)
    disk.put(0, mbr(entries))
    table = detect.parse_table(disk.read)
    assert [(p.number, p.type, p.start, p.size) for p in table.partitions] == [
        (i, f"{kind:02x}", start, size) for i, (kind, start, size) in enumerate(entries, start=1)
    ]


# --- BSD disklabels, in the jail ---------------------------------------------------------------------


def label_sector(flavour: str, noise: bytes, npart: int = 8) -> bytes:
    """Noise with the disklabel's magics, a partition count and a right checksum: what parse reads past."""
    sector = bytearray(noise[:SECTOR].ljust(SECTOR, b"\0"))
    struct.pack_into("<I", sector, 0, disklabel.MAGIC)
    struct.pack_into("<I", sector, 132, disklabel.MAGIC)
    struct.pack_into("<H", sector, 138, npart)
    struct.pack_into("<H", sector, 136, disklabel.checksum(bytes(sector), npart))
    return bytes(sector)


@FUZZ
@given(
    st.sampled_from(sorted(disklabel.RAW)),
    st.binary(min_size=SECTOR, max_size=SECTOR),
    st.integers(0, 20),
    st.integers(0, 1 << 32),
    st.integers(1, 1 << 32),
    st.booleans(),
)
def test_disklabels_parse_or_fail_with_a_label_error(
    flavour: str, noise: bytes, npart: int, slice_start: int, slice_size: int, sealed: bool
) -> None:
    sector = label_sector(flavour, noise, npart) if sealed else noise
    try:
        label = disklabel.parse(sector, flavour, slice_start)
    except disklabel.LabelError:
        return
    disklabel.kernel_partitions(label, slice_start, slice_size, 5)
    label.last()
    try:
        grown = disklabel.grow(label, slice_start + 2 * slice_size, slice_start, 2 * slice_size)
        assert disklabel.parse(disklabel.to_bytes(grown), flavour, slice_start).partitions == grown.partitions
    except disklabel.LabelError:
        pass


@FUZZ
@given(
    st.sampled_from(["openbsd", "netbsd"]),
    st.integers(64, 1 << 31),
    st.integers(1, 63),
    st.dictionaries(
        st.sampled_from("abefgh"),
        st.tuples(st.integers(0, 1 << 31), st.integers(0, 1 << 31), st.sampled_from([0, 1, 7])),
        max_size=5,
    ),
)
def test_built_disklabels_round_trip(
    flavour: str, slice_size: int, slice_start: int, partitions: dict[str, tuple[int, int, int]]
) -> None:
    label = disklabel.build(flavour, slice_start + slice_size, slice_start, slice_size, partitions)
    again = disklabel.parse(disklabel.to_bytes(label), flavour)
    assert again.partitions == label.partitions and again.secperunit == label.secperunit
    for letter, (offset, size, fstype) in partitions.items():
        assert label.get(letter) == disklabel.BsdPartition(letter, size, offset, fstype)
