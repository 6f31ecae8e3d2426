"""What the helper's kernels offer the tasks and the image-code sandbox, tried for real inside the helper VM.

tests/kernelprobe.py runs as the helper's PID 1 and tries each feature: all
namespaces at once with unshare(1), capabilities dropped with setpriv(1), a
cgroup v2 process and memory limit on a child, a seccomp filter. The sandbox of
image-supplied programs relies on every one of them under both kernels the
helper can boot: its own (the default, from kernel.config) and Debian's (the
fallback).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest

from snf_image import jail
from tests.helpervm import ensure_helper, probe_helper_dir, probe_rules

pytestmark = pytest.mark.vm

KERNELPROBE = Path(__file__).resolve().parent.parent / "kernelprobe.py"
KERNELS = ("custom", "debian")


@functools.cache
def probe(kernel: str) -> dict[str, dict]:
    """The probe's findings under one kernel, by check name (one boot per kernel and session)."""
    with tempfile.TemporaryDirectory(prefix="snf-kernelprobe-") as tmp:
        probe_dir = probe_helper_dir(ensure_helper(kernel), Path(tmp) / "h", {"kernelprobe": KERNELPROBE})
        config = jail.HelperConfig(helper_dir=probe_dir, runner="kernelprobe", accel="tcg", soft_timeout=120.0)
        progress: list[dict] = []
        log: list[str] = []
        try:
            rules, token = probe_rules({"kernelprobe": True})
            jail.run_helper(config, [], rules, progress.append, log.append, token=token)
        except jail.HelperError as exc:
            raise AssertionError("\n".join([str(exc), *log])) from None
    found = [json.loads(m["messages"][0]) for m in progress if m.get("subtype") == "warning"]
    return {f.pop("check"): f for f in found}


@pytest.fixture(params=KERNELS)
def facts(request) -> dict[str, dict]:
    return probe(request.param)


def test_all_namespaces_at_once(facts) -> None:
    """unshare --mount --pid --ipc --uts --net (--cgroup) --fork: each one new, nothing leaks out."""
    found = facts
    ns = found["namespaces"]
    assert ns["unshare_rc"] == 0, ns["unshare_stderr"]
    inside, outside = ns["inside"], ns["outside"]
    assert {name for name in outside if inside["ns"][name] == outside[name]} == set()
    assert inside["pid"] == 1 and inside["processes"] == [1]
    assert inside["hostname"] == "sandboxed" and ns["hostname_after"] != "sandboxed"
    assert inside["mounted"] is True and ns["mount_leaked"] is False


def test_capabilities_dropped(facts) -> None:
    found = facts
    caps = found["capabilities"]
    assert caps["setpriv_rc"] == 0
    assert {caps[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd")} == {"0000000000000000"}
    assert caps["NoNewPrivs"] == "1"


def test_cgroup2_limits_processes_and_memory(facts) -> None:
    """pids.max 4 lets the child start 3 more (then EAGAIN); memory.max 16M kills a 64 MiB writer."""
    found = facts
    cg = found["cgroups"]
    assert {"pids", "memory"} <= set(cg["controllers"])
    assert cg["values"]["pids.max"] == "4" and cg["values"]["memory.max"] == str(16 << 20)
    assert cg["forks"] == {"started": 3, "failure": "EAGAIN"}
    assert int(cg["values"]["pids.events"].split()[1]) >= 1  # "max N": forks refused
    assert cg["memory"] == {"killed_by": 9}
    assert "oom_kill 1" in cg["values"]["memory.events"].splitlines()


def test_seccomp_filter(facts) -> None:
    found = facts
    assert found["seccomp"] == {"installed": True, "uname": "EPERM", "getpid_works": True, "mode": "2"}


def test_filesystems_the_tasks_mount_are_built_in() -> None:
    """Our kernel has every filesystem the tasks mount, check or grow (Debian's loads modules on demand)."""
    found = probe("custom")["filesystems"]
    wanted = {"ext4", "xfs", "btrfs", "vfat", "msdos", "fuse", "ntfs3", "ufs", "tmpfs", "cgroup2", "mqueue"}
    assert wanted <= set(found["filesystems"])
    assert found["dev_fuse"] is True  # ntfs-3g
