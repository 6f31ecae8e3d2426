"""What the Debian package and the man page must agree on with the code (no build needed)."""

from __future__ import annotations

import argparse
import re

from snf_image import __version__, cli
from tests.osenv import REPO

OS_FILES = ("create", "import", "export", "rename", "verify", "variants.list", "parameters.list")


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
