"""The node's KVM verdict: probed once, kept by key, shared under a lock, re-probed on demand (stand-in qemu).

The stand-in is a script that acts out one KVM outcome on the probe's channels
(it records each run), so every branch is exercised without depending on this
machine's KVM; tests/integration/test_helper_vm.py probes with the real qemu.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from snf_image import jail
from snf_image.helperimage.codelayer import helper_version
from snf_image.jail import accel

#: The stand-in qemu. Like the real one it gets a minimal environment and its ports as descriptors
#: (-add-fd, /dev/fdset/N): it counts its runs and finds its behaviour in files beside it.
QEMU = """#!/usr/bin/python3
import os, sys, time
here = os.path.dirname(sys.argv[0])
if sys.argv[1:] == ["-help"]:
    print("QEMU emulator version 0.0.1 (stand-in)")
    sys.exit(0)
with open(os.path.join(here, "runs"), "a") as f:
    f.write("run\\n")
fdsets = {}
for option, value in zip(sys.argv, sys.argv[1:]):
    if option == "-add-fd":
        fields = dict(item.split("=", 1) for item in value.split(","))
        fdsets["/dev/fdset/" + fields["set"]] = int(fields["fd"])
ports = {}
for arg in sys.argv:
    if arg.startswith("file,id="):
        fields = dict(item.split("=", 1) for item in arg[len("file,"):].split(","))
        ports[fields["id"]] = fdsets[fields["path"]]
def write(port, text):
    os.write(ports[port], text.encode())
behaviour = open(os.path.join(here, "behaviour")).read().strip()
delay = os.path.join(here, "delay")
if behaviour == "works":
    time.sleep(float(open(delay).read()) if os.path.exists(delay) else 0)
    write("console", "Linux version 6.1\\n")
    write("result", "SNF-IMAGE-PROBE-OK\\n")
elif behaviour == "hangs":
    write("console", "Linux version 6.1\\n")
    time.sleep(60)
elif behaviour == "aborts":
    print("qemu: failed to set MSR 0x10a", flush=True)
    os.abort()
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> jail.HelperConfig:
    helper = tmp_path / "helper"
    helper.mkdir()
    for name in ("image", "initrd"):
        (helper / name).write_bytes(b"")
    (helper / "kernel").write_bytes(b"kernel one")
    (helper / "version").write_text(helper_version())
    qemu = tmp_path / "qemu"
    qemu.write_text(QEMU)
    qemu.chmod(0o755)
    (tmp_path / "behaviour").write_text("works")
    kvm = tmp_path / "kvm"
    kvm.write_bytes(b"")
    monkeypatch.setattr(accel, "KVM_DEVICE", str(kvm))
    return jail.HelperConfig(helper_dir=helper, qemu=str(qemu), user=None, state_dir=tmp_path / "state")


def _runs(config: jail.HelperConfig) -> int:
    runs = Path(config.qemu).parent / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def _behave(config: jail.HelperConfig, behaviour: str) -> None:
    (Path(config.qemu).parent / "behaviour").write_text(behaviour)


def test_probed_once_then_read_until_the_key_changes(config: jail.HelperConfig) -> None:
    log: list[str] = []
    assert accel.choose_accel(config, log.append) == "kvm"
    assert accel.choose_accel(config, log.append) == "kvm"
    assert _runs(config) == 1
    assert log[0].startswith("KVM probe: kvm (the helper kernel reached /init under KVM; probed at ")
    assert f"kept in {config.state_dir}/accel-" in log[0]
    assert log[1].startswith(f"KVM verdict of this node (kept in {config.state_dir}/accel-")
    stored = list(config.state_dir.glob("accel-*.json"))
    assert len(stored) == 1 and stored[0].stat().st_mode & 0o777 == 0o600
    assert config.state_dir.stat().st_mode & 0o777 == 0o700
    key = json.loads(stored[0].read_text())["key"]
    assert key["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert key["qemu_version"] == "QEMU emulator version 0.0.1 (stand-in)"
    # a new helper kernel is a new key: probed again, the old verdict kept for the old kernel
    (Path(config.helper_dir) / "kernel").write_bytes(b"kernel two")
    _behave(config, "aborts")
    assert accel.choose_accel(config, log.append) == "tcg"
    assert _runs(config) == 2
    assert "qemu exited with -6 (qemu: failed to set MSR 0x10a)" in log[-1]
    assert len(list(config.state_dir.glob("accel-*.json"))) == 2


def test_setting_overrides_without_probing(config: jail.HelperConfig) -> None:
    for forced in ("kvm", "tcg"):
        config.accel = forced
        assert accel.choose_accel(config, print) == forced
    assert _runs(config) == 0
    config.accel = "fast"
    with pytest.raises(jail.HelperError, match="unknown accelerator"):
        accel.choose_accel(config, print)


def test_reprobe_replaces_the_verdict(config: jail.HelperConfig) -> None:
    assert accel.verdict(config, print).accel == "kvm"
    _behave(config, "aborts")
    assert accel.verdict(config, print).accel == "kvm"  # kept
    assert accel.verdict(config, print, reprobe=True).accel == "tcg"
    assert accel.verdict(config, print).accel == "tcg"
    assert _runs(config) == 2


def test_hung_kernel_is_given_up_on_a_silent_console(config: jail.HelperConfig) -> None:
    _behave(config, "hangs")
    start = time.monotonic()
    found = accel.verdict(config, print)
    assert found.accel == "tcg"
    assert found.reason == f"the kernel hung under KVM (console silent for {accel.PROBE_STALL:g} s)"
    assert accel.PROBE_STALL <= time.monotonic() - start < accel.PROBE_STALL + 3


def test_no_kvm_device(config: jail.HelperConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", str(tmp_path / "absent"))
    found = accel.verdict(config, print)
    assert (found.accel, found.reason) == ("tcg", f"{tmp_path / 'absent'} is not usable")
    assert _runs(config) == 0


def test_damaged_or_foreign_verdicts_are_not_trusted(config: jail.HelperConfig) -> None:
    accel.verdict(config, print)
    (stored,) = config.state_dir.glob("accel-*.json")
    stored.write_text('{"accel": "kvm"')
    assert accel.verdict(config, print).accel == "kvm"
    assert _runs(config) == 2
    data = json.loads(stored.read_text())
    stored.write_text(json.dumps({**data, "key": {**data["key"], "boot_id": "another boot"}}))
    accel.verdict(config, print)
    assert _runs(config) == 3


def test_a_directory_others_can_write_is_not_used(config: jail.HelperConfig) -> None:
    config.state_dir.mkdir(mode=0o777)
    config.state_dir.chmod(0o777)
    log: list[str] = []
    assert accel.verdict(config, log.append).accel == "kvm"
    assert accel.verdict(config, log.append).accel == "kvm"
    assert _runs(config) == 2
    assert "not kept for the next deployments" in log[0] and "only this user can write" in log[0]
    assert list(config.state_dir.iterdir()) == []


def _deploy(config: jail.HelperConfig, queue: multiprocessing.Queue) -> None:
    log: list[str] = []
    queue.put((accel.choose_accel(config, log.append), log))


def test_deployments_starting_together_probe_once(config: jail.HelperConfig) -> None:
    (Path(config.qemu).parent / "delay").write_text("1.0")
    queue: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_deploy, args=(config, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    assert [accel for accel, _ in results] == ["kvm"] * 4
    assert _runs(config) == 1
    logs = [log[0] for _, log in results]
    assert sum(line.startswith("KVM probe: kvm") for line in logs) == 1
    assert sum("made by another deployment while this one waited" in line for line in logs) == 3
