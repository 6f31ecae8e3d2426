"""The helper's own kernel (the default): Debian's linux-source built from ``allnoconfig`` + ``kernel.config``.

Why our own: it boots the helper faster than Debian's cloud kernel (no modules
to load, nothing probed that the VM does not have, an LZ4 image), it writes UFS
(Debian's kernels mount UFS read-only, and the BSD tasks must write it), and its
features are exactly what ``kernel.config`` says (the image-code sandbox's
namespaces, cgroups and seccomp among them). Compiled from Debian's
``linux-source-6.1`` package (KERNEL_BUILD_DEPS), cached in the build cache as
``kernel-<key>/`` keyed by the fragment, the source package's version and
KERNEL_RECIPE_VERSION; to rebuild it, change one of those or pass ``--force``.
The last KERNELS_KEPT builds stay cached, so checkouts with different fragments
sharing one cache do not rebuild each other's kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
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
KERNEL_BUILD_DEPS = "build-essential flex bison bc libelf-dev libssl-dev lz4"
#: custom (the default): our own kernel; debian: the rootfs' cloud kernel, the fallback
#: when building one is not possible or not wanted yet (it boots slower and cannot write UFS).
KERNEL_FLAVOURS = ("custom", "debian")
DEFAULT_KERNEL = "custom"
MISSING_SOURCE = (
    f"the helper's own kernel is built from {KERNEL_SOURCE}: apt-get install {KERNEL_SOURCE_PACKAGE} "
    f"{KERNEL_BUILD_DEPS} (or build with --kernel debian, the fallback: slower to boot, no UFS writes)"
)
#: How many finished kernel builds (different keys) the build cache keeps.
KERNELS_KEPT = 3


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


def source_version() -> str | None:
    """The installed linux-source package's version (part of the kernel's cache key); None if it is not installed."""
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", KERNEL_SOURCE_PACKAGE], capture_output=True, text=True
    )
    if proc.returncode != 0 or not proc.stdout.strip() or not KERNEL_SOURCE.exists():
        return None
    return proc.stdout.strip()


def kernel_key(source_version: str, config_text: str) -> str:
    """Cache key of the custom kernel: recipe, source version and the config fragment."""
    text = "\n".join([KERNEL_RECIPE_VERSION, KERNEL_SOURCE_PACKAGE, source_version, config_text])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(out: Path) -> bool:
    return (out / "bzImage").exists() and (out / "release").exists()


def _kernel_dir(cache_dir: Path, version: str) -> Path:
    return cache_dir / f"kernel-{kernel_key(version, KERNEL_CONFIG.read_text('utf-8'))}"


def cached_kernel(cache_dir: Path) -> Path | None:
    """The finished build for today's fragment and source if ``cache_dir`` has it (nothing is built)."""
    version = source_version()
    if version is None:  # no linux-source: nothing can be cached for it
        return None
    out = _kernel_dir(cache_dir, version)
    return out if _finished(out) else None


@contextlib.contextmanager
def _build_lock(cache_dir: Path):
    """One kernel build at a time per cache: a second builder waits, then finds the result."""
    with open(cache_dir / "kernel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune(cache_dir: Path, keep: Path) -> None:
    """Remove half-built leftovers and all but the newest KERNELS_KEPT finished builds (``keep`` stays)."""
    for scratch in [*cache_dir.glob("kernel-*.tmp"), *cache_dir.glob("kernel-*.result")]:
        log(f"removing the unfinished build {scratch}")
        shutil.rmtree(scratch) if scratch.is_dir() else scratch.unlink()
    done = [p for p in cache_dir.glob("kernel-*") if p.is_dir() and p != keep and (p / "bzImage").exists()]
    done.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[KERNELS_KEPT - 1 :]:
        log(f"removing the old kernel build {old}")
        shutil.rmtree(old)


def ensure_custom_kernel(cache_dir: Path, force: bool = False, jobs: int | None = None) -> Path:
    """``cache_dir/kernel-<key>`` holding ``bzImage``, ``config`` and ``release``, built if not cached.

    The source is unpacked into a scratch directory under ``cache_dir`` and removed
    after the build (about 1.5 GiB while it lasts); only the ~4 MiB result is kept.
    """
    version = source_version()
    if version is None:
        raise SystemExit(MISSING_SOURCE)
    out = _kernel_dir(cache_dir, version)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir):
        if _finished(out) and not force:
            return out
        _prune(cache_dir, keep=out)
        if out.exists():
            shutil.rmtree(out)
        _build(out, jobs or os.cpu_count() or 1)
    return out


def _build(out: Path, jobs: int) -> None:
    """Unpack, configure, check the fragment survived, compile; the result appears at ``out`` atomically."""
    work = out.with_name(out.name + ".tmp")
    work.mkdir()
    start = time.monotonic()
    log(f"unpacking {KERNEL_SOURCE}")
    subprocess.run(["tar", "-C", str(work), "--strip-components=1", "-xf", str(KERNEL_SOURCE)], check=True)
    make = ["make", "-C", str(work), "-s", f"-j{jobs}", "ARCH=x86_64"]
    subprocess.run([*make, f"KCONFIG_ALLCONFIG={KERNEL_CONFIG}", "allnoconfig"], check=True)
    missing = missing_options(config_fragment(), (work / ".config").read_text())
    if missing:
        shutil.rmtree(work)
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
