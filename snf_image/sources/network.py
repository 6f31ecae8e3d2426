"""Images fetched over the network: ``http://``, ``https://``, ``ftp://``, ``ftps://``.

The original piped ``curl -fL`` into ``dd``: one dropped connection in the
middle of a multi-gigabyte image failed the whole deployment, and the
reason was lost. Here a transfer that breaks (reset, read timeout, or a
response that ends before its announced length) is *resumed* where it
stopped -- ``Range: bytes=<pos>-`` for HTTP, ``REST <pos>`` for FTP -- and
every failure ends as one :class:`SourceError` line the operator can act on.

:class:`HttpStream` is the one HTTP streaming implementation; the Pithos
source (``pithos.py``) reuses it with its own URL and token header.

Settings (main config overlaid with ``backends/src/network.conf``; the
``HTTP_*``/``TLS_*``/``RETRY_BACKOFF`` keys also apply to the pithos source):

=========================  ==========  ==========================================================
key                        default     meaning
=========================  ==========  ==========================================================
HTTP_CONNECT_TIMEOUT       10          seconds to establish a TCP/TLS connection
HTTP_READ_TIMEOUT          60          seconds without a byte before the transfer counts as stalled
HTTP_RETRIES               5           consecutive failed attempts tolerated (a resume that delivers
                                       data resets the count; never more than 10x this in total)
RETRY_BACKOFF              0.5         first pause between attempts in seconds, doubled each time,
                                       at most 5 s
HTTP_RESTART_SKIP_MAX      67108864    when a server ignores ``Range`` on resume, re-read and drop at
                                       most this many already-delivered bytes; beyond it fail
TLS_CA_BUNDLE              (system)    PEM file of CAs trusted for https/ftps instead of the system's
TLS_INSECURE               no          ``yes`` disables certificate verification (https and ftps)
FTP_TIMEOUT                60          seconds for FTP control and data socket operations
FTP_RETRIES                5           as HTTP_RETRIES, for ftp/ftps
=========================  ==========  ==========================================================

Deviations from curl worth knowing: ``ftps://`` is *explicit* FTPS (``AUTH
TLS`` on port 21 unless the URL names a port; ``ftplib`` has no implicit
mode); proxy environment variables and ``~/.netrc`` are ignored (Ganeti
clears the environment anyway, so behaviour would differ between a shell
and a real deployment). Credentials in the URL (``http://user:pw@host/``)
are used but never appear in messages; the query string is elided too, as
signed URLs carry secrets there.
"""

from __future__ import annotations

import contextlib
import ftplib
import http.client
import io
import logging
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import requests
import urllib3

from ..errors import OperatorError, SourceError
from ..settings import parse_bool, parse_duration
from .base import ImageSource, ImageStream

log = logging.getLogger(__name__)

DEFAULTS: dict[str, str] = {
    "HTTP_CONNECT_TIMEOUT": "10",
    "HTTP_READ_TIMEOUT": "60",
    "HTTP_RETRIES": "5",
    "RETRY_BACKOFF": "0.5",
    "HTTP_RESTART_SKIP_MAX": str(64 * 1024 * 1024),
    "TLS_CA_BUNDLE": "",
    "TLS_INSECURE": "no",
    "FTP_TIMEOUT": "60",
    "FTP_RETRIES": "5",
}

#: Longest pause between two attempts, whatever RETRY_BACKOFF says.
MAX_BACKOFF = 5.0
#: Hard cap on attempts per stream, as a multiple of the retries setting.
TOTAL_RETRY_FACTOR = 10
#: Scratch buffer size when re-reading a prefix a server would not skip.
_SKIP_CHUNK = 1024 * 1024

_SCHEME_RE = re.compile(r"(?i)(https?|ftps?):")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ftps": 21}


# -- settings -----------------------------------------------------------------------------------


def setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> str:
    """A setting's value; an empty value means "unset" so ``KEY=`` restores the default."""
    value = (config.get(key) or "").strip()
    return value if value else defaults[key]


