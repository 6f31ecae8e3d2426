"""The sandbox of image-supplied programs (CUSTOM_TASK, overwrite_task_*): they edit the guest, never the helper.

Such a program runs as root (it edits the guest's files, owners and modes),
but in namespaces of its own (mount, PID, IPC, UTS, network, cgroup) and in a
root built for it:

- the helper's read-only root filesystem, bound without any of its submounts;
  the helper's old root is detached after ``pivot_root``, so no chroot leads
  back to it;
- a fresh /proc of the new PID namespace (the runner is not in it) with the
  kernel's knobs read-only (/proc/sys, /proc/sysrq-trigger, ...) and the
  revealing files masked, a read-only sysfs, fresh /tmp and /run;
- a read-only /dev of its own with null, zero, full, random, urandom, tty,
  pts, shm and the instance disks and their partitions: never the helper's
  root disk, the rules disk or a serial port;
- the guest's mounts at the path the runner sees them (``$SNF_IMAGE_TARGET``),
  made nodev and nosuid: a device node shipped inside the image opens nothing.

Capabilities: the bounding set keeps only what editing the guest needs
(:data:`KEPT_CAPABILITIES`), with no_new_privs. ``sys_chroot`` stays because
overwrite scripts, as the original's, run ``chroot "$SNF_IMAGE_TARGET" cmd``;
a chroot cannot lead out of a root whose old root is detached, by a process
that cannot mount or pivot. Gone with the rest: sys_admin (mount, namespaces),
mknod, sys_rawio, sys_boot, sys_module, sys_ptrace, sys_time, net_admin,
syslog, sys_resource, dac_read_search (open_by_handle_at), linux_immutable.
User namespaces are switched off in the helper (the custom kernel has none),
so no capability comes back inside one.

Limits: a cgroup v2 with ``pids.max`` and ``memory.max`` (the whole group is
killed when it runs out of memory), and a time limit (the
``IMAGE_PROGRAM_TIMEOUT`` property, default :data:`DEFAULT_TIMEOUT` s) after
which the whole cgroup, hence the PID namespace, is killed. Output (stdout
and stderr together) is read as it comes and only its last
:data:`OUTPUT_TAIL` bytes are kept, for the console and the error line.

How: the runner (:func:`run`) prepares the helper once, makes the cgroup and
starts ``unshare ... python3 -m helper.confine`` with a :class:`Plan` as JSON
on its stdin. That stage (:mod:`helper.confine`) is PID 1 of the new
namespaces, with all capabilities: it joins the cgroup, builds the root,
pivots into it, says ``ready`` on a status pipe and runs the program through
``setpriv`` (capabilities, no_new_privs), reaping orphans until the program
exits, then reports its wait status. A kernel without what the sandbox needs
(snf_image/helperimage/kernel.config enables it) means the program does not
run (:class:`SandboxError`): it never runs unconfined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import selectors
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from snf_image.contract.constants import CMDLINE_ACTIVATE
from snf_image.contract.errors import SnfImageError

from .commands import CommandError, run_command
from .disks import SYS_BLOCK
from .properties import Properties

log = logging.getLogger(__name__)

TIMEOUT_PROPERTY = "IMAGE_PROGRAM_TIMEOUT"
DEFAULT_TIMEOUT = 300
MAX_TIMEOUT = 24 * 3600
#: Processes (and threads) the program may have at once: enough for package tools, not for a fork bomb.
PIDS_MAX = 256
#: memory.max is the helper's memory divided by this: the runner keeps the rest.
MEMORY_SHARE = 2
#: Bytes of output kept (the end): what the console shows and the error line comes from.
OUTPUT_TAIL = 16 * 1024
KEPT_CAPABILITIES = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setfcap", "sys_chroot")
#: Kernel settings of the helper made once before any image program runs.
SYSCTLS = {"user/max_user_namespaces": "0", "kernel/dmesg_restrict": "1"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "memory")
SETPRIV = "/usr/bin/setpriv"
#: The stage's status lines: READY once the sandbox stands, then EXITED and the program's wait status;
#: or BROKEN and why the sandbox could not be built.
READY = "ready"
EXITED = "exit"
BROKEN = "error"
STATUS_MAX = 4096


class SandboxError(SnfImageError):
    """The sandbox cannot be made here, so the image's program does not run."""


