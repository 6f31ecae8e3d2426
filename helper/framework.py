"""The task framework of the jail: declarations, context, and the rules that decide what runs.

A task is one module in the ``tasks`` package (model: cloud-init's cc_*.py):
its docstring is the user documentation, a module-level ``TASK = Task(...)``
declares when it applies, and ``run(ctx: Context) -> None`` does the work.
Nobody reads a task's body to know whether it runs: the runner reads the
declaration and applies, in this order (as the original's ``task_init_as``):

1. ``EXCLUDE_TASK_<Name>`` (any case) when the task is ``excludable``;
2. ``EXCLUDE_FILESYSTEMRESIZE_TASKS`` when it is a ``resize`` task;
3. ``EXCLUDE_MOUNTED_TASKS`` when it is a ``mounted`` task;
4. the ``CLOUD_INIT`` property when it is ``cloudinit_skip``;
5. the image's ``/root/snf-image/helper/overwrite_task_<Name>`` when it is
   ``overridable`` and ``ALLOW_MOUNTED_TASK_OVERWRITING`` is set (run in
   the sandbox of image programs, helper.sandbox);
6. the OS family: a task not declared for the image's family is a no-op.

Every task in the run gets a task-start and a task-end message, excluded
ones too (with a warning). A task fails by raising :class:`TaskError`; the
runner then stops, unmounts everything and reports the message.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from snf_image.contract.constants import OSFAMILIES
from snf_image.contract.rules import Rules

from . import disks, fsutil, sandbox
from .commands import TaskError, run_command
from .properties import Properties
from .windows import WindowsImage

log = logging.getLogger(__name__)

ALL = frozenset(OSFAMILIES)
LINUX = frozenset({"linux"})
BSD = frozenset({"freebsd", "netbsd", "openbsd"})
UNIX = LINUX | BSD
WINDOWS = frozenset({"windows", "windows-legacy"})

OVERWRITE_DIR = "/root/snf-image/helper"
OVERWRITE_PREFIX = "overwrite_task_"
OVERWRITE_RUN_TASK = 101  # the script's "now run the original task" exit code
#: What an image program's environment holds of the properties. The kernel refuses to start a
#: program with any one string over 128 KiB or all of them over a quarter of the stack limit, so
#: longer values (a large CUSTOM_TASK is the program itself) stay out rather than fail the task,
#: and the shortest values get in first.
PROPERTY_ENV_VALUE_LIMIT = 64 * 1024
PROPERTY_ENV_BUDGET = 1024 * 1024


@dataclass(frozen=True)
class Task:
    """When a task applies (the reference's attribute table, §7.2).

    name: CamelCase, also the progress task name and the EXCLUDE_TASK_ suffix.
    order: position in the run; ties broken by name.
    families: OS families the task does anything for.
    excludable: EXCLUDE_TASK_<Name> skips it.
    mounted: needs the image mounted; EXCLUDE_MOUNTED_TASKS skips it.
    resize: a filesystem resize task; EXCLUDE_FILESYSTEMRESIZE_TASKS skips it.
    cloudinit_skip: not run when the CLOUD_INIT property is set.
    overridable: the image may replace it (overwrite_task_<Name>).
    structural: part of the mounting machinery; with rules.only_tasks it
        still runs whenever a selected task needs the image mounted.
    """

    name: str
    order: int
    families: frozenset[str] = ALL
    excludable: bool = False
    mounted: bool = False
    resize: bool = False
    cloudinit_skip: bool = False
    overridable: bool = False
    structural: bool = False

    def __post_init__(self) -> None:
        if not self.name.isalnum() or not self.name[0].isalpha():
            raise ValueError(f"bad task name {self.name!r}")
        unknown = set(self.families) - ALL
        if unknown:
            raise ValueError(f"task {self.name}: unknown OS families {sorted(unknown)}")


class Reporter(Protocol):
    """Where the run's progress goes (the progress port, or a list in tests)."""

    def task_start(self, task: str) -> None: ...

    def task_end(self, task: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


@dataclass
class Context:
    """Everything a task may use; tasks read nothing else (no environment, no globals).

    rules: the deployment's rules, as the host sent them.
    disks: the instance's disk devices in Ganeti index order; ``device`` is
        the first, the one the image was written to.
    properties: the merged image properties, names case-insensitive.
    osfamily, root_partition, resize_partition: from the properties or
        auto-detected before any task runs (partition numbers as the kernel
        numbers them: /dev/vdb2 is 2).
    target: the mount point of the guest root (MountImage mounts it).

    The fields after these carry what one task learns for the later ones:

    bsd_duid: MountImage: the OpenBSD disklabel's uid, by which the image's
        fstab may name partitions (FilesystemResizeMounted).
    windows: the first Windows task: what tasks._windows.guest.image read.
    network_warnings: ConfigureNetwork and InitializeDatasource plan the
        NICs alike; each warning reaches the operator once.
    network_backups, backup_stamp: ConfigureNetwork: the guest files already
        backed up in this run, and the run's backup directory name.
    """

    rules: Rules
    properties: Properties
    disks: list[Path]
    reporter: Reporter
    target: Path
    osfamily: str = "linux"
    root_partition: int = 1
    resize_partition: int | None = None
    bsd_duid: str = ""
    windows: WindowsImage | None = None
    network_warnings: set[str] = field(default_factory=set)
    network_backups: set[str] = field(default_factory=set)
    backup_stamp: str = ""

    @property
    def device(self) -> Path:
        """The disk the image was deployed on."""
        return self.disks[0]

    @property
    def cloud_init(self) -> bool:
        """Whether cloud-init in the image does the configuration (CLOUD_INIT property)."""
        return self.properties.flag("CLOUD_INIT")

    def partition(self, number: int) -> Path:
        """The device node of partition ``number`` of the deployed disk (created if udev is absent)."""
        return disks.partition_device(self.device, number)

    def warning(self, message: str) -> None:
        """A warning the operator sees in the progress stream (and the console)."""
        log.warning("%s", message)
        self.reporter.warning(message)

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """:func:`run_command`: logs the command and raises CommandError on failure."""
        return run_command(argv, **kwargs)


@dataclass(frozen=True)
class LoadedTask:
    """A task module's declaration, entry point and documentation."""

    task: Task
    run: Callable[[Context], None]
    doc: str = ""

    @property
    def name(self) -> str:
        return self.task.name


def load_module(module: ModuleType) -> LoadedTask:
    """The task declared by ``module``; a module without a proper declaration is a bug."""
    task = getattr(module, "TASK", None)
    entry = getattr(module, "run", None)
    if not isinstance(task, Task) or not callable(entry):
        raise TypeError(f"{module.__name__} is not a task module (needs TASK = Task(...) and run(ctx))")
    return LoadedTask(task, entry, (module.__doc__ or "").strip())


def discover(package: str = "tasks") -> list[LoadedTask]:
    """Import every module of ``package`` and return its tasks sorted by (order, name)."""
    pkg = importlib.import_module(package)
    loaded = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_"):
            continue
        loaded.append(load_module(importlib.import_module(f"{package}.{info.name}")))
    names = [t.name.lower() for t in loaded]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate task names: {sorted(dupes)}")
    return sorted(loaded, key=lambda t: (t.task.order, t.name))


def select(tasks: Sequence[LoadedTask], only: Iterable[str] | None) -> list[LoadedTask]:
    """The tasks of this run: all, or rules.only_tasks plus the mounting machinery they need."""
    if only is None:
        return list(tasks)
    wanted = {name.lower() for name in only}
    known = {t.name.lower() for t in tasks}
    unknown = sorted(wanted - known)
    if unknown:
        raise TaskError(f"Unknown task(s) requested: {', '.join(unknown)}")
    chosen = [t for t in tasks if t.name.lower() in wanted]
    needs_mount = any(t.task.mounted and not t.task.structural for t in chosen)
    return [t for t in tasks if t.name.lower() in wanted or (needs_mount and t.task.structural)]


def exclusion(task: Task, properties: Properties) -> str | None:
    """The warning that excludes ``task`` under these properties, or None if it runs."""
    excluded = f"Task {task.name} was excluded and will not run."
    if task.excludable and properties.flag(f"EXCLUDE_TASK_{task.name}"):
        return excluded
    if task.resize and properties.flag("EXCLUDE_FILESYSTEMRESIZE_TASKS"):
        return excluded
    if task.mounted and properties.flag("EXCLUDE_MOUNTED_TASKS"):
        return excluded
    if task.cloudinit_skip and properties.flag("CLOUD_INIT"):
        return f"Task {task.name} not running when cloud-init enabled."
    return None


def find_overwrite(task: Task, ctx: Context) -> Path | None:
    """The image's executable overwrite_task_<Name>, resolved inside the guest root, or None."""
    if not task.overridable or not ctx.properties.flag("ALLOW_MOUNTED_TASK_OVERWRITING"):
        return None
    directory = fsutil.resolve(ctx.target, OVERWRITE_DIR)
    if not directory.is_dir():
        return None
    wanted = (OVERWRITE_PREFIX + task.name).lower()
    for entry in sorted(directory.iterdir()):
        if entry.name.lower() != wanted:
            continue
        script = fsutil.resolve(ctx.target, f"{OVERWRITE_DIR}/{entry.name}")
        if script.is_file() and os.access(script, os.X_OK):
            return script
    return None


def overwrite_env(ctx: Context, task: Task) -> dict[str, str]:
    """The environment of an image program (overwrite script, custom task): what it needs, no secrets.

    The properties are there as ``SNF_IMAGE_PROPERTY_<NAME>``, as the original exported them,
    within the limits above.
    """
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SNF_IMAGE_TASK": task.name,
        "SNF_IMAGE_TARGET": str(ctx.target),
        "SNF_IMAGE_DEV": str(ctx.device),
        "SNF_IMAGE_DEV_COUNT": str(len(ctx.disks)),
        "SNF_IMAGE_OSFAMILY": ctx.osfamily,
        "SNF_IMAGE_ROOT_PARTITION": str(ctx.root_partition),
        "SNF_IMAGE_RESIZE_PART": "" if ctx.resize_partition is None else str(ctx.resize_partition),
        "SNF_IMAGE_HOSTNAME": ctx.rules.instance_name,
    }
    for i, disk in enumerate(ctx.disks):
        env[f"SNF_IMAGE_DEV_{i}"] = str(disk)
    budget = PROPERTY_ENV_BUDGET
    for name, value in sorted(ctx.properties.items(), key=lambda item: len(item[1])):  # the short ones first
        entry = f"SNF_IMAGE_PROPERTY_{name}={value}".encode()
        if len(value.encode()) <= PROPERTY_ENV_VALUE_LIMIT and len(entry) < budget:
            env[f"SNF_IMAGE_PROPERTY_{name}"] = value
            budget -= len(entry) + 1
    return env


def _run_overwrite(script: Path, phase: str, ctx: Context, task: Task) -> int:
    """Run the image's script for ``phase`` in its sandbox; its exit code if it is one the phase allows."""
    program = sandbox.Program(
        argv=(str(script), phase), env=overwrite_env(ctx, task), target=ctx.target, disks=tuple(ctx.disks)
    )
    outcome = sandbox.run(program, sandbox.time_limit(ctx.properties))
    allowed = (0, OVERWRITE_RUN_TASK) if phase == "pre-exec" else (0,)
    shown = fsutil.guest_path(ctx.target, script)
    problem = outcome.failure(f"Task {task.name}: overwrite script {shown} {phase}", allowed)
    if problem is not None:
        raise TaskError(problem)
    return outcome.returncode or 0  # failure() has a reason for every other outcome


def run_one(loaded: LoadedTask, ctx: Context) -> None:
    """Run one task with task-start/task-end around it; a failure propagates without task-end."""
    task = loaded.task
    ctx.reporter.task_start(task.name)
    log.info("Task %s: starting", task.name)
    reason = exclusion(task, ctx.properties)
    if reason is not None:
        ctx.warning(reason)
        ctx.reporter.task_end(task.name)
        return
    script = find_overwrite(task, ctx)
    if script is not None:
        shown = fsutil.guest_path(ctx.target, script)
        ctx.warning(f"Task {task.name} was overwritten by file: `{shown}'")
        if _run_overwrite(script, "pre-exec", ctx, task) == OVERWRITE_RUN_TASK:
            _run_body(loaded, ctx)
            _run_overwrite(script, "post-exec", ctx, task)
    else:
        _run_body(loaded, ctx)
    log.info("Task %s: done", task.name)
    ctx.reporter.task_end(task.name)


def _run_body(loaded: LoadedTask, ctx: Context) -> None:
    """The task's work; an OSError on the way is the image's (a corrupt or full filesystem): a TaskError."""
    if ctx.osfamily not in loaded.task.families:
        log.info("Task %s: nothing to do for OS family %s", loaded.name, ctx.osfamily)
        return
    try:
        loaded.run(ctx)
    except OSError as exc:
        log.info("Task %s: %r", loaded.name, exc)
        raise TaskError(f"Task {loaded.name} failed on the image: {describe_os_error(exc, ctx.target)}") from None


def describe_os_error(exc: OSError, target: Path) -> str:
    """``exc`` in one line, its file named as the guest names it when it is the guest's."""
    text = exc.strerror or type(exc).__name__
    if isinstance(exc.filename, str):
        name = Path(exc.filename)
        shown = fsutil.guest_path(target, name) if name.is_relative_to(target) else exc.filename
        text = f"{text}: {shown}"
    return text


def run_tasks(tasks: Sequence[LoadedTask], ctx: Context) -> None:
    """Run ``tasks`` in order; the first failure stops the run (the caller cleans up)."""
    for loaded in tasks:
        run_one(loaded, ctx)
