"""Pure parts of the network and pithos sources: id syntax, redaction, settings, error wording, retry bounds.

(Named ``*_pure`` so it does not share a basename with
tests/integration/test_source_network.py: the test directories are not
packages, and pytest refuses two modules of the same name.)
"""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest
import requests
import urllib3

from snf_image.errors import OperatorError, SourceError
from snf_image.settings import load_settings
from snf_image.sources import failures, select_source
from snf_image.sources.failures import FATAL, FATAL_AT_START, TRANSIENT, RetryBudget, describe_network_error
from snf_image.sources.netpolicy import is_public_address
from snf_image.sources.network import NetworkSource
from snf_image.sources.options import HttpOptions, RetryOptions
from snf_image.sources.pithos import PithosMapSource, PithosSource
from snf_image.sources.urls import parse_url, redact_url


@pytest.mark.parametrize(
    ("img_id", "expected"),
    [
        ("http://h/x", True),
        ("HTTPS://h/x", True),
        ("ftp://h/x", True),
        ("ftps://h/x", True),
        ("http:nohost", True),  # probed like the original; check() then names the problem
        ("file://x", False),
        ("local://x", False),
        ("pithos://a/b/c", False),
        ("debian.img", False),
        ("httpx://h", False),
    ],
)
def test_probe(img_id: str, expected: bool) -> None:
    assert NetworkSource({}).probe(img_id) is expected


def test_parse_splits_and_hides_credentials() -> None:
    url = parse_url("https://al%40ice:p%3Ass@example.org:8443/a%20b/img?sig=SECRET#frag")
    assert (url.scheme, url.host, url.port) == ("https", "example.org", 8443)
    assert (url.username, url.password) == ("al@ice", "p:ss")
    assert url.url == "https://example.org:8443/a%20b/img?sig=SECRET"
    assert url.display == "https://example.org:8443/a%20b/img?..."
    assert "SECRET" not in url.display and "p:ss" not in url.display


def test_parse_defaults_and_ipv6() -> None:
    assert parse_url("http://h/x").port == 80
    assert parse_url("ftps://h/x").port == 21  # explicit FTPS
    url = parse_url("ftp://[::1]:2121/dir/file.img")
    assert (url.host, url.port, url.path) == ("::1", 2121, "/dir/file.img")


@pytest.mark.parametrize(
    ("img_id", "reason"),
    [
        ("http:///x", "no host"),
        ("http:nohost", "no host"),
        ("http://h:99999/x", "Port out of range"),
        ("http://h/a b", "whitespace or control characters"),
        ("http://h/a\nb", "whitespace or control characters"),
        ("ftp://h/", "no file name"),
        ("ftp://h/dir/", "no file name"),
    ],
)
def test_parse_rejects(img_id: str, reason: str) -> None:
    with pytest.raises(OperatorError, match=reason):
        NetworkSource({}).check(img_id)


def test_redact_url() -> None:
    assert redact_url("http://u:p@h/x?y=1") == "http://h/x?..."
    assert redact_url("ftp://h/x") == "ftp://h/x"


def test_settings_defaults_and_errors(tmp_path: object) -> None:
    options = HttpOptions.from_config({"HTTP_READ_TIMEOUT": ""})  # empty means default
    assert (options.connect_timeout, options.read_timeout) == (10, 60)
    assert options.retry == RetryOptions(5, 0.5)
    assert options.verify is True and options.restart_skip_max == 64 * 1024 * 1024
    assert HttpOptions.from_config({"HTTP_READ_TIMEOUT": "2m"}).read_timeout == 120
    assert HttpOptions.from_config({"TLS_INSECURE": "yes"}).verify is False
    for key, value in [
        ("HTTP_RETRIES", "-1"),
        ("HTTP_RETRIES", "many"),
        ("HTTP_READ_TIMEOUT", "0"),
        ("HTTP_CONNECT_TIMEOUT", "soon"),
        ("TLS_INSECURE", "maybe"),
        ("RETRY_BACKOFF", "x"),
    ]:
        with pytest.raises(OperatorError, match=key):
            NetworkSource({key: value}).check("http://h/x")
    with pytest.raises(OperatorError, match="FTP_TIMEOUT"):
        NetworkSource({"FTP_TIMEOUT": "0"}).check("ftp://h/x")


def _wrapped(inner: BaseException) -> requests.ConnectionError:
    """requests' nesting: ConnectionError(MaxRetryError(reason=NewConnectionError), context=socket error)."""
    try:
        try:
            raise inner
        except OSError:
            raise urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection") from None
    except urllib3.exceptions.NewConnectionError as new:
        new.__context__ = inner
        retry = urllib3.exceptions.MaxRetryError(None, "/x", reason=new)
        return requests.ConnectionError(retry)


