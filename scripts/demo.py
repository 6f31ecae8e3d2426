"""Deploy the sample Debian image onto a disk file and show the result.

Builds (or takes from the cache shared with the tests) the helper VM image
and a small Debian bookworm image made with debootstrap, deploys the image
with ``snf-image deploy`` -- hostname, password, a static NIC, a swap
partition, an injected file -- onto a 3 GiB disk file, and prints the
partition table and the files the tasks changed. The files are read back
with debugfs, a userspace ext4 reader: this is the demo looking at its own
output, not something the product does (the product reads guest
filesystems only inside the helper VM).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from snf_image.helperimage.kernel import DEFAULT_KERNEL, cached_kernel  # noqa: E402
from tests import guests, helpervm  # noqa: E402 - the sample image and helper share the tests' cache

HOSTNAME = "demo.snf-image.test"
PASSWORD = "demo-password"
NIC = "mac=aa:00:00:12:34:56,ip=192.0.2.10,subnet=192.0.2.0/24,gateway=192.0.2.1"


def guest_file(disk: Path, offset: int, path: str) -> str:
    result = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"], capture_output=True, text=True, check=True
    )
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/snf-image-demo"))
    args = parser.parse_args()
    work = args.workdir
    (work / "etc").mkdir(parents=True, exist_ok=True)
    (work / "images").mkdir(exist_ok=True)

    # The helper's own kernel (the default) alone takes about five minutes to build from an empty
    # cache on two idle cores -- the demo's whole budget -- so until one is cached (snf-image helper
    # build, or the test suite, builds it) the demo boots Debian's kernel, the fallback.
    kernel = DEFAULT_KERNEL if cached_kernel(helpervm.CACHE / "helper-build") else "debian"
    print(f"== helper VM image (built once, cached), {kernel} kernel")
    if kernel != DEFAULT_KERNEL:
        print("   (the helper's own kernel, the default, is not built yet: snf-image helper build makes it)")
    helper_dir = helpervm.ensure_helper(kernel)
    print("== sample image: Debian bookworm made with debootstrap (built once, cached)")
    sample = guests.sample_image()
    # A hard link (or a sparse copy across filesystems): the local source refuses symlinks out of IMAGE_DIR.
    link = work / "images" / "debian-bookworm.img"
    link.unlink(missing_ok=True)
    try:
        os.link(sample.path, link)
    except OSError:
        subprocess.run(["cp", "--sparse=always", str(sample.path), str(link)], check=True)
    (work / "etc" / "snf-image.conf").write_text(f"IMAGE_DIR={work / 'images'}\nHELPER_DIR={helper_dir}\n")
    (work / "personality.json").write_text(
        json.dumps(
            [
                {
                    "path": "/etc/motd",
                    "contents": base64.b64encode(b"Deployed by snf-image\n").decode(),
                    "owner": "root",
                    "group": "root",
                    "mode": 0o644,
                }
            ]
        )
    )
    disk = work / "disk.raw"
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate(3 << 30)

    print(f"== snf-image deploy onto {disk} (3 GiB)")
    started = time.monotonic()
    deploy = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "snf_image",
            "--config-dir",
            str(work / "etc"),
            "deploy",
            "--disk",
            str(disk),
            "--image",
            "local://debian-bookworm.img",
            "--format",
            "diskdump",
            "--hostname",
            HOSTNAME,
            "--password-file",
            "-",  # standard input: a password never goes on a command line
            "--nic",
            NIC,
            "--properties",
            '{"SWAP": "2:256"}',
            "--personality",
            str(work / "personality.json"),
        ],
        cwd=REPO,
        input=PASSWORD + "\n",
        text=True,
    )
    if deploy.returncode != 0:
        return deploy.returncode
    print(f"== deployed in {time.monotonic() - started:.1f} s; the disk now:")
    subprocess.run(["sfdisk", "--list", str(disk)], check=True)
    offset = sample.meta["partitions"][sample.meta["root_partition"] - 1]["start"]
    for path in ("/etc/hostname", "/etc/hosts", "/etc/motd", "/etc/network/interfaces", "/etc/fstab"):
        print(f"-- {path}")
        print(guest_file(disk, offset, path).rstrip())
    shadow = guest_file(disk, offset, "/etc/shadow").splitlines()
    print("-- /etc/shadow (root)")
    print(next(line for line in shadow if line.startswith("root:")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
