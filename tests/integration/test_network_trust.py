"""Network trust (issue 13, item 5 and If-Range): redirects, rebinding, minimum rate, resumes of a changed object.

Everything against real servers: the public-to-private redirect cases run in
network and mount namespaces where a public address lives on loopback
(:mod:`tests.netns`), so the policy code sees real public and private peers
on real HTTP responses.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snf_image.errors import SourceError
from snf_image.sources.network import NetworkSource
from tests.netns import PUBLIC_V4, run_isolated, set_hosts
from tests.servers import ImageServer, read_all
from tests.servers.ftpd import FtpServer

pytestmark = pytest.mark.usefixtures("network_deadline")

DATA = os.urandom(2 * 1024 * 1024 + 4321)
FAST = {
    "HTTP_CONNECT_TIMEOUT": "2",
    "HTTP_READ_TIMEOUT": "1",
    "HTTP_RETRIES": "3",
    "RETRY_BACKOFF": "0.01",
    "FTP_TIMEOUT": "2",
    "FTP_RETRIES": "3",
}


def fetch(url: str, **config: str) -> bytes:
    with NetworkSource({**FAST, **config}).open(url) as stream:
        return read_all(stream)


# -- redirects: no downgrade -----------------------------------------------------------------------


def test_https_is_never_redirected_to_http(http_server: Callable[..., ImageServer], tls_files: Any) -> None:
    plain = http_server({"/img": DATA})
    secure = http_server({}, tls=True)
    secure.behaviour.redirects = {"/img": plain.url("/img")}
    with pytest.raises(SourceError) as err:
        fetch(secure.url("/img"), TLS_CA_BUNDLE=str(tls_files.ca_cert))
    assert str(err.value) == (
        f"refusing the redirect from {secure.url('/img')} to {plain.url('/img')}: https must not be redirected to http"
    )
    assert not plain.requests


def test_a_private_url_may_redirect_within_private_addresses(http_server: Callable[..., ImageServer]) -> None:
    target = http_server({"/img": DATA})
    origin = http_server({})
    origin.behaviour.redirects = {"/img": target.url("/img", host="localhost")}
    assert fetch(origin.url("/img")) == DATA


# -- redirects from a public URL to non-public addresses (in namespaces) ---------------------------


def scenario_redirect(location: str, private_host: str, allow: bool = False) -> dict[str, Any]:
    """A public server redirects to ``location`` (``{port}``: a private server's port); what happens?"""
    data = os.urandom(100_000)
    with ImageServer({"/img": data}, host=private_host) as private, ImageServer({}, host=PUBLIC_V4) as public:
        public.behaviour.redirects = {"/img": location.format(port=private.port)}
        config = {"ALLOW_PRIVATE_REDIRECTS": "yes"} if allow else {}
        try:
            outcome: dict[str, Any] = {"delivered": fetch(public.url("/img"), **config) == data}
        except SourceError as exc:
            outcome = {"error": str(exc)}
        outcome["private_requests"] = len(private.requests)
        return outcome


def scenario_public_to_public() -> dict[str, Any]:
    """A public server redirects to another public server: allowed."""
    data = os.urandom(100_000)
    with ImageServer({"/img": data}, host=PUBLIC_V4) as second, ImageServer({}, host=PUBLIC_V4) as first:
        first.behaviour.redirects = {"/img": second.url("/img", host="mirror.example")}
        return {"delivered": fetch(first.url("/img")) == data}


@pytest.mark.parametrize(
    ("target", "private_host", "addresses"),
    [
        ("http://127.0.0.1:{port}/img", "127.0.0.1", {"127.0.0.1"}),
        ("http://localhost:{port}/img", "127.0.0.1", {"127.0.0.1", "::1"}),
        ("http://[::1]:{port}/img", "::1", {"::1"}),
        ("http://[::ffff:127.0.0.1]:{port}/img", "127.0.0.1", {"::ffff:127.0.0.1"}),
        # one public and one private address: every address counts
        ("http://mixed.example:{port}/img", "127.0.0.1", {"127.0.0.1"}),
    ],
)
def test_a_public_url_is_not_redirected_to_a_private_address(
    tmp_path: Path, target: str, private_host: str, addresses: set[str]
) -> None:
    hosts = {"mixed.example": [PUBLIC_V4, "127.0.0.1"]}
    outcome = run_isolated(f"{__name__}:scenario_redirect", hosts, tmp_path, location=target, private_host=private_host)
    host = target.split("//")[1].rsplit(":", 1)[0].strip("[]")
    expected = {
        f"refusing to connect to {host} ({address}): a non-public address, reached from the public "
        f"host {PUBLIC_V4} (ALLOW_PRIVATE_REDIRECTS=yes allows it)"
        for address in addresses
    }
    assert outcome["error"] in expected
    assert outcome["private_requests"] == 0


def test_allow_private_redirects_lets_a_public_url_redirect_to_loopback(tmp_path: Path) -> None:
    outcome = run_isolated(
        f"{__name__}:scenario_redirect",
        {},
        tmp_path,
        location="http://127.0.0.1:{port}/img",
        private_host="127.0.0.1",
        allow=True,
    )
    assert outcome == {"delivered": True, "private_requests": 1}


def test_a_public_url_may_redirect_to_another_public_address(tmp_path: Path) -> None:
    assert run_isolated(f"{__name__}:scenario_public_to_public", {"mirror.example": [PUBLIC_V4]}, tmp_path) == {
        "delivered": True
    }


def scenario_rebinding_on_resume() -> dict[str, Any]:
    """images.example is public for the first request; when the transfer breaks it names 127.0.0.1."""
    data = os.urandom(3 * 1024 * 1024)
    with ImageServer({"/img": data}, host=PUBLIC_V4) as public, ImageServer({"/img": data}) as private:
        public.behaviour.drop_after = 1_000_000
        with NetworkSource(FAST).open(f"http://images.example:{public.port}/img") as stream:
            assert stream.readinto(memoryview(bytearray(1000)))
            set_hosts({"images.example": ["127.0.0.1"]})
            try:
                read_all(stream)
                outcome: dict[str, Any] = {"delivered": True}
            except SourceError as exc:
                outcome = {"error": str(exc)}
        outcome["private_requests"] = len(private.requests)
        return outcome


def test_a_name_rebound_to_a_private_address_is_refused_on_resume(tmp_path: Path) -> None:
    outcome = run_isolated(f"{__name__}:scenario_rebinding_on_resume", {"images.example": [PUBLIC_V4]}, tmp_path)
    assert outcome == {
        "error": "refusing to connect to images.example (127.0.0.1): a non-public address, reached from the "
        "public host images.example (ALLOW_PRIVATE_REDIRECTS=yes allows it)",
        "private_requests": 0,
    }


# -- a minimum rate ends a trickle ----------------------------------------------------------------


def test_a_trickling_http_server_fails_on_the_minimum_rate(http_server: Callable[..., ImageServer]) -> None:
    server = http_server({"/img": DATA})
    server.behaviour.trickle_after = 10_000
    server.behaviour.trickle_interval = 0.05  # well inside the read timeout: only the rate ends it
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        fetch(server.url("/img"), DOWNLOAD_MIN_RATE="100000", DOWNLOAD_RATE_WINDOW="1")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert message.startswith(f"download of {server.url('/img')} is too slow: ")
    assert message.endswith(" s, below DOWNLOAD_MIN_RATE=100000 bytes/s") and "\n" not in message


def test_a_throttled_ftp_server_fails_on_the_minimum_rate(ftp_server: Callable[..., FtpServer], tmp_path: Path) -> None:
    (tmp_path / "img").write_bytes(DATA)
    ftp = ftp_server(tmp_path, rate_limit=2000)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"is too slow: .* below DOWNLOAD_MIN_RATE=50000 bytes/s$"):
        fetch(ftp.url("img"), DOWNLOAD_MIN_RATE="50000", DOWNLOAD_RATE_WINDOW="1")
    assert time.monotonic() - started < 5


