"""The custom kernel's recipe: the config fragment, the check that it survived, the cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from snf_image import helperimage
from snf_image.helperimage import kernel as build


def test_fragment_of_the_repository_names_what_the_jail_needs() -> None:
    fragment = build.config_fragment()
    for option in (
        "CONFIG_UFS_FS_WRITE",
        "CONFIG_BSD_DISKLABEL",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_EXT4_FS",
        "CONFIG_XFS_FS",
        "CONFIG_FUSE_FS",
        "CONFIG_DEVTMPFS",
        "CONFIG_BLK_DEV_INITRD",
    ):
        assert fragment[option] == "y", option
    assert fragment["CONFIG_SERIAL_8250_NR_UARTS"] == "4"
    assert "CONFIG_MODULES" not in fragment  # everything built in: the initrd loads nothing


def test_fragment_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "k.config"
    bad.write_text("# fine\nCONFIG_A=y\nUFS=y\n")
    with pytest.raises(ValueError, match="UFS=y"):
        build.config_fragment(bad)


def test_missing_options_reports_what_kconfig_dropped() -> None:
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=4\n"
    assert build.missing_options({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "8"}, config) == [
        "CONFIG_B=y",
        "CONFIG_C=8",
    ]
    assert build.missing_options({"CONFIG_A": "y"}, config) == []


def test_kernel_key_follows_config_and_source() -> None:
    key = build.kernel_key("6.1.1-1", "CONFIG_A=y\n")
    assert key == build.kernel_key("6.1.1-1", "CONFIG_A=y\n")
    assert key != build.kernel_key("6.1.2-1", "CONFIG_A=y\n")
    assert key != build.kernel_key("6.1.1-1", "CONFIG_A=y\nCONFIG_B=y\n")


def test_unknown_kernel_flavour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        helperimage.build(tmp_path / "h", tmp_path / "c", kernel="vanilla")
