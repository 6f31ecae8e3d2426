"""SELinuxAutorelabel: the config reader and the decision, and runs against fake guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import selinux_autorelabel as sa
from tests.fakeguest import make_ctx, make_guest

ENFORCING = "# This file controls the state of SELinux\nSELINUX=enforcing\r\nSELINUXTYPE=targeted\n"


def test_selinux_mode() -> None:
    assert sa.selinux_mode(ENFORCING) == "enforcing"
    assert sa.selinux_mode("SELINUX = 'Permissive' # comment\n") == "permissive"
    assert sa.selinux_mode("#SELINUX=enforcing\nSELINUX=disabled") == "disabled"
    assert sa.selinux_mode("SELINUXTYPE=targeted\n") is None
    assert sa.selinux_mode("") is None


@pytest.mark.parametrize(
    ("distro", "config", "expected"),
    [
        ("redhat", None, True),
        ("redhat", "SELINUX=disabled\n", False),
        ("debian", None, False),
        ("debian", ENFORCING, True),
        (None, "SELINUX=permissive\n", True),
        ("suse", "garbage", False),
    ],
)
def test_needs_relabel(distro: str | None, config: str | None, expected: bool) -> None:
    assert sa.needs_relabel(distro, config) is expected


def test_run_redhat(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/debian_version": None, "etc/redhat-release": "Fedora"})
    sa.run(make_ctx(root))
    assert (root / ".autorelabel").read_bytes() == b""
    assert (root / ".autorelabel").stat().st_uid == 0


def test_run_debian_without_selinux(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    sa.run(make_ctx(root))
    assert not (root / ".autorelabel").exists()


def test_run_symlink_replaced(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", {"etc/selinux/config": ENFORCING})
    outside = tmp_path / "victim"
    outside.write_text("precious\n")
    (root / ".autorelabel").symlink_to("/../victim")
    sa.run(make_ctx(root))
    assert outside.read_text() == "precious\n"
    assert not (root / ".autorelabel").is_symlink()