# -- resumes are conditional on the version (If-Range) ---------------------------------------------


def test_resume_sends_if_range_with_the_etag(http_server: Callable[..., ImageServer]) -> None:
    server = http_server({"/img": DATA})
    server.behaviour.etag = '"v1"'
    server.behaviour.truncate_after = 500_000
    assert fetch(server.url("/img")) == DATA
    resume = server.gets()[1].headers
    assert (resume["Range"], resume["If-Range"]) == ("bytes=500000-", '"v1"')


def test_resume_of_a_changed_object_is_never_spliced(http_server: Callable[..., ImageServer]) -> None:
    """The server's 206 omits the validators, so only If-Range can tell it is another version."""
    server = http_server({"/img": DATA})
    server.behaviour.etag = '"v1"'
    server.behaviour.validators_on_partial = False
    server.behaviour.truncate_after = 500_000
    with NetworkSource(FAST).open(server.url("/img")) as stream, pytest.raises(SourceError) as err:
        assert stream.readinto(memoryview(bytearray(1000)))
        server.files["/img"] = bytes(reversed(DATA))  # same size, other bytes
        server.behaviour.etag = '"v2"'
        read_all(stream)
    assert str(err.value) == f"image at {server.url('/img')} changed on the server during the download"


def test_if_range_falls_back_to_last_modified(http_server: Callable[..., ImageServer]) -> None:
    server = http_server({"/img": DATA})
    server.behaviour.last_modified = "Tue, 01 Jul 2025 10:00:00 GMT"
    server.behaviour.etag = 'W/"weak"'  # a weak ETag may not be used in If-Range
    server.behaviour.truncate_after = 500_000
    assert hashlib.sha256(fetch(server.url("/img"))).digest() == hashlib.sha256(DATA).digest()
    assert server.gets()[1].headers["If-Range"] == "Tue, 01 Jul 2025 10:00:00 GMT"
