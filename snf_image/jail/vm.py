"""One run of qemu: start it, relay its channels, enforce the timeouts, make sure it is gone.

qemu runs under coreutils' ``timeout``, started with a parent-death signal
(:func:`snf_image.lifecycle.spawned`). qemu's ``-runas`` drops root, which clears a
parent-death signal; the supervisor stays root and keeps it. So when this process is
SIGKILLed -- it runs no code then -- the supervisor gets SIGTERM, passes it on to qemu and
SIGKILLs it after the hard timeout; and should this process merely stall, the supervisor
stops qemu at the soft + hard deadline by itself.

Nothing of a run is on a filesystem: the rules (passwords, user-data, keys) are in a sealed
memfd and the serial ports are pipes, handed to qemu as file descriptors (``-add-fd``, opened
as ``/dev/fdset/N``). No other process can open them, and a SIGKILL leaves no file behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from snf_image import lifecycle, tempdirs
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
from .config import Channels, HelperConfig, PassedFd

#: coreutils: runs qemu as its child and stops it (see the module docstring).
SUPERVISOR = "/usr/bin/timeout"
#: Seconds after the soft + hard timeouts at which the supervisor stops qemu on its own; normally
#: the relay loop has done it long before.
SUPERVISOR_MARGIN = 5.0
#: qemu's numbers for the descriptors it gets (-add-fd set=N): the rules disk, then the ports.
FDSET_RULES = 1
CHANNEL_FDSETS = {"console": 2, "result": 3, "progress": 4}
_RULES_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


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

    The supervisor does the escalation: it passes the SIGTERM on to qemu and SIGKILLs it
    ``hard_timeout`` seconds later; only if it has not after a margin more, this SIGKILLs them.
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
                    why = f"console silent for {stall_timeout:g} s"
                else:
                    why = f"did not finish in {soft_timeout:g} s"
                log(f"helper VM {why}: sending SIGTERM, SIGKILL {hard_timeout:g} s on")
                proc.send_signal(signal.SIGTERM)
                hard = now + hard_timeout + SUPERVISOR_MARGIN
            elif hard is not None and now >= hard:
                log("helper VM still running after its supervisor's SIGKILL: sending SIGKILL")
                lifecycle.signal_group(proc, signal.SIGKILL)
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


def check_runnable(qemu: str) -> None:
    """Refuse a qemu that is not there (the supervisor would only report it as an exit code)."""
    if shutil.which(qemu, path=lifecycle.child_env()["PATH"]) is None:
        raise HelperError(f"cannot start the helper VM ({qemu}): no such program")


def supervised(cmd: Sequence[str], soft_timeout: float, hard_timeout: float) -> list[str]:
    """``cmd`` under the supervisor: SIGTERM at the soft + hard timeouts plus a margin, SIGKILL a hard timeout on.

    ``--foreground``: the supervisor signals qemu alone and waits for it, so when the supervisor
    has exited, qemu is gone (reaped), never merely dying.
    """
    deadline = soft_timeout + hard_timeout + SUPERVISOR_MARGIN
    return [SUPERVISOR, "--foreground", f"--kill-after={max(hard_timeout, 0.1):g}s", f"{deadline:g}s", *cmd]


def passed_fds(cmd: Sequence[str]) -> tuple[int, ...]:
    """The descriptors the command line hands to qemu (``-add-fd fd=N,...``): exactly those are inherited."""
    return tuple(
        int(value.split(",", 1)[0].removeprefix("fd="))
        for option, value in itertools.pairwise(cmd)
        if option == "-add-fd"
    )


def boot(
    cmd: list[str],
    fds: dict[str, int],
    soft_timeout: float,
    hard_timeout: float,
    on_progress: Callable[[dict], None],
    log: Callable[[str], None],
    stall_timeout: float | None = None,
) -> _Outcome:
    """Run qemu to its end, relaying the channels (our read ends in ``fds``); the VM is gone when this returns.

    ``stall_timeout``: give up as at the soft timeout once the console has been silent
    that long (the KVM probe: a hung kernel prints nothing more).
    """
    check_runnable(cmd[0])
    outcome = _Outcome()
    relay = _Relay(outcome, on_progress, log)
    start = time.monotonic()
    try:
        with lifecycle.spawned(
            supervised(cmd, soft_timeout, hard_timeout),
            grace=hard_timeout,
            pass_fds=passed_fds(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as proc:
            assert proc.stdout is not None
            with proc.stdout:
                os.set_blocking(proc.stdout.fileno(), False)
                sources = {**fds, "qemu": proc.stdout.fileno()}
                try:
                    _relay_until_exit(proc, sources, relay, soft_timeout, hard_timeout, start, stall_timeout)
                except ProtocolViolation as exc:
                    outcome.violation = str(exc)
                    log(f"helper VM broke the protocol ({exc}): killing it")
                    lifecycle.signal_group(proc, signal.SIGKILL)
                outcome.returncode = proc.wait()
    finally:
        outcome.seconds = time.monotonic() - start
    return outcome


def _rules_fd(rules: bytes) -> int:
    """A read-only descriptor of a sealed memfd holding ``rules`` padded to 512 bytes (qemu's raw disk)."""
    memfd = os.memfd_create("snf-image-rules", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        data = memoryview(rules + b"\0" * (-len(rules) % 512))
        while data:
            data = data[os.write(memfd, data) :]
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, _RULES_SEALS)
        return os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(memfd)


@contextlib.contextmanager
def workdir(config: HelperConfig, rules: bytes | None) -> Iterator[tuple[PassedFd | None, Channels, dict[str, int]]]:
    """What one run needs, as descriptors (see the module docstring); all closed on exit.

    Yields the rules disk (None without rules), the channels for the command line, and our
    non-blocking read ends of the serial ports by name. Only the debug shell's socket, with
    debug on, is a file: at ``config.debug_socket``, or in a private temporary directory.
    """
    owned: list[int] = []
    private_dir = None
    try:
        rules_disk = None
        if rules is not None:
            owned.append(_rules_fd(rules))
            rules_disk = PassedFd(owned[-1], FDSET_RULES, "rules")
        read_ends: dict[str, int] = {}
        ports: dict[str, PassedFd] = {}
        for name, fdset in CHANNEL_FDSETS.items():
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            owned += [read_end, write_end]
            os.set_blocking(read_end, False)
            read_ends[name] = read_end
            ports[name] = PassedFd(write_end, fdset, name)
        debug = None
        if config.debug:
            if config.debug_socket:
                debug = Path(config.debug_socket)
            else:
                private_dir = tempdirs.private("jail")
                debug = Path(private_dir.name) / "debug.sock"
        yield rules_disk, Channels(**ports, debug=debug), read_ends
    finally:
        for fd in owned:
            os.close(fd)
        if private_dir is not None:
            private_dir.cleanup()
        if config.debug and config.debug_socket:
            Path(config.debug_socket).unlink(missing_ok=True)
