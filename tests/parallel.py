"""Several real entry-script deployments started together, and a watch on the helper VMs they run.

Used by tests/integration/test_parallel_deployments.py (correctness: HELPER_MAX_RUNNING, one
fetch, every disk right) and benchmarks/deploy.py (the four-at-once figures).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.osenv import OsDefinition

#: Seconds between two looks at /proc.
SAMPLE_INTERVAL = 0.1


@dataclass
class HelperVm:
    """One qemu process seen by the watch: its -m and the most memory it was seen using."""

    memory_arg: str
    peak_rss_kib: int = 0


@dataclass
class QemuWatch:
    """Samples /proc for qemu processes whose command line names ``marker`` (e.g. their helper dir)."""

    marker: str
    vms: dict[int, HelperVm] = field(default_factory=dict)
    most_at_once: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> QemuWatch:
        self._thread = threading.Thread(target=self._run, name="qemu-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            running = 0
            for pid, argv in _processes():
                if not (argv and Path(argv[0]).name.startswith("qemu-system") and self.marker in " ".join(argv)):
                    continue
                running += 1
                memory = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
                vm = self.vms.setdefault(pid, HelperVm(memory))
                vm.peak_rss_kib = max(vm.peak_rss_kib, _rss_kib(pid))
            self.most_at_once = max(self.most_at_once, running)


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            found.append((int(entry), raw.decode("utf-8", "replace").split("\0")[:-1]))
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Finished:
    """One deployment's exit code, wall time (from the common start) and log (stderr)."""

    returncode: int
    seconds: float
    log: str


def run_together(
    osdef: OsDefinition, script: str, envs: list[dict[str, str]], logs: Path, timeout: float = 900.0
) -> list[Finished]:
    """Start ``script`` once per environment, all at once; wait for every one (killed after ``timeout``).

    Each log goes to a file under ``logs`` (a pipe nobody reads would stall a deployment).
    """
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs, ends = [], {}
    for index, env in enumerate(envs):
        with open(logs / f"{index}.log", "wb") as log:
            procs.append(osdef.start(script, env, stdin=subprocess.DEVNULL, stdout=log, stderr=log))

    def reap(index: int, proc: subprocess.Popen) -> None:
        try:
            proc.wait(max(timeout - (time.monotonic() - started), 0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ends[index] = time.monotonic() - started

    reapers = [threading.Thread(target=reap, args=item) for item in enumerate(procs)]
    for reaper in reapers:
        reaper.start()
    for reaper in reapers:
        reaper.join()
    return [
        Finished(proc.returncode, ends[index], (logs / f"{index}.log").read_text("utf-8", "replace"))
        for index, proc in enumerate(procs)
    ]
