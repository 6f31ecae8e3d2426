"""Boot a deployed guest disk under qemu and drive its serial console, to check a deployment from inside.

Reading files back from outside proves what the tasks wrote; only a boot
proves the guest uses them: that the NIC comes up under the configured name
with the configured address, that root can log in with the injected
password, that sshd finds host keys. The guest boots with its own kernel and
initrd (host copies from the guest image's metadata) straight from the
deployed disk, by default with one virtio NIC on a qemu user network with
``restrict=on`` (no route out of the VM); a test of several NICs passes its
own (taps of a private network, tests/guestnet.py) and the command prefix
that runs qemu where they are. The serial console is on qemu's stdio,
driven with pexpect. Everything has a deadline and qemu is always
killed on the way out.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

PROMPT = "SNF-PROMPT# "
PROMPT_RE = re.escape(PROMPT)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class BootError(AssertionError):
    """The guest did not boot or answer in time; carries the console's tail."""


@dataclass(frozen=True)
class GuestNic:
    """One virtio NIC of the booted guest: its MAC and the qemu -netdev backend (without id)."""

    mac: str
    netdev: str = "user,restrict=on"


@dataclass
class Console:
    """A logged-in root shell on the guest's serial console."""

    child: pexpect.spawn
    transcript: list[str] = field(default_factory=list)

    def run(self, command: str, timeout: float = 60) -> str:
        """Output of ``command`` in the guest (stdout and stderr, ANSI and CRs removed)."""
        self.child.sendline(command)
        try:
            self.child.expect(PROMPT_RE, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as exc:
            raise BootError(f"no prompt after {command!r}:\n{tail(self.child)}") from exc
        out = ANSI.sub("", self.child.before)
        self.transcript.append(f"$ {command}\n{out}")
        return out.strip("\n")

    def status(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """(exit status, output) of ``command``."""
        out = self.run(f"{command}; echo SNF-RC=$?", timeout=timeout)
        match = re.search(r"SNF-RC=(\d+)\s*$", out)
        if not match:
            raise BootError(f"no exit status from {command!r}: {out!r}")
        return int(match.group(1)), out[: match.start()].rstrip("\n")


def tail(child: pexpect.spawn, size: int = 4000) -> str:
    """What the console printed last (for error messages)."""
    seen = (child.before or "") if isinstance(child.before, str) else ""
    return ANSI.sub("", seen)[-size:]


def qemu_argv(
    disk: Path,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    nics: Sequence[GuestNic],
    memory: int = 1024,
    extra_disks: Sequence[Path] = (),
) -> list[str]:
    """The qemu command line: TCG, direct kernel boot, the disks as virtio, ``nics`` as virtio NICs, serial on stdio.

    ``extra_disks`` follow the boot disk in order (vdb, vdc, ...), as an instance's further disks do.
    """
    drives = [arg for extra in extra_disks for arg in ("-drive", f"file={extra},format=raw,if=virtio")]
    network = []
    for index, nic in enumerate(nics):
        network += ["-netdev", f"{nic.netdev},id=n{index}", "-device", f"virtio-net-pci,netdev=n{index},mac={nic.mac}"]
    return [
        "qemu-system-x86_64",
        "-nodefaults",
        "-machine",
        "accel=tcg",
        "-m",
        str(memory),
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-drive",
        f"file={disk},format=raw,if=virtio",
        *drives,
        *network,
        "-serial",
        "stdio",
    ]


@dataclass
class BootTimes:
    """Seconds from qemu's start to the login prompt and to the shell."""

    login_prompt: float = 0.0
    shell: float = 0.0


@contextlib.contextmanager
def booted(
    disk: Path,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    mac: str,
    password: str,
    log: Path,
    boot_timeout: float = 300,
    times: BootTimes | None = None,
    ready: str | None = None,
    extra_disks: Sequence[Path] = (),
    nics: Sequence[GuestNic] = (),
    prefix: Sequence[str] = (),
) -> Iterator[Console]:
    """Boot ``disk``, log in as root on ttyS0 with ``password``, yield the shell; qemu is killed on exit.

    ``ready``: a console regex to wait for before logging in -- the getty
    starts before cloud-init's config stage has set the password, so a
    cloud-init guest is logged into only after cloud-init says it finished.
    ``nics``: the guest's NICs (default: one user-network NIC with ``mac``);
    ``prefix``: a command qemu runs under (``ip netns exec NS`` for taps there).
    The whole console goes to ``log`` (a failing test's best evidence).
    Kernel messages are silenced on the console after login so they do not
    interleave with command output.
    """
    times = times or BootTimes()
    nics = nics or [GuestNic(mac)]
    argv = [*prefix, *qemu_argv(disk, kernel, initrd, cmdline + " panic=-1", nics, extra_disks=extra_disks)]
    started = time.monotonic()
    with open(log, "w", encoding="utf-8", errors="replace") as logfile:
        child = pexpect.spawn(
            argv[0], argv[1:], encoding="utf-8", codec_errors="replace", timeout=30, echo=False, dimensions=(50, 250)
        )
        child.logfile_read = logfile
        try:
            try:
                child.expect(r"login: ?$", timeout=boot_timeout)
            except (pexpect.TIMEOUT, pexpect.EOF) as exc:
                raise BootError(f"no login prompt within {boot_timeout:.0f}s:\n{tail(child)}") from exc
            times.login_prompt = time.monotonic() - started
            if ready is not None:
                try:
                    child.expect(ready, timeout=max(30.0, boot_timeout - times.login_prompt))
                    child.sendline("")
                    child.expect(r"login: ?$", timeout=30)
                except (pexpect.TIMEOUT, pexpect.EOF) as exc:
                    raise BootError(f"no {ready!r} on the console:\n{tail(child)}") from exc
            login(child, password)
            times.shell = time.monotonic() - started
            yield Console(child)
        finally:
            child.terminate(force=True)
            if child.isalive():
                child.kill(9)
            child.close(force=True)


def login(child: pexpect.spawn, password: str) -> None:
    """Log in as root and make the shell predictable (fixed prompt, no echo, quiet console)."""
    for attempt in range(3):
        child.sendline("root")
        index = child.expect([r"[Pp]assword: ?$", r"login: ?$", pexpect.TIMEOUT], timeout=60)
        if index != 0:
            continue
        time.sleep(0.5)  # getty/login may still be flushing input
        child.sendline(password)
        index = child.expect([r"[#$] ?$", r"Login incorrect", pexpect.TIMEOUT], timeout=90)
        if index == 0:
            break
        if index == 1 and attempt < 2:
            child.expect(r"login: ?$", timeout=30)
            continue
        raise BootError(f"root could not log in with the injected password:\n{tail(child)}")
    else:
        raise BootError(f"no password prompt:\n{tail(child)}")
    # The prompt is spelled in two quoted halves: the echo of this very line must not match it.
    half = len(PROMPT) // 2
    child.sendline(f"stty -echo; dmesg -n 1; export TERM=dumb; PS1='{PROMPT[:half]}''{PROMPT[half:]}'")
    try:
        child.expect(PROMPT_RE, timeout=30)
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        raise BootError(f"no shell prompt after login:\n{tail(child)}") from exc
