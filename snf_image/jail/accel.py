"""Which accelerator the helper VM uses: KVM when the helper kernel really boots under it, else TCG.

``accel="auto"`` decides once per node boot, not per deployment. The verdict is
kept in a root-only directory (``HelperConfig.state_dir``, /run/snf-image by
default: a tmpfs that a reboot empties), in a file named after its key: the
host's boot id, the qemu binary (path, identity and version) and the helper
kernel's hash. A deployment that finds it uses it; one that does not probes
under a lock, so that of several deployments starting at once one probes and
the others wait for its verdict. ``kvm``/``tcg`` skip all this;
``snf-image helper probe`` probes again (:func:`verdict` with ``reprobe``).

The probe boots the helper kernel under KVM in probe mode (``snf_image_probe``:
/init writes ``SNF-IMAGE-PROBE-OK`` on the result port and powers off). A KVM
that merely opens is not enough: a nested KVM can abort qemu (``-cpu host``) or
hang the kernel, which then prints nothing more. So the probe boots with the
kernel's messages on and gives up once the console has been silent for
PROBE_STALL seconds (or after PROBE_TIMEOUT in all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from snf_image.errors import HelperError
from snf_image.lifecycle import child_env

from .command import build_qemu_command
from .config import ACCELERATORS, HelperConfig
from .vm import boot, workdir

PROBE_OK = "SNF-IMAGE-PROBE-OK"
KVM_DEVICE = "/dev/kvm"
#: Silence on the console (from qemu's start, then between lines) after which a KVM boot is
#: taken as hung. Measured under TCG, which is slower than any working KVM, on 2 cores with a
#: load average of 8: the first line 0.85-1.6 s after qemu starts, silences of at most 0.3 s,
#: /init's answer after 1.6-3.1 s; a hung nested KVM here prints nothing at all. A false
#: "hung" costs the node TCG until it reboots, a true one costs this once per host boot.
PROBE_STALL = 3.0
#: The probe's limit even while the kernel keeps talking.
PROBE_TIMEOUT = 10.0
#: Bump when the probe itself changes (cpu model, command line): part of the verdict's key.
PROBE_RECIPE = "2"


@functools.cache
def _qemu_help(qemu: str) -> str:
    try:
        return subprocess.run(
            [qemu, "-help"], check=False, capture_output=True, text=True, timeout=10, env=child_env()
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def qemu_supports_sandbox(qemu: str) -> bool:
    """Whether this qemu has seccomp (-sandbox) built in."""
    return "\n-sandbox" in _qemu_help(qemu)


def probe_key(config: HelperConfig) -> dict[str, str]:
    """What the verdict depends on: this boot of the host, this qemu, this helper kernel."""
    qemu = shutil.which(config.qemu) or config.qemu
    try:
        qemu = os.path.realpath(qemu)
        st = os.stat(qemu)
        identity = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        identity = "missing"
    kernel = hashlib.sha256()
    try:
        with open(Path(config.helper_dir) / "kernel", "rb") as f:
            while chunk := f.read(1 << 20):
                kernel.update(chunk)
    except OSError as exc:
        raise HelperError(f"cannot read the helper kernel: {exc}") from None
    return {
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "qemu": qemu,
        "qemu_identity": identity,
        "qemu_version": _qemu_help(config.qemu).split("\n", 1)[0].strip(),
        "kernel_sha256": kernel.hexdigest(),
        "recipe": PROBE_RECIPE,
    }


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one KVM probe, as stored for the node."""

    accel: str
    reason: str
    seconds: float
    probed_at: float
    key: dict[str, str]

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.probed_at))
        return f"{self.accel} ({self.reason}; probed at {when} in {self.seconds:.2f} s)"


def _probe(config: HelperConfig, key: dict[str, str]) -> Verdict:
    """Boot the helper kernel under KVM once and judge it."""
    start = time.time()
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Verdict("tcg", f"{KVM_DEVICE} is not usable", 0.0, start, key)
    probe_config = dataclasses.replace(config, debug=False)
    with workdir(probe_config, None) as (_, channels, fds):
        cmd = build_qemu_command(
            probe_config, "kvm", [], None, channels, sandbox=qemu_supports_sandbox(config.qemu), probe=True
        )
        quiet: list[str] = []
        outcome = boot(cmd, fds, PROBE_TIMEOUT, 1.0, lambda _: None, quiet.append, stall_timeout=PROBE_STALL)
    first = outcome.result.split(b"\n", 1)[0].strip().decode("ascii", "replace")
    if outcome.returncode == 0 and not outcome.timed_out and first == PROBE_OK:
        return Verdict("kvm", "the helper kernel reached /init under KVM", outcome.seconds, start, key)
    if outcome.stalled:
        reason = f"the kernel hung under KVM (console silent for {PROBE_STALL:g} s)"
    elif outcome.timed_out:
        reason = f"the kernel did not reach /init under KVM in {PROBE_TIMEOUT:g} s"
    elif outcome.returncode != 0:
        tail = [line for line in quiet if line.startswith("QEMU: ")][-1:]
        reason = f"qemu exited with {outcome.returncode}" + (f" ({tail[0][6:]})" if tail else "")
    else:
        reason = "no answer from /init under KVM"
    return Verdict("tcg", reason, outcome.seconds, start, key)


def _state_dir(path: Path) -> Path:
    """The verdicts' directory, made root-only; refused if someone else could write into it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{path} is not a directory that only this user can write")
    return path


def _read(path: Path, key: dict[str, str]) -> Verdict | None:
    """The stored verdict for ``key``, or None (absent, unreadable, another key, malformed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(65536))
        found = Verdict(**data)
    except (OSError, ValueError, TypeError):
        return None
    if found.key != key or found.accel not in ("kvm", "tcg"):
        return None
    return found


def _write(path: Path, found: Verdict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(found), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / "accel.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def verdict(config: HelperConfig, log: Callable[[str], None], reprobe: bool = False) -> Verdict:
    """The node's KVM verdict for this helper kernel and qemu: stored, or probed now and stored."""
    key = probe_key(config)
    name = "accel-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json"
    try:
        directory = _state_dir(Path(config.state_dir))
    except OSError as exc:
        found = _probe(config, key)
        log(f"KVM probe: {found.describe()}; not kept for the next deployments ({exc})")
        return found
    path = directory / name
    if not reprobe and (found := _read(path, key)) is not None:
        log(f"KVM verdict of this node (kept in {path}): {found.describe()}")
        return found
    waited = time.monotonic()
    with _locked(directory):
        waited = time.monotonic() - waited
        if not reprobe and (found := _read(path, key)) is not None:
            log(f"KVM verdict made by another deployment while this one waited {waited:.1f} s: {found.describe()}")
            return found
        found = _probe(config, key)
        _write(path, found)
    log(f"KVM probe: {found.describe()}; kept in {path} until the host reboots")
    return found


def choose_accel(config: HelperConfig, log: Callable[[str], None]) -> str:
    """kvm or tcg, from the setting (auto: the node's verdict, probed once per host boot)."""
    if config.accel not in ACCELERATORS:
        raise HelperError(f"unknown accelerator {config.accel!r}; expected one of {', '.join(ACCELERATORS)}")
    if config.accel != "auto":
        return config.accel
    return verdict(config, log).accel
