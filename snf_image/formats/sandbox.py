"""The sandbox the image converter runs in: nobody's rights, nothing of the host, limits.

Container formats are parsed by qemu, a large C program, on bytes anyone can craft. It runs:

* as the unprivileged user of ``HELPER_USER`` (the helper VM's qemu user; root is refused),
  without supplementary groups or capabilities;
* in its own user, mount, PID, IPC, network, UTS and cgroup namespaces (bubblewrap), unable to
  make further user namespaces;
* on an empty root holding only read-only system libraries, the programs it runs, and
  ``/dev/null``, ``/dev/zero`` and ``/dev/urandom``: no /proc, /sys, /etc, /tmp, no host file;
* under prlimit limits, as OpenStack runs qemu-img: address space (``CONVERTER_MEMORY``),
  CPU seconds (``CONVERTER_CPU_TIME``), 1 MiB of written file (its log) and no core dump;
* in a session of its own (no terminal to inject into), with an empty environment;
* dying with the process that started it (``--die-with-parent``: PR_SET_PDEATHSIG), so a
  killed deployment leaves no converter behind, whatever the deployment could still run;
* with only the file descriptors it is handed.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import select
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import OperatorError
from ..settings import Settings

BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"
#: Read-only in the sandbox: shared libraries (and Python's standard library).
SYSTEM_DIRS = ("/usr/lib", "/usr/lib64")
#: The stderr log the sandbox may write (RLIMIT_FSIZE); a flood kills the writer.
LOG_LIMIT = 1024 * 1024
#: Seconds to wait for the namespace to empty once bubblewrap is killed.
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class SandboxConfig:
    """Who the converter runs as and what it may use."""

    user: str
    memory_mib: int
    cpu_seconds: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        return cls(settings.helper_user, settings.converter_memory, max(1, math.ceil(settings.converter_cpu_time)))


def identity(user: str) -> tuple[int, int]:
    """The uid and gid of the converter's user; OperatorError unless it exists and is unprivileged."""
    if not user:
        raise OperatorError("setting HELPER_USER is empty: the image converter must run as an unprivileged user")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise OperatorError(f"setting HELPER_USER: there is no user {user!r} on this node") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise OperatorError(f"setting HELPER_USER: {user!r} is privileged; the image converter must not run as root")
    return entry.pw_uid, entry.pw_gid


def command(config: SandboxConfig, argv: Sequence[str], binds: Mapping[str, str]) -> list[str]:
    """prlimit + bubblewrap around ``argv``; ``binds`` maps host files to their read-only place inside."""
    limits = [
        f"--as={config.memory_mib * 1024 * 1024}",
        f"--cpu={config.cpu_seconds}",
        f"--fsize={LOG_LIMIT}",
        "--core=0",
    ]
    mounts: list[str] = []
    for directory in SYSTEM_DIRS:
        if os.path.isdir(directory):
            mounts += ["--ro-bind", directory, directory, "--symlink", directory.lstrip("/"), directory[4:]]
    for source, inside in binds.items():
        mounts += ["--ro-bind", source, inside]
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        mounts += ["--dev-bind", device, device]
    isolation = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    isolation += ["--cap-drop", "ALL", "--hostname", "snf-image-converter", "--chdir", "/"]
    return [PRLIMIT, *limits, "--", BWRAP, *isolation, *mounts, "--", *argv]


class Sandbox:
    """A running sandbox: the bubblewrap process started here, and the init of its PID namespace.

    When that init exits, the kernel has killed every other process of the namespace, so
    :meth:`stop` returns only once nothing of the sandbox runs any more.
    """

    def __init__(self, process: subprocess.Popen[bytes], init_pidfd: int | None) -> None:
        self.process = process
        self._init_pidfd = init_pidfd

    def wait(self, timeout: float) -> int:
        """bubblewrap's exit status (128 + N for a sandbox ended by signal N); TimeoutExpired if it runs."""
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Kill the sandbox and wait until all of it is gone."""
        self.process.kill()  # its init gets SIGKILL too (--die-with-parent), and the namespace with it
        self.process.wait()
        if self._init_pidfd is not None:
            select.select([self._init_pidfd], [], [], STOP_TIMEOUT)
            os.close(self._init_pidfd)
            self._init_pidfd = None


def spawn(
    config: SandboxConfig, argv: Sequence[str], binds: Mapping[str, str], pass_fds: Sequence[int], log_fd: int
) -> Sandbox:
    """Start ``argv`` in the sandbox with exactly ``pass_fds`` (and ``log_fd`` as its stdout/stderr)."""
    uid, gid = identity(config.user)
    info_read, info_write = os.pipe()
    try:
        wrapped = command(config, argv, binds)
        wrapped[wrapped.index(BWRAP) + 1 : wrapped.index(BWRAP) + 1] = ["--info-fd", str(info_write)]
        process = subprocess.Popen(
            wrapped,
            user=uid,
            group=gid,
            extra_groups=[],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(*pass_fds, info_write),
        )
        os.close(info_write)
        info_write = -1
        with os.fdopen(info_read, "rb") as info:
            info_read = -1
            started = info.read(4096)  # bubblewrap writes it once the sandbox runs, then closes it
    finally:
        for fd in (info_read, info_write):
            if fd >= 0:
                os.close(fd)
    return Sandbox(process, _pidfd(started))


def _pidfd(info: bytes) -> int | None:
    """A pidfd of the namespace's init named in bubblewrap's info (None if it is already gone)."""
    try:
        pid = int(json.loads(info)["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):
        return None
