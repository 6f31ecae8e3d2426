"""Container images (qcow2, VMDK, VHD, VHDX, VDI) from remote sources (issue 12, item 5).

A container needs seeking, a download does not seek: the image is fetched once into a
local file (the node's image cache when it is on, else a private unnamed file), its
checksum verified there, and converted in the same sandbox as a local image. Each case
runs the real ``snf-image deploy --no-customize`` against a real loopback HTTP server
and reads the disk back against qemu-img's own conversion of the same file.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_containers import FORMATS, container, qemu_img
from tests.osenv import REPO

pytestmark = pytest.mark.usefixtures("network_deadline")

MiB = 1024 * 1024


def deploy(tmp_path: Path, url: str, disk: Path, checksum: str | None, cache: bool) -> subprocess.CompletedProcess:
    conf = tmp_path / "etc"
    conf.mkdir(exist_ok=True)
    cache_dir = tmp_path / "cache"
    settings = f"IMAGE_CACHE_DIR={cache_dir}\nIMAGE_CACHE_SIZE={'64M' if cache else '0'}\n"
    (conf / "snf-image.conf").write_text(settings)
    args = ["deploy", "--disk", str(disk), "--image", url, "--format", "diskdump", "--no-customize"]
    if checksum:
        args += ["--checksum", checksum]
    command = ["/usr/bin/python3", "-m", "snf_image", "--config-dir", str(conf), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("fmt", "options"), FORMATS)
@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_remote_container_lands_byte_identical(tmp_path, http_server, fmt, options, cache):
    image, _ = container(tmp_path, fmt, options)
    reference = tmp_path / "reference.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", image, reference)
    expected = reference.read_bytes()
    data = image.read_bytes()
    server = http_server({"/image": data})
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xa5" * (32 * MiB))
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    result = deploy(tmp_path, server.url("/image"), disk, checksum, cache)
    assert result.returncode == 0, result.stderr
    got = disk.read_bytes()
    assert got[: len(expected)] == expected
    assert got[len(expected) :] == b"\xa5" * (32 * MiB - len(expected))
    cached = [p for p in (tmp_path / "cache").glob("*") if not p.name.startswith(".")] if cache else []
    assert bool([p for p in cached if p.suffix == ".img"]) == cache  # the container itself is what is cached
    if cache:  # the second deployment converts the cached copy without contacting the server
        disk.write_bytes(b"\xa5" * (32 * MiB))
        gets = len(server.gets())
        assert deploy(tmp_path, server.url("/image"), disk, checksum, cache).returncode == 0
        assert disk.read_bytes()[: len(expected)] == expected
        assert len(server.gets()) == gets


def test_remote_container_with_a_wrong_checksum_is_refused_before_conversion(tmp_path, http_server):
    image, _ = container(tmp_path, "qcow2", [])
    server = http_server({"/image": image.read_bytes()})
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xa5" * (16 * MiB))
    result = deploy(tmp_path, server.url("/image"), disk, "sha256:" + "0" * 64, cache=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("snf-image: error:")]
    assert len(errors) == 1 and "image checksum mismatch" in errors[0], result.stderr
    assert disk.read_bytes() == b"\xa5" * (16 * MiB)
