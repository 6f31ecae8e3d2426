"""A real qemu-nbd serving a file on loopback TCP or a unix socket, for the NBD tests; always stopped.

The URIs it hands out are the ones Ganeti would pass for a userspace disk:
``uri`` in the NBD URI syntax libnbd reads (``nbd://``, ``nbd+unix://``),
``qemu_uri`` the same export in qemu's own syntax (``nbd:host:port:...``),
which snf-image reaches through a private qemu-nbd of its own, as it
would ``rbd:`` or ``gluster://``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 10.0
EXPORT = "disk0"


@dataclass(frozen=True)
class NbdServer:
    """A running qemu-nbd and the URIs of its one export."""

    backing: Path
    uri: str
    qemu_uri: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connectable(family: socket.AddressFamily, address: str | tuple[str, int]) -> bool:
    with socket.socket(family) as s:
        s.settimeout(1)
        try:
            s.connect(address)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serve(backing: Path, *, unix: bool = False, readonly: bool = False) -> Iterator[NbdServer]:
    """qemu-nbd exporting ``backing`` (raw) until the with-block ends."""
    argv = ["qemu-nbd", "--format=raw", f"--export-name={EXPORT}", "--persistent", "--shared=4"]
    if readonly:
        argv.append("--read-only")
    socket_dir = Path(tempfile.mkdtemp(prefix="snf-test-nbd-")) if unix else None  # short: sun_path is 108 bytes
    if socket_dir is not None:
        path = str(socket_dir / "nbd.sock")
        argv.append(f"--socket={path}")
        family, address = socket.AF_UNIX, path
        server = NbdServer(backing, f"nbd+unix:///{EXPORT}?socket={path}", f"nbd:unix:{path}:exportname={EXPORT}")
    else:
        port = free_port()
        argv += ["--bind=127.0.0.1", f"--port={port}"]
        family, address = socket.AF_INET, ("127.0.0.1", port)
        server = NbdServer(backing, f"nbd://127.0.0.1:{port}/{EXPORT}", f"nbd:127.0.0.1:{port}:exportname={EXPORT}")
    proc = subprocess.Popen([*argv, str(backing)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _connectable(family, address):
            if proc.poll() is not None:
                raise AssertionError(f"qemu-nbd failed: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"qemu-nbd did not listen within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if socket_dir is not None:
            shutil.rmtree(socket_dir, ignore_errors=True)
