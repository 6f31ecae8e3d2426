"""Progress messages for the cloud layer above Ganeti.

Each message is a JSON object on one line, validated against the shipped
schema (``schemas/progress.schema.json``) before it leaves, and written to
the stdin of the ``PROGRESS_MONITOR`` program (instance name as its only
argument) or, without one, to the log with a ``[MONITOR]`` prefix. A monitor
that dies or stalls never fails a deployment: we log it once and fall back
to the log.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from . import schemas
from .contract.constants import MSG_COPY_PROGRESS, MSG_ERROR, MSG_HELPER, MSG_INFO

log = logging.getLogger(__name__)

MONITOR_EXIT_TIMEOUT = 10.0


def make_message(msg_type: str, **fields: Any) -> dict[str, Any]:
    """A timestamped message, validated: an invalid one is a bug in the caller."""
    message = {"type": msg_type, "timestamp": time.time(), **fields}
    problem = schemas.first_error("progress", message)
    if problem is not None:
        raise ValueError(f"invalid {msg_type} message: {problem}")
    return message


class Progress:
    """Sends progress messages of one deployment to the monitor or the log."""

    def __init__(
        self,
        monitor: str = "",
        instance: str = "",
        stream: IO[str] | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._stream = stream or sys.stderr
        #: Also receives every message (the CLI's display); then nothing goes to the log.
        self._listener = listener
        self._observers: list[Callable[[dict[str, Any]], None]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        if monitor:
            try:
                self._proc = subprocess.Popen(
                    [*shlex.split(monitor), instance], stdin=subprocess.PIPE, stdout=self._stream, stderr=self._stream
                )
            except (OSError, ValueError) as exc:
                log.warning("progress monitor %r could not start (%s); messages go to the log", monitor, exc)

    def observe(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Also hand every message to ``observer`` (the deployment summary), whatever the delivery."""
        self._observers.append(observer)

    def send(self, message: dict[str, Any]) -> None:
        for observer in self._observers:
            observer(message)
        if self._listener is not None:
            self._listener(message)
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=True) + "\n"
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.write(line.encode("ascii"))
                self._proc.stdin.flush()
                return
            except OSError as exc:
                log.warning("progress monitor died (%s); further messages go to the log", exc)
                self._abandon_monitor()
        if self._listener is None:
            self._stream.write("[MONITOR] " + line)
            self._stream.flush()

    def info(self, *messages: str) -> None:
        log.info("%s", " ".join(messages))
        self.send(make_message(MSG_INFO, messages=list(messages)))

    def error(self, *messages: str) -> None:
        self.send(make_message(MSG_ERROR, messages=list(messages)))

    def copy_progress(self, position: int, total: int) -> None:
        percent = round(position * 100 / total, 2) if total else 0
        self.send(make_message(MSG_COPY_PROGRESS, position=position, total=total, progress=percent))

    def helper(self, line: dict[str, Any]) -> None:
        """Relay one already-validated line from the jail."""
        self.send(make_message(MSG_HELPER, **{k: v for k, v in line.items() if k not in ("type", "timestamp")}))

    def _abandon_monitor(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=MONITOR_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("progress monitor did not exit; killing it")
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Let the monitor read everything and exit (bounded wait)."""
        self._abandon_monitor()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