@pytest.mark.parametrize(
    ("exc", "reason", "kind"),
    [
        (_wrapped(ConnectionRefusedError(111, "refused")), "connection refused by h:80", FATAL_AT_START),
        (_wrapped(socket.gaierror(-2, "Name or service not known")), "cannot resolve host h", FATAL_AT_START),
        (requests.ConnectTimeout("x"), "timed out connecting to h:80", TRANSIENT),
        (requests.ReadTimeout("x"), "no data from h for 60 s", TRANSIENT),
        (TimeoutError("timed out"), "no data from h for 60 s", TRANSIENT),
        (ConnectionResetError(104, "reset"), "connection reset by h", TRANSIENT),
        (http.client.IncompleteRead(b"", 10), "connection to h closed in the middle of a chunk", TRANSIENT),
        (ValueError("odd"), "network error with h (ValueError)", TRANSIENT),
    ],
)
def test_describe_network_error(exc: BaseException, reason: str, kind: int) -> None:
    assert describe_network_error(exc, "h", 80, 60) == (reason, kind)


def test_describe_certificate_failure() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    exc = requests.exceptions.SSLError(urllib3.exceptions.MaxRetryError(None, "/x", reason=cert))
    assert describe_network_error(exc, "h", 443, 60) == (
        "TLS certificate verification failed for h: self-signed certificate",
        FATAL,
    )


def test_retry_budget_counts_consecutive_and_total(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(failures.time, "sleep", pauses.append)
    budget = RetryBudget(RetryOptions(retries=2, backoff=1.0), "http://h/x")
    budget.failed("a")
    budget.failed("b")
    with pytest.raises(SourceError) as err:
        budget.failed("c")
    assert str(err.value) == "download of http://h/x failed after 2 retries: c"
    assert pauses == [1.0, 2.0]

    budget = RetryBudget(RetryOptions(retries=2, backoff=0.0), "http://h/x")
    with pytest.raises(SourceError, match="failed after 20 retries: boom"):
        for _ in range(100):
            budget.failed("boom")
            budget.progress()
    assert budget.total == 21

    with pytest.raises(SourceError) as err:
        RetryBudget(RetryOptions(retries=0, backoff=0.0), "ftp://h/x").failed("gone")
    assert str(err.value) == "download of ftp://h/x failed: gone"


def test_backoff_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(failures.time, "sleep", pauses.append)
    budget = RetryBudget(RetryOptions(retries=6, backoff=1.0), "x")
    for _ in range(6):
        budget.failed("r")
    assert pauses == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_pithos_object_url_quotes_names() -> None:
    source = PithosSource({"PITHOS_URL": "https://p.example/object-store/v1/"})
    assert source.object_url("pithos://acc/con tainer/dir/a b#c?.img") == (
        "https://p.example/object-store/v1/acc/con%20tainer/dir/a%20b%23c%3F.img"
    )
    with pytest.raises(OperatorError, match="PITHOS_URL must be an http"):
        PithosSource({"PITHOS_URL": "ftp://p/x"}).check("pithos://a/b/c")
    with pytest.raises(OperatorError, match="must not carry credentials"):
        PithosSource({"PITHOS_URL": "https://u:p@p/x"}).check("pithos://a/b/c")


def test_pithosmap_probe_and_id_length_follow_the_hash() -> None:
    source = PithosMapSource({"PITHOS_HASH_ALGORITHM": "sha1", "PITHOS_DATA": "/nonexistent"})
    assert source.probe("pithosmap://x/1") and not source.probe("pithos://a/b/c")
    with pytest.raises(OperatorError, match="40 hex digits"):
        source.check("pithosmap://" + "ab" * 32 + "/1")
    with pytest.raises(OperatorError, match=r"^img_id: hashmap"):
        source.check("pithosmap://" + "AB" * 20 + "/1")  # right length (upper case accepted), no map


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast is "global" to Python, not to us
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),  # site-local
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:93.184.216.34", False),  # mapped addresses are reserved space whatever they map
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_select_source_never_echoes_url_credentials(tmp_path: Path) -> None:
    settings = load_settings(config_dir=tmp_path)
    with pytest.raises(OperatorError) as err:
        select_source("gopher://alice:s3cret@h/x?token=t0ken", settings)
    assert str(err.value) == "img_id: no source can handle image id 'gopher://h/x?...'"
