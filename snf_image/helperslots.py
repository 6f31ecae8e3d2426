"""At most HELPER_MAX_RUNNING helper VMs on the node at once; the other deployments wait in line.

Ganeti runs jobs in parallel, and under TCG each helper VM takes a whole core
(and HELPER_MEMORY of RAM): unbounded, ten deployments started together all
run ten times slower. So a deployment holds one of ``limit`` slots while its
helper VM runs, and the deployments that find every slot taken wait in the
order they came.

All of it is ``flock`` on files of one root-only directory (HELPER_SLOTS_DIR):

- ``slot-<i>`` (``i`` < limit): locked by the deployment whose helper runs in it;
- ``ticket-<n>``: a waiting deployment's place in line, locked from the moment
  it is created (numbered after every ticket present, under ``queue.lock``)
  until the deployment takes a slot or dies.

The first in line polls the slots (every :data:`POLL_INTERVAL` seconds); every
other waiter sleeps in ``flock`` on the ticket just ahead of it, so when the
first takes a slot exactly one waiter wakes: no thundering herd, and strict
arrival order. The kernel drops a process's locks when it dies, so a killed
deployment, waiting or running, leaves no slot taken and blocks nobody; the
next arrival removes its ticket file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OperatorError

DEFAULT_DIR = Path("/run/snf-image/helper-slots")
SLOT_PREFIX = "slot-"
TICKET_PREFIX = "ticket-"
QUEUE_LOCK = "queue.lock"
#: Seconds between two looks at the slots by the first deployment in line.
POLL_INTERVAL = 0.05


@contextlib.contextmanager
def helper_slot(limit: int, directory: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold one of the node's ``limit`` helper slots for the block, waiting in line for it first.

    ``on_wait`` gets a message when the deployment starts waiting, each time it
    learns that its place in line changed, and when it gets its slot. A limit
    of 0 means no limit.
    """
    if limit <= 0:
        yield
        return
    slot = _Line(directory, limit).wait(on_wait)
    try:
        yield
    finally:
        os.close(slot)


class _Line:
    """The slots and the waiting deployments' tickets in one directory."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit

    def wait(self, on_wait: Callable[[str], None]) -> int:
        """A locked slot's descriptor, once every deployment that came earlier has one."""
        self._prepare()
        number, ticket = self._take_ticket()
        started = time.monotonic()
        reported: int | None = None
        try:
            while True:
                ahead = self._live_tickets_before(number)
                slot = None if ahead else self._free_slot()
                if slot is not None:
                    if reported is not None:
                        on_wait(f"Got a helper VM slot after waiting {time.monotonic() - started:.1f} s.")
                    return slot
                if len(ahead) != reported:
                    reported = len(ahead)
                    on_wait(
                        f"Waiting for a helper VM slot: all {self.limit} are taken (HELPER_MAX_RUNNING), "
                        f"{reported} deployment(s) ahead of this one."
                    )
                if ahead:
                    self._wait_for(ahead[-1])
                else:
                    time.sleep(POLL_INTERVAL)
        finally:
            _unlink(self._path(f"{TICKET_PREFIX}{number}"))
            os.close(ticket)

    def _prepare(self) -> None:
        """The directory: made root-only if missing; refused if it is not ours."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
        except OSError as exc:
            raise OperatorError(f"cannot use HELPER_SLOTS_DIR {self.directory}: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise OperatorError(
                f"HELPER_SLOTS_DIR {self.directory} must be a directory of uid {os.geteuid()} "
                "that nobody else can write to"
            )

    def _path(self, name: str) -> Path:
        return self.directory / name

    def _tickets(self) -> list[int]:
        numbers = []
        for name in os.listdir(self.directory):
            digits = name[len(TICKET_PREFIX) :]
            if name.startswith(TICKET_PREFIX) and digits.isdigit():
                numbers.append(int(digits))
        return sorted(numbers)

    def _take_ticket(self) -> tuple[int, int]:
        """(number, locked descriptor) of a new ticket behind every live one; dead tickets are removed."""
        queue = _open(self._path(QUEUE_LOCK))
        try:
            fcntl.flock(queue, fcntl.LOCK_EX)
            last = 0
            for number in self._tickets():
                path = self._path(f"{TICKET_PREFIX}{number}")
                if _held(path, fcntl.LOCK_EX):
                    last = number
                else:
                    _unlink(path)  # its deployment is gone; nobody can take this name meanwhile
            fd = _open(self._path(f"{TICKET_PREFIX}{last + 1}"))
            fcntl.flock(fd, fcntl.LOCK_EX)
            return last + 1, fd
        finally:
            os.close(queue)

    def _live_tickets_before(self, number: int) -> list[int]:
        """The tickets ahead of ``number`` whose deployments still wait, in order."""
        return [n for n in self._tickets() if n < number and _held(self._path(f"{TICKET_PREFIX}{n}"), fcntl.LOCK_SH)]

    def _free_slot(self) -> int | None:
        for index in range(self.limit):
            fd = _open(self._path(f"{SLOT_PREFIX}{index}"))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return fd
        return None

    def _wait_for(self, number: int) -> None:
        """Sleep until the deployment holding ticket ``number`` takes a slot or dies."""
        try:
            fd = os.open(self._path(f"{TICKET_PREFIX}{number}"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _held(path: Path, probe: int) -> bool:
    """Whether somebody holds a lock on ``path`` (a missing file: nobody)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, probe | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
