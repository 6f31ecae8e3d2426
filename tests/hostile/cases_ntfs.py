"""NTFS and the Windows registry: a Windows image whose filesystem or hives are hostile.

The image is the synthetic Windows of tests/wintree.py (mkntfs, a Windows tree, real hives
written with hivex), changed in one way. ntfs-3g and hivex read it in the helper only; a
refusal must name what was wrong, a success must leave the paths the hostile entries point at
as the image had them. Read back from outside with ntfs-3g, read-only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from tests import wintree
from tests.hostile.case import Case
from tests.hostile.lab import Deployment, Lab

MiB = 1 << 20
PARTITION_START = MiB  # wintree.build_image's partition 1
SAM = "Windows/System32/config/SAM"
UNATTEND = "Windows/Panther/unattend.xml"


def windows(lab: Lab, edit: Callable[[Path], None] | None = None, name: str = "win.img") -> Path:
    """The synthetic Windows image changed by ``edit``; the SAM hive as built is kept in the lab's work directory."""

    def keep_sam_then_edit(root: Path) -> None:
        (lab.work / "SAM").write_bytes((root / SAM).read_bytes())
        if edit is not None:
            edit(root)

    return wintree.build_image(lab.image_dir / name, wintree.WindowsSpec(), edit=keep_sam_then_edit)


def deploy(image: Path) -> Deployment:
    return Deployment(f"local://{image.name}", properties={"USERS": "Administrator"}, disk_size=96 * MiB)


def garbage_mft(lab: Lab) -> Deployment:
    """The first 64 records of the Master File Table ($MFT itself, $MFTMirr, root directory...) overwritten."""
    image = windows(lab)
    with open(image, "r+b") as f:
        boot = os.pread(f.fileno(), 512, PARTITION_START)
        sector, per_cluster = struct.unpack_from("<HB", boot, 0x0B)
        (mft_cluster,) = struct.unpack_from("<Q", boot, 0x30)
        os.pwrite(f.fileno(), os.urandom(64 * 1024), PARTITION_START + mft_cluster * sector * per_cluster)
    return deploy(image)


def garbage_mft_declared(lab: Lab) -> Deployment:
    """The garbage MFT with OSFAMILY and ROOT_PARTITION given: no detection, ntfs-3g meets it when mounting."""
    deployment = garbage_mft(lab)
    deployment.properties.update(OSFAMILY="windows", ROOT_PARTITION="1")
    return deployment


def garbage_boot_sector(lab: Lab) -> Deployment:
    """An NTFS boot sector claiming 2^40 sectors and 128 sectors per cluster on a 63 MiB partition."""
    image = windows(lab)
    with open(image, "r+b") as f:
        boot = bytearray(os.pread(f.fileno(), 512, PARTITION_START))
        struct.pack_into("<B", boot, 0x0D, 128)
        struct.pack_into("<Q", boot, 0x28, 1 << 40)
        os.pwrite(f.fileno(), bytes(boot), PARTITION_START)
    return deploy(image)


def garbage_system_hive(lab: Lab) -> Deployment:
    def edit(root: Path) -> None:
        (root / "Windows/System32/config/SYSTEM").write_bytes(b"regf" + os.urandom(64 * 1024))

    return deploy(windows(lab, edit))


def huge_hive(name: str) -> Callable[[Lab], Deployment]:
    """The hive ``name`` grown to 4 GiB (sparse): more than the helper's memory."""

    def make(lab: Lab) -> Deployment:
        def edit(root: Path) -> None:
            with open(root / "Windows/System32/config" / name, "r+b") as f:
                f.truncate(4 << 30)

        return deploy(windows(lab, edit))

    return make


def unattend_links_to_sam(lab: Lab) -> Deployment:
    """Windows/Panther/unattend.xml a symbolic link to the SAM hive: the answer file is written over it."""

    def edit(root: Path) -> None:
        (root / UNATTEND).unlink()
        (root / UNATTEND).symlink_to("../System32/config/SAM")

    return deploy(windows(lab, edit))


