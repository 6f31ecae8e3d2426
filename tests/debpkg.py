"""The Debian package built from this checkout, once per test session (scripts/build-deb takes seconds)."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def built_deb() -> Path:
    """snf-image_<version>_all.deb of the working tree as it is now (a temp dir that lives as long as the session)."""
    out = Path(tempfile.mkdtemp(prefix="snf-image-test-deb-"))
    result = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), str(out)], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def previous_build(deb: Path, version: str, out: Path) -> Path:
    """The same package under a lower version: what an upgrade to ``deb`` starts from."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "--raw-extract", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    control.write_text(
        "\n".join(f"Version: {version}" if line.startswith("Version:") else line for line in lines) + "\n"
    )
    target = out / f"snf-image_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(target)], check=True, capture_output=True
    )
    return target
