"""Nothing left behind: one checker for every test that runs a deployment (kills, hostile inputs).

A deployment may leave nothing of its own: no process (qemu, its supervisor, qemu-img, qemu-nbd,
a converter, the progress monitor), no loop or nbd device, no mount, no temporary file. The
checker looks only at what the test made, so that test runs of other checkouts on the same
machine do not disturb it:

* processes: this test process becomes a *child subreaper*, so whatever a deployment leaves
  running -- even after the deployment itself was SIGKILLed -- is re-parented to it and found
  among its descendants; and any process at all whose command line names the test's directory;
* loop devices backed by a file under the test's directory, nbd devices served by a process of
  the test, mounts of or under that directory;
* entries in the deployment's private TMPDIR (give it one, e.g. ``osenv``'s ``tmpdir``).

Usage::

    watch = Watch(marker=tmp_path, tmpdir=tmp_path / "tmp")   # before starting the deployment
    ...
    seconds, left = watch.wait_clean(10)                       # after it ended (or was killed)
    assert not left, left
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of our children's children are re-parented to this process, not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _parent_and_state(pid: int) -> tuple[int, str]:
    stat = _read(f"/proc/{pid}/stat").decode("ascii", "replace")
    fields = stat[stat.rfind(")") + 2 :].split()  # the name in parentheses may hold spaces
    return (int(fields[1]), fields[0]) if len(fields) > 1 else (0, "?")


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int | None = None) -> dict[int, str]:
    """Live processes below ``root`` (default: this process) -> their state letter (Z: zombie)."""
    root = os.getpid() if root is None else root
    parents = {pid: _parent_and_state(pid) for pid in pids()}
    found: dict[int, str] = {}
    for pid, (parent, state) in parents.items():
        chain, seen = parent, 0
        while chain not in (0, 1) and seen < 64:
            if chain == root:
                found[pid] = state
                break
            chain, seen = parents.get(chain, (0, "?"))[0], seen + 1
    return found


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode("utf-8", "replace").strip()


def environ(pid: int) -> str:
    return _read(f"/proc/{pid}/environ").replace(b"\0", b"\n").decode("utf-8", "replace")


@dataclass
class Leftovers:
    """What a deployment left behind; empty (falsy) when it left nothing."""

    processes: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    temp_entries: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.devices or self.mounts or self.temp_entries)


class Watch:
    """Takes a snapshot when made; :meth:`leftovers` is what appeared since, of the test's own."""

    def __init__(self, marker: Path, tmpdir: Path | None = None) -> None:
        become_subreaper()
        self.marker = str(marker)
        self.tmpdir = tmpdir
        self.before = set(pids())
        self.devices_before = set(self._devices())

    def _processes(self) -> list[str]:
        mine = descendants()
        self._reap_orphans(mine)
        found = []
        for pid in pids():
            if pid in self.before or pid == os.getpid():
                continue
            line = cmdline(pid)
            state = mine.get(pid)
            if state == "Z":
                continue  # a zombie is gone; it waits for its parent only (a test's own Popen)
            if state is not None or self.marker in line:
                found.append(f"{pid}: {line[:300]}")
        return found

    @staticmethod
    def _reap_orphans(mine: dict[int, str]) -> None:
        """Orphans re-parented to us that died: reap them, or they stay zombies of the test process."""
        for pid, state in mine.items():
            if state == "Z" and _parent_and_state(pid)[0] == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def _devices(self) -> list[str]:
        found = []
        for entry in Path("/sys/block").glob("loop*"):
            backing = _read(str(entry / "loop" / "backing_file")).decode("utf-8", "replace").strip()
            if backing and backing.startswith(self.marker):
                found.append(f"/dev/{entry.name} -> {backing}")
        for entry in Path("/sys/block").glob("nbd*"):
            server = _read(str(entry / "pid")).strip()
            if server:
                found.append(f"/dev/{entry.name} served by {server.decode()}: {cmdline(int(server))[:200]}")
        return found

    def _mounts(self) -> list[str]:
        found = []
        for line in _read("/proc/self/mountinfo").decode("utf-8", "replace").splitlines():
            fields = line.split()
            source = fields[fields.index("-") + 2] if "-" in fields else ""
            if self.marker in fields[4] or self.marker in source:
                found.append(f"{source} on {fields[4]}")
        return found

    def leftovers(self) -> Leftovers:
        temp = sorted(str(p) for p in self.tmpdir.iterdir()) if self.tmpdir and self.tmpdir.exists() else []
        devices = [d for d in self._devices() if d not in self.devices_before]
        return Leftovers(self._processes(), devices, self._mounts(), temp)

    def wait_clean(self, timeout: float) -> tuple[float, Leftovers]:
        """Poll until nothing is left or ``timeout`` seconds passed; (seconds it took, what is left)."""
        start = time.monotonic()
        while True:
            left = self.leftovers()
            elapsed = time.monotonic() - start
            if not left or elapsed >= timeout:
                return elapsed, left
            time.sleep(0.1)


class ChildSampler:
    """Samples, while a deployment runs, the command line and environment of every process below us.

    What a secret must never reach: ``seen`` maps each process (pid and command line) to its
    environment, as read from /proc while it lived.
    """

    def __init__(self, interval: float = 0.05, exclude: tuple[int, ...] = (), exclude_cmdline: str = "") -> None:
        """``exclude``: pids not to sample (the deployment itself, whose environment is the input);
        ``exclude_cmdline``: its command line (e.g. ``/usr/bin/python3 ./create``), which its children
        carry from fork to exec, with its environment."""
        self.interval = interval
        self.exclude = set(exclude)
        self.exclude_cmdline = exclude_cmdline
        self.seen: dict[tuple[int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="child-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, state in descendants().items():
                if pid in self.exclude or state == "Z":
                    continue
                line = cmdline(pid)
                if line and line != self.exclude_cmdline:
                    self.seen.setdefault((pid, line), environ(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> ChildSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
