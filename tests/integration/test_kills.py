"""A deployment killed in each phase leaves nothing behind (#13 item 3): real signals, real processes.

Each case starts an entry script (or ``snf-image deploy``) as Ganeti starts it, with a real
progress monitor, waits until the deployment is in the phase -- copying a big local image,
downloading from a loopback server that stalls, running a task in the real helper VM that
sleeps -- and sends the signal. Within KILL_DEADLINE seconds the script must have reported
one error (and create one ``image-error`` message) and nothing may be left
(``tests/leftovers.py``: no qemu nor its supervisor, no qemu-nbd, no monitor, no loop or nbd
device, no mount, nothing in the script's TMPDIR). A SIGKILL -- the script runs no code at
all -- must still take the helper VM down within the hard timeout.

Each case prints one ``KILL:`` line (phase, signal, seconds until nothing was left): run with
``-s`` to see the table.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import guests, helpervm, leftovers
from tests.osenv import REPO, create_env, install
from tests.servers import ImageServer

pytestmark = pytest.mark.vm

#: What the issue allows between the signal and the last leftover gone.
KILL_DEADLINE = 10.0
HARD_TIMEOUT = 5.0
MiB = 1 << 20
TERMINATING = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
SLEEPING_TASK = base64.b64encode(b"#!/bin/sh\nsleep 1000\n").decode()


@pytest.fixture(scope="module")
def helper_dir() -> Path:
    return helpervm.ensure_helper()


@pytest.fixture
def osdef(tmp_path, helper_dir):
    definition = install(tmp_path / "inst")
    monitor_out = tmp_path / "monitor.jsonl"
    monitor = tmp_path / "monitor"
    monitor.write_text(f"#!/bin/sh\nexec cat >> {monitor_out}\n")
    monitor.chmod(0o755)
    definition.configure(
        HELPER_DIR=str(helper_dir),
        HELPER_SOFT_TIMEOUT="300",
        HELPER_HARD_TIMEOUT=f"{HARD_TIMEOUT:g}",
        IMAGE_DIR=str(definition.image_dir),
        PROGRESS_MONITOR=str(monitor),
    )
    definition.monitor_out = monitor_out
    return definition


class Deployment:
    """A running script: its stderr in a file, its progress messages in the monitor's."""

    def __init__(self, proc: subprocess.Popen, log: Path, monitor_out: Path | None) -> None:
        self.proc = proc
        self.log = log
        self.monitor_out = monitor_out

    def messages(self) -> list[dict]:
        if self.monitor_out is None or not self.monitor_out.exists():
            return []
        lines = self.monitor_out.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_until(self, reached, what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not reached(self):
            assert self.proc.poll() is None, f"ended before {what}: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not {what} after {timeout} s"
            time.sleep(0.05)

    def info_seen(self, text: str) -> bool:
        return any(m["type"] == "image-info" and text in m["messages"] for m in self.messages())

    def task_started(self, task: str) -> bool:
        return any(m.get("subtype") == "task-start" and m.get("task") == task for m in self.messages())


def start(osdef, script: str, env: dict[str, str], watch_marker: Path, **popen) -> tuple[Deployment, leftovers.Watch]:
    watch = leftovers.Watch(marker=watch_marker, tmpdir=osdef.tmpdir)
    log = watch_marker / f"{script}.log"
    with open(log, "wb") as err:
        proc = osdef.start(script, env, stderr=err, **popen)
    return Deployment(proc, log, osdef.monitor_out), watch


def kill_and_check(deployment: Deployment, watch: leftovers.Watch, sig: int, label: str) -> float:
    """Send ``sig``; the script ends with one error and nothing is left, within KILL_DEADLINE."""
    sent = time.monotonic()
    deployment.proc.send_signal(sig)
    deployment.proc.wait(KILL_DEADLINE)
    _, left = watch.wait_clean(max(0.0, KILL_DEADLINE - (time.monotonic() - sent)))
    seconds = time.monotonic() - sent
    assert not left, left
    name = signal.Signals(sig).name
    stderr = deployment.log.read_text()
    assert deployment.proc.returncode == 128 + sig, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "ERROR: " in line or "error: " in line]
    assert len(errors) == 1 and errors[0].endswith(f"interrupted by {name}; the deployment was stopped and cleaned up")
    assert "Traceback" not in stderr
    print(f"KILL: {label:<32} {name:<8} nothing left after {seconds:5.2f} s")
    return seconds


def one_image_error(deployment: Deployment, sig: int) -> None:
    errors = [m for m in deployment.messages() if m["type"] == "image-error"]
    assert [m["messages"] for m in errors] == [
        [f"interrupted by {signal.Signals(sig).name}; the deployment was stopped and cleaned up"]
    ]


def big_local_image(osdef, tmp_path) -> tuple[str, Path]:
    """A 4 GiB image with a byte of data in every MiB (slow to copy, cheap to make) and a disk for it."""
    image = osdef.image_dir / "big.img"
    with open(image, "wb") as f:
        f.truncate(4096 * MiB)
        for offset in range(0, 4096 * MiB, MiB):
            os.pwrite(f.fileno(), b"\x01", offset)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(4097 * MiB)
    return "local://big.img", disk


