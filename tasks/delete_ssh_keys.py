"""DeleteSSHKeys: remove the image's SSH host keys and make sure the instance gets its own.

Every instance made from an image would otherwise share the image's host
keys, so anyone holding the image could impersonate any instance. The task
removes ``/etc/ssh/ssh_host_*`` and every other key named by a ``HostKey``
line of the image's ``sshd_config`` (Include files followed; a missing
``sshd_config`` is a warning), with its ``.pub`` and ``-cert.pub``.

Then, unless the image makes new keys at boot by itself -- cloud-init
under ``CLOUD_INIT``; Red Hat's ``sshd-keygen``, Arch's ``sshdgenkeys``,
SUSE's ``sshd-gen-keys-start``, a ``regenerate-ssh-host-keys`` unit, or an
``/etc/init.d/sshd`` that runs ``ssh-keygen`` -- fresh keys are generated
with the helper's own ``ssh-keygen`` (never the image's programs) and
copied into the image: the types and paths of the ``HostKey`` lines (type
from the file name, else from the old key), or rsa, ecdsa and ed25519 at
the default paths; private keys 0600, public keys 0644, owned by root.
DSA and RSA1 keys are not regenerated (sshd no longer accepts them).
Debian's openssh-server does not regenerate keys at boot (its ``ssh``
service fails without them), which is why this is needed.

On the BSDs the keys are only deleted: their rc scripts make missing host
keys at boot (FreeBSD and NetBSD ``rc.d/sshd``, OpenBSD ``rc``'s
``ssh-keygen -A``).

Under ``CLOUD_INIT`` deletion is handed to the cloud-init configuration
(``tasks/_cloud_init.py``: ``delete_ssh_keys``) when it exists.

Properties: CLOUD_INIT.
"""

from __future__ import annotations

import base64
import binascii
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from helper import fsutil
from helper.framework import UNIX, Context, Task

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
DEFAULT_TYPES = ("rsa", "ecdsa", "ed25519")
GENERATED_TYPES = frozenset(DEFAULT_TYPES)
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


def keys_to_generate(hostkeys: list[tuple[str, str | None]]) -> tuple[list[tuple[str, str]], list[str]]:
    """((path, type) to generate, paths skipped) from the HostKey (path, type) list; defaults when empty."""
    if not hostkeys:
        return [(f"{SSH_DIR}/{HOST_KEY_PREFIX}{t}_key", t) for t in DEFAULT_TYPES], []
    chosen, skipped = [], []
    for path, kind in hostkeys:
        if kind in GENERATED_TYPES:
            chosen.append((path, kind))
        else:
            skipped.append(path)
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


def _old_types(root: Path, paths: list[str]) -> list[tuple[str, str | None]]:
    found = []
    for path in paths:
        kind = type_from_name(path) or type_from_key(
            fsutil.read_optional(root, path), fsutil.read_optional(root, path + ".pub")
        )
        found.append((path, kind or "rsa"))  # the type sshd assumes for an unreadable key name: try rsa
    return found


def delete_keys(ctx: Context, paths: list[str]) -> list[str]:
    """Remove /etc/ssh/ssh_host_* and the ``paths`` (with .pub, -cert.pub); the guest paths removed."""
    removed = []
    ssh_dir = fsutil.resolve(ctx.target, SSH_DIR)
    if ssh_dir.is_dir():
        for entry in sorted(ssh_dir.iterdir()):
            if entry.name.startswith(HOST_KEY_PREFIX) and (entry.is_symlink() or not entry.is_dir()):
                entry.unlink()
                removed.append(fsutil.guest_path(ctx.target, entry))
    for path in paths:
        for suffix in KEY_SUFFIXES:
            if fsutil.remove(ctx.target, path + suffix):
                removed.append(path + suffix)
    return removed


def key_comment(instance_name: str) -> str:
    """``root@<short name>``, as the keys a distribution generates at install time; safe characters only."""
    name = "".join(c for c in instance_name.split(".", 1)[0] if c.isascii() and (c.isalnum() or c in "-_"))
    return f"root@{name or 'localhost'}"


def generate(ctx: Context, keys: list[tuple[str, str]], comment: str) -> None:
    """Make the keys with the helper's ssh-keygen in a private directory, then copy them into the guest."""
    with tempfile.TemporaryDirectory(prefix="snf-ssh-keys-") as tmp:
        for i, (path, kind) in enumerate(keys):
            private = Path(tmp) / f"key{i}"
            ctx.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", private], input="")
            fsutil.make_dirs(ctx.target, str(PurePosixPath(path).parent), mode=0o755)
            fsutil.write_file(ctx.target, path, private.read_bytes(), mode=0o600)
            fsutil.write_file(ctx.target, path + ".pub", private.with_suffix(".pub").read_bytes(), mode=0o644)


def apply(ctx: Context) -> None:
    """Delete the host keys and, when the image will not, make new ones (Linux)."""
    options = _unix.sshd_options(ctx.target)
    if options is None:
        ctx.warning(f"The image has no {_unix.SSHD_CONFIG}; deleting the default host keys only")
    hostkeys = _old_types(ctx.target, host_key_paths(options))
    delete_keys(ctx, [path for path, _ in hostkeys])
    if options is None:
        return
    regenerator = keygen_at_boot(ctx.target)
    if regenerator is not None:
        return
    keys, skipped = keys_to_generate(hostkeys)
    for path in skipped:
        ctx.warning(f"Not generating host key {path}: its type is no longer supported by sshd")
    generate(ctx, keys, key_comment(ctx.rules.instance_name))


def apply_bsd(ctx: Context) -> None:
    """Delete the host keys; the BSD's own rc makes new ones at boot."""
    options = _unix.sshd_options(ctx.target)
    if options is None:
        ctx.warning(f"The image has no {_unix.SSHD_CONFIG}; deleting the default host keys only")
    delete_keys(ctx, host_key_paths(options))


FAMILY_HANDLERS: dict[str, Callable[[Context], None]] = {
    "linux": apply,
    "freebsd": apply_bsd,
    "netbsd": apply_bsd,
    "openbsd": apply_bsd,
}


def run(ctx: Context) -> None:
    """Replace the image's SSH host keys (or have cloud-init do it)."""
    if ctx.cloud_init:
        _cloud_init.delete_ssh_keys(ctx)
        return
    FAMILY_HANDLERS[ctx.osfamily](ctx)
