"""What the jail's code layer holds, and the helper version that hashes it.

The code layer is the jail's Python code: the host's contract package (and
the package's ``__init__`` with its version), ``helper`` and ``tasks``, plus
``helper/init``. Nothing else of the host goes into the VM. The version
stamp hashes every file of it, so a host whose code changed refuses a helper
built from older code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from snf_image import __version__
from snf_image.errors import HelperError

#: (package, sub-path within it or "" for all of it) that make up the code layer.
CODE_PARTS = (("snf_image", "__init__.py"), ("snf_image", "contract"), ("helper", ""), ("tasks", ""))
CODE_SUFFIXES = (".py", ".json")
CODE_EXTRA = ("helper/init",)


def _package_dir(package: str) -> Path:
    """Where ``package`` lives, found without importing it (the host never imports the jail)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HelperError(f"cannot find the {package} package to build the helper's code layer")
    return Path(next(iter(spec.submodule_search_locations)))


def code_layer_files() -> list[tuple[str, Path]]:
    """(path inside the code layer, source file) for every file of the code layer, sorted."""
    files: dict[str, Path] = {}
    for package, part in CODE_PARTS:
        top = _package_dir(package)
        base = top / part if part else top
        paths = [base] if base.is_file() else base.rglob("*")
        for path in paths:
            if path.is_file() and path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                files[f"{package}/{path.relative_to(top).as_posix()}"] = path
    for rel in CODE_EXTRA:
        package, _, name = rel.partition("/")
        files[rel] = _package_dir(package) / name
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
