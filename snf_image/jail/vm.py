"""One run of qemu: start it, relay its channels, enforce the timeouts, make sure it is gone."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import selectors
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from snf_image.contract import constants
from snf_image.errors import HelperError

from .channels import (
    CONSOLE_MAX_LINE,
    CONSOLE_MAX_LINES,
    CONSOLE_TAIL,
    LineSplitter,
    ProgressReader,
    ProtocolViolation,
    sanitize,
)
from .config import Channels, HelperConfig


@dataclasses.dataclass
class _Outcome:
    returncode: int | None = None
    timed_out: bool = False
    #: timed out because the console stayed silent (see boot's stall_timeout)
    stalled: bool = False
    violation: str | None = None
    result: bytes = b""
    console_tail: deque = dataclasses.field(default_factory=lambda: deque(maxlen=CONSOLE_TAIL))
    seconds: float = 0.0


def _open_fifo(path: Path) -> int:
    """Create a FIFO and open it read-write, non-blocking.

    Holding a write end ourselves means no spurious EOF before qemu opens it;
    the end of the stream is the end of the qemu process instead.
    """
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def _read_all(fd: int) -> bytes:
    """Whatever is readable on a non-blocking fd right now."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.EIO:
                break
            raise
        if not data:
            break
        chunks.append(data)
        if sum(map(len, chunks)) > 1 << 20:
            break
    return b"".join(chunks)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


