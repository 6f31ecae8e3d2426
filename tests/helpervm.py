"""Test fixtures for the helper VM: the helper built once into a persistent cache.

The cache directory (env SNF_IMAGE_TEST_CACHE, default /var/cache/snf-image-tests)
survives between runs: the debootstrapped rootfs is keyed by the package list,
the helper's own kernel by its config fragment and source, and a code change
only rebuilds the initrd's code layer (seconds).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from snf_image import helperimage
from snf_image.contract.rules import new_result_token
from snf_image.helperimage.cpio import Cpio
from snf_image.helperimage.initrd import INITRD_LIB
from snf_image.helperimage.kernel import DEFAULT_KERNEL

CACHE = Path(os.environ.get("SNF_IMAGE_TEST_CACHE", "/var/cache/snf-image-tests"))
#: Injected with every probe: the probes' common serial-console code.
SERIALPROBE = Path(__file__).resolve().parent / "serialprobe.py"


def ensure_helper(kernel: str = DEFAULT_KERNEL) -> Path:
    """The test helper dir, built or brought up to date (locked against concurrent test runs).

    The default is the product's default, the helper's own kernel; ``kernel="debian"``
    (the fallback) is built in a directory of its own from the same rootfs.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    # SNF_IMAGE_TEST_HELPERS: where the helper dirs go, so that checkouts testing different code at once
    # do not rebuild each other's code layer (the slow build cache stays shared)
    helpers = Path(os.environ.get("SNF_IMAGE_TEST_HELPERS") or CACHE)
    helpers.mkdir(parents=True, exist_ok=True)
    helper_dir = helpers / ("helper" if kernel == DEFAULT_KERNEL else f"helper-{kernel}")
    with open(CACHE / "helper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        helperimage.build(helper_dir, CACHE / "helper-build", kernel=kernel)
    return helper_dir


def probe_rules(probe: dict) -> tuple[bytes, str]:
    """Rules for a probe runner: ``probe`` with a result token (a fresh one unless it has one); and the token."""
    token = probe.get("result_token") or new_result_token()
    return json.dumps({**probe, "result_token": token}).encode(), token


def probe_helper_dir(helper_dir: Path, target: Path, modules: dict[str, Path]) -> Path:
    """A copy of ``helper_dir`` in ``target`` whose code layer also has ``modules`` (name -> source).

    tests/serialprobe.py comes along with every probe. The big files are symlinked;
    the initrd gets one more cpio archive appended, which the kernel unpacks over the
    code layer: nothing of the real build changes.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in ("image", "kernel", "packages", "version"):
        (target / name).symlink_to(helper_dir / name)
    extra = Cpio()
    for name, source in {"serialprobe": SERIALPROBE, **modules}.items():
        extra.file(f"{INITRD_LIB}/{name}.py", source.read_bytes())
    shutil.copyfile(helper_dir / "initrd", target / "initrd")
    with open(target / "initrd", "ab") as f:
        f.write(extra.getvalue())
    return target
