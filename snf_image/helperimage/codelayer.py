"""What the jail's code layer holds, where its sources are, and the helper version that hashes it.

The code layer is the jail's Python code: the host's contract package (and
the package's ``__init__`` with its version), ``helper`` and ``tasks``, plus
``helper/init``. Nothing else of the host goes into the VM. The version
stamp hashes every file of it, so a host whose code changed refuses a helper
built from older code.

``helper`` and ``tasks`` are never importable on the host. In a checkout they
sit beside ``snf_image/``; an installed snf-image (wheel, ``pip install .``,
the Debian package) carries them as data in ``snf_image/helperimage/jailcode/``
(setup.py's build step copies them there), so no top-level ``helper`` or
``tasks`` package ever lands in site-packages.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import snf_image
from snf_image import __version__
from snf_image.errors import HelperError

#: Where an installed snf-image keeps the jail's own packages (setup.py copies them there).
JAIL_CODE_DIR = "jailcode"
#: The jail's own packages, found under :func:`jail_sources`.
JAIL_PACKAGES = ("helper", "tasks")
#: The parts of the host package the jail gets: its version and the contract.
HOST_PARTS = ("__init__.py", "contract")
CODE_SUFFIXES = (".py", ".json")
CODE_EXTRA = ("helper/init",)


def jail_sources() -> Path:
    """The directory holding ``helper/`` and ``tasks/``: installed as package data, else a checkout's root."""
    host = Path(snf_image.__file__).resolve().parent
    for root in (host / "helperimage" / JAIL_CODE_DIR, host.parent):
        if all((root / rel).is_file() for rel in CODE_EXTRA) and all((root / p).is_dir() for p in JAIL_PACKAGES):
            return root
    raise HelperError(f"cannot find the jail's code (helper/, tasks/) in {host / 'helperimage' / JAIL_CODE_DIR}")


def _code_files(base: Path) -> list[Path]:
    paths = [base] if base.is_file() else sorted(base.rglob("*"))
    return [p for p in paths if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts]


def code_layer_files() -> list[tuple[str, Path]]:
    """(path inside the code layer, source file) for every file of the code layer, sorted."""
    files: dict[str, Path] = {}
    host = Path(snf_image.__file__).resolve().parent
    for part in HOST_PARTS:
        for path in _code_files(host / part):
            files[f"snf_image/{path.relative_to(host).as_posix()}"] = path
    root = jail_sources()
    for package in JAIL_PACKAGES:
        for path in _code_files(root / package):
            files[path.relative_to(root).as_posix()] = path
    for rel in CODE_EXTRA:
        files[rel] = root / rel
    return sorted(files.items())


@functools.cache
def helper_version() -> str:
    """The helper version this code needs: ``<__version__>+<hash of the code layer>``."""
    digest = hashlib.sha256()
    for rel, path in code_layer_files():
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return f"{__version__}+{digest.hexdigest()[:16]}"
