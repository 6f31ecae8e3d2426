"""ChangePassword: set the users' password and install their SSH authorized keys.

For every user in the ``USERS`` property (space-separated, default
``root``):

- with ``img_passwd``: the password is hashed with the method of the
  ``PASSWD_HASHING_METHOD`` property (``md5``, ``sha1``, ``blowfish``,
  ``sha256``, ``sha512``; default ``sha512`` on Linux) and written into
  ``/etc/shadow``; with ``img_passwd_hash`` that hash is written as given.
  The user's line keeps its aging fields (minimum, maximum, warning,
  inactivity); the last-change date becomes today (so a forced change,
  ``chage -d 0``, is lifted) and an account expiry date is cleared, as the
  original's fixed line did. A user in ``/etc/passwd`` but not in
  ``/etc/shadow`` gets a new shadow line.
- with ``auth_keys``: the keys are appended, without duplicating lines
  already there, to the file the image's ``sshd_config`` names in
  ``AuthorizedKeysFile`` (first path; ``%h``, ``%u``, ``%U``, ``%%``
  expanded; relative paths are under the home directory; default
  ``.ssh/authorized_keys``). ``none`` means keys cannot be installed (a
  warning). The file is owned by the user, mode 0600; its directory, when
  under the home directory, is owned by the user with mode 0700.

BSDs: the hash (default method: ``sha512`` FreeBSD, ``blowfish`` OpenBSD,
``sha1`` NetBSD) goes into ``/etc/master.passwd`` (the user's other fields
kept, the change time cleared). The BSDs read passwords from ``spwd.db``,
which only their ``pwd_mkdb`` writes: ``spwd.db`` is removed (so the
image's old password stops working) and the guest runs ``pwd_mkdb -p
/etc/master.passwd`` once at first boot -- from ``/etc/rc.firsttime`` on
OpenBSD, from a one-shot ``/etc/rc.local`` on FreeBSD and NetBSD that then
puts the image's own ``rc.local`` back. Keys as on Linux.

A user missing from ``/etc/passwd`` is an error. With neither a password
nor keys there is nothing to do. Under ``CLOUD_INIT`` the work is handed to
the cloud-init configuration (``tasks/_cloud_init.py``: ``change_password``:
the hash, never the password, and the keys as meta-data).

Windows: every user of USERS (default ``Administrator``) must be a local
account in the image's SAM (whole names); the password goes into a file
that a first-boot script reads, wipes and deletes, never onto a command
line (``tasks/_windows/scripts.py``); ``img_passwd_hash`` is an error
there. On ``windows-legacy`` sysprep.inf's empty ``AdminPassword`` gets it
too (mini-setup applies it).

Properties: USERS, PASSWD_HASHING_METHOD, CLOUD_INIT.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from helper import fsutil
from helper.commands import TaskError
from helper.framework import BSD, WINDOWS, Context, Task

from . import _bsd, _cloud_init, _unix
from ._windows import guest as windows_guest
from ._windows import scripts as windows_scripts
from ._windows.checks import check_user_name, missing_users
from ._windows.ini import decode_text, encode_text, ini_get, ini_quote, ini_set

SHADOW = "/etc/shadow"
DEFAULT_USER = "root"
WINDOWS_DEFAULT_USER = "Administrator"
DEFAULT_AUTHORIZED_KEYS = ".ssh/authorized_keys"
# Default PASSWD_HASHING_METHOD per OS family, as the original.
DEFAULT_METHOD = {"linux": "sha512", "freebsd": "sha512", "openbsd": "blowfish", "netbsd": "sha1"}
# crypt(3) methods -> (passlib handler, rounds): glibc's default 5000 rounds for sha*_crypt
# (no "rounds=" in the hash, the form every libc reads); passlib's default salts (16 chars).
METHODS = {
    "md5": ("md5_crypt", None),
    "sha1": ("sha1_crypt", None),
    "blowfish": ("bcrypt", None),
    "sha256": ("sha256_crypt", 5000),
    "sha512": ("sha512_crypt", 5000),
}


def hash_password(password: str, method: str) -> str:
    """The crypt(3) hash of ``password`` with ``method`` (a PASSWD_HASHING_METHOD name).

    Public so the cloud-init configuration hashes the same way (chpasswd
    accepts hashes, so no clear-text password needs to land in the image).
    """
    found = METHODS.get(method.strip().lower())
    if found is None:
        raise TaskError(f"Unknown PASSWD_HASHING_METHOD {method!r} (expected one of: {', '.join(METHODS)})")
    # here: only a deployment that hashes pays for passlib's import (~0.1 s of the helper's boot, TCG)
    from passlib import hash as passlib_hash
    from passlib.exc import MissingBackendError

    name, rounds = found
    handler = getattr(passlib_hash, name)
    try:
        return (handler.using(rounds=rounds) if rounds else handler).hash(password)
    except MissingBackendError as exc:
        raise TaskError(f"Password hashing method {method} is not available in the helper: {exc}") from exc


def check_hash(value: str) -> str:
    """``value`` if it can be a shadow password field; a colon or a line break would corrupt the file."""
    if not value or any(c in value for c in ":\r\n\0"):
        raise TaskError("img_passwd_hash is not a valid password hash (empty, or contains ':' or a line break)")
    return value


def days_since_epoch(day: datetime.date) -> int:
    """The shadow last-change field for ``day``."""
    return (day - datetime.date(1970, 1, 1)).days


def set_shadow_password(text: str, user: str, hashed: str, today: int) -> str:
    """``/etc/shadow`` text with ``user``'s password set (every line of that user, if duplicated).

    Fields: password = ``hashed``, last change = ``today``, account expiry
    cleared, the rest kept. A user without a line gets
    ``user:hash:today:0:99999:7:::``. Other lines are kept byte for byte.
    """
    newline = _unix.newline_of(text)
    lines = _unix.split_lines(text)
    found = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] != user or len(fields) < 2:
            continue
        fields += [""] * (9 - len(fields))
        fields[1] = hashed
        fields[2] = str(today)
        fields[7] = ""
        lines[i] = ":".join(fields)
        found = True
    if not found:
        lines.append(f"{user}:{hashed}:{today}:0:99999:7:::")
    return _unix.join_lines(lines, newline)


def authorized_keys_path(setting: list[str] | None, user: _unix.User) -> str | None:
    """The guest path of ``user``'s authorized keys from AuthorizedKeysFile's arguments, or None for ``none``.

    The first path is used (sshd reads them all; the first is where keys go).
    """
    pattern = setting[0] if setting else DEFAULT_AUTHORIZED_KEYS
    if pattern.lower() == "none":
        return None
    expanded = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            token = pattern[i + 1]
            replacement = {"%": "%", "h": user.home, "u": user.name, "U": str(user.uid)}.get(token)
            if replacement is None:
                raise TaskError(f"AuthorizedKeysFile {pattern!r}: unsupported token %{token}")
            expanded.append(replacement)
            i += 2
            continue
        expanded.append(c)
        i += 1
    path = "".join(expanded)
    if not path.startswith("/"):
        path = f"{user.home.rstrip('/')}/{path}"
    return path


def key_lines(auth_keys: str) -> list[str]:
    """The keys to install: non-empty lines, blanks and CR stripped, first occurrence only."""
    keys: list[str] = []
    for line in _unix.split_lines(auth_keys):
        line = line.strip()
        if line and line not in keys:
            keys.append(line)
    return keys


def add_authorized_keys(text: str, keys: list[str]) -> str:
    """``authorized_keys`` text with the ``keys`` not already there appended (comparing stripped lines)."""
    newline = _unix.newline_of(text)
    lines = _unix.split_lines(text)
    present = {line.strip() for line in lines}
    lines += [key for key in keys if key not in present]
    return _unix.join_lines(lines, newline)


@dataclass(frozen=True)
class Credentials:
    """What to set: the users, the crypt hash (or None) and the authorized keys (maybe none)."""

    users: list[str]
    hashed: str | None
    keys: list[str]


def credentials(ctx: Context) -> Credentials | None:
    """What this deployment asks for, or None when there is nothing to do."""
    password = ctx.rules.password or None
    given_hash = ctx.rules.password_hash or None
    keys = key_lines(ctx.rules.auth_keys or "")
    if password is None and given_hash is None and not keys:
        return None
    users = ctx.properties.value("USERS").split()
    if not users:
        users = [DEFAULT_USER]
        ctx.warning(f"Image property `USERS' is missing or empty. Using the default user: `{users[0]}'.")
    if given_hash is not None:
        hashed: str | None = check_hash(given_hash)
    elif password is not None:
        method = ctx.properties.value("PASSWD_HASHING_METHOD") or DEFAULT_METHOD.get(ctx.osfamily, "sha512")
        hashed = hash_password(password, method)
    else:
        hashed = None
    return Credentials(users, hashed, keys)


def install_keys(ctx: Context, user: _unix.User, keys: list[str], setting: list[str] | None) -> None:
    """Append ``keys`` to ``user``'s authorized keys file in the guest, with ownership and modes sshd accepts.

    A symlink at the file's own path, or a symlinked directory on the way
    (but the standard layout's, ``/home -> usr/home``), is refused: the
    keys, and the user's ownership, would land on whatever it points to
    (``/etc/shadow``), a gift to the user (helper.fsutil's write policy).
    """
    path = authorized_keys_path(setting, user)
    if path is None:
        ctx.warning(f"AuthorizedKeysFile is `none' in sshd_config; not installing SSH keys for user {user.name}")
        return
    guest = PurePosixPath(path)
    home = PurePosixPath(user.home)
    if home != PurePosixPath("/") and home in guest.parents:
        # above home: root's; home and below: the user's (StrictModes accepts both)
        fsutil.make_dirs(ctx.target, str(home.parent), mode=0o755)
        fsutil.make_dirs(ctx.target, str(guest.parent), mode=0o700, uid=user.uid, gid=user.gid)
        ssh_dir = fsutil.entry(ctx.target, str(guest.parent))
        if guest.parent != home and not ssh_dir.is_symlink():
            os.chown(ssh_dir, user.uid, user.gid, follow_symlinks=False)
            ssh_dir.chmod(0o700)
    else:
        fsutil.make_dirs(ctx.target, str(guest.parent), mode=0o755)
    old = fsutil.read_optional(ctx.target, path) or ""
    data = add_authorized_keys(old, keys).encode("utf-8", "surrogateescape")
    fsutil.write_file(ctx.target, path, data, mode=0o600, uid=user.uid, gid=user.gid, edit=True)


def unix_credentials(ctx: Context) -> Credentials | None:
    """What to write into the image's files; None when there is nothing to do or cloud-init does it."""
    creds = credentials(ctx)
    if creds is not None and ctx.cloud_init:
        _cloud_init.change_password(ctx, creds)
        return None
    return creds


def install_all_keys(ctx: Context, creds: Credentials) -> None:
    """The authorized keys of every user of ``creds``, where the image's sshd looks for them."""
    passwd = _unix.read_passwd(ctx.target)
    missing = [u for u in creds.users if u not in passwd]
    if missing:
        raise TaskError(f"User(s) {', '.join(missing)} do not exist in the image's /etc/passwd")
    options = _unix.sshd_options(ctx.target)
    setting = None if options is None else _unix.sshd_first(options, "authorizedkeysfile")
    for user in creds.users:
        install_keys(ctx, passwd[user], creds.keys, setting)


def apply(ctx: Context) -> None:
    """Edit /etc/shadow and the authorized keys files directly (Linux)."""
    creds = unix_credentials(ctx)
    if creds is None:
        return
    passwd = _unix.read_passwd(ctx.target)
    missing = [u for u in creds.users if u not in passwd]
    if missing:
        raise TaskError(f"User(s) {', '.join(missing)} do not exist in the image's /etc/passwd")
    if creds.hashed is not None:
        text = fsutil.read_optional(ctx.target, SHADOW)
        if text is None:
            raise TaskError(f"Unable to find {SHADOW} in the image")
        today = days_since_epoch(datetime.datetime.now(datetime.UTC).date())
        for user in creds.users:
            text = set_shadow_password(text, user, creds.hashed, today)
        fsutil.write_text(ctx.target, SHADOW, text)
    if creds.keys:
        install_all_keys(ctx, creds)


#: Left over by an interrupted pwd_mkdb (NetBSD); stale copies of the old passwords.
BSD_DB_FILES = ("/etc/spwd.db", "/etc/pwd.db.tmp", "/etc/spwd.db.tmp")


def apply_bsd(ctx: Context) -> None:
    """Edit /etc/master.passwd and the authorized keys; the guest rebuilds its databases at first boot."""
    creds = unix_credentials(ctx)
    if creds is None:
        return
    if creds.hashed is not None:
        text = fsutil.read_optional(ctx.target, _bsd.MASTER_PASSWD)
        if text is None:
            raise TaskError(f"Unable to find {_bsd.MASTER_PASSWD} in the image")
        missing = [u for u in creds.users if u not in _bsd.master_passwd_users(text)]
        if missing:
            raise TaskError(f"User(s) {', '.join(missing)} do not exist in the image's {_bsd.MASTER_PASSWD}")
        for user in creds.users:
            text, _ = _bsd.set_master_password(text, user, creds.hashed)
        fsutil.write_text(ctx.target, _bsd.MASTER_PASSWD, text, mode=0o600)
        for path in BSD_DB_FILES:
            fsutil.remove(ctx.target, path)
        _bsd.add_firstboot(ctx, _bsd.PWD_MKDB)
    if creds.keys:
        install_all_keys(ctx, creds)


def apply_windows(ctx: Context) -> None:
    """Windows: the first-boot scripts that set the USERS' password, which must be accounts of the SAM."""
    if ctx.rules.password_hash:
        raise TaskError("On Windows images a password hash is not applicable (img_passwd_hash); use img_passwd")
    if ctx.rules.auth_keys:
        ctx.warning("SSH keys (auth_keys) are ignored on Windows images")
    password = ctx.rules.password
    if not password:
        return
    users = ctx.properties.value("USERS").split()
    if not users:
        users = [WINDOWS_DEFAULT_USER]
        ctx.warning(f"Image property `USERS' is missing or empty. Using the default user: `{WINDOWS_DEFAULT_USER}'.")
    for user in users:
        check_user_name(user)
    missing = missing_users(users, windows_guest.sam_users(ctx))
    if missing:
        raise TaskError(f"User(s) {', '.join(missing)} do not exist in the image's SAM (local accounts)")
    snf_dir = windows_guest.image(ctx).snf_dir
    for name, data in (
        (windows_scripts.PASSWORD_FILE, windows_scripts.password_file(password)),
        (windows_scripts.PASSWORD_VBS, windows_scripts.password_vbs(users).encode("utf-8")),
        (windows_scripts.PASSWORD_SCRIPT, windows_scripts.password_cmd(users).encode("utf-8")),
    ):
        windows_guest.write_bytes(ctx, f"{snf_dir}/{name}", data)
    if ctx.osfamily == "windows-legacy":
        set_admin_password(ctx, password)


def set_admin_password(ctx: Context, password: str) -> None:
    """sysprep.inf [GuiUnattended] AdminPassword, when the file leaves it empty (mini-setup applies it)."""
    path = windows_guest.answer_file(ctx)
    text, codec = decode_text(windows_guest.read_bytes(ctx, path) or b"")
    current = ini_get(text, "GuiUnattended", "AdminPassword")
    if current not in (None, "", "*"):
        return
    if '"' in password:
        ctx.warning("The password contains a double quote; sysprep.inf's AdminPassword is left as it is")
        return
    text = ini_set(text, "GuiUnattended", "AdminPassword", ini_quote(password))
    text = ini_set(text, "GuiUnattended", "EncryptedAdminPassword", "No")
    windows_guest.write_bytes(ctx, path, encode_text(text, codec))


FAMILY_HANDLERS: dict[str, Callable[[Context], None]] = {
    "linux": apply,
    **dict.fromkeys(BSD, apply_bsd),
    **dict.fromkeys(WINDOWS, apply_windows),
}

TASK = Task(
    name="ChangePassword",
    order=50,
    families=frozenset(FAMILY_HANDLERS),
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)


def run(ctx: Context) -> None:
    """Set the password and keys of the USERS (or hand them to cloud-init)."""
    FAMILY_HANDLERS[ctx.osfamily](ctx)
