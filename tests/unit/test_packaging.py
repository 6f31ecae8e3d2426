"""What the Debian package and the man page must agree on with the code (no build needed)."""

from __future__ import annotations

import argparse
import re
import subprocess

from snf_image import __version__, cli
from tests.osenv import REPO

OS_FILES = ("create", "import", "export", "rename", "verify", "variants.list", "parameters.list")
#: What a deployment on the node runs or imports beyond the Python libraries dh_python3 maps from setup.py.
DEPLOYMENT_NEEDS = (
    "/usr/bin/qemu-system-x86_64",  # the helper VM
    "/usr/bin/qemu-storage-daemon",  # the sandboxed converter of container formats
    "/usr/bin/bwrap",  # ... and its sandbox
    "/usr/bin/qemu-nbd",  # userspace disks libnbd cannot reach itself
    "/usr/lib/python3/dist-packages/nbd.py",  # libnbd: converter output and nbd:// disks
    "/usr/bin/ssh-keygen",  # host keys made on the host
    "/usr/bin/prlimit",
    "/usr/bin/setpriv",
    "/usr/bin/timeout",
)


def test_the_package_version_is_the_code_version():
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(r"snf-image \(([^)]+)\)", first).group(1) == __version__


def test_the_package_installs_the_whole_os_definition_and_the_settings():
    install = {}
    for line in (REPO / "debian" / "snf-image.install").read_text().splitlines():
        source, dest = line.split()
        install[source] = dest
    for name in OS_FILES:
        assert install[name] == "usr/share/ganeti/os/snf-image", name
    assert install["etc/snf-image.conf"] == "etc/snf-image"
    assert install["etc/variants/default.conf"] == "etc/ganeti/snf-image/variants"
    assert all((REPO / source).is_file() for source in install)


def _dpkg(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=True).stdout


def test_the_package_depends_on_what_a_deployment_runs():
    """Each program a deployment runs comes from a package in Depends, one those depend on, or an Essential one."""
    control = (REPO / "debian" / "control").read_text().split("\nPackage: snf-image\n", 1)[1]
    depends_field = re.search(r"^Depends:(.*?)^\S", control, re.S | re.M).group(1)
    depends = {name.strip() for name in depends_field.split(",") if name.strip() and "$" not in name}
    pulled = {
        dependency.split()[0].split(":")[0]
        for package in depends
        for dependency in re.split(r"[,|]", _dpkg("-W", "-f", "${Depends}", package))
        if dependency.strip()
    }
    for path in DEPLOYMENT_NEEDS:
        package = _dpkg("-S", path).split(":", 1)[0]
        essential = _dpkg("-W", "-f", "${Essential}", package).strip() == "yes"
        assert essential or package in depends | pulled, f"{path} comes from {package}, which Depends does not bring"


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def test_help_texts_are_plain_text():
    for path, parser in _parsers(cli.parser()):
        texts = [parser.description or "", parser.epilog or ""]
        texts += [action.help or "" for action in parser._actions]
        for text in texts:
            assert not re.search(r"``|:\w+:`|\*\*", text), (path, text)


def test_the_man_page_names_every_command_and_option():
    page = (REPO / "doc" / "snf-image.8").read_text().replace("\\-", "-")
    for path, parser in _parsers(cli.parser()):
        if path:
            assert f"snf-image {' '.join(path)}" in page or f".B {' '.join(path)}" in page, path
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--version"):
                    assert option in page, (path, option)
