"""A real threaded HTTP(S) server on loopback that serves test files and misbehaves on request.

Sources must be tested against real sockets: the failures that matter
(a reset in the middle of a body, a stalled peer, a body shorter than its
Content-Length, a server that ignores ``Range``) only exist on the wire.
Tests set :attr:`ImageServer.behaviour` before (or between) requests; each
"once or several times" misbehaviour counts down as responses consume it.

    with ImageServer({"/img": data}) as server:
        server.behaviour.drop_after = 1000
        stream = open_the_source(server.url("/img"))

Validators and conditional requests follow RFC 9110: ``ETag`` and
``Last-Modified`` when set, ``If-Range`` (a resume of another version gets
the whole new body, 200), ``If-None-Match`` / ``If-Modified-Since`` (304).

Stopping the server closes every client connection and joins every handler
thread, so a test leaves nothing running behind it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .tls import TlsFiles

#: Body bytes written per send(); small enough that a drop lands near its offset.
_WRITE_CHUNK = 64 * 1024


@dataclass
class Behaviour:
    """What the server does wrong; ``*_times`` of -1 means every response."""

    #: Answer every request with this status (404, 403, 500, ...) instead of the file.
    status: int | None = None
    #: Abort the connection (TCP RST) after this many body bytes of a response.
    drop_after: int | None = None
    drop_times: int = 1
    #: Pause before the reset so the client reads what was sent (a RST discards unread data).
    drop_delay: float = 0.1
    #: Stop sending for ``stall_seconds`` after this many body bytes.
    stall_after: int | None = None
    stall_seconds: float = 5.0
    stall_times: int = 1
    #: Send the full Content-Length header but close cleanly (FIN) after this many bytes.
    truncate_after: int | None = None
    truncate_times: int = 1
    #: After this many body bytes, send one byte every ``trickle_interval`` seconds (never stalls long).
    trickle_after: int | None = None
    trickle_interval: float = 0.1
    #: Answer ``Range`` requests with 200 and the whole file.
    ignore_range: bool = False
    #: Answer ``Range`` requests with 206 and this (wrong) start offset.
    wrong_range_start: int | None = None
    #: "length" (Content-Length), "close" (no length, end = close) or "chunked".
    transfer: str = "length"
    #: A Content-Encoding header to send (the body is not actually encoded).
    content_encoding: str | None = None
    #: ETag and Last-Modified header values, if any.
    etag: str | None = None
    last_modified: str | None = None
    #: Whether 206 responses repeat the validators (RFC 9110 says they should; not every server does).
    validators_on_partial: bool = True
    #: Headers a request must carry (else 401), e.g. {"X-Auth-Token": "secret"}.
    require_headers: dict[str, str] = field(default_factory=dict)
    #: path -> Location: answer 302 to these paths.
    redirects: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestLog:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    owner: ImageServer

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        context = self.owner.tls_context
        if context is not None:
            # Handshake lazily, in the handler thread, so a client that rejects
            # the certificate cannot block the accept loop.
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.owner.track(sock)
        return sock, addr


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 10

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError):
            self.close_connection = True

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _simple(self, status: int, extra: dict[str, str] | None = None) -> None:
        payload = f"{status}\n".encode()
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _validators(self) -> dict[str, str]:
        behaviour = self.server.owner.behaviour
        found = {"ETag": behaviour.etag, "Last-Modified": behaviour.last_modified}
        return {key: value for key, value in found.items() if value}

    def _not_modified(self) -> bool:
        validators = self._validators()
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return "ETag" in validators and if_none_match == validators["ETag"]
        since = self.headers.get("If-Modified-Since")
        return since is not None and since == validators.get("Last-Modified")

    def _range_start(self, length: int) -> int | None:
        """The start the client asked for, when it is honoured (If-Range must name this version)."""
        match = re.fullmatch(r"bytes=([0-9]+)-", self.headers.get("Range") or "")
        if not match or self.server.owner.behaviour.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in self._validators().values():
            return None
        return int(match.group(1))

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        behaviour = owner.behaviour
        owner.log(RequestLog(self.command, self.path, dict(self.headers.items())))
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path in behaviour.redirects:
            self._simple(302, {"Location": behaviour.redirects[path]})
            return
        for key, value in behaviour.require_headers.items():
            if self.headers.get(key) != value:
                self._simple(401)
                return
        if behaviour.status is not None:
            self._simple(behaviour.status)
            return
        data = owner.files.get(path)
        if data is None:
            self._simple(404)
            return
        if self._not_modified():
            self._simple(304, self._validators())
            return
        start = self._range_start(len(data))
        if start is not None and start >= len(data):
            self._simple(416, {"Content-Range": f"bytes */{len(data)}"})
            return
        send_start = start or 0
        if start is not None and behaviour.wrong_range_start is not None:
            send_start = behaviour.wrong_range_start
        self._send_headers(data, start, send_start)
        if body:
            self._send_body(memoryview(data)[send_start:], behaviour)

    def _send_headers(self, data: bytes, start: int | None, send_start: int) -> None:
        behaviour = self.server.owner.behaviour
        self.send_response(200 if start is None else 206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range", f"bytes {send_start}-{len(data) - 1}/{len(data)}")
        if start is None or behaviour.validators_on_partial:
            for key, value in self._validators().items():
                self.send_header(key, value)
        if behaviour.content_encoding:
            self.send_header("Content-Encoding", behaviour.content_encoding)
        if behaviour.transfer == "length":
            self.send_header("Content-Length", str(len(data) - send_start))
        elif behaviour.transfer == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _send_body(self, payload: memoryview, behaviour: Behaviour) -> None:
        owner = self.server.owner
        action, cut = None, len(payload)
        for name in ("drop", "stall", "truncate"):
            after = getattr(behaviour, f"{name}_after")
            if after is not None and owner.consume(name):
                action, cut = name, min(after, len(payload))
                break
        if action is None and behaviour.trickle_after is not None:
            action, cut = "trickle", min(behaviour.trickle_after, len(payload))
        try:
            self._write(payload[:cut])
            if action == "stall":
                owner.stopping.wait(behaviour.stall_seconds)
                self._write(payload[cut:])
            elif action == "trickle":
                for offset in range(cut, len(payload)):
                    if owner.stopping.wait(behaviour.trickle_interval):
                        break
                    self._write(payload[offset : offset + 1])
            elif action is None:
                if behaviour.transfer == "chunked":
                    self.wfile.write(b"0\r\n\r\n")
            else:
                self.close_connection = True
                if action == "drop":
                    owner.stopping.wait(behaviour.drop_delay)
                    # SO_LINGER 0: close() sends a RST, the client sees a reset, not an EOF.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            self.close_connection = True

    def _write(self, data: memoryview) -> None:
        chunked = self.server.owner.behaviour.transfer == "chunked"
        for offset in range(0, len(data), _WRITE_CHUNK):
            piece = data[offset : offset + _WRITE_CHUNK]
            if chunked:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + bytes(piece) + b"\r\n")
            else:
                self.wfile.write(piece)


class ImageServer:
    """Serve ``files`` (URL path -> bytes) on ``host`` (default 127.0.0.1) over HTTP, or HTTPS with ``tls``."""

    def __init__(self, files: dict[str, bytes], tls: TlsFiles | None = None, host: str = "127.0.0.1") -> None:
        self.files = files
        self.host = host
        self.behaviour = Behaviour()
        self.requests: list[RequestLog] = []
        self.stopping = threading.Event()
        self.tls_context: ssl.SSLContext | None = None
        if tls is not None:
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(tls.cert, tls.key)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of ``path`` on this server."""
        scheme = "https" if self.tls_context else "http"
        host = host or self.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}{path}"

    def gets(self, path: str | None = None) -> list[RequestLog]:
        """The GET requests received so far (for ``path`` only, when given)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and (path is None or urllib.parse.urlsplit(r.path).path == path)
            ]

    def log(self, entry: RequestLog) -> None:
        with self._lock:
            self.requests.append(entry)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def consume(self, name: str) -> bool:
        """Take one occurrence of a counted misbehaviour; False when none is left."""
        with self._lock:
            left = getattr(self.behaviour, f"{name}_times")
            if left == 0:
                return False
            if left > 0:
                setattr(self.behaviour, f"{name}_times", left - 1)
            return True

    def start(self) -> ImageServer:
        server_class = _Server6 if ":" in self.host else _Server
        httpd = server_class((self.host, 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut every open connection, join every thread."""
        self.stopping.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Behaviour", "ImageServer", "RequestLog"]
