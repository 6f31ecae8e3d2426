"""Pure editors and small I/O helpers for FreeBSD, NetBSD and OpenBSD guests.

Text in, text out, so every edit is unit-tested without a VM: ``rc.conf``
variables, ``master.passwd`` lines, the first-boot scripts (``rc.local``
on FreeBSD/NetBSD, ``rc.firsttime`` on OpenBSD), and the network files
(FreeBSD ``ifconfig_<if>`` lines, NetBSD ``/etc/ifconfig.<if>``, OpenBSD
``/etc/hostname.<if>`` and ``/etc/mygate``).

Why first boot: the BSDs read passwords from Berkeley DB files
(``spwd.db``) that only their ``pwd_mkdb`` writes, and grow UFS with their
own ``growfs``/``resize_ffs``, none of which exists for Linux. So the jail
edits the text files and leaves the guest a one-shot job that runs its own
tools on its own kernel.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from helper import fsutil

from ._network import HEADER
from ._nics import NicPlan
from ._unix import join_lines, newline_of, split_lines

if TYPE_CHECKING:
    from helper.framework import Context

MASTER_PASSWD = "/etc/master.passwd"
RC_CONF = "/etc/rc.conf"
RC_LOCAL = "/etc/rc.local"
RC_FIRSTTIME = "/etc/rc.firsttime"
MYNAME = "/etc/myname"
MYGATE = "/etc/mygate"
MARK = "# snf-image"
#: First line of the network files we write (ConfigureNetwork recognises its own files by it).
FILE_HEADER = f"# {HEADER}"

#: Ganeti NIC frontend type -> driver name, per family (qemu's models as each BSD names them).
DRIVERS: dict[str, dict[str, str]] = {
    "freebsd": {
        "paravirtual": "vtnet", "e1000": "em", "rtl8139": "re", "ne2k_pci": "ed", "ne2k_isa": "ed",
        "i82551": "fxp", "i82557b": "fxp", "i82559er": "fxp", "pcnet": "pcn",
    },
    "netbsd": {
        "paravirtual": "vioif", "e1000": "wm", "rtl8139": "re", "ne2k_pci": "ne", "ne2k_isa": "ne",
        "i82551": "fxp", "i82557b": "fxp", "i82559er": "fxp", "pcnet": "pcn",
    },
    "openbsd": {
        "paravirtual": "vio", "e1000": "em", "rtl8139": "rl", "ne2k_pci": "ne", "ne2k_isa": "ne",
        "i82551": "fxp", "i82557b": "fxp", "i82559er": "fxp", "pcnet": "pcn",
    },
}  # fmt: skip
DEFAULT_FRONTEND = "paravirtual"


def interface_names(flavour: str, plans: Sequence[NicPlan]) -> list[str]:
    """The guest's name of each NIC: its driver plus a per-driver index, in Ganeti order.

    Each driver counts its own devices (two paravirtual NICs and one e1000 are
    vtnet0, vtnet1, em0), as the BSD kernels attach them in PCI order.
    """
    counts: dict[str, int] = {}
    names = []
    for p in plans:
        driver = DRIVERS[flavour].get(p.frontend_type or DEFAULT_FRONTEND, DRIVERS[flavour][DEFAULT_FRONTEND])
        names.append(f"{driver}{counts.get(driver, 0)}")
        counts[driver] = counts.get(driver, 0) + 1
    return names


# --- rc.conf ---------------------------------------------------------------


def _assignment(line: str) -> str | None:
    m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=", line)
    return m.group(1) if m else None


def rc_get(text: str, name: str) -> str | None:
    """The value of the last assignment of ``name`` (what sh would see), unquoted; None if absent."""
    value = None
    for line in split_lines(text):
        if _assignment(line) == name:
            raw = line.split("=", 1)[1].split("#", 1)[0].strip()
            value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
    return value


def rc_set(text: str, values: dict[str, str], remove: re.Pattern[str] | None = None) -> str:
    """rc.conf text with each ``name="value"`` set in place of its first assignment (later ones dropped).

    New names are appended. Variables matching ``remove`` (other than the ones
    set) are deleted. Comments and everything else are kept.
    """
    for value in values.values():
        if any(c in value for c in '"\\$`\n'):
            raise ValueError(f"unsafe rc.conf value {value!r}")
    newline = newline_of(text)
    lines: list[str] = []
    placed: set[str] = set()
    for line in split_lines(text):
        name = _assignment(line)
        if name in values:
            if name not in placed:
                lines.append(f'{name}="{values[name]}"')
                placed.add(name)
            continue
        if name is not None and remove is not None and remove.fullmatch(name):
            continue
        lines.append(line)
    lines += [f'{name}="{value}"' for name, value in values.items() if name not in placed]
    return join_lines(lines, newline)


# --- master.passwd ---------------------------------------------------------


def set_master_password(text: str, user: str, hashed: str) -> tuple[str, bool]:
    """master.passwd text with ``user``'s password set and its change time cleared; (text, found).

    Fields: name:password:uid:gid:class:change:expire:gecos:home:shell. A
    change time of 0 means "no forced change", as the original wrote.
    """
    newline = newline_of(text)
    lines = split_lines(text)
    found = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] != user or len(fields) != 10:
            continue
        fields[1] = hashed
        fields[5] = "0"
        lines[i] = ":".join(fields)
        found = True
    return join_lines(lines, newline), found


def master_passwd_users(text: str) -> set[str]:
    """The user names of a master.passwd."""
    return {line.split(":", 1)[0] for line in split_lines(text) if line and not line.startswith("#") and ":" in line}


# --- first-boot jobs -------------------------------------------------------


def firstboot_rc_local(job: str, original: str | None) -> str:
    """An /etc/rc.local that runs ``job`` once, then puts the image's own rc.local back (or removes itself).

    ``original`` is the guest path the image's rc.local was moved to, if it
    had one; it is restored and run, so its own work still happens at this boot.
    """
    restore = f'mv -f "{original}" /etc/rc.local\n. /etc/rc.local\n' if original else "rm -f /etc/rc.local\n"
    return f"#!/bin/sh\n{MARK}: one-time first-boot job, then the image's own rc.local\n{job.rstrip()}\n{restore}"


def add_firstboot_job(text: str | None, job: str) -> str:
    """OpenBSD's /etc/rc.firsttime (run once by rc, then deleted by it) with ``job`` appended once."""
    text = text or ""
    if job.strip() in text:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{MARK}\n{job.rstrip()}\n"