@dataclasses.dataclass(frozen=True)
class Program:
    """An image-supplied program and what it may see.

    target: the guest's root, bound read-write (nodev, nosuid) at the same path.
    disks: the instance disks; they and their partitions appear in its /dev.
    readonly: more paths of the runner it may read (the custom task's file).
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    target: Path
    disks: tuple[Path, ...]
    readonly: tuple[Path, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the stage needs, built by the runner and sent to it as JSON (no secret in it)."""

    argv: list[str]
    env: dict[str, str]
    target: str
    devices: list[tuple[str, int, int]]
    readonly: list[str]
    cgroup: str
    status_fd: int

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        obj = json.loads(data)
        obj["devices"] = [tuple(d) for d in obj["devices"]]
        return cls(**obj)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a sandboxed program ended.

    returncode: its exit code, negative for a signal, None when it was
        killed with its sandbox (time or memory limit) before it ended.
    output: the last OUTPUT_TAIL bytes of its output; output_bytes: all of it.
    """

    returncode: int | None
    output: str
    output_bytes: int
    seconds: float
    timed_out: bool = False
    out_of_memory: bool = False
    memory_mib: int = 0

    @property
    def last_line(self) -> str:
        return last_line(self.output)

    def failure(self, what: str, allowed: Sequence[int] = (0,)) -> str | None:
        """The one-line reason ``what`` failed (None if it ended with an ``allowed`` exit code)."""
        if self.timed_out:
            return f"{what} did not finish in {self.seconds:g} s ({TIMEOUT_PROPERTY}) and was stopped"
        if self.out_of_memory:
            return f"{what} was killed: it went over its memory limit of {self.memory_mib} MiB"
        code = self.returncode
        if code is None:
            return f"{what} ended abnormally: its sandbox went away before it did"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            return f"{what} was killed by signal {name}"
        if code in allowed:
            return None
        return f"{what} failed with exit code {code}" + (f": {self.last_line}" if self.last_line else "")


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, cut to fit an error message."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


class OutputTail:
    """The end of a stream of unknown length, in bounded memory."""

    def __init__(self, limit: int = OUTPUT_TAIL) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data[-self.limit :]
        del self._buf[: max(0, len(self._buf) - self.limit)]

    def text(self) -> str:
        return self._buf.decode("utf-8", "replace")

    @property
    def cut(self) -> bool:
        """Whether the start of the stream was dropped."""
        return self.total > len(self._buf)


def time_limit(properties: Properties) -> int:
    """Seconds an image program may run: the IMAGE_PROGRAM_TIMEOUT property or the default."""
    value = properties.value(TIMEOUT_PROPERTY)
    if not value:
        return DEFAULT_TIMEOUT
    if not value.isdigit() or not 1 <= int(value) <= MAX_TIMEOUT:
        raise SandboxError(f"Invalid {TIMEOUT_PROPERTY}: {value[:40]!r} (seconds, 1 to {MAX_TIMEOUT})")
    return int(value)


def confined_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` under setpriv: only KEPT_CAPABILITIES in the bounding set, none inheritable, no_new_privs."""
    bounding = ",".join(["-all", *(f"+{cap}" for cap in KEPT_CAPABILITIES)])
    return [SETPRIV, "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs", "--", *argv]


def unshare_argv(python: str = sys.executable) -> list[str]:
    """The stage in new namespaces; --kill-child: the stage dies with unshare, and the namespace with it."""
    namespaces = ["--mount", "--pid", "--ipc", "--uts", "--net", "--cgroup"]
    return ["unshare", *namespaces, "--fork", "--kill-child", "--", python, "-m", "helper.confine"]


def device_nodes(disks: Sequence[Path], sys_block: Path = SYS_BLOCK) -> list[tuple[str, int, int]]:
    """(path, major, minor) of each disk, at the path the program is told, and of its partitions."""
    nodes = []
    for disk in disks:
        name = Path(disk).name
        nodes.append((str(disk), *_sysfs_numbers(sys_block / name)))
        for entry in sorted((sys_block / name).glob(f"{name}*")):
            if (entry / "partition").exists():
                nodes.append((f"/dev/{entry.name}", *_sysfs_numbers(entry)))
    return nodes


def _sysfs_numbers(entry: Path) -> tuple[int, int]:
    try:
        major, minor = entry.joinpath("dev").read_text().split(":")
        return int(major), int(minor)
    except (OSError, ValueError) as exc:
        raise SandboxError(f"cannot give the sandbox the disk {entry.name}: no device numbers in sysfs") from exc


# --- the runner's side ----------------------------------------------------------


_prepared = False


