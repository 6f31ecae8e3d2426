"""DeleteSSHKeys: remove the image's SSH host keys and make sure the instance gets its own.

Every instance made from an image would otherwise share the image's host
keys, so anyone holding the image could impersonate any instance. The task
removes ``/etc/ssh/ssh_host_*`` and every other key named by a ``HostKey``
line of the image's ``sshd_config`` (Include files followed; a missing
``sshd_config`` is a warning, and then nothing is installed), with its
``.pub`` and ``-cert.pub``.

Then, unless the image makes new keys at boot by itself -- Red Hat's
``sshd-keygen``, Arch's ``sshdgenkeys``, SUSE's ``sshd-gen-keys-start``, a
``regenerate-ssh-host-keys`` unit, or an ``/etc/init.d/sshd`` that runs
``ssh-keygen`` -- it installs the keys the host made for this instance
(``snf_image/hostkeys.py``: one per type, made on the host at full speed
and handed over in the rules) for the keys the image's sshd uses: the types
and paths of the ``HostKey`` lines (type from the file name, else from the
old key), else the default keys the image had, else rsa, ecdsa and ed25519
at the default paths. DSA and RSA1 keys get none (sshd no longer accepts
them), nor does a second ``HostKey`` of a type. Private keys are 0600 and
public keys 0644, owned by root (a private key the image kept 0640 for a
group, as Red Hat's ``ssh_keys``, keeps that group and mode); each new file
gets the SELinux label (``security.selinux``) of the key it replaces, and
SELinuxAutorelabel relabels SELinux images at first boot anyway. Debian's
openssh-server does not regenerate keys at boot (its ``ssh`` service fails
without them), which is why this is needed.

The BSDs get their keys the same way; their rc scripts make missing keys
at boot (FreeBSD and NetBSD ``rc.d/sshd``, OpenBSD ``rc``'s ``ssh-keygen
-A``) but under emulation that costs their first boot seconds, and the
host's entropy is better than a first boot's.

Under ``CLOUD_INIT`` cloud-init deletes and regenerates the keys at first
boot (``tasks/_cloud_init.py``: ``delete_ssh_keys``), as the original did.

Properties: CLOUD_INIT.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from helper import fsutil
from helper.commands import TaskError
from helper.framework import UNIX, Context, Task
from snf_image.contract.rules import HostKey

from . import _cloud_init, _unix

TASK = Task(
    name="DeleteSSHKeys",
    order=50,
    families=UNIX,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

SSH_DIR = "/etc/ssh"
HOST_KEY_PREFIX = "ssh_host_"
DEFAULT_TYPES = ("rsa", "ecdsa", "ed25519")  # what the host makes, and sshd's default HostKey set
KEY_SUFFIXES = ("", ".pub", "-cert.pub")
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
# systemd units that create missing host keys before sshd starts
KEYGEN_UNITS = (
    "sshd-keygen@.service",  # Fedora, RHEL 8+
    "sshd-keygen.service",  # RHEL 7
    "sshdgenkeys.service",  # Arch
    "regenerate-ssh-host-keys.service",  # Raspberry Pi OS and derived Debian images
)
KEYGEN_PROGRAMS = ("/usr/sbin/sshd-gen-keys-start",)  # SUSE's sshd.service ExecStartPre
KEYGEN_INIT_SCRIPTS = ("/etc/init.d/sshd",)  # OpenRC (Gentoo, Alpine), RHEL 6: generate when missing

# public key algorithm names -> ssh-keygen -t
ALGORITHMS = {
    "ssh-rsa": "rsa",
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
    "ssh-dss": "dsa",
}
PEM_TYPES = {"RSA": "rsa", "EC": "ecdsa", "DSA": "dsa"}
SELINUX_XATTR = "security.selinux"
GROUP_READABLE = 0o640  # a private key the image shares with a group (Red Hat's ssh_keys)

log = logging.getLogger(__name__)


def host_key_paths(options: list[tuple[str, list[str]]] | None) -> list[str]:
    """The guest paths of the HostKey lines (relative paths taken from /), duplicates removed, in order."""
    paths: list[str] = []
    for keyword, args in options or []:
        if keyword == "hostkey" and args:
            path = args[0] if args[0].startswith("/") else "/" + args[0]
            if path not in paths:
                paths.append(path)
    return paths


def type_from_name(path: str) -> str | None:
    """The key type a host key's file name tells (ssh_host_ed25519_key -> ed25519), or None."""
    name = PurePosixPath(path).name.lower()
    for kind in ("ed25519", "ecdsa", "rsa1", "rsa", "dsa"):
        if kind in name:
            return kind
    return None


