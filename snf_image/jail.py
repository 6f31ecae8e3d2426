"""Boot the helper VM (the "jail") that customizes an image, and read what it says.

Everything the image contains is parsed only inside this VM. The host side
here trusts nothing the VM sends: the result port counts only if its first
line is exactly ``SUCCESS``; progress lines are size-, count- and
rate-limited and schema-validated; the console is only logged.

The VM (qemu, direct kernel boot, ``-nodefaults -nic none``, ``-runas``,
``-sandbox``) gets these virtio-blk disks, found in the guest by serial:

* ``snf-helper-root``  HELPER_DIR/image, read-only
* ``snf-rules``        the rules JSON (UTF-8) padded with NULs to 512 bytes, read-only
* ``snf-disk<N>``      instance disk N (Ganeti index), read-write unless told otherwise

and four serial ports: ttyS0 console (logged as ``HELPER: ...``), ttyS1
result, ttyS2 progress (JSON lines), ttyS3 debug shell (only with debug).

Accelerator: ``accel="auto"`` boots the helper kernel once under KVM in
probe mode (``snf_image_probe``: /init writes ``SNF-IMAGE-PROBE-OK`` on the
result port and powers off) with a short timeout; KVM is used only if that
works, else TCG. The answer is cached for the life of the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import re
import selectors
import shlex
import stat
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from snf_image import schemas
from snf_image.contract import constants
from snf_image.errors import HelperError
from snf_image.helperimage.codelayer import helper_version

ACCELERATORS = ("auto", "kvm", "tcg")
DEFAULT_RUNNER = "helper.runner"
PROBE_OK = "SNF-IMAGE-PROBE-OK"
#: How long the KVM probe may take to reach /init and power off (a working KVM needs ~1 s).
PROBE_TIMEOUT = 10.0
#: Disk URIs passed to qemu as they are; anything else must be an absolute path.
URI_SCHEMES = ("nbd", "nbd+tcp", "nbd+unix", "rbd", "iscsi", "gluster")
#: Limits on what is merely logged (console, qemu's own output).
CONSOLE_MAX_LINE = 1024
CONSOLE_MAX_LINES = 20000
CONSOLE_TAIL = 20
ERROR_MAX_CHARS = 512


def check_helper_dir(helper_dir: Path) -> None:
    """Refuse a missing, incomplete or out-of-date helper directory, saying how to fix it."""
    for name in ("image", "kernel", "initrd", "version"):
        if not (helper_dir / name).is_file():
            raise HelperError(f"helper image is missing {helper_dir / name}; build it with: snf-image helper build")
    found = (helper_dir / "version").read_text("utf-8", "replace").strip()
    wanted = helper_version()
    if found != wanted:
        raise HelperError(
            f"helper image version {found[:80]} does not match snf-image {wanted}; "
            "rebuild it with: snf-image helper build [--code-only]"
        )


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class JailDisk:
    """An instance disk for the jail: a local path or a qemu URI (nbd://, rbd:...), by Ganeti index."""

    path_or_uri: str
    index: int
    readonly: bool = False


@dataclasses.dataclass
class HelperConfig:
    """How to run the helper VM (from the HELPER_* settings)."""

    helper_dir: Path
    memory_mib: int = 512
    soft_timeout: float = 120.0
    hard_timeout: float = 5.0
    #: qemu drops to this user after opening its files; None keeps root (tests only).
    user: str | None = "nobody"
    accel: str = "auto"
    debug: bool = False
    qemu: str = "qemu-system-x86_64"
    #: Where the debug shell's unix socket goes (with debug); default: in the run's temp dir.
    debug_socket: Path | None = None
    #: The Python module /init runs as PID 1 (tests inject probes here).
    runner: str = DEFAULT_RUNNER


@dataclasses.dataclass(frozen=True)
class Channels:
    """Host-side ends of the serial ports (FIFOs, a socket) qemu writes to."""

    console: Path
    result: Path
    progress: Path
    debug: Path | None = None


# --------------------------------------------------------------------------- command line


def _escape(value: str) -> str:
    """Escape a value for qemu's comma-separated option syntax."""
    return value.replace(",", ",,")


def is_uri(path_or_uri: str) -> bool:
    """True if this disk is a qemu URI (passed as is), False for a local absolute path."""
    if path_or_uri.startswith("/"):
        return False
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", path_or_uri)
    if scheme and scheme.group(1) in URI_SCHEMES:
        return True
    raise HelperError(
        f"unsupported disk {path_or_uri[:200]!r}: expected an absolute path or a {'/'.join(URI_SCHEMES)} URI"
    )


def _drive(drive_id: str, source: str, block_device: bool, readonly: bool, cache: str) -> str:
    """A -drive value with the format and protocol always explicit: qemu never guesses."""
    if is_uri(source):
        where = f"file={_escape(source)}"
    else:
        protocol = "host_device" if block_device else "file"
        where = f"file.driver={protocol},file.filename={_escape(source)}"
    opts = [f"if=none,id={drive_id},format=raw,{where},cache={cache}"]
    if readonly:
        opts.append("readonly=on")
    return ",".join(opts)


def kernel_cmdline(debug: bool = False, runner: str = DEFAULT_RUNNER, probe: bool = False) -> str:
    """The helper kernel's command line.

    panic=-1 with qemu's -no-reboot ends the VM at once if PID 1 dies. The rest
    shortens the boot under TCG by ~1 s (measured): no crypto self-tests, no
    timer/TSC checks, no audit, only the four UARTs we have.
    """
    words = [
        "console=ttyS0",
        "quiet",
        "ro",
        "panic=-1",
        "cryptomgr.notests",
        "tsc=reliable",
        "no_timer_check",
        "audit=0",
        "8250.nr_uarts=4",
    ]
    if probe:
        words.append("snf_image_probe")
        return " ".join(words)
    words.append(constants.CMDLINE_ACTIVATE)
    if debug:
        words.append(constants.CMDLINE_DEBUG)
    if runner != DEFAULT_RUNNER:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", runner):
            raise HelperError(f"invalid helper runner module {runner!r}")
        words.append(f"snf_image_runner={runner}")
    return " ".join(words)


def build_qemu_command(
    config: HelperConfig,
    accel: str,
    disks: Sequence[JailDisk],
    rules_path: Path | None,
    channels: Channels,
    *,
    sandbox: bool = True,
    block_devices: frozenset[str] = frozenset(),
    probe: bool = False,
) -> list[str]:
    """The qemu argument list for one helper run (pure: no I/O, unit-tested).

    ``block_devices`` names the local disk paths that are block devices (they need
    qemu's host_device protocol). ``probe`` builds the KVM probe boot (no disks).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be kvm or tcg, not {accel!r}")
    helper_dir = Path(config.helper_dir)
    cmd = [
        config.qemu,
        "-nodefaults",
        "-nic",
        "none",
        "-display",
        "none",
        "-vga",
        "none",
        "-monitor",
        "none",
        "-parallel",
        "none",
        "-no-user-config",
        "-no-reboot",
        "-machine",
        f"pc,accel={accel}",
        "-smp",
        "1",
        "-m",
        str(int(config.memory_mib)),
    ]
    if accel == "kvm":
        cmd += ["-cpu", "host"]
    if sandbox:
        # qemu installs its seccomp filter before -runas drops root, so set*uid must stay
        # allowed when it does (nobody cannot regain root anyway); without -runas, deny it.
        elevate = "allow" if config.user else "deny"
        cmd += ["-sandbox", f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"]
    if config.user:
        cmd += ["-runas", config.user]
    cmd += [
        "-kernel",
        str(helper_dir / "kernel"),
        "-initrd",
        str(helper_dir / "initrd"),
        "-append",
        kernel_cmdline(config.debug, config.runner, probe=probe),
    ]
    # Serial ports, in guest order ttyS0..ttyS3.
    cmd += ["-chardev", f"file,id=console,path={_escape(str(channels.console))}", "-serial", "chardev:console"]
    cmd += ["-chardev", f"file,id=result,path={_escape(str(channels.result))}", "-serial", "chardev:result"]
    cmd += ["-chardev", f"file,id=progress,path={_escape(str(channels.progress))}", "-serial", "chardev:progress"]
    if config.debug and channels.debug is not None and not probe:
        cmd += [
            "-chardev",
            f"socket,id=debug,path={_escape(str(channels.debug))},server=on,wait=off",
            "-serial",
            "chardev:debug",
        ]
    if probe:
        return cmd

    def blk(drive_id: str, drive: str, serial: str) -> list[str]:
        return ["-drive", drive, "-device", f"virtio-blk-pci,drive={drive_id},serial={serial}"]

    cmd += blk(
        "helper-root",
        _drive("helper-root", str(helper_dir / "image"), False, True, "writeback"),
        constants.SERIAL_HELPER_ROOT,
    )
    if rules_path is not None:
        cmd += blk("rules", _drive("rules", str(rules_path), False, True, "writeback"), constants.SERIAL_RULES)
    for disk in disks:
        drive_id = f"disk{int(disk.index)}"
        drive = _drive(drive_id, disk.path_or_uri, disk.path_or_uri in block_devices, disk.readonly, "writeback")
        cmd += blk(drive_id, drive, f"{constants.SERIAL_DISK_PREFIX}{int(disk.index)}")
    return cmd


@functools.cache
def qemu_supports_sandbox(qemu: str) -> bool:
    """Whether this qemu has seccomp (-sandbox) built in."""
    try:
        out = subprocess.run([qemu, "-help"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "\n-sandbox" in out


# --------------------------------------------------------------------------- reading the VM


def sanitize(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """Printable, single-line, truncated: safe to put in a log or an error message."""
    clean = "".join(c if c.isprintable() else "?" for c in text.replace("\t", " "))
    return clean if len(clean) <= limit else clean[:limit] + "..."


class ProtocolViolation(Exception):
    """The VM broke the rules of a channel; the message names the violation."""


class _Lines:
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


class _Progress:
    """The progress port: JSON lines, limited in size, number and rate, schema-checked."""

    def __init__(self, on_progress: Callable[[dict], None]) -> None:
        self.on_progress = on_progress
        self.lines = _Lines(constants.HELPER_MAX_LINE, strict=True)
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
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolViolation("a line that is not UTF-8 JSON") from None
        if not isinstance(obj, dict):
            raise ProtocolViolation("a line that is not a JSON object")
        problem = schemas.first_error("progress", obj, "helper_line")
        if problem:
            raise ProtocolViolation(f"an invalid message ({sanitize(problem, 200)})")
        message = dict(obj)
        message["type"] = constants.MSG_HELPER
        message["timestamp"] = time.time()
        self.on_progress(message)


@dataclasses.dataclass
class _Outcome:
    returncode: int | None = None
    timed_out: bool = False
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


def _boot(
    cmd: list[str],
    channels: Channels,
    fds: dict[str, int],
    soft_timeout: float,
    hard_timeout: float,
    on_progress: Callable[[dict], None],
    log: Callable[[str], None],
) -> _Outcome:
    """Run qemu to its end, relaying the channels; the VM is gone when this returns."""
    outcome = _Outcome()
    progress = _Progress(on_progress)
    console = _Lines(CONSOLE_MAX_LINE, strict=False)
    qemu_out = _Lines(CONSOLE_MAX_LINE, strict=False)
    console_lines = 0

    def log_console(lines: list[bytes]) -> None:
        nonlocal console_lines
        for raw in lines:
            line = sanitize(raw.decode("utf-8", "replace").rstrip("\r"), CONSOLE_MAX_LINE)
            outcome.console_tail.append(line)
            console_lines += 1
            if console_lines <= CONSOLE_MAX_LINES:
                log(f"HELPER: {line}")
            elif console_lines == CONSOLE_MAX_LINES + 1:
                log(f"HELPER: (console over {CONSOLE_MAX_LINES} lines; no longer logged)")

    def handle(name: str, data: bytes) -> None:
        if name == "console":
            log_console(console.feed(data))
        elif name == "qemu":
            for raw in qemu_out.feed(data):
                log(f"QEMU: {sanitize(raw.decode('utf-8', 'replace'), CONSOLE_MAX_LINE)}")
        elif name == "result":
            outcome.result += data
            if len(outcome.result) > constants.RESULT_MAX_BYTES:
                raise ProtocolViolation(f"result port: more than {constants.RESULT_MAX_BYTES} bytes")
        elif name == "progress":
            try:
                progress.feed(data)
            except ProtocolViolation as exc:
                raise ProtocolViolation(f"progress port: {exc}") from None

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
        pidfd = os.pidfd_open(proc.pid)
        sources = {**fds, "qemu": proc.stdout.fileno()}
        with selectors.DefaultSelector() as sel, contextlib.closing(os.fdopen(pidfd, "rb", buffering=0)):
            for name, fd in sources.items():
                sel.register(fd, selectors.EVENT_READ, name)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
            soft = start + soft_timeout
            hard: float | None = None
            exited = False
            try:
                while not exited:
                    now = time.monotonic()
                    if hard is None and now >= soft:
                        outcome.timed_out = True
                        log(f"helper VM did not finish in {soft_timeout:g} s: sending SIGTERM")
                        proc.terminate()
                        hard = now + hard_timeout
                    elif hard is not None and now >= hard:
                        log(f"helper VM still running {hard_timeout:g} s after SIGTERM: sending SIGKILL")
                        proc.kill()
                        hard = float("inf")
                    wait = (soft if hard is None else hard) - now
                    for key, _ in sel.select(max(0.0, min(wait, 1.0))):
                        if key.data == "exit":
                            exited = True
                            continue
                        data = _read_all(key.fd)
                        if not data and key.data == "qemu":
                            sel.unregister(key.fd)
                        elif data:
                            handle(key.data, data)
                # qemu is gone: what it wrote is in the pipes, read it to the end.
                for name, fd in sources.items():
                    handle(name, _read_all(fd))
                log_console(console.flush())
                try:
                    progress.finish()
                except ProtocolViolation as exc:
                    raise ProtocolViolation(f"progress port: {exc}") from None
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
def _workdir(config: HelperConfig, rules: bytes | None) -> Iterator[tuple[Path | None, Channels, dict[str, int]]]:
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


# --------------------------------------------------------------------------- accelerator


_KVM_PROBE: dict[tuple[str, str], bool] = {}


def kvm_works(config: HelperConfig, log: Callable[[str], None]) -> bool:
    """Whether the helper kernel boots under KVM here; probed once per process.

    A KVM that merely opens is not enough (nested KVM can abort on ``-cpu host``
    or hang the kernel), so this boots the real helper kernel and initrd with
    ``snf_image_probe`` and waits up to PROBE_TIMEOUT seconds for its answer.
    """
    key = (config.qemu, str(Path(config.helper_dir).resolve()))
    if key in _KVM_PROBE:
        return _KVM_PROBE[key]
    ok = False
    reason = "/dev/kvm is not usable"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        probe_config = dataclasses.replace(config, debug=False)
        with _workdir(probe_config, None) as (_, channels, fds):
            cmd = build_qemu_command(
                probe_config, "kvm", [], None, channels, sandbox=qemu_supports_sandbox(config.qemu), probe=True
            )
            quiet: list[str] = []
            outcome = _boot(cmd, channels, fds, PROBE_TIMEOUT, 1.0, lambda _: None, quiet.append)
        first = outcome.result.split(b"\n", 1)[0].strip().decode("ascii", "replace")
        ok = outcome.returncode == 0 and not outcome.timed_out and first == PROBE_OK
        if outcome.timed_out:
            reason = f"the kernel did not reach /init in {PROBE_TIMEOUT:g} s"
        elif outcome.returncode != 0:
            tail = [line for line in quiet if line.startswith("QEMU: ")][-1:]
            reason = f"qemu exited with {outcome.returncode}" + (f" ({tail[0][6:]})" if tail else "")
        else:
            reason = "no answer from /init"
        log(f"KVM probe {'succeeded' if ok else 'failed: ' + reason} in {outcome.seconds:.1f} s")
    else:
        log(f"KVM probe failed: {reason}")
    _KVM_PROBE[key] = ok
    return ok


def choose_accel(config: HelperConfig, log: Callable[[str], None]) -> str:
    """kvm or tcg, from the setting (auto: probe KVM, fall back to TCG)."""
    if config.accel not in ACCELERATORS:
        raise HelperError(f"unknown accelerator {config.accel!r}; expected one of {', '.join(ACCELERATORS)}")
    if config.accel != "auto":
        return config.accel
    accel = "kvm" if kvm_works(config, log) else "tcg"
    if accel == "tcg":
        log("using TCG (software emulation) for the helper VM")
    return accel


# --------------------------------------------------------------------------- run


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def run_helper(
    config: HelperConfig,
    disks: list[JailDisk],
    rules: bytes,
    on_progress: Callable[[dict], None],
    log: Callable[[str], None],
) -> None:
    """Run the jail over ``disks`` with ``rules``; return only if it reported SUCCESS.

    ``on_progress`` gets each valid progress line as a complete ``image-helper``
    message (the host sets ``type`` and ``timestamp``). Raises HelperError with a
    one-line reason otherwise. No process or file is left behind either way.
    """
    helper_dir = Path(config.helper_dir)
    check_helper_dir(helper_dir)
    if not rules or len(rules) > constants.RULES_MAX_BYTES:
        raise HelperError(f"the rules must be 1 to {constants.RULES_MAX_BYTES} bytes, not {len(rules)}")
    if b"\0" in rules:
        raise HelperError("the rules contain a NUL byte")
    indexes = [d.index for d in disks]
    if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
        raise HelperError(f"disk indexes must be distinct and non-negative: {indexes}")
    for disk in disks:
        if not is_uri(disk.path_or_uri) and not os.path.exists(disk.path_or_uri):
            raise HelperError(f"disk {disk.index} does not exist: {disk.path_or_uri}")
    block = frozenset(d.path_or_uri for d in disks if not is_uri(d.path_or_uri) and _is_block_device(d.path_or_uri))

    accel = choose_accel(config, log)
    with _workdir(config, rules) as (rules_path, channels, fds):
        cmd = build_qemu_command(
            config, accel, disks, rules_path, channels, sandbox=qemu_supports_sandbox(config.qemu), block_devices=block
        )
        log(f"starting the helper VM ({accel}): {shlex.join(cmd)}")
        if channels.debug is not None:
            log(f"helper debug shell: socat -,raw,echo=0 UNIX-CONNECT:{channels.debug}")
        outcome = _boot(cmd, channels, fds, config.soft_timeout, config.hard_timeout, on_progress, log)
    log(f"helper VM ended after {outcome.seconds:.1f} s (exit code {outcome.returncode})")

    first = outcome.result.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    if outcome.violation:
        raise HelperError(f"Image customization failed: the helper VM broke the protocol: {outcome.violation}")
    if first.startswith(constants.RESULT_ERROR_PREFIX):
        message = sanitize(first[len(constants.RESULT_ERROR_PREFIX) :].strip()) or "(no message)"
        raise HelperError(f"Image customization failed: {message}")
    if outcome.timed_out:
        raise HelperError(
            f"Image customization failed: the helper VM did not finish on time ({config.soft_timeout:g} s)"
        )
    if outcome.returncode != 0:
        for line in outcome.console_tail:
            log(f"helper console (last lines): {line}")
        code = outcome.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise HelperError(f"Image customization failed: the helper VM died unexpectedly ({how})")
    if first != constants.RESULT_SUCCESS:
        raise HelperError("Image customization failed: the helper VM ended without a result")
    log("helper VM reported SUCCESS")