def prepare_helper() -> None:
    """Once per helper VM: cgroup v2 with the pids and memory controllers, no user namespaces.

    Refuses outside the helper VM: it changes kernel settings and mounts.
    """
    global _prepared
    if _prepared:
        return
    try:
        in_helper = CMDLINE_ACTIVATE in Path("/proc/cmdline").read_text().split()
    except OSError:
        in_helper = False
    if not in_helper:
        raise SandboxError("image programs run only inside the helper VM")
    try:
        if not (CGROUP_ROOT / "cgroup.controllers").exists():
            run_command(["mount", "-t", "cgroup2", "-o", "nosuid,nodev,noexec", "cgroup2", CGROUP_ROOT])
        available = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise SandboxError(f"the helper kernel has no cgroup v2 {' and '.join(missing)} controller")
        (CGROUP_ROOT / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        for name, value in SYSCTLS.items():
            path = Path("/proc/sys") / name
            if path.exists():  # no user namespaces in the kernel: nothing to switch off
                path.write_text(value)
    except (OSError, CommandError) as exc:
        raise SandboxError(f"cannot prepare the sandbox of image programs: {exc}") from exc
    _prepared = True


def _memory_limit() -> int:
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return total_kib * 1024 // MEMORY_SHARE


def _make_cgroup() -> tuple[Path, int]:
    """A cgroup of its own: at most PIDS_MAX processes, a share of the memory, killed whole on OOM."""
    cgroup = CGROUP_ROOT / f"snf-image-program-{secrets.token_hex(4)}"
    memory = _memory_limit()
    try:
        cgroup.mkdir()
        (cgroup / "pids.max").write_text(str(PIDS_MAX))
        (cgroup / "memory.max").write_text(str(memory))
        (cgroup / "memory.oom.group").write_text("1")
    except OSError as exc:
        with contextlib.suppress(OSError):
            cgroup.rmdir()
        raise SandboxError(f"cannot make the cgroup of an image program: {exc}") from exc
    return cgroup, memory


def _remove_cgroup(cgroup: Path) -> bool:
    """Kill whatever is left in the cgroup and remove it; whether it ran out of memory."""
    events = dict(line.split() for line in (cgroup / "memory.events").read_text().splitlines())
    oom = int(events.get("oom_kill", "0")) > 0
    (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 10
    while "populated 1" in (cgroup / "cgroup.events").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        cgroup.rmdir()
    except OSError as exc:
        log.warning("cannot remove the cgroup %s: %s", cgroup, exc.strerror)
    return oom


def _stage_env() -> dict[str, str]:
    """The stage's own environment: enough to start Python with our code; the program gets the plan's."""
    keep = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "LANG")
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **{k: os.environ[k] for k in keep if k in os.environ}}


def run(program: Program, seconds: float) -> Outcome:
    """Run ``program`` in its sandbox for at most ``seconds``; SandboxError if no sandbox can be made.

    Its output is logged (the kept tail) to the console; its failure is for the caller to judge.
    """
    prepare_helper()
    log.info("+ %s (sandboxed, at most %g s)", shlex.join(program.argv), seconds)
    deadline = time.monotonic() + seconds
    cgroup, memory = _make_cgroup()
    try:
        devices = device_nodes(program.disks)
        status_r, status_w = os.pipe()
        try:
            plan = Plan(
                argv=confined_argv(program.argv),
                env=dict(program.env),
                target=str(program.target),
                devices=devices,
                readonly=[str(p) for p in program.readonly],
                cgroup=str(cgroup),
                status_fd=status_w,
            )
            tail, timed_out = _supervise(plan, cgroup, deadline)
            status = _read_all(status_r)
        finally:
            os.close(status_r)
    finally:
        oom = _remove_cgroup(cgroup)
    _log_output(tail)
    lines = status.decode("utf-8", "replace").splitlines()
    if not lines or lines[0] != READY:
        # the stage said why, or unshare did on the output
        reason = lines[0].removeprefix(f"{BROKEN}: ") if lines else last_line(tail.text())
        raise SandboxError(f"cannot run the image's program in its sandbox: {reason[:300] or 'no reason given'}")
    exited = next((int(line.split()[1]) for line in lines[1:] if line.startswith(f"{EXITED} ")), None)
    return Outcome(
        returncode=None if exited is None else os.waitstatus_to_exitcode(exited),
        output=tail.text(),
        output_bytes=tail.total,
        seconds=seconds,
        timed_out=timed_out,
        out_of_memory=oom and not timed_out,
        memory_mib=memory >> 20,
    )


def _supervise(plan: Plan, cgroup: Path, deadline: float) -> tuple[OutputTail, bool]:
    """Start the stage, hand it the plan, keep the output's tail until it ends or the deadline passes.

    The stage alone keeps the write end of the status pipe (plan.status_fd, closed here).
    """
    tail = OutputTail()
    try:
        proc = subprocess.Popen(
            unshare_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(plan.status_fd,),
            env=_stage_env(),
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start unshare: {exc.strerror}") from exc
    finally:
        os.close(plan.status_fd)
    timed_out = False
    with proc, selectors.DefaultSelector() as sel:
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(plan.to_json())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        out = proc.stdout.fileno()
        os.set_blocking(out, False)
        sel.register(out, selectors.EVENT_READ)
        ended = False
        while not timed_out and not ended:
            left = deadline - time.monotonic()
            timed_out = left <= 0
            if not timed_out and sel.select(min(left, 1.0)):
                data = os.read(out, 65536)
                tail.feed(data)
                # end of output: the stage, PID 1, is gone, so is its namespace; unshare follows
                ended = not data and _wait(proc, deadline)
        if timed_out:
            (cgroup / "cgroup.kill").write_text("1")
            proc.kill()
        proc.wait()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(out, 65536):
                tail.feed(data)
    return tail, timed_out


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether ``proc`` ended before ``deadline``."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _read_all(fd: int) -> bytes:
    """The status lines (the stage has ended: the pipe's writers are gone)."""
    data = b""
    while len(data) < STATUS_MAX and (chunk := os.read(fd, STATUS_MAX)):
        data += chunk
    return data


def _log_output(tail: OutputTail) -> None:
    if tail.cut:
        log.info("  (%d bytes of output; the last %d follow)", tail.total, tail.limit)
    for line in tail.text().splitlines():
        log.info("  %s", line[:1000])
