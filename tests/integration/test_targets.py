"""Disk targets for real: a loop block device (BLKZEROOUT) and userspace URIs through a real qemu-nbd."""

import os
import re
import tempfile

import pytest

from snf_image.copy import copy_stream
from snf_image.errors import OperatorError
from snf_image.lifecycle import INHERITED_VARIABLES
from snf_image.sources.local import LocalStream
from snf_image.targets import BlockTarget, NbdTarget, TargetError, open_target
from tests import leftovers, loopdev, nbdserver

MiB = 1024 * 1024


def image_with_holes(path):
    data = os.urandom(2 * MiB) + bytes(12 * MiB) + os.urandom(2 * MiB)
    path.write_bytes(data)
    return data


def test_block_device_gets_exact_bytes_and_zeroed_runs(tmp_path):
    backing = tmp_path / "backing.raw"
    backing.write_bytes(b"\xa5" * (32 * MiB))
    image = tmp_path / "image.raw"
    data = image_with_holes(image)
    with loopdev.attach(backing) as loop:
        with open_target(str(loop.path)) as target:
            assert isinstance(target, BlockTarget) and target.size == 32 * MiB
            with LocalStream(image) as stream:
                copy_stream(stream, target, total=stream.size)
            target.flush()
        assert loop.path.read_bytes()[: len(data)] == data
    assert backing.read_bytes()[len(data) :] == b"\xa5" * (16 * MiB)
    # BLKZEROOUT on a loop device punches the backing file: the zero run costs no writes
    assert os.stat(backing).st_blocks * 512 < 24 * MiB


@pytest.fixture
def nbd_export(tmp_path):
    """A real qemu-nbd serving a disk file on loopback TCP."""
    disk = tmp_path / "remote-disk.raw"
    disk.write_bytes(b"\xa5" * (32 * MiB))
    with nbdserver.serve(disk) as server:
        yield disk, server


def test_nbd_uri_through_libnbd(tmp_path, nbd_export):
    disk, server = nbd_export
    image = tmp_path / "image.raw"
    data = image_with_holes(image)
    with open_target(server.uri) as target:
        assert isinstance(target, NbdTarget) and target.size == 32 * MiB
        with LocalStream(image) as stream:
            copy_stream(stream, target, total=stream.size)
        target.flush()
    got = disk.read_bytes()
    assert got[: len(data)] == data and got[len(data) :] == b"\xa5" * (16 * MiB)


def test_other_uris_through_a_private_qemu_nbd(tmp_path, nbd_export, monkeypatch):
    """A URI that is not nbd:// (here qemu's legacy nbd: syntax) goes through our own qemu-nbd, our child.

    Its socket lives in a TMPDIR too long for a unix socket's path (107 bytes).
    """
    disk, export = nbd_export
    image = tmp_path / "image.raw"
    data = image_with_holes(image)
    private_tmp = tmp_path / ("long-tmpdir-" + "x" * 100)
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("OSP_IMG_PASSWD", "never-in-a-child-8231")
    watch = leftovers.Watch(marker=private_tmp, tmpdir=private_tmp)
    with open_target(export.qemu_uri) as target:
        assert target.size == 32 * MiB
        (server,) = [pid for pid in leftovers.descendants() if "--socket=/proc/self/fd/" in leftovers.cmdline(pid)]
        names = {line.partition("=")[0] for line in leftovers.environ(server).split("\n") if line}
        assert names <= set(INHERITED_VARIABLES) and "never-in-a-child-8231" not in leftovers.environ(server)
        with LocalStream(image) as stream:
            copy_stream(stream, target, total=stream.size)
        target.flush()
    assert disk.read_bytes()[: len(data)] == data
    _, left = watch.wait_clean(1)
    assert not left, left


def test_unreachable_uri_is_a_clear_error():
    with pytest.raises(TargetError, match=re.escape("cannot connect to disk nbd://127.0.0.1:1/x")):
        open_target("nbd://127.0.0.1:1/x")
    with pytest.raises(TargetError, match="qemu-nbd cannot open disk"):
        open_target("rbd:pool/image")


def test_unusable_local_paths(tmp_path):
    with pytest.raises(OperatorError, match="No such file"):
        open_target(str(tmp_path / "missing"))
    with pytest.raises(OperatorError, match="neither a regular file nor a block device"):
        open_target(str(tmp_path))