PWD_MKDB = "/usr/sbin/pwd_mkdb -p /etc/master.passwd"


def openbsd_growfs_job(device: str, mountpoint: str) -> str:
    """rc.firsttime lines growing a non-root FFS: OpenBSD's growfs needs it unmounted, rc.firsttime runs late."""
    return (
        f"if umount {mountpoint}; then\n"
        f"\t/sbin/growfs -q -y {device} && /sbin/fsck -p {device}\n"
        f"\tmount {mountpoint}\n"
        "fi\n"
    )


# --- network ---------------------------------------------------------------

FREEBSD_IFCONFIG = re.compile(
    r"ifconfig_(vtnet|em|re|rl|ed|fxp|pcn|le|igb|xn|DEFAULT)[0-9]*(_ipv6|_alias[0-9]+|_aliases)?|(ipv6_)?defaultrouter"
)


def _mask(address: ipaddress.IPv4Interface) -> str:
    return str(address.network.netmask)


def render_freebsd_rc_conf(text: str, plans: Sequence[NicPlan], names: Sequence[str]) -> str:
    """rc.conf with our ``ifconfig_<if>`` lines (and default router) in place of the image's NIC lines."""
    values: dict[str, str] = {}
    autoconf = False
    for p, name in zip(plans, names, strict=True):
        if p.ipv4 == "static" and p.address is not None:
            values[f"ifconfig_{name}"] = f"inet {p.address.ip} netmask {_mask(p.address)}"
            if p.gateway is not None and "defaultrouter" not in values:
                values["defaultrouter"] = str(p.gateway)
        elif p.ipv4 == "dhcp":
            values[f"ifconfig_{name}"] = "DHCP"
        elif p.ipv6 is not None:
            values[f"ifconfig_{name}"] = "up"
        if p.ipv6 == "static" and p.address6 is not None:
            values[f"ifconfig_{name}_ipv6"] = (
                f"inet6 -ifdisabled {p.address6.ip} prefixlen {p.address6.network.prefixlen}"
            )
        elif p.ipv6 is not None:
            autoconf = True
            values[f"ifconfig_{name}_ipv6"] = "inet6 -ifdisabled accept_rtadv"
    gateway6 = default_gateway6(plans, names)
    if gateway6 is not None:
        values["ipv6_defaultrouter"] = gateway6
    if any(p.ipv6 is not None for p in plans):
        values["ipv6_activate_all_interfaces"] = "YES"
    if autoconf:
        values["rtsold_enable"] = "YES"
    return rc_set(text, values, remove=FREEBSD_IFCONFIG)


