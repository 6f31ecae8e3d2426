"""EnforcePersonality: inject the files of img_personality into the image.

Each entry of the personality (OpenStack's server personality: ``path``,
base64 ``contents``, ``owner``, ``group``, ``mode``) becomes a file at
``path`` with that content, owner and group (names looked up in the
image's ``/etc/passwd`` and ``/etc/group``, or numeric ids; empty or absent
means root; an unknown name is an error) and mode (a decimal number in the
JSON, default 288 = 0440). An existing file is replaced; a symlink at the
path is replaced, not followed. Missing parent directories are created
with mode 0750 and the file's owner and group, as the original did; an
existing parent that is not a directory is an error. Nothing is ever
written outside the image's root, whatever symlinks the image holds.

This is the last mounted task before RunCustomTask (order 60), so that no
other task overwrites what the user injected. Without entries it warns
"This image has no personality (0 files to inject)". Under ``CLOUD_INIT``
the files are handed to the cloud-init configuration
(``tasks/_cloud_init.py``: ``inject_files``, which can resolve owners
cloud-init creates at first boot).

Windows: each file is written as given into the NTFS (owner, group and
mode ignored); a file it replaces is kept as ``<path>.bak.<YYYYmmdd.HHMMSS>``,
as the original did. Paths resolve inside the root, matched without case.

Properties: CLOUD_INIT.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from helper import fsutil
from helper.commands import TaskError
from helper.framework import UNIX, WINDOWS, Context, Task
from snf_image.contract.rules import PersonalityFile

from . import _cloud_init, _unix

PARENT_MODE = 0o750
NO_PERSONALITY = "This image has no personality (0 files to inject)"


@dataclass(frozen=True)
class File:
    """One personality entry, decoded and checked."""

    path: str
    contents: bytes
    owner: str
    group: str
    mode: int


def parse_entry(entry: PersonalityFile) -> File:
    """A personality entry as a :class:`File`; TaskError for a bad path, bad base64 or a bad mode."""
    path = entry.path
    if not path.startswith("/") or "\0" in path:
        raise TaskError(f"Personality: invalid path {path!r} (must be absolute)")
    guest = PurePosixPath(path)
    if ".." in guest.parts or guest.name in ("", ".", ".."):
        raise TaskError(f"Personality: invalid path {path!r}")
    try:
        contents = base64.b64decode(entry.contents, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskError(f"Personality: contents of {path} are not valid base64") from exc
    if not 0 <= entry.mode <= 0o7777:
        raise TaskError(f"Personality: invalid mode {entry.mode!r} for {path}")
    return File(str(guest), contents, entry.owner, entry.group, entry.mode)


def inject(ctx: Context, files: list[File]) -> None:
    """Write ``files`` into the guest with resolved ownership (Linux and other Unix roots)."""
    users = {name: user.uid for name, user in _unix.read_passwd(ctx.target).items()}
    groups = _unix.read_group(ctx.target)
    for f in files:
        uid = _unix.owner_id(f.owner, users, "File owner")
        gid = _unix.owner_id(f.group, groups, "Group")
        fsutil.make_dirs(ctx.target, str(PurePosixPath(f.path).parent), mode=PARENT_MODE, uid=uid, gid=gid)
        fsutil.write_file(ctx.target, f.path, f.contents, mode=f.mode, uid=uid, gid=gid)


def backup_name(path: str, now: datetime.datetime) -> str:
    """``<path>.bak.<YYYYmmdd.HHMMSS>``, the original's name for a file a Windows personality replaces."""
    return f"{path}.bak.{now:%Y%m%d.%H%M%S}"


def inject_windows(ctx: Context, files: list[File]) -> None:
    """Windows: each file written as is; a file it replaces is kept as <path>.bak.<time> (NTFS: no owners, modes)."""
    stamp = datetime.datetime.now()
    for f in files:
        parent = str(PurePosixPath(f.path).parent)
        fsutil.make_dirs(ctx.target, parent, mode=0o755, ignore_case=True)
        existing = fsutil.entry(ctx.target, f.path, ignore_case=True)  # the entry itself, a symlink not followed
        if existing.is_dir() and not existing.is_symlink():
            raise TaskError(f"Personality: {f.path} is a directory in the image")
        if existing.exists() or existing.is_symlink():
            existing.rename(existing.with_name(backup_name(existing.name, stamp)))
        # as the image spelt the name it replaces
        fsutil.write_file(ctx.target, fsutil.guest_path(ctx.target, existing), f.contents, mode=0o644)


# The BSDs keep users and groups in /etc/passwd and /etc/group too.
FAMILY_HANDLERS: dict[str, Callable[[Context, list[File]], None]] = {
    **dict.fromkeys(UNIX, inject),
    **dict.fromkeys(WINDOWS, inject_windows),
}

TASK = Task(
    name="EnforcePersonality",
    order=60,
    families=frozenset(FAMILY_HANDLERS),
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)


def run(ctx: Context) -> None:
    """Inject the personality files (or hand them to cloud-init)."""
    files = [parse_entry(e) for e in ctx.rules.personality]
    if not files:
        ctx.warning(NO_PERSONALITY)
        return
    if ctx.cloud_init:
        _cloud_init.inject_files(ctx, files)
        return
    FAMILY_HANDLERS[ctx.osfamily](ctx, files)
