"""AssignHostname: give the image the instance's name as its hostname.

The instance name (a fully qualified name, ``web1.example.com``) is written
as the original did: in full to ``/etc/hostname`` when the image has that
file; otherwise where its base distribution keeps it -- CoreOS
``/etc/hostname``, Red Hat ``HOSTNAME=`` in ``/etc/sysconfig/network``,
SUSE and Slackware ``/etc/HOSTNAME``, Gentoo ``hostname="..."`` in
``/etc/conf.d/hostname``, Arch ``HOSTNAME="..."`` in ``/etc/rc.conf``
(old Arch) or ``/etc/hostname``; an unknown distribution gets
``/etc/hostname`` with a warning. An existing ``HOSTNAME=`` line in
``/etc/sysconfig/network`` is updated in any case.

In ``/etc/hosts`` the ``127.0.1.1`` line becomes ``127.0.1.1 <fqdn>
<short name>`` (added after the localhost line when missing; duplicates
removed); the other lines are kept.

BSDs: FreeBSD ``hostname="<fqdn>"`` in ``/etc/rc.conf``; OpenBSD
``/etc/myname``; NetBSD ``/etc/myname`` and an existing ``hostname=`` in
``/etc/rc.conf`` (which would win over myname). ``/etc/hosts`` is left as
it is on the BSDs (they resolve their own name without a 127.0.1.1 line).

This is also what ``gnt-instance rename`` runs. Under ``CLOUD_INIT`` the
name also goes to the cloud-init configuration (``tasks/_cloud_init.py``:
``set_hostname``, the seed's ``local-hostname``); the files are written
anyway, so the name holds even where the image's cloud-init is told to
preserve the hostname.

Windows: the first label of the name becomes the ComputerName (at most 15
characters) in the answer file: unattend.xml's specialize Shell-Setup, or
sysprep.inf's ``[UserData]``.

Properties: CLOUD_INIT.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath

from helper import fsutil
from helper.commands import TaskError
from helper.framework import WINDOWS, Context, Task

from . import _bsd, _cloud_init, _unix
from ._windows import guest as windows_guest
from ._windows.checks import computer_name
from ._windows.ini import decode_text, encode_text, ini_set
from ._windows.unattend import set_shell_setup

HOSTS = "/etc/hosts"
HOSTNAME = "/etc/hostname"
SYSCONFIG_NETWORK = "/etc/sysconfig/network"
HOSTS_ADDRESS = "127.0.1.1"
LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def check_hostname(name: str) -> str:
    """``name`` without a trailing dot if it is a valid host name; anything else could inject into config files."""
    name = name.strip().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(LABEL.match(label) for label in labels):
        raise TaskError(f"Invalid hostname {name!r}: expected letters, digits, '-' and '.'-separated labels")
    return name


def short_name(fqdn: str) -> str:
    """The first label: what ``hostname -s`` shows."""
    return fqdn.split(".", 1)[0]


def set_hosts(text: str, fqdn: str) -> str:
    """``/etc/hosts`` with ``127.0.1.1 <fqdn> <short>`` in place of the first 127.0.1.1 line, others removed.

    Without such a line, one is added after the last 127.0.0.1 line (or at
    the top). Comments and other entries are kept.
    """
    names = fqdn if short_name(fqdn) == fqdn else f"{fqdn} {short_name(fqdn)}"
    entry = f"{HOSTS_ADDRESS}\t{names}"
    newline = _unix.newline_of(text)
    lines: list[str] = []
    placed = False
    for line in _unix.split_lines(text):
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] == HOSTS_ADDRESS:
            if not placed:
                lines.append(entry)
                placed = True
            continue
        lines.append(line)
    if not placed:
        after = [i for i, line in enumerate(lines) if line.split("#", 1)[0].split()[:1] == ["127.0.0.1"]]
        lines.insert(after[-1] + 1 if after else 0, entry)
    return _unix.join_lines(lines, newline)


def set_variable(text: str, name: str, value: str, quote: bool = False, add: bool = True) -> str:
    """Shell-variable file text (``NAME=value``) with ``name`` set, first assignment replaced, later ones dropped.

    Also matches ``export NAME=``. Without an assignment one is appended
    when ``add``.
    """
    pattern = re.compile(rf"^\s*(export\s+)?{re.escape(name)}=")
    assignment = f'{name}="{value}"' if quote else f"{name}={value}"
    newline = _unix.newline_of(text)
    lines: list[str] = []
    placed = False
    for line in _unix.split_lines(text):
        m = pattern.match(line)
        if m is None:
            lines.append(line)
        elif not placed:
            lines.append((m.group(1) or "") + assignment)
            placed = True
    if not placed and add:
        lines.append(assignment)
    return _unix.join_lines(lines, newline)


def has_variable(text: str, name: str) -> bool:
    """Whether a shell-variable file assigns ``name``."""
    return any(re.match(rf"^\s*(export\s+)?{re.escape(name)}=", line) for line in _unix.split_lines(text))


def _write(ctx: Context, path: str, edit: Callable[[str], str]) -> None:
    """Apply ``edit`` to guest file ``path`` (empty text when it does not exist yet; its directory made 0755)."""
    old = fsutil.read_optional(ctx.target, path)
    if old is None:
        fsutil.make_dirs(ctx.target, str(PurePosixPath(path).parent), mode=0o755)
    fsutil.write_text(ctx.target, path, edit(old or ""))


def hostname_files(ctx: Context, fqdn: str) -> None:
    """Write the name where the image's distribution reads it at boot (Linux)."""
    root = ctx.target
    line = fqdn + "\n"
    if fsutil.exists(root, HOSTNAME):
        _write(ctx, HOSTNAME, lambda _: line)
    else:
        distro = _unix.base_distro(root)
        rc_conf = fsutil.read_optional(root, "/etc/rc.conf")
        if distro == "redhat":
            _write(ctx, SYSCONFIG_NETWORK, lambda t: set_variable(t, "HOSTNAME", fqdn))
        elif distro in ("suse", "slackware"):
            _write(ctx, "/etc/HOSTNAME", lambda _: line)
        elif distro == "gentoo":
            _write(ctx, "/etc/conf.d/hostname", lambda t: set_variable(t, "hostname", fqdn, quote=True))
        elif distro == "arch" and rc_conf is not None and has_variable(rc_conf, "HOSTNAME"):
            _write(ctx, "/etc/rc.conf", lambda t: set_variable(t, "HOSTNAME", fqdn, quote=True))
        else:
            if distro not in ("coreos", "arch", "debian"):
                ctx.warning(f"Unknown Linux distribution ({distro or 'no marker found'}); writing {HOSTNAME}")
            _write(ctx, HOSTNAME, lambda _: line)
    network = fsutil.read_optional(root, SYSCONFIG_NETWORK)
    if network is not None and has_variable(network, "HOSTNAME"):
        _write(ctx, SYSCONFIG_NETWORK, lambda t: set_variable(t, "HOSTNAME", fqdn))


