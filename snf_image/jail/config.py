"""How one helper VM run is configured: the settings, the disks, the host ends of its channels."""

from __future__ import annotations

import dataclasses
from pathlib import Path

ACCELERATORS = ("auto", "kvm", "tcg")
DEFAULT_RUNNER = "helper.runner"


@dataclasses.dataclass(frozen=True)
class JailDisk:
    """An instance disk for the jail: a local path or a qemu URI (nbd://, rbd:...), by Ganeti index."""

    path_or_uri: str
    index: int
    readonly: bool = False


@dataclasses.dataclass
class HelperConfig:
    """How to run the helper VM (from the HELPER_* settings)."""

    helper_dir: Path
    memory_mib: int = 512
    soft_timeout: float = 120.0
    hard_timeout: float = 5.0
    #: qemu drops to this user after opening its files; None keeps root (tests only: the
    #: HELPER_USER setting cannot be empty).
    user: str | None = "nobody"
    #: Run even when qemu has no seccomp sandbox (-sandbox), with a warning (HELPER_ALLOW_NO_SECCOMP).
    allow_no_seccomp: bool = False
    accel: str = "auto"
    debug: bool = False
    qemu: str = "qemu-system-x86_64"
    #: Where the debug shell's unix socket goes (with debug); default: in the run's temp dir.
    debug_socket: Path | None = None
    #: The Python module /init runs as PID 1 (tests inject probes here).
    runner: str = DEFAULT_RUNNER


@dataclasses.dataclass(frozen=True)
class PassedFd:
    """A descriptor qemu gets with ``-add-fd`` and opens as ``/dev/fdset/<fdset>``: it has no path of its own."""

    fd: int
    fdset: int
    #: What it is, for qemu's listing of its descriptors.
    opaque: str

    @property
    def path(self) -> str:
        return f"/dev/fdset/{self.fdset}"


@dataclasses.dataclass(frozen=True)
class Channels:
    """The serial ports qemu writes to: pipes to us, and the debug shell's socket (debug only)."""

    console: PassedFd
    result: PassedFd
    progress: PassedFd
    debug: Path | None = None
