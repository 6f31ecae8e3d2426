"""Boot the helper VM (the "jail") that customizes an image, and read what it says.

Everything the image contains is parsed only inside this VM; the host side
trusts nothing the VM sends. Parts: :mod:`.config` (settings, disks,
channels), :mod:`.command` (the qemu command line), :mod:`.accel` (KVM or
TCG), :mod:`.vm` (one qemu run with its timeouts), :mod:`.channels` (the
bounded, schema-checked readers). :func:`run_helper` puts them together.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
from collections.abc import Callable
from pathlib import Path

from snf_image.contract import constants
from snf_image.contract.rules import is_result_token
from snf_image.errors import HelperError
from snf_image.helperimage.codelayer import helper_version

from .accel import choose_accel, qemu_supports_sandbox
from .channels import result_verdict, sanitize
from .command import build_qemu_command, is_uri
from .config import ACCELERATORS, HelperConfig, JailDisk
from .vm import boot, check_runnable, workdir

__all__ = ["ACCELERATORS", "HelperConfig", "JailDisk", "check_helper_dir", "run_helper"]


def check_helper_dir(helper_dir: Path) -> None:
    """Refuse a missing, incomplete or out-of-date helper directory, saying how to fix it."""
    for name in ("image", "kernel", "initrd", "version"):
        if not (helper_dir / name).is_file():
            raise HelperError(f"helper image is missing {helper_dir / name}; build it with: snf-image helper build")
    found = (helper_dir / "version").read_text("utf-8", "replace").strip()
    wanted = helper_version()
    if found != wanted:
        raise HelperError(
            f"helper image version {found[:80]} does not match snf-image {wanted}; "
            "rebuild it with: snf-image helper build [--code-only]"
        )


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _seccomp(config: HelperConfig, log: Callable[[str], None]) -> bool:
    """Whether qemu runs under seccomp; without it, refuse unless HELPER_ALLOW_NO_SECCOMP says otherwise."""
    check_runnable(config.qemu)
    if qemu_supports_sandbox(config.qemu):
        return True
    if not config.allow_no_seccomp:
        raise HelperError(
            f"{config.qemu} has no seccomp sandbox (-sandbox): refusing to run the helper VM without it "
            "(HELPER_ALLOW_NO_SECCOMP=yes runs it anyway)"
        )
    warning = f"WARNING: {config.qemu} has no seccomp sandbox: the helper VM runs without it (HELPER_ALLOW_NO_SECCOMP)"
    logging.getLogger(__name__).warning("%s", warning)
    log(warning)
    return False


def run_helper(
    config: HelperConfig,
    disks: list[JailDisk],
    rules: bytes,
    on_progress: Callable[[dict], None],
    log: Callable[[str], None],
    *,
    token: str,
) -> None:
    """Run the jail over ``disks`` with ``rules``; return only if it reported SUCCESS with ``token``.

    ``token`` is the rules' result_token (contract.rules): a SUCCESS without it
    is a forgery (channels.result_verdict). ``on_progress`` gets each valid
    progress line as a complete ``image-helper`` message (the host sets
    ``type`` and ``timestamp``). Raises HelperError with a one-line reason
    otherwise. No process or file is left behind either way.
    """
    if not is_result_token(token):
        raise ValueError("run_helper needs the deployment's result token")
    helper_dir = Path(config.helper_dir)
    check_helper_dir(helper_dir)
    if not rules or len(rules) > constants.RULES_MAX_BYTES:
        raise HelperError(f"the rules must be 1 to {constants.RULES_MAX_BYTES} bytes, not {len(rules)}")
    if b"\0" in rules:
        raise HelperError("the rules contain a NUL byte")
    indexes = [d.index for d in disks]
    if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
        raise HelperError(f"disk indexes must be distinct and non-negative: {indexes}")
    for disk in disks:
        if not is_uri(disk.path_or_uri) and not os.path.exists(disk.path_or_uri):
            raise HelperError(f"disk {disk.index} does not exist: {disk.path_or_uri}")
    block = frozenset(d.path_or_uri for d in disks if not is_uri(d.path_or_uri) and _is_block_device(d.path_or_uri))

    sandbox = _seccomp(config, log)
    accel = choose_accel(config, log)
    with workdir(config, rules) as (rules_disk, channels, fds):
        cmd = build_qemu_command(config, accel, disks, rules_disk, channels, sandbox=sandbox, block_devices=block)
        log(f"starting the helper VM ({accel}): {shlex.join(cmd)}")
        if channels.debug is not None:
            log(f"helper debug shell: socat -,raw,echo=0 UNIX-CONNECT:{channels.debug}")
        outcome = boot(cmd, fds, config.soft_timeout, config.hard_timeout, on_progress, log)
    log(f"helper VM ended after {outcome.seconds:.1f} s (exit code {outcome.returncode})")

    verdict = result_verdict(outcome.result, token)
    if outcome.violation:
        raise HelperError(f"Image customization failed: the helper VM broke the protocol: {outcome.violation}")
    if verdict is not None and not verdict.success:
        raise HelperError(f"Image customization failed: {sanitize(verdict.reason) or '(no message)'}")
    if outcome.timed_out:
        raise HelperError(
            f"Image customization failed: the helper VM did not finish on time ({config.soft_timeout:g} s)"
        )
    if outcome.returncode != 0:
        for line in outcome.console_tail:
            log(f"helper console (last lines): {line}")
        code = outcome.returncode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise HelperError(f"Image customization failed: the helper VM died unexpectedly ({how})")
    if verdict is None:
        raise HelperError("Image customization failed: the helper VM ended without a result")
    log("helper VM reported SUCCESS")
