"""Shared pieces of the Unix configuration tasks: account databases, line editing, base distro, sshd_config.

One parser for ``/etc/passwd`` and ``/etc/group`` (ChangePassword,
EnforcePersonality, DeleteSSHKeys), one ``sshd_config`` reader
(ChangePassword, DeleteSSHKeys), one base-distro detector (AssignHostname,
SELinuxAutorelabel, DeleteSSHKeys; ConfigureNetwork may use it too), and
the line helpers every text editor uses so that CRLF files stay CRLF and a
file without a final newline gets one only where we append.

Everything that touches the guest goes through :mod:`helper.fsutil`.
"""

from __future__ import annotations

import fnmatch
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from helper import fsutil
from helper.commands import TaskError

log = logging.getLogger(__name__)

# --- lines ------------------------------------------------------------------


def newline_of(text: str) -> str:
    """The line ending a file uses: CRLF when most of its lines end so, LF otherwise."""
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf * 2 >= text.count("\n") else "\n"


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` without their endings (a trailing CR of a CRLF file is dropped too)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.splitlines()]


def join_lines(lines: list[str], newline: str = "\n") -> str:
    """``lines`` as file text, every line terminated (so appending never glues two lines)."""
    return "".join(line + newline for line in lines)


def is_comment(line: str) -> bool:
    """Blank lines and ``#`` comments, which every editor keeps untouched."""
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


# --- passwd / group -----------------------------------------------------------


@dataclass(frozen=True)
class User:
    """One /etc/passwd entry."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def _records(text: str, min_fields: int) -> list[list[str]]:
    """The colon-separated records of a passwd-like file with a name and at least ``min_fields`` fields.

    Comments, blank, short and NIS (``+``/``-``) lines are skipped.
    """
    records = []
    for line in split_lines(text):
        if is_comment(line) or line.startswith(("+", "-")):
            continue
        fields = line.split(":")
        if len(fields) >= min_fields and fields[0]:
            records.append(fields)
    return records


def _number(field: str) -> int | None:
    try:
        return int(field)
    except ValueError:
        return None


def parse_passwd(text: str) -> dict[str, User]:
    """Users by name; the first entry of a name wins (as getpwnam), malformed and NIS (+/-) lines are skipped."""
    users: dict[str, User] = {}
    for fields in _records(text, 7):
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is not None and gid is not None:
            users.setdefault(fields[0], User(fields[0], uid, gid, fields[5], fields[6]))
    return users


def parse_group(text: str) -> dict[str, int]:
    """Group ids by name; the first entry of a name wins, malformed and NIS lines are skipped."""
    groups: dict[str, int] = {}
    for fields in _records(text, 3):
        gid = _number(fields[2])
        if gid is not None:
            groups.setdefault(fields[0], gid)
    return groups


def read_passwd(root: Path) -> dict[str, User]:
    """The image's users (empty when it has no /etc/passwd)."""
    return parse_passwd(fsutil.read_optional(root, "/etc/passwd") or "")


def read_group(root: Path) -> dict[str, int]:
    """The image's groups (empty when it has no /etc/group)."""
    return parse_group(fsutil.read_optional(root, "/etc/group") or "")


def owner_id(spec: str | int | None, table: dict[str, int], what: str) -> int:
    """A uid/gid from a name or a number as the image knows it; empty means root (0).

    ``what`` names the kind in the error ("File owner", "Group").
    """
    if spec is None or spec == "":
        return 0
    if isinstance(spec, int) or spec.isdigit():
        return int(spec)
    if spec not in table:
        raise TaskError(f"{what}: `{spec}' does not exist in the image")
    return table[spec]


# --- base distribution --------------------------------------------------------

# (marker file, distro) in the original's order (get_base_distro): first hit wins.
DISTRO_MARKERS = (
    ("/etc/debian_version", "debian"),
    ("/etc/redhat-release", "redhat"),
    ("/etc/slackware-version", "slackware"),
    ("/etc/SuSE-release", "suse"),
    ("/etc/gentoo-release", "gentoo"),
    ("/etc/arch-release", "arch"),
    ("/etc/freebsd-update.conf", "freebsd"),
)

