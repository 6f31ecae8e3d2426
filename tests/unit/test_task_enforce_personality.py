"""EnforcePersonality: entry decoding, and injection into fake guests (owners, modes, parents, symlinks)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from helper.commands import TaskError
from snf_image.contract.rules import PersonalityFile
from tasks import enforce_personality as ep
from tests.fakeguest import CLOUD_INIT_GUEST, make_ctx, make_guest, warnings


def entry(path: str, data: bytes = b"hello\n", **kw: Any) -> PersonalityFile:
    return PersonalityFile(path=path, contents=base64.b64encode(data).decode(), **kw)


def test_parse_entry_defaults_and_checks() -> None:
    f = ep.parse_entry(entry("/etc/motd"))
    assert f == ep.File("/etc/motd", b"hello\n", "", "", 0o440)
    assert ep.parse_entry(entry("/a//b/", mode=493)).path == "/a/b"
    for bad in ("relative", "/a/../b", "/", "/a\0b"):
        with pytest.raises(TaskError, match="invalid path"):
            ep.parse_entry(PersonalityFile(path=bad, contents=""))
    with pytest.raises(TaskError, match="not valid base64"):
        ep.parse_entry(PersonalityFile(path="/x", contents="###"))
    for mode in (-1, 4096):  # a mode that is not an integer never gets here (test_rules)
        with pytest.raises(TaskError, match="invalid mode"):
            ep.parse_entry(entry("/x", mode=mode))


def stat_of(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def test_run_empty_warns(tmp_path: Path) -> None:
    ctx = make_ctx(make_guest(tmp_path), {"personality": ()})
    ep.run(ctx)
    assert warnings(ctx) == [ep.NO_PERSONALITY]
    ctx = make_ctx(make_guest(tmp_path))
    ep.run(ctx)
    assert warnings(ctx) == [ep.NO_PERSONALITY]


def test_run_injects_with_owner_group_mode(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    personality = (
        entry("/etc/motd", "wélcome\n".encode(), mode=420),
        entry("/home/alice/notes/todo.txt", b"\x00\xff", owner="alice", group="alice", mode=384),
        entry("/srv/data/x", b"", owner="4242", group="ssh_keys"),
    )
    ctx = make_ctx(root, {"personality": personality})
    ep.run(ctx)
    assert (root / "etc/motd").read_text() == "wélcome\n"
    assert stat_of(root / "etc/motd") == (0o644, 0, 0)
    assert (root / "home/alice/notes/todo.txt").read_bytes() == b"\x00\xff"
    assert stat_of(root / "home/alice/notes/todo.txt") == (0o600, 1000, 1000)
    assert stat_of(root / "home/alice/notes") == (0o750, 1000, 1000)
    assert stat_of(root / "home/alice")[1] == 1000  # existing parents untouched
    assert stat_of(root / "srv/data/x") == (0o440, 4242, 101)
    assert stat_of(root / "srv") == (0o750, 4242, 101)
    assert warnings(ctx) == []


def test_run_overwrites_existing_file(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    ep.run(make_ctx(root, {"personality": (entry("/etc/hostname", b"new\n", mode=0o644),)}))
    assert (root / "etc/hostname").read_text() == "new\n"


def test_run_unknown_owner_or_group(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    with pytest.raises(TaskError, match="File owner: `bob' does not exist"):
        ep.run(make_ctx(root, {"personality": (entry("/x", owner="bob"),)}))
    with pytest.raises(TaskError, match="Group: `wheel' does not exist"):
        ep.run(make_ctx(root, {"personality": (entry("/x", group="wheel"),)}))
    assert not (root / "x").exists()


def test_run_non_directory_parent(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    with pytest.raises(TaskError, match="/etc/hostname exists in the image and is not a directory"):
        ep.run(make_ctx(root, {"personality": (entry("/etc/hostname/x"),)}))
    with pytest.raises(TaskError, match="is a directory"):
        ep.run(make_ctx(root, {"personality": (entry("/etc/ssh"),)}))


def test_run_final_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "victim"
    outside.write_text("precious\n")
    (root / "etc/link-out").symlink_to("/../../victim")
    (root / "etc/link-in").symlink_to("/etc/passwd")
    personality = (entry("/etc/link-out", b"a"), entry("/etc/link-in", b"b"))
    ep.run(make_ctx(root, {"personality": personality}))
    assert outside.read_text() == "precious\n"
    assert not (root / "etc/link-out").is_symlink() and (root / "etc/link-out").read_bytes() == b"a"
    assert (root / "etc/passwd").read_text().startswith("root:")
    assert (root / "etc/link-in").read_bytes() == b"b"


@pytest.mark.parametrize(("link", "target", "path"), [("opt", "../../outdir", "/opt/app/conf"), ("var", "/", "/var/f")])
def test_run_parent_symlink_is_refused(tmp_path: Path, link: str, target: str, path: str) -> None:
    root = make_guest(tmp_path / "root")
    (tmp_path / "outdir").mkdir()
    (root / link).symlink_to(target)
    with pytest.raises(TaskError, match=f"/{link} is a symbolic link in the image .*: refusing to write"):
        ep.run(make_ctx(root, {"personality": (entry(path, b"a"),)}))
    assert list((tmp_path / "outdir").iterdir()) == []
    assert not (root / "outdir").exists() and not (root / "f").exists()


def test_run_through_a_layout_link(tmp_path: Path) -> None:
    """Merged /usr: /bin is a link to usr/bin, and a file put in /bin lands there."""
    root = make_guest(tmp_path / "root")
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    ep.run(make_ctx(root, {"personality": (entry("/bin/tool", b"a"),)}))
    assert (root / "usr/bin/tool").read_bytes() == b"a" and (root / "bin").is_symlink()


def test_run_cloud_init_writes_files_at_first_boot(tmp_path: Path) -> None:
    root = make_guest(tmp_path, CLOUD_INIT_GUEST)
    personality = (entry("/etc/motd"), entry("/home/alice/x", b"\0", owner="alice", group="1000", mode=0o600))
    ep.run(make_ctx(root, {"personality": personality}, {"CLOUD_INIT": "yes"}))
    cfg = root / "etc/cloud/cloud.cfg.d/98_snf-image-EnforcePersonality.cfg"
    assert cfg.stat().st_mode & 0o777 == 0o600  # the contents may be secret
    assert yaml.safe_load(cfg.read_text())["write_files"] == [
        {"path": "/etc/motd", "content": "aGVsbG8K", "encoding": "b64", "owner": "root:root", "permissions": "0440"},
        {"path": "/home/alice/x", "content": "AA==", "encoding": "b64", "owner": "alice:alice", "permissions": "0600"},
    ]
    remover = (root / "var/lib/cloud/scripts/per-once/snf-image-remove-EnforcePersonality.sh").read_text()
    assert "rm -f -- /etc/cloud/cloud.cfg.d/98_snf-image-EnforcePersonality.cfg\n" in remover
    assert not (root / "etc/motd").exists() and not (root / "home/alice/x").exists()
