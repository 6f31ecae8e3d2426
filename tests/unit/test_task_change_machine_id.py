"""ChangeMachineId against fake guests."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tasks import change_machine_id as cm
from tests.fakeguest import make_ctx, make_guest, warnings

ID = re.compile(r"^[0-9a-f]{32}\n$")


def test_new_machine_id_is_random_v4() -> None:
    a, b = cm.new_machine_id(), cm.new_machine_id()
    assert ID.match(a) and ID.match(b) and a != b
    assert a[12] == "4"


def test_run_regular_files(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n"})
    os.chmod(root / "etc/machine-id", 0o444)
    old = (root / "etc/machine-id").read_text()
    ctx = make_ctx(root)
    cm.run(ctx)
    new = (root / "etc/machine-id").read_text()
    assert ID.match(new) and new != old
    assert (root / "var/lib/dbus/machine-id").read_text() == new
    assert (root / "etc/machine-id").stat().st_mode & 0o777 == 0o444
    assert warnings(ctx) == []


def test_run_dbus_symlink_stays_a_symlink(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    cm.run(make_ctx(root))
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert ID.match((root / "etc/machine-id").read_text())


def test_run_empty_machine_id_gets_one(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/machine-id": ""})
    cm.run(make_ctx(root))
    assert ID.match((root / "etc/machine-id").read_text())


def test_run_missing_files_warn(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/machine-id": None})
    ctx = make_ctx(root)
    cm.run(ctx)
    assert not (root / "etc/machine-id").exists()
    assert len(warnings(ctx)) == 2


def test_run_symlink_escape(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", {"etc/machine-id": None})
    outside = tmp_path / "victim"
    outside.write_text("precious\n")
    (root / "etc/machine-id").symlink_to("../../../victim")
    cm.run(make_ctx(root))
    assert outside.read_text() == "precious\n"
