#!/usr/bin/python3
"""Copy throughput and memory of snf-image's copy against dd and qemu-img, measured in one run.

Not a test: prints figures and ratios. Two images on the same disk:
  dense  -- 1 GiB of random data;
  sparse -- a 10 GiB disk image holding 1 GiB of data in 64 MiB chunks (the rest holes).
"snf-image +sha256" is the same copy verifying an img_checksum on the fly.
Each tool copies each image onto a fresh 12 GiB disk file; the page cache is dropped between
runs when the kernel allows it. Our copy runs in a child process so its peak RSS is its own.

  /usr/bin/python3 benchmarks/copy_throughput.py [--dir /var/tmp/snf-image-bench] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
MiB = 1 << 20

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


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall time and this child's own peak RSS in KiB (wait4 gives per-child usage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/snf-image-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the generated images for the next run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    images = make_images(args.dir)
    disk = args.dir / "disk.raw"
    tools = {
        "snf-image": lambda src: [sys.executable, "-c", OURS.format(repo=str(REPO)), str(src), str(disk)],
        "snf-image +sha256": lambda src: [
            sys.executable,
            "-c",
            OURS.format(repo=str(REPO)),
            str(src),
            str(disk),
            "sha256",
        ],
        "dd bs=4M": lambda src: ["dd", f"if={src}", f"of={disk}", "bs=4M", "conv=notrunc,fsync"],
        "qemu-img convert": lambda src: ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), str(disk)],
    }
    cold = drop_caches()
    print(f"page cache dropped between runs: {'yes' if cold else 'no (not allowed here)'}")
    print(f"{'image':28} {'tool':18} {'seconds':>8} {'MB/s':>8} {'written MiB':>12} {'vs snf-image':>13}")
    for label, src in images.items():
        size = src.stat().st_size
        ours = None
        for tool, argv in tools.items():
            fresh_disk(disk)
            drop_caches()
            seconds, rss = timed(argv(src))
            written = disk.stat().st_blocks * 512 / MiB
            ours = ours or seconds
            rate = size / seconds / 1e6
            print(f"{label:28} {tool:18} {seconds:8.2f} {rate:8.0f} {written:12.0f} {seconds / ours:12.2f}x")
            if tool == "snf-image":
                print(f"{'':28} {'':18} peak RSS of snf-image's copy: {rss / 1024:.1f} MiB")
    disk.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
