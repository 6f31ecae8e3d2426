"""The host's readers of what the helper VM sends: hostile input, handled as data.

The result port means success only if it carries exactly one line, the
runner's ``SUCCESS <token>`` with this deployment's token
(:func:`result_verdict`); progress lines (``contract.messages.HelperLine``)
are size-, count- and rate-limited and schema-validated, and the host sets
the fields the guest must not choose (type, timestamp); the console is only
logged, sanitized and bounded.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from snf_image import schemas
from snf_image.contract import constants
from snf_image.contract.messages import HelperLine, MessageError, Result

#: Limits on what is merely logged (console, qemu's own output).
CONSOLE_MAX_LINE = 1024
CONSOLE_MAX_LINES = 20000
CONSOLE_TAIL = 20
ERROR_MAX_CHARS = 512


def sanitize(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """Printable, single-line, truncated: safe to put in a log or an error message."""
    clean = "".join(c if c.isprintable() else "?" for c in text.replace("\t", " "))
    return clean if len(clean) <= limit else clean[:limit] + "..."


FORGED_SUCCESS = (
    "the result port carried a SUCCESS without this deployment's token: something in the helper VM "
    "other than the runner wrote it (a forgery attempt)"
)


def result_verdict(data: bytes, token: str) -> Result | None:
    """The helper's verdict in everything its result port delivered; None if it sent no line.

    Only the runner writes there, once, and only it knows ``token`` (the
    rules' result_token). So: any SUCCESS line without the token (compared in
    constant time) is a forgery and makes the verdict a failure that says
    so, whatever else arrived, before or after it; more than one line is a
    failure too (which line came first decides nothing); one ``SUCCESS
    <token>`` line is success; one ``ERROR:`` line is that failure (the
    helper's init writes those before the rules are read, without a token).
    """
    lines = [line for line in data.split(b"\n") if line.strip(b"\r")]
    if not lines:
        return None
    verdicts = [Result.parse_line(line) for line in lines]
    expected = token.encode("ascii")
    for verdict in verdicts:
        if verdict is not None and verdict.success and not hmac.compare_digest(verdict.token.encode(), expected):
            return Result.failure(FORGED_SUCCESS)
    if len(lines) > 1:
        errors = [v.reason for v in verdicts if v is not None and not v.success]
        first = f"; the first error: {errors[0]}" if errors else ""
        return Result.failure(f"the result port carried {len(lines)} lines where the runner writes one{first}")
    if verdicts[0] is None:
        return Result.failure("the result port carried something that is not a result line")
    return verdicts[0]


class ProtocolViolation(Exception):
    """The VM broke the rules of a channel; the message names the violation."""


class LineSplitter:
    """Split a byte stream into lines, refusing (or cutting) lines over ``max_line`` bytes."""

    def __init__(self, max_line: int, strict: bool) -> None:
        self.max_line = max_line
        self.strict = strict
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            if len(line) > self.max_line:
                if self.strict:
                    raise ProtocolViolation(f"line longer than {self.max_line} bytes")
                line = line[: self.max_line]
            out.append(line)
        if len(self.buf) > self.max_line:
            if self.strict:
                raise ProtocolViolation(f"line longer than {self.max_line} bytes")
            out.append(self.buf[: self.max_line])
            self.buf = b""
        return out

    def flush(self) -> list[bytes]:
        rest, self.buf = self.buf, b""
        return [rest] if rest else []


class ProgressReader:
    """The progress port: JSON lines, limited in size, number and rate, schema-checked."""

    def __init__(self, on_progress: Callable[[dict], None]) -> None:
        self.on_progress = on_progress
        self.lines = LineSplitter(constants.HELPER_MAX_LINE, strict=True)
        self.count = 0
        self.tokens = float(constants.HELPER_MAX_LINES_PER_SECOND)
        self.last = time.monotonic()

    def feed(self, data: bytes) -> None:
        """Take a chunk as read: its lines arrived together, which is what the rate limit counts."""
        now = time.monotonic()
        rate = constants.HELPER_MAX_LINES_PER_SECOND
        self.tokens = min(float(rate), self.tokens + max(0.0, now - self.last) * rate)
        self.last = now
        for line in self.lines.feed(data):
            self._line(line)

    def finish(self) -> None:
        for line in self.lines.flush():  # a last line without newline still counts
            self._line(line)

    def _line(self, raw: bytes) -> None:
        """A token bucket (capacity: one second's worth) limits the rate; the count is absolute."""
        self.count += 1
        if self.count > constants.HELPER_MAX_LINES:
            raise ProtocolViolation(f"more than {constants.HELPER_MAX_LINES} lines")
        rate = constants.HELPER_MAX_LINES_PER_SECOND
        if self.tokens < 1:
            raise ProtocolViolation(f"more than {rate} lines per second")
        self.tokens -= 1
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            return
        try:
            line = HelperLine.from_json(raw)
        except MessageError as exc:
            raise ProtocolViolation(sanitize(str(exc), 300)) from None
        problem = schemas.first_error("progress", line.to_object(), "helper_line")
        if problem:
            raise ProtocolViolation(f"an invalid message ({sanitize(problem, 200)})")
        self.on_progress(line.to_message(time.time()))
