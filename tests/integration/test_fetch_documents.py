"""config_url and os_answer_file take the image download path (issue 13, item 5), against real servers.

Before, config_url used a bare ``requests.get``: proxies and ``~/.netrc``
from the environment, the system CAs whatever TLS_CA_BUNDLE said, no ftp
(though the schema allows it), redirects anywhere, no minimum rate, and the
URL's credentials in the error line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from snf_image import deploy, windows
from snf_image.errors import OperatorError, SourceError
from snf_image.settings import Settings, load_settings
from tests.servers import ImageServer, TlsFiles
from tests.servers.ftpd import FtpServer

pytestmark = pytest.mark.usefixtures("network_deadline")

DOCUMENT = json.dumps({"img_id": "local://from-config.img", "img_format": "diskdump"}).encode()
FAST = {"HTTP_READ_TIMEOUT": "1", "HTTP_RETRIES": "1", "RETRY_BACKOFF": "0.01", "FTP_TIMEOUT": "2"}


def settings(tmp_path: Path, **overrides: str) -> Settings:
    return load_settings(config_dir=tmp_path / "etc", overrides={**FAST, **overrides})


def test_config_url_over_https_uses_the_tls_settings(
    http_server: Callable[..., ImageServer], tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = http_server({"/c.json": DOCUMENT}, tls=True)
    params = deploy.collect_params(
        {"config_url": server.url("/c.json")}, settings(tmp_path, TLS_CA_BUNDLE=str(tls_files.ca_cert))
    )
    assert (params.img_id, params.img_format) == ("local://from-config.img", "diskdump")


def test_config_url_over_ftp_is_accepted_by_verify_and_fetched_by_create(
    ftp_server: Callable[..., FtpServer], tmp_path: Path
) -> None:
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "c.json").write_bytes(DOCUMENT)
    url = ftp_server(root).url("c.json")
    deploy.verify_params({"config_url": url}, settings(tmp_path))
    assert deploy.collect_params({"config_url": url}, settings(tmp_path)).img_id == "local://from-config.img"


def test_config_url_ignores_proxies_and_netrc_of_the_environment(
    http_server: Callable[..., ImageServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http_server({"/c.json": DOCUMENT})
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password leaked\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing listens
    params = deploy.collect_params({"config_url": server.url("/c.json")}, settings(tmp_path))
    assert params.img_id == "local://from-config.img"
    assert [r.path for r in server.gets()] == ["/c.json"]
    assert "Authorization" not in server.gets()[0].headers


def test_config_url_follows_the_redirect_policy(
    http_server: Callable[..., ImageServer], tls_files: TlsFiles, tmp_path: Path
) -> None:
    plain = http_server({"/c.json": DOCUMENT})
    secure = http_server({}, tls=True)
    secure.behaviour.redirects = {"/c.json": plain.url("/c.json")}
    with pytest.raises(SourceError) as err:
        deploy.collect_params(
            {"config_url": secure.url("/c.json")}, settings(tmp_path, TLS_CA_BUNDLE=str(tls_files.ca_cert))
        )
    assert str(err.value) == (
        f"config_url: refusing the redirect from {secure.url('/c.json')} to {plain.url('/c.json')}: "
        "https must not be redirected to http"
    )
    assert not plain.requests


def test_config_url_has_the_minimum_rate(http_server: Callable[..., ImageServer], tmp_path: Path) -> None:
    server = http_server({"/c.json": DOCUMENT + b" " * 100_000})
    server.behaviour.trickle_after = 10
    with pytest.raises(SourceError, match=r"^config_url: download of .* is too slow: .* below DOWNLOAD_MIN_RATE=1000 "):
        deploy.collect_params(
            {"config_url": server.url("/c.json")},
            settings(tmp_path, DOWNLOAD_MIN_RATE="1000", DOWNLOAD_RATE_WINDOW="1"),
        )


def test_config_url_errors_are_one_line_without_secrets(
    http_server: Callable[..., ImageServer], tmp_path: Path
) -> None:
    server = http_server({})
    url = server.url("/c.json").replace("http://", "http://alice:s3cret@") + "?token=t0ken"
    with pytest.raises(SourceError) as err:
        deploy.collect_params({"config_url": url}, settings(tmp_path))
    assert str(err.value) == f"config_url: document not found at {server.url('/c.json')}?... (HTTP 404)"


def test_config_url_document_size_is_bounded(http_server: Callable[..., ImageServer], tmp_path: Path) -> None:
    server = http_server({"/c.json": b" " * (1024 * 1024 + 1)})
    with pytest.raises(SourceError) as err:
        deploy.collect_params({"config_url": server.url("/c.json")}, settings(tmp_path))
    assert str(err.value) == f"config_url: {server.url('/c.json')} is larger than 1048576 bytes"


def test_answer_file_takes_the_same_path(
    http_server: Callable[..., ImageServer], tls_files: TlsFiles, tmp_path: Path
) -> None:
    server = http_server({"/unattend.xml": "<unattend>ü</unattend>".encode()}, tls=True)
    config = settings(tmp_path, TLS_CA_BUNDLE=str(tls_files.ca_cert))
    assert windows.fetch_answer_file(server.url("/unattend.xml"), config) == "<unattend>ü</unattend>"
    with pytest.raises(SourceError) as err:
        windows.fetch_answer_file(server.url("/missing.xml"), config)
    assert str(err.value) == f"os_answer_file: document not found at {server.url('/missing.xml')} (HTTP 404)"
    with pytest.raises(OperatorError, match=r"^os_answer_file: invalid URL"):
        windows.fetch_answer_file("https:///nohost", config)
