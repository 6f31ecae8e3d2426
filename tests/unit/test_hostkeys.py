"""snf_image.hostkeys: the instance's SSH host keys made on the host, in a private directory gone with them."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from snf_image import hostkeys
from snf_image.errors import OperatorError


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The TMPDIR generate() works in, to see what it leaves there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_one_key_of_each_type_that_ssh_keygen_accepts(private_tmp: Path, tmp_path: Path) -> None:
    keys = hostkeys.generate("web1.example.org")
    assert [key.kind for key in keys] == ["rsa", "ecdsa", "ed25519"]
    assert list(private_tmp.iterdir()) == []  # the private directory is gone with the keys in it
    for key in keys:
        assert key.private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert key.public.endswith(" root@web1\n")
        saved = tmp_path / key.kind
        saved.write_text(key.private)
        saved.chmod(0o600)
        derived = subprocess.run(["ssh-keygen", "-y", "-f", saved], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == key.public.split()[:2]
    assert len({key.private for key in hostkeys.generate("web1.example.org")} | {k.private for k in keys}) == 6


def test_key_comment() -> None:
    assert hostkeys.key_comment("vm1.example.com") == "root@vm1"
    assert hostkeys.key_comment("") == "root@localhost"
    assert hostkeys.key_comment("a b\nc") == "root@abc"


def test_without_ssh_keygen_one_clear_error(private_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OperatorError, match="ssh-keygen is missing on this node: install openssh-client"):
        hostkeys.generate("vm1")
    assert list(private_tmp.iterdir()) == []


def test_a_failing_ssh_keygen_is_named(private_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "ssh-keygen"
    broken.write_text("#!/bin/sh\necho 'ssh-keygen: no entropy' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(OperatorError, match="could not make a rsa host key: ssh-keygen: no entropy"):
        hostkeys.generate("vm1")
    assert list(private_tmp.iterdir()) == []
