"""What gnt-os diagnose sees of snf-image, judged by Ganeti 3.0's own OS loader (no cluster needed)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from snf_image import osstatus
from snf_image.helperimage.codelayer import helper_version
from tests.osenv import REPO

GANETI_LIB = Path("/usr/share/ganeti/3.0")


@pytest.fixture
def ganeti_backend():
    """Ganeti's backend module (scripts/install-deps --tests installs ganeti)."""
    sys.path.insert(0, str(GANETI_LIB))
    try:
        from ganeti import backend

        yield backend
    finally:
        sys.path.remove(str(GANETI_LIB))


def _os_definition(root: Path, marker: Path) -> Path:
    """The OS definition as the Debian package lays it out: files, plus ganeti_api_version -> marker."""
    os_dir = root / "snf-image"
    os_dir.mkdir(parents=True)
    for name in ("create", "import", "export", "rename", "verify", "variants.list", "parameters.list"):
        shutil.copy2(REPO / name, os_dir / name)
    (os_dir / "ganeti_api_version").symlink_to(marker)
    return os_dir


def _helper(helper_dir: Path, version: str) -> None:
    helper_dir.mkdir()
    for name in ("image", "kernel", "initrd"):
        (helper_dir / name).write_bytes(b"")
    (helper_dir / "version").write_text(version + "\n")


def test_ganeti_reports_the_command_until_the_helper_matches(tmp_path, ganeti_backend):
    marker = tmp_path / "state" / "ganeti_api_version"
    marker.parent.mkdir()
    _os_definition(tmp_path / "os", marker)
    helper_dir = tmp_path / "helper"

    assert osstatus.record(helper_dir, marker) is not None
    ok, why = ganeti_backend._TryOSFromDisk("snf-image", base_dir=str(tmp_path / "os"))
    assert not ok
    assert "snf-image helper build" in why, why

    _helper(helper_dir, "0.0.1+0123456789abcdef")  # built by an older snf-image
    assert "does not match" in osstatus.record(helper_dir, marker)
    ok, why = ganeti_backend._TryOSFromDisk("snf-image", base_dir=str(tmp_path / "os"))
    assert not ok and "snf-image helper build" in why, why

    (helper_dir / "version").write_text(helper_version() + "\n")
    assert osstatus.record(helper_dir, marker) is None
    ok, loaded = ganeti_backend._TryOSFromDisk("snf-image", base_dir=str(tmp_path / "os"))
    assert ok, loaded
    assert loaded.api_versions == [int(osstatus.GANETI_API_VERSION)]
    assert loaded.supported_variants == ["default"]


def test_without_an_installed_os_definition_nothing_is_written(tmp_path):
    marker = tmp_path / "absent" / "ganeti_api_version"
    assert osstatus.record(tmp_path / "helper", marker) is not None
    assert not marker.parent.exists()


def test_the_checkout_and_the_package_agree_on_the_api_version_file():
    assert (REPO / "ganeti_api_version").read_text().strip() == osstatus.GANETI_API_VERSION
    links = [
        line.split()
        for line in (REPO / "debian" / "snf-image.links").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert links == [[str(osstatus.API_VERSION_FILE).lstrip("/"), "usr/share/ganeti/os/snf-image/ganeti_api_version"]]
