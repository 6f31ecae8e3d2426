"""The shared Unix helpers of the configuration tasks: parsers, line handling, distro detection, safe writes."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from helper.commands import TaskError
from tasks import _unix
from tests.fakeguest import make_guest


def test_lines_keep_crlf_and_terminate_the_last_line() -> None:
    text = "a\r\nb\r\nc"
    assert _unix.newline_of(text) == "\r\n"
    assert _unix.split_lines(text) == ["a", "b", "c"]
    assert _unix.join_lines(_unix.split_lines(text), _unix.newline_of(text)) == "a\r\nb\r\nc\r\n"
    assert _unix.newline_of("a\nb\n") == "\n"
    assert _unix.newline_of("") == "\n"
    assert _unix.join_lines([]) == ""


def test_parse_passwd_odd_lines() -> None:
    text = (
        "# comment\n"
        "root:x:0:0:root:/root:/bin/bash\r\n"
        "\n"
        "+nisuser::::::\n"
        "broken:x:notanumber:0::/:/bin/sh\n"
        "short:x:5\n"
        "root:x:99:99:second root:/nowhere:/bin/false\n"
        "jörg:x:1001:1001:Jörg:/home/jörg:/bin/sh"
    )
    users = _unix.parse_passwd(text)
    assert set(users) == {"root", "jörg"}
    assert users["root"] == _unix.User("root", 0, 0, "/root", "/bin/bash")
    assert users["jörg"].home == "/home/jörg"


def test_parse_group_odd_lines() -> None:
    groups = _unix.parse_group("# c\nwheel:x:10:alice,bob\nbad:x:\nwheel:x:11:\n-nis\nstaff:*:50:")
    assert groups == {"wheel": 10, "staff": 50}


def test_owner_id() -> None:
    table = {"alice": 1000}
    assert _unix.owner_id("", table, "File owner") == 0
    assert _unix.owner_id(None, table, "File owner") == 0
    assert _unix.owner_id("alice", table, "File owner") == 1000
    assert _unix.owner_id("4242", table, "File owner") == 4242
    with pytest.raises(TaskError, match="File owner: `bob' does not exist"):
        _unix.owner_id("bob", table, "File owner")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "debian"),
        ({"etc/debian_version": None, "etc/redhat-release": "Rocky Linux 9\n"}, "redhat"),
        ({"etc/debian_version": None, "etc/gentoo-release": "x"}, "gentoo"),
        ({"etc/debian_version": None, "etc/os-release": 'ID="opensuse-leap"\nID_LIKE="suse opensuse"\n'}, "suse"),
        ({"etc/debian_version": None, "etc/os-release": "ID=linuxmint\nID_LIKE='ubuntu debian'\n"}, "debian"),
        ({"etc/debian_version": None, "etc/os-release": "ID=nixos\n"}, None),
        ({"etc/debian_version": None}, None),
        ({"etc/debian_version": None, "etc/coreos/update.conf": ""}, "coreos"),
    ],
)
def test_base_distro(tmp_path: Path, files: dict[str, str | None], expected: str | None) -> None:
    assert _unix.base_distro(make_guest(tmp_path, files)) == expected


def test_parse_sshd_config() -> None:
    text = (
        "# comment\r\n"
        "  HostKey /etc/ssh/key1   # trailing comment\r\n"
        'AuthorizedKeysFile ".ssh/my keys" .ssh/other\r\n'
        "hostkey=/etc/ssh/key2\r\n"
        'Banner "unbalanced\r\n'
        "Match User bob\r\n"
        "  HostKey /etc/ssh/never\r\n"
    )
    assert _unix.parse_sshd_config(text) == [
        ("hostkey", ["/etc/ssh/key1"]),
        ("authorizedkeysfile", [".ssh/my keys", ".ssh/other"]),
        ("hostkey", ["/etc/ssh/key2"]),
    ]


def test_sshd_options_follow_includes_inside_the_guest(tmp_path: Path) -> None:
    root = make_guest(
        tmp_path / "root",
        {
            "etc/ssh/sshd_config": "Include sshd_config.d/*.conf\nInclude /etc/ssh/loop.conf\nHostKey /etc/ssh/main\n",
            "etc/ssh/sshd_config.d/10-a.conf": "HostKey /etc/ssh/a\n",
            "etc/ssh/sshd_config.d/20-b.conf": "AuthorizedKeysFile /etc/ssh/keys/%u\n",
            "etc/ssh/sshd_config.d/ignored.txt": "HostKey /etc/ssh/no\n",
            "etc/ssh/loop.conf": "Include /etc/ssh/loop.conf\n",
        },
    )
    (tmp_path / "outside.conf").write_text("HostKey /outside\n")
    (root / "etc/ssh/sshd_config.d/30-escape.conf").symlink_to("../../../../outside.conf")
    options = _unix.sshd_options(root)
    assert options is not None
    assert [args[0] for kw, args in options if kw == "hostkey"] == ["/etc/ssh/a", "/etc/ssh/main"]
    assert _unix.sshd_first(options, "authorizedkeysfile") == ["/etc/ssh/keys/%u"]
    assert _unix.sshd_options(root, "/etc/ssh/missing") is None


def test_write_file_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    (root / "etc/evil").symlink_to("/../../outside")
    _unix.write_file(root, "/etc/evil", b"new\n", mode=0o640, uid=1000, gid=1000)
    assert outside.read_text() == "precious\n"
    st = (root / "etc/evil").lstat()
    assert (root / "etc/evil").read_bytes() == b"new\n"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1000, 1000)
    assert not [p for p in (root / "etc").iterdir() if p.name.startswith(".evil")]


def test_write_file_parent_symlink_stays_inside(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (tmp_path / "outdir").mkdir()
    (root / "outdir").mkdir()
    (root / "etc/link").symlink_to("../../outdir")
    _unix.write_file(root, "/etc/link/f", b"x", mode=0o600)
    assert not (tmp_path / "outdir/f").exists()
    assert (root / "outdir/f").read_bytes() == b"x"


def test_write_file_keeps_setuid_after_chown(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "usr/bin").mkdir(parents=True)
    _unix.write_file(root, "/usr/bin/tool", b"", mode=0o4755, uid=1000, gid=1000)
    assert (root / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755


def test_write_file_refuses_directories_and_bad_paths(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    with pytest.raises(TaskError, match="is a directory"):
        _unix.write_file(root, "/etc", b"", mode=0o644)
    for bad in ("relative", "/etc/../x", "/"):
        with pytest.raises(TaskError, match="Invalid path"):
            _unix.write_file(root, bad, b"", mode=0o644)
    with pytest.raises(TaskError, match="directory does not exist"):
        _unix.write_file(root, "/nope/x", b"", mode=0o644)


def test_make_dirs(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    assert _unix.make_dirs(root, "/srv/a/b", mode=0o750, uid=1000, gid=1001) == ["/srv", "/srv/a", "/srv/a/b"]
    st = (root / "srv/a").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, 1000, 1001)
    assert _unix.make_dirs(root, "/srv/a/b", mode=0o700) == []
    with pytest.raises(TaskError, match="/etc/hostname exists in the image and is not a directory"):
        _unix.make_dirs(root, "/etc/hostname/x", mode=0o755)


def test_make_dirs_through_escaping_symlink(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "var").symlink_to("/../../..")
    _unix.make_dirs(root, "/var/lib/x", mode=0o755)
    assert (root / "lib/x").is_dir()
    assert not (tmp_path / "lib").exists()


def test_remove_does_not_follow(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "etc/link").symlink_to("/etc/passwd")
    assert _unix.remove(root, "/etc/link") is True
    assert (root / "etc/passwd").exists()
    assert _unix.remove(root, "/etc/link") is False
    with pytest.raises(TaskError):
        _unix.remove(root, "/etc/ssh")


def test_cloud_init_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, _unix.CLOUD_INIT_MODULE, raising=False)
    if importlib.util.find_spec(_unix.CLOUD_INIT_MODULE) is None:
        assert _unix.cloud_init_hook("set_hostname") is None
    fake = types.ModuleType(_unix.CLOUD_INIT_MODULE)
    fake.set_hostname = lambda ctx, name: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, _unix.CLOUD_INIT_MODULE, fake)
    assert _unix.cloud_init_hook("set_hostname") is fake.set_hostname  # type: ignore[attr-defined]
    assert _unix.cloud_init_hook("missing") is None
