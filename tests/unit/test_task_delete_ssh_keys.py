"""DeleteSSHKeys: HostKey and key-type parsing, boot-time regeneration detection, and runs on fake guests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tasks import delete_ssh_keys as dk
from tests.fakeguest import CLOUD_INIT_GUEST, make_ctx, make_guest, warnings


def keygen(path: Path, kind: str, *extra: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", path, *extra], check=True, input=b"")
    return path


def test_host_key_paths() -> None:
    options = [("hostkey", ["/etc/ssh/a"]), ("port", ["22"]), ("hostkey", ["rel/key"]), ("hostkey", ["/etc/ssh/a"])]
    assert dk.host_key_paths(options) == ["/etc/ssh/a", "/rel/key"]
    assert dk.host_key_paths(None) == []


def test_type_from_name() -> None:
    assert dk.type_from_name("/etc/ssh/ssh_host_ed25519_key") == "ed25519"
    assert dk.type_from_name("/etc/ssh/ssh_host_ecdsa_key") == "ecdsa"
    assert dk.type_from_name("/etc/ssh/ssh_host_rsa_key") == "rsa"
    assert dk.type_from_name("/etc/ssh/ssh_host_dsa_key") == "dsa"
    assert dk.type_from_name("/etc/ssh/ssh_host_key") is None


@pytest.mark.parametrize(("kind", "extra"), [("ed25519", ()), ("ecdsa", ()), ("rsa", ("-m", "PEM")), ("rsa", ())])
def test_type_from_key(tmp_path: Path, kind: str, extra: tuple[str, ...]) -> None:
    key = keygen(tmp_path / "k", kind, "-b", "1024", *extra) if kind == "rsa" else keygen(tmp_path / "k", kind)
    assert dk.type_from_key(key.read_text(), None) == kind
    assert dk.type_from_key(None, Path(f"{key}.pub").read_text()) == kind


def test_type_from_key_garbage() -> None:
    assert dk.type_from_key("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n", None) is None
    assert dk.type_from_key("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "garbage") is None
    assert dk.type_from_key(None, None) is None


def test_keys_to_generate() -> None:
    assert dk.keys_to_generate([]) == (
        [
            ("/etc/ssh/ssh_host_rsa_key", "rsa"),
            ("/etc/ssh/ssh_host_ecdsa_key", "ecdsa"),
            ("/etc/ssh/ssh_host_ed25519_key", "ed25519"),
        ],
        [],
    )
    assert dk.keys_to_generate([("/k1", "ed25519"), ("/k2", "dsa"), ("/k3", "rsa1")]) == (
        [("/k1", "ed25519")],
        ["/k2", "/k3"],
    )


def test_key_comment() -> None:
    assert dk.key_comment("vm1.example.com") == "root@vm1"
    assert dk.key_comment("") == "root@localhost"
    assert dk.key_comment("a b\nc") == "root@abc"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        ({"usr/lib/systemd/system/sshd-keygen@.service": "[Unit]\n"}, "sshd-keygen@.service"),
        ({"lib/systemd/system/regenerate-ssh-host-keys.service": "[Unit]\n"}, "regenerate-ssh-host-keys.service"),
        ({"usr/sbin/sshd-gen-keys-start": "#!/bin/sh\n"}, "/usr/sbin/sshd-gen-keys-start"),
        ({"etc/init.d/sshd": "#!/sbin/openrc-run\nssh-keygen -A\n"}, "/etc/init.d/sshd"),
        ({"etc/init.d/sshd": "#!/bin/sh\nexec sshd\n"}, None),
    ],
)
def test_keygen_at_boot(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    assert dk.keygen_at_boot(make_guest(tmp_path, files)) == expected


def test_keygen_at_boot_masked_unit(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/sshdgenkeys.service").symlink_to("/dev/null")
    assert dk.keygen_at_boot(root) is None


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return st.st_mode & 0o777, st.st_uid, st.st_gid


def test_run_debian_deletes_and_generates(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/ssh/ssh_host_rsa_key-cert.pub": "cert\n", "etc/ssh/ssh_config": "keep\n"})
    ctx = make_ctx(root)
    dk.run(ctx)
    names = sorted(p.name for p in (root / "etc/ssh").iterdir())
    assert names == [
        "ssh_config",
        "ssh_host_ecdsa_key",
        "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
        "sshd_config",
        "sshd_config.d",
    ]
    for kind in ("rsa", "ecdsa", "ed25519"):
        private = root / f"etc/ssh/ssh_host_{kind}_key"
        public = Path(f"{private}.pub")
        assert mode_owner(private) == (0o600, 0, 0)
        assert mode_owner(public) == (0o644, 0, 0)
        assert dk.type_from_key(private.read_text(), None) == kind
        assert public.read_text().rstrip().endswith(" root@vm1")
        check = subprocess.run(["ssh-keygen", "-y", "-f", private], capture_output=True, text=True, check=True)
        assert check.stdout.split()[:2] == public.read_text().split()[:2]
    assert warnings(ctx) == []


def test_run_host_key_lines(tmp_path: Path) -> None:
    config = "HostKey /etc/ssh/keys/host_ed\nHostKey /etc/ssh/ssh_host_dsa_key\nHostKey /etc/ssh/mystery\n"
    root = make_guest(tmp_path, {"etc/ssh/sshd_config": config, "etc/ssh/keys/host_ed.pub": "ssh-ed25519 AAAA x\n"})
    keygen(root / "etc/ssh/mystery", "ecdsa")
    ctx = make_ctx(root)
    dk.run(ctx)
    assert dk.type_from_key((root / "etc/ssh/keys/host_ed").read_text(), None) == "ed25519"
    assert "old" not in (root / "etc/ssh/keys/host_ed.pub").read_text()
    assert dk.type_from_key((root / "etc/ssh/mystery").read_text(), None) == "ecdsa"
    assert not (root / "etc/ssh/ssh_host_rsa_key").exists()  # not configured: deleted, not regenerated
    assert not (root / "etc/ssh/ssh_host_dsa_key").exists()
    assert any("ssh_host_dsa_key" in w for w in warnings(ctx))


def test_run_image_regenerates_itself(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"usr/lib/systemd/system/sshd-keygen@.service": "[Unit]\n"})
    dk.run(make_ctx(root))
    assert not [p for p in (root / "etc/ssh").iterdir() if p.name.startswith("ssh_host_")]


def test_run_cloud_init_has_cloud_init_replace_them(tmp_path: Path) -> None:
    root = make_guest(tmp_path, CLOUD_INIT_GUEST)
    dk.run(make_ctx(root, properties={"CLOUD_INIT": "yes"}))
    cfg = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/98_snf-image-DeleteSSHKeys.cfg").read_text())
    assert cfg == {"ssh_deletekeys": True}  # at first boot, before sshd starts, as the original
    assert (root / "etc/ssh/ssh_host_rsa_key").read_text() == "old private\n"


def test_run_without_sshd_config_warns_and_deletes(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/ssh/sshd_config": None})
    ctx = make_ctx(root)
    dk.run(ctx)
    assert not [p for p in (root / "etc/ssh").iterdir() if p.name.startswith("ssh_host_")]
    assert any("no /etc/ssh/sshd_config" in w for w in warnings(ctx))


def test_run_symlinks_cannot_escape(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", {"etc/ssh/sshd_config": "HostKey /etc/ssh/evil\n"})
    outside = tmp_path / "victim"
    outside.write_text("precious\n")
    (root / "etc/ssh/evil").symlink_to("/../../victim")
    (root / "etc/ssh/evil.pub").symlink_to("/../../victim")
    (root / "etc/ssh/ssh_host_x_key").symlink_to("/../../victim")
    dk.run(make_ctx(root))
    assert outside.read_text() == "precious\n"
    assert not (root / "etc/ssh/evil").is_symlink()
    assert mode_owner(root / "etc/ssh/evil") == (0o600, 0, 0)
