"""The README's main command (scripts/demo, past its dependency install) deploys and shows the result.

It runs ``scripts/demo.py`` as a person would after ``scripts/demo`` installed what it needs:
the real helper VM, the cached sample Debian image, ``snf-image deploy`` onto a disk file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from tests.osenv import REPO

pytestmark = pytest.mark.vm

PASSWORD = "demo-password"  # scripts/demo.py's


def test_the_demo_deploys_and_shows_what_it_did(tmp_path: Path) -> None:
    demo = subprocess.run(
        ["/usr/bin/python3", str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    shown = demo.stdout + demo.stderr
    assert demo.returncode == 0, shown[-4000:]
    sections = dict(part.split("\n", 1) for part in demo.stdout.split("-- ")[1:])
    assert sections["/etc/hostname"].strip() == "demo.snf-image.test"
    assert sections["/etc/motd"].strip() == "Deployed by snf-image"
    assert "address 192.0.2.10" in sections["/etc/network/interfaces"]
    assert "\tswap\tsw\t" in sections["/etc/fstab"]  # the SWAP property
    root = sections["/etc/shadow (root)"].strip().split(":")
    assert sha512_crypt.verify(PASSWORD, root[1])
    assert PASSWORD not in shown