OTHER_XML = "Windows/System32/other.xml"


def unattend_links_to_valid_xml(lab: Lab) -> Deployment:
    """Windows/Panther/unattend.xml a symbolic link to a valid answer file elsewhere in the image."""

    def edit(root: Path) -> None:
        (root / UNATTEND).rename(root / OTHER_XML)
        (root / UNATTEND).symlink_to("../System32/other.xml")
        (lab.work / "other.xml").write_bytes((root / OTHER_XML).read_bytes())

    return deploy(windows(lab, edit))


def link_replaced_target_kept(lab: Lab) -> None:
    """The answer file was written at its own path, replacing the link; what the link pointed at is as it was."""
    with wintree.deployed(lab.disk, lab.work / "check") as (root, _, _):
        assert (root / OTHER_XML).read_bytes() == (lab.work / "other.xml").read_bytes(), "the link's target changed"
        assert not (root / UNATTEND).is_symlink()
        assert b"Change user passwords" in (root / UNATTEND).read_bytes()


def panther_links_to_config(lab: Lab) -> Deployment:
    """Windows/Panther a symbolic link to the registry's directory."""

    def edit(root: Path) -> None:
        (root / UNATTEND).unlink()
        (root / "Windows/Panther").rmdir()
        (root / "Windows/Panther").symlink_to("System32/config")

    return deploy(windows(lab, edit))


def software_read_in_place(lab: Lab) -> None:
    """hivex read the 4 GiB SOFTWARE hive in place: it is as it was, and the answer file was installed."""
    with wintree.deployed(lab.disk, lab.work / "check") as (root, _, _):
        assert (root / "Windows/System32/config/SOFTWARE").stat().st_size == 4 << 30
        assert b"Change user passwords" in (root / UNATTEND).read_bytes()


def sam_untouched(lab: Lab) -> None:
    with wintree.deployed(lab.disk, lab.work / "check") as (root, _, _):
        sam = root / SAM
        assert not sam.is_symlink() and sam.read_bytes() == (lab.work / "SAM").read_bytes(), "the SAM hive was changed"
        listed = sorted(p.name for p in (root / "Windows/System32/config").iterdir())
    assert listed == ["SAM", "SOFTWARE", "SYSTEM"], listed


CASES = [
    Case("ntfs-garbage-mft", "NTFS whose first 64 MFT records are random bytes", garbage_mft,
         r"ntfs|mount|operating system|root partition"),
    Case("ntfs-garbage-mft-declared", "the same with OSFAMILY=windows and ROOT_PARTITION=1: straight to the mount",
         garbage_mft_declared, r"partition 1|mount|ntfs"),
    Case("ntfs-garbage-boot-sector", "NTFS boot sector claiming 2^40 sectors of 64 KiB clusters",
         garbage_boot_sector, r"ntfs|mount|operating system|root partition"),
    Case("ntfs-garbage-system-hive", "SYSTEM hive of random bytes after a valid signature", garbage_system_hive,
         r"SYSTEM|hive|registry"),
    Case("ntfs-huge-software-hive", "a 4 GiB (sparse) SOFTWARE hive (read only)", huge_hive("SOFTWARE"),
         harmless=software_read_in_place),
    Case("ntfs-huge-system-hive", "a 4 GiB (sparse) SYSTEM hive (the one the tasks edit)", huge_hive("SYSTEM"),
         r"SYSTEM.*larger"),
    Case("ntfs-unattend-link", "Windows/Panther/unattend.xml a symbolic link to the SAM hive",
         unattend_links_to_sam, r"unattend\.xml", harmless=sam_untouched),
    Case("ntfs-unattend-link-xml", "Windows/Panther/unattend.xml a symbolic link to a valid answer file elsewhere",
         unattend_links_to_valid_xml, harmless=link_replaced_target_kept),
    Case("ntfs-panther-link", "Windows/Panther a symbolic link to System32/config", panther_links_to_config,
         r"Panther", harmless=sam_untouched),
]  # fmt: skip
