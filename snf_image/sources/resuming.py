"""The resume-after-a-break loop that HTTP and FTP downloads share.

The original piped ``curl -fL`` into ``dd``: one dropped connection in the
middle of a multi-gigabyte image failed the whole deployment. A
:class:`ResumingStream` reconnects where the delivered bytes end (the
protocol says how: ``Range`` for HTTP, ``REST`` for FTP) until the budget of
retries is spent, and ends a transfer that is too slow to ever finish.
"""

from __future__ import annotations

import abc
import logging
import time

from ..errors import SourceError
from .base import ImageStream
from .failures import FATAL, FATAL_AT_START, Failure, RateGuard, RetryBudget
from .options import RateOptions, RetryOptions

log = logging.getLogger(__name__)


class NotModified(Exception):
    """A conditional open found the copy the caller already has still current (HTTP 304)."""


class ResumingStream(ImageStream):
    """A download that resumes after a break; subclasses provide the protocol.

    The hooks: :meth:`_connect` (start the transfer at :attr:`position`),
    :meth:`_read`, :meth:`_end` (the transfer's own end-of-data handshake),
    :meth:`_disconnect` and :meth:`_is_open`. They raise :class:`Failure` for
    what may be retried and :class:`SourceError` for what may not.
    """

    def __init__(self, display: str, retry: RetryOptions, rate: RateOptions, subject: str = "image") -> None:
        #: What messages show (no credentials, no query string).
        self.display = display
        #: What messages call the bytes: "image", or "document" for config_url and os_answer_file.
        self.subject = subject
        #: Bytes delivered to the caller so far.
        self.position = 0
        #: The expected total, checked at the end (``size``, or learnt on the way).
        self.total: int | None = None
        #: What identifies this version of the object on the server (ETag, modification time, ...).
        self.validators: dict[str, str] = {}
        self._budget = RetryBudget(retry, display)
        self._rate = RateGuard(rate, display)
        self._connected_once = False
        self._done = False

    # -- the protocol's hooks --------------------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> None:
        """Start the transfer at :attr:`position` (the first time: also learn ``size``/``validators``)."""

    @abc.abstractmethod
    def _read(self, view: memoryview) -> int:
        """Read from the open transfer; 0 when the server ended it."""

    def _end(self) -> None:
        """Complete the protocol's end of a transfer once the data ended (FTP's final reply)."""

    @abc.abstractmethod
    def _disconnect(self) -> None:
        """Drop the transfer (safe to call when there is none)."""

    @abc.abstractmethod
    def _is_open(self) -> bool:
        """Whether a transfer is open to read from."""

    def _check_resumable(self, reason: str) -> None:
        """Raise :class:`SourceError` when a break cannot be resumed (a content-encoded body)."""

    # -- the loop --------------------------------------------------------------------------------

    def _open_first(self) -> None:
        """The first connection, made by the subclass's constructor: only transient failures are retried."""
        started = time.monotonic()
        try:
            while not self._attempt():
                pass
            self._rate.account(0, time.monotonic() - started)
        except BaseException:
            self.close()
            raise

    def _attempt(self) -> bool:
        """One (re)connection at :attr:`position`; False when it failed and may be tried again."""
        try:
            self._connect()
        except Failure as exc:
            self._disconnect()
            if exc.kind == FATAL or (exc.kind == FATAL_AT_START and not self._connected_once):
                raise SourceError(exc.reason) from None
            self._budget.failed(exc.reason)
            return False
        except BaseException:
            self._disconnect()
            raise
        self._connected_once = True
        return True

    def readinto(self, buffer: memoryview) -> int:
        """Fill (part of) ``buffer``; after a break, resume where the delivered bytes end."""
        view = memoryview(buffer).cast("B")
        if not len(view) or self._done:
            return 0
        started = time.monotonic()
        count = self._next(view)
        self._rate.account(count, time.monotonic() - started)
        return count

    def _next(self, view: memoryview) -> int:
        while not self._done:
            if not self._is_open() and not self._attempt():
                continue
            try:
                count = self._read(view)
                if count:
                    self.position += count
                    self._budget.progress()
                    return count
                self._end()
                if self.total is None or self.position == self.total:
                    self._disconnect()
                    self._done = True
                    return 0
                reason = f"connection closed after {self.position} of {self.total} bytes"
            except Failure as exc:
                reason = exc.reason
            self._disconnect()
            self._check_resumable(reason)
            self._budget.failed(reason)
        return 0

    def close(self) -> None:
        """Drop the transfer; safe to call twice."""
        self._disconnect()
