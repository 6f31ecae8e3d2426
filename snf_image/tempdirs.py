"""Private temporary directories that a killed deployment cannot leave behind for long.

A SIGKILL runs none of our code, so a deployment killed that way cannot remove its
temporary directories (a converter's socket and log, qemu-nbd's socket, for an instant
the instance's new SSH host keys). Each is therefore named after its owner -- the
process id and the process's start time, which together never name another process --
and every deployment first removes those whose owner is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "snf-image-"
_OWNED = re.compile(rf"^{re.escape(PREFIX)}[a-z]+-(?P<pid>\d+)\.(?P<start>\d+)-")


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat), or None if there is none."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def private(purpose: str) -> tempfile.TemporaryDirectory[str]:
    """A new 0700 directory ``snf-image-<purpose>-<pid>.<start>-XXXX`` in TMPDIR, removed when closed."""
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{purpose}-{os.getpid()}.{_start_time(os.getpid())}-")


def remove_orphans(directory: Path | None = None) -> list[Path]:
    """Remove the private directories in TMPDIR (or ``directory``) of processes that are gone; what went."""
    where = Path(directory or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError), os.scandir(where) as entries:
        for entry in entries:
            owner = _OWNED.match(entry.name)
            if owner is None or _start_time(int(owner["pid"])) == owner["start"]:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue  # not one of ours: a link, a file, another user's
            shutil.rmtree(entry.path, ignore_errors=True)  # never follows links inside (rmtree.avoids_symlink_attacks)
            log.info("removed %s, left by a deployment that was killed", entry.path)
            removed.append(Path(entry.path))
    return removed
