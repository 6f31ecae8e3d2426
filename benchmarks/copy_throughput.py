#!/usr/bin/python3
"""Copy throughput, CPU time and memory of snf-image's copy against dd and qemu-img.

Not a test: prints figures and ratios. Two images on the same disk:
  dense  -- 1 GiB of random data;
  sparse -- a 10 GiB disk image holding 1 GiB of data in 64 MiB chunks (the rest holes).
"snf-image +sha256" is the same copy verifying an img_checksum on the fly.
Each tool copies each image onto a fresh 12 GiB disk file, with the page cache dropped
before each run; the tools take turns, ``--runs`` rounds, and the medians are printed
(this machine is shared: a single run says little). Every tool but qemu-img's default
makes the copy durable before it exits: ours and dd flush (fsync), qemu-img -t writeback
flushes when it closes the disk; qemu-img's default (cache=unsafe) never flushes, its
output is still in the page cache when it exits. Each copy runs in a child process, so
its peak RSS and CPU time are its own. ``--repo`` measures another checkout's copy;
``--compare`` adds one (as "before") to the same rounds.

  /usr/bin/python3 benchmarks/copy_throughput.py [--runs 5] [--repo DIR] [--compare /tmp/baseline] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
MiB = 1 << 20
#: GNU time (Debian package "time"): the peak RSS of the tool it runs, measured from a small parent.
GNU_TIME = "/usr/bin/time"

OURS = """
import sys
sys.path.insert(0, {repo!r})
from snf_image.copy import HashingStream, copy_stream
from snf_image.sources.local import LocalStream
from snf_image.targets import open_target
with LocalStream(__import__('pathlib').Path(sys.argv[1])) as src, open_target(sys.argv[2]) as dst:
    stream = HashingStream(src, sys.argv[3]) if len(sys.argv) > 3 else src
    copy_stream(stream, dst, total=src.size)
    dst.flush()
"""


@dataclass
class Run:
    seconds: float
    cpu: float
    rss_mib: float
    written_mib: float


def make_images(workdir: Path) -> dict[str, Path]:
    dense, sparse = workdir / "dense.raw", workdir / "sparse.raw"
    if not dense.exists():
        with open(dense, "wb") as f:
            for _ in range(GiB // (64 * MiB)):
                f.write(os.urandom(64 * MiB))
    if not sparse.exists():
        with open(sparse, "wb") as f:
            f.truncate(10 * GiB)
            for i in range(16):
                f.seek(i * 10 * GiB // 16)
                f.write(os.urandom(64 * MiB))
    return {"dense 1 GiB": dense, "sparse 10 GiB / 1 GiB data": sparse}


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def fresh_disk(path: Path) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(12 * GiB)


def timed(argv: list[str], disk: Path) -> Run:
    """Wall time, CPU time and peak RSS of this child alone.

    The child starts under GNU time, whose own small process forks the tool: a peak RSS read
    by wait4 in this (large) Python process would start at this process's own, which a
    forked child inherits as its high-water mark and keeps across exec.
    """
    fresh_disk(disk)
    drop_caches()
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [GNU_TIME, "-f", "%M", "-o", rss.name, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        peak_kib = int(rss.read().split()[-1])
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {code}")
    written = disk.stat().st_blocks * 512 / MiB
    return Run(elapsed, usage.ru_utime + usage.ru_stime, peak_kib / 1024, written)


def tools(repo: Path, disk: Path, compare: Path | None) -> dict[str, object]:
    ours = [sys.executable, "-c", OURS.format(repo=str(repo))]
    theirs = [sys.executable, "-c", OURS.format(repo=str(compare))] if compare else []
    before = {
        "before": lambda src: [*theirs, str(src), str(disk)],
        "before +sha256": lambda src: [*theirs, str(src), str(disk), "sha256"],
    }
    return {
        "snf-image": lambda src: [*ours, str(src), str(disk)],
        "snf-image +sha256": lambda src: [*ours, str(src), str(disk), "sha256"],
        **(before if compare else {}),
        "dd bs=4M fsync": lambda src: ["dd", f"if={src}", f"of={disk}", "bs=4M", "conv=notrunc,fsync", "status=none"],
        "qemu-img -t wb": lambda src: [
            *("qemu-img", "convert", "-t", "writeback", "-n", "-f", "raw", "-O", "raw"),
            *(str(src), str(disk)),
        ],
        "qemu-img (unsafe)": lambda src: ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), str(disk)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/snf-image-bench"))
    parser.add_argument("--runs", type=int, default=5, help="rounds; the medians are printed")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose copy is measured")
    parser.add_argument("--compare", type=Path, help="another checkout, measured in the same rounds as 'before'")
    parser.add_argument("--keep", action="store_true", help="keep the generated images for the next run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    images = make_images(args.dir)
    disk = args.dir / "disk.raw"
    commands = tools(args.repo.resolve(), disk, args.compare.resolve() if args.compare else None)
    cold = drop_caches()
    print(f"snf-image from {args.repo.resolve()}; {args.runs} rounds, medians; load average {os.getloadavg()[0]:.1f}")
    if args.compare:
        print(f"'before' is the copy of {args.compare.resolve()}")
    print(f"page cache dropped before each run: {'yes' if cold else 'no (not allowed here)'}")
    header = f"{'image':28} {'tool':18} {'seconds':>8} {'MB/s':>6} {'CPU s':>6} {'RSS MiB':>8} {'written MiB':>12}"
    print(f"{header} {'vs snf-image':>13}")
    for label, src in images.items():
        runs: dict[str, list[Run]] = {tool: [] for tool in commands}
        for _ in range(args.runs):
            for tool, argv in commands.items():
                runs[tool].append(timed(argv(src), disk))
        ours = statistics.median(r.seconds for r in runs["snf-image"])
        for tool, results in runs.items():
            seconds = statistics.median(r.seconds for r in results)
            cpu = statistics.median(r.cpu for r in results)
            rss = max(r.rss_mib for r in results)
            written = results[-1].written_mib
            rate = src.stat().st_size / seconds / 1e6
            print(
                f"{label:28} {tool:18} {seconds:8.2f} {rate:6.0f} {cpu:6.2f} {rss:8.1f} {written:12.0f}"
                f" {seconds / ours:12.2f}x"
            )
    disk.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(args.dir)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
