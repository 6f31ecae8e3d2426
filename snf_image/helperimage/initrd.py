"""The helper's initrd: a busybox base (with the root disk's modules) and the code layer.

The kernel unpacks concatenated cpio archives into one initramfs: the base
archive holds busybox, ``/dev/console`` and the few modules needed to find and
mount the root disk; the code layer archive holds ``/init`` and the jail's
Python code (the contract, ``helper``, ``tasks``) under ``/snf-image/lib``,
which ``/init`` copies into the real root. A code change rebuilds only the
code layer, a few hundred KiB.
"""

from __future__ import annotations

import compileall
import lzma
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from .codelayer import code_layer_files
from .cpio import Cpio
from .rootfs import kernel_release

#: Modules /init loads (dependencies are added from modules.dep). Built-in ones are skipped.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4", "crc32c_generic")
#: Where the code layer lives inside the initramfs; /init copies it into the real root.
INITRD_LIB = "snf-image/lib"


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
        for rel, src in code_layer_files():
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
