"""What went wrong with a transfer, whether to try again, and when to give up.

A failure is classified once (:func:`describe_network_error`) into a one-line
reason and how it may be retried; :class:`RetryBudget` bounds the attempts,
:class:`RateGuard` ends a transfer that is alive but too slow to ever finish
(a server trickling one byte a minute never trips a read timeout).
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from collections.abc import Iterator

import requests
import urllib3

from ..errors import SourceError
from .options import RateOptions, RetryOptions

log = logging.getLogger(__name__)

#: How a failure may be retried.
TRANSIENT = 0  # retry, also on the very first attempt (timeouts, resets, 502/503/504)
FATAL_AT_START = 1  # fail fast on the first request (refused, unknown host), retry when resuming
FATAL = 2  # never retry (TLS verification, 404, ...)

#: Longest pause between two attempts, whatever RETRY_BACKOFF says.
MAX_BACKOFF = 5.0
#: Hard cap on attempts per stream, as a multiple of the retries setting.
TOTAL_RETRY_FACTOR = 10


class Failure(Exception):
    """One attempt failed: ``reason`` is the operator's line, ``kind`` says whether to retry."""

    def __init__(self, reason: str, kind: int = TRANSIENT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


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
        if isinstance(cause, requests.TooManyRedirects):
            return f"too many redirects from {host}", FATAL
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


class RateGuard:
    """Ends a transfer slower than ``DOWNLOAD_MIN_RATE`` over each ``DOWNLOAD_RATE_WINDOW``.

    Only the time spent inside the stream counts (waiting for the network,
    reconnecting), not the time the caller takes to write what it got, so a
    slow disk never makes a healthy download look slow.
    """

    def __init__(self, options: RateOptions, display: str) -> None:
        self.options = options
        self.display = display
        self._seconds = 0.0
        self._bytes = 0

    def account(self, count: int, seconds: float) -> None:
        """``count`` bytes arrived in ``seconds`` spent waiting; raise when a whole window was too slow."""
        if not self.options.min_rate:
            return
        self._seconds += seconds
        self._bytes += count
        if self._seconds < self.options.window:
            return
        if self._bytes < self.options.min_rate * self._seconds:
            raise SourceError(
                f"download of {self.display} is too slow: {self._bytes} bytes in {self._seconds:.0f} s, "
                f"below DOWNLOAD_MIN_RATE={self.options.min_rate} bytes/s"
            )
        self._seconds = 0.0
        self._bytes = 0
