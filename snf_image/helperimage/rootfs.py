"""The helper's root filesystem: debootstrapped once (cached by key), trimmed, made into an ext4 image.

Why ext4 and not squashfs: under TCG every decompressed byte costs emulated CPU,
and Python's startup reads many small files; an uncompressed, journal-less ext4
needs no extra host tool and no extra kernel module, and the sparse file costs
only the bytes used on the host. The image is made with ``mke2fs -d``: nothing
is ever mounted on the host.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from .log import log

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Bump when the rootfs recipe (trimming, tweaks) changes: it is part of the cache key.
RECIPE_VERSION = "1"

PACKAGES_LIST = Path(__file__).resolve().parent / "packages.list"

#: Removed from the rootfs before it becomes the image: documentation, apt caches, the
#: rootfs' own initramfs (we boot our own).
TRIM_GLOBS = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "boot/initrd.img*",
)


def read_package_list(path: Path = PACKAGES_LIST) -> list[str]:
    """Package names from ``packages.list`` (comments and blank lines ignored)."""
    names = []
    for line in path.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def rootfs_key(packages: Iterable[str]) -> str:
    """Cache key of the debootstrapped rootfs: everything that changes its content."""
    text = "\n".join([RECIPE_VERSION, SUITE, MIRROR, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, innermost first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts what a failed or killed debootstrap left mounted inside (its /proc).

    Without it, rmtree walks into the host's /proc through the chroot's mount.
    """
    if path.is_dir() and not path.is_symlink():
        for point in _mounts_under(path):
            subprocess.run(["umount", "--lazy", point], check=False)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def cached_rootfs(cache_dir: Path, packages: list[str]) -> Path | None:
    """The finished rootfs for ``packages`` in ``cache_dir``, if a build left one there."""
    key = rootfs_key(packages)
    root = cache_dir / f"rootfs-{key}"
    return root if (cache_dir / f"rootfs-{key}.done").exists() and root.is_dir() else None


def ensure_rootfs(cache_dir: Path, packages: list[str], force: bool = False) -> Path:
    """The debootstrapped, trimmed rootfs for ``packages``, built if not cached."""
    cached = cached_rootfs(cache_dir, packages)
    if cached is not None and not force:
        return cached
    key = rootfs_key(packages)
    root = cache_dir / f"rootfs-{key}"
    done = cache_dir / f"rootfs-{key}.done"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("rootfs-*"):  # other keys, half-built leftovers
        log(f"removing stale {old}")
        remove_tree(old)
    tmp = cache_dir / f"rootfs-{key}.tmp"
    debs = cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    log(f"debootstrap {SUITE} into {tmp} ({len(packages)} packages)")
    start = time.monotonic()
    try:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                f"--cache-dir={debs}",
                SUITE,
                str(tmp),
                MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except BaseException:
        debootstrap_log = tmp / "debootstrap" / "debootstrap.log"
        if debootstrap_log.exists():
            tail = debootstrap_log.read_text(errors="replace").splitlines()[-15:]
            log("debootstrap failed; the end of its log:\n" + "\n".join(tail))
        remove_tree(tmp)
        raise
    log(f"debootstrap took {time.monotonic() - start:.0f} s")
    _tweak_rootfs(tmp)
    tmp.rename(root)
    done.write_text(key + "\n")
    return root


def _tweak_rootfs(root: Path) -> None:
    """Make the rootfs fit a read-only, single-process VM and drop what it never reads."""
    for pattern in TRIM_GLOBS:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (root / "etc/hostname").write_text("snf-image-helper\n")
    (root / "etc/fstab").write_text("# the helper's mounts are made by its /init\n")
    mtab = root / "etc/mtab"
    if mtab.exists() or mtab.is_symlink():
        mtab.unlink()
    mtab.symlink_to("/proc/self/mounts")
    for d in ("run", "tmp", "dev", "proc", "sys"):
        (root / d).mkdir(exist_ok=True)


def kernel_release(root: Path) -> str:
    """The (single) kernel release installed in the rootfs."""
    releases = sorted(p.name for p in (root / "lib/modules").iterdir() if (p / "modules.dep").exists())
    if len(releases) != 1:
        raise RuntimeError(f"expected one kernel in the rootfs, found {releases}")
    return releases[0]


def build_root_image(root: Path, image: Path) -> None:
    """ext4 image of ``root`` made by mke2fs -d: nothing is mounted on the host."""
    used = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            inodes += 1
            st = os.lstat(os.path.join(dirpath, name))
            used += (st.st_size + 4095) // 4096 * 4096 if stat.S_ISREG(st.st_mode) else 4096
    size_kib = (used * 11 // 10 + inodes * 256 + (64 << 20)) // 1024
    tmp = image.with_name(image.name + ".tmp")
    tmp.unlink(missing_ok=True)
    subprocess.run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "snf-helper-root",
            "-b",
            "4096",
            "-m",
            "0",
            "-N",
            str(inodes * 5 // 4 + 4096),
            "-O",
            "^has_journal,^resize_inode",
            "-E",
            "root_owner=0:0,lazy_itable_init=0",
            "-d",
            str(root),
            str(tmp),
            f"{size_kib}k",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tmp.rename(image)