def apply(ctx: Context, fqdn: str) -> None:
    """Hostname files and /etc/hosts (Linux)."""
    hostname_files(ctx, fqdn)
    hosts = fsutil.read_optional(ctx.target, HOSTS)
    if hosts is None:
        ctx.warning(f"The image has no {HOSTS}; creating one")
        hosts = DEFAULT_HOSTS
    fsutil.write_text(ctx.target, HOSTS, set_hosts(hosts, fqdn))


def apply_freebsd(ctx: Context, fqdn: str) -> None:
    """FreeBSD: ``hostname=`` in rc.conf."""
    _bsd.edit_rc_conf(ctx, {"hostname": fqdn})


def apply_myname(ctx: Context, fqdn: str) -> None:
    """OpenBSD and NetBSD: /etc/myname; NetBSD also an rc.conf ``hostname=`` the image already sets."""
    _write(ctx, _bsd.MYNAME, lambda _: fqdn + "\n")
    if ctx.osfamily == "netbsd":
        rc_conf = fsutil.read_optional(ctx.target, _bsd.RC_CONF)
        if rc_conf is not None and _bsd.rc_get(rc_conf, "hostname") is not None:
            _bsd.edit_rc_conf(ctx, {"hostname": fqdn})


def apply_windows(ctx: Context, fqdn: str) -> None:
    """Windows: ComputerName in the answer file (specialize Shell-Setup / sysprep.inf's [UserData])."""
    name = computer_name(fqdn)
    path = windows_guest.answer_file(ctx)
    data = windows_guest.read_bytes(ctx, path) or b""
    if ctx.osfamily == "windows":
        data = set_shell_setup(data, windows_guest.image(ctx).arch, {"ComputerName": name})
    else:
        text, codec = decode_text(data)
        data = encode_text(ini_set(text, "UserData", "ComputerName", name), codec)
    windows_guest.write_bytes(ctx, path, data)


FAMILY_HANDLERS: dict[str, Callable[[Context, str], None]] = {
    "linux": apply,
    "freebsd": apply_freebsd,
    "openbsd": apply_myname,
    "netbsd": apply_myname,
    **dict.fromkeys(WINDOWS, apply_windows),
}

TASK = Task(
    name="AssignHostname",
    order=50,
    families=frozenset(FAMILY_HANDLERS),
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)


def run(ctx: Context) -> None:
    """Set the hostname from rules.instance_name (and in cloud-init's meta-data under CLOUD_INIT)."""
    fqdn = check_hostname(ctx.rules.instance_name)
    if ctx.cloud_init:
        _cloud_init.set_hostname(ctx, fqdn)
    FAMILY_HANDLERS[ctx.osfamily](ctx, fqdn)
