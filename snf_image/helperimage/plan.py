"""What ``snf-image helper build`` is about to do and about how long it takes, said before it starts.

A first build downloads a Debian root filesystem and may compile a kernel:
minutes, during which a silent command looks hung. The estimates are the
figures measured on a 2-core node (README, "The helper VM: its kernel and its
boot"); the parts a build finds in its cache cost nothing.
"""

from __future__ import annotations

from pathlib import Path

from . import build_state
from . import kernel as custom_kernel
from .rootfs import MIRROR, SUITE, cached_rootfs, read_package_list

#: What each step usually takes here; said to the operator, never relied upon.
ESTIMATE_DEBOOTSTRAP = "about 1-3 minutes, with the downloads"
ESTIMATE_ROOT_IMAGE = "about 10-30 seconds"
ESTIMATE_CUSTOM_KERNEL = "about 5 minutes on an idle 2-core node, up to 30 under load"
ESTIMATE_CODE_LAYER = "a few seconds"


def describe(helper_dir: Path, cache_dir: Path, code_only: bool, force: bool, kernel: str) -> list[str]:
    """One line per step the build will take, with its usual duration; empty when there is nothing to do."""
    state = build_state(helper_dir, kernel)
    code = f"the code layer (snf-image {state.version}): {ESTIMATE_CODE_LAYER}"
    if code_only or (state.base_current and not force):
        return [] if state.code_current and not force else [code]
    steps = []
    if force or cached_rootfs(cache_dir, read_package_list()) is None:
        packages = len(read_package_list())
        steps.append(
            f"a Debian {SUITE} root filesystem with {packages} packages, by debootstrap from {MIRROR}: "
            f"{ESTIMATE_DEBOOTSTRAP} (kept in {cache_dir} for later builds)"
        )
    steps.append(f"the root image from that filesystem: {ESTIMATE_ROOT_IMAGE}")
    if kernel == "custom" and (force or custom_kernel.cached_kernel(cache_dir) is None):
        steps.append(f"the helper's own kernel from {custom_kernel.KERNEL_SOURCE}: {ESTIMATE_CUSTOM_KERNEL}")
    return [*steps, code]
