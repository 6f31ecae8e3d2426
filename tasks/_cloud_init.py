"""cloud-init configuration for images deployed with the CLOUD_INIT property.

With CLOUD_INIT the tasks do not edit the image's files themselves: they
hand their data to cloud-init through a NoCloud seed
(``/var/lib/cloud/seed/nocloud-net``: ``meta-data``, ``user-data``,
``network-config``) and ``cloud.cfg.d`` snippets, and cloud-init applies it
at first boot. InitializeDatasource creates the seed; each task then adds
what it owns through its function below, so that ``EXCLUDE_TASK_<Name>`` keeps
meaning "do not do this" under cloud-init too:

=====================  ===========================  ==============================================
task                   function                     what cloud-init gets
=====================  ===========================  ==============================================
AssignHostname         ``set_hostname(ctx, fqdn)``  meta-data ``local-hostname``
ChangePassword         ``change_password(ctx, c)``  ``chpasswd`` + ``ssh_pwauth`` (hashes, removed
                                                    at first boot), meta-data ``public-keys``
DeleteSSHKeys          ``delete_ssh_keys(ctx)``     ``ssh_deletekeys: true``
AddSwap                ``add_swap(ctx, mib)``       ``swap: {filename, size, maxsize}``
EnforcePersonality     ``inject_files(ctx, files)`` ``write_files`` (base64; removed at first boot)
ConfigureNetwork       ``disable_network(ctx)``     ``network: {config: disabled}``
=====================  ===========================  ==============================================

Every YAML document is produced by PyYAML's ``safe_dump`` from Python data,
never by pasting strings. Snippets holding secrets are 0600 and a per-once
script deletes them at first boot, after cloud-init has used them, unless
the ``cloud_init_debug`` setting asks to keep them (the script is then left
non-executable, which cloud-init skips).
"""

from __future__ import annotations

import base64
import functools
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from helper import fsutil
from helper.commands import TaskError
from helper.framework import Context

from . import _unix
from ._network import network_config_v1
from ._nics import NicPlan

SEED_DIR = "/var/lib/cloud/seed/nocloud-net"
CFG_DIRS = ("/etc/cloud/cloud.cfg.d", "/usr/local/etc/cloud/cloud.cfg.d")
PER_ONCE_DIR = "/var/lib/cloud/scripts/per-once"
CFG_PREFIX = "98_snf-image"
DATASOURCE_CFG = f"{CFG_PREFIX}.cfg"
DEBUG_LOG_DIR = "/var/log/snf-image"
MIB = 1024 * 1024
# cloud-init's chpasswd "list" treats an entry as a hash only if it matches this (cc_set_passwords)
CLOUD_INIT_HASH = re.compile(r"^\$(1|2a|2y|5|6)(\$.+){2}$")
HEADER = "# Written by snf-image for cloud-init; see the NoCloud seed in " + SEED_DIR + "\n"


@functools.cache
def _dumper() -> type:
    """safe_dump with multi-line strings as literal blocks (readable logcfg and scripts)."""
    import yaml  # here: only the images that get YAML pay for its import (~0.1 s of the helper's boot, TCG)

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = "|" if "\n" in data and not data.startswith((" ", "\t")) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper


def dump(data: Any) -> str:
    """YAML text of ``data`` (block style, keys in insertion order), always via the safe dumper."""
    import yaml

    return yaml.dump(data, Dumper=_dumper(), default_flow_style=False, sort_keys=False, allow_unicode=True)


def debug(ctx: Context) -> bool:
    """The cloud_init_debug setting: keep secrets and log verbosely for troubleshooting."""
    return ctx.rules.settings.cloud_init_debug


def config_dir(root: Path) -> str:
    """The guest's cloud.cfg.d directory; TaskError when cloud-init is not installed."""
    for candidate in CFG_DIRS:
        if fsutil.is_dir(root, candidate):
            return candidate
    raise TaskError(
        f"CLOUD_INIT is set but the image has no cloud-init configuration directory ({' or '.join(CFG_DIRS)})"
    )


def has_cloud_init(root: Path) -> bool:
    """Whether cloud-init is installed in the image (it has a cloud.cfg.d directory)."""
    return any(fsutil.is_dir(root, d) for d in CFG_DIRS)


