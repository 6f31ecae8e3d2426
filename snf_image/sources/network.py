"""Images fetched over the network: ``http://``, ``https://``, ``ftp://``, ``ftps://``.

The source itself is small: :class:`~snf_image.sources.httpstream.HttpStream`
and :class:`~snf_image.sources.ftpstream.FtpStream` do the transfers, both
resuming after a break through :class:`~snf_image.sources.resuming.ResumingStream`.
:func:`fetch_document` takes the same path for the small documents a
deployment fetches (``config_url``, ``os_answer_file``), so everything the
host downloads shares one set of TLS settings, timeouts, retries, redirect
policy and minimum rate; the Pithos source reuses :class:`HttpStream` too.

Settings (main config overlaid with ``backends/src/network.conf``; the
``HTTP_*``/``TLS_*``/``DOWNLOAD_*``/``RETRY_BACKOFF``/``ALLOW_PRIVATE_REDIRECTS``
keys also apply to the pithos source, with ``pithos.conf``):

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
DOWNLOAD_MIN_RATE          1024        bytes/s a download must average over each window, or it
                                       fails (0: no minimum); bounds one byte a minute
DOWNLOAD_RATE_WINDOW       60          seconds of that window (time spent waiting on the network)
ALLOW_PRIVATE_REDIRECTS    no          ``yes`` lets a public URL redirect (or resolve) to loopback,
                                       link-local, private and other non-public addresses
=========================  ==========  ==========================================================

Deviations from curl worth knowing: proxy environment variables and
``~/.netrc`` are ignored (Ganeti clears the environment anyway, so behaviour
would differ between a shell and a real deployment); https never redirects
to http (see :mod:`~snf_image.sources.netpolicy`).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import OperatorError, SourceError
from .base import CacheIdentity, ImageSource
from .ftpstream import FtpStream
from .httpstream import HttpStream
from .options import FtpOptions, HttpOptions
from .resuming import NotModified, ResumingStream
from .urls import ImageUrl, parse_url

if TYPE_CHECKING:
    from ..settings import Settings

_SCHEME_RE = re.compile(r"(?i)(https?|ftps?):")
_DOCUMENT_CHUNK = 64 * 1024


class NetworkSource(ImageSource):
    """``http(s)://`` and ``ftp(s)://`` image ids, as the original's curl-based ``network`` backend."""

    name = "network"
    default_priority = 20

    def probe(self, img_id: str) -> bool:
        """Same test as the original (``^(http|ftp)s?:``); a malformed URL is then reported by check/open."""
        return _SCHEME_RE.match(img_id) is not None

    def check(self, img_id: str) -> None:
        """Syntax and settings only: no connection is made."""
        url = parse_url(img_id)
        if url.scheme.startswith("http"):
            HttpOptions.from_config(self.config)
        else:
            FtpOptions.from_config(self.config)

    def open(self, img_id: str) -> ResumingStream:
        """Connect and start the transfer; the stream resumes by itself after a break."""
        return self.open_url(parse_url(img_id))

    def cache_identity(self, img_id: str) -> CacheIdentity:
        """The URL without credentials and query; those (which select what the server shows) are the secret."""
        url = parse_url(img_id)
        query = urllib.parse.urlsplit(url.url).query
        secret = "\0".join((url.username or "", url.password or "", query)) if url.username or query else ""
        return CacheIdentity(public=url.display, secret=secret, display=url.display)

    def open_if_changed(self, img_id: str, validators: Mapping[str, str]) -> ResumingStream | None:
        """A conditional request (HTTP ``If-None-Match``/``If-Modified-Since``, FTP ``MDTM``/``SIZE``)."""
        try:
            return self.open_url(parse_url(img_id), revalidate=validators)
        except NotModified:
            return None

    def open_url(
        self, url: ImageUrl, subject: str = "image", revalidate: Mapping[str, str] | None = None
    ) -> ResumingStream:
        """Start the transfer of ``url``; ``revalidate`` makes it conditional (see the streams)."""
        if url.scheme.startswith("http"):
            auth = (url.username, url.password or "") if url.username is not None else None
            return HttpStream(
                url.url,
                HttpOptions.from_config(self.config),
                display=url.display,
                auth=auth,
                subject=subject,
                revalidate=revalidate,
            )
        return FtpStream(url, FtpOptions.from_config(self.config), subject=subject, revalidate=revalidate)


def fetch_document(url: str, settings: Settings, limit: int, what: str) -> bytes:
    """The bytes at ``url`` (``config_url``, ``os_answer_file``): at most ``limit`` of them.

    The network source's path and settings (``backends/src/network.conf``
    included). Failures are one line starting with ``what``; the URL's
    credentials and query never appear in them.
    """
    source = NetworkSource(settings.source_config(NetworkSource.name))
    try:
        with source.open_url(parse_url(url), subject="document") as stream:
            if stream.size is not None and stream.size > limit:
                raise SourceError(f"{stream.display} is larger than {limit} bytes")
            body = bytearray()
            buffer = memoryview(bytearray(_DOCUMENT_CHUNK))
            while count := stream.readinto(buffer):
                body += buffer[:count]
                if len(body) > limit:
                    raise SourceError(f"{stream.display} is larger than {limit} bytes")
            return bytes(body)
    except OperatorError as exc:
        raise OperatorError(f"{what}: {exc}") from None
    except SourceError as exc:
        raise SourceError(f"{what}: {exc}") from None
