"""Signals unwind a deployment, and children cannot outlive it: real signals, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from snf_image import lifecycle
from snf_image.lifecycle import INHERITED_VARIABLES, Interrupted, spawned, termination_raises, uninterrupted
from tests import leftovers


def test_children_get_a_minimal_environment(monkeypatch):
    monkeypatch.setenv("OSP_IMG_PASSWD", "hunter2-in-env")
    monkeypatch.setenv("HTTP_PROXY", "http://user:pw@proxy")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = lifecycle.child_env()
    assert set(env) <= set(INHERITED_VARIABLES) and env["LANG"] == "C.UTF-8" and env["PATH"]
    with spawned(["cat", "/proc/self/environ"], grace=1, stdout=subprocess.PIPE) as proc:
        seen = proc.stdout.read().split(b"\0")
        proc.wait()
    assert not [v for v in seen if b"hunter2" in v or b"proxy" in v]


@pytest.mark.parametrize("sig", lifecycle.TERMINATION_SIGNALS)
def test_the_first_signal_raises_later_ones_are_ignored(sig):
    with pytest.raises(Interrupted) as caught, termination_raises():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)
        finally:  # the cleanup runs, and another signal does not cut it short
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert caught.value.signum == sig
    assert str(caught.value).startswith(f"interrupted by {signal.Signals(sig).name}; ")
    assert signal.getsignal(sig) is not lifecycle._on_signal  # the previous handlers are back


def test_uninterrupted_holds_a_signal_until_its_end():
    steps = []
    with pytest.raises(Interrupted) as caught, termination_raises():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            steps.append("held")
        steps.append("not reached")
    assert steps == ["held"] and caught.value.signum == signal.SIGHUP


def test_a_missing_program_is_an_error_here(tmp_path):
    with pytest.raises(FileNotFoundError), spawned([str(tmp_path / "nope")], grace=1):
        pass


def _sleeper(tmp_path):
    """``sleep``, under a name that carries the test's directory (the marker the checker looks for)."""
    sleeper = tmp_path / "sleeper"
    sleeper.symlink_to("/usr/bin/sleep")
    return str(sleeper)


def test_the_child_and_its_group_are_stopped_with_the_block(tmp_path):
    watch = leftovers.Watch(marker=tmp_path)
    sleeper = _sleeper(tmp_path)
    with spawned(["sh", "-c", f"{sleeper} 300 & exec {sleeper} 301"], grace=1) as proc:
        time.sleep(0.2)
        assert len([p for p in leftovers.descendants() if str(tmp_path) in leftovers.cmdline(p)]) == 2
    assert proc.returncode == -signal.SIGTERM
    _, left = watch.wait_clean(2)
    assert not left, left


def test_a_child_that_ignores_sigterm_is_killed_after_its_grace(tmp_path):
    start = time.monotonic()
    with spawned(["sh", "-c", "trap '' TERM; sleep 300"], grace=0.5) as proc:
        time.sleep(0.2)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - start < 3


def test_a_sigkilled_parent_takes_its_children_along(tmp_path):
    """The parent runs no code when SIGKILLed: the parent-death signal does the work."""
    watch = leftovers.Watch(marker=tmp_path)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from snf_image.lifecycle import spawned\n"
            f"with spawned(['{_sleeper(tmp_path)}', '300'], grace=1):\n"
            "    print('started', flush=True)\n"
            "    time.sleep(300)\n",
        ],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert parent.stdout.readline() == b"started\n"
    assert [p for p in leftovers.descendants() if str(tmp_path) in leftovers.cmdline(p)]
    parent.kill()
    parent.wait()
    parent.stdout.close()
    seconds, left = watch.wait_clean(5)
    assert not left, left
    assert seconds < 1
