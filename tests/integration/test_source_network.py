"""The network source against real HTTP(S) and FTP(S) servers on 127.0.0.1.

Every resumable failure must still deliver the exact bytes (sha256); every
unrecoverable one must end, within a bounded time, in its one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snf_image.errors import OperatorError, SourceError
from snf_image.sources.network import NetworkSource
from tests.servers import ImageServer, TlsFiles, read_all
from tests.servers.ftpd import FtpServer

pytestmark = pytest.mark.usefixtures("network_deadline")

SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of any buffer size
DATA = os.urandom(SIZE)
DIGEST = hashlib.sha256(DATA).hexdigest()

#: Fast settings: tests fail in seconds, not minutes.
FAST = {
    "HTTP_CONNECT_TIMEOUT": "2",
    "HTTP_READ_TIMEOUT": "0.5",
    "HTTP_RETRIES": "3",
    "RETRY_BACKOFF": "0.01",
    "FTP_TIMEOUT": "2",
    "FTP_RETRIES": "3",
}


@pytest.fixture
def server(http_server: Callable[..., ImageServer]) -> ImageServer:
    return http_server({"/img": DATA, "/small": DATA[:100_000]})


def source(**config: str) -> NetworkSource:
    return NetworkSource({**FAST, **config})


def fetch(url: str, **config: str) -> tuple[bytes, int | None]:
    with source(**config).open(url) as stream:
        return read_all(stream), stream.size


def ranges(server: ImageServer) -> list[str | None]:
    return [r.headers.get("Range") for r in server.gets()]


# -- HTTP: the happy paths -----------------------------------------------------------------------


def test_plain_download(server: ImageServer) -> None:
    data, size = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert size == SIZE
    assert ranges(server) == [None]
    assert server.requests[0].headers["Accept-Encoding"] == "identity"


def test_redirect_is_followed(server: ImageServer) -> None:
    server.behaviour.redirects = {"/old": "/img"}
    data, size = fetch(server.url("/old"))
    assert hashlib.sha256(data).hexdigest() == DIGEST and size == SIZE


def test_no_content_length_means_unknown_size(server: ImageServer) -> None:
    server.behaviour.transfer = "close"
    data, size = fetch(server.url("/img"))
    assert size is None
    assert hashlib.sha256(data).hexdigest() == DIGEST


def test_chunked_transfer(server: ImageServer) -> None:
    server.behaviour.transfer = "chunked"
    data, size = fetch(server.url("/img"))
    assert size is None
    assert hashlib.sha256(data).hexdigest() == DIGEST


def test_content_encoding_makes_size_unknown_and_is_decoded(http_server: Callable[..., ImageServer]) -> None:
    srv = http_server({"/img": gzip.compress(DATA, compresslevel=1)})
    srv.behaviour.content_encoding = "gzip"
    data, size = fetch(srv.url("/img"))
    assert size is None
    assert hashlib.sha256(data).hexdigest() == DIGEST


def test_small_caller_buffer(server: ImageServer) -> None:
    with source().open(server.url("/small")) as stream:
        assert read_all(stream, bufsize=1000) == DATA[:100_000]
        assert stream.readinto(memoryview(bytearray(10))) == 0  # stays at the end


# -- HTTP: resume ---------------------------------------------------------------------------------


def test_resume_after_reset(server: ImageServer) -> None:
    server.behaviour.drop_after = 1_000_000
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    got = ranges(server)
    assert len(got) == 2 and got[0] is None
    assert got[1] is not None and 0 < int(got[1][6:-1]) <= 1_000_000


def test_resume_after_several_resets(server: ImageServer) -> None:
    server.behaviour.drop_after = 400_000
    server.behaviour.drop_times = 4
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert len(ranges(server)) == 5


def test_resume_after_stall(server: ImageServer) -> None:
    server.behaviour.stall_after = 500_000
    server.behaviour.stall_seconds = 10
    started = time.monotonic()
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert time.monotonic() - started < 5
    resumed = ranges(server)[1]
    assert resumed is not None and 0 < int(resumed[6:-1]) <= 500_000


def test_resume_after_truncation(server: ImageServer) -> None:
    server.behaviour.truncate_after = 777_777
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert ranges(server) == [None, "bytes=777777-"]


def test_resume_chunked_after_reset(server: ImageServer) -> None:
    server.behaviour.transfer = "chunked"
    server.behaviour.drop_after = 300_000
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert len(ranges(server)) == 2


def test_server_ignoring_range_small_prefix_is_reread(server: ImageServer) -> None:
    server.behaviour.ignore_range = True
    server.behaviour.truncate_after = 500_000
    data, _ = fetch(server.url("/img"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert ranges(server) == [None, "bytes=500000-"]


def test_server_ignoring_range_large_prefix_fails(server: ImageServer) -> None:
    server.behaviour.ignore_range = True
    server.behaviour.truncate_after = 500_000
    with pytest.raises(SourceError) as err:
        fetch(server.url("/img"), HTTP_RESTART_SKIP_MAX="1000")
    assert str(err.value) == (
        f"cannot resume {server.url('/img')} at byte 500000: the server ignores range requests "
        "(re-reading is limited to HTTP_RESTART_SKIP_MAX=1000 bytes)"
    )


def test_wrong_content_range_is_refused(server: ImageServer) -> None:
    server.behaviour.truncate_after = 1000
    server.behaviour.wrong_range_start = 0
    with pytest.raises(SourceError, match=r"^cannot resume .*/img: asked for byte 1000 onwards, server sent"):
        fetch(server.url("/img"))


def test_changed_etag_is_refused(server: ImageServer) -> None:
    server.behaviour.etag = '"v1"'
    server.behaviour.truncate_after = 1_000_000
    with source().open(server.url("/img")) as stream, pytest.raises(SourceError) as err:
        assert stream.readinto(memoryview(bytearray(1000)))
        server.behaviour.etag = '"v2"'
        read_all(stream)
    assert str(err.value) == f"image at {server.url('/img')} changed on the server during the download"


def test_broken_encoded_download_is_not_resumed(http_server: Callable[..., ImageServer]) -> None:
    srv = http_server({"/img": gzip.compress(DATA, compresslevel=1)})
    srv.behaviour.content_encoding = "gzip"
    srv.behaviour.drop_after = 100_000
    with pytest.raises(SourceError, match=r"cannot be resumed \(the server sent Content-Encoding gzip\)"):
        fetch(srv.url("/img"))


def test_server_that_always_resets_gives_up(server: ImageServer) -> None:
    server.behaviour.drop_after = 0
    server.behaviour.drop_times = -1
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        fetch(server.url("/img"))
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith(f"download of {server.url('/img')} failed after 3 retries: ")
    assert "\n" not in message
    assert len(ranges(server)) == 4


def test_server_that_trickles_hits_the_total_cap(server: ImageServer) -> None:
    server.behaviour.drop_after = 1000
    server.behaviour.drop_times = -1
    with pytest.raises(SourceError, match=r"failed after 20 retries: "):
        fetch(server.url("/img"), HTTP_RETRIES="2")
    assert len(ranges(server)) == 21


def test_server_that_always_stalls_gives_up(server: ImageServer) -> None:
    server.behaviour.stall_after = 0
    server.behaviour.stall_times = -1
    server.behaviour.stall_seconds = 10
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        fetch(server.url("/img"), HTTP_RETRIES="2")
    assert time.monotonic() - started < 5
    assert str(err.value) == (
        f"download of {server.url('/img')} failed after 2 retries: no data from 127.0.0.1 for 0.5 s"
    )


# -- HTTP: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, "image not found at {url} (HTTP 404)"),
        (403, "access to {url} denied (HTTP 403)"),
        (401, "authentication failed for {url} (HTTP 401)"),
        (500, "cannot fetch {url}: HTTP 500 Internal Server Error"),
        (410, "cannot fetch {url}: HTTP 410 Gone"),
    ],
)
def test_http_error_status(server: ImageServer, status: int, expected: str) -> None:
    server.behaviour.status = status
    with pytest.raises(SourceError) as err:
        source().open(server.url("/img"))
    assert str(err.value) == expected.format(url=server.url("/img"))
    assert len(server.requests) == 1  # not retried


def test_unknown_path_is_404(server: ImageServer) -> None:
    with pytest.raises(SourceError, match=r"^image not found at http://127\.0\.0\.1:\d+/nope \(HTTP 404\)$"):
        source().open(server.url("/nope"))


def test_service_unavailable_is_retried_then_fails(server: ImageServer) -> None:
    server.behaviour.status = 503
    with pytest.raises(SourceError) as err:
        source().open(server.url("/img"))
    assert str(err.value) == (
        f"download of {server.url('/img')} failed after 3 retries: "
        f"server error for {server.url('/img')} (HTTP 503 Service Unavailable)"
    )
    assert len(server.requests) == 4


def test_credentials_are_used_but_never_shown(server: ImageServer) -> None:
    url = server.url("/img").replace("http://", "http://alice:s3cret@")
    server.behaviour.require_headers = {"Authorization": "Basic YWxpY2U6czNjcmV0"}
    data, _ = fetch(url)
    assert hashlib.sha256(data).hexdigest() == DIGEST
    server.behaviour.status = 404
    with pytest.raises(SourceError) as err:
        source().open(url + "?token=abc")
    assert "s3cret" not in str(err.value) and "alice" not in str(err.value) and "abc" not in str(err.value)
    assert str(err.value) == f"image not found at {server.url('/img')}?... (HTTP 404)"


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        source().open(f"http://127.0.0.1:{port}/img")
    assert str(err.value) == f"connection refused by 127.0.0.1:{port}"
    assert time.monotonic() - started < 2  # not retried


def test_unknown_host() -> None:
    with pytest.raises(SourceError) as err:
        source().open("http://no-such-host.invalid/img")
    assert str(err.value) == "cannot resolve host no-such-host.invalid"


# -- HTTPS ----------------------------------------------------------------------------------------


def test_https_untrusted_certificate_fails(http_server: Callable[..., ImageServer]) -> None:
    srv = http_server({"/img": DATA}, tls=True)
    with pytest.raises(SourceError) as err:
        source().open(srv.url("/img"))
    assert str(err.value).startswith("TLS certificate verification failed for 127.0.0.1: ")
    assert "self-signed certificate" in str(err.value) or "unable to get local issuer" in str(err.value)


def test_https_with_ca_bundle(http_server: Callable[..., ImageServer], tls_files: TlsFiles) -> None:
    srv = http_server({"/img": DATA}, tls=True)
    srv.behaviour.drop_after = 1_500_000
    data, size = fetch(srv.url("/img"), TLS_CA_BUNDLE=str(tls_files.ca_cert))
    assert len(ranges(srv)) == 2
    assert hashlib.sha256(data).hexdigest() == DIGEST and size == SIZE


def test_https_insecure_switch(http_server: Callable[..., ImageServer]) -> None:
    srv = http_server({"/img": DATA}, tls=True)
    data, _ = fetch(srv.url("/img"), TLS_INSECURE="yes")
    assert hashlib.sha256(data).hexdigest() == DIGEST


def test_missing_ca_bundle_is_an_operator_error(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match=r"^setting TLS_CA_BUNDLE: cannot read .*nope\.pem"):
        source(TLS_CA_BUNDLE=str(tmp_path / "nope.pem")).check("https://example.org/img")


# -- FTP ------------------------------------------------------------------------------------------


@pytest.fixture
def ftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "ftp"
    (root / "images").mkdir(parents=True)
    (root / "images" / "debian.img").write_bytes(DATA)
    return root


def test_ftp_anonymous_download(ftp_server: Callable[..., FtpServer], ftp_root: Path) -> None:
    ftp = ftp_server(ftp_root)
    data, size = fetch(ftp.url("images/debian.img"))
    assert size == SIZE
    assert hashlib.sha256(data).hexdigest() == DIGEST


def test_ftp_login_from_url(ftp_server: Callable[..., FtpServer], ftp_root: Path) -> None:
    ftp = ftp_server(ftp_root, user="bob", password="pw")
    data, _ = fetch(ftp.url("images/debian.img", userinfo="bob:pw"))
    assert hashlib.sha256(data).hexdigest() == DIGEST
    with pytest.raises(SourceError) as err:
        source().open(ftp.url("images/debian.img", userinfo="bob:wrong"))
    assert str(err.value).startswith("FTP login to 127.0.0.1 failed: 530")
    assert "wrong" not in str(err.value)


def test_ftp_resume_with_rest(ftp_server: Callable[..., FtpServer], ftp_root: Path) -> None:
    ftp = ftp_server(ftp_root)
    ftp.drop.after = 1_000_000
    ftp.drop.times = 2
    data, _ = fetch(ftp.url("images/debian.img"))
    offsets = list(ftp.drop.rest_offsets)
    assert hashlib.sha256(data).hexdigest() == DIGEST
    assert len(offsets) == 2 and all(0 < offset <= 2_000_000 for offset in offsets)


def test_ftp_always_dropping_gives_up(ftp_server: Callable[..., FtpServer], ftp_root: Path) -> None:
    ftp = ftp_server(ftp_root)
    ftp.drop.after = 0
    ftp.drop.times = -1
    with pytest.raises(SourceError) as err:
        fetch(ftp.url("images/debian.img"))
    assert str(err.value).startswith(f"download of {ftp.url('images/debian.img')} failed after 3 retries: ")


def test_ftp_missing_file(ftp_server: Callable[..., FtpServer], ftp_root: Path) -> None:
    ftp = ftp_server(ftp_root)
    with pytest.raises(SourceError) as err:
        source().open(ftp.url("images/nope.img"))
    assert str(err.value) == f"image not found at {ftp.url('images/nope.img')} (FTP 550)"


def test_ftps_with_ca_bundle(ftp_server: Callable[..., FtpServer], ftp_root: Path, tls_files: TlsFiles) -> None:
    ftp = ftp_server(ftp_root, tls=True)
    ftp.drop.after = 500_000
    data, size = fetch(ftp.url("images/debian.img"), TLS_CA_BUNDLE=str(tls_files.ca_cert))
    assert len(ftp.drop.rest_offsets) == 1
    with pytest.raises(SourceError, match=r"^TLS certificate verification failed for 127\.0\.0\.1: "):
        source().open(ftp.url("images/debian.img"))
    assert size == SIZE
    assert hashlib.sha256(data).hexdigest() == DIGEST
