"""The helper VM launcher against the real helper VM (TCG here): channels, failures, cleanup.

The real runner is replaced by tests/jailprobe.py, injected into a test copy of
the helper's code layer and selected with ``snf_image_runner=jailprobe``; the
rules disk tells it which behaviour (good or hostile) to act out.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from snf_image import jail
from snf_image.contract import constants
from snf_image.contract.rules import new_result_token
from snf_image.errors import HelperError
from snf_image.helperimage.codelayer import helper_version
from snf_image.jail import vm
from snf_image.jail.channels import FORGED_SUCCESS
from snf_image.jail.command import build_qemu_command
from snf_image.progress import MONITOR_CLOSE_TIMEOUT, Progress
from tests import leftovers
from tests.helpervm import ensure_helper, probe_helper_dir, probe_rules

pytestmark = pytest.mark.vm

JAILPROBE = Path(__file__).resolve().parent.parent / "jailprobe.py"


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory) -> Path:
    return probe_helper_dir(ensure_helper(), tmp_path_factory.mktemp("helper") / "h", {"jailprobe": JAILPROBE})


def _qemu_pids(marker: str) -> list[int]:
    """The qemu processes (not their supervisor) of this test's helper."""
    return [
        pid
        for pid in leftovers.pids()
        if leftovers.cmdline(pid).startswith("qemu-system") and marker in leftovers.cmdline(pid)
    ]


@pytest.fixture(autouse=True)
def nothing_left_behind(probe_dir, tmp_path, monkeypatch):
    """Every run, good or bad, leaves nothing: no process, no temporary file (in a TMPDIR of its own)."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    watch = leftovers.Watch(marker=probe_dir, tmpdir=private_tmp)
    yield
    _, left = watch.wait_clean(2)
    assert not left, left


def _run(probe_dir: Path, probe: str, disks=(), rules_extra=None, on_progress=None, **config):
    progress: list[dict] = []
    log: list[str] = []
    rules, token = probe_rules({"probe": probe, **(rules_extra or {})})
    cfg = jail.HelperConfig(
        helper_dir=probe_dir,
        runner="jailprobe",
        accel=config.pop("accel", "tcg"),
        soft_timeout=config.pop("soft_timeout", 120.0),
        **config,
    )
    start = time.monotonic()
    error = None
    try:
        jail.run_helper(cfg, list(disks), rules, on_progress or progress.append, log.append, token=token)
    except HelperError as exc:
        error = exc
    return error, progress, log, time.monotonic() - start


def test_success_with_kvm_probe_rules_disks_and_progress(probe_dir, tmp_path):
    disk = tmp_path / "disk0.img"
    disk.write_bytes(b"\0" * (1 << 20))
    other = tmp_path / "disk3.img"
    other.write_bytes(b"\0" * 4096)
    rules_extra = {"write_disks": ["snf-disk0"], "padding": "x" * 1000, "result_token": new_result_token()}
    error, progress, log, _ = _run(
        probe_dir,
        "success",
        [jail.JailDisk(str(disk), 0), jail.JailDisk(str(other), 3, readonly=True)],
        rules_extra,
        accel="auto",
        state_dir=tmp_path / "state",
    )
    assert error is None, "\n".join(log)
    assert any(line.startswith("KVM probe: ") for line in log)
    assert any(line.startswith("HELPER: jailprobe: pid 1") for line in log)
    assert [m["subtype"] for m in progress] == ["task-start", "warning", "task-end"]
    assert all(m["type"] == constants.MSG_HELPER for m in progress)
    facts = json.loads(progress[1]["messages"][0])
    rules = json.dumps({"probe": "success", **rules_extra}).encode()
    assert facts["rules_sha256"] == hashlib.sha256(rules).hexdigest()
    assert facts["root_ro"] is True
    assert facts["pid"] == 1
    assert {"snf_image", "helper", "tasks"} <= set(facts["lib"])
    assert facts["by_id"] == ["virtio-snf-disk0", "virtio-snf-disk3", "virtio-snf-helper-root", "virtio-snf-rules"]
    assert disk.read_bytes().startswith(b"written by jailprobe to snf-disk0\n")
    assert other.read_bytes() == b"\0" * 4096


def test_error_result_is_sanitized(probe_dir):
    error, _, _, _ = _run(probe_dir, "error")
    message = str(error)
    assert message.startswith("Image customization failed: the probe failed ?[31mon purpose?xxx")
    assert message.endswith("...") and len(message) < 600
    assert message.isprintable()


@pytest.mark.parametrize("probe", ["noresult", "crash"])
def test_no_result(probe_dir, probe):
    error, _, log, seconds = _run(probe_dir, probe)
    assert str(error) == "Image customization failed: the helper VM ended without a result"
    assert seconds < 60  # PID 1 dying ends the VM at once (panic=-1, -no-reboot)
    if probe == "crash":
        assert any("exiting PID 1 on purpose" in line for line in log)


@pytest.mark.parametrize(
    ("probe", "reason"),
    [
        ("garbage", "a line that is not UTF-8 JSON"),
        ("invalid", "an invalid message"),
        ("longline", "line longer than 4096 bytes"),
        ("flood", "lines per second"),
    ],
)
def test_hostile_progress_kills_the_vm(probe_dir, probe, reason):
    error, _, log, _ = _run(probe_dir, probe)
    assert str(error).startswith("Image customization failed: the helper VM broke the protocol: progress port: ")
    assert reason in str(error)
    assert any("killing it" in line for line in log)


@pytest.mark.parametrize(
    ("probe", "reason"),
    [
        ("forged", FORGED_SUCCESS),
        ("wrong_token", FORGED_SUCCESS),
        ("forged_first", FORGED_SUCCESS),
        ("success_then_forged", FORGED_SUCCESS),
        ("twice", "the result port carried 2 lines where the runner writes one"),
        ("error_first", "the result port carried 2 lines where the runner writes one; the first error: planted"),
    ],
)
def test_only_the_runners_success_counts(probe_dir, probe, reason):
    """A SUCCESS without the deployment's token, or a second line, is a failure that says so; never success."""
    error, _, _, _ = _run(probe_dir, probe)
    assert str(error) == f"Image customization failed: {reason}"