class _Relay:
    """Hands each chunk the VM wrote to the reader of its channel, filling in the outcome."""

    def __init__(self, outcome: _Outcome, on_progress: Callable[[dict], None], log: Callable[[str], None]) -> None:
        self.outcome = outcome
        self.log = log
        self.progress = ProgressReader(on_progress)
        self.console = LineSplitter(CONSOLE_MAX_LINE, strict=False)
        self.qemu_out = LineSplitter(CONSOLE_MAX_LINE, strict=False)
        self.console_lines = 0
        self.last_console = time.monotonic()

    def log_console(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = sanitize(raw.decode("utf-8", "replace").rstrip("\r"), CONSOLE_MAX_LINE)
            self.outcome.console_tail.append(line)
            self.console_lines += 1
            if self.console_lines <= CONSOLE_MAX_LINES:
                self.log(f"HELPER: {line}")
            elif self.console_lines == CONSOLE_MAX_LINES + 1:
                self.log(f"HELPER: (console over {CONSOLE_MAX_LINES} lines; no longer logged)")

    def handle(self, name: str, data: bytes) -> None:
        if name == "console":
            self.last_console = time.monotonic()
            self.log_console(self.console.feed(data))
        elif name == "qemu":
            for raw in self.qemu_out.feed(data):
                self.log(f"QEMU: {sanitize(raw.decode('utf-8', 'replace'), CONSOLE_MAX_LINE)}")
        elif name == "result":
            self.outcome.result += data
            if len(self.outcome.result) > constants.RESULT_MAX_BYTES:
                raise ProtocolViolation(f"result port: more than {constants.RESULT_MAX_BYTES} bytes")
        elif name == "progress":
            try:
                self.progress.feed(data)
            except ProtocolViolation as exc:
                raise ProtocolViolation(f"progress port: {exc}") from None

    def finish(self) -> None:
        """qemu is gone: the last partial lines still count."""
        self.log_console(self.console.flush())
        try:
            self.progress.finish()
        except ProtocolViolation as exc:
            raise ProtocolViolation(f"progress port: {exc}") from None


def _relay_until_exit(
    proc: subprocess.Popen,
    sources: dict[str, int],
    relay: _Relay,
    soft_timeout: float,
    hard_timeout: float,
    start: float,
    stall_timeout: float | None = None,
) -> None:
    """Relay the channels until qemu exits: SIGTERM at the soft timeout, SIGKILL after the hard one.

    With ``stall_timeout``, a console silent for that long counts as the soft timeout too.
    """
    log = relay.log
    pidfd = os.pidfd_open(proc.pid)
    with selectors.DefaultSelector() as sel, contextlib.closing(os.fdopen(pidfd, "rb", buffering=0)):
        for name, fd in sources.items():
            sel.register(fd, selectors.EVENT_READ, name)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        soft = start + soft_timeout
        hard: float | None = None
        exited = False
        while not exited:
            now = time.monotonic()
            stalled = stall_timeout is not None and now >= relay.last_console + stall_timeout
            if hard is None and (now >= soft or stalled):
                relay.outcome.timed_out = True
                relay.outcome.stalled = stalled and now < soft
                if relay.outcome.stalled:
                    log(f"helper VM console silent for {stall_timeout:g} s: sending SIGTERM")
                else:
                    log(f"helper VM did not finish in {soft_timeout:g} s: sending SIGTERM")
                proc.terminate()
                hard = now + hard_timeout
            elif hard is not None and now >= hard:
                log(f"helper VM still running {hard_timeout:g} s after SIGTERM: sending SIGKILL")
                proc.kill()
                hard = float("inf")
            wait = (soft if hard is None else hard) - now
            if hard is None and stall_timeout is not None:
                wait = min(wait, relay.last_console + stall_timeout - now)
            for key, _ in sel.select(max(0.0, min(wait, 1.0))):
                if key.data == "exit":
                    exited = True
                    continue
                data = _read_all(key.fd)
                if not data and key.data == "qemu":
                    sel.unregister(key.fd)
                elif data:
                    relay.handle(key.data, data)
    # qemu is gone: what it wrote is in the pipes, read it to the end.
    for name, fd in sources.items():
        relay.handle(name, _read_all(fd))
    relay.finish()


def boot(
    cmd: list[str],
    fds: dict[str, int],
    soft_timeout: float,
    hard_timeout: float,
    on_progress: Callable[[dict], None],
    log: Callable[[str], None],
    stall_timeout: float | None = None,
) -> _Outcome:
    """Run qemu to its end, relaying the channels; the VM is gone when this returns.

    ``stall_timeout``: give up as at the soft timeout once the console has been silent
    that long (the KVM probe: a hung kernel prints nothing more).
    """
    outcome = _Outcome()
    relay = _Relay(outcome, on_progress, log)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise HelperError(f"cannot start the helper VM ({cmd[0]}): {exc.strerror or exc}") from None
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        try:
            _relay_until_exit(
                proc, {**fds, "qemu": proc.stdout.fileno()}, relay, soft_timeout, hard_timeout, start, stall_timeout
            )
        except ProtocolViolation as exc:
            outcome.violation = str(exc)
            log(f"helper VM broke the protocol ({exc}): killing it")
            _kill(proc)
        outcome.returncode = proc.wait()
    finally:
        _kill(proc)
        if proc.stdout:
            proc.stdout.close()
        outcome.seconds = time.monotonic() - start
    return outcome


@contextlib.contextmanager
def workdir(config: HelperConfig, rules: bytes | None) -> Iterator[tuple[Path | None, Channels, dict[str, int]]]:
    """A private temp dir with the rules disk and the channel FIFOs; all removed on exit."""
    fds: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="snf-image-jail-") as tmp:
        work = Path(tmp)
        try:
            rules_path = None
            if rules is not None:
                rules_path = work / "rules.img"
                fd = os.open(rules_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(rules + b"\0" * (-len(rules) % 512))
            debug = None
            if config.debug:
                debug = Path(config.debug_socket) if config.debug_socket else work / "debug.sock"
            channels = Channels(work / "console", work / "result", work / "progress", debug)
            for name in ("console", "result", "progress"):
                fds[name] = _open_fifo(getattr(channels, name))
            yield rules_path, channels, fds
        finally:
            for fd in fds.values():
                os.close(fd)
            if config.debug and config.debug_socket:
                Path(config.debug_socket).unlink(missing_ok=True)