def int_setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> int:
    """A non-negative integer setting; anything else is the operator's error."""
    value = setting(config, key, defaults)
    if not re.fullmatch(r"[0-9]{1,15}", value):
        raise OperatorError(f"setting {key} must be a non-negative integer, got {value!r}")
    return int(value)


def seconds_setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> float:
    """A positive duration (``timeout(1)`` syntax: 10, 1.5, 2m)."""
    value = parse_duration(setting(config, key, defaults), key)
    if value <= 0:
        raise OperatorError(f"setting {key} must be greater than zero")
    return value


def _tls_verify(config: Mapping[str, str]) -> bool | str:
    """``False`` (insecure), a CA bundle path, or ``True`` (system trust store)."""
    if parse_bool(setting(config, "TLS_INSECURE"), "TLS_INSECURE"):
        return False
    bundle = setting(config, "TLS_CA_BUNDLE")
    if bundle:
        try:
            with open(bundle, "rb"):
                pass
        except OSError as exc:
            raise OperatorError(f"setting TLS_CA_BUNDLE: cannot read {bundle}: {exc.strerror}") from None
        return bundle
    return True


@dataclass(frozen=True)
class RetryOptions:
    """How often and how patiently to retry a broken transfer."""

    retries: int
    backoff: float


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP settings, parsed once and validated before any connection is made."""

    connect_timeout: float
    read_timeout: float
    retry: RetryOptions
    restart_skip_max: int
    verify: bool | str

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> HttpOptions:
        """Parse the ``HTTP_*``/``TLS_*`` settings; raises :class:`OperatorError`."""
        return cls(
            connect_timeout=seconds_setting(config, "HTTP_CONNECT_TIMEOUT"),
            read_timeout=seconds_setting(config, "HTTP_READ_TIMEOUT"),
            retry=RetryOptions(int_setting(config, "HTTP_RETRIES"), _backoff(config)),
            restart_skip_max=int_setting(config, "HTTP_RESTART_SKIP_MAX"),
            verify=_tls_verify(config),
        )


@dataclass(frozen=True)
class FtpOptions:
    """The FTP settings, parsed once."""

    timeout: float
    retry: RetryOptions
    verify: bool | str

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> FtpOptions:
        """Parse the ``FTP_*``/``TLS_*`` settings; raises :class:`OperatorError`."""
        return cls(
            timeout=seconds_setting(config, "FTP_TIMEOUT"),
            retry=RetryOptions(int_setting(config, "FTP_RETRIES"), _backoff(config)),
            verify=_tls_verify(config),
        )


def _backoff(config: Mapping[str, str]) -> float:
    return parse_duration(setting(config, "RETRY_BACKOFF"), "RETRY_BACKOFF")


# -- URLs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageUrl:
    """A parsed image URL with its credentials split out, so they never travel into messages."""

    scheme: str
    host: str
    port: int
    #: The URL without user info: what is requested.
    url: str
    #: Percent-decoded path (for FTP).
    path: str
    username: str | None
    password: str | None
    #: What messages show: no credentials, no query string.
    display: str


def redact_url(url: str) -> str:
    """``url`` without user info and with the query string elided, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def parse_image_url(img_id: str) -> ImageUrl:
    """Validate an http/https/ftp/ftps image id; raises :class:`OperatorError` naming the problem."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in img_id):
        raise OperatorError(f"invalid image URL {redact_url(img_id)!r}: contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(img_id)
        port = parts.port
    except ValueError as exc:
        raise OperatorError(f"invalid image URL {redact_url(img_id)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    display = redact_url(img_id)
    if scheme not in _DEFAULT_PORTS:
        raise OperatorError(f"invalid image URL {display!r}: scheme must be http, https, ftp or ftps")
    if not parts.hostname:
        raise OperatorError(f"invalid image URL {display!r}: no host")
    path = urllib.parse.unquote(parts.path)
    if scheme.startswith("ftp") and (not path.strip("/") or path.endswith("/")):
        raise OperatorError(f"invalid image URL {display!r}: no file name")
    netloc = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    unquote = urllib.parse.unquote
    return ImageUrl(
        scheme=scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        url=url,
        path=path,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        display=display,
    )


# -- failures and retries -----------------------------------------------------------------------

#: How a failure may be retried.
TRANSIENT = 0  # retry, also on the very first attempt (timeouts, resets, 502/503/504)
FATAL_AT_START = 1  # fail fast on the first request (refused, unknown host), retry when resuming
FATAL = 2  # never retry (TLS verification, 404, ...)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (requests and urllib3 nest the real socket error several levels deep)."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            nested.append(reason)
        nested += [e for e in (current.__cause__, current.__context__) if e is not None]
        queue.extend(nested)


def describe_network_error(exc: BaseException, host: str, port: int, read_timeout: float) -> tuple[str, int]:
    """A one-line reason for a socket/TLS/protocol failure and how it may be retried."""
    causes = list(_causes(exc))
    # Root causes first: urllib3's NewConnectionError is (oddly) a ConnectTimeoutError subclass.
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or cause.reason or "certificate rejected"
            return f"TLS certificate verification failed for {host}: {detail}", FATAL
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host {host}", FATAL_AT_START
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {host}:{port}", FATAL_AT_START
    for cause in causes:
        if isinstance(cause, urllib3.exceptions.NewConnectionError):
            continue
        if isinstance(cause, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            return f"timed out connecting to {host}:{port}", TRANSIENT
        if isinstance(cause, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError)):
            return f"no data from {host} for {read_timeout:g} s", TRANSIENT
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
            return f"TLS error with {host}: {cause.reason or type(cause).__name__}", FATAL_AT_START
        if isinstance(cause, (ConnectionResetError, ssl.SSLEOFError)):
            return f"connection reset by {host}", TRANSIENT
        if isinstance(cause, http.client.IncompleteRead):
            return f"connection to {host} closed in the middle of a chunk", TRANSIENT
        if isinstance(cause, EOFError):
            return f"connection to {host} closed unexpectedly", TRANSIENT
    return f"network error with {host} ({type(exc).__name__})", TRANSIENT


class RetryBudget:
    """Bounds the attempts of one stream: consecutive failures, and all failures together.

    A resume that delivers data resets the consecutive count (a long image on a
    flaky link may need many resumes); the total cap still ends a server that
    hands out a few bytes per connection forever.
    """

    def __init__(self, options: RetryOptions, display: str) -> None:
        self.options = options
        self.display = display
        self.consecutive = 0
        self.total = 0

    def progress(self) -> None:
        """Data arrived: the next failure starts a fresh series."""
        self.consecutive = 0

    def failed(self, reason: str) -> None:
        """Record a failure: pause before the next attempt, or raise when the budget is spent."""
        self.consecutive += 1
        self.total += 1
        retries = self.options.retries
        if self.consecutive > retries or self.total > retries * TOTAL_RETRY_FACTOR:
            if self.total == 1:
                raise SourceError(f"download of {self.display} failed: {reason}")
            raise SourceError(f"download of {self.display} failed after {self.total - 1} retries: {reason}")
        delay = min(self.options.backoff * 2 ** (self.consecutive - 1), MAX_BACKOFF)
        log.warning("%s: %s; retry %d/%d in %.1f s", self.display, reason, self.consecutive, retries, delay)
        time.sleep(delay)


def _printable(text: str, limit: int = 80) -> str:
    """Server-supplied text made safe for a one-line message."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return clean[:limit]


