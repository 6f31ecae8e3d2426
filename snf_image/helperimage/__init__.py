"""Build the helper VM ("jail") image: rootfs image, kernel, initrd, package list, version stamp.

Layout of HELPER_DIR after a build::

    image        ext4 root filesystem (made with ``mke2fs -d``, never mounted on the host),
                 attached read-only with serial ``snf-helper-root``
    kernel       our own build of Debian's linux-source from ``kernel.config`` (``--kernel custom``,
                 the default: faster to boot, writes UFS, see .kernel), or the rootfs' Debian
                 cloud kernel (``--kernel debian``: the fallback where building one is not
                 possible yet; BSD images then fail with a clear error)
    initrd-base  newc cpio: busybox-static, /dev/console, the few kernel modules needed to
                 find and mount the root disk (none with the custom kernel: all built in)
    initrd       initrd-base followed by the code layer cpio (what qemu boots)
    packages     ``dpkg-query -W`` of the rootfs
    version      snf_image.__version__ + hash of the code layer (see snf_image.helperimage.codelayer.helper_version)

Parts: :mod:`.rootfs` (debootstrap, cached by key, and the ext4 image),
:mod:`.kernel` (the helper's own kernel), :mod:`.initrd` (the busybox base and
the code layer), :mod:`.codelayer` (what the jail's code is and its version).
A code change rebuilds only the code layer (``snf-image helper build --code-only``), never the rootfs.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import kernel as custom_kernel
from .codelayer import helper_version
from .initrd import build_code_layer, build_initrd_base
from .kernel import DEFAULT_KERNEL, KERNEL_FLAVOURS
from .log import log
from .rootfs import build_root_image, ensure_rootfs, kernel_release, read_package_list, rootfs_key

DEFAULT_HELPER_DIR = Path("/var/lib/snf-image/helper")
DEFAULT_CACHE_DIR = Path("/var/cache/snf-image/helper-build")


def _write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.rename(path)


def base_key(packages: Iterable[str], kernel: str = DEFAULT_KERNEL) -> str:
    """What ``.base-key`` records: the rootfs key, plus the custom kernel's key when it is used.

    Without linux-source the key is one no build has made (a full build then says what to
    install); a code-only update does not need the source.
    """
    key = rootfs_key(packages)
    if kernel == "custom":
        source = custom_kernel.source_version() or "not installed"
        key += "+kernel-" + custom_kernel.kernel_key(source, custom_kernel.KERNEL_CONFIG.read_text("utf-8"))
    return key


@dataclass(frozen=True)
class BuildState:
    """What ``helper_dir`` holds against what this code and ``kernel`` need."""

    key: str  # the base key wanted (rootfs, and the custom kernel if any)
    version: str  # the helper version wanted
    base_ok: bool  # a complete base image, of whatever key
    base_current: bool  # ... of the wanted key
    code_current: bool  # the code layer is this code's


def build_state(helper_dir: Path, kernel: str = DEFAULT_KERNEL) -> BuildState:
    """Compare ``helper_dir`` with what a build would make; reads only small stamp files."""
    key = base_key(read_package_list(), kernel)
    version = helper_version()
    base_stamp = helper_dir / ".base-key"
    base_ok = base_stamp.exists() and all(
        (helper_dir / n).exists() for n in ("image", "kernel", "initrd-base", "packages")
    )
    version_file = helper_dir / "version"
    return BuildState(
        key=key,
        version=version,
        base_ok=base_ok,
        base_current=base_ok and base_stamp.read_text().strip() == key,
        code_current=version_file.exists()
        and version_file.read_text().strip() == version
        and (helper_dir / "initrd").exists(),
    )


def _build_base(helper_dir: Path, cache_dir: Path, packages: list[str], kernel: str, force: bool) -> None:
    """The root image, the kernel, the initrd's base and the package list.

    Our kernel compiles in the background (CPU) while debootstrap mostly downloads
    and unpacks (I/O): from an empty cache the two take about the longer one's time.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        built = background.submit(custom_kernel.ensure_custom_kernel, cache_dir, force) if kernel == "custom" else None
        root = ensure_rootfs(cache_dir, packages, force=force)
        start = time.monotonic()
        build_root_image(root, helper_dir / "image")
        log(f"root image built in {time.monotonic() - start:.1f} s")
        if built is not None:
            kernel_file = built.result() / "bzImage"
            custom_release = (built.result() / "release").read_text().strip()
        else:
            kernel_file = root / "boot" / f"vmlinuz-{kernel_release(root)}"
            custom_release = None
    shutil.copyfile(kernel_file, helper_dir / "kernel.tmp")
    (helper_dir / "kernel.tmp").rename(helper_dir / "kernel")
    _write(helper_dir / "initrd-base", build_initrd_base(root, custom_release))
    listing = subprocess.run(
        ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W"], check=True, capture_output=True, text=True
    ).stdout
    _write(helper_dir / "packages", listing)


def build(
    helper_dir: Path, cache_dir: Path, code_only: bool = False, force: bool = False, kernel: str = DEFAULT_KERNEL
) -> bool:
    """Bring ``helper_dir`` up to date; return True if anything was rebuilt.

    Idempotent: with nothing changed it only hashes the code. ``code_only`` never
    runs debootstrap: it needs a previous full build in ``helper_dir``. ``kernel``
    is ``custom`` (our own) or ``debian`` (the rootfs' cloud kernel; see the module docstring).
    """
    if kernel not in KERNEL_FLAVOURS:
        raise ValueError(f"kernel must be one of {', '.join(KERNEL_FLAVOURS)}, not {kernel!r}")
    helper_dir = Path(helper_dir)
    cache_dir = Path(cache_dir)
    state = build_state(helper_dir, kernel)
    version, key = state.version, state.key
    base_ok, base_current, current = state.base_ok, state.base_current, state.code_current
    packages = read_package_list()
    base_stamp = helper_dir / ".base-key"
    version_file = helper_dir / "version"
    initrd = helper_dir / "initrd"

    if code_only:
        if not base_ok:
            raise SystemExit(f"no helper base image in {helper_dir}: run a full build first")
        if current and not force:
            log(f"{helper_dir} is up to date ({version})")
            return False
    elif base_current and current and not force:
        log(f"{helper_dir} is up to date ({version})")
        return False

    helper_dir.mkdir(parents=True, exist_ok=True)
    if not code_only and (force or not base_current):
        version_file.unlink(missing_ok=True)  # a half-updated dir must not look current
        _build_base(helper_dir, cache_dir, packages, kernel, force)
        _write(base_stamp, key + "\n")

    start = time.monotonic()
    _write(initrd, (helper_dir / "initrd-base").read_bytes() + build_code_layer())
    _write(version_file, version + "\n")
    log(f"code layer built in {time.monotonic() - start:.2f} s; {helper_dir} is at {version}")
    return True
