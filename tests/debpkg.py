"""The Debian package built from this checkout, once per test session (scripts/build-deb takes seconds)."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@functools.cache
def built_deb() -> Path:
    """snf-image_<version>_all.deb of the working tree as it is now (in a temp dir removed when the session ends)."""
    out = Path(tempfile.mkdtemp(prefix="snf-image-test-deb-"))
    atexit.register(shutil.rmtree, out, True)
    result = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), str(out)], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def previous_build(deb: Path, version: str, out: Path) -> Path:
    """The same package under a lower version: what an upgrade to ``deb`` starts from."""
    out.mkdir(parents=True, exist_ok=True)
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


# --------------------------------------------------------------------------- on this node, with apt

PACKAGE = "snf-image"
APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
#: What snf-image itself creates on a node, besides the package's files (postinst, helper build, metrics lock).
STATE_PATHS = (Path("/var/lib/snf-image"), Path("/var/cache/snf-image"))


def apt(*args: str) -> str:
    """apt-get as an operator runs it (no recommends: the test setup installs what the suite needs)."""
    result = subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "--no-install-recommends", *args],
        env=APT_ENV,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"apt-get {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def installed_version() -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Version}", PACKAGE], capture_output=True, text=True
    )
    return result.stdout[3:] if result.returncode == 0 and result.stdout.startswith("ii ") else None


def package_files() -> list[Path]:
    """Every path dpkg knows as the package's (files, links and directories)."""
    listing = subprocess.run(["dpkg-query", "-L", PACKAGE], capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in listing.splitlines() if line.startswith("/") and line != "/."]


def leftovers(paths: list[Path]) -> list[str]:
    """What of ``paths`` (and of snf-image's state) is still there after a purge; shared directories excepted."""
    found = [str(p) for p in (*paths, *STATE_PATHS) if p.is_symlink() or p.is_file()]
    for path in (*paths, *STATE_PATHS):
        if path.is_dir() and not path.is_symlink():
            owner = subprocess.run(["dpkg-query", "-S", str(path)], capture_output=True, text=True)
            if owner.returncode != 0:
                found.append(f"{path}/ (no other package owns it)")
    return found
