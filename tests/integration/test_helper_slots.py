"""HELPER_MAX_RUNNING: real processes queue for the node's helper slots in arrival order, killed ones free theirs.

Each deployment here is a process that takes a slot with snf_image.helperslots, as
deploy.customize does, says so on stdout, and holds it until the test closes its stdin.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snf_image.errors import OperatorError
from snf_image.helperslots import helper_slot

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 20.0

HOLDER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from snf_image.helperslots import helper_slot

def say(text):
    print(text, flush=True)

with helper_slot(int(sys.argv[2]), Path(sys.argv[3]), say):
    say("got")
    sys.stdin.read()
"""


class Deployment:
    """One process in line for a slot; its stdout lines are what helper_slot told it."""

    def __init__(self, name: str, limit: int, directory: Path) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(REPO), str(limit), str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.lines: list[str] = []
        self._partial = b""

    def read(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            self._partial += os.read(self.proc.stdout.fileno(), 65536)
        *complete, self._partial = self._partial.split(b"\n")
        self.lines += [line.decode() for line in complete]
        return self.lines

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not any(text in line for line in self.read()):
            assert self.proc.poll() is None, f"{self.name} ended: {self.lines}"
            assert time.monotonic() < deadline, f"{self.name} never said {text!r}: {self.lines}"
            time.sleep(0.02)

    @property
    def has_slot(self) -> bool:
        return "got" in self.read()

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(DEADLINE) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if not stream.closed:
                stream.close()


@pytest.fixture
def line(tmp_path):
    """Start deployments in line for ``tmp_path/slots``; all gone at the end."""
    started: list[Deployment] = []

    def start(name: str, limit: int = 1) -> Deployment:
        deployment = Deployment(name, limit, tmp_path / "slots")
        started.append(deployment)
        return deployment

    yield start
    for deployment in started:
        deployment.close()


def settle() -> None:
    """Long enough for a waiter that wrongly took a slot to say so (the first in line polls every 50 ms)."""
    time.sleep(0.5)


def test_waiters_get_the_slot_in_arrival_order_and_know_their_place(line):
    holder = line("holder")
    holder.wait_for("got")
    waiters = []
    for ahead, name in enumerate(["first", "second", "third"]):
        waiter = line(name)
        waiter.wait_for(f"all 1 are taken (HELPER_MAX_RUNNING), {ahead} deployment(s) ahead of this one")
        waiters.append(waiter)
    settle()
    assert not any(w.has_slot for w in waiters)
    current = holder
    for index, waiter in enumerate(waiters):
        current.release()
        waiter.wait_for("got")
        settle()
        assert not any(w.has_slot for w in waiters[index + 1 :]), "a later arrival overtook"
        current = waiter
    assert any(line.startswith("Got a helper VM slot after waiting") for line in waiters[0].lines)
    current.release()


def test_the_limit_is_the_number_of_helpers_at_once(line):
    two = [line("a", limit=2), line("b", limit=2)]
    for deployment in two:
        deployment.wait_for("got")
    third = line("c", limit=2)
    third.wait_for("all 2 are taken")
    settle()
    assert not third.has_slot
    two[1].release()
    third.wait_for("got")
    two[0].release()
    third.release()


def test_killed_deployments_hold_no_slot_and_no_place_in_line(line, tmp_path):
    holder = line("holder")
    holder.wait_for("got")
    first, doomed, last = line("first"), None, None
    first.wait_for("0 deployment(s) ahead")
    doomed = line("doomed")
    doomed.wait_for("1 deployment(s) ahead")
    last = line("last")
    last.wait_for("2 deployment(s) ahead")
    doomed.kill()  # a waiter killed in line: the one behind it moves up
    last.wait_for("1 deployment(s) ahead")
    holder.kill()  # a deployment killed with its slot: the kernel frees it
    first.wait_for("got")
    first.release()
    last.wait_for("got")
    last.release()
    newcomer = line("newcomer")  # takes the free slot at once and removes the dead waiter's ticket
    newcomer.wait_for("got")
    assert not [n for n in os.listdir(tmp_path / "slots") if n.startswith("ticket-")]
    newcomer.release()


def test_no_limit_takes_no_slot(tmp_path):
    said: list[str] = []
    with helper_slot(0, tmp_path / "slots", said.append), helper_slot(0, tmp_path / "slots", said.append):
        pass
    assert said == [] and not (tmp_path / "slots").exists()


@pytest.mark.parametrize("problem", ["world-writable", "a file", "a symlink"])
def test_an_unsafe_slots_directory_is_refused(tmp_path, problem):
    directory = tmp_path / "slots"
    if problem == "world-writable":
        directory.mkdir(mode=0o777)
        directory.chmod(0o777)
    elif problem == "a file":
        directory.write_text("")
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        directory.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OperatorError, match="HELPER_SLOTS_DIR"), helper_slot(1, directory, print):
        pass
