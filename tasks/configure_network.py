"""ConfigureNetwork: configure the instance's NICs the way the image's own network stack reads it.

Each NIC gets IPv4 by DHCP or statically and IPv6 statically (a NIC IP
that is IPv6), by SLAAC, SLAAC plus stateless DHCPv6, or stateful DHCPv6,
from the NIC's IP, its network's subnets, gateways and tags and the DHCP
tag settings; each static gateway is a default route with metric 100 + N
for Ganeti NIC N, so that several never collide (with networkd, and
netplan through a drop-in beside the file it renders, the DHCP and router
advertisement routes too: networkd would merge equal-metric IPv6 default
routes of two NICs into one multipath route); a single NIC without
any of this gets DEFAULT_NIC_CONFIG (see ``tasks/_nics.py``:
``plan_nics``). Malformed addresses in the rules fail the task.

The configuration is written in the format the image actually uses, the
first that applies: NM_NETWORKING property -> NetworkManager keyfiles;
netplan installed -> ``/etc/netplan/60-snf-image.yaml``; NetworkManager
enabled -> keyfiles in ``/etc/NetworkManager/system-connections``;
systemd-networkd enabled -> ``/etc/systemd/network/10-snf-image-*.network``;
ifupdown -> ``/etc/network/interfaces``; Red Hat -> ifcfg files. Every
format matches the NIC by MAC where it can, and Ganeti NIC N is named
``nicN`` by a udev rule (``/etc/udev/rules.d/70-snf-image-net.rules``).
The image's stanzas/profiles for its old NIC names (eth*, en*) and for the
same MACs are replaced; everything else is kept. Files replaced or
removed are first copied to ``/var/backups/snf-image/<time>/``. A second
run gives the same files.

When the image has none of these, the network is left to cloud-init's
network-config under CLOUD_INIT (InitializeDatasource writes it), else a
warning. When a native configuration was written and cloud-init is in the
image, ``network: {config: disabled}`` keeps cloud-init from replacing it.

BSDs: the NIC of Ganeti frontend type T is named after the driver that
family's kernel attaches to qemu's model (paravirtual: vtnet / vioif /
vio, e1000: em / wm / em, rtl8139: re / re / rl, ...; ``tasks/_bsd.py``:
``DRIVERS``), numbered per driver. FreeBSD: ``ifconfig_<if>="inet A netmask
M"`` or ``"DHCP"``, ``defaultrouter``, and for IPv6 ``ifconfig_<if>_ipv6="inet6
-ifdisabled accept_rtadv"`` with ``rtsold_enable`` (or ``"inet6 A prefixlen
P"`` and ``ipv6_defaultrouter``), in ``/etc/rc.conf`` (the image's lines for
NICs replaced). NetBSD: ``/etc/ifconfig.<if>`` (``inet A netmask M`` or
``!dhcpcd``; ``inet6 -ifdisabled`` or ``inet6 A prefixlen P``),
``defaultroute``, ``defaultroute6`` and ``ip6mode=autohost`` in rc.conf.
OpenBSD: ``/etc/hostname.<if>`` (``inet A MASK NONE`` or ``dhcp``; ``inet6
autoconf`` or ``inet6 A P``) and ``/etc/mygate``. The BSDs have one default
route per family: the first static NIC's gateway. Stateful DHCPv6 is configured as SLAAC on
the BSDs (no DHCPv6 client in their base systems), with a warning.

Properties: NM_NETWORKING, CLOUD_INIT. Settings: dhcp_tags,
stateful_dhcpv6_tags, stateless_dhcpv6_tags, default_nic_config.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from helper import fsutil
from helper.framework import LINUX, Context, Task

from . import _bsd, _cloud_init, _network, _nics, _unix
from ._nics import NicPlan

log = logging.getLogger(__name__)

BACKUP_ROOT = "/var/backups/snf-image"
UDEV_RULES = "/etc/udev/rules.d/70-snf-image-net.rules"
INTERFACES = "/etc/network/interfaces"
NETPLAN_DIR = "/etc/netplan"
NETPLAN_FILE = f"{NETPLAN_DIR}/60-snf-image.yaml"
NM_DIR = "/etc/NetworkManager/system-connections"
NETWORKD_DIR = "/etc/systemd/network"
NETPLAN_DROPIN = "60-snf-image.conf"  # in 10-netplan-<name>.network.d/
IFCFG_DIR = "/etc/sysconfig/network-scripts"
SYSCONFIG_NETWORK = "/etc/sysconfig/network"
WANTS = "/etc/systemd/system/multi-user.target.wants"
SOURCE_DIRECTORY_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")  # what ifupdown's source-directory reads


# --- guest I/O ---------------------------------------------------------------------


def backup(ctx: Context, path: str) -> str | None:
    """Copy guest file ``path`` under /var/backups/snf-image/<time>/ (once per run); the copy's guest path.

    Backups live outside the configuration directories on purpose:
    ``source interfaces.d/*``, NetworkManager and the ifcfg readers would
    read a backup left next to the original as configuration. A symbolic link is
    backed up as a link, never by reading what it points at.
    """
    if path in ctx.network_backups:
        return None
    entry = fsutil.entry(ctx.target, path)
    if entry.is_symlink():
        copy = _backup_path(ctx, path)
        os.symlink(os.readlink(entry), fsutil.entry(ctx.target, copy))
    else:
        text = fsutil.read_optional(ctx.target, path)
        if text is None:
            return None
        copy = _backup_path(ctx, path)
        st = entry.stat()
        fsutil.write_file(
            ctx.target,
            copy,
            text.encode("utf-8", "surrogateescape"),
            mode=st.st_mode & 0o7777,
            uid=st.st_uid,
            gid=st.st_gid,
        )
    ctx.network_backups.add(path)
    log.info("backed up %s to %s", path, copy)
    return copy


def _backup_path(ctx: Context, path: str) -> str:
    """Where this run backs up guest file ``path``, its directories made (root-only below BACKUP_ROOT)."""
    if not ctx.backup_stamp:
        ctx.backup_stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    copy = f"{BACKUP_ROOT}/{ctx.backup_stamp}{path}"
    fsutil.make_dirs(ctx.target, str(PurePosixPath(BACKUP_ROOT).parent), mode=0o755)
    fsutil.make_dirs(ctx.target, BACKUP_ROOT, mode=0o700)
    fsutil.make_dirs(ctx.target, str(PurePosixPath(copy).parent), mode=0o700)
    return copy


def install(ctx: Context, path: str, text: str, mode: int = 0o644) -> bool:
    """Write guest file ``path`` (root-owned, ``mode``) unless it already holds ``text``; back up what it held."""
    old = fsutil.read_optional(ctx.target, path)
    current = fsutil.resolve(ctx.target, path)
    if old == text and current.is_file() and (current.stat().st_mode & 0o7777) == mode and current.stat().st_uid == 0:
        return False
    if old is not None and not _is_ours(old):
        backup(ctx, path)
    fsutil.make_dirs(ctx.target, str(PurePosixPath(path).parent), mode=0o755)
    fsutil.write_file(ctx.target, path, text.encode("utf-8", "surrogateescape"), mode=mode)
    log.info("wrote %s", path)
    return True


def discard(ctx: Context, path: str) -> None:
    """Back up and remove guest file ``path``."""
    backup(ctx, path)
    if fsutil.remove(ctx.target, path):
        log.info("removed %s", path)


def _is_ours(text: str) -> bool:
    return _network.HEADER in text.split("\n", 2)[0] or text.startswith(_network.BEGIN)


def listdir(ctx: Context, directory: str) -> list[str]:
    """Names of the regular files in guest ``directory`` (sorted; empty when it does not exist)."""
    found = fsutil.resolve(ctx.target, directory)
    if not found.is_dir():
        return []
    return sorted(e.name for e in found.iterdir() if e.is_file() and not e.is_symlink())


def enabled(ctx: Context, unit: str) -> bool:
    """Whether systemd unit ``unit`` is enabled for boot (its symlink in multi-user.target.wants)."""
    return os.path.lexists(fsutil.resolve(ctx.target, WANTS) / unit)


def installed(ctx: Context, *programs: str) -> bool:
    """Whether any of the guest paths ``programs`` exists (resolved in the guest: /sbin may link to usr/sbin)."""
    return any(fsutil.resolve(ctx.target, p).is_file() for p in programs)


def remove_stale(ctx: Context, directory: str, pattern: str, keep: set[str]) -> None:
    """Remove our own earlier files in ``directory`` matching ``pattern`` that this run does not write."""
    for name in listdir(ctx, directory):
        if fnmatch.fnmatchcase(name, pattern) and name not in keep:
            fsutil.remove(ctx.target, f"{directory}/{name}")


# --- backends ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A network configuration format: when the image uses it, and how to write it."""

    name: str
    families: frozenset[str]
    detect: Callable[[Context], bool]
    apply: Callable[[Context, Sequence[NicPlan]], None]


def write_udev_names(ctx: Context, plans: Sequence[NicPlan]) -> None:
    """Pin Ganeti NIC N to the name nicN by MAC (the names every Linux backend writes)."""
    install(ctx, UDEV_RULES, _network.render_udev_rules(plans))


def apply_netplan(ctx: Context, plans: Sequence[NicPlan]) -> None:
    import yaml  # here: only netplan images pay for its import (~0.1 s of the helper's boot under TCG)

    write_udev_names(ctx, plans)
    for name in listdir(ctx, NETPLAN_DIR):
        path = f"{NETPLAN_DIR}/{name}"
        if not name.endswith(".yaml") or path == NETPLAN_FILE:
            continue
        text = fsutil.read_optional(ctx.target, path) or ""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            ctx.warning(f"{path} is not valid YAML; left as it is")
            continue
        new = _network.strip_netplan(data, plans)
        if new is not data:
            backup(ctx, path)
            mode = fsutil.resolve(ctx.target, path).stat().st_mode & 0o7777
            text = f"# {_network.EDITED}\n" + _cloud_init.dump(new)
            fsutil.write_file(ctx.target, path, text.encode("utf-8"), mode=mode)
            log.info("removed the entries for this instance's NICs from %s", path)
    text = f"# {_network.HEADER}\n" + _cloud_init.dump(_network.render_netplan(plans))
    install(ctx, NETPLAN_FILE, text, mode=0o600)
    write_netplan_ra_metrics(ctx, plans)


def write_netplan_ra_metrics(ctx: Context, plans: Sequence[NicPlan]) -> None:
    """A networkd drop-in per netplan NIC that takes router advertisements: their routes get the NIC's metric.

    netplan has no setting for it (its route-metric overrides reach the
    advertisement routes only on a NIC with DHCP), and two NICs whose RA
    default routes share networkd's default metric become one multipath
    route across unrelated networks. netplan names the file it renders for
    our ethernet ``nicN`` ``10-netplan-nicN.network``; a renderer other
    than networkd ignores the drop-in. Ours for NICs gone are removed.
    """
    wanted = {
        f"{NETWORKD_DIR}/10-netplan-{p.name}.network.d/{NETPLAN_DROPIN}": _network.render_networkd_ra_metric(p)
        for p in plans
        if p.ipv6 in _nics.RA_MODES
    }
    directory = fsutil.resolve(ctx.target, NETWORKD_DIR)
    found = (
        sorted(e.name for e in directory.iterdir() if e.is_dir() and not e.is_symlink()) if directory.is_dir() else []
    )
    for name in found:
        path = f"{NETWORKD_DIR}/{name}/{NETPLAN_DROPIN}"
        if fnmatch.fnmatchcase(name, "10-netplan-*.network.d") and path not in wanted:
            fsutil.remove(ctx.target, path)
    for path, text in wanted.items():
        install(ctx, path, text)


def nm_profile_mac(text: str) -> str | None:
    """The MAC address a NetworkManager keyfile binds to (lower case), or None."""
    section = ""
    for line in _unix.split_lines(text):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
        elif section in ("ethernet", "802-3-ethernet") and stripped.startswith("mac-address="):
            return stripped.partition("=")[2].strip().lower() or None
    return None


def apply_networkmanager(ctx: Context, plans: Sequence[NicPlan]) -> None:
    write_udev_names(ctx, plans)
    fsutil.make_dirs(ctx.target, str(PurePosixPath(NM_DIR).parent), mode=0o755)
    fsutil.make_dirs(ctx.target, NM_DIR, mode=0o700)
    ours = {f"snf-image-{p.name}.nmconnection" for p in plans}
    macs = {p.mac for p in plans}
    for name in listdir(ctx, NM_DIR):
        if name in ours or name.startswith("snf-image-"):
            continue
        text = fsutil.read_optional(ctx.target, f"{NM_DIR}/{name}") or ""
        if nm_profile_mac(text) in macs:
            discard(ctx, f"{NM_DIR}/{name}")
    remove_stale(ctx, NM_DIR, "snf-image-*.nmconnection", ours)
    for p in plans:
        path = f"{NM_DIR}/snf-image-{p.name}.nmconnection"
        install(ctx, path, _network.render_nmconnection(p), mode=0o600)


def apply_networkd(ctx: Context, plans: Sequence[NicPlan]) -> None:
    write_udev_names(ctx, plans)
    ours = {f"10-snf-image-{p.name}.network" for p in plans}
    remove_stale(ctx, NETWORKD_DIR, "10-snf-image-*.network", ours)
    for p in plans:
        install(ctx, f"{NETWORKD_DIR}/10-snf-image-{p.name}.network", _network.render_networkd(p))


def _source_files(ctx: Context, text: str) -> list[str]:
    """Guest paths of the files /etc/network/interfaces sources (one level)."""
    found: list[str] = []
    for keyword, pattern in _network.interfaces_sources(text):
        path = PurePosixPath(pattern if pattern.startswith("/") else f"/etc/network/{pattern}")
        if keyword == "source-directory":
            names = [n for n in listdir(ctx, str(path)) if SOURCE_DIRECTORY_NAME.match(n)]
            found += [str(path / n) for n in names]
        elif any(c in path.name for c in "*?["):
            found += [str(path.parent / n) for n in listdir(ctx, str(path.parent)) if fnmatch.fnmatch(n, path.name)]
        elif fsutil.resolve(ctx.target, str(path)).is_file():
            found.append(str(path))
    return [p for p in dict.fromkeys(found) if p != INTERFACES]


def apply_ifupdown(ctx: Context, plans: Sequence[NicPlan]) -> None:
    write_udev_names(ctx, plans)
    text = fsutil.read_optional(ctx.target, INTERFACES) or ""
    names = [p.name for p in plans]
    for path in _source_files(ctx, text):
        old = fsutil.read_optional(ctx.target, path) or ""
        new = _network.strip_interfaces(old, names)
        if new != old:
            backup(ctx, path)
            fsutil.write_file(
                ctx.target,
                path,
                new.encode("utf-8", "surrogateescape"),
                mode=fsutil.resolve(ctx.target, path).stat().st_mode & 0o7777,
            )
    install(ctx, INTERFACES, _network.render_interfaces(text, plans))


def ifcfg_values(text: str) -> dict[str, str]:
    """KEY=value pairs of an ifcfg file, quotes removed."""
    values = {}
    for line in _unix.split_lines(text):
        if _unix.is_comment(line) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("\"'")
    return values


def apply_ifcfg(ctx: Context, plans: Sequence[NicPlan]) -> None:
    write_udev_names(ctx, plans)
    fsutil.make_dirs(ctx.target, IFCFG_DIR, mode=0o755)
    names = {p.name for p in plans}
    macs = {p.mac for p in plans}
    ours = {f"ifcfg-{n}" for n in names}
    for name in listdir(ctx, IFCFG_DIR):
        if not name.startswith("ifcfg-") or name in ours or name == "ifcfg-lo":
            continue
        text = fsutil.read_optional(ctx.target, f"{IFCFG_DIR}/{name}") or ""
        values = ifcfg_values(text)
        device = values.get("DEVICE") or name[len("ifcfg-") :]
        if values.get("HWADDR", "").lower() in macs or _network.replaced_name(device, names):
            discard(ctx, f"{IFCFG_DIR}/{name}")
    for p in plans:
        install(ctx, f"{IFCFG_DIR}/ifcfg-{p.name}", _network.render_ifcfg(p))
    old = fsutil.read_optional(ctx.target, SYSCONFIG_NETWORK) or ""
    install(ctx, SYSCONFIG_NETWORK, _network.render_sysconfig_network(old, plans))


def _nm_enabled(ctx: Context) -> bool:
    return enabled(ctx, "NetworkManager.service")


def _netplan(ctx: Context) -> bool:
    return fsutil.is_dir(ctx.target, "/etc/netplan") and installed(ctx, "/usr/sbin/netplan", "/sbin/netplan")


def _networkd(ctx: Context) -> bool:
    return enabled(ctx, "systemd-networkd.service")


def _ifupdown(ctx: Context) -> bool:
    return fsutil.resolve(ctx.target, INTERFACES).is_file() and installed(ctx, "/sbin/ifup", "/usr/sbin/ifup")


def _redhat(ctx: Context) -> bool:
    return fsutil.is_dir(ctx.target, IFCFG_DIR) or _unix.base_distro(ctx.target) == "redhat"


def _warn_dhcpv6(ctx: Context, plans: Sequence[NicPlan]) -> None:
    if any(p.ipv6 == "dhcp" for p in plans):
        ctx.warning(f"DHCPv6 is not supported on {ctx.osfamily}; those NICs use SLAAC")


def apply_freebsd(ctx: Context, plans: Sequence[NicPlan]) -> None:
    """ifconfig_<if> lines in /etc/rc.conf (the image's NIC lines replaced)."""
    _warn_dhcpv6(ctx, plans)
    names = _bsd.interface_names("freebsd", plans)
    old = fsutil.read_optional(ctx.target, _bsd.RC_CONF) or ""
    install(ctx, _bsd.RC_CONF, _bsd.render_freebsd_rc_conf(old, plans, names))


def _bsd_files(ctx: Context, prefix: str, keep: set[str]) -> None:
    """Back up and remove the image's /etc/<prefix><if> files for NICs it no longer has."""
    drivers = {d for names in _bsd.DRIVERS.values() for d in names.values()}
    for name in listdir(ctx, "/etc"):
        interface = name[len(prefix) :]
        is_nic = re.fullmatch(r"[a-z]+[0-9]+", interface) and interface.rstrip("0123456789") in drivers
        if name.startswith(prefix) and name not in keep and is_nic:  # a NIC, not lo0, a bridge or a tunnel
            discard(ctx, f"/etc/{name}")


def apply_netbsd(ctx: Context, plans: Sequence[NicPlan]) -> None:
    """/etc/ifconfig.<if> per NIC; defaultroute and ip6mode in rc.conf."""
    _warn_dhcpv6(ctx, plans)
    names = _bsd.interface_names("netbsd", plans)
    _bsd_files(ctx, "ifconfig.", {f"ifconfig.{n}" for n in names})
    for p, name in zip(plans, names, strict=True):
        install(ctx, f"/etc/ifconfig.{name}", _bsd.render_netbsd_ifconfig(p))
    values = {}
    gateway = _bsd.default_gateway(plans)
    if gateway is not None:
        values["defaultroute"] = gateway
    gateway6 = _bsd.default_gateway6(plans, names)
    if gateway6 is not None:
        values["defaultroute6"] = gateway6
    if any(p.ipv6 not in (None, "static") for p in plans):
        values["ip6mode"] = "autohost"
    if values:
        backup(ctx, _bsd.RC_CONF)
        _bsd.edit_rc_conf(ctx, values)


def apply_openbsd(ctx: Context, plans: Sequence[NicPlan]) -> None:
    """/etc/hostname.<if> per NIC and /etc/mygate."""
    _warn_dhcpv6(ctx, plans)
    names = _bsd.interface_names("openbsd", plans)
    _bsd_files(ctx, "hostname.", {f"hostname.{n}" for n in names})
    for p, name in zip(plans, names, strict=True):
        install(ctx, f"/etc/hostname.{name}", _bsd.render_openbsd_hostname_if(p), mode=0o640)
    gateways = [g for g in (_bsd.default_gateway(plans), _bsd.default_gateway6(plans, names)) if g is not None]
    if gateways:
        install(ctx, _bsd.MYGATE, "\n".join([_bsd.FILE_HEADER, *gateways]) + "\n")
    elif fsutil.exists(ctx.target, _bsd.MYGATE):
        discard(ctx, _bsd.MYGATE)


def _always(ctx: Context) -> bool:
    return True


NETWORKMANAGER = Backend("NetworkManager keyfiles", LINUX, _nm_enabled, apply_networkmanager)

# In priority order: the first whose detect() is true configures the image.
BACKENDS: list[Backend] = [
    Backend("netplan", LINUX, _netplan, apply_netplan),
    NETWORKMANAGER,
    Backend("systemd-networkd", LINUX, _networkd, apply_networkd),
    Backend("ifupdown", LINUX, _ifupdown, apply_ifupdown),
    Backend("ifcfg", LINUX, _redhat, apply_ifcfg),
    Backend("FreeBSD rc.conf", frozenset({"freebsd"}), _always, apply_freebsd),
    Backend("NetBSD ifconfig.if", frozenset({"netbsd"}), _always, apply_netbsd),
    Backend("OpenBSD hostname.if", frozenset({"openbsd"}), _always, apply_openbsd),
]


TASK = Task(
    name="ConfigureNetwork",
    order=50,
    families=frozenset().union(*(backend.families for backend in BACKENDS)),
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)


def choose_backend(ctx: Context) -> Backend | None:
    """The format this image uses (NM_NETWORKING forces NetworkManager on Linux), or None if unknown."""
    if ctx.osfamily in NETWORKMANAGER.families and ctx.properties.flag("NM_NETWORKING"):
        return NETWORKMANAGER
    for backend in BACKENDS:
        if ctx.osfamily in backend.families and backend.detect(ctx):
            return backend
    return None


def run(ctx: Context) -> None:
    """Plan the NICs, pick the image's format, write it (or leave it to cloud-init)."""
    plans = _nics.plan(ctx)
    if not plans:
        log.info("The instance has no NICs; nothing to configure")
        return
    backend = choose_backend(ctx)
    if backend is None:
        if ctx.cloud_init:
            if not fsutil.exists(ctx.target, f"{_cloud_init.SEED_DIR}/network-config"):
                _cloud_init.write_network_config(ctx, plans)
            log.info("No known network configuration in the image; cloud-init applies the seed's network-config")
            return
        ctx.warning("Don't know how to configure the network for this OS")
        return
    log.info("Configuring the network with %s", backend.name)
    backend.apply(ctx, plans)
    if ctx.cloud_init or _cloud_init.has_cloud_init(ctx.target):
        _cloud_init.disable_network(ctx)
