"""Which accelerator the helper VM uses: KVM when the helper kernel really boots under it, else TCG.

``accel="auto"`` boots the helper kernel once under KVM in probe mode
(``snf_image_probe``: /init writes ``SNF-IMAGE-PROBE-OK`` on the result port
and powers off) with a short timeout; KVM is used only if that works, else
TCG. The answer is cached for the life of the process.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from snf_image.errors import HelperError
from snf_image.lifecycle import child_env

from .command import build_qemu_command
from .config import ACCELERATORS, HelperConfig
from .vm import boot, workdir

PROBE_OK = "SNF-IMAGE-PROBE-OK"
#: How long the KVM probe may take to reach /init and power off (a working KVM needs ~1 s).
PROBE_TIMEOUT = 10.0


@functools.cache
def qemu_supports_sandbox(qemu: str) -> bool:
    """Whether this qemu has seccomp (-sandbox) built in."""
    try:
        out = subprocess.run(
            [qemu, "-help"], check=False, capture_output=True, text=True, timeout=10, env=child_env()
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "\n-sandbox" in out


_KVM_PROBE: dict[tuple[str, str], bool] = {}


def kvm_works(config: HelperConfig, log: Callable[[str], None]) -> bool:
    """Whether the helper kernel boots under KVM here; probed once per process.

    A KVM that merely opens is not enough (nested KVM can abort on ``-cpu host``
    or hang the kernel), so this boots the real helper kernel and initrd with
    ``snf_image_probe`` and waits up to PROBE_TIMEOUT seconds for its answer.
    """
    key = (config.qemu, str(Path(config.helper_dir).resolve()))
    if key in _KVM_PROBE:
        return _KVM_PROBE[key]
    ok = False
    reason = "/dev/kvm is not usable"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        probe_config = dataclasses.replace(config, debug=False)
        with workdir(probe_config, None) as (_, channels, fds):
            cmd = build_qemu_command(
                probe_config, "kvm", [], None, channels, sandbox=qemu_supports_sandbox(config.qemu), probe=True
            )
            quiet: list[str] = []
            outcome = boot(cmd, fds, PROBE_TIMEOUT, 1.0, lambda _: None, quiet.append)
        first = outcome.result.split(b"\n", 1)[0].strip().decode("ascii", "replace")
        ok = outcome.returncode == 0 and not outcome.timed_out and first == PROBE_OK
        if outcome.timed_out:
            reason = f"the kernel did not reach /init in {PROBE_TIMEOUT:g} s"
        elif outcome.returncode != 0:
            tail = [line for line in quiet if line.startswith("QEMU: ")][-1:]
            reason = f"qemu exited with {outcome.returncode}" + (f" ({tail[0][6:]})" if tail else "")
        else:
            reason = "no answer from /init"
        log(f"KVM probe {'succeeded' if ok else 'failed: ' + reason} in {outcome.seconds:.1f} s")
    else:
        log(f"KVM probe failed: {reason}")
    _KVM_PROBE[key] = ok
    return ok


def choose_accel(config: HelperConfig, log: Callable[[str], None]) -> str:
    """kvm or tcg, from the setting (auto: probe KVM, fall back to TCG)."""
    if config.accel not in ACCELERATORS:
        raise HelperError(f"unknown accelerator {config.accel!r}; expected one of {', '.join(ACCELERATORS)}")
    if config.accel != "auto":
        return config.accel
    accel = "kvm" if kvm_works(config, log) else "tcg"
    if accel == "tcg":
        log("using TCG (software emulation) for the helper VM")
    return accel
