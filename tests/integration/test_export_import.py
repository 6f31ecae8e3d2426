"""Ganeti's export and import of every kind of disk the OS scripts accept, through the real entry scripts.

The kinds: a regular file (file and sharedfile templates), a block device
(a loop device here; LVM, DRBD, an adopted device on a node), and userspace
disks given as URIs -- ``nbd://`` (TCP) and ``nbd+unix://`` read and written
with libnbd against a real qemu-nbd, and a URI in qemu's own syntax
(``rbd:``, ``gluster://``, here qemu's ``nbd:`` one, the only protocol a test
can serve) that snf-image opens through a private qemu-nbd of its own.

Each disk holds random data with a long zero run. ``export`` runs with the
environment Ganeti gives it (EXPORT_* and EXP_SIZE_FD); its stdout must be
the disk byte for byte and the size on EXP_SIZE_FD. ``import`` then writes
that stream onto a fresh disk of the same kind holding other bytes, which
must become identical -- the zero run included, which the sparse-aware copy
zeroes without writing it (a hole in a file or under a loop device,
NBD_CMD_WRITE_ZEROES over NBD). Userspace disks are exported from a read-only server: an
export never needs to write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import loopdev, nbdserver
from tests.osenv import OsDefinition, create_env, install

MiB = 1 << 20
KINDS = ["file", "block", "nbd", "nbd-unix", "qemu-uri"]
USERSPACE = {"nbd", "nbd-unix", "qemu-uri"}


@pytest.fixture
def osdef(tmp_path: Path) -> OsDefinition:
    return install(tmp_path / "inst")


def disk_bytes() -> bytes:
    return os.urandom(3 * MiB) + bytes(16 * MiB) + os.urandom(5 * MiB - 4096) + os.urandom(4096)


@contextlib.contextmanager
def disk_of(kind: str, backing: Path, readonly: bool = False) -> Iterator[str]:
    """The path or URI Ganeti would give for a disk of ``kind`` whose bytes live in ``backing``."""
    if kind == "file":
        yield str(backing)
    elif kind == "block":
        with loopdev.attach(backing) as loop:
            yield str(loop.path)
    else:
        with nbdserver.serve(backing, unix=kind == "nbd-unix", readonly=readonly) as server:
            yield server.qemu_uri if kind == "qemu-uri" else server.uri


def script_env(kind: str, script: str, disk: str, **extra: str) -> dict[str, str]:
    """The environment of ``script`` (export or import) for disk 0, as Ganeti builds it."""
    env = create_env("inst1.example.test", disk, **extra)
    prefix = "EXPORT" if script == "export" else "IMPORT"
    env[f"{prefix}_INDEX"] = "0"
    if kind in USERSPACE:
        del env["DISK_0_PATH"]
        env.update({"DISK_0_URI": disk, "DISK_0_BACKEND_TYPE": "rbd", f"{prefix}_DISK_URI": disk})
    else:
        env.update({f"{prefix}_DEVICE": disk, f"{prefix}_DISK_PATH": disk})
    return env


def export(osdef: OsDefinition, kind: str, disk: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run export; (its result, what it wrote on EXP_SIZE_FD)."""
    read_fd, write_fd = os.pipe()
    try:
        result = osdef.run("export", script_env(kind, "export", disk, EXP_SIZE_FD=str(write_fd)), pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as size_pipe:
        return result, size_pipe.read()


@pytest.mark.parametrize("kind", KINDS)
def test_export_then_import_is_byte_identical(osdef: OsDefinition, tmp_path: Path, kind: str) -> None:
    data = disk_bytes()
    source = tmp_path / "source.raw"
    source.write_bytes(data)
    with disk_of(kind, source, readonly=True) as disk:
        exported, size = export(osdef, kind, disk)
    assert exported.returncode == 0, exported.stderr.decode()[-2000:]
    assert size == f"{len(data)}\n"
    assert exported.stdout == data
    assert source.read_bytes() == data

    copy = tmp_path / "copy.raw"
    copy.write_bytes(b"\xa5" * len(data))
    with disk_of(kind, copy) as disk:
        imported = osdef.run("import", script_env(kind, "import", disk), stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr.decode()[-2000:]
    assert copy.read_bytes() == data
    if kind not in USERSPACE:  # a punched hole (qemu-nbd keeps the blocks unless told --discard=unmap)
        assert os.stat(copy).st_blocks * 512 < len(data) - 8 * MiB


def peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes: its peak RSS since its exec (ru_maxrss would count the forked parent)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_a_userspace_export_runs_in_constant_memory(osdef: OsDefinition, tmp_path: Path) -> None:
    """A 1 GiB nbd:// disk streams through export with a peak RSS far below its size."""
    size = 1 << 30
    source = tmp_path / "big.raw"
    with open(source, "wb") as f:
        f.truncate(size)
        f.seek(300 * MiB)
        f.write(os.urandom(MiB))
    expected = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(64 * MiB):
            expected.update(chunk)
    with nbdserver.serve(source, readonly=True) as server:
        env = {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "SNF_IMAGE_CONFIG_DIR": str(osdef.config_dir),
               "SNF_IMAGE_VARIANTS_DIR": str(osdef.variants_dir), "TMPDIR": str(osdef.tmpdir),
               **script_env("nbd", "export", server.uri)}  # fmt: skip
        proc = subprocess.Popen(["./export"], cwd=osdef.os_dir, env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        got = hashlib.sha256()
        count = 0
        peak = 0
        while chunk := proc.stdout.read(4 * MiB):
            got.update(chunk)
            count += len(chunk)
            if not peak and count >= size - 64 * MiB:  # the export is still running, blocked on the pipe
                peak = peak_rss(proc.pid)
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
    assert count == size and got.hexdigest() == expected.hexdigest()
    print(f"\n[memory] export of a 1 GiB nbd:// disk: peak RSS {peak / MiB:.0f} MiB")
    assert 0 < peak < 128 * MiB


def test_an_unreachable_userspace_disk_is_one_error_line(osdef: OsDefinition) -> None:
    port = nbdserver.free_port()
    exported, size = export(osdef, "nbd", f"nbd://127.0.0.1:{port}/disk0")
    assert exported.returncode == 1 and exported.stdout == b"" and size == ""
    errors = [line for line in exported.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: cannot connect to disk nbd://127.0.0.1:{port}/disk0: ")
    assert "Traceback" not in exported.stderr.decode()
