"""Benchmark (not a test): a whole customization in snf-image's helper VM vs virt-customize, under TCG.

On the same Debian image (tests/guests.py's ext4-msdos, already on a 3 GiB disk, so
only the customization is measured: img_id=null) it times, in one run:

* snf-image, all default tasks (partition and filesystem growth, password, hostname,
  machine id, SSH host keys, network, ...): helper boot to its first task, and the
  whole customization (qemu start to power-off);
* snf-image doing only what virt-customize does below (password and hostname; the
  other excludable tasks excluded);
* ``virt-customize --root-password --hostname`` (libguestfs, its appliance forced to TCG: the
  KVM of this machine kind aborts qemu).

Prints the figures and the ratios. Installs libguestfs-tools (and a kernel for its
appliance) from Debian's packages when missing.

    /usr/bin/python3 -m benchmarks.customize_vs_virt_customize
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from snf_image import deploy
from snf_image.ganeti import parse_environment
from snf_image.progress import Progress
from snf_image.settings import DEFAULTS, build_settings
from tests import guests
from tests.helpervm import ensure_helper

GiB = 1 << 30
ONLY_PASSWORD_AND_HOSTNAME = {
    f"EXCLUDE_TASK_{name}": "yes"
    for name in (
        "FixPartitionTable",
        "FilesystemResizeUnmounted",
        "FilesystemResizeMounted",
        "AddSwap",
        "ChangeMachineId",
        "ConfigureNetwork",
        "DeleteSSHKeys",
        "SELinuxAutorelabel",
        "EnforcePersonality",
        "RunCustomTask",
    )
}


def disk_with_image(workdir: Path, name: str) -> Path:
    disk = workdir / name
    subprocess.run(["cp", "--sparse=always", str(guests.guest_image("ext4-msdos").path), str(disk)], check=True)
    with open(disk, "r+b") as f:
        f.truncate(3 * GiB)
    return disk


def snf_image(disk: Path, helper_dir: Path, properties: dict[str, str]) -> tuple[float, float]:
    """(boot to first task, whole customization) in seconds, from the progress stream's timestamps."""
    settings = build_settings({**DEFAULTS, "HELPER_DIR": str(helper_dir), "HELPER_ACCEL": "tcg"}, Path("/nonexistent"))
    env = parse_environment(
        {
            "OS_API_VERSION": "20",
            "INSTANCE_NAME": "bench.example.org",
            "HYPERVISOR": "kvm",
            "DISK_COUNT": "1",
            "DISK_0_PATH": str(disk),
            "NIC_COUNT": "0",
        },
        "create",
    )
    params = deploy.collect_params(
        {"img_id": "null", "img_format": "diskdump", "img_passwd": "bench", "img_properties": json.dumps(properties)},
        settings,
    )
    seen: list[tuple[float, dict]] = []
    with Progress(listener=lambda m: seen.append((time.monotonic(), m))) as progress:
        deploy.customize(env.instance, settings, deploy.build_rules(env.instance, settings, params), progress)
    start = next(t for t, m in seen if m.get("messages") == ["Starting customization VM..."])
    first = next(t for t, m in seen if m.get("subtype") == "task-start")
    end = next(t for t, m in seen if m.get("messages") == ["Customization VM exited normally."])
    return first - start, end - start


def ensure_virt_customize() -> None:
    if shutil.which("virt-customize"):
        return
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "libguestfs-tools", "linux-image-cloud-amd64"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def virt_customize(disk: Path) -> float:
    start = time.monotonic()
    subprocess.run(
        [
            "virt-customize",
            "-a",
            str(disk),
            "--format",
            "raw",
            "--no-network",
            "--root-password",
            "password:bench",
            "--hostname",
            "bench.example.org",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"},
    )
    return time.monotonic() - start


def main() -> int:
    helper_dir = ensure_helper()
    ensure_virt_customize()
    with tempfile.TemporaryDirectory(prefix="snf-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        boot_all, whole_all = snf_image(disk_with_image(work, "all.raw"), helper_dir, {})
        boot_same, whole_same = snf_image(disk_with_image(work, "same.raw"), helper_dir, ONLY_PASSWORD_AND_HOSTNAME)
        theirs = virt_customize(disk_with_image(work, "virt.raw"))
    print("under TCG, same image, same machine, one run")
    print(f"snf-image, all default tasks:     boot to first task {boot_all:6.1f} s, whole {whole_all:6.1f} s")
    print(f"snf-image, password + hostname:   boot to first task {boot_same:6.1f} s, whole {whole_same:6.1f} s")
    print(f"virt-customize, password + hostname:                        whole {theirs:6.1f} s")
    print(f"ratio virt-customize / snf-image (same work): {theirs / whole_same:.1f}x")
    print(f"ratio virt-customize / snf-image (all tasks): {theirs / whole_all:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
