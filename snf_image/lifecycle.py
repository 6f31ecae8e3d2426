"""How a deployment ends: a termination signal unwinds it like an error, and no child outlives it.

Ganeti kills an OS script that outlives its timeout (SIGTERM, later SIGKILL), an operator
presses Ctrl-C on ``snf-image deploy``, a terminal hangs up. Under :func:`termination_raises`
the first SIGTERM, SIGINT or SIGHUP raises :class:`Interrupted` in the main thread, so every
``with`` and ``finally`` on the way out runs -- the helper VM, qemu-nbd, converters and the
progress monitor are stopped, temporary files removed -- and the entry point reports one error.
Later signals are ignored: they must not cut that cleanup short.

Every child starts through :func:`spawned`:

* with :func:`child_env`, a minimal environment -- never the ``OSP_*`` secrets Ganeti hands us;
* in a session of its own, so a terminal's Ctrl-C reaches us and we stop the children in order,
  and :func:`signal_group` reaches whatever the child started in turn;
* with a parent-death signal (``setpriv --pdeathsig``), so that even a SIGKILL of this process,
  which runs no code at all, takes the child down. A child that changes its credentials
  (qemu's ``-runas``) loses that signal: run it under a supervisor that keeps it
  (:mod:`snf_image.jail.vm` uses coreutils' ``timeout``, whose own deadline also covers a
  SIGKILL in the instant before setpriv has set the signal). The signal follows the *thread*
  that started the child: children are started from the main thread, which lives as long as we do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

#: The signals that stop a deployment (Ganeti's timeout, Ctrl-C, a hang-up).
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: util-linux: sets the parent-death signal, then executes the child.
SETPRIV = "/usr/bin/setpriv"
#: What a child inherits from our environment; everything else (OSP_*, credentials) stays here.
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
#: Ganeti's PATH, for a child when we have none.
DEFAULT_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"


class Interrupted(BaseException):
    """A termination signal arrived: the deployment stops, unwinding like an error.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way
    swallows it; the entry points catch it and report it as one error.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; the deployment was stopped and cleaned up")


class _State:
    """Shared by the handler and the main thread (the only thread a Python signal handler runs in)."""

    active = False  # a termination_raises() block is running
    raised = False  # Interrupted was raised: the cleanup runs, later signals are ignored
    held = 0  # depth of uninterrupted() blocks
    pending: int | None = None  # a signal that arrived while held


def _on_signal(signum: int, _frame: object) -> None:
    if not _State.active or _State.raised:
        return
    if _State.held:
        if _State.pending is None:
            _State.pending = signum
        return
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """Within the block, the first termination signal raises :class:`Interrupted` (main thread only)."""
    previous = {sig: signal.signal(sig, _on_signal) for sig in TERMINATION_SIGNALS}
    _State.active, _State.raised, _State.held, _State.pending = True, False, 0, None
    try:
        yield
    finally:
        _State.active = False  # from here on a signal changes nothing: we are on our way out
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold termination signals over a step that must not be cut in half.

    Starting a child and taking charge of it, or stopping one: a signal that arrives meanwhile
    is raised when the block ends (outside the main thread, where no handler runs, this holds nothing).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.held += 1
    try:
        yield
    finally:
        _State.held -= 1
        if not _State.held and _State.pending is not None and _State.active and not _State.raised:
            signum, _State.pending = _State.pending, None
            _State.raised = True
            raise Interrupted(signum)


def forget_parameters(environ: MutableMapping[str, str]) -> None:
    """Take the OS parameters (``OSP_*``: passwords, keys, user-data, URLs with tokens) out of ``environ``.

    The entry points call it on their own environment once they have read it: :func:`child_env`
    keeps the secrets from the children we start, this from those a library starts on its own
    (loading libparted runs ``dmidecode`` through popen(3), with the whole environment).
    """
    for name in [name for name in environ if name.startswith("OSP_")]:
        del environ[name]


def child_env() -> dict[str, str]:
    """The environment of every child: PATH, locale, time zone and TMPDIR, nothing else."""
    env = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the child's process group: the child and whatever it started.

    Only while the child is not reaped (running, or a zombie): until then its pid, which is
    the group's id, cannot be given to another process.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the child's group, SIGKILL to what is left after ``grace`` seconds; reaped either way."""
    with uninterrupted():
        if proc.returncode is not None:
            return  # reaped already: it ended
        pidfd = os.pidfd_open(proc.pid)
        try:
            if not select.select([pidfd], [], [], 0)[0]:
                signal_group(proc, signal.SIGTERM)
                select.select([pidfd], [], [], grace)
            signal_group(proc, signal.SIGKILL)  # also what the child left behind in its group
        finally:
            os.close(pidfd)
        proc.wait()


@contextlib.contextmanager
def spawned(
    argv: Sequence[str], *, grace: float, parent_death: signal.Signals | None = signal.SIGTERM, **popen: Any
) -> Iterator[subprocess.Popen]:
    """A child for the duration of the block, stopped (:func:`stop`) when the block ends.

    ``parent_death`` is the signal the child gets if this process dies (None: none, e.g. for a
    child that must outlive us). ``popen`` takes subprocess.Popen's other arguments (stdio, pass_fds).
    """
    env = child_env()
    program = shutil.which(argv[0], path=env["PATH"])
    if program is None:  # say so here: behind setpriv it would only be an exit code
        raise FileNotFoundError(errno.ENOENT, "no such program", argv[0])
    command = [program, *argv[1:]]
    if parent_death is not None:
        command = [SETPRIV, f"--pdeathsig={parent_death.name}", "--", *command]
    proc = None
    try:
        with uninterrupted():  # a signal now would lose the child between fork and assignment
            proc = subprocess.Popen(command, env=env, start_new_session=True, close_fds=True, **popen)
        yield proc
    finally:
        if proc is not None:
            stop(proc, grace)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