def test_hang_times_out(probe_dir):
    error, _, log, seconds = _run(probe_dir, "hang", soft_timeout=25.0, hard_timeout=2.0)
    assert str(error) == "Image customization failed: the helper VM did not finish on time (25 s)"
    assert 25 <= seconds < 40
    assert any("sending SIGTERM" in line for line in log)


def test_a_monitor_that_stops_reading_does_not_suspend_the_timeouts(probe_dir, tmp_path, caplog):
    """The VM floods valid progress lines at a monitor that reads nothing, then hangs: the soft timeout still fires."""
    monitor = tmp_path / "monitor"
    monitor.write_text("#!/bin/sh\nexec sleep 3600\n")
    monitor.chmod(0o755)

    def too_late(signum, frame):
        raise AssertionError("the helper's timeouts were suspended")

    previous = signal.signal(signal.SIGALRM, too_late)
    signal.alarm(150)
    try:
        with Progress(str(monitor), "inst1") as progress:
            error, _, log, seconds = _run(
                probe_dir, "chatter", on_progress=progress.helper, soft_timeout=30.0, hard_timeout=2.0
            )
            closing = time.monotonic()
        closed = time.monotonic() - closing
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert str(error) == "Image customization failed: the helper VM did not finish on time (30 s)", "\n".join(log)
    assert 30 <= seconds < 45
    assert closed < MONITOR_CLOSE_TIMEOUT + 2
    assert "progress monitor did not read its last messages" in caplog.text  # it was fed, and stalled


