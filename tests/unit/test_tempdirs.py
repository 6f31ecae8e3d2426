"""snf_image.tempdirs: the private directories of killed deployments are removed, nothing else is."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from snf_image import tempdirs


def dead_owner() -> str:
    """The ``<pid>.<start>`` of a process that has ended and been reaped."""
    proc = subprocess.Popen(["sleep", "0.2"])
    start = tempdirs._start_time(proc.pid)
    proc.wait()
    return f"{proc.pid}.{start}"


def test_a_private_directory_names_its_owner_and_outlives_no_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with tempdirs.private("hostkeys") as made:
        path = Path(made)
        assert path.parent == tmp_path
        assert path.name.startswith(f"snf-image-hostkeys-{os.getpid()}.{tempdirs._start_time(os.getpid())}-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert tempdirs.remove_orphans() == [] and path.is_dir()  # its owner, this process, is alive
    assert not path.exists()


def test_the_directories_of_dead_owners_go_with_what_they_hold(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("canary")
    dead = tmp_path / f"snf-image-convert-{dead_owner()}-abcd"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "converter.log").write_text("log")
    (dead / "link").symlink_to(outside)
    reused = tmp_path / f"snf-image-nbd-{os.getpid()}.1-efgh"  # this pid, another process's start time
    reused.mkdir()
    assert sorted(tempdirs.remove_orphans(tmp_path)) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert (outside / "keep").read_text() == "canary"


def test_what_is_not_an_orphaned_directory_of_ours_stays(tmp_path: Path) -> None:
    owner = dead_owner()
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / f"snf-image-jail-{owner}-link").symlink_to(target)
    (tmp_path / f"snf-image-jail-{owner}-file").write_text("x")
    (tmp_path / f"other-jail-{owner}-dir").mkdir()
    (tmp_path / "snf-image-jail-dir").mkdir()  # no owner in the name: an older release's
    foreign = tmp_path / f"snf-image-jail-{owner}-foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    before = sorted(tmp_path.iterdir())
    assert tempdirs.remove_orphans(tmp_path) == []
    assert sorted(tmp_path.iterdir()) == before and target.is_dir()


def test_a_missing_temporary_directory_is_nothing_to_remove(tmp_path: Path) -> None:
    assert tempdirs.remove_orphans(tmp_path / "absent") == []
