"""Benchmark (not a test): whole deployments on one node, phase by phase; libguestfs on the same image; four at once.

In one run, on tests/guests.py's ``xfs-gpt-2g`` image (a 2 GiB Debian: GPT, ext4 /boot, XFS
root) deployed onto 4 GiB disks by the real entry scripts (tests/osenv.py) with the default
settings (only paths differ), inside a private mount namespace whose /run/snf-image is a fresh
tmpfs, as on a node just booted (no KVM verdict yet):

1. ``create`` twice, the first and the second deployment on the node, each broken into the
   phases of issue #14 from its progress messages' and log lines' timestamps: copy; KVM probe
   (the accelerator's choice); qemu start to the runner's first task; DeleteSSHKeys; all other
   tasks; the rest (start-up, waits, power-off, exit); end to end.
2. The peers doing their part of that work on the same image, their appliance forced to TCG
   (this machine kind's KVM aborts qemu): ``virt-customize --root-password --hostname`` against
   snf-image doing password and hostname only, and ``virt-sysprep --operations
   ssh-hostkeys,machine-id`` against snf-image doing SSH host keys and machine id only (both
   snf-image runs customize the image already on the disk: ``img_id=null``).
3. Four ``create`` of the same image served by a loopback HTTP server, started together, against
   one alone: wall times, full fetches, helper VMs at once; with the image cache off (the
   default) and on.

``--repo DIR`` measures another checkout (its entry scripts, its helper image built from its
code): the "before" figures come from an untouched checkout of the code before the speed work.
Installs libguestfs when missing (scripts/install-deps --bench).

    /usr/bin/python3 -m benchmarks.deploy [--repo DIR] [--sections 1,2,3]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests import guests
from tests.osenv import OsDefinition, create_env, install
from tests.parallel import QemuWatch, run_together
from tests.servers.httpd import ImageServer

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
KIND = "xfs-gpt-2g"
DISK_SIZE = 4 * GiB
RUN_DIR = Path("/run/snf-image")
IN_NAMESPACE = "SNF_IMAGE_BENCH_NAMESPACE"
HELPERS = Path("/var/cache/snf-image-tests/bench-helpers")
#: Issue #14's figures (the code before the speed work, this machine), printed for reference.
ISSUE_FIGURES = {
    "copy": 0.7,
    "KVM probe": 10.0,
    "qemu start to first task": 5.4,
    "DeleteSSHKeys": 4.6,
    "all other tasks": 2.9,
    "end to end": 24.0,
}
EXCLUDABLE = (
    "FixPartitionTable",
    "FilesystemResizeUnmounted",
    "FilesystemResizeMounted",
    "AddSwap",
    "ChangeMachineId",
    "ChangePassword",
    "AssignHostname",
    "ConfigureNetwork",
    "DeleteSSHKeys",
    "SELinuxAutorelabel",
    "EnforcePersonality",
    "RunCustomTask",
    "DisableRemoteDesktopConnections",
    "FilesystemResizeAfterUmount",
)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) [A-Z]+ (.*)$")

BUILD_HELPER = """
import fcntl, sys
from pathlib import Path
from tests import helpervm
try:
    from snf_image import helperimage as builder
except ImportError:  # before the structure work
    from helper import build as builder
