"""Shared pieces of the Unix configuration tasks: account databases, line editing, base distro, safe writes.

One parser for ``/etc/passwd`` and ``/etc/group`` (ChangePassword,
EnforcePersonality, DeleteSSHKeys), one ``sshd_config`` reader
(ChangePassword, DeleteSSHKeys), one base-distro detector (AssignHostname,
SELinuxAutorelabel, DeleteSSHKeys; ConfigureNetwork may use it too), and
the line helpers every text editor uses so that CRLF files stay CRLF and a
file without a final newline gets one only where we append.

Everything that touches the guest goes through :mod:`helper.fsutil`;
:func:`write_file` and :func:`make_dirs` add what fsutil does not do:
replacing a symlink at the final path instead of following it, and
ownership and modes chosen by the task.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import logging
import os
import shlex
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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


def parse_passwd(text: str) -> dict[str, User]:
    """Users by name; the first entry of a name wins (as getpwnam), malformed and NIS (+/-) lines are skipped."""
    users: dict[str, User] = {}
    for line in split_lines(text):
        if is_comment(line) or line.startswith(("+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 7 or not fields[0]:
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        users.setdefault(fields[0], User(fields[0], uid, gid, fields[5], fields[6]))
    return users


def parse_group(text: str) -> dict[str, int]:
    """Group ids by name; the first entry of a name wins, malformed and NIS lines are skipped."""
    groups: dict[str, int] = {}
    for line in split_lines(text):
        if is_comment(line) or line.startswith(("+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 3 or not fields[0]:
            continue
        try:
            groups.setdefault(fields[0], int(fields[2]))
        except ValueError:
            continue
    return groups


def read_optional(root: Path, path: str) -> str | None:
    """The text of guest file ``path``, or None when it is absent (or not a regular file)."""
    try:
        return fsutil.read_text(root, path)
    except FileNotFoundError:
        return None


def read_passwd(root: Path) -> dict[str, User]:
    """The image's users (empty when it has no /etc/passwd)."""
    return parse_passwd(read_optional(root, "/etc/passwd") or "")


def read_group(root: Path) -> dict[str, int]:
    """The image's groups (empty when it has no /etc/group)."""
    return parse_group(read_optional(root, "/etc/group") or "")


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
    release = read_optional(root, "/etc/release")
    if release is not None and "netbsd" in release.lower():
        return "netbsd"
    motd = read_optional(root, "/etc/motd")
    if motd is not None and motd.lower().startswith("openbsd"):
        return "openbsd"
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = read_optional(root, path)
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
    text = read_optional(root, path)
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


# --- writing into the guest ---------------------------------------------------


def _host_of(root: Path, path: str) -> Path:
    """Host path of guest ``path`` with its parent resolved in the root and its final component NOT followed."""
    guest = PurePosixPath(path)
    if not guest.is_absolute() or ".." in guest.parts or guest.name in ("", ".", ".."):
        raise TaskError(f"Invalid path in the image: {path!r}")
    return fsutil.resolve(root, str(guest.parent)) / guest.name


def write_file(root: Path, path: str, data: bytes, *, mode: int, uid: int = 0, gid: int = 0) -> Path:
    """Create or replace guest file ``path`` atomically with exact owner and mode.

    A symlink (or any non-directory) at ``path`` is replaced, never followed;
    a directory there is an error. The parent must exist.
    """
    host = _host_of(root, path)
    parent = host.parent
    if not parent.is_dir():
        raise TaskError(f"Cannot write {path}: its directory does not exist in the image")
    if host.is_dir() and not host.is_symlink():
        raise TaskError(f"Cannot write {path}: it is a directory in the image")
    fd, tmp = tempfile.mkstemp(prefix=f".{host.name}.", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)  # after chown, which clears set-id bits
            os.fsync(f.fileno())
        os.replace(tmp, host)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return host


def make_dirs(root: Path, path: str, *, mode: int, uid: int = 0, gid: int = 0) -> list[str]:
    """Create the missing directories of guest ``path`` (itself included) with this owner and mode.

    Existing components are left as they are (a symlink to a directory
    inside the guest is followed, as the guest would); an existing
    non-directory is an error. Returns the guest paths created.
    """
    guest = PurePosixPath(path)
    if not guest.is_absolute() or ".." in guest.parts:
        raise TaskError(f"Invalid path in the image: {path!r}")
    created = []
    for i in range(2, len(guest.parts) + 1):
        prefix = str(PurePosixPath(*guest.parts[:i]))
        host = fsutil.resolve(root, prefix)
        if host.is_dir():
            continue
        if os.path.lexists(host):
            raise TaskError(f"Cannot create {path}: {prefix} exists in the image and is not a directory")
        try:
            host.mkdir()
        except OSError as exc:
            raise TaskError(f"Cannot create directory {prefix} in the image: {exc.strerror}") from exc
        os.chown(host, uid, gid, follow_symlinks=False)
        os.chmod(host, mode)
        created.append(prefix)
    return created


def remove(root: Path, path: str) -> bool:
    """Remove guest file (or symlink) ``path`` without following a final symlink; True if it was there."""
    host = _host_of(root, path)
    try:
        st = host.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        raise TaskError(f"Cannot remove {path}: it is a directory in the image")
    host.unlink()
    return True


# --- cloud-init hook -----------------------------------------------------------

CLOUD_INIT_MODULE = "tasks._cloud_init"


def cloud_init_hook(name: str) -> Callable[..., Any] | None:
    """The cloud-init implementation of ``name`` (a function of tasks/_cloud_init.py), or None if not there yet.

    Under the CLOUD_INIT property the original configured cloud-init instead
    of editing files; that code lives with the cloud-init work. A task asks
    for its hook and, while none exists, edits the files directly (with a
    warning) rather than doing nothing.
    """
    try:
        module = importlib.import_module(CLOUD_INIT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CLOUD_INIT_MODULE:
            raise
        return None
    hook = getattr(module, name, None)
    return hook if callable(hook) else None
