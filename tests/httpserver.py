"""A real threaded HTTP(S) server on 127.0.0.1 that serves test files and misbehaves on request.

Sources must be tested against real sockets: the failures that matter
(a reset in the middle of a body, a stalled peer, a body shorter than its
Content-Length, a server that ignores ``Range``) only exist on the wire.
Tests set :attr:`ImageServer.behaviour` before (or between) requests; each
"once or several times" misbehaviour counts down as responses consume it.

    with ImageServer({"/img": data}) as server:
        server.behaviour.drop_after = 1000
        stream = open_the_source(server.url("/img"))

Stopping the server closes every client connection and joins every handler
thread, so a test leaves nothing running behind it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import re
import socket
import ssl
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
    #: Answer ``Range`` requests with 200 and the whole file.
    ignore_range: bool = False
    #: Answer ``Range`` requests with 206 and this (wrong) start offset.
    wrong_range_start: int | None = None
    #: "length" (Content-Length), "close" (no length, end = close) or "chunked".
    transfer: str = "length"
    #: A Content-Encoding header to send (the body is not actually encoded).
    content_encoding: str | None = None
    #: ETag header value, if any.
    etag: str | None = None
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


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost signed by it."""

    ca_cert: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Create a CA and a server certificate under ``directory`` (python3-cryptography)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    lifetime = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("snf-image test CA"))
        .issuer_name(name("snf-image test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(lifetime[0])
        .not_valid_after(lifetime[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(lifetime[0])
        .not_valid_after(lifetime[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return files


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
        start = 0
        header_range = self.headers.get("Range")
        match = re.fullmatch(r"bytes=([0-9]+)-", header_range or "")
        status = 200
        if match and not behaviour.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self._simple(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
        send_start = start if behaviour.wrong_range_start is None or status != 206 else behaviour.wrong_range_start
        payload = memoryview(data)[send_start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {send_start}-{len(data) - 1}/{len(data)}")
        if behaviour.etag:
            self.send_header("ETag", behaviour.etag)
        if behaviour.content_encoding:
            self.send_header("Content-Encoding", behaviour.content_encoding)
        if behaviour.transfer == "length":
            self.send_header("Content-Length", str(len(payload)))
        elif behaviour.transfer == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self._send_body(payload, behaviour)

    def _send_body(self, payload: memoryview, behaviour: Behaviour) -> None:
        owner = self.server.owner
        action, cut = None, len(payload)
        for name in ("drop", "stall", "truncate"):
            after = getattr(behaviour, f"{name}_after")
            if after is not None and owner.consume(name):
                action, cut = name, min(after, len(payload))
                break
        try:
            self._write(payload[:cut])
            if action == "stall":
                owner.stopping.wait(behaviour.stall_seconds)
                self._write(payload[cut:])
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
    """Serve ``files`` (URL path -> bytes) on 127.0.0.1 over HTTP, or HTTPS with ``tls``."""

    def __init__(self, files: dict[str, bytes], tls: TlsFiles | None = None) -> None:
        self.files = files
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

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this server."""
        scheme = "https" if self.tls_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

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
        httpd = _Server(("127.0.0.1", 0), _Handler)
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


__all__ = ["Behaviour", "ImageServer", "RequestLog", "TlsFiles", "make_tls_files"]
