"""Benchmark (not a test): how long the helper VM takes from qemu start to its runner, under TCG.

Boots the real helper (built into the test cache if needed) with a tiny runner
that reads /proc/uptime as its first statement, reports SUCCESS and powers off.
Prints, per boot: wall time to the runner's first line, guest uptime at that
point, and wall time until qemu exited.

    /usr/bin/python3 -m benchmarks.helper_boot [--runs N] [--accel tcg|kvm|auto] [--kernel debian|custom]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snf_image import jail
from tests.helpervm import ensure_helper, probe_helper_dir

RUNNER = """\
import ctypes, os
with open("/proc/uptime") as f:
    uptime = f.read().split()[0]
print(f"bootclock: runner started at uptime {uptime}", flush=True)
with open("/dev/ttyS1", "w") as r:
    r.write("SUCCESS\\n")
os.sync()
ctypes.CDLL(None).reboot(0x4321FEDC)
"""


def main(argv: list[str] | None = None) -> int:
    """Boot the helper ``--runs`` times and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accel", default="tcg", choices=jail.ACCELERATORS)
    parser.add_argument("--kernel", default="debian", choices=("debian", "custom"), help="the helper's kernel")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="snf-bench-") as tmp:
        runner = Path(tmp) / "bootclock.py"
        runner.write_text(RUNNER)
        helper_dir = probe_helper_dir(ensure_helper(args.kernel), Path(tmp) / "helper", {"bootclock": runner})
        config = jail.HelperConfig(helper_dir=helper_dir, runner="bootclock", accel=args.accel)
        to_runner, uptimes, totals = [], [], []
        for i in range(args.runs):
            start = time.monotonic()
            seen: dict[str, float] = {}

            def log(line: str, start: float = start, seen: dict = seen) -> None:
                if "bootclock: runner started at uptime" in line:
                    seen["wall"] = time.monotonic() - start
                    seen["uptime"] = float(line.rsplit(" ", 1)[1])

            jail.run_helper(config, [], b'{"bench": true}', lambda _: None, log)
            total = time.monotonic() - start
            to_runner.append(seen["wall"])
            uptimes.append(seen["uptime"])
            totals.append(total)
            print(
                f"run {i + 1}: runner after {seen['wall']:.2f} s wall (guest uptime {seen['uptime']:.2f} s),"
                f" qemu gone after {total:.2f} s"
            )
        print(
            f"median ({args.accel}): runner after {statistics.median(to_runner):.2f} s,"
            f" uptime {statistics.median(uptimes):.2f} s, total {statistics.median(totals):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
