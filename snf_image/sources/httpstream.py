"""The one HTTP(S) download path: images, pithos objects, ``config_url``, ``os_answer_file``.

A transfer that breaks (reset, read timeout, or a body that ends before its
announced length) resumes with ``Range: bytes=<pos>-`` and ``If-Range`` (the
first response's strong ETag or Last-Modified), so a changed object is never
spliced onto the bytes already delivered. Connections and redirects obey
:mod:`snf_image.sources.netpolicy`; TLS, timeouts and retries come from
:class:`~snf_image.sources.options.HttpOptions`.
"""

from __future__ import annotations

import http.client
import io
import logging
import re
import urllib.parse
from collections.abc import Mapping

import requests
import urllib3

from ..errors import SourceError
from .failures import FATAL, TRANSIENT, Failure, describe_network_error
from .netpolicy import AddressGuard, PolicySession
from .options import HttpOptions
from .resuming import NotModified, ResumingStream
from .urls import DEFAULT_PORTS, printable, redact_url

log = logging.getLogger(__name__)

#: What reading a response may raise; all mean "the connection broke".
_READ_ERRORS = (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError, requests.RequestException)
#: Scratch buffer size when re-reading a prefix a server would not skip.
_SKIP_CHUNK = 1024 * 1024


def _validators(response: requests.Response) -> dict[str, str]:
    """ETag / Last-Modified, which must not change between the first response and a resume."""
    return {key: response.headers[key] for key in ("ETag", "Last-Modified") if response.headers.get(key)}