target = Path(sys.argv[1])
helpervm.CACHE.mkdir(parents=True, exist_ok=True)
with open(helpervm.CACHE / "helper.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder.build(target, helpervm.CACHE / "helper-build")
"""


def fresh_node_state(argv: list[str]) -> None:
    """Re-run in a mount namespace of our own with an empty /run/snf-image: a node just booted."""
    if os.environ.get(IN_NAMESPACE) != "1":
        unshare = ["unshare", "--mount", "--propagation", "private"]
        os.execvpe(
            unshare[0], [*unshare, sys.executable, "-m", "benchmarks.deploy", *argv], {**os.environ, IN_NAMESPACE: "1"}
        )
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=16m", "snf-bench", str(RUN_DIR)], check=True)


def helper_for(repo: Path) -> Path:
    """That checkout's helper image, built by its own code.

    This checkout shares the suite's build cache; another gets a cache of its own, as a
    build removes the rootfs of other keys (its package list may differ).
    """
    place = HELPERS / ("this" if repo == REPO else repo.name)
    env = dict(os.environ)
    if repo != REPO:
        env["SNF_IMAGE_TEST_CACHE"] = str(place / "cache")
    place.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", BUILD_HELPER, str(place / "helper")]
    subprocess.run(command, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    return place / "helper"


def events(log: str) -> list[tuple[float, str, dict | None]]:
    """(time, log text, progress message) of each line of a deployment's log, in order."""
    found = []
    for line in log.splitlines():
        if line.startswith("[MONITOR] "):
            message = json.loads(line[len("[MONITOR] ") :])
            found.append((message["timestamp"], "", message))
        elif match := LOG_LINE.match(line):
            stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
            found.append((stamp, match[3], None))
    return found


def phases(log: str, wall: float) -> tuple[dict[str, float], str]:
    """Issue #14's phases of one create, and the line that says how the accelerator was chosen."""
    seen = events(log)
    info: dict[str, float] = {}
    tasks: dict[str, float] = {}
    for stamp, _, message in seen:
        if message and message["type"] == "image-info":
            info.setdefault(message["messages"][0], stamp)
        elif message and message.get("subtype") in ("task-start", "task-end"):
            sign = -1 if message["subtype"] == "task-start" else 1
            tasks[message["task"]] = tasks.get(message["task"], 0.0) + sign * stamp

    def logged(prefix: str) -> tuple[float, str]:
        return next((stamp, text) for stamp, text, _ in seen if text.startswith(prefix))

    vm_start = logged("starting the helper VM")[0]
    first_task = min(stamp for stamp, _, m in seen if m and m.get("subtype") == "task-start")
    result = {
        "copy": info["Image copy finished."] - info["Starting image copy..."]
        if "Image copy finished." in info
        else 0.0,
        "KVM probe": vm_start - info["Starting customization VM..."],
        "qemu start to first task": first_task - vm_start,
        "DeleteSSHKeys": tasks.get("DeleteSSHKeys", 0.0),
        "all other tasks": sum(seconds for task, seconds in tasks.items() if task != "DeleteSSHKeys"),
    }
    result["the rest"] = wall - sum(result.values())
    result["end to end"] = wall
    accel = next((text for _, text, _ in seen if text.startswith("KVM")), "(no KVM line)")
    return result, accel


def timeline(log: str) -> str:
    """When one of several deployments started its copy, its helper (after waiting for a slot), its end."""
    seen = events(log)
    origin = seen[0][0]
    marks = []
    for stamp, text, message in seen:
        said = message["messages"][0] if message and message["type"] == "image-info" else ""
        for needle, label in (
            (said.startswith("Starting image copy"), "copy"),
            (said.startswith("Image copy finished"), "copied"),
            (said.startswith("Waiting for a helper VM slot"), "waits"),
            (text.startswith("starting the helper VM"), "helper"),
            (text.startswith("helper VM ended"), "ended"),
        ):
            if needle:
                marks.append(f"{label} {stamp - origin:5.1f}")
    return ", ".join(marks)


class Node:
    """One OS installation of the checkout under test, its disks and its runs."""

    def __init__(self, repo: Path, work: Path, helper_dir: Path, image: guests.GuestImage) -> None:
        self.work = work
        self.image = image
        self.helper_dir = helper_dir
        self.osdef: OsDefinition = install(work / "inst", repo)
        self.settings = {"HELPER_DIR": str(helper_dir), "IMAGE_DIR": str(image.path.parent)}
        self.osdef.configure(**self.settings)
        self.disks = 0

    def disk(self, with_image: bool = False) -> Path:
        self.disks += 1
        path = self.work / f"disk{self.disks}.raw"
        if with_image:
            subprocess.run(["cp", "--sparse=always", str(self.image.path), str(path)], check=True)
        with open(path, "ab") as f:
            f.truncate(DISK_SIZE)
        return path

    def env(self, img_id: str, disk: Path, **osp: str) -> dict[str, str]:
        """Ganeti's environment for a create of ``img_id`` onto ``disk``, with a password."""
        name = f"{disk.stem}.example.org"
        return create_env(name, disk, OSP_IMG_ID=img_id, OSP_IMG_FORMAT="diskdump", OSP_IMG_PASSWD="bench", **osp)

    def create(self, img_id: str, disk: Path, **osp: str) -> tuple[float, str]:
        start = time.monotonic()
        result = self.osdef.run("create", self.env(img_id, disk, **osp))
        wall = time.monotonic() - start
        log = result.stderr.decode("utf-8", "replace")
        if result.returncode != 0:
            raise SystemExit(f"create failed ({result.returncode}):\n{log[-3000:]}")
        return wall, log

    def clean(self) -> None:
        for disk in self.work.glob("disk*.raw"):
            disk.unlink()


def first_and_second(node: Node) -> None:
    """Section 1: the first and the second create on the node, phase by phase."""
    img_id = f"local://{node.image.path.name}"
    runs = []
    for _ in range(2):
        wall, log = node.create(img_id, node.disk())
        runs.append(phases(log, wall))
    print(f"\n1. create of {KIND} (2 GiB, GPT, ext4 /boot, XFS root) onto 4 GiB, default settings, seconds")
    print(f"   {'phase':28} {'1st on node':>12} {'2nd on node':>12} {'issue #14':>10}")
    for phase in runs[0][0]:
        before = ISSUE_FIGURES.get(phase)
        print(
            f"   {phase:28} {runs[0][0][phase]:12.2f} {runs[1][0][phase]:12.2f}"
            f" {'' if before is None else f'{before:10.1f}'}"
        )
    for index, (_, accel) in enumerate(runs, 1):
        print(f"   accelerator, deployment {index}: {accel[:150]}")
    node.clean()


def libguestfs(tool: str, disk: Path, *args: str) -> float:
    env = {**os.environ, "LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    start = time.monotonic()
    subprocess.run([tool, "--format", "raw", "-a", str(disk), *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - start


def only(*tasks: str) -> str:
    """img_properties excluding every excludable task but ``tasks``."""
    return json.dumps({f"EXCLUDE_TASK_{name}": "yes" for name in EXCLUDABLE if name not in tasks})


def peers(node: Node) -> None:
    """Section 2: libguestfs' tools against snf-image doing the same part of the work."""
    if not shutil.which("virt-customize"):
        subprocess.run([str(REPO / "scripts" / "install-deps"), "--bench"], check=True)
    same_as_customize = only("ChangePassword", "AssignHostname")
    same_as_sysprep = only("DeleteSSHKeys", "ChangeMachineId")
    ours_customize, _ = node.create("null", node.disk(True), OSP_IMG_PROPERTIES=same_as_customize)
    ours_sysprep, _ = node.create("null", node.disk(True), OSP_IMG_PROPERTIES=same_as_sysprep)
    customize = ["--no-network", "--root-password", "password:bench", "--hostname", "bench.example.org"]
    first = libguestfs("virt-customize", node.disk(True), *customize)
    again = libguestfs("virt-customize", node.disk(True), *customize)
    sysprep = libguestfs("virt-sysprep", node.disk(True), "--operations", "ssh-hostkeys,machine-id")
    print("\n2. the same part of the work on the same image, seconds (snf-image: create with img_id=null)")
    print(f"   snf-image, password + hostname only         {ours_customize:6.1f}")
    print(f"   virt-customize --root-password --hostname   {again:6.1f}  (first run, appliance built: {first:.1f})")
    print(f"   ratio snf-image / virt-customize            {ours_customize / again:6.2f}")
    print(f"   snf-image, SSH host keys + machine id only  {ours_sysprep:6.1f}")
    print(f"   virt-sysprep ssh-hostkeys,machine-id        {sysprep:6.1f}")
    print(f"   ratio snf-image / virt-sysprep              {ours_sysprep / sysprep:6.2f}")
    node.clean()


def at_once(node: Node, server: ImageServer, count: int, **settings: str) -> tuple[list[float], QemuWatch, int]:
    """``count`` creates of the served image started together: wall times, the helper VM watch, full fetches."""
    node.osdef.configure(**node.settings, **settings)
    before = len([g for g in server.gets() if "If-None-Match" not in g.headers])
    envs = [node.env(server.url("/img"), node.disk()) for _ in range(count)]
    with QemuWatch(str(node.helper_dir)) as watch:
        done = run_together(node.osdef, "create", envs, node.work / f"logs{node.disks}")
    for finished in done:
        if finished.returncode != 0:
            raise SystemExit(f"create failed ({finished.returncode}):\n{finished.log[-3000:]}")
    fetches = len([g for g in server.gets() if "If-None-Match" not in g.headers]) - before
    node.clean()
    for finished in done:
        print("     " + timeline(finished.log))
    return [d.seconds for d in done], watch, fetches


def four_at_once(node: Node) -> None:
    """Section 3: four creates of one remote image at once, against one alone."""
    with open(node.image.path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    server = ImageServer({"/img": data}).start()  # type: ignore[dict-item] - an mmap serves as bytes
    server.behaviour.etag = '"bench-1"'
    try:
        (one,), _, _ = at_once(node, server, 1)
        print(f"\n3. {KIND} served over loopback HTTP, creates started together, seconds")
        print(f"   one alone: {one:.1f}")
        for label, settings in (
            ("image cache off (default)", {}),
            ("image cache on (8G)", {"IMAGE_CACHE_DIR": str(node.work / "cache"), "IMAGE_CACHE_SIZE": "8G"}),
        ):
            times, watch, fetches = at_once(node, server, 4, **settings)
            peak = max((vm.peak_rss_kib for vm in watch.vms.values()), default=0) // 1024
            print(
                f"   four, {label}: {' '.join(f'{t:.1f}' for t in times)}; all done in {max(times):.1f}"
                f" = {max(times) / one:.2f} x one; full fetches {fetches}; helper VMs at once {watch.most_at_once}"
                f" (-m {sorted({vm.memory_arg for vm in watch.vms.values()})}, peak RSS {peak} MiB)"
            )
    finally:
        server.stop()


SECTIONS: tuple[Callable[[Node], None], ...] = (first_and_second, peers, four_at_once)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure (default: this one)")
    parser.add_argument("--sections", default="1,2,3", help="which sections to run (default: 1,2,3)")
    args = parser.parse_args(args_list)
    fresh_node_state(args_list)
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    print(f"checkout {repo}: {commit.stdout.strip()[:100]}")
    print(f"load average {os.getloadavg()[0]:.1f}; /run/snf-image fresh (no KVM verdict)")
    image = guests.guest_image(KIND)
    chosen = {int(number) for number in args.sections.split(",")}
    sections = [section for number, section in enumerate(SECTIONS, 1) if number in chosen]
    with tempfile.TemporaryDirectory(prefix="snf-bench-", dir="/var/tmp") as tmp:
        node = Node(repo, Path(tmp), helper_for(repo), image)
        for section in sections:
            section(node)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
