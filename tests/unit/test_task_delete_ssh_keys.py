"""DeleteSSHKeys: HostKey and key-type parsing, which keys to install, and runs on fake guests with the host's keys."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helper.commands import TaskError
from helper.framework import Context
from snf_image.contract.rules import HostKey
from tasks import delete_ssh_keys as dk
from tests.fakeguest import CLOUD_INIT_GUEST, host_keys, make_ctx, make_guest, warnings


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


def test_keys_to_install() -> None:
    defaults = [
        ("/etc/ssh/ssh_host_rsa_key", "rsa"),
        ("/etc/ssh/ssh_host_ecdsa_key", "ecdsa"),
        ("/etc/ssh/ssh_host_ed25519_key", "ed25519"),
    ]
    assert dk.keys_to_install([], []) == (defaults, [])
    assert dk.keys_to_install([], ["ed25519"]) == ([("/etc/ssh/ssh_host_ed25519_key", "ed25519")], [])
    chosen, skipped = dk.keys_to_install([("/k1", "ed25519"), ("/k2", "dsa"), ("/k3", "rsa1"), ("/k4", "ed25519")], [])
    assert chosen == [("/k1", "ed25519")]
    assert [path for path, _ in skipped] == ["/k2", "/k3", "/k4"]
    assert "installed as /k1" in skipped[2][1]


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


def with_keys(root: Path, **kw: object) -> Context:
    """The context of a deployment whose host made the instance's keys."""
    return make_ctx(root, {"ssh_host_keys": host_keys()}, **kw)  # type: ignore[arg-type]


def host_key(kind: str) -> HostKey:
    return next(key for key in host_keys() if key.kind == kind)


def host_key_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "etc/ssh").iterdir() if p.name.startswith("ssh_host_"))


def test_run_installs_the_host_keys_of_the_types_the_image_had(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/ssh/ssh_host_rsa_key-cert.pub": "cert\n", "etc/ssh/ssh_config": "keep\n"})
    ctx = with_keys(root)
    dk.run(ctx)
    assert host_key_names(root) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
    ]  # the image had rsa and ed25519 keys (and the old certificate is gone)
    assert (root / "etc/ssh/ssh_config").read_text() == "keep\n"
    for kind in ("rsa", "ed25519"):
        private = root / f"etc/ssh/ssh_host_{kind}_key"
        public = Path(f"{private}.pub")
        assert mode_owner(private) == (0o600, 0, 0)
        assert mode_owner(public) == (0o644, 0, 0)
        assert private.read_text() == host_key(kind).private and public.read_text() == host_key(kind).public
        assert dk.type_from_key(private.read_text(), None) == kind
        assert public.read_text().rstrip().endswith(" root@vm1")
        check = subprocess.run(["ssh-keygen", "-y", "-f", private], capture_output=True, text=True, check=True)
        assert check.stdout.split()[:2] == public.read_text().split()[:2]
    assert warnings(ctx) == []


def test_run_without_old_keys_installs_the_default_set(tmp_path: Path) -> None:
    old = {f"etc/ssh/ssh_host_{kind}_key{suffix}": None for kind in ("rsa", "ed25519") for suffix in ("", ".pub")}
    root = make_guest(tmp_path, old)
    dk.run(with_keys(root))
    assert host_key_names(root) == [f"ssh_host_{k}_key{s}" for k in ("ecdsa", "ed25519", "rsa") for s in ("", ".pub")]


def test_run_keeps_labels_and_a_group_readable_private_key(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    private, public = root / "etc/ssh/ssh_host_rsa_key", root / "etc/ssh/ssh_host_rsa_key.pub"
    os.chown(private, 0, 101)  # ssh_keys, as Red Hat's images have it
    private.chmod(0o640)
    key_label, pub_label = b"system_u:object_r:sshd_key_t:s0\0", b"system_u:object_r:sshd_key_pub_t:s0\0"
    os.setxattr(private, dk.SELINUX_XATTR, key_label)
    os.setxattr(public, dk.SELINUX_XATTR, pub_label)
    dk.run(with_keys(root))
    assert private.read_text() == host_key("rsa").private
    assert mode_owner(private) == (0o640, 0, 101)
    assert os.getxattr(private, dk.SELINUX_XATTR) == key_label
    assert os.getxattr(public, dk.SELINUX_XATTR) == pub_label
    assert mode_owner(root / "etc/ssh/ssh_host_ed25519_key") == (0o600, 0, 0)  # it was 0644 root: not kept


def test_run_without_the_host_s_keys_is_an_error(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    with pytest.raises(TaskError, match="The host sent no rsa SSH host key"):
        dk.run(make_ctx(root))


def test_run_host_key_lines(tmp_path: Path) -> None:
    config = "HostKey /etc/ssh/keys/host_ed\nHostKey /etc/ssh/ssh_host_dsa_key\nHostKey /etc/ssh/mystery\n"
    root = make_guest(tmp_path, {"etc/ssh/sshd_config": config, "etc/ssh/keys/host_ed.pub": "ssh-ed25519 AAAA x\n"})
    keygen(root / "etc/ssh/mystery", "ecdsa")
    ctx = with_keys(root)
    dk.run(ctx)
    assert (root / "etc/ssh/keys/host_ed").read_text() == host_key("ed25519").private
    assert (root / "etc/ssh/keys/host_ed.pub").read_text() == host_key("ed25519").public
    assert (root / "etc/ssh/mystery").read_text() == host_key("ecdsa").private
    assert not (root / "etc/ssh/ssh_host_rsa_key").exists()  # not configured: deleted, not regenerated
    assert not (root / "etc/ssh/ssh_host_dsa_key").exists()
    assert any("ssh_host_dsa_key" in w for w in warnings(ctx))


def test_run_image_regenerates_itself(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"usr/lib/systemd/system/sshd-keygen@.service": "[Unit]\n"})
    dk.run(with_keys(root))
    assert not [p for p in (root / "etc/ssh").iterdir() if p.name.startswith("ssh_host_")]


def test_run_cloud_init_has_cloud_init_replace_them(tmp_path: Path) -> None:
    root = make_guest(tmp_path, CLOUD_INIT_GUEST)
    dk.run(make_ctx(root, properties={"CLOUD_INIT": "yes"}))
    cfg = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/98_snf-image-DeleteSSHKeys.cfg").read_text())
    assert cfg == {"ssh_deletekeys": True}  # at first boot, before sshd starts, as the original
    assert (root / "etc/ssh/ssh_host_rsa_key").read_text() == "old private\n"


def test_run_without_sshd_config_warns_and_deletes(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/ssh/sshd_config": None})
    ctx = with_keys(root)
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
    dk.run(with_keys(root))
    assert outside.read_text() == "precious\n"
    assert not (root / "etc/ssh/evil").is_symlink()
    assert mode_owner(root / "etc/ssh/evil") == (0o600, 0, 0)
