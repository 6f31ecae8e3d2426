"""PID 1 of an image program's sandbox: build its root, pivot into it, run the program, report.

Started by :func:`helper.sandbox.run` as ``unshare --mount --pid ... --fork
python3 -m helper.confine`` with the :class:`~helper.sandbox.Plan` on its
stdin, still with every capability, in a private copy of the runner's mounts.
It joins the program's cgroup, assembles the new root in :data:`NEW_ROOT`
(see helper.sandbox for what it holds), makes it the namespace's root and
detaches the old one, says ``ready`` on the status pipe, then runs the
program under ``setpriv`` and reaps every orphan until the program ends;
its wait status is the last status line. As PID 1 its exit ends whatever
the program left running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .sandbox import BROKEN, EXITED, READY, Plan, SandboxError

#: An empty directory of the helper's root, where the new root is assembled.
NEW_ROOT = "/mnt"
#: Where the guest and the read-only extras may live: the new root has fresh tmpfs there.
SCRATCH = ("/tmp", "/run")
#: /proc as runc leaves it: kernel knobs read-only, revealing files masked.
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
PROC_MASKED_DIRS = ("acpi", "scsi", "asound")
DEV_NODES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "fd/0", "stdout": "fd/1", "stderr": "fd/2", "ptmx": "pts/ptmx"}
#: The exit code when the sandbox could not be built (the status pipe says why).
FAILED = 125

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MNT_DETACH = 2
SEALED = MS_NOSUID | MS_NODEV | MS_NOEXEC

_libc = ctypes.CDLL(None, use_errno=True)


def mounts_under(mountinfo: str, top: str) -> list[str]:
    """The mount points at or under ``top`` in a /proc/<pid>/mountinfo text, parents first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == top or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return sorted(found, key=lambda p: p.count("/"))


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def c(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    if _libc.mount(c(source), c(target), c(fstype), ctypes.c_ulong(flags), c(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {fstype or source} on {target}: {os.strerror(errno)}")


def _bind(source: str, target: str, flags: int, recursive: bool = False) -> None:
    """Bind ``source`` on ``target``, then give the bind mount (and, recursive, each under it) ``flags``."""
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    points = mounts_under(Path("/proc/self/mountinfo").read_text(), target) if recursive else [target]
    for point in points:
        kept = os.statvfs(point).f_flag & (MS_RDONLY | MS_NOEXEC)  # ST_RDONLY, ST_NOEXEC are the same bits
        _mount(None, point, None, MS_REMOUNT | MS_BIND | flags | kept)


def _make_dev(root: str, devices: Sequence[tuple[str, int, int]]) -> None:
    """A read-only /dev with the harmless nodes, pts, shm and the instance disks: nothing else exists."""
    dev = f"{root}/dev"
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m")
    for name, (major, minor) in DEV_NODES.items():
        os.mknod(f"{dev}/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    for name, link in DEV_LINKS.items():
        os.symlink(link, f"{dev}/{name}")
    for path, major, minor in devices:
        relative = os.path.normpath(path).removeprefix("/dev/")
        if relative.startswith(("/", "..")) or relative == ".":
            raise SandboxError(f"a disk outside /dev: {path}")
        os.makedirs(os.path.dirname(f"{dev}/{relative}"), exist_ok=True)
        os.mknod(f"{dev}/{relative}", stat.S_IFBLK | 0o660, os.makedev(major, minor))
    os.mkdir(f"{dev}/pts")
    os.mkdir(f"{dev}/shm")
    _mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    _mount("tmpfs", f"{dev}/shm", "tmpfs", SEALED, "mode=1777")
    _mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def _make_proc(root: str) -> None:
    """A /proc of the new PID namespace; the masks are binds of the new /dev/null."""
    proc = f"{root}/proc"
    _mount("proc", proc, "proc", SEALED)
    for name in PROC_READONLY:
        if os.path.exists(f"{proc}/{name}"):
            _bind(f"{proc}/{name}", f"{proc}/{name}", MS_RDONLY | SEALED)
    for name in PROC_MASKED_FILES:
        if os.path.exists(f"{proc}/{name}"):
            _mount(f"{root}/dev/null", f"{proc}/{name}", None, MS_BIND)
    for name in PROC_MASKED_DIRS:
        if os.path.isdir(f"{proc}/{name}"):
            _mount("tmpfs", f"{proc}/{name}", "tmpfs", MS_RDONLY | SEALED, "size=0")


def _keep(root: str, path: str, flags: int) -> None:
    """Bind the runner's ``path`` (and what is mounted under it) at the same place in the new root."""
    if not path.startswith(tuple(f"{s}/" for s in SCRATCH)) or "/.." in path:
        raise SandboxError(f"{path} is not under {' or '.join(SCRATCH)}")
    os.makedirs(f"{root}{path}", exist_ok=True)
    _bind(path, f"{root}{path}", flags, recursive=True)


def build_root(plan: Plan, root: str = NEW_ROOT) -> None:
    """Assemble the program's root at ``root`` (the stage's mount namespace is private)."""
    _bind("/", root, MS_RDONLY | MS_NOSUID | MS_NODEV)
    _make_dev(root, plan.devices)
    _make_proc(root)
    _mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | SEALED)
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _mount("tmpfs", f"{root}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _keep(root, plan.target, MS_NOSUID | MS_NODEV)
    for path in plan.readonly:
        _keep(root, path, MS_RDONLY | MS_NOSUID | MS_NODEV)


def pivot(root: str = NEW_ROOT) -> None:
    """Make ``root`` the namespace's root and detach the old one: nothing of the helper stays reachable."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.chdir(root)
        subprocess.run(["pivot_root", ".", "."], check=True, stdin=subprocess.DEVNULL)
        os.fchdir(old)  # the old root is now stacked over the new one: detach it (as runc does)
        if _libc.umount2(b".", MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), "cannot detach the old root")
        os.chdir("/")
    finally:
        os.close(old)


def main() -> int:
    """Build the sandbox, run the program, reap, report its wait status."""
    # PID 1 of a namespace gets from inside it only the signals it handles: Python's SIGINT
    # handler would let the program interrupt (and end) us with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    plan = Plan.from_json(sys.stdin.buffer.read())
    status = os.fdopen(plan.status_fd, "w", buffering=1)
    os.set_inheritable(plan.status_fd, False)
    try:
        Path(plan.cgroup, "cgroup.procs").write_text("0")
        build_root(plan)
        pivot()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    except (OSError, SandboxError, subprocess.CalledProcessError) as exc:
        status.write(f"{BROKEN}: {exc}\n")
        return FAILED
    status.write(f"{READY}\n")
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores them; an exec'd program must not
                signal.signal(getattr(signal, name), signal.SIG_DFL)
            os.execve(plan.argv[0], plan.argv, plan.env)
        except OSError as exc:
            os.write(2, f"cannot execute {plan.argv[0]}: {exc.strerror}\n".encode())
        finally:
            os._exit(127)
    while True:
        pid, wait_status = os.wait()
        if pid == child:
            status.write(f"{EXITED} {wait_status}\n")
            return 0


if __name__ == "__main__":
    sys.exit(main())
