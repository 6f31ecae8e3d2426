"""Test fixtures for the helper VM: the helper built once into a persistent cache.

The cache directory (env SNF_IMAGE_TEST_CACHE, default /var/cache/snf-image-tests)
survives between runs: the debootstrapped rootfs is keyed by the package list,
and a code change only rebuilds the initrd's code layer (seconds).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from snf_image import helperimage
from snf_image.helperimage.cpio import Cpio
from snf_image.helperimage.initrd import INITRD_LIB

CACHE = Path(os.environ.get("SNF_IMAGE_TEST_CACHE", "/var/cache/snf-image-tests"))


def ensure_helper(kernel: str = "debian") -> Path:
    """The test helper dir, built or brought up to date (locked against concurrent test runs).

    ``kernel="custom"`` is the helper with our own kernel (the one that writes UFS),
    in its own directory; its kernel build is cached in the same build cache.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    # SNF_IMAGE_TEST_HELPERS: where the helper dirs go, so that checkouts testing different code at once
    # do not rebuild each other's code layer (the slow build cache stays shared)
    helpers = Path(os.environ.get("SNF_IMAGE_TEST_HELPERS") or CACHE)
    helpers.mkdir(parents=True, exist_ok=True)
    helper_dir = helpers / ("helper" if kernel == "debian" else f"helper-{kernel}")
    with open(CACHE / "helper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        helperimage.build(helper_dir, CACHE / "helper-build", kernel=kernel)
    return helper_dir


def probe_helper_dir(helper_dir: Path, target: Path, modules: dict[str, Path]) -> Path:
    """A copy of ``helper_dir`` in ``target`` whose code layer also has ``modules`` (name -> source).

    The big files are symlinked; the initrd gets one more cpio archive appended,
    which the kernel unpacks over the code layer: nothing of the real build changes.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in ("image", "kernel", "packages", "version"):
        (target / name).symlink_to(helper_dir / name)
    extra = Cpio()
    for name, source in modules.items():
        extra.file(f"{INITRD_LIB}/{name}.py", source.read_bytes())
    shutil.copyfile(helper_dir / "initrd", target / "initrd")
    with open(target / "initrd", "ab") as f:
        f.write(extra.getvalue())
    return target
