#!/usr/bin/python3
"""What the converter's sandbox costs: a qcow2 deployed by snf-image against a bare qemu-img convert.

Not a test: prints figures and ratios. Two qcow2 images made from raw ones:
  dense  -- 1 GiB of random data;
  sparse -- an 8 GiB disk holding 512 MiB of data in 64 MiB chunks (the rest unallocated).
"snf-image" is deploy.write_image: header check, hash (sha256 of the container), the sandbox
(bubblewrap, nbdserve, qemu-storage-daemon) and the NBD read-back into the sparse copy.
"qemu-img convert" is what snf-image ran before, as root and unconfined. Each writes onto a fresh
disk file; the page cache is dropped between runs when the kernel allows it.

  /usr/bin/python3 benchmarks/container_convert.py [--dir /var/tmp/snf-image-bench-convert] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.copy_throughput import drop_caches, timed

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
MiB = 1 << 20

OURS = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from snf_image import deploy
from snf_image.copy import HashingStream
from snf_image.formats.sandbox import SandboxConfig
from snf_image.progress import Progress
from snf_image.sources.local import LocalStream
from snf_image.targets import open_target
with LocalStream(Path(sys.argv[1])) as src, open_target(sys.argv[2]) as dst:
    stream = HashingStream(src, "sha256")
    converter = SandboxConfig("nobody", 1024, 1800)
    deploy.write_image(stream, dst, "diskdump", Progress(listener=lambda m: None), converter, stream.hexdigest)
    dst.flush()
"""


def make_images(workdir: Path) -> dict[str, tuple[Path, int]]:
    made = {}
    for name, size, chunks in (("dense", GiB, 16), ("sparse", 8 * GiB, 8)):
        raw, qcow2 = workdir / f"{name}.raw", workdir / f"{name}.qcow2"
        if not qcow2.exists():
            with open(raw, "wb") as f:
                f.truncate(size)
                for i in range(chunks):
                    f.seek(i * size // chunks)
                    f.write(os.urandom(64 * MiB))
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
            raw.unlink()
        made[f"{name} {size // GiB} GiB qcow2"] = (qcow2, size)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/snf-image-bench-convert"))
    parser.add_argument("--keep", action="store_true", help="keep the generated images for the next run")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    disk = args.dir / "disk.raw"
    tools = {
        "snf-image": lambda src: [sys.executable, "-c", OURS.format(repo=str(REPO)), str(src), str(disk)],
        "qemu-img convert": lambda src: ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", str(src), str(disk)],
    }
    print(f"page cache dropped between runs: {'yes' if drop_caches() else 'no (not allowed here)'}")
    print(f"{'image':24} {'tool':18} {'seconds':>8} {'virtual MB/s':>13} {'vs qemu-img':>12}")
    for label, (src, size) in make_images(args.dir).items():
        figures = {}
        for tool, argv in tools.items():
            disk.unlink(missing_ok=True)
            with open(disk, "wb") as f:
                f.truncate(size)
            drop_caches()
            figures[tool], _ = timed(argv(src))
        for tool, seconds in figures.items():
            ratio = seconds / figures["qemu-img convert"]
            print(f"{label:24} {tool:18} {seconds:8.2f} {size / seconds / 1e6:13.0f} {ratio:11.2f}x")
    disk.unlink(missing_ok=True)
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
