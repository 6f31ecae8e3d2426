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
    #: qemu drops to this user after opening its files; None keeps root (tests only).
    user: str | None = "nobody"
    accel: str = "auto"
    debug: bool = False
    qemu: str = "qemu-system-x86_64"
    #: Where the debug shell's unix socket goes (with debug); default: in the run's temp dir.
    debug_socket: Path | None = None
    #: The Python module /init runs as PID 1 (tests inject probes here).
    runner: str = DEFAULT_RUNNER


@dataclasses.dataclass(frozen=True)
class Channels:
    """Host-side ends of the serial ports (FIFOs, a socket) qemu writes to."""

    console: Path
    result: Path
    progress: Path
    debug: Path | None = None
