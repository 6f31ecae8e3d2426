"""ChangePassword: hashing, the shadow and authorized_keys editors, and runs against a fake guest."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import yaml
from passlib.hash import bcrypt, md5_crypt, sha1_crypt, sha256_crypt, sha512_crypt

from helper.commands import TaskError
from tasks import change_password as cp
from tasks._unix import User
from tests.fakeguest import CLOUD_INIT_GUEST, make_ctx, make_guest, warnings

ALICE = User("alice", 1000, 1000, "/home/alice", "/bin/bash")
TODAY = cp.days_since_epoch(datetime.datetime.now(datetime.UTC).date())


@pytest.mark.parametrize(
    ("method", "handler", "prefix"),
    [
        ("md5", md5_crypt, "$1$"),
        ("sha1", sha1_crypt, "$sha1$"),
        ("blowfish", bcrypt, "$2b$"),
        ("sha256", sha256_crypt, "$5$"),
        ("SHA512", sha512_crypt, "$6$"),
    ],
)
def test_hash_password(method: str, handler: object, prefix: str) -> None:
    hashed = cp.hash_password("s3cr3t ünï", method)
    assert hashed.startswith(prefix)
    assert handler.verify("s3cr3t ünï", hashed)  # type: ignore[attr-defined]
    assert "rounds=" not in hashed


def test_hash_password_unknown_method() -> None:
    with pytest.raises(TaskError, match="Unknown PASSWD_HASHING_METHOD 'des'"):
        cp.hash_password("x", "des")


def test_check_hash() -> None:
    assert cp.check_hash("$6$abc$def") == "$6$abc$def"
    for bad in ("", "a:b", "a\nroot::0:0:::::"):
        with pytest.raises(TaskError):
            cp.check_hash(bad)


def test_set_shadow_password_replaces_keeping_aging() -> None:
    text = "# odd comment\nroot:*:17000:1:60:14:30:12345:\nalice:!:19000:0:99999:7:::\n"
    new = cp.set_shadow_password(text, "root", "$6$s$h", 20000)
    assert new == "# odd comment\nroot:$6$s$h:20000:1:60:14:30::\nalice:!:19000:0:99999:7:::\n"


def test_set_shadow_password_duplicates_crlf_short_lines_no_newline() -> None:
    text = "root:x\r\nbob:*:1::::::\r\nroot:old:1:0:99999:7:::"
    new = cp.set_shadow_password(text, "root", "H", 5)
    assert new == "root:H:5::::::\r\nbob:*:1::::::\r\nroot:H:5:0:99999:7:::\r\n"


def test_set_shadow_password_adds_missing_user_and_unicode() -> None:
    text = "root:*:1:0:99999:7:::"
    new = cp.set_shadow_password(text, "jörg", "H", 7)
    assert new == "root:*:1:0:99999:7:::\njörg:H:7:0:99999:7:::\n"
    assert cp.set_shadow_password("", "root", "H", 7) == "root:H:7:0:99999:7:::\n"


def test_set_shadow_password_does_not_touch_prefix_names() -> None:
    text = "rootkit:*:1:0:99999:7:::\n"
    assert cp.set_shadow_password(text, "root", "H", 7).startswith("rootkit:*:1:")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (None, "/home/alice/.ssh/authorized_keys"),
        ([".ssh/authorized_keys", ".ssh/authorized_keys2"], "/home/alice/.ssh/authorized_keys"),
        (["%h/.ssh/keys"], "/home/alice/.ssh/keys"),
        (["/etc/ssh/keys/%u"], "/etc/ssh/keys/alice"),
        (["/etc/ssh/keys/%U.%%"], "/etc/ssh/keys/1000.%"),
        (["none"], None),
        (["NONE"], None),
    ],
)
def test_authorized_keys_path(setting: list[str] | None, expected: str | None) -> None:
    assert cp.authorized_keys_path(setting, ALICE) == expected


def test_authorized_keys_path_bad_token() -> None:
    with pytest.raises(TaskError, match="unsupported token %x"):
        cp.authorized_keys_path(["%x/keys"], ALICE)


def test_key_lines_and_merge() -> None:
    keys = cp.key_lines("ssh-ed25519 AAA a@b\r\n\r\n  ssh-rsa BBB c@d  \nssh-ed25519 AAA a@b")
    assert keys == ["ssh-ed25519 AAA a@b", "ssh-rsa BBB c@d"]
    existing = "# my keys\nssh-rsa BBB c@d"
    assert cp.add_authorized_keys(existing, keys) == "# my keys\nssh-rsa BBB c@d\nssh-ed25519 AAA a@b\n"
    assert cp.add_authorized_keys("", keys) == "ssh-ed25519 AAA a@b\nssh-rsa BBB c@d\n"
    crlf = "ssh-rsa BBB c@d\r\n"
    assert cp.add_authorized_keys(crlf, keys) == "ssh-rsa BBB c@d\r\nssh-ed25519 AAA a@b\r\n"


# --- runs against a fake guest ------------------------------------------------


def shadow_of(root: Path, user: str) -> list[str]:
    line = next(ln for ln in (root / "etc/shadow").read_text().splitlines() if ln.startswith(user + ":"))
    return line.split(":")


def test_run_nothing_to_do(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    before = (root / "etc/shadow").read_text()
    ctx = make_ctx(root, {"password": None, "auth_keys": ""})
    cp.run(ctx)
    assert (root / "etc/shadow").read_text() == before
    assert warnings(ctx) == []


def test_run_password_default_user_sha512(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    ctx = make_ctx(root, {"password": "pässword"})
    cp.run(ctx)
    fields = shadow_of(root, "root")
    assert fields[1].startswith("$6$") and sha512_crypt.verify("pässword", fields[1])
    assert fields[2:] == [str(TODAY), "0", "99999", "7", "", "", ""]
    assert shadow_of(root, "alice")[1] == "!"
    assert (root / "etc/shadow").stat().st_mode & 0o777 == 0o640
    assert any("USERS" in w for w in warnings(ctx))


def test_run_users_and_method(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    ctx = make_ctx(root, {"password": "pw"}, {"USERS": " root  alice ", "PASSWD_HASHING_METHOD": "md5"})
    cp.run(ctx)
    for user in ("root", "alice"):
        assert md5_crypt.verify("pw", shadow_of(root, user)[1])
    assert warnings(ctx) == []


def test_run_password_hash_verbatim(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    cp.run(make_ctx(root, {"password": "ignored", "password_hash": "$6$salt$abc"}))
    assert shadow_of(root, "root")[1] == "$6$salt$abc"


def test_run_missing_user_is_an_error(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    with pytest.raises(TaskError, match="bob do not exist"):
        cp.run(make_ctx(root, {"password": "pw"}, {"USERS": "root bob"}))


def test_run_missing_shadow_is_an_error(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/shadow": None})
    with pytest.raises(TaskError, match="/etc/shadow"):
        cp.run(make_ctx(root, {"password": "pw"}))


def test_run_keys_default_path(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    keys = "ssh-ed25519 AAAA one@x\nssh-rsa BBBB two@x\n"
    for _ in range(2):  # a second run adds nothing
        cp.run(make_ctx(root, {"auth_keys": keys}, {"USERS": "root alice"}))
    alice = root / "home/alice/.ssh/authorized_keys"
    assert alice.read_text() == keys
    assert (root / "root/.ssh/authorized_keys").read_text() == keys
    st, dst = alice.stat(), alice.parent.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o600)
    assert (dst.st_uid, dst.st_gid, dst.st_mode & 0o777) == (1000, 1000, 0o700)
    assert (root / "home/alice").stat().st_uid == 1000
    assert (root / "root/.ssh").stat().st_uid == 0
    assert shadow_of(root, "root")[1] == "*"  # keys only: the password is untouched


def test_run_keys_appended_to_existing_file_and_fixed_dir_mode(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"home/alice/.ssh/authorized_keys": "ssh-rsa OLD old@x"})
    os.chmod(root / "home/alice/.ssh", 0o777)
    cp.run(make_ctx(root, {"auth_keys": "ssh-rsa OLD old@x\nssh-rsa NEW new@x"}, {"USERS": "alice"}))
    assert (root / "home/alice/.ssh/authorized_keys").read_text() == "ssh-rsa OLD old@x\nssh-rsa NEW new@x\n"
    assert (root / "home/alice/.ssh").stat().st_mode & 0o777 == 0o700
    assert (root / "home/alice/.ssh").stat().st_uid == 1000


def test_run_keys_sshd_config_path_outside_home(tmp_path: Path) -> None:
    root = make_guest(
        tmp_path, {"etc/ssh/sshd_config.d/keys.conf": "AuthorizedKeysFile /etc/ssh/authorized_keys/%u %h/.ssh/x\n"}
    )
    cp.run(make_ctx(root, {"auth_keys": "ssh-rsa K k"}, {"USERS": "alice"}))
    keys = root / "etc/ssh/authorized_keys/alice"
    assert keys.read_text() == "ssh-rsa K k\n"
    assert keys.stat().st_uid == 1000
    assert (root / "etc/ssh/authorized_keys").stat().st_uid == 0
    assert (root / "etc/ssh/authorized_keys").stat().st_mode & 0o777 == 0o755


def test_run_keys_none_warns(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/ssh/sshd_config": "AuthorizedKeysFile none\n"})
    ctx = make_ctx(root, {"auth_keys": "ssh-rsa K k", "password": "pw"})
    cp.run(ctx)
    assert any("AuthorizedKeysFile is `none'" in w for w in warnings(ctx))
    assert not (root / "root/.ssh").exists()
    assert shadow_of(root, "root")[1].startswith("$6$")


def test_run_keys_symlink_escape_refused(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "victim"
    outside.write_text("precious\n")
    (root / "victim").write_text("in the guest\n")
    (root / "root/.ssh").mkdir()
    (root / "root/.ssh/authorized_keys").symlink_to("/../../victim")
    with pytest.raises(TaskError, match=r"Refusing to edit /root/\.ssh/authorized_keys: it is a symbolic link"):
        cp.run(make_ctx(root, {"auth_keys": "ssh-rsa K k"}, {"USERS": "root"}))
    assert outside.read_text() == "precious\n" and (root / "victim").read_text() == "in the guest\n"
    assert (root / "root/.ssh/authorized_keys").is_symlink()


def test_run_keys_through_a_symlinked_ssh_directory_refused(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "home/alice/.ssh").symlink_to("../../../..")
    with pytest.raises(TaskError, match=r"/home/alice/.ssh is a symbolic link in the image \(to ../../../..\)"):
        cp.run(make_ctx(root, {"auth_keys": "ssh-rsa K k"}, {"USERS": "alice"}))
    assert not (root / "authorized_keys").exists() and not (tmp_path / "authorized_keys").exists()
    assert root.stat().st_uid == 0  # the directory it points to was not given to alice


def test_run_keys_through_the_layout_home_link(tmp_path: Path) -> None:
    """FreeBSD (and ostree) keep homes under /usr/home (/var/home) with /home a link to it."""
    root = make_guest(tmp_path / "root")
    (root / "usr").mkdir()
    (root / "home").rename(root / "usr/home")
    (root / "home").symlink_to("usr/home")
    cp.run(make_ctx(root, {"auth_keys": "ssh-rsa K k"}, {"USERS": "alice"}))
    keys = root / "usr/home/alice/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-rsa K k\n" and keys.stat().st_uid == 1000
    assert (root / "home").is_symlink()


def test_run_shadow_symlink_cannot_escape(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "shadow"
    outside.write_text("root:*:1:0:99999:7:::\n")
    (root / "etc/shadow").unlink()
    (root / "etc/shadow").symlink_to("/../../shadow")
    with pytest.raises(TaskError, match="/etc/shadow"):
        cp.run(make_ctx(root, {"password": "pw"}))
    assert outside.read_text() == "root:*:1:0:99999:7:::\n"


def test_run_cloud_init_hands_over_the_hash_and_keys(tmp_path: Path) -> None:
    root = make_guest(tmp_path, CLOUD_INIT_GUEST)
    before = (root / "etc/shadow").read_text()
    rules = {"password": "S3cret-pass", "auth_keys": "ssh-rsa K k"}
    cp.run(make_ctx(root, rules, {"CLOUD_INIT": "yes", "USERS": "alice"}))
    cfg = root / "etc/cloud/cloud.cfg.d/98_snf-image-ChangePassword.cfg"
    config = yaml.safe_load(cfg.read_text())
    [entry] = config["chpasswd"]["list"]
    user, hashed = entry.split(":", 1)
    assert user == "alice" and sha512_crypt.verify("S3cret-pass", hashed) and config["ssh_pwauth"] is True
    assert "S3cret-pass" not in cfg.read_text()  # the hash, never the password
    assert cfg.stat().st_mode & 0o777 == 0o600
    meta = yaml.safe_load((root / "var/lib/cloud/seed/nocloud-net/meta-data").read_text())
    assert meta == {"public-keys": ["ssh-rsa K k"]}
    assert (root / "etc/shadow").read_text() == before
    assert not (root / "home/alice/.ssh").exists()