# os-release ID / ID_LIKE words -> base distro, for images newer than the markers above.
OS_RELEASE_IDS = {
    "debian": "debian",
    "ubuntu": "debian",
    "rhel": "redhat",
    "fedora": "redhat",
    "centos": "redhat",
    "rocky": "redhat",
    "almalinux": "redhat",
    "suse": "suse",
    "opensuse": "suse",
    "sles": "suse",
    "gentoo": "gentoo",
    "arch": "arch",
    "slackware": "slackware",
}


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of an os-release file, shell quoting removed."""
    values = {}
    for line in split_lines(text):
        if is_comment(line) or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[key.strip()] = " ".join(words)
    return values


def distro_from_os_release(text: str) -> str | None:
    """The base distro an os-release file names in ID, else in ID_LIKE (first known word)."""
    values = parse_os_release(text)
    for word in [values.get("ID", ""), *values.get("ID_LIKE", "").split()]:
        distro = OS_RELEASE_IDS.get(word.lower())
        if distro is not None:
            return distro
    return None


def base_distro(root: Path) -> str | None:
    """The image's base distribution (debian, redhat, suse, ...) or None when unknown.

    The original's markers first (``/etc/coreos``, ``debian_version``,
    ``redhat-release``, ...), then ``/etc/os-release`` (``ID``, ``ID_LIKE``)
    for distributions that dropped their marker file (openSUSE's
    SuSE-release, for one).
    """
    if fsutil.is_dir(root, "/etc/coreos"):
        return "coreos"
    for marker, distro in DISTRO_MARKERS:
        if fsutil.exists(root, marker):
            return distro
    release = fsutil.read_optional(root, "/etc/release")
    if release is not None and "netbsd" in release.lower():
        return "netbsd"
    motd = fsutil.read_optional(root, "/etc/motd")
    if motd is not None and motd.lower().startswith("openbsd"):
        return "openbsd"
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = fsutil.read_optional(root, path)
        if text is not None:
            return distro_from_os_release(text)
    return None


# --- sshd_config --------------------------------------------------------------

SSHD_CONFIG = "/etc/ssh/sshd_config"
MAX_INCLUDE_DEPTH = 16


def parse_sshd_config(text: str) -> list[tuple[str, list[str]]]:
    """(keyword in lower case, arguments) of the global section, in order; stops at the first Match.

    Accepts ``Keyword value`` and ``Keyword=value``, double quotes, and
    comments; a line sshd would reject (unbalanced quotes) is skipped.
    """
    options = []
    for line in split_lines(text):
        if is_comment(line):
            continue
        head, sep, rest = line.strip().partition("=")
        if sep and not any(c.isspace() for c in head.strip()):
            line = f"{head.strip()} {rest}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "match":
            break
        options.append((keyword, words[1:]))
    return options


def _include_paths(root: Path, pattern: str) -> list[str]:
    """Guest paths an sshd ``Include`` pattern names, sorted (glob in the last component only)."""
    path = PurePosixPath(pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}")
    if not any(c in path.name for c in "*?["):
        return [str(path)]
    directory = fsutil.resolve(root, str(path.parent))
    if not directory.is_dir():
        return []
    return [str(path.parent / e.name) for e in sorted(directory.iterdir()) if fnmatch.fnmatch(e.name, path.name)]


def sshd_options(root: Path, path: str = SSHD_CONFIG, depth: int = 0) -> list[tuple[str, list[str]]] | None:
    """The global options of the image's sshd configuration with its Include files expanded, or None if absent."""
    text = fsutil.read_optional(root, path)
    if text is None:
        return None
    options: list[tuple[str, list[str]]] = []
    for keyword, args in parse_sshd_config(text):
        if keyword != "include":
            options.append((keyword, args))
            continue
        if depth >= MAX_INCLUDE_DEPTH:
            log.warning("sshd_config: Include nested too deeply in %s", path)
            continue
        for pattern in args:
            for included in _include_paths(root, pattern):
                options.extend(sshd_options(root, included, depth + 1) or [])
    return options


def sshd_first(options: list[tuple[str, list[str]]], keyword: str) -> list[str] | None:
    """The arguments of the first occurrence of ``keyword`` (sshd keeps the first value), or None."""
    return next((args for kw, args in options if kw == keyword), None)