class HttpStream(ResumingStream):
    """One HTTP(S) download, streamed into the caller's buffers and resumed after a break.

    ``size`` is the ``Content-Length`` of the first response (None when absent
    or when a ``Content-Encoding`` makes it the length of something else).
    With ``revalidate`` (the validators of a copy the caller holds) the first
    request is conditional and :class:`NotModified` is raised when the server
    answers 304.
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
        subject: str = "image",
        revalidate: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(display or redact_url(url), options.retry, options.rate, subject)
        parts = urllib.parse.urlsplit(url)
        self._url = url
        self._host = parts.hostname or "?"
        self._port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        self._options = options
        self._headers = {"Accept-Encoding": "identity", **(headers or {})}
        self._auth = auth
        self._revalidate = dict(revalidate or {})
        self._response: requests.Response | None = None
        self._fp: http.client.HTTPResponse | None = None
        self._reader: io.BufferedReader | None = None  # http.client's buffered socket reader
        self._remaining: int | None = None
        self._buffered: int | None = None  # body bytes http.client read ahead with the headers
        self._encoding: str | None = None
        guard = AddressGuard(self._host, self._port, options.allow_private_redirects)
        self._session = PolicySession(guard, private_headers)
        self._open_first()

    # -- requests ----------------------------------------------------------------------------------

    def _get(self, headers: Mapping[str, str]) -> requests.Response:
        try:
            response = self._session.fetch(
                self._url,
                headers,
                self._auth,
                timeout=(self._options.connect_timeout, self._options.read_timeout),
                verify=self._options.verify,
            )
        except _READ_ERRORS as exc:
            raise Failure(*self._describe(exc)) from None
        self._response = response  # so that any failure below closes it
        return response

    def _connect(self) -> None:
        if self._connected_once:
            self._resume()
            return
        headers = dict(self._headers)
        if "ETag" in self._revalidate:
            headers["If-None-Match"] = self._revalidate["ETag"]
        if "Last-Modified" in self._revalidate:
            headers["If-Modified-Since"] = self._revalidate["Last-Modified"]
        response = self._get(headers)
        if response.status_code == 304 and self._revalidate:
            raise NotModified(self.display)
        if response.status_code != 200:
            raise Failure(*self._status_reason(response))
        self.validators = _validators(response)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        length = response.headers.get("Content-Length", "").strip()
        if encoding in ("", "identity"):
            if length.isdigit():
                self.size = self.total = int(length)
        else:
            # Range offsets count encoded bytes, the caller has decoded ones: no resume.
            self._encoding = printable(encoding, 20)
        self._attach(response)

    def _if_range(self) -> str | None:
        """The validator a resume may be conditional on: a strong ETag, else Last-Modified."""
        etag = self.validators.get("ETag")
        if etag and not etag.startswith("W/"):
            return etag
        return self.validators.get("Last-Modified")

    def _resume(self) -> None:
        """Re-request the rest of the body; raises :class:`Failure` to retry, SourceError to give up."""
        headers = dict(self._headers)
        if_range = self._if_range() if self.position else None
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
        if if_range:
            headers["If-Range"] = if_range
        response = self._get(headers)
        status = response.status_code
        if status not in (200, 206):
            reason, kind = self._status_reason(response)
            raise Failure(reason, kind if kind == TRANSIENT else FATAL)
        self._check_unchanged(response, if_range_sent=bool(if_range))
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
        if self.total is not None and length.isdigit() and int(length) != self.total:
            raise SourceError(
                f"{self.subject} at {self.display} changed size during the download ({self.total} -> {length} bytes)"
            )
        if self.position > self._options.restart_skip_max:
            raise SourceError(
                f"cannot resume {self.display} at byte {self.position}: the server ignores range requests "
                f"(re-reading is limited to HTTP_RESTART_SKIP_MAX={self._options.restart_skip_max} bytes)"
            )
        self._attach(response)
        log.info("%s: server ignores Range; re-reading %d bytes", self.display, self.position)
        self._skip(self.position)

    def _check_unchanged(self, response: requests.Response, if_range_sent: bool) -> None:
        validators = _validators(response)
        changed = any(validators.get(key, value) != value for key, value in self.validators.items())
        if if_range_sent and response.status_code == 200:
            # The server answered "not that version any more" unless it names the same version.
            changed = changed or any(key not in validators for key in self.validators)
        if changed:
            raise SourceError(f"{self.subject} at {self.display} changed on the server during the download")

    def _check_content_range(self, value: str) -> None:
        match = re.fullmatch(r"\s*bytes\s+([0-9]+)-([0-9]+)/([0-9]+|\*)\s*", value)
        if not match or int(match.group(1)) != self.position:
            raise SourceError(
                f"cannot resume {self.display}: asked for byte {self.position} onwards, "
                f"server sent Content-Range {printable(value, 40)!r}"
            )
        if match.group(3) != "*":
            total = int(match.group(3))
            if self.total is None:
                self.total = total
            elif total != self.total:
                raise SourceError(
                    f"{self.subject} at {self.display} changed size during the download ({self.total} -> {total} bytes)"
                )

    # -- the body ----------------------------------------------------------------------------------

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
        try:
            return self._read_body(view)
        except _READ_ERRORS as exc:
            raise Failure(self._describe(exc)[0]) from None

    def _read_body(self, view: memoryview) -> int:
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

    def _skip(self, count: int) -> None:
        scratch = memoryview(bytearray(min(count, _SKIP_CHUNK)))
        while count:
            got = self._read(scratch[: min(count, len(scratch))])
            if not got:
                raise Failure("connection closed while re-reading the already delivered bytes")
            count -= got

    def _is_open(self) -> bool:
        return self._response is not None

    def _disconnect(self) -> None:
        response, self._response, self._fp, self._reader = self._response, None, None, None
        if response is not None:
            try:
                response.close()
            except Exception:  # closing a broken connection may fail; nothing to do
                log.debug("closing response failed", exc_info=True)

    def _check_resumable(self, reason: str) -> None:
        if self._encoding:
            raise SourceError(
                f"download of {self.display} broke and cannot be resumed "
                f"(the server sent Content-Encoding {self._encoding}): {reason}"
            )

    # -- messages ----------------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> tuple[str, int]:
        return describe_network_error(exc, self._host, self._port, self._options.read_timeout)

    def _status_reason(self, response: requests.Response) -> tuple[str, int]:
        code = response.status_code
        if code == 404:
            return f"{self.subject} not found at {self.display} (HTTP 404)", FATAL
        if code == 403:
            return f"access to {self.display} denied (HTTP 403)", FATAL
        if code == 401:
            return f"authentication failed for {self.display} (HTTP 401)", FATAL
        phrase = printable(response.reason or "", 60)
        if code in (502, 503, 504):
            return f"server error for {self.display} (HTTP {code} {phrase})".replace(" )", ")"), TRANSIENT
        return f"cannot fetch {self.display}: HTTP {code} {phrase}".rstrip(), FATAL

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        super().close()
        self._session.close()