def type_from_key(private: str | None, public: str | None) -> str | None:
    """The key type of an existing key from its .pub, its PEM header, or its openssh-key-v1 body, or None."""
    if public:
        words = public.split()
        if words and words[0] in ALGORITHMS:
            return ALGORITHMS[words[0]]
    if not private:
        return None
    for label, kind in PEM_TYPES.items():
        if f"-----BEGIN {label} PRIVATE KEY-----" in private:
            return kind
    body = "".join(line for line in private.splitlines() if line and not line.startswith("-----"))
    try:
        blob = base64.b64decode(body)
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        pos = len(magic)
        for _ in range(3):  # cipher, kdf, kdf options
            (length,) = struct.unpack_from(">I", blob, pos)
            pos += 4 + length
        pos += 4  # number of keys
        pos += 4  # length of the first public key blob
        (length,) = struct.unpack_from(">I", blob, pos)
        algorithm = blob[pos + 4 : pos + 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        return None
    return ALGORITHMS.get(algorithm)


def default_key(kind: str) -> str:
    """The guest path of sshd's default host key of type ``kind``."""
    return f"{SSH_DIR}/{HOST_KEY_PREFIX}{kind}_key"


def keys_to_install(
    hostkeys: list[tuple[str, str]], existing: list[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """((path, type) to install, (path, why not) skipped).

    ``hostkeys``: the (path, type) of the HostKey lines; without any, the
    default keys of the ``existing`` types (those the image had), else all
    the default keys. One key per type: a type no longer accepted or already
    installed elsewhere is skipped.
    """
    if not hostkeys:
        return [(default_key(t), t) for t in (existing or DEFAULT_TYPES)], []
    chosen: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for path, kind in hostkeys:
        installed = [p for p, k in chosen if k == kind]
        if kind not in DEFAULT_TYPES:
            skipped.append((path, f"{kind} keys are no longer accepted by sshd"))
        elif installed:
            skipped.append((path, f"the instance has one {kind} key, installed as {installed[0]}"))
        else:
            chosen.append((path, kind))
    return chosen, skipped


def keygen_at_boot(root: Path) -> str | None:
    """What regenerates missing host keys when the image boots, or None (then we must generate them)."""
    for directory in UNIT_DIRS:
        for unit in KEYGEN_UNITS:
            found = fsutil.resolve(root, f"{directory}/{unit}")
            if found.is_file() and found.stat().st_size > 0:  # masked units link to /dev/null
                return unit
    for program in KEYGEN_PROGRAMS:
        if fsutil.resolve(root, program).is_file():
            return program
    for script in KEYGEN_INIT_SCRIPTS:
        text = fsutil.read_optional(root, script)
        if text is not None and "ssh-keygen" in text:
            return script
    return None


def _old_types(root: Path, paths: list[str]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        kind = type_from_name(path) or type_from_key(
            fsutil.read_optional(root, path), fsutil.read_optional(root, path + ".pub")
        )
        found.append((path, kind or "rsa"))  # the type sshd assumes for an unreadable key name: try rsa
    return found


def existing_default_types(root: Path) -> list[str]:
    """The types of the default host keys the image has (private key or .pub)."""
    return [
        kind
        for kind in DEFAULT_TYPES
        if any(os.path.lexists(fsutil.entry(root, default_key(kind) + suffix)) for suffix in ("", ".pub"))
    ]


@dataclass(frozen=True)
class OldKeyFile:
    """What a replaced key file had that the new one keeps: its SELinux label, and group and mode."""

    label: bytes | None
    gid: int
    mode: int


def old_key_file(root: Path, path: str) -> OldKeyFile | None:
    """The image's key file at guest ``path`` (a regular file, not followed if a link), or None."""
    entry = fsutil.entry(root, path)
    try:
        st = entry.lstat()
    except FileNotFoundError:
        return None
    if not entry.is_file() or entry.is_symlink():
        return None
    try:
        label: bytes | None = os.getxattr(entry, SELINUX_XATTR, follow_symlinks=False)
    except OSError:  # no label, or a filesystem (or kernel) without security xattrs
        label = None
    return OldKeyFile(label, st.st_gid, st.st_mode & 0o7777)


def private_owner_mode(old: OldKeyFile | None) -> tuple[int, int]:
    """(gid, mode) of a new private key: 0600 root, or the image's group-readable 0640 for its group."""
    if old is not None and old.mode == GROUP_READABLE and old.gid != 0:
        return old.gid, GROUP_READABLE
    return 0, 0o600


def delete_keys(ctx: Context, paths: list[str]) -> None:
    """Remove /etc/ssh/ssh_host_* and the ``paths`` (with .pub, -cert.pub), never following a link."""
    ssh_dir = fsutil.directory(ctx.target, SSH_DIR)
    if ssh_dir.is_dir():
        for entry in sorted(ssh_dir.iterdir()):
            if entry.name.startswith(HOST_KEY_PREFIX) and (entry.is_symlink() or not entry.is_dir()):
                entry.unlink()
    for path in paths:
        for suffix in KEY_SUFFIXES:
            fsutil.remove(ctx.target, path + suffix)


def host_key(ctx: Context, kind: str) -> HostKey:
    """The key of type ``kind`` the host made for this instance."""
    for key in ctx.rules.ssh_host_keys:
        if key.kind == kind:
            return key
    raise TaskError(f"The host sent no {kind} SSH host key (is snf-image on the host up to date?)")


def install_key(ctx: Context, path: str, key: HostKey, old: dict[str, OldKeyFile | None]) -> None:
    """Write ``key`` at guest ``path`` and ``path``.pub, with the owners, modes and labels of ``old``'s files."""
    fsutil.make_dirs(ctx.target, str(PurePosixPath(path).parent), mode=0o755)
    gid, mode = private_owner_mode(old[path])
    for name, data, file_gid, file_mode in (
        (path, key.private, gid, mode),
        (path + ".pub", key.public, 0, 0o644),
    ):
        written = fsutil.write_file(ctx.target, name, data.encode("ascii"), mode=file_mode, gid=file_gid)
        replaced = old[name]
        if replaced is not None and replaced.label is not None:
            try:
                os.setxattr(written, SELINUX_XATTR, replaced.label, follow_symlinks=False)
            except OSError as exc:
                log.info("cannot label %s like the key it replaces (%s); a relabel at boot will", name, exc)


def run(ctx: Context) -> None:
    """Replace the image's SSH host keys with the instance's own (or have cloud-init do it)."""
    if ctx.cloud_init:
        _cloud_init.delete_ssh_keys(ctx)
        return
    root = ctx.target
    options = _unix.sshd_options(root)
    if options is None:
        ctx.warning(f"The image has no {_unix.SSHD_CONFIG}; deleting the default host keys only")
    hostkeys = _old_types(root, host_key_paths(options))
    keys, skipped = keys_to_install(hostkeys, existing_default_types(root))
    regenerator = keygen_at_boot(root)
    if options is None or regenerator is not None:
        if regenerator is not None:
            log.info("the image makes its own host keys at boot (%s)", regenerator)
        keys, skipped = [], []
    new = [(path, host_key(ctx, kind)) for path, kind in keys]
    old = {name: old_key_file(root, name) for path, _ in keys for name in (path, path + ".pub")}
    delete_keys(ctx, [path for path, _ in hostkeys])
    for path, reason in skipped:
        ctx.warning(f"No new host key {path}: {reason}")
    for path, key in new:
        install_key(ctx, path, key, old)
