"""The jail's init: read the rules, find the disks, detect the OS, run the tasks, report, power off.

Started by the helper initramfs as ``switch_root /newroot /usr/bin/python3 -m
helper.runner`` (PID 1). :func:`main` does the PID 1 work (serial ports,
kernel command line, power-off); :func:`run` is the deployment logic and
takes everything it needs as arguments, so tests drive it without a VM.

Channels: human text goes to the console (stdout/stderr, ttyS0); progress
lines (``snf_image.contract.messages.HelperLine``) to ttyS2; the result
(``messages.Result``: ``SUCCESS <the rules' result_token>`` or ``ERROR:
<reason>``, one line) to ttyS1. Only the result line decides success on the
host, and image-supplied programs, which run sandboxed (helper.sandbox),
can reach neither the ports nor the token.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from snf_image.contract import messages
from snf_image.contract.constants import (
    CMDLINE_ACTIVATE,
    CMDLINE_DEBUG,
    HELPER_ERROR,
    HELPER_MAX_LINES,
    OSFAMILIES,
    RULES_MAX_BYTES,
    SERIAL_RULES,
    TTY_DEBUG,
    TTY_PROGRESS,
    TTY_RESULT,
)
from snf_image.contract.errors import SnfImageError
from snf_image.contract.messages import Result
from snf_image.contract.rules import Rules, RulesError

from . import detect, disks, framework
from .commands import CommandError, TaskError
from .framework import Context, LoadedTask
from .properties import Properties

log = logging.getLogger("helper")

CMDLINE = Path("/proc/cmdline")
RESULT_PORT = TTY_RESULT
PROGRESS_PORT = TTY_PROGRESS
DISK_WAIT = 10.0
RB_POWER_OFF = 0x4321FEDC
#: Partitions whose rejection the detection failure names (each is also a warning of its own).
MAX_REASONS_SHOWN = 3


class ProgressReporter:
    """Writes progress lines (contract.messages), one per line, within the host's count limit."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._count = 0

    def _send(self, line: messages.HelperLine) -> None:
        # keep the last lines for the error that ends a run
        if self._count >= HELPER_MAX_LINES - 2 and line.subtype != HELPER_ERROR:
            return
        self._count += 1
        self._stream.write(line.to_json() + "\n")
        self._stream.flush()

    def task_start(self, task: str) -> None:
        self._send(messages.task_start(task))

    def task_end(self, task: str) -> None:
        self._send(messages.task_end(task))

    def warning(self, message: str) -> None:
        self._send(messages.warning(message))

    def error(self, message: str) -> None:
        self._send(messages.error(message))


def read_rules(device: Path | str) -> Rules:
    """The rules from the rules disk: UTF-8 JSON, NUL padded (contract.rules).

    The host validated them against rules.schema.json before writing the disk;
    here they are decoded strictly, without jsonschema (its import alone costs
    seconds under TCG).
    """
    try:
        with open(device, "rb") as f:
            data = f.read(RULES_MAX_BYTES + 1)
    except OSError as exc:
        raise RulesError(f"cannot read the rules disk {device}: {exc.strerror}") from exc
    if len(data) > RULES_MAX_BYTES:
        data = data[:RULES_MAX_BYTES]
        if data.rstrip(b"\0") == data:
            raise RulesError("the rules are larger than the rules disk limit")
    return Rules.from_json(data.rstrip(b"\0"))


