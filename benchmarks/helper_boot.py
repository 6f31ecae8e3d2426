"""Benchmark (not a test): where the helper VM's boot goes under TCG, and a whole deployment with the defaults.

1. Boot breakdown, ``--runs`` boots (medians), from the guest's own clock (its
   uptime, which starts with the kernel) and the host's arrival times: a probe
   runner (injected into a test copy of the code layer) notes the uptime of its
   first statement, imports the real runner and every task as the runner does,
   notes the time again and powers off. Phases: qemu start (process, firmware,
   kernel unpacking: host time to the kernel's clock zero), kernel (to /init),
   /init (root disk, code layer, switch_root), Python start, imports, power-off.
2. ``create`` with the default settings (HELPER_ACCEL=auto, all tasks, the OS
   detected, not declared) of tests/guests.py's xfs-gpt image (GPT, ext4 /boot,
   XFS root) onto a 4 GiB disk, from the progress and log timestamps: copy,
   helper boot to its first task (with /init's share), tasks, power-off, total.

    /usr/bin/python3 -m benchmarks.helper_boot [--runs N] [--kernel custom|debian] [--no-deploy]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snf_image import deploy, jail
from snf_image.ganeti import parse_environment
from snf_image.helperimage.kernel import DEFAULT_KERNEL, KERNEL_FLAVOURS
from snf_image.progress import Progress
from snf_image.settings import DEFAULTS, build_settings
from tests import guests
from tests.helpervm import ensure_helper, probe_helper_dir, probe_rules

GiB = 1 << 30
INIT_START = re.compile(r"HELPER: snf-image helper init: started at ([0-9.]+) s")
INIT_END = re.compile(r"HELPER: snf-image helper init: starting \S+ at ([0-9.]+) s")

BOOTCLOCK = """\
with open("/proc/uptime") as f:
    first = float(f.read().split()[0])
import serialprobe  # noqa: E402
import helper.runner  # noqa: E402,F401 - the runner's imports, then every task's, as a deployment does
from helper import framework  # noqa: E402

framework.discover()
imported = serialprobe.uptime()
serialprobe.console(f"bootclock: python {first:.3f} imports {imported:.3f}")
serialprobe.run(lambda ports: ports.succeed())
"""


class Clock:
    """Host arrival times (monotonic, from qemu's start) of the log lines that mark a phase."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.lines: list[tuple[float, str]] = []

    def log(self, line: str) -> None:
        self.lines.append((time.monotonic() - self.start, line))

    def find(self, pattern: re.Pattern) -> tuple[float, float] | None:
        """(host time, the guest uptime the line states) of the first line matching ``pattern``."""
        for at, line in self.lines:
            if found := pattern.search(line):
                return at, float(found.group(1))
        return None


def boot_once(config: jail.HelperConfig) -> dict[str, float]:
    clock = Clock()
    rules, token = probe_rules({"bootclock": True})
    jail.run_helper(config, [], rules, lambda _: None, clock.log, token=token)
    total = time.monotonic() - clock.start
    init_end = clock.find(INIT_END)
    python = clock.find(re.compile(r"bootclock: python ([0-9.]+)"))
    imports = clock.find(re.compile(r"bootclock: python [0-9.]+ imports ([0-9.]+)"))
    phases: dict[str, float] = {}
    if (init_start := clock.find(INIT_START)) is not None:  # (older /init: no start line)
        phases["qemu start to kernel"] = init_start[0] - init_start[1]
        phases["kernel to /init"] = init_start[1]
        phases["/init"] = init_end[1] - init_start[1]
    else:
        phases["qemu start to kernel"] = init_end[0] - init_end[1]
        phases["kernel and /init"] = init_end[1]
    phases["python start"] = python[1] - init_end[1]
    phases["imports (runner, tasks)"] = imports[1] - python[1]
    phases["power-off"] = total - imports[0]
    phases["total (qemu start to exit)"] = total
    phases["qemu start to runner ready"] = imports[0]
    return phases


def boot_breakdown(helper_dir: Path, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="snf-bench-") as tmp:
        runner = Path(tmp) / "bootclock.py"
        runner.write_text(BOOTCLOCK)
        probe_dir = probe_helper_dir(helper_dir, Path(tmp) / "helper", {"bootclock": runner})
        config = jail.HelperConfig(helper_dir=probe_dir, runner="bootclock", accel="tcg")
        results = [boot_once(config) for _ in range(runs)]
    print(f"boot breakdown under TCG, seconds (median of {runs}; each run)")
    for phase in results[0]:
        values = [r[phase] for r in results]
        each = " ".join(f"{v:5.2f}" for v in values)
        print(f"  {phase:28s} {statistics.median(values):5.2f}   [{each}]")


def deployment(helper_dir: Path, work: Path) -> None:
    """One create with the default settings; the phases from its messages' and log lines' times."""
    image = guests.guest_image("xfs-gpt")
    disk = work / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4 * GiB)
    raw = {**DEFAULTS, "HELPER_DIR": str(helper_dir), "IMAGE_DIR": str(image.path.parent)}
    settings = build_settings(raw, Path("/nonexistent"))
    env = {
        "OS_API_VERSION": "20",
        "INSTANCE_NAME": "bench.example.org",
        "HYPERVISOR": "kvm",
        "DISK_COUNT": "1",
        "DISK_0_PATH": str(disk),
        "NIC_COUNT": "0",
    }
    instance = parse_environment(env, "create").instance
    osparams = {"img_id": f"local://{image.path.name}", "img_format": "diskdump", "img_passwd": "bench"}
    events: list[tuple[float, str]] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append((time.monotonic(), record.getMessage()))

    handler = Recorder(logging.INFO)
    logger = logging.getLogger("snf_image")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    start = time.monotonic()
    try:
        with Progress(listener=lambda m: events.append((time.monotonic(), json.dumps(m)))) as progress:
            deploy.create(instance, osparams, settings, progress)
    finally:
        logger.removeHandler(handler)
    total = time.monotonic() - start

    def first(needle: str) -> float:
        return next(t for t, text in events if needle in text) - start

    vm_start = first("starting the helper VM")
    init_end = first("snf-image helper init: starting helper.runner")
    task = first('"subtype": "task-start"')
    last_task = max(t for t, text in events if '"subtype": "task-end"' in text) - start
    vm_end = first("helper VM ended after")
    print("create with the default settings: xfs-gpt image (1.5 GiB, GPT, ext4 /boot, XFS root) onto 4 GiB")
    for phase, seconds in (
        ("copy and preparations", vm_start),
        ("qemu start to runner (kernel, /init)", init_end - vm_start),
        ("runner to first task-start", task - init_end),
        ("qemu start to first task-start", task - vm_start),
        ("tasks", last_task - task),
        ("power-off", vm_end - last_task),
        ("end to end", total),
    ):
        print(f"  {phase:38s} {seconds:5.2f}")
    accel = [text for _, text in events if text.startswith(("KVM verdict", "KVM probe"))]
    print(f"  accelerator: {accel[0] if accel else 'n/a'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, choices=KERNEL_FLAVOURS, help="the helper's kernel")
    parser.add_argument("--no-deploy", action="store_true", help="only the boot breakdown")
    args = parser.parse_args(argv)
    helper_dir = ensure_helper(args.kernel)
    print(f"helper kernel: {args.kernel}")
    boot_breakdown(helper_dir, args.runs)
    if not args.no_deploy:
        with tempfile.TemporaryDirectory(prefix="snf-bench-", dir="/var/tmp") as tmp:
            deployment(helper_dir, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
