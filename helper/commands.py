"""How the jail runs programs, and the errors a task raises.

Everything in the jail that runs an external program goes through
:func:`run_command`; every task failure is a :class:`TaskError` whose message
is the one line the operator reads. Kept apart from the task framework so
that the disk and detection modules can use both without importing it.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from snf_image.contract.errors import ImageError

log = logging.getLogger(__name__)


class TaskError(ImageError):
    """A task failed; the message is the one-line reason the operator reads."""


class CommandError(TaskError):
    """An external command failed; carries its output for the console log."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, log it and its output to the console, return its result.

    The one way the jail runs programs: an argument list (never a shell
    string), output captured as text. With ``check`` a non-zero exit raises
    :class:`CommandError` whose message names the command and the last
    line of its error output.
    """
    args = [os.fspath(a) for a in argv]
    log.info("+ %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{shlex.join(args)} did not finish in {timeout} s") from exc
    output = (proc.stdout or "") + (proc.stderr or "")
    for line in output.splitlines():
        log.info("  %s", line)
    if check and proc.returncode != 0:
        last = next((ln.strip() for ln in reversed((proc.stderr or proc.stdout or "").splitlines()) if ln.strip()), "")
        detail = f": {last}" if last else ""
        raise CommandError(f"{Path(args[0]).name} failed with exit code {proc.returncode}{detail}", output)
    return proc
