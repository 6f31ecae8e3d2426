"""The helper's own kernel: Debian's linux-source built from ``allnoconfig`` + ``kernel.config``.

It exists because Debian's kernels mount UFS read-only (CONFIG_UFS_FS_WRITE is
off) and the BSD tasks must write the guest's UFS; everything it needs is
built in, so the initrd loads no module. Compiled from Debian's
``linux-source-6.1`` package (``apt-get install linux-source-6.1 flex bison bc
libelf-dev``), cached in the build cache as ``kernel-<key>/`` keyed by the
fragment, the source package's version and KERNEL_RECIPE_VERSION; to rebuild
it, change one of those or pass ``--force``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from .log import log

#: The custom kernel: config fragment, source tarball and the package that ships it.
KERNEL_CONFIG = Path(__file__).resolve().parent / "kernel.config"
KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
#: Bump when the kernel recipe (make targets, flags) changes: it is part of the cache key.
KERNEL_RECIPE_VERSION = "1"
KERNEL_BUILD_DEPS = "build-essential flex bison bc libelf-dev libssl-dev"
KERNEL_FLAVOURS = ("debian", "custom")


def config_fragment(path: Path = KERNEL_CONFIG) -> dict[str, str]:
    """``CONFIG_X`` -> value of the fragment's active lines (comments ignored)."""
    wanted = {}
    for line in path.read_text("utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            if not sep or not name.startswith("CONFIG_"):
                raise ValueError(f"{path}: not a CONFIG_X=value line: {line!r}")
            wanted[name] = value
    return wanted


def missing_options(fragment: dict[str, str], config_text: str) -> list[str]:
    """The fragment's lines that did not survive into the final .config (unmet dependencies, typos)."""
    have = {}
    for line in config_text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("CONFIG_"):
            have[name] = value
    return sorted(f"{k}={v}" for k, v in fragment.items() if have.get(k) != v)


def source_version() -> str:
    """The installed linux-source package's version (part of the kernel's cache key)."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", KERNEL_SOURCE_PACKAGE], capture_output=True, text=True
    )
    if proc.returncode != 0 or not proc.stdout.strip() or not KERNEL_SOURCE.exists():
        raise SystemExit(
            f"the custom kernel needs {KERNEL_SOURCE}: apt-get install {KERNEL_SOURCE_PACKAGE} {KERNEL_BUILD_DEPS}"
        )
    return proc.stdout.strip()


def kernel_key(source_version: str, config_text: str) -> str:
    """Cache key of the custom kernel: recipe, source version and the config fragment."""
    text = "\n".join([KERNEL_RECIPE_VERSION, KERNEL_SOURCE_PACKAGE, source_version, config_text])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kernel_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kernel-{kernel_key(source_version(), KERNEL_CONFIG.read_text('utf-8'))}"


def cached_kernel(cache_dir: Path) -> Path | None:
    """The custom kernel's directory in ``cache_dir`` if a build left it there (needs linux-source installed)."""
    out = _kernel_dir(cache_dir)
    return out if (out / "bzImage").exists() and (out / "release").exists() else None


def ensure_custom_kernel(cache_dir: Path, force: bool = False, jobs: int | None = None) -> Path:
    """``cache_dir/kernel-<key>`` holding ``bzImage``, ``config`` and ``release``, built if not cached.

    The source is unpacked into a scratch directory under ``cache_dir`` and removed
    after the build (about 1.5 GiB while it lasts); only the ~3 MiB result is kept.
    """
    if not KERNEL_SOURCE.exists():
        raise SystemExit(f"{KERNEL_SOURCE} is missing: apt-get install {KERNEL_SOURCE_PACKAGE} {KERNEL_BUILD_DEPS}")
    out = _kernel_dir(cache_dir)
    if cached_kernel(cache_dir) is not None and not force:
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("kernel-*"):  # other keys, half-built leftovers
        log(f"removing stale {old}")
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    work = out.with_name(out.name + ".tmp")
    work.mkdir()
    jobs = jobs or os.cpu_count() or 1
    start = time.monotonic()
    log(f"unpacking {KERNEL_SOURCE}")
    subprocess.run(["tar", "-C", str(work), "--strip-components=1", "-xf", str(KERNEL_SOURCE)], check=True)
    make = ["make", "-C", str(work), "-s", f"-j{jobs}", "ARCH=x86_64"]
    subprocess.run([*make, f"KCONFIG_ALLCONFIG={KERNEL_CONFIG}", "allnoconfig"], check=True)
    missing = missing_options(config_fragment(), (work / ".config").read_text())
    if missing:
        raise RuntimeError(f"{KERNEL_CONFIG}: not in the final .config (unmet dependency?): {' '.join(missing)}")
    log(f"compiling the kernel with {jobs} jobs")
    subprocess.run([*make, "bzImage"], check=True, stdout=subprocess.DEVNULL)
    release = subprocess.run([*make, "kernelrelease"], check=True, capture_output=True, text=True).stdout.strip()
    result = out.with_name(out.name + ".result")
    result.mkdir()
    shutil.copyfile(work / "arch/x86/boot/bzImage", result / "bzImage")
    shutil.copyfile(work / ".config", result / "config")
    (result / "release").write_text(release + "\n")
    shutil.rmtree(work)
    result.rename(out)
    log(f"custom kernel {release} built in {time.monotonic() - start:.0f} s")
    return out
