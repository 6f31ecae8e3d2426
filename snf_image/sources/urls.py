"""URLs of things fetched over the network: parsed once, credentials split out, redacted for messages.

Credentials in a URL (``http://user:pw@host/``) are used but never shown;
the query string is elided too, as signed URLs carry secrets there.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ..errors import OperatorError

DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ftps": 21}


@dataclass(frozen=True)
class ImageUrl:
    """A parsed http/https/ftp/ftps URL with its credentials split out, so they never travel into messages."""

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


def redact_id(img_id: str) -> str:
    """An image id for messages: a URL redacted (:func:`redact_url`), anything else as it is."""
    return redact_url(img_id) if "://" in img_id else img_id


def printable(text: str, limit: int = 80) -> str:
    """Server-supplied text made safe for a one-line message."""
    clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return clean[:limit]


def parse_url(img_id: str) -> ImageUrl:
    """Validate an http/https/ftp/ftps URL (image id, config_url, os_answer_file); OperatorError names the problem."""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in img_id):
        raise OperatorError(f"invalid URL {redact_url(img_id)!r}: contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(img_id)
        port = parts.port
    except ValueError as exc:
        raise OperatorError(f"invalid URL {redact_url(img_id)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    display = redact_url(img_id)
    if scheme not in DEFAULT_PORTS:
        raise OperatorError(f"invalid URL {display!r}: scheme must be http, https, ftp or ftps")
    if not parts.hostname:
        raise OperatorError(f"invalid URL {display!r}: no host")
    path = urllib.parse.unquote(parts.path)
    if scheme.startswith("ftp") and (not path.strip("/") or path.endswith("/")):
        raise OperatorError(f"invalid URL {display!r}: no file name")
    netloc = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    unquote = urllib.parse.unquote
    return ImageUrl(
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        url=url,
        path=path,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        display=display,
    )
