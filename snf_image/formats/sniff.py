"""What the image's first bytes are, from libmagic restricted to what sniffing needs.

libmagic runs on untrusted bytes, so it runs with only its magic database (the rules that
recognize gzip, xz, zstd, qcow2, VMDK, VHD, VHDX, VDI, ext2/3/4, NTFS and ISO 9660): its
built-in parsers for ELF, CDF (OLE2), tar, JSON, CSV, SIMH tapes, text encodings and
program-source tokens are turned off, and its recursion, indirection, regex and read-size
limits are set low. Two questions are answered here: the *container* (decoded in the stream,
converted in the sandbox, or refused) and the *content* against the declared ``img_format``.
"""

from __future__ import annotations

import functools

import magic

from ..contract.constants import FORMAT_DISKDUMP, FORMAT_EXTDUMP, FORMAT_NTFSDUMP
from ..errors import ImageError

#: How much of the stream is sniffed: the whole header section of a VHDX (its region table
#: sits at 192 KiB) and of an ISO 9660 (its volume descriptor at 32 KiB).
SNIFF_BYTES = 1024 * 1024

RAW, GZIP, XZ, ZSTD = "raw", "gzip", "xz", "zstd"
#: Container formats, named as qemu's drivers are.
QCOW2, VMDK, VPC, VHDX, VDI = "qcow2", "vmdk", "vpc", "vhdx", "vdi"
COMPRESSED = (GZIP, XZ, ZSTD)
CONTAINERS = (QCOW2, VMDK, VPC, VHDX, VDI)
#: What messages call each kind.
NAMES = {RAW: "raw", GZIP: "gzip", XZ: "xz", ZSTD: "zstd", QCOW2: "qcow2", VMDK: "VMDK", VPC: "VHD"}
NAMES.update({VHDX: "VHDX", VDI: "VDI"})

# libmagic's MAGIC_NO_CHECK_* flags; CSV, JSON and SIMH are newer than python-magic's constants.
_NO_CHECK_CSV, _NO_CHECK_JSON, _NO_CHECK_SIMH = 0x080000, 0x400000, 0x800000
RESTRICTED_FLAGS = (
    magic.MAGIC_NO_CHECK_COMPRESS
    | magic.MAGIC_NO_CHECK_TAR
    | magic.MAGIC_NO_CHECK_APPTYPE
    | magic.MAGIC_NO_CHECK_ELF
    | magic.MAGIC_NO_CHECK_TEXT
    | magic.MAGIC_NO_CHECK_CDF
    | magic.MAGIC_NO_CHECK_TOKENS
    | magic.MAGIC_NO_CHECK_ENCODING
    | _NO_CHECK_CSV
    | _NO_CHECK_JSON
    | _NO_CHECK_SIMH
)
#: libmagic's defaults are 50 (indirection, named-rule recursion), 8 KiB (regex), 7 MiB (bytes).
RESTRICTED_PARAMS = {
    magic.MAGIC_PARAM_INDIR_MAX: 8,
    magic.MAGIC_PARAM_NAME_MAX: 16,
    magic.MAGIC_PARAM_REGEX_MAX: 1024,
    magic.MAGIC_PARAM_BYTES_MAX: SNIFF_BYTES,
    magic.MAGIC_PARAM_ELF_PHNUM_MAX: 0,
    magic.MAGIC_PARAM_ELF_SHNUM_MAX: 0,
    magic.MAGIC_PARAM_ELF_NOTES_MAX: 0,
}

#: libmagic's descriptions of what we read, longest prefix first where they overlap.
_SNIFFED = (
    ("gzip compressed data", GZIP),
    ("XZ compressed data", XZ),
    ("Zstandard compressed data", ZSTD),
    ("QEMU QCOW Image (v2)", QCOW2),
    ("QEMU QCOW Image (v3)", QCOW2),
    ("VMware4 disk image", VMDK),
    ("Microsoft Disk Image eXtended", VHDX),
    ("Microsoft Disk Image, Virtual Server or Virtual PC", VPC),
    ("VirtualBox Disk Image", VDI),
)
_REFUSED = (
    ("QEMU QCOW Image (v1)", "qcow (version 1)"),
    ("QEMU QED Image", "QED"),
    ("VMware3 disk image", "VMware 3 (COWD)"),
    ("bzip2 compressed data", "bzip2"),
)
#: A VMDK descriptor file: the disk's data lives in other files (its extents).
VMDK_DESCRIPTOR_FILE = b"# Disk DescriptorFile"


@functools.cache
def _magic() -> magic.Magic:
    sniffer = magic.Magic()
    magic.magic_setflags(sniffer.cookie, sniffer.flags | RESTRICTED_FLAGS)
    for param, value in RESTRICTED_PARAMS.items():
        sniffer.setparam(param, value)
    return sniffer


def describe(head: bytes) -> str:
    """libmagic's description of the first bytes, with the restricted parser set."""
    return _magic().from_buffer(head[:SNIFF_BYTES])


def detect_container(head: bytes) -> str:
    """RAW, a compression (COMPRESSED) or a container (CONTAINERS); ImageError for what we never read."""
    if head.startswith(VMDK_DESCRIPTOR_FILE):
        return VMDK  # its header check names the extents it refers to and refuses it
    text = describe(head)
    for prefix, kind in _SNIFFED:
        if text.startswith(prefix):
            return kind
    for prefix, name in _REFUSED:
        if text.startswith(prefix):
            raise ImageError(
                f"the image is a {name} file, which snf-image does not read;"
                " convert it to raw, qcow2, VMDK, VHD, VHDX or VDI"
            )
    return RAW


def content_kind(head: bytes) -> str:
    """What the decoded bytes look like: 'ext', 'ntfs', 'iso9660' or 'other'."""
    text = describe(head)
    if " ext2 filesystem" in text or " ext3 filesystem" in text or " ext4 filesystem" in text:
        return "ext"
    if 'OEM-ID "NTFS    "' in text:
        return "ntfs"
    if text.startswith("ISO 9660"):
        return "iso9660"
    return "other"


def check_declared_format(img_format: str, head: bytes) -> None:
    """Refuse an image whose bytes contradict its declared img_format."""
    kind = content_kind(head)
    expected = {FORMAT_EXTDUMP: "ext", FORMAT_NTFSDUMP: "ntfs"}.get(img_format)
    names = {"ext": "an ext2/3/4 filesystem", "ntfs": "an NTFS filesystem", "iso9660": "an ISO 9660 CD image"}
    if expected is not None and kind != expected:
        found = names.get(kind, "not " + names[expected])
        raise ImageError(f"img_format is {img_format} but the image is {found}")
    if img_format == FORMAT_DISKDUMP and kind in names:
        hint = {"ext": "; use img_format=extdump", "ntfs": "; use img_format=ntfsdump"}.get(kind, "")
        raise ImageError(f"img_format is diskdump but the image is {names[kind]}, not a whole disk{hint}")