@pytest.mark.parametrize("sig", TERMINATING, ids=lambda s: s.name)
def test_create_killed_during_the_copy(osdef, tmp_path, sig):
    img_id, disk = big_local_image(osdef, tmp_path)
    env = create_env("kill.copy", disk, OSP_IMG_ID=img_id, OSP_IMG_FORMAT="diskdump")
    deployment, watch = start(osdef, "create", env, tmp_path)
    deployment.wait_until(lambda d: d.info_seen("Starting image copy..."), "copying")
    kill_and_check(deployment, watch, sig, "create: copy of a local image")
    assert not deployment.info_seen("Image copy finished.")  # it was killed in the middle
    one_image_error(deployment, sig)


def converting_create(osdef, tmp_path) -> tuple[Deployment, leftovers.Watch]:
    """``create`` of a 4 GiB qcow2 image, once its sandboxed conversion has begun."""
    _, disk = big_local_image(osdef, tmp_path)
    raw = osdef.image_dir / "big.img"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, raw.with_suffix(".qcow2")], check=True)
    raw.unlink()
    env = create_env("kill.qcow2", disk, OSP_IMG_ID="local://big.qcow2", OSP_IMG_FORMAT="diskdump")
    deployment, watch = start(osdef, "create", env, tmp_path)
    deployment.wait_until(lambda d: d.info_seen("Starting image copy (converting the qcow2 image)..."), "converting")
    return deployment, watch


@pytest.mark.parametrize("sig", TERMINATING, ids=lambda s: s.name)
def test_create_killed_while_a_qcow2_image_is_converted(osdef, tmp_path, sig):
    """The converter (qemu-storage-daemon in bubblewrap) is stopped with the deployment."""
    deployment, watch = converting_create(osdef, tmp_path)
    converter = [p for p in leftovers.descendants() if "qemu-storage-daemon" in leftovers.cmdline(p)]
    assert converter, "no converter running"
    kill_and_check(deployment, watch, sig, "create: qcow2 conversion")
    assert not deployment.info_seen("Image copy finished.")
    one_image_error(deployment, sig)


def test_sigkill_during_a_conversion_leaves_a_directory_the_next_deployment_removes(osdef, tmp_path):
    """SIGKILL runs none of our code: the converter dies with us, its private directory waits for the next script."""
    deployment, watch = converting_create(osdef, tmp_path)
    deployment.proc.kill()
    deployment.proc.wait()
    _, left = watch.wait_clean(KILL_DEADLINE)
    assert left.processes == [] and left.devices == [] and left.mounts == []
    purposes = {Path(entry).name.split("-")[2] for entry in left.temp_entries}
    assert "convert" in purposes and purposes <= {"convert", "hostkeys"}, left  # keys: if ssh-keygen still ran
    small = tmp_path / "small.raw"
    small.write_bytes(bytes(MiB))
    imported = osdef.run("import", create_env("kill.next", small, IMPORT_DEVICE=str(small), IMPORT_INDEX="0"))
    assert imported.returncode == 0, imported.stderr.decode()[-2000:]
    assert list(osdef.tmpdir.iterdir()) == []


@pytest.mark.parametrize("sig", TERMINATING, ids=lambda s: s.name)
def test_create_killed_during_a_stalled_download(osdef, tmp_path, sig):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(8 * MiB))
    with ImageServer({"/image.raw": os.urandom(4 * MiB)}) as server:
        server.behaviour.stall_after = MiB
        server.behaviour.stall_seconds = 300
        env = create_env("kill.http", disk, OSP_IMG_ID=server.url("/image.raw"), OSP_IMG_FORMAT="diskdump")
        deployment, watch = start(osdef, "create", env, tmp_path)
        deployment.wait_until(lambda d: d.info_seen("Starting image copy..."), "downloading")
        time.sleep(0.5)  # the first MiB is in; the server sends nothing more
        kill_and_check(deployment, watch, sig, "create: download from a stalled server")
    assert not deployment.info_seen("Image copy finished.")
    one_image_error(deployment, sig)


def _sleeping_task_create(osdef, tmp_path) -> tuple[dict[str, str], Path]:
    image = guests.guest_image("ext4-msdos")
    osdef.configure(
        HELPER_DIR=str(helpervm.ensure_helper()),
        HELPER_SOFT_TIMEOUT="300",
        HELPER_HARD_TIMEOUT=f"{HARD_TIMEOUT:g}",
        IMAGE_DIR=str(image.path.parent),
        PROGRESS_MONITOR=str(tmp_path / "monitor"),
    )
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(3 << 30)
    props = json.dumps({"CUSTOM_TASK": SLEEPING_TASK, "EXCLUDE_TASK_DeleteSSHKeys": "yes"})
    env = create_env(
        "kill.vm", disk, OSP_IMG_ID=f"local://{image.path.name}", OSP_IMG_FORMAT="diskdump", OSP_IMG_PROPERTIES=props
    )
    return env, disk


