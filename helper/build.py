"""Build the helper VM ("jail") image: rootfs image, kernel, initrd, package list, version stamp.

Layout of HELPER_DIR after a build::

    image        ext4 root filesystem (made with ``mke2fs -d``, never mounted on the host),
                 attached read-only with serial ``snf-helper-root``
    kernel       the Debian cloud kernel from the rootfs (``--kernel debian``, the default), or
                 our own build of Debian's linux-source from ``helper/kernel.config``
                 (``--kernel custom``: the only one that writes UFS, see below)
    initrd-base  newc cpio: busybox-static, /dev/console, the few kernel modules needed to
                 find and mount the root disk (none with the custom kernel: all built in)
    initrd       initrd-base followed by the code layer cpio (what qemu boots)
    packages     ``dpkg-query -W`` of the rootfs
    version      snf_image.__version__ + hash of the code layer (see snf_image.jail.helper_version)

The code layer (our packages ``snf_image``, ``helper``, ``tasks`` plus ``helper/init``)
lives in the second cpio archive of the initrd: the kernel unpacks concatenated
archives into one initramfs, and ``/init`` copies ``/snf-image/lib`` to
``/run/snf-image/lib`` in the real root. So a code change rebuilds only a few
hundred KiB of cpio (``--code-only``), never the rootfs.

Why ext4 and not squashfs: under TCG every decompressed byte costs emulated CPU,
and Python's startup reads many small files; an uncompressed, journal-less ext4
needs no extra host tool and no extra kernel module, and the sparse file costs
only the bytes used on the host.

The slow part, ``debootstrap``, is cached in CACHE_DIR keyed by a hash of the
package list, suite, mirror and this recipe's version.

The custom kernel exists because Debian's kernels mount UFS read-only
(CONFIG_UFS_FS_WRITE is off) and the BSD tasks must write the guest's UFS. It is
``make allnoconfig`` plus the fragment ``helper/kernel.config``, everything built
in, compiled from Debian's ``linux-source-6.1`` package (``apt-get install
linux-source-6.1 flex bison bc libelf-dev``). It is cached in CACHE_DIR as
``kernel-<key>/`` keyed by the fragment, the source package's version and
KERNEL_RECIPE_VERSION; to rebuild it, change one of those or pass ``--force``.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

from snf_image import jail

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Bump when the rootfs recipe (trimming, tweaks) changes: it is part of the cache key.
RECIPE_VERSION = "1"

HERE = Path(__file__).resolve().parent
PACKAGES_LIST = HERE / "packages.list"
DEFAULT_HELPER_DIR = Path("/var/lib/snf-image/helper")
DEFAULT_CACHE_DIR = Path("/var/cache/snf-image/helper-build")

#: The custom kernel: config fragment, source tarball and the package that ships it.
KERNEL_CONFIG = HERE / "kernel.config"
KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
#: Bump when the kernel recipe (make targets, flags) changes: it is part of the cache key.
KERNEL_RECIPE_VERSION = "1"
KERNEL_BUILD_DEPS = "build-essential flex bison bc libelf-dev libssl-dev"
KERNEL_FLAVOURS = ("debian", "custom")

#: Modules /init loads (dependencies are added from modules.dep). Built-in ones are skipped.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
#: Where the code layer lives inside the initramfs; /init copies it into the real root.
INITRD_LIB = "snf-image/lib"

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


def _log(msg: str) -> None:
    print(f"helper-build: {msg}", file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------- rootfs


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


def ensure_rootfs(cache_dir: Path, packages: list[str], force: bool = False) -> Path:
    """The debootstrapped, trimmed rootfs for ``packages``, built if not cached."""
    key = rootfs_key(packages)
    root = cache_dir / f"rootfs-{key}"
    done = cache_dir / f"rootfs-{key}.done"
    if done.exists() and root.is_dir() and not force:
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("rootfs-*"):  # other keys, half-built leftovers
        _log(f"removing stale {old}")
        remove_tree(old)
    tmp = cache_dir / f"rootfs-{key}.tmp"
    debs = cache_dir / "debs"
    debs.mkdir(exist_ok=True)
    _log(f"debootstrap {SUITE} into {tmp} ({len(packages)} packages)")
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
        log = tmp / "debootstrap" / "debootstrap.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            _log("debootstrap failed; the end of its log:\n" + "\n".join(tail))
        remove_tree(tmp)
        raise
    _log(f"debootstrap took {time.monotonic() - start:.0f} s")
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


# --------------------------------------------------------------------------- cpio


class Cpio:
    """A minimal writer of the newc cpio format the kernel unpacks into its initramfs.

    Written by hand so that nothing on the host is mknod'ed or chown'ed: entries
    get uid/gid 0 and mtime 0 (reproducible archives).
    """

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1000
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = "070701" + "".join(f"{f:08x}" for f in fields)
        out = self._buf
        out.write(header.encode() + name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        """Add a directory and its missing parents."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file (parents are created)."""
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def getvalue(self) -> bytes:
        """The archive with its trailer, padded to 512 bytes so archives concatenate cleanly."""
        self._entry("TRAILER!!!", 0)
        data = self._buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _module_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Relative paths of ``wanted`` modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_modname(path)] = path
    builtin = {_modname(p) for p in (modules_dir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        name = name.replace("-", "_")
        if name in builtin:
            continue
        if name not in by_name:
            raise RuntimeError(f"kernel module {name} is neither built in nor in modules.dep")
        visit(by_name[name])
    return order


def _modname(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """The module, decompressed: busybox insmod takes plain ELF."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def build_initrd_base(root: Path, custom_release: str | None = None) -> bytes:
    """busybox, /dev/console and the root-disk modules with their load order in /etc/snf-modules.

    With ``custom_release`` (our own kernel, everything built in) no module is loaded.
    """
    release = custom_release or kernel_release(root)
    modules_dir = root / "lib/modules" / release
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib/modules", "proc", "sys", "newroot", "run", "tmp"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", (root / "bin/busybox").read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    names = []
    for rel in [] if custom_release else _module_order(modules_dir, INITRD_MODULES):
        name = _modname(rel)
        cpio.file(f"lib/modules/{name}.ko", _module_bytes(modules_dir / rel))
        names.append(name)
    cpio.file("etc/snf-modules", "".join(f"{n}\n" for n in names).encode())
    cpio.file("etc/kernel-release", f"{release}\n".encode())
    return cpio.getvalue()


def build_code_layer() -> bytes:
    """The code layer cpio: /init plus our packages (sources and byte code) under /snf-image/lib.

    The .pyc files are compiled here with unchecked hashes (the guest's Python is the
    same 3.11 as Debian's on the host; a mismatch only costs a recompile in the guest),
    so the emulated CPU does not spend boot time compiling our modules.
    """
    cpio = Cpio()
    with tempfile.TemporaryDirectory(prefix="snf-code-") as tmp:
        staging = Path(tmp)
        for rel, src in jail.code_layer_files():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        compileall.compile_dir(
            staging,
            quiet=2,
            workers=1,
            ddir="/run/snf-image/lib",
            invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        cpio.file("init", (staging / "helper/init").read_bytes(), 0o755)
        for path in sorted(staging.rglob("*")):
            rel = path.relative_to(staging).as_posix()
            if path.is_dir():
                cpio.dir(f"{INITRD_LIB}/{rel}")
            else:
                cpio.file(f"{INITRD_LIB}/{rel}", path.read_bytes())
    return cpio.getvalue()


# --------------------------------------------------------------------------- custom kernel


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


def _source_version() -> str:
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


def ensure_custom_kernel(cache_dir: Path, force: bool = False, jobs: int | None = None) -> Path:
    """``cache_dir/kernel-<key>`` holding ``bzImage``, ``config`` and ``release``, built if not cached.

    The source is unpacked into a scratch directory under ``cache_dir`` and removed
    after the build (about 1.5 GiB while it lasts); only the ~3 MiB result is kept.
    """
    if not KERNEL_SOURCE.exists():
        raise SystemExit(f"{KERNEL_SOURCE} is missing: apt-get install {KERNEL_SOURCE_PACKAGE} {KERNEL_BUILD_DEPS}")
    config_text = KERNEL_CONFIG.read_text("utf-8")
    key = kernel_key(_source_version(), config_text)
    out = cache_dir / f"kernel-{key}"
    if (out / "bzImage").exists() and (out / "release").exists() and not force:
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob("kernel-*"):  # other keys, half-built leftovers
        _log(f"removing stale {old}")
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    work = cache_dir / f"kernel-{key}.tmp"
    work.mkdir()
    jobs = jobs or os.cpu_count() or 1
    start = time.monotonic()
    _log(f"unpacking {KERNEL_SOURCE}")
    subprocess.run(["tar", "-C", str(work), "--strip-components=1", "-xf", str(KERNEL_SOURCE)], check=True)
    make = ["make", "-C", str(work), "-s", f"-j{jobs}", "ARCH=x86_64"]
    subprocess.run([*make, f"KCONFIG_ALLCONFIG={KERNEL_CONFIG}", "allnoconfig"], check=True)
    missing = missing_options(config_fragment(), (work / ".config").read_text())
    if missing:
        raise RuntimeError(f"{KERNEL_CONFIG}: not in the final .config (unmet dependency?): {' '.join(missing)}")
    _log(f"compiling the kernel with {jobs} jobs")
    subprocess.run([*make, "bzImage"], check=True, stdout=subprocess.DEVNULL)
    release = subprocess.run([*make, "kernelrelease"], check=True, capture_output=True, text=True).stdout.strip()
    result = cache_dir / f"kernel-{key}.result"
    result.mkdir()
    shutil.copyfile(work / "arch/x86/boot/bzImage", result / "bzImage")
    shutil.copyfile(work / ".config", result / "config")
    (result / "release").write_text(release + "\n")
    shutil.rmtree(work)
    result.rename(out)
    _log(f"custom kernel {release} built in {time.monotonic() - start:.0f} s")
    return out


# --------------------------------------------------------------------------- image


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


def _write(path: Path, data: bytes | str) -> None:
    """Replace ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.rename(path)


def base_key(packages: Iterable[str], kernel: str = "debian") -> str:
    """What ``.base-key`` records: the rootfs key, plus the custom kernel's key when it is used."""
    key = rootfs_key(packages)
    if kernel == "custom":
        key += "+kernel-" + kernel_key(_source_version(), KERNEL_CONFIG.read_text("utf-8"))
    return key


def build(
    helper_dir: Path, cache_dir: Path, code_only: bool = False, force: bool = False, kernel: str = "debian"
) -> bool:
    """Bring ``helper_dir`` up to date; return True if anything was rebuilt.

    Idempotent: with nothing changed it only hashes the code. ``code_only`` never
    runs debootstrap: it needs a previous full build in ``helper_dir``. ``kernel``
    is ``debian`` (the rootfs' cloud kernel) or ``custom`` (see the module docstring).
    """
    if kernel not in KERNEL_FLAVOURS:
        raise ValueError(f"kernel must be one of {', '.join(KERNEL_FLAVOURS)}, not {kernel!r}")
    helper_dir = Path(helper_dir)
    cache_dir = Path(cache_dir)
    version = jail.helper_version()
    packages = read_package_list()
    key = base_key(packages, kernel)
    base_stamp = helper_dir / ".base-key"
    base_files = [helper_dir / n for n in ("image", "kernel", "initrd-base", "packages")]
    base_ok = base_stamp.exists() and all(p.exists() for p in base_files)
    base_current = base_ok and base_stamp.read_text().strip() == key
    version_file = helper_dir / "version"
    initrd = helper_dir / "initrd"
    current = version_file.exists() and version_file.read_text().strip() == version and initrd.exists()

    if code_only:
        if not base_ok:
            raise SystemExit(f"no helper base image in {helper_dir}: run a full build first")
        if current and not force:
            _log(f"{helper_dir} is up to date ({version})")
            return False
    elif base_current and current and not force:
        _log(f"{helper_dir} is up to date ({version})")
        return False

    helper_dir.mkdir(parents=True, exist_ok=True)
    if not code_only and (force or not base_current):
        root = ensure_rootfs(cache_dir, packages, force=force)
        version_file.unlink(missing_ok=True)  # a half-updated dir must not look current
        start = time.monotonic()
        build_root_image(root, helper_dir / "image")
        _log(f"root image built in {time.monotonic() - start:.1f} s")
        custom_release = None
        if kernel == "custom":
            built = ensure_custom_kernel(cache_dir, force=force)
            kernel_file = built / "bzImage"
            custom_release = (built / "release").read_text().strip()
        else:
            kernel_file = root / "boot" / f"vmlinuz-{kernel_release(root)}"
        shutil.copyfile(kernel_file, helper_dir / "kernel.tmp")
        (helper_dir / "kernel.tmp").rename(helper_dir / "kernel")
        _write(helper_dir / "initrd-base", build_initrd_base(root, custom_release))
        listing = subprocess.run(
            ["dpkg-query", f"--admindir={root / 'var/lib/dpkg'}", "-W"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        _write(helper_dir / "packages", listing)
        _write(base_stamp, key + "\n")

    start = time.monotonic()
    _write(initrd, (helper_dir / "initrd-base").read_bytes() + build_code_layer())
    _write(version_file, version + "\n")
    _log(f"code layer built in {time.monotonic() - start:.2f} s; {helper_dir} is at {version}")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python3 -m helper.build``: build or update the helper image."""
    parser = argparse.ArgumentParser(prog="helper.build", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--helper-dir", type=Path, default=DEFAULT_HELPER_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--code-only", action="store_true", help="rebuild only the code layer")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--kernel",
        choices=KERNEL_FLAVOURS,
        default="debian",
        help="debian: the rootfs' cloud kernel; custom: our own, writes UFS [%(default)s]",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    build(args.helper_dir, args.cache_dir, code_only=args.code_only, force=args.force, kernel=args.kernel)
    _log(f"done in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
