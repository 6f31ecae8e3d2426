"""The shared Unix helpers of the configuration tasks: parsers, line handling, distro detection, safe writes."""

from __future__ import annotations

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