def test_version_mismatch_refused_before_boot(probe_dir, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("image", "kernel", "initrd"):
        (stale / name).symlink_to(probe_dir / name)
    (stale / "version").write_text("0.24.0+0000000000000000\n")
    error, _, log, seconds = _run(stale, "success")
    assert str(error) == (
        f"helper image version 0.24.0+0000000000000000 does not match snf-image "
        f"{helper_version()}; rebuild it with: snf-image helper build [--code-only]"
    )
    assert log == [] and seconds < 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nbd_uri_disk(probe_dir, tmp_path):
    disk = tmp_path / "nbd.img"
    disk.write_bytes(b"\0" * (1 << 20))
    port = _free_port()
    server = subprocess.Popen(
        ["qemu-nbd", "-f", "raw", "-b", "127.0.0.1", "-p", str(port), "-x", "exp", "--persistent", str(disk)]
    )
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        error, _, log, _ = _run(
            probe_dir, "success", [jail.JailDisk(f"nbd://127.0.0.1:{port}/exp", 0)], {"write_disks": ["snf-disk0"]}
        )
        assert error is None, "\n".join(log)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert disk.read_bytes().startswith(b"written by jailprobe to snf-disk0\n")


def test_debug_shell_socket(probe_dir, tmp_path):
    sock = tmp_path / "debug.sock"
    error, _, log, _ = _run(probe_dir, "success", debug=True, debug_socket=sock)
    assert error is None, "\n".join(log)
    assert any(f"UNIX-CONNECT:{sock}" in line for line in log)
    assert any(line.startswith("starting the helper VM") and "snf_image_debug_helper" in line for line in log)
    assert not sock.exists()


def test_unprivileged_qemu(probe_dir):
    """qemu runs as HELPER_USER once started (checked while the VM hangs)."""
    seen: list[int] = []

    def log(line: str) -> None:
        if line.startswith("HELPER: jailprobe:"):
            for pid in _qemu_pids(str(probe_dir)):
                seen.append(os.stat(f"/proc/{pid}").st_uid)

    # a hanging VM: one that powers off at once can be gone before its console line is read
    cfg = jail.HelperConfig(helper_dir=probe_dir, runner="jailprobe", accel="tcg", soft_timeout=10.0, hard_timeout=2.0)
    rules, token = probe_rules({"probe": "hang"})
    with pytest.raises(HelperError, match="did not finish on time"):
        jail.run_helper(cfg, [], rules, lambda _: None, log, token=token)
    assert seen and set(seen) == {pwd.getpwnam("nobody").pw_uid}


def test_kvm_verdict_is_probed_once_per_node(probe_dir, tmp_path):
    """The real probe (this machine's KVM, whatever it does) runs once; later deployments read its verdict."""
    state = tmp_path / "state"
    _, _, first, _ = _run(probe_dir, "success", accel="auto", state_dir=state)
    _, _, second, _ = _run(probe_dir, "success", accel="auto", state_dir=state)
    probed = [line for line in first if line.startswith("KVM probe: ")]
    assert len(probed) == 1 and f"kept in {state}/accel-" in probed[0]
    accel = probed[0].split()[2]
    assert [line for line in second if line.startswith("KVM verdict of this node")]
    assert not [line for line in second if line.startswith("KVM probe")]
    assert any(line.startswith(f"starting the helper VM ({accel})") for line in first + second)


def test_silent_console_ends_a_stall_limited_boot(probe_dir):
    """What the KVM probe relies on: a VM whose console stays silent is stopped after the stall limit."""
    cfg = jail.HelperConfig(helper_dir=probe_dir, runner="jailprobe", accel="tcg")
    log: list[str] = []
    with vm.workdir(cfg, json.dumps({"probe": "hang"}).encode()) as (rules, channels, fds):
        cmd = build_qemu_command(cfg, "tcg", [], rules, channels, sandbox=False)
        outcome = vm.boot(cmd, fds, 120.0, 2.0, lambda _: None, log.append, stall_timeout=3.0)
    assert outcome.timed_out and outcome.stalled
    assert any(line.startswith("HELPER: jailprobe: ") for line in log)  # it did boot, then said nothing
    assert any("console silent for 3 s: sending SIGTERM" in line for line in log)
    assert outcome.seconds < 60


def test_helper_probe_command(probe_dir, tmp_path):
    """snf-image helper probe probes again and prints the verdict; HELPER_ACCEL=tcg says it overrides."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "snf-image.conf").write_text(f"HELPER_DIR={probe_dir}\nHELPER_ACCEL=tcg\n")
    result = subprocess.run(
        [sys.executable, "-m", "snf_image", "--config-dir", str(config_dir), "helper", "probe"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("KVM probe: ") and "kept in /run/snf-image/accel-" in lines[0]
    assert lines[1] == "HELPER_ACCEL=tcg overrides the verdict: deployments use tcg"
