"""The Debian package and the Python distribution, built from this checkout and looked into."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

from snf_image import __version__
from snf_image.helperimage.codelayer import helper_version
from tests.debpkg import REPO, built_deb

DIST_PACKAGES = "./usr/lib/python3/dist-packages/"


def test_the_deb_passes_lintian():
    result = subprocess.run(["lintian", "--pedantic", str(built_deb())], capture_output=True, text=True, timeout=900)
    problems = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_deb_installs_what_ganeti_and_operators_read():
    listing = subprocess.run(["dpkg-deb", "--contents", str(built_deb())], capture_output=True, text=True).stdout
    paths = {line.split()[5]: line for line in listing.splitlines()}
    for name in ("create", "import", "export", "rename", "verify"):
        assert paths[f"./usr/share/ganeti/os/snf-image/{name}"].startswith("-rwxr-xr-x"), name
    assert (
        "-> /var/lib/snf-image/ganeti-os/ganeti_api_version"
        in paths["./usr/share/ganeti/os/snf-image/ganeti_api_version"]
    )
    for path in (
        "./usr/bin/snf-image",
        "./usr/share/man/man8/snf-image.8.gz",
        "./usr/share/doc/snf-image/README.md.gz",
        "./etc/snf-image/snf-image.conf",
        "./etc/ganeti/snf-image/variants/default.conf",
        f"{DIST_PACKAGES}snf_image/helperimage/jailcode/helper/init",
        f"{DIST_PACKAGES}snf_image/helperimage/jailcode/tasks/assign_hostname.py",
    ):
        assert path in paths, path
    top_level = {p[len(DIST_PACKAGES) :].split("/")[0] for p in paths if p.startswith(DIST_PACKAGES)} - {""}
    assert top_level == {"snf_image", f"snf_image-{__version__}.dist-info"}, top_level
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(built_deb()), "conffiles"], capture_output=True, text=True
    ).stdout.split()
    assert conffiles == ["/etc/ganeti/snf-image/variants/default.conf", "/etc/snf-image/snf-image.conf"]


def test_sdist_and_wheel_install_into_a_fresh_venv(tmp_path):
    """python3 -m build (the wheel made from the sdist), then pip: the command works, the jail's code is there."""
    dist = tmp_path / "dist"
    result = subprocess.run(
        ["/usr/bin/python3", "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next(dist.glob("snf_image-*.whl"))
    assert next(dist.glob("snf[-_]image-*.tar.gz"))
    env_dir = tmp_path / "venv"
    # the venv borrows Debian's python3-* libraries (pyparted would otherwise compile from source)
    venv.create(env_dir, with_pip=True, system_site_packages=True)
    python = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    helped = subprocess.run([str(env_dir / "bin" / "snf-image"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "helper" in helped.stdout, helped.stderr
    site = subprocess.run(
        [str(python), "-I", "-c", "import snf_image; print(snf_image.__file__)"], capture_output=True, text=True
    ).stdout.strip()
    site_packages = Path(site).parent.parent
    assert site_packages.is_relative_to(env_dir)
    assert not (site_packages / "helper").exists() and not (site_packages / "tasks").exists()
    # the installed copy locates the jail's code and hashes to the same helper version as this checkout
    installed = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "from snf_image.helperimage import codelayer as c; print(c.jail_sources(), c.helper_version())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    where, version = installed.stdout.split()
    assert Path(where).is_relative_to(site_packages / "snf_image")
    assert version == helper_version()