def render_netbsd_ifconfig(plan: NicPlan) -> str:
    """/etc/ifconfig.<if> for NetBSD: ``up``, the address or a DHCP client, router solicitation."""
    lines = [FILE_HEADER, "up"]
    if plan.ipv4 == "static" and plan.address is not None:
        lines.append(f"inet {plan.address.ip} netmask {_mask(plan.address)}")
    elif plan.ipv4 == "dhcp":
        lines.append("!dhcpcd -q -b -4 $int")
    if plan.ipv6 == "static" and plan.address6 is not None:
        lines.append(f"inet6 {plan.address6.ip} prefixlen {plan.address6.network.prefixlen}")
    elif plan.ipv6 is not None:
        lines.append("inet6 -ifdisabled")
    return "\n".join(lines) + "\n"


def render_openbsd_hostname_if(plan: NicPlan) -> str:
    """/etc/hostname.<if> for OpenBSD: ``inet ADDR MASK NONE`` or ``dhcp``, ``inet6 ADDR PREFIXLEN`` or
    ``inet6 autoconf``, ``up``."""
    lines = [FILE_HEADER]
    if plan.ipv4 == "static" and plan.address is not None:
        lines.append(f"inet {plan.address.ip} {_mask(plan.address)} NONE")
    elif plan.ipv4 == "dhcp":
        lines.append("dhcp")
    if plan.ipv6 == "static" and plan.address6 is not None:
        lines.append(f"inet6 {plan.address6.ip} {plan.address6.network.prefixlen}")
    elif plan.ipv6 is not None:
        lines.append("inet6 autoconf")
    lines.append("up")
    return "\n".join(lines) + "\n"


def default_gateway(plans: Sequence[NicPlan]) -> str | None:
    """The first static NIC's IPv4 gateway (the BSDs have one default route)."""
    return next((str(p.gateway) for p in plans if p.ipv4 == "static" and p.gateway is not None), None)


def default_gateway6(plans: Sequence[NicPlan], names: Sequence[str]) -> str | None:
    """The first static IPv6 NIC's gateway (a link-local one scoped to its interface: ``fe80::1%vtnet0``)."""
    for p, name in zip(plans, names, strict=True):
        if p.ipv6 == "static" and p.gateway6 is not None:
            return f"{p.gateway6}%{name}" if p.gateway6.is_link_local else str(p.gateway6)
    return None


# --- I/O around the editors (through _unix/fsutil: never out of the guest root) --------------

RC_LOCAL_SAVED = "/etc/rc.local.snf-image-orig"


def parse_our_rc_local(text: str) -> tuple[list[str], bool] | None:
    """(job lines, whether it restores a saved original) of an rc.local we wrote, or None if not ours."""
    lines = split_lines(text)
    if len(lines) < 2 or not lines[1].startswith(MARK):
        return None
    restores = any(line.startswith("mv -f ") for line in lines)
    jobs = [
        line for line in lines[2:] if line and not line.startswith(("mv -f ", ". /etc/rc.local", "rm -f /etc/rc.local"))
    ]
    return jobs, restores


def add_firstboot(ctx: Context, job: str) -> str:
    """Make the guest run the one-line ``job`` once at its next boot; the guest path that does it.

    OpenBSD: /etc/rc.firsttime (rc runs and deletes it). FreeBSD, NetBSD: an
    /etc/rc.local of ours; the image's own is saved and put back by it.
    """
    root = ctx.target
    if ctx.osfamily == "openbsd":
        old = fsutil.read_optional(root, RC_FIRSTTIME)
        fsutil.write_file(root, RC_FIRSTTIME, add_firstboot_job(old, job).encode(), mode=0o755)
        return RC_FIRSTTIME
    old = fsutil.read_optional(root, RC_LOCAL)
    ours = parse_our_rc_local(old) if old is not None else None
    if ours is not None:
        jobs, restores = ours
    else:
        jobs, restores = [], False
        if old is not None:
            own = fsutil.resolve(root, RC_LOCAL)
            fsutil.write_file(root, RC_LOCAL_SAVED, own.read_bytes(), mode=own.stat().st_mode & 0o7777)
            restores = True
    if job.strip() not in jobs:
        jobs.append(job.strip())
    text = firstboot_rc_local("\n".join(jobs), RC_LOCAL_SAVED if restores else None)
    fsutil.write_file(root, RC_LOCAL, text.encode(), mode=0o755)
    return RC_LOCAL


def edit_rc_conf(ctx: Context, values: dict[str, str], remove: re.Pattern[str] | None = None) -> None:
    """Set rc.conf variables in the guest (the file is created when the image has none)."""
    old = fsutil.read_optional(ctx.target, RC_CONF)
    new = rc_set(old or "", values, remove)
    if new != old:
        fsutil.write_text(ctx.target, RC_CONF, new, mode=None if old is not None else 0o644)
