"""A real FTP(S) server on 127.0.0.1 (pyftpdlib, Debian package python3-pyftpdlib) for source tests.

It serves a directory, anonymously and optionally for one user, and can
abort the data connection (TCP RST) after N bytes of a transfer, a given
number of times, to exercise the source's ``REST`` resume, or send at a
limited rate (``rate_limit`` bytes/s, pyftpdlib's throttled data channel).
It counts the ``RETR`` commands it receives. The server loop runs in one
thread that :meth:`FtpServer.stop` ends and joins.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler, ThrottledDTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer

from .tls import TlsFiles


class _DropState:
    """Shared, thread-safe countdown of data connections to abort."""

    def __init__(self) -> None:
        self.after: int | None = None
        self.times = 1
        self.rest_offsets: list[int] = []
        self.retrieved: list[str] = []
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self.after is None or self.times == 0:
                return None
            if self.times > 0:
                self.times -= 1
            return self.after


def _dropping(base: type[DTPHandler], state: _DropState) -> type[DTPHandler]:
    class Dropping(base):  # type: ignore[misc, valid-type]
        _drop_at: int | bool | None = False

        def send(self, data: bytes) -> int:
            if self._drop_at is False:
                self._drop_at = state.take()
            if self._drop_at is not None:
                room = self._drop_at - self.tot_bytes_sent
                if room <= 0:
                    time.sleep(0.1)  # let the client read what was sent: a RST discards unread data
                    self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self._resp = ("426 Connection dropped by the test; transfer aborted.", lambda *a: None)
                    self.close()
                    return 0
                data = data[:room]
            return super().send(data)

    return Dropping


class FtpServer:
    """Serve ``root`` over FTP (or explicit FTPS with ``tls``) on an ephemeral loopback port."""

    def __init__(
        self,
        root: Path,
        *,
        user: str | None = None,
        password: str = "",
        tls: TlsFiles | None = None,
        rate_limit: int = 0,
    ) -> None:
        self.root = root
        self.drop = _DropState()
        authorizer = DummyAuthorizer()
        authorizer.add_anonymous(str(root))
        if user is not None:
            authorizer.add_user(user, password, str(root), perm="elr")
        base, dtp_base = (TLS_FTPHandler, TLS_DTPHandler) if tls else (FTPHandler, DTPHandler)
        if rate_limit:
            assert not tls, "a throttled FTPS data channel is not implemented"
            dtp_base = type("Throttled", (ThrottledDTPHandler,), {"write_limit": rate_limit})
        drop = self.drop

        class Handler(base):  # type: ignore[misc, valid-type]
            def ftp_REST(self, line: str) -> None:
                drop.rest_offsets.append(int(line))
                super().ftp_REST(line)

            def ftp_RETR(self, file: str) -> None:
                drop.retrieved.append(file)
                super().ftp_RETR(file)

        Handler.authorizer = authorizer
        Handler.dtp_handler = _dropping(dtp_base, self.drop)
        Handler.use_sendfile = False  # sendfile() would bypass send(), where drops happen
        Handler.banner = "snf-image test FTP"
        Handler.auth_failed_timeout = 0.05  # pyftpdlib delays a failed login by 3 s by default
        if tls:
            Handler.certfile = str(tls.cert)
            Handler.keyfile = str(tls.key)
        Handler.passive_ports = None
        self._server = FTPServer(("127.0.0.1", 0), Handler)
        self._port = self._server.address[1]
        self._scheme = "ftps" if tls else "ftp"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str, userinfo: str = "") -> str:
        """``ftp://`` (or ``ftps://``) URL of ``path`` relative to the served directory."""
        prefix = f"{userinfo}@" if userinfo else ""
        return f"{self._scheme}://{prefix}127.0.0.1:{self.port}/{path}"

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._server.ioloop.loop(timeout=0.05, blocking=False)
        finally:
            self._server.close_all()

    def start(self) -> FtpServer:
        self._thread = threading.Thread(target=self._loop, name="test-ftp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop, close every connection, join the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
