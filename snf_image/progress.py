"""Progress messages for the cloud layer above Ganeti.

Each message is a JSON object on one line, validated against the shipped
schema (``schemas/progress.schema.json``) before it leaves, and written to
the stdin of the ``PROGRESS_MONITOR`` program (instance name as its only
argument) or, without one, to the log with a ``[MONITOR]`` prefix.

A monitor never delays or fails a deployment. Messages reach it through a
bounded queue and a writer thread, so a monitor that stops reading blocks
only that thread: when the queue is full further messages are dropped (and
that is logged once), and the deployment's own loops -- the one enforcing the
helper VM's timeouts above all -- go on. At the end the monitor gets a bounded
time to read the rest and exit, then it is killed. A monitor that dies is
logged once; the messages after it go to the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from . import lifecycle, schemas
from .contract.constants import MSG_COPY_PROGRESS, MSG_ERROR, MSG_HELPER, MSG_INFO

log = logging.getLogger(__name__)

#: Messages waiting for a slow monitor (on top of its pipe's 64 KiB); more are dropped.
MONITOR_QUEUE = 1000
#: Seconds the monitor gets at the end to read what is left and exit before it is killed.
MONITOR_CLOSE_TIMEOUT = 5.0
#: Seconds between SIGTERM and SIGKILL for a monitor that outlives that time.
MONITOR_STOP_GRACE = 1.0
_END = None


def make_message(msg_type: str, **fields: Any) -> dict[str, Any]:
    """A timestamped message, validated: an invalid one is a bug in the caller."""
    message = {"type": msg_type, "timestamp": time.time(), **fields}
    problem = schemas.first_error("progress", message)
    if problem is not None:
        raise ValueError(f"invalid {msg_type} message: {problem}")
    return message


def _output_fd(stream: IO[str]) -> int:
    """Where the monitor's own output goes: our log stream if it is a file, else our stderr."""
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return sys.__stderr__.fileno() if sys.__stderr__ else 2


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
        self._children = contextlib.ExitStack()
        self._queue: queue.Queue[str | None] = queue.Queue(MONITOR_QUEUE)
        self._writer: threading.Thread | None = None
        self._dropped = 0
        #: Set when close() gives up on a stalled monitor: what it did not read is dropped.
        self._abandoned = False
        if monitor:
            try:
                self._start(monitor, instance)
            except (OSError, ValueError) as exc:
                log.warning("progress monitor %r could not start (%s); messages go to the log", monitor, exc)
            except BaseException:
                self._children.close()
                raise

    def _start(self, monitor: str, instance: str) -> None:
        output = _output_fd(self._stream)
        self._proc = self._children.enter_context(
            lifecycle.spawned(
                [*shlex.split(monitor), instance],
                grace=MONITOR_STOP_GRACE,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=output,
            )
        )
        self._writer = threading.Thread(target=self._write_lines, name="snf-image-monitor", daemon=True)
        self._writer.start()

    def _write_lines(self) -> None:
        """The writer thread: the only one that may block on the monitor."""
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        alive = True
        while (line := self._queue.get()) is not _END:
            data = memoryview(line.encode("ascii"))
            while alive and data:
                try:
                    data = data[os.write(fd, data) :]
                except OSError as exc:
                    if not self._abandoned:
                        log.warning("progress monitor died (%s); further messages go to the log", exc)
                    alive = False
            if not alive and self._listener is None and not self._abandoned:
                self._log_line(line)

    def _log_line(self, line: str) -> None:
        self._stream.write("[MONITOR] " + line)
        self._stream.flush()

    def observe(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Also hand every message to ``observer`` (the deployment summary), whatever the delivery."""
        self._observers.append(observer)

    def send(self, message: dict[str, Any]) -> None:
        for observer in self._observers:
            observer(message)
        if self._listener is not None:
            self._listener(message)
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=True) + "\n"
        if self._writer is None:
            if self._listener is None:
                self._log_line(line)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            if not self._dropped:
                log.warning("progress monitor is not reading its input: dropping progress messages")
            self._dropped += 1

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

    def close(self) -> None:
        """Let the monitor read what is left and exit, within MONITOR_CLOSE_TIMEOUT; then kill it."""
        writer, self._writer = self._writer, None
        proc = self._proc
        if writer is None or proc is None:
            self._children.close()
            return
        deadline = time.monotonic() + MONITOR_CLOSE_TIMEOUT
        with lifecycle.uninterrupted():
            try:
                self._queue.put(_END, timeout=MONITOR_CLOSE_TIMEOUT)
                ended = True
            except queue.Full:  # a stalled monitor
                ended = False
            writer.join(max(0.0, deadline - time.monotonic()))
            if writer.is_alive():
                log.warning(
                    "progress monitor did not read its last messages in %g s; killing it", MONITOR_CLOSE_TIMEOUT
                )
                self._abandoned = True
                lifecycle.signal_group(proc, signal.SIGKILL)  # its pipe breaks: the writer only drains the queue
                if not ended:
                    self._queue.put(_END)
                writer.join()
            if self._dropped:
                log.warning("progress monitor missed %d messages it did not read in time", self._dropped)
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("progress monitor did not exit; killing it")
            self._children.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
