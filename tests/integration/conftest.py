"""Fixtures for the tests of what the host fetches: one HTTP(S) and one FTP(S) loopback server fixture.

``http_server(files, tls=False)`` and ``ftp_server(root, tls=False, ...)``
start a server and stop it when the test ends (every connection cut, every
thread joined). ``network_deadline`` bounds a test (SIGALRM interrupts a
blocked socket call) and checks that it left no thread behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported by the fixtures: most integration tests need no server (nor pyftpdlib)
    from tests.servers import ImageServer, TlsFiles
    from tests.servers.ftpd import FtpServer

#: Seconds one network test may take.
NETWORK_TEST_DEADLINE = 20


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and a certificate for 127.0.0.1/localhost."""
    from tests.servers.tls import make_tls_files

    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def http_server(tls_files: TlsFiles) -> Iterator[Callable[..., ImageServer]]:
    """Factory: ``http_server({"/path": bytes}, tls=False, host="127.0.0.1")`` -> a started ImageServer."""
    from tests.servers.httpd import ImageServer

    started: list[ImageServer] = []

    def start(files: dict[str, bytes], tls: bool = False, host: str = "127.0.0.1") -> ImageServer:
        server = ImageServer(files, tls=tls_files if tls else None, host=host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ftp_server(tls_files: TlsFiles) -> Iterator[Callable[..., FtpServer]]:
    """Factory: ``ftp_server(root, tls=False, user=None, password="", rate_limit=0)`` -> a started FtpServer."""
    from tests.servers.ftpd import FtpServer

    started: list[FtpServer] = []

    def start(root: Path, tls: bool = False, **options: Any) -> FtpServer:
        server = FtpServer(root, tls=tls_files if tls else None, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def network_deadline() -> Iterator[None]:
    """No test may hang or leave a server thread behind."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"test exceeded its {NETWORK_TEST_DEADLINE} s deadline")

    before = set(threading.enumerate())
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(NETWORK_TEST_DEADLINE)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    left = [t for t in threading.enumerate() if t not in before]
    for thread in left:
        thread.join(2)
    assert not [t.name for t in left if t.is_alive()]
