"""What the jail says to the host: progress lines and the result line, defined once.

Progress port: one JSON object per line, a :class:`HelperLine` (the
``helper_line`` of ``progress.schema.json``). The jail's reporter builds them
with :func:`task_start`, :func:`task_end`, :func:`warning` and :func:`error`;
the host's reader parses each with :meth:`HelperLine.from_json`, checks it
against the schema and its limits, and relays :meth:`HelperLine.to_message`
with the type and timestamp it sets itself.

Result port: one line, ``SUCCESS <token>`` or ``ERROR: <reason>``
(:class:`Result`), written once by the runner. The token is the deployment's
``Rules.result_token``: the host accepts a SUCCESS only with it (and only
alone on the port, see ``snf_image.jail.channels.result_verdict``). Only the
result port decides success on the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .constants import (
    HELPER_ERROR,
    HELPER_MAX_LINE,
    HELPER_SUBTYPES,
    HELPER_TASK_END,
    HELPER_TASK_START,
    HELPER_WARNING,
    MSG_HELPER,
    RESULT_ERROR_PREFIX,
    RESULT_MAX_REASON,
    RESULT_SUCCESS,
)

#: Keys a progress line may carry that the host replaces with its own values.
HOST_SET = ("type", "timestamp")


class MessageError(ValueError):
    """A progress line that is not one; the message says why (never the line itself)."""


@dataclass(frozen=True, kw_only=True)
class HelperLine:
    """One progress line: a task's start or end (``task``), or a warning or error (``messages`` or ``stderr``)."""

    subtype: str
    task: str | None = None
    messages: tuple[str, ...] | None = None
    stderr: str | None = None

    def __post_init__(self) -> None:
        if self.subtype not in HELPER_SUBTYPES:
            raise ValueError(f"unknown subtype {self.subtype[:32]!r}")
        if self.subtype in (HELPER_TASK_START, HELPER_TASK_END):
            if self.task is None or self.messages is not None or self.stderr is not None:
                raise ValueError(f"a {self.subtype} line carries a task and nothing else")
        elif self.task is not None or (self.messages is None) == (self.stderr is None):
            raise ValueError(f"a {self.subtype} line carries either messages or stderr")

    def to_object(self) -> dict[str, Any]:
        """The line as a JSON object: the fields that are set."""
        return {key: value for key, value in codec.encode(self).items() if value is not None}

    def to_json(self) -> str:
        """The line as the jail writes it (without the newline)."""
        return json.dumps(self.to_object())

    def to_message(self, timestamp: float) -> dict[str, Any]:
        """The ``image-helper`` progress message the host relays: its own type and timestamp added."""
        return {**self.to_object(), "type": MSG_HELPER, "timestamp": timestamp}

    @classmethod
    def from_json(cls, raw: bytes) -> HelperLine:
        """The line in ``raw``; MessageError if it is not UTF-8 JSON of a HelperLine's shape."""
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MessageError("a line that is not UTF-8 JSON") from None
        if not isinstance(obj, dict):
            raise MessageError("a line that is not a JSON object")
        for key in HOST_SET:
            obj.pop(key, None)
        try:
            return codec.decode(cls, obj, "line")
        except codec.DecodeError as exc:
            raise MessageError(f"an invalid message ({exc})") from None


def task_start(task: str) -> HelperLine:
    return HelperLine(subtype=HELPER_TASK_START, task=task)


def task_end(task: str) -> HelperLine:
    return HelperLine(subtype=HELPER_TASK_END, task=task)


def warning(text: str) -> HelperLine:
    """A warning line: ``text`` on one line, cut to fit the line limit."""
    return _text_line(HELPER_WARNING, text)


def error(text: str) -> HelperLine:
    """An error line: ``text`` on one line, cut to fit the line limit."""
    return _text_line(HELPER_ERROR, text)


#: The warning by which the runner announces a property it detected itself (the original's text).
DETECTED_PREFIX = "Detected "


def detected(name: str, value: str) -> str:
    """The text of the warning that says the runner detected property ``name`` (OSFAMILY, ROOT_PARTITION)."""
    return f"{DETECTED_PREFIX}{name}: {value}"


def parse_detected(text: str) -> tuple[str, str] | None:
    """(name, value) of a :func:`detected` warning text, or None for any other text."""
    if not text.startswith(DETECTED_PREFIX):
        return None
    name, sep, value = text[len(DETECTED_PREFIX) :].partition(": ")
    return (name, value) if sep and name.isupper() and value else None


def _text_line(subtype: str, text: str) -> HelperLine:
    text = " ".join(text.split()) or "(no message)"
    while True:
        line = HelperLine(subtype=subtype, messages=(text,))
        if len(line.to_json()) < HELPER_MAX_LINE:
            return line
        text = text[: len(text) * 3 // 4] + "..."


def one_line(text: str) -> str:
    """A reason fit for the result port: one line, at most RESULT_MAX_REASON characters."""
    text = " ".join(str(text).split()) or "unknown error"
    return text if len(text) <= RESULT_MAX_REASON else text[: RESULT_MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class Result:
    """The jail's verdict: success (carrying the deployment's token), or failure with the reason the operator reads."""

    success: bool
    reason: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def succeeded(cls, token: str) -> Result:
        return cls(True, token=token)

    @classmethod
    def failure(cls, reason: str) -> Result:
        return cls(False, one_line(reason))

    def to_line(self) -> str:
        """What the jail writes on the result port."""
        return f"{RESULT_SUCCESS} {self.token}\n" if self.success else f"{RESULT_ERROR_PREFIX} {self.reason}\n"

    @classmethod
    def parse_line(cls, line: bytes) -> Result | None:
        """The verdict one result line claims, or None if it is neither a SUCCESS nor an ERROR line.

        A SUCCESS carries whatever token followed it (empty if none): only the
        host, which knows the deployment's token, can tell whether it is the
        runner's. The reason is returned as sent: the host sanitizes it before
        showing it.
        """
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text == RESULT_SUCCESS or text.startswith(f"{RESULT_SUCCESS} "):
            return cls(True, token=text[len(RESULT_SUCCESS) + 1 :])
        if text.startswith(RESULT_ERROR_PREFIX):
            return cls(False, text[len(RESULT_ERROR_PREFIX) :].strip())
        return None
