"""How one helper VM run is configured: the settings, the disks, the host ends of its channels."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snf_image.settings import Settings

ACCELERATORS = ("auto", "kvm", "tcg")
DEFAULT_RUNNER = "helper.runner"
#: Where the node's KVM verdict is kept (root-only; a tmpfs, so a reboot forgets it).
DEFAULT_STATE_DIR = Path("/run/snf-image")


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
    #: The node's state that outlives a deployment but not a reboot: the KVM verdict (see .accel).
    state_dir: Path = DEFAULT_STATE_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> HelperConfig:
        """How the helper VM runs on this node, from the HELPER_* settings."""
        return cls(
            helper_dir=settings.helper_dir,
            memory_mib=settings.helper_memory,
            soft_timeout=settings.helper_soft_timeout,
            hard_timeout=settings.helper_hard_timeout,
            user=settings.helper_user,
            allow_no_seccomp=settings.helper_allow_no_seccomp,
            accel=settings.helper_accel,
            debug=settings.helper_debug,
            qemu=settings.helper_qemu,
        )


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
