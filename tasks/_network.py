"""Network configuration as pure functions: the renderers of every format the images read.

Every renderer (udev names, ifupdown, ifcfg, NetworkManager keyfiles,
netplan, systemd-networkd, cloud-init's network-config) turns the NIC plans
(:mod:`tasks._nics`) into text or data, so each is tested without an image.
ConfigureNetwork and InitializeDatasource only do the I/O.

Every Linux renderer matches a NIC by MAC where its format can, and pins
Ganeti NIC ``N`` to the name ``nicN`` with a udev rule (why not ``ethN``:
:mod:`tasks._nics`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ._nics import MARK, RA_MODES, NicPlan
from ._unix import join_lines, newline_of, split_lines

HEADER = f"Written by {MARK} (ConfigureNetwork); a new deployment rewrites it."
EDITED = f"Edited by {MARK} (ConfigureNetwork): the entries for this instance's NICs are in its own file."


# --- udev: the names --------------------------------------------------------


def render_udev_rules(plans: Sequence[NicPlan]) -> str:
    """udev rules naming each NIC by its MAC (works with systemd-udevd and eudev alike).

    ``DRIVERS=="?*"`` and ``ATTR{type}=="1"`` restrict the match to the
    physical Ethernet device, not VLANs or bridges that inherit its MAC.
    The file sorts before 80-net-setup-link.rules, which only names a NIC
    whose NAME is still unset.
    """
    lines = [f"# {HEADER}", "# Ganeti NIC N is named nicN by its MAC address."]
    for p in plans:
        lines.append(
            f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{p.mac}", '
            f'ATTR{{type}}=="1", NAME="{p.name}"'
        )
    return join_lines(lines)


# --- ifupdown ---------------------------------------------------------------

BEGIN = f"# BEGIN {MARK} ConfigureNetwork"
END = f"# END {MARK} ConfigureNetwork"
STANZA_WORDS = ("iface", "mapping", "auto", "source", "source-directory", "rename", "no-auto-down", "no-scripts")
PHYSICAL_ETHERNET = ("eth*", "en*")


def _is_stanza(word: str) -> bool:
    return word in STANZA_WORDS or word.startswith("allow-")


def interfaces_sources(text: str) -> list[tuple[str, str]]:
    """The ``source``/``source-directory`` lines of an interfaces file: (keyword, pattern)."""
    found = []
    for line in split_lines(text):
        words = line.split()
        if len(words) >= 2 and words[0] in ("source", "source-directory"):
            found.extend((words[0], pattern) for pattern in words[1:])
    return found


def replaced_name(name: str, names: Iterable[str], patterns: Sequence[str] = PHYSICAL_ETHERNET) -> bool:
    """Whether the image's configuration for interface ``name`` is replaced by ours.

    It is when ``name`` is one of ours, or a physical Ethernet name (eth0,
    ens3, enp0s3, and their aliases eth0:1) -- the NIC the image was built
    with. VLANs (eth0.100), bridges, bonds and loopback are kept.
    """
    base = name.split(":")[0]
    if base in set(names):
        return True
    return "." not in base and any(fnmatch.fnmatchcase(base, p) for p in patterns)


def strip_interfaces(text: str, names: Iterable[str], patterns: Sequence[str] = PHYSICAL_ETHERNET) -> str:
    """``text`` without our marked block and without the stanzas of ``names`` or physical Ethernet names.

    The image's own lines for its NIC (``allow-hotplug ens3`` /
    ``iface ens3 inet dhcp``) are what ConfigureNetwork replaces; they
    would otherwise race with ours for the same device or, once it is
    renamed, make ``ifup -a`` fail on a device that no longer exists.
    Loopback, bridges, bonds, VLANs, comments and ``source`` lines stay.
    Line continuations are honoured; the file's line endings are kept.
    """
    newline = newline_of(text)
    wanted = set(names)

    def ours(name: str) -> bool:
        return replaced_name(name, wanted, patterns)

    lines = split_lines(text)
    out: list[str] = []
    skipping = False  # inside an iface/mapping stanza we drop
    in_block = False
    i = 0
    while i < len(lines):
        # a logical line may span several physical ones (trailing backslash)
        j = i
        while lines[j].endswith("\\") and j + 1 < len(lines):
            j += 1
        physical = lines[i : j + 1]
        logical = " ".join(part[:-1] if part.endswith("\\") else part for part in physical)
        i = j + 1
        stripped = logical.strip()
        if stripped == BEGIN:
            in_block = True
            continue
        if in_block:
            if stripped == END:
                in_block = False
            continue
        words = stripped.split()
        if not words or stripped.startswith("#"):
            out.extend(physical)
            continue
        if _is_stanza(words[0]):
            skipping = False
            if words[0] in ("iface", "mapping") and len(words) >= 2 and ours(words[1]):
                skipping = True
                continue
            if words[0] == "auto" or words[0].startswith("allow-"):
                keep = [w for w in words[1:] if not ours(w)]
                if not keep:
                    continue
                if len(keep) != len(words) - 1:
                    indent = logical[: len(logical) - len(logical.lstrip())]
                    out.append(indent + " ".join([words[0], *keep]))
                    continue
            out.extend(physical)
            continue
        if not skipping:
            out.extend(physical)
    return join_lines(out, newline)


def _prefix_mask(address: ipaddress.IPv4Interface) -> str:
    return str(address.network.netmask)


def render_interfaces_block(plans: Sequence[NicPlan]) -> list[str]:
    """The marked block of /etc/network/interfaces stanzas for ``plans`` (lines)."""
    lines = [BEGIN, f"# {HEADER}", "# Names are pinned by MAC in /etc/udev/rules.d/70-snf-image-net.rules."]
    for p in plans:
        if not p.configured:
            lines.append(f"# {p.name} ({p.mac}): no IPv4/IPv6 information, left unconfigured")
            continue
        lines += [f"auto {p.name}", f"allow-hotplug {p.name}"]
        if p.ipv4 == "dhcp":
            lines.append(f"iface {p.name} inet dhcp")
        elif p.ipv4 == "static" and p.address is not None:
            lines += [
                f"iface {p.name} inet static",
                f"    address {p.address.ip}",
                f"    netmask {_prefix_mask(p.address)}",
            ]
            if p.gateway is not None:
                # a metric per NIC: a second plain "gateway" would fail ifup with "File exists"
                lines += [f"    gateway {p.gateway}", f"    metric {p.metric}"]
        if p.ipv6 == "dhcp":
            lines.append(f"iface {p.name} inet6 dhcp")
        elif p.ipv6 in ("slaac", "slaac_dhcp"):
            lines += [f"iface {p.name} inet6 auto", "    privext 0"]
            if p.ipv6 == "slaac_dhcp":
                lines.append("    dhcp 1")
        elif p.ipv6 == "static" and p.address6 is not None:
            lines += [
                f"iface {p.name} inet6 static",
                f"    address {p.address6.ip}",
                f"    netmask {p.address6.network.prefixlen}",
                "    accept_ra 0",  # the gateway is ours: no second default route from an advertisement
            ]
            if p.gateway6 is not None:
                lines += [f"    gateway {p.gateway6}", f"    metric {p.metric}"]
    lines.append(END)
    return lines


def render_interfaces(text: str, plans: Sequence[NicPlan]) -> str:
    """/etc/network/interfaces with our stanzas replacing the NICs' old ones; ``lo`` ensured.

    Idempotent: a second run replaces the marked block instead of adding one.
    """
    newline = newline_of(text) if text else "\n"
    stripped = strip_interfaces(text, [p.name for p in plans])
    lines = split_lines(stripped)
    while lines and not lines[-1].strip():
        lines.pop()
    has_lo = any(ln.split()[:2] == ["iface", "lo"] for ln in lines)
    if not has_lo:
        if lines:
            lines.append("")
        lines += ["# The loopback network interface", "auto lo", "iface lo inet loopback"]
    if lines:
        lines.append("")
    lines += render_interfaces_block(plans)
    return join_lines(lines, newline)


# --- ifcfg (Red Hat) ----------------------------------------------------------


def render_ifcfg(plan: NicPlan) -> str:
    """/etc/sysconfig/network-scripts/ifcfg-<name> for one NIC (initscripts and NetworkManager's ifcfg-rh)."""
    lines = [
        f"# {HEADER}",
        f"DEVICE={plan.name}",
        f"NAME={plan.name}",
        f"HWADDR={plan.mac}",
        "TYPE=Ethernet",
        "ONBOOT=yes",
        "NM_CONTROLLED=yes",
    ]
    if plan.ipv4 == "static" and plan.address is not None:
        lines += [
            "BOOTPROTO=none",
            f"IPADDR={plan.address.ip}",
            f"PREFIX={plan.address.network.prefixlen}",
            f"NETMASK={_prefix_mask(plan.address)}",
        ]
        if plan.gateway is not None:
            lines += [f"GATEWAY={plan.gateway}", f"METRIC={plan.metric}", f"IPV4_ROUTE_METRIC={plan.metric}"]
    elif plan.ipv4 == "dhcp":
        lines.append("BOOTPROTO=dhcp")
    else:
        lines += ["BOOTPROTO=none", "IPV4_FAILURE_FATAL=no"]
    if plan.ipv6 is None:
        lines += ["IPV6INIT=no", "IPV6_FAILURE_FATAL=no"]
    else:
        lines += ["IPV6INIT=yes", "IPV6_FAILURE_FATAL=no"]
        if plan.ipv6 == "dhcp":
            lines += ["IPV6_AUTOCONF=no", "DHCPV6C=yes"]
        elif plan.ipv6 == "static" and plan.address6 is not None:
            lines += ["IPV6_AUTOCONF=no", f"IPV6ADDR={plan.address6.with_prefixlen}"]
            if plan.gateway6 is not None:
                # ADDRESS%DEVICE: required for a link-local gateway, and initscripts' sysconfig.txt asks for it
                # whenever several interfaces have IPv6 (NetworkManager's ifcfg-rh reader drops the scope)
                lines += [f"IPV6_DEFAULTGW={plan.gateway6}%{plan.name}", f"IPV6_ROUTE_METRIC={plan.metric}"]
        elif plan.ipv6 == "slaac":
            lines += ["IPV6_AUTOCONF=yes", "IPV6_PRIVACY=no"]
        else:
            lines += ["IPV6_AUTOCONF=yes", "IPV6_PRIVACY=no", "DHCPV6C=yes", 'DHCPV6C_OPTIONS="-S"']
    return join_lines(lines)


SYSCONFIG_DROP = ("NETWORKING", "NETWORKING_IPV6", "GATEWAY", "GATEWAYDEV")


def render_sysconfig_network(text: str, plans: Sequence[NicPlan]) -> str:
    """/etc/sysconfig/network: NETWORKING=yes (and _IPV6), the global GATEWAY/GATEWAYDEV dropped.

    The gateways live in each ifcfg file with a metric per NIC; a global
    GATEWAY left from the image would route through a network this
    instance may not even have. Other lines (HOSTNAME, ...) stay.
    """
    newline = newline_of(text) if text else "\n"
    lines = [ln for ln in split_lines(text) if ln.split("=", 1)[0].strip() not in SYSCONFIG_DROP]
    lines = [ln for ln in lines if ln.strip() != f"# {MARK}: networking"]
    lines.append(f"# {MARK}: networking")
    lines.append("NETWORKING=yes")
    if any(p.ipv6 for p in plans):
        lines.append("NETWORKING_IPV6=yes")
    return join_lines(lines, newline)


# --- NetworkManager keyfiles ---------------------------------------------------


def connection_uuid(mac: str) -> str:
    """A stable connection UUID per MAC, so a re-run writes the same file."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"snf-image:nic:{mac}"))


def render_nmconnection(plan: NicPlan) -> str:
    """A NetworkManager keyfile for one NIC, bound to its MAC.

    ``autoconnect-priority`` beats the image's stock profiles (priority 0)
    for the same device; ``addr-gen-mode=eui64`` keeps the SLAAC address
    the one the cloud computes from the MAC. A NIC with nothing to
    configure still gets a profile (IPv4 disabled) so NetworkManager does
    not start DHCP on it by itself. Every configured family has the NIC's
    ``route-metric``, learned routes included: NetworkManager's own
    per-device metrics (100, 101, ... in activation order) would otherwise
    collide with an explicit one, and two IPv6 default routes with one
    metric become a single multipath route across two networks.
    """
    lines = [
        "[connection]",
        f"id={plan.name}",
        f"uuid={connection_uuid(plan.mac)}",
        "type=ethernet",
        "autoconnect=true",
        "autoconnect-priority=10",
        "",
        "[ethernet]",
        f"mac-address={plan.mac.upper()}",
        "",
        "[ipv4]",
    ]
    if plan.ipv4 == "static" and plan.address is not None:
        gateway = f",{plan.gateway}" if plan.gateway is not None else ""
        lines += ["method=manual", f"address1={plan.address.with_prefixlen}{gateway}"]
    elif plan.ipv4 == "dhcp":
        lines.append("method=auto")
    else:
        lines.append("method=disabled")
    if plan.ipv4 is not None:
        lines.append(f"route-metric={plan.metric}")
    lines += ["", "[ipv6]", "addr-gen-mode=eui64", "ip6-privacy=0"]
    if plan.ipv6 == "static" and plan.address6 is not None:
        gateway = f",{plan.gateway6}" if plan.gateway6 is not None else ""
        lines += ["method=manual", f"address1={plan.address6.with_prefixlen}{gateway}"]
    else:
        # "auto" follows the router advertisement's M/O flags: SLAAC, stateless or stateful DHCPv6.
        # "ignore" rather than "disabled", which NetworkManager < 1.20 does not know.
        lines.append("method=auto" if plan.ipv6 else "method=ignore")
    if plan.ipv6 is not None:
        lines.append(f"route-metric={plan.metric}")
    return f"# {HEADER}\n" + join_lines(lines)


# --- netplan (network config v2) and cloud-init's network-config (v1) -------------


def network_config_v2(plans: Sequence[NicPlan]) -> dict[str, Any]:
    """The network config version 2 (netplan's schema) for ``plans``.

    Default routes are explicit ``routes`` with a metric per NIC (valid in
    every netplan version, unlike ``to: default``); IPv6 comes from router
    advertisements (``accept-ra``) and DHCPv6 (``dhcp6``). A NIC using DHCP
    gives its learned routes its own metric too (``dhcpN-overrides``):
    networkd merges equal-metric IPv6 default routes of two NICs into one
    multipath route across unrelated networks.
    """
    ethernets: dict[str, Any] = {}
    for p in plans:
        entry: dict[str, Any] = {
            "match": {"macaddress": p.mac},
            "set-name": p.name,
            "dhcp4": p.ipv4 == "dhcp",
            "dhcp6": p.ipv6 in ("dhcp", "slaac_dhcp"),
        }
        addresses, routes = [], []
        if p.ipv4 == "static" and p.address is not None:
            addresses.append(p.address.with_prefixlen)
            if p.gateway is not None:
                routes.append({"to": "0.0.0.0/0", "via": str(p.gateway), "metric": p.metric})
        if p.ipv6 == "static" and p.address6 is not None:
            addresses.append(p.address6.with_prefixlen)
            if p.gateway6 is not None:
                routes.append({"to": "::/0", "via": str(p.gateway6), "metric": p.metric})
        if addresses:
            entry["addresses"] = addresses
        if routes:
            entry["routes"] = routes
        if p.ipv6 in ("slaac", "slaac_dhcp"):
            entry["accept-ra"] = True
        elif p.ipv6 == "static":
            entry["accept-ra"] = False
        # networkd applies a [DHCP] RouteMetric to the DHCPv4 and the router advertisement routes
        for family in ("dhcp4", "dhcp6"):
            if entry[family]:
                entry[f"{family}-overrides"] = {"route-metric": p.metric}
        ethernets[p.name] = entry
    return {"version": 2, "ethernets": ethernets}


def render_netplan(plans: Sequence[NicPlan]) -> dict[str, Any]:
    """The content of /etc/netplan/<ours>.yaml (to be dumped with yaml.safe_dump)."""
    return {"network": network_config_v2(plans)}


CLOUD_INIT_IPV6_TYPES = {"slaac": "ipv6_slaac", "slaac_dhcp": "ipv6_dhcpv6-stateless", "dhcp": "ipv6_dhcpv6-stateful"}


def network_config_v1(plans: Sequence[NicPlan]) -> dict[str, Any]:
    """cloud-init's network-config version 1 for ``plans`` (the seed's ``network-config``).

    Version 1, not 2, because cloud-init turns version 2 into version 1
    before rendering and loses on the way what the NICs need: a ``routes``
    entry drops its metric and becomes ``post-up route add`` in ENI, which
    fails on images without net-tools (the default route of a static NIC
    is silently missing), and ``dhcp6`` is always stateful, so a network
    for SLAAC plus stateless DHCPv6 gets a DHCPv6 client that never gets an
    address. In version 1 each subnet has its own ``gateway`` and ``metric``
    (rendered natively by every renderer) and the IPv6 types say SLAAC,
    stateless or stateful DHCPv6 (cloud-init >= 20.1).
    """
    config: list[dict[str, Any]] = []
    for p in plans:
        subnets: list[dict[str, Any]] = []
        if p.ipv4 == "static" and p.address is not None:
            subnet: dict[str, Any] = {"type": "static", "address": p.address.with_prefixlen}
            if p.gateway is not None:
                subnet.update(gateway=str(p.gateway), metric=p.metric)
            subnets.append(subnet)
        elif p.ipv4 == "dhcp":
            subnets.append({"type": "dhcp4", "metric": p.metric})
        if p.ipv6 == "static" and p.address6 is not None:
            subnet = {"type": "static6", "address": p.address6.with_prefixlen}
            if p.gateway6 is not None:
                subnet.update(gateway=str(p.gateway6), metric=p.metric)
            subnets.append(subnet)
        elif p.ipv6 is not None:
            subnets.append({"type": CLOUD_INIT_IPV6_TYPES[p.ipv6]})
        entry: dict[str, Any] = {"type": "physical", "name": p.name, "mac_address": p.mac, "subnets": subnets}
        if p.ipv6 == "static":
            entry["accept-ra"] = False
        config.append(entry)
    return {"version": 1, "config": config}


def _netplan_claims(key: str, entry: Any, names: Sequence[str], macs: set[str]) -> bool:
    """Whether the image's netplan ethernet ``key: entry`` would also configure one of our NICs."""
    match = entry.get("match") if isinstance(entry, dict) else None
    if not isinstance(match, dict):
        return replaced_name(str(key), names)
    if str(match.get("macaddress") or "").lower() in macs:
        return True
    name = match.get("name")
    return isinstance(name, str) and replaced_name(name, names)


def strip_netplan(data: Any, plans: Sequence[NicPlan]) -> Any:
    """The image's netplan ``data`` without the ethernets that would also claim our NICs.

    netplan renders each ethernet as ``10-netplan-<id>.network`` and networkd
    applies the first file, by name, that matches a link -- and ``Name=``
    matches alternative names too. An image's stock ``match: {name: "en*"}``
    (id ``all-en``) thus claims ``nic0`` through its altname ``enp0s3`` and
    sorts before our ``nic0``: the NIC gets DHCP instead of its static
    address. So, as for the other formats, the image's entries for its old
    NIC names (eth*, en*) and for the same MACs go; everything else stays.
    """
    network = data.get("network") if isinstance(data, dict) else None
    ethernets = network.get("ethernets") if isinstance(network, dict) else None
    if not isinstance(ethernets, dict):
        return data
    names = [p.name for p in plans]
    macs = {p.mac for p in plans}
    kept = {k: v for k, v in ethernets.items() if not _netplan_claims(k, v, names, macs)}
    if len(kept) == len(ethernets):
        return data
    network = dict(network)
    if kept:
        network["ethernets"] = kept
    else:
        del network["ethernets"]
    return {**data, "network": network}


# --- systemd-networkd -----------------------------------------------------------


def render_networkd(plan: NicPlan) -> str:
    """/etc/systemd/network/10-snf-image-<name>.network for one NIC, matched by MAC."""
    dhcp = {(True, True): "yes", (True, False): "ipv4", (False, True): "ipv6", (False, False): "no"}[
        (plan.ipv4 == "dhcp", plan.ipv6 == "dhcp")
    ]
    lines = [f"# {HEADER}", "[Match]", f"MACAddress={plan.mac}", "", "[Network]", f"DHCP={dhcp}"]
    if plan.ipv4 == "static" and plan.address is not None:
        lines.append(f"Address={plan.address.with_prefixlen}")
    if plan.ipv6 == "static" and plan.address6 is not None:
        lines += [f"Address={plan.address6.with_prefixlen}", "IPv6AcceptRA=no"]
    elif plan.ipv6:
        # SLAAC; networkd also runs DHCPv6 when the advertisement sets the M or O flag.
        lines += ["IPv6AcceptRA=yes", "IPv6PrivacyExtensions=no"]
    else:
        lines.append("IPv6AcceptRA=no")
    # every default route of NIC N, learned or static, has its metric: networkd would merge two NICs'
    # equal-metric IPv6 default routes into one multipath route across unrelated networks
    if plan.ipv4 == "dhcp":
        lines += ["", "[DHCPv4]", f"RouteMetric={plan.metric}"]
    if plan.ipv6 in RA_MODES:
        lines += ["", "[IPv6AcceptRA]", f"RouteMetric={plan.metric}"]
    if plan.ipv4 == "static" and plan.gateway is not None:
        lines += ["", "[Route]", f"Gateway={plan.gateway}", f"Metric={plan.metric}"]
    if plan.ipv6 == "static" and plan.gateway6 is not None:
        lines += ["", "[Route]", f"Gateway={plan.gateway6}", f"Metric={plan.metric}"]
    return join_lines(lines)


def render_networkd_ra_metric(plan: NicPlan) -> str:
    """A networkd drop-in giving the routes of ``plan``'s router advertisements its metric (see ConfigureNetwork)."""
    return join_lines([f"# {HEADER}", "[IPv6AcceptRA]", f"RouteMetric={plan.metric}"])