def _qemu_of(deployment_marker: Path) -> list[int]:
    return [
        pid
        for pid in leftovers.descendants()
        if leftovers.cmdline(pid).startswith("qemu-system") and str(deployment_marker) in leftovers.cmdline(pid)
    ]


@pytest.mark.parametrize("sig", TERMINATING, ids=lambda s: s.name)
def test_create_killed_while_the_helper_vm_runs_a_sleeping_task(osdef, tmp_path, sig):
    env, disk = _sleeping_task_create(osdef, tmp_path)
    deployment, watch = start(osdef, "create", env, tmp_path)
    deployment.wait_until(lambda d: d.task_started("RunCustomTask"), "in the sleeping task")
    assert _qemu_of(disk)
    kill_and_check(deployment, watch, sig, "create: helper VM in a sleeping task")
    one_image_error(deployment, sig)


def test_sigkill_of_create_still_takes_the_helper_vm_down(osdef, tmp_path):
    """The script runs no code: qemu's supervisor gets its parent-death signal and stops qemu."""
    env, disk = _sleeping_task_create(osdef, tmp_path)
    deployment, watch = start(osdef, "create", env, tmp_path)
    deployment.wait_until(lambda d: d.task_started("RunCustomTask"), "in the sleeping task")
    assert _qemu_of(disk)
    sent = time.monotonic()
    deployment.proc.kill()
    deployment.proc.wait()
    _, left = watch.wait_clean(HARD_TIMEOUT)
    seconds = time.monotonic() - sent
    assert not left, left
    assert seconds <= HARD_TIMEOUT
    print(f"KILL: {'create: helper VM in a sleeping task':<32} SIGKILL  nothing left after {seconds:5.2f} s")


def test_rename_killed_while_the_helper_vm_boots(osdef, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(64 * MiB))
    env = create_env("kill.renamed", disk, OLD_INSTANCE_NAME="kill.old")
    deployment, watch = start(osdef, "rename", env, tmp_path)
    deployment.wait_until(lambda d: bool(_qemu_of(disk)), "booting the helper VM")
    kill_and_check(deployment, watch, signal.SIGTERM, "rename: helper VM booting")
    one_image_error(deployment, signal.SIGTERM)


def test_import_killed_while_waiting_for_data(osdef, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(64 * MiB))
    env = create_env("kill.import", disk, IMPORT_DEVICE=str(disk), IMPORT_INDEX="0")
    deployment, watch = start(osdef, "import", env, tmp_path, stdin=subprocess.PIPE)
    deployment.proc.stdin.write(os.urandom(MiB))
    deployment.proc.stdin.flush()
    time.sleep(1)  # the first MiB is written; the sender sends nothing more
    kill_and_check(deployment, watch, signal.SIGTERM, "import: sender stalled")
    deployment.proc.stdin.close()


def test_export_killed_while_the_receiver_stalls(osdef, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(16 * MiB))
    env = create_env("kill.export", disk, EXPORT_DEVICE=str(disk), EXPORT_INDEX="0")
    deployment, watch = start(osdef, "export", env, tmp_path, stdout=subprocess.PIPE)
    assert deployment.proc.stdout.read(MiB)  # then the receiver reads nothing more
    time.sleep(1)
    kill_and_check(deployment, watch, signal.SIGTERM, "export: receiver stalled")
    deployment.proc.stdout.close()


def _deploy(osdef, tmp_path, *args: str) -> tuple[Deployment, leftovers.Watch]:
    watch = leftovers.Watch(marker=tmp_path, tmpdir=osdef.tmpdir)
    log = tmp_path / "deploy.log"
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(osdef.tmpdir)}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            ["/usr/bin/python3", "-m", "snf_image", "--config-dir", str(osdef.config_dir), "deploy", *args],
            cwd=REPO,
            env=env,
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    return Deployment(proc, log, osdef.monitor_out), watch


def test_snf_image_deploy_interrupted_during_the_copy(osdef, tmp_path):
    """Ctrl-C on the command line."""
    img_id, disk = big_local_image(osdef, tmp_path)
    deployment, watch = _deploy(osdef, tmp_path, "--disk", str(disk), "--image", img_id, "--format", "diskdump")
    deployment.wait_until(lambda d: d.info_seen("Starting image copy..."), "copying")
    kill_and_check(deployment, watch, signal.SIGINT, "snf-image deploy: copy")
    one_image_error(deployment, signal.SIGINT)


def test_snf_image_deploy_terminated_while_the_helper_vm_runs(osdef, tmp_path):
    env, disk = _sleeping_task_create(osdef, tmp_path)
    deployment, watch = _deploy(
        osdef,
        tmp_path,
        *("--disk", str(disk), "--image", env["OSP_IMG_ID"], "--format", "diskdump"),
        *("--properties", env["OSP_IMG_PROPERTIES"]),
    )
    deployment.wait_until(lambda d: d.task_started("RunCustomTask"), "in the sleeping task")
    kill_and_check(deployment, watch, signal.SIGTERM, "snf-image deploy: helper VM")
    one_image_error(deployment, signal.SIGTERM)