def _partition_number(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise TaskError(f"Invalid ROOT_PARTITION: {value!r} (a partition number is expected)")
    return int(value)


def run(
    rules: Rules,
    devices: Sequence[Path],
    reporter: framework.Reporter,
    *,
    tasks: Sequence[LoadedTask] | None = None,
    target: Path | None = None,
    detector: Callable[[Path, Callable[[str], None]], tuple[str, int] | None] = detect.detect_device,
    table_reader: Callable[[Path], detect.Table] = detect.read_table,
    on_failure: Callable[[], None] | None = None,
) -> None:
    """One deployment's customisation; raises on failure, after unmounting everything.

    ``devices`` are the instance disks in Ganeti index order; ``tasks``
    defaults to every module of the ``tasks`` package; ``on_failure`` runs
    while the image is still mounted (the debug shell).
    """
    properties = Properties(rules.properties, warn=reporter.warning)
    if properties.flag("EXCLUDE_ALL_TASKS"):
        log.warning("EXCLUDE_ALL_TASKS is set")
        reporter.warning("EXCLUDE_ALL_TASKS is set. All configuration tasks were prevented from running.")
        return
    selected = framework.select(framework.discover() if tasks is None else tasks, rules.only_tasks)
    device = Path(devices[0])
    table = table_reader(device)
    osfamily = properties.value("OSFAMILY")
    root_value = properties.value("ROOT_PARTITION")
    if not osfamily or not root_value:
        reporter.warning("Needed image properties are missing. Autodetecting them...")
        rejections: list[str] = []

        def rejected(reason: str) -> None:
            rejections.append(reason)
            reporter.warning(reason)

        found = detector(device, rejected)
        if found is None:
            why = "; ".join(rejections[:MAX_REASONS_SHOWN]) or "no partition of a type that can hold a root"
            raise TaskError(
                f"Unable to detect the OS family and root partition of the image ({why}); "
                "set the OSFAMILY and ROOT_PARTITION image properties"
            )
        if not osfamily:
            osfamily = found[0]
            reporter.warning(messages.detected("OSFAMILY", osfamily))
        if not root_value:
            root_value = str(found[1])
            reporter.warning(messages.detected("ROOT_PARTITION", root_value))
    if osfamily not in OSFAMILIES:
        raise TaskError(f"Invalid OSFAMILY: {osfamily!r} (expected one of {', '.join(OSFAMILIES)})")
    root_partition = _partition_number(root_value)
    if table.get(root_partition) is None:
        raise TaskError(f"ROOT_PARTITION {root_partition} does not exist on the disk")
    resize_partition = detect.partition_to_resize(table)
    log.info("OSFAMILY=%s ROOT_PARTITION=%d RESIZE_PART=%s", osfamily, root_partition, resize_partition)

    own_target = target is None
    target = Path(tempfile.mkdtemp(prefix="snf-target-")) if target is None else Path(target)
    ctx = Context(
        rules=rules,
        properties=properties,
        disks=[Path(d) for d in devices],
        reporter=reporter,
        target=target,
        osfamily=osfamily,
        root_partition=root_partition,
        resize_partition=resize_partition,
    )
    try:
        framework.run_tasks(selected, ctx)
    except BaseException:
        if on_failure is not None:
            try:
                on_failure()
            except Exception:
                log.exception("the failure hook failed")
        raise
    finally:
        disks.umount_all(target)
        if own_target:
            with contextlib.suppress(OSError):
                target.rmdir()


# --- PID 1 ----------------------------------------------------------------


def find_disks(rules: Rules, wait: float = DISK_WAIT) -> list[Path]:
    """The instance disks named in the rules, by virtio serial, in index order."""
    return [wait_for_serial(disk.serial, wait) for disk in sorted(rules.disks, key=lambda d: d.index)]


def wait_for_serial(serial: str, wait: float = DISK_WAIT) -> Path:
    """The /dev node of the virtio disk with ``serial``, waiting a little for the kernel to probe it."""
    deadline = time.monotonic() + wait
    while True:
        device = disks.find_by_serial(serial)
        if device is not None:
            return disks.ensure_node(device)
        if time.monotonic() >= deadline:
            raise RulesError(f"no disk with serial {serial}")
        time.sleep(0.2)


def _open_tty(path: str) -> TextIO:
    try:
        return open(path, "w", encoding="utf-8", errors="replace")  # lives until power-off
    except OSError as exc:
        log.error("cannot open %s (%s); using the console instead", path, exc.strerror)
        return sys.stderr


def debug_shell(tty: str = TTY_DEBUG) -> None:
    """Offer a root shell on the debug serial port, waiting until it exits."""
    log.error("Starting a debug shell on %s; exit it to power off", tty)
    try:
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        log.error("cannot open %s: %s", tty, exc.strerror)
        return

    def become_session_leader() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        subprocess.run(["/bin/sh"], stdin=fd, stdout=fd, stderr=fd, preexec_fn=become_session_leader, check=False)
    finally:
        os.close(fd)


def power_off() -> None:
    """Flush the disks and power off; as PID 1 we must never return."""
    os.sync()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.reboot(ctypes.c_int(RB_POWER_OFF))
        log.error("reboot(RB_POWER_OFF) failed: %s", os.strerror(ctypes.get_errno()))
    except OSError as exc:
        log.error("cannot call reboot(): %s", exc)
    with contextlib.suppress(OSError), open("/proc/sysrq-trigger", "w") as f:
        f.write("o")
    while True:
        time.sleep(1)


def main() -> int:
    """PID 1 of the helper VM: run the deployment, write the result, power off."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s.%(msecs)03d %(message)s", datefmt="%H:%M:%S"
    )
    try:
        cmdline = CMDLINE.read_text().split()
    except OSError:
        cmdline = []
    debug = CMDLINE_DEBUG in cmdline
    result = _open_tty(RESULT_PORT)
    reporter = ProgressReporter(_open_tty(PROGRESS_PORT))
    status = 1
    try:
        if CMDLINE_ACTIVATE not in cmdline:
            raise RulesError(f"{CMDLINE_ACTIVATE} is missing from the kernel command line")
        rules = read_rules(wait_for_serial(SERIAL_RULES))
        run(rules, find_disks(rules), reporter, on_failure=debug_shell if debug else None)
    except SnfImageError as exc:
        log.error("ERROR: %s", exc)
        if isinstance(exc, CommandError) and exc.output:
            log.error("%s", exc.output)
        reporter.error(str(exc))
        result.write(Result.failure(str(exc)).to_line())
    except BaseException as exc:
        traceback.print_exc()
        failure = Result.failure(f"Internal error in the helper: {type(exc).__name__}: {exc}")
        reporter.error(failure.reason)
        result.write(failure.to_line())
    else:
        log.info("All tasks finished successfully")
        result.write(Result.succeeded(rules.result_token).to_line())
        status = 0
    result.flush()
    if os.getpid() == 1:
        power_off()
    return status


if __name__ == "__main__":
    sys.exit(main())