# -- HTTP ---------------------------------------------------------------------------------------


class _Session(requests.Session):
    """A session that also drops our credential headers (e.g. ``X-Auth-Token``) on cross-host redirects.

    requests strips ``Authorization`` when a redirect leaves the host, but not
    custom headers; a token must not follow a redirect to somebody else.
    """

    def __init__(self, private_headers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.private_headers = private_headers
        self.trust_env = False
        self.max_redirects = 10

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        super().rebuild_auth(prepared_request, response)
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in self.private_headers:
                prepared_request.headers.pop(name, None)


#: What reading a response body may raise; all mean "the connection broke".
_READ_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, requests.RequestException)


class _Broken(Exception):
    """Internal: the current attempt failed in a way worth retrying."""


class HttpStream(ImageStream):
    """One HTTP(S) download, streamed into the caller's buffers and resumed after a break.

    ``size`` is the ``Content-Length`` of the first response (None when absent
    or when a ``Content-Encoding`` makes it the length of something else).
    """

    def __init__(
        self,
        url: str,
        options: HttpOptions,
        *,
        display: str | None = None,
        headers: Mapping[str, str] | None = None,
        private_headers: tuple[str, ...] = (),
        auth: tuple[str, str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self._url = url
        self._host = parts.hostname or "?"
        self._port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        self.display = display or redact_url(url)
        self._options = options
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self._auth = auth
        self._session = _Session(private_headers)
        self._budget = RetryBudget(options.retry, self.display)
        self._response: requests.Response | None = None
        self._fp: http.client.HTTPResponse | None = None
        self._reader: io.BufferedReader | None = None  # http.client's buffered socket reader
        self._remaining: int | None = None
        self._buffered: int | None = None  # body bytes http.client read ahead with the headers
        self._validators: dict[str, str] = {}
        #: Bytes delivered to the caller so far.
        self.position = 0
        #: Expected total (``size``, or learnt from a Content-Range); checked at the end.
        self._total: int | None = None
        self._done = False
        self._encoding: str | None = None
        try:
            self._open_first()
        except BaseException:
            self.close()
            raise

    # The first request: only transient failures are retried.
    def _open_first(self) -> None:
        while True:
            try:
                response = self._get(None)
            except _READ_ERRORS as exc:
                reason, kind = self._describe(exc)
                if kind != TRANSIENT:
                    raise SourceError(reason) from None
                self._budget.failed(reason)
                continue
            if response.status_code == 200:
                break
            reason, kind = self._status_reason(response)
            response.close()
            if kind != TRANSIENT:
                raise SourceError(reason)
            self._budget.failed(reason)
        self._validators = _validators(response)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        length = response.headers.get("Content-Length", "").strip()
        if encoding in ("", "identity"):
            if length.isdigit():
                self.size = self._total = int(length)
        else:
            # Range offsets count encoded bytes, the caller has decoded ones: no resume.
            self._encoding = _printable(encoding, 20)
        self._attach(response)

    def _get(self, start: int | None) -> requests.Response:
        headers = dict(self._headers)
        if start:
            headers["Range"] = f"bytes={start}-"
        return self._session.get(
            self._url,
            headers=headers,
            auth=self._auth,
            stream=True,
            allow_redirects=True,
            timeout=(self._options.connect_timeout, self._options.read_timeout),
            verify=self._options.verify,
        )

    def _attach(self, response: requests.Response) -> None:
        """Make ``response`` the current body, read straight from the socket when possible.

        For a plain (not chunked, not encoded) body, the few bytes http.client
        buffered with the headers are served first, then every read is one
        ``recv_into`` on the socket, straight into the caller's buffer.
        (urllib3's ``readinto`` reads into ``bytes`` and copies; http.client's
        and ``BufferedReader.readinto1`` lose the bytes they already took when
        a later read in the same call fails, which would waste a resume.)
        Chunked bodies go through http.client, encoded ones through urllib3,
        which decodes them.
        """
        self._response = response
        self._reader = None
        self._remaining = None
        self._buffered = None
        self._fp = None
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return
        fp = getattr(response.raw, "_fp", None)
        if not isinstance(fp, http.client.HTTPResponse):
            return
        reader = getattr(fp, "fp", None)
        if not fp.chunked and isinstance(reader, io.BufferedReader):
            self._reader = reader
            self._remaining = fp.length
        else:
            self._fp = fp

    def _read(self, view: memoryview) -> int:
        if self._reader is not None:
            if self._remaining is not None:
                view = view[: self._remaining]
                if not view:
                    return 0
            if self._buffered is None:
                # Blocks for the first bytes only if nothing was buffered with the headers.
                self._buffered = len(self._reader.peek(1))
            if self._buffered:
                count = self._reader.readinto(view[: self._buffered])  # from the buffer, no system call
                self._buffered -= count
            else:
                count = self._reader.raw.readinto(view) or 0
            if self._remaining is not None:
                self._remaining -= count
            return count
        if self._fp is not None:
            return self._fp.readinto(view)
        assert self._response is not None
        data = self._response.raw.read(len(view), decode_content=True)
        view[: len(data)] = data
        return len(data)

    def _drop_response(self) -> None:
        response, self._response, self._fp, self._reader = self._response, None, None, None
        if response is not None:
            try:
                response.close()
            except Exception:  # closing a broken connection may fail; nothing to do
                log.debug("closing response failed", exc_info=True)

    def readinto(self, buffer: memoryview) -> int:
        """Fill (part of) ``buffer``; after a break, resume where the delivered bytes end."""
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while True:
            if self._done:
                return 0
            if self._response is None:
                try:
                    self._resume()
                except _Broken as exc:
                    self._drop_response()
                    self._budget.failed(str(exc))
                    continue
            try:
                count = self._read(view)
            except _READ_ERRORS as exc:
                reason = self._describe(exc)[0]
            else:
                if count:
                    self.position += count
                    self._budget.progress()
                    return count
                if self._total is None or self.position == self._total:
                    self._drop_response()
                    self._done = True
                    return 0
                reason = f"connection closed after {self.position} of {self._total} bytes"
            self._drop_response()
            if self._encoding:
                raise SourceError(
                    f"download of {self.display} broke and cannot be resumed "
                    f"(the server sent Content-Encoding {self._encoding}): {reason}"
                )
            self._budget.failed(reason)

    def _resume(self) -> None:
        """Re-request the rest of the body; raises :class:`_Broken` to retry, SourceError to give up."""
        try:
            response = self._get(self.position)
        except _READ_ERRORS as exc:
            reason, kind = self._describe(exc)
            if kind == FATAL:
                raise SourceError(reason) from None
            raise _Broken(reason) from None
        self._response = response  # so that any failure below closes it
        status = response.status_code
        if status not in (200, 206):
            reason, kind = self._status_reason(response)
            if kind == TRANSIENT:
                raise _Broken(reason)
            raise SourceError(reason)
        validators = _validators(response)
        for key, value in self._validators.items():
            if validators.get(key, value) != value:
                raise SourceError(f"image at {self.display} changed on the server during the download")
        if status == 206:
            self._check_content_range(response.headers.get("Content-Range", ""))
            self._attach(response)
            log.info("%s: resumed at byte %d", self.display, self.position)
            return
        if self.position == 0:
            self._attach(response)
            return
        # 200: the server ignored Range and sends the whole body again.
        length = response.headers.get("Content-Length", "").strip()
        if self._total is not None and length.isdigit() and int(length) != self._total:
            raise SourceError(
                f"image at {self.display} changed size during the download ({self._total} -> {length} bytes)"
            )
        if self.position > self._options.restart_skip_max:
            raise SourceError(
                f"cannot resume {self.display} at byte {self.position}: the server ignores range requests "
                f"(re-reading is limited to HTTP_RESTART_SKIP_MAX={self._options.restart_skip_max} bytes)"
            )
        self._attach(response)
        log.info("%s: server ignores Range; re-reading %d bytes", self.display, self.position)
        self._skip(self.position)

    def _check_content_range(self, value: str) -> None:
        match = re.fullmatch(r"\s*bytes\s+([0-9]+)-([0-9]+)/([0-9]+|\*)\s*", value)
        if not match or int(match.group(1)) != self.position:
            raise SourceError(
                f"cannot resume {self.display}: asked for byte {self.position} onwards, "
                f"server sent Content-Range {_printable(value, 40)!r}"
            )
        if match.group(3) != "*":
            total = int(match.group(3))
            if self._total is None:
                self._total = total
            elif total != self._total:
                raise SourceError(
                    f"image at {self.display} changed size during the download ({self._total} -> {total} bytes)"
                )

    def _skip(self, count: int) -> None:
        scratch = memoryview(bytearray(min(count, _SKIP_CHUNK)))
        while count:
            try:
                got = self._read(scratch[: min(count, len(scratch))])
            except _READ_ERRORS as exc:
                raise _Broken(self._describe(exc)[0]) from None
            if not got:
                raise _Broken("connection closed while re-reading the already delivered bytes")
            count -= got

    def _describe(self, exc: BaseException) -> tuple[str, int]:
        return describe_network_error(exc, self._host, self._port, self._options.read_timeout)

    def _status_reason(self, response: requests.Response) -> tuple[str, int]:
        code = response.status_code
        if code == 404:
            return f"image not found at {self.display} (HTTP 404)", FATAL
        if code == 403:
            return f"access to {self.display} denied (HTTP 403)", FATAL
        if code == 401:
            return f"authentication failed for {self.display} (HTTP 401)", FATAL
        phrase = _printable(response.reason or "", 60)
        if code in (502, 503, 504):
            return f"server error for {self.display} (HTTP {code} {phrase})".replace(" )", ")"), TRANSIENT
        return f"cannot fetch {self.display}: HTTP {code} {phrase}".rstrip(), FATAL

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._drop_response()
        self._session.close()


def _validators(response: requests.Response) -> dict[str, str]:
    """ETag / Last-Modified, which must not change between the first response and a resume."""
    return {key: response.headers[key] for key in ("ETag", "Last-Modified") if response.headers.get(key)}


# -- FTP ----------------------------------------------------------------------------------------


class FtpStream(ImageStream):
    """One FTP(S) download in binary mode, read straight from the data socket; ``REST`` after a break.

    ``size`` comes from the ``SIZE`` command (None when the server has none).
    Anonymous login unless the URL carries credentials.
    """

    def __init__(self, url: ImageUrl, options: FtpOptions) -> None:
        self._url = url
        self._options = options
        self.display = url.display
        self._budget = RetryBudget(options.retry, url.display)
        self._ftp: ftplib.FTP | None = None
        self._data: socket.socket | None = None
        self.position = 0
        self._done = False
        try:
            self._open_first()
        except BaseException:
            self.close()
            raise

    def _open_first(self) -> None:
        while True:
            try:
                self._connect()
                self.size = self._size()
                self._start()
                return
            except ftplib.error_perm as exc:
                raise SourceError(self._refusal(exc)) from None
            except (OSError, EOFError, ftplib.Error) as exc:
                reason, kind = self._describe(exc)
                self._disconnect()
                if kind != TRANSIENT:
                    raise SourceError(reason) from None
                self._budget.failed(reason)

    def _tls_context(self) -> ssl.SSLContext:
        verify = self._options.verify
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> None:
        url = self._url
        if url.scheme == "ftps":
            ftp: ftplib.FTP = ftplib.FTP_TLS(context=self._tls_context(), timeout=self._options.timeout)
        else:
            ftp = ftplib.FTP(timeout=self._options.timeout)
        self._ftp = ftp
        ftp.connect(url.host, url.port)
        if url.username is None:
            ftp.login("anonymous", "anonymous@")
        else:
            ftp.login(url.username, url.password or "")
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.voidcmd("TYPE I")

    def _size(self) -> int | None:
        assert self._ftp is not None
        try:
            size = self._ftp.size(self._ftp_path)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise
            return None  # SIZE not implemented
        return size if isinstance(size, int) and size >= 0 else None

    @property
    def _ftp_path(self) -> str:
        # Relative to the login directory, as RFC 1738 and curl resolve ftp://host/a/b.
        return self._url.path[1:] if self._url.path.startswith("/") else self._url.path

    def _start(self) -> None:
        assert self._ftp is not None
        self._data = self._ftp.transfercmd(f"RETR {self._ftp_path}", rest=self.position or None)
        self._data.settimeout(self._options.timeout)

    def _finish(self) -> None:
        """Close the data connection and read the transfer's final reply (226, or 426 when aborted)."""
        data, self._data = self._data, None
        if data is not None:
            if isinstance(data, ssl.SSLSocket):
                with contextlib.suppress(OSError, ValueError):
                    data.unwrap()
            data.close()
        assert self._ftp is not None
        self._ftp.voidresp()

    def _disconnect(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            data.close()
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def readinto(self, buffer: memoryview) -> int:
        """Fill (part of) ``buffer`` from the data socket; reconnect with ``REST`` after a break."""
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while True:
            if self._done:
                return 0
            if self._data is None:
                try:
                    self._disconnect()
                    self._connect()
                    self._start()
                    log.info("%s: resumed at byte %d", self.display, self.position)
                except ftplib.error_perm as exc:
                    raise SourceError(self._refusal(exc)) from None
                except (OSError, EOFError, ftplib.Error) as exc:
                    reason, kind = self._describe(exc)
                    self._disconnect()
                    if kind == FATAL:
                        raise SourceError(reason) from None
                    self._budget.failed(reason)
                    continue
            assert self._data is not None
            try:
                count = self._data.recv_into(view)
            except OSError as exc:
                reason = self._describe(exc)[0]
            else:
                if count:
                    self.position += count
                    self._budget.progress()
                    return count
                try:
                    self._finish()
                except ftplib.error_perm as exc:
                    raise SourceError(self._refusal(exc)) from None
                except (OSError, EOFError, ftplib.Error) as exc:
                    reason = self._describe(exc)[0]
                else:
                    if self.size is None or self.position == self.size:
                        self._disconnect()
                        self._done = True
                        return 0
                    reason = f"connection closed after {self.position} of {self.size} bytes"
            self._disconnect()
            self._budget.failed(reason)

    def _describe(self, exc: BaseException) -> tuple[str, int]:
        if isinstance(exc, ftplib.error_temp):
            return f"FTP server {self._url.host} answered {_printable(str(exc))}", TRANSIENT
        if isinstance(exc, ftplib.Error):
            return f"unexpected answer from FTP server {self._url.host}: {_printable(str(exc))}", FATAL
        return describe_network_error(exc, self._url.host, self._url.port, self._options.timeout)

    def _refusal(self, exc: ftplib.error_perm) -> str:
        text = _printable(str(exc))
        if text.startswith("550"):
            return f"image not found at {self.display} (FTP {text[:3]})"
        if text.startswith("530"):
            return f"FTP login to {self._url.host} failed: {text}"
        return f"FTP server {self._url.host} refused {self.display}: {text}"

    def close(self) -> None:
        """Close data and control connections without waiting for the server."""
        self._disconnect()


# -- the source ---------------------------------------------------------------------------------


class NetworkSource(ImageSource):
    """``http(s)://`` and ``ftp(s)://`` image ids, as the original's curl-based ``network`` backend."""

    name = "network"
    default_priority = 20

    def probe(self, img_id: str) -> bool:
        """Same test as the original (``^(http|ftp)s?:``); a malformed URL is then reported by check/open."""
        return _SCHEME_RE.match(img_id) is not None

    def check(self, img_id: str) -> None:
        """Syntax and settings only: no connection is made."""
        url = parse_image_url(img_id)
        if url.scheme.startswith("http"):
            HttpOptions.from_config(self.config)
        else:
            FtpOptions.from_config(self.config)

    def open(self, img_id: str) -> ImageStream:
        """Connect and start the transfer; the stream resumes by itself after a break."""
        url = parse_image_url(img_id)
        if url.scheme.startswith("http"):
            auth = (url.username, url.password or "") if url.username is not None else None
            return HttpStream(url.url, HttpOptions.from_config(self.config), display=url.display, auth=auth)
        return FtpStream(url, FtpOptions.from_config(self.config))