def ensure_seed(root: Path) -> str:
    """Create the NoCloud seed directory (0700: it holds user-data) and return its guest path."""
    fsutil.make_dirs(root, str(PurePosixPath(SEED_DIR).parent), mode=0o755)
    fsutil.make_dirs(root, SEED_DIR, mode=0o700)
    return SEED_DIR


def _write(root: Path, path: str, text: str, mode: int) -> None:
    fsutil.write_file(root, path, text.encode("utf-8", "surrogateescape"), mode=mode)


# --- meta-data --------------------------------------------------------------------


def read_meta_data(root: Path) -> dict[str, Any]:
    """The seed's meta-data as a mapping (empty when absent); TaskError if it is not a YAML mapping."""
    text = fsutil.read_optional(root, f"{SEED_DIR}/meta-data")
    if not text:
        return {}
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaskError(f"The image's cloud-init meta-data ({SEED_DIR}/meta-data) is not valid YAML") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TaskError(f"The image's cloud-init meta-data ({SEED_DIR}/meta-data) is not a YAML mapping")
    return data


def update_meta_data(root: Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the seed's meta-data (0600) and return the result."""
    ensure_seed(root)
    data = read_meta_data(root)
    data.update(changes)
    _write(root, f"{SEED_DIR}/meta-data", dump(data), 0o600)
    return data


def merge_public_keys(existing: Any, keys: Iterable[str]) -> list[str]:
    """``existing`` public-keys (a string or a list) plus ``keys``, in order, without duplicates."""
    if isinstance(existing, str):
        current = [existing]
    elif isinstance(existing, list):
        current = [str(k) for k in existing]
    else:
        current = []
    merged: list[str] = []
    for key in [*current, *keys]:
        key = key.strip()
        if key and key not in merged:
            merged.append(key)
    return merged


# --- cloud.cfg.d snippets -----------------------------------------------------------


def cfg_path(root: Path, name: str) -> str:
    """Guest path of our snippet for ``name`` (a task name), e.g. 98_snf-image-ChangePassword.cfg."""
    return f"{config_dir(root)}/{CFG_PREFIX}-{name}.cfg"


def removal_script(paths: Sequence[str], truncate: Sequence[str] = ()) -> str:
    """A /bin/sh script deleting ``paths`` and emptying ``truncate`` (paths shell-quoted)."""
    lines = ["#!/bin/sh", "# Written by snf-image: remove first-boot secrets once cloud-init has used them."]
    lines += [f"rm -f -- {shlex.quote(p)}" for p in paths]
    lines += [f"[ ! -f {shlex.quote(p)} ] || : > {shlex.quote(p)}" for p in truncate]
    return "\n".join(lines) + "\n"


def at_first_boot(ctx: Context, name: str, remove: Sequence[str] = (), truncate: Sequence[str] = ()) -> str:
    """Install per-once script ``snf-image-<name>.sh`` that removes/empties files at first boot.

    Executable (0700) normally; with cloud_init_debug it is left 0600 so
    cloud-init skips it and the data stays for inspection.
    """
    root = ctx.target
    fsutil.make_dirs(root, PER_ONCE_DIR, mode=0o755)
    path = f"{PER_ONCE_DIR}/snf-image-{name}.sh"
    _write(root, path, removal_script(remove, truncate), 0o600 if debug(ctx) else 0o700)
    return path


def write_cfg(ctx: Context, name: str, data: Mapping[str, Any], *, secret: bool = False) -> str:
    """Write cloud.cfg.d snippet ``98_snf-image-<name>.cfg``; a secret one is 0600 and removed at first boot."""
    path = cfg_path(ctx.target, name)
    _write(ctx.target, path, HEADER + dump(dict(data)), 0o600 if secret else 0o644)
    if secret:
        at_first_boot(ctx, f"remove-{name}", remove=[path])
    return path


# --- what the other tasks call ----------------------------------------------------------


def set_hostname(ctx: Context, fqdn: str) -> None:
    """AssignHostname under CLOUD_INIT: meta-data ``local-hostname``."""
    update_meta_data(ctx.target, {"local-hostname": fqdn})


def add_public_keys(ctx: Context, keys: Sequence[str]) -> None:
    """SSH keys as meta-data ``public-keys`` (cloud-init installs them for its default user)."""
    data = read_meta_data(ctx.target)
    update_meta_data(ctx.target, {"public-keys": merge_public_keys(data.get("public-keys"), keys)})


def chpasswd_config(users: Sequence[str], hashed: str) -> dict[str, Any]:
    """The cloud-config setting ``users`` to crypt hash ``hashed``, password login by SSH allowed.

    The hash, not the clear password, goes into the image: cloud-init's
    ``chpasswd: list`` recognises MD5, bcrypt and SHA-256/512 crypt hashes;
    anything else it would set as a literal password, so it is refused.
    """
    if not CLOUD_INIT_HASH.match(hashed):
        raise TaskError(
            "cloud-init can set only MD5, bcrypt, SHA-256 or SHA-512 crypt passwords; "
            "use PASSWD_HASHING_METHOD=sha512 with CLOUD_INIT"
        )
    return {"ssh_pwauth": True, "chpasswd": {"expire": False, "list": [f"{user}:{hashed}" for user in users]}}


def change_password(ctx: Context, creds: Any) -> None:
    """ChangePassword under CLOUD_INIT: ``creds`` has ``users``, ``hashed`` (crypt hash or None), ``keys``."""
    if creds.keys:
        add_public_keys(ctx, list(creds.keys))
    if creds.hashed:
        write_cfg(ctx, "ChangePassword", chpasswd_config(list(creds.users), creds.hashed), secret=True)


def delete_ssh_keys(ctx: Context) -> None:
    """DeleteSSHKeys under CLOUD_INIT: cloud-init deletes and regenerates the host keys at first boot."""
    write_cfg(ctx, "DeleteSSHKeys", {"ssh_deletekeys": True})


def swap_config(size_mib: int, filename: str = "/swap.img") -> dict[str, Any]:
    """The cloud-config of a swap file of ``size_mib`` MiB."""
    if size_mib <= 0:
        raise TaskError(f"Invalid swap size: {size_mib} MiB")
    size = size_mib * MIB
    return {"swap": {"filename": filename, "size": size, "maxsize": size}}


def add_swap(ctx: Context, size_mib: int) -> None:
    """AddSwap under CLOUD_INIT: a swap file instead of a partition (FixPartitionTable does not run)."""
    write_cfg(ctx, "AddSwap", swap_config(size_mib))


def _owner_name(spec: str, table: Mapping[str, int], what: str) -> str:
    """A user or group name for cloud-init (which resolves names only); numbers mapped through the image."""
    if not spec:
        return "root"
    if not spec.isdigit():
        if spec not in table:
            raise TaskError(f"{what}: `{spec}' does not exist in the image")
        return spec
    number = int(spec)
    for name, value in table.items():
        if value == number:
            return name
    raise TaskError(f"{what}: id {number} does not exist in the image")


def write_files_config(files: Sequence[Any], users: Mapping[str, int], groups: Mapping[str, int]) -> dict[str, Any]:
    """cloud-config ``write_files`` for personality files (``path``, ``contents`` bytes, owner, group, mode)."""
    entries = []
    for f in files:
        owner = _owner_name(str(f.owner or ""), users, "File owner")
        group = _owner_name(str(f.group or ""), groups, "Group")
        entries.append(
            {
                "path": f.path,
                "content": base64.b64encode(f.contents).decode("ascii"),
                "encoding": "b64",
                "owner": f"{owner}:{group}",
                "permissions": f"0{f.mode:o}",
            }
        )
    return {"write_files": entries}


def inject_files(ctx: Context, files: Sequence[Any]) -> None:
    """EnforcePersonality under CLOUD_INIT: ``write_files`` (contents may be secret: removed at first boot)."""
    if not files:
        return
    users = {name: user.uid for name, user in _unix.read_passwd(ctx.target).items()}
    groups = _unix.read_group(ctx.target)
    write_cfg(ctx, "EnforcePersonality", write_files_config(files, users, groups), secret=True)


def disable_network(ctx: Context) -> None:
    """ConfigureNetwork wrote the image's own configuration: cloud-init must not replace it at boot."""
    write_cfg(ctx, "ConfigureNetwork", {"network": {"config": "disabled"}})


def write_network_config(ctx: Context, plans: Sequence[NicPlan]) -> str:
    """The seed's ``network-config`` (version 1: see ``_network.network_config_v1``) for ``plans``."""
    ensure_seed(ctx.target)
    path = f"{SEED_DIR}/network-config"
    _write(ctx.target, path, dump(network_config_v1(plans)), 0o600)
    return path
