"""Network configuration as pure functions: the per-NIC plan and the renderers of every format.

One decision function (:func:`plan_nics`) turns the rules' NIC list and
settings into a :class:`NicPlan` per NIC; every renderer (ifcfg,
NetworkManager keyfiles, netplan, systemd-networkd, cloud-init's
network-config here, ifupdown in ``tasks/_ifupdown.py``) is text/data in,
text/data out, so each is tested without an image. ConfigureNetwork and
InitializeDatasource only do the I/O.

Interface names. Current distributions name NICs after their bus position
(ens3, enp0s3), which the jail cannot know. Formats that can match a NIC by
MAC do so (netplan ``match: macaddress``, networkd ``[Match] MACAddress=``,
NetworkManager ``mac-address``, ifcfg ``HWADDR``); and because ifupdown can
only name interfaces, every Linux renderer also pins the name by MAC with a
udev rule (:func:`render_udev_rules`) so that Ganeti NIC ``N`` is ``nicN``
on every image whatever its renderer. The prefix is deliberately not
``eth``: renaming into the kernel's own ``ethN`` namespace races with the
kernel's names when the probe order differs from Ganeti's order
(systemd.link(5) warns against it), and a lost race leaves a NIC
unconfigured.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from helper.commands import TaskError
from snf_image.contract.rules import RulesNic, RulesSettings

from ._unix import join_lines, newline_of, split_lines

IPV4_MODES = ("dhcp", "static")
IPV6_MODES = ("dhcp", "slaac", "slaac_dhcp", "static")
RA_MODES = ("slaac", "slaac_dhcp", "dhcp")  # the IPv6 modes that take the default route from router advertisements
DEFAULT_NIC_CONFIGS = ("", "dhcp", "dhcpv6", "slaac", "slaac_dhcp", "dhcp+dhcpv6", "dhcp+slaac", "dhcp+slaac_dhcp")
NAME_PREFIX = "nic"
METRIC_BASE = 100  # default route metric of NIC N: METRIC_BASE + N, so two gateways never collide
MARK = "snf-image"
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class NicPlan:
    """What one NIC gets.

    ipv4: None, "dhcp" or "static" (then ``address`` is set, ``gateway`` maybe).
    ipv6: None, "dhcp" (stateful DHCPv6), "slaac", "slaac_dhcp" (SLAAC plus
        stateless DHCPv6 for the other options) or "static" (then
        ``address6`` is set and ``gateway6``, if any, is the default route).
    metric: the metric of this NIC's default routes.
    """

    index: int
    mac: str
    name: str
    ipv4: str | None = None
    ipv6: str | None = None
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    address6: ipaddress.IPv6Interface | None = None
    subnet6: ipaddress.IPv6Network | None = None
    gateway6: ipaddress.IPv6Address | None = None
    frontend_type: str | None = None

    @property
    def metric(self) -> int:
        return METRIC_BASE + self.index

    @property
    def configured(self) -> bool:
        """Whether anything is configured on this NIC."""
        return self.ipv4 is not None or self.ipv6 is not None


def linux_name(index: int) -> str:
    """The interface name Ganeti NIC ``index`` gets on Linux (pinned by MAC, see the module docstring)."""
    return f"{NAME_PREFIX}{index}"


def _text(value: str | None) -> str:
    return (value or "").strip()


def _mac(nic: RulesNic, label: str) -> str:
    mac = _text(nic.mac).lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise TaskError(f"{label}: invalid MAC address {nic.mac!r}")
    return mac


def _ipv4(value: str, what: str, label: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise TaskError(f"{label}: invalid {what} {value!r} (expected an IPv4 address)") from exc


def _network(value: str, version: int, what: str, label: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise TaskError(f"{label}: invalid {what} {value!r} (expected a network in CIDR notation)") from exc
    if net.version != version or "/" not in value:
        raise TaskError(f"{label}: invalid {what} {value!r} (expected an IPv{version} network in CIDR notation)")
    return net


def _ip(value: str, label: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise TaskError(f"{label}: invalid IP {value!r} (expected an IPv4 or IPv6 address)") from exc


def _ipv4_fields(
    address: ipaddress.IPv4Address | None, nic: RulesNic, settings: RulesSettings, label: str
) -> dict[str, Any]:
    """The IPv4 part of a NIC's plan (see :func:`plan_nics`)."""
    subnet, gateway = _text(nic.subnet), _text(nic.gateway)
    net = _network(subnet, 4, "subnet", label) if subnet else None
    gw = _ipv4(gateway, "gateway", label) if gateway else None
    if net is not None and gw is not None and gw not in net:
        raise TaskError(f"{label}: gateway {gw} is not in subnet {net}")
    if address is None:
        return {}
    if set(nic.tags).intersection(settings.dhcp_tags) or net is None:
        return {"ipv4": "dhcp"}
    if address not in net:
        raise TaskError(f"{label}: IP {address} is not in subnet {net}")
    return {"ipv4": "static", "address": ipaddress.IPv4Interface(f"{address}/{net.prefixlen}"), "gateway": gw}


def _ipv6_fields(
    address: ipaddress.IPv6Address | None, nic: RulesNic, settings: RulesSettings, label: str
) -> dict[str, Any]:
    """The IPv6 part of a NIC's plan (see :func:`plan_nics`)."""
    subnet6, gateway6 = _text(nic.subnet6), _text(nic.gateway6)
    fields: dict[str, Any] = {}
    net6 = fields["subnet6"] = _network(subnet6, 6, "subnet6", label) if subnet6 else None
    if gateway6:
        try:
            fields["gateway6"] = ipaddress.IPv6Address(gateway6)
        except ValueError as exc:
            raise TaskError(f"{label}: invalid gateway6 {gateway6!r} (expected an IPv6 address)") from exc
    gw6 = fields.get("gateway6")
    tags = set(nic.tags)
    if address is not None:
        if tags.intersection(settings.stateful_dhcpv6_tags) or net6 is None:
            fields["ipv6"] = "dhcp"
            return fields
        if address not in net6:
            raise TaskError(f"{label}: IP {address} is not in subnet6 {net6}")
        if gw6 is not None and gw6 not in net6 and not gw6.is_link_local:
            raise TaskError(f"{label}: gateway6 {gw6} is neither in subnet6 {net6} nor link-local")
        fields["ipv6"] = "static"
        fields["address6"] = ipaddress.IPv6Interface(f"{address}/{net6.prefixlen}")
    elif net6 is not None or gw6 is not None:
        if tags.intersection(settings.stateful_dhcpv6_tags):
            fields["ipv6"] = "dhcp"
        elif tags.intersection(settings.stateless_dhcpv6_tags):
            fields["ipv6"] = "slaac_dhcp"
        else:
            fields["ipv6"] = "slaac"
    return fields


def parse_default_nic_config(value: str) -> tuple[str | None, str | None]:
    """(ipv4, ipv6) modes of a DEFAULT_NIC_CONFIG value: ``dhcp``, ``slaac``, ``dhcp+slaac_dhcp``, ..."""
    word = value.strip().lower()
    if word not in DEFAULT_NIC_CONFIGS:
        raise TaskError(f"Invalid DEFAULT_NIC_CONFIG {value!r} (expected one of {', '.join(DEFAULT_NIC_CONFIGS[1:])})")
    ipv4 = ipv6 = None
    for part in filter(None, word.split("+")):
        if part == "dhcp":
            ipv4 = "dhcp"
        else:
            ipv6 = "dhcp" if part == "dhcpv6" else part
    return ipv4, ipv6


def plan_nics(
    nics: Sequence[RulesNic],
    settings: RulesSettings,
    namer: Callable[[int], str] = linux_name,
) -> tuple[list[NicPlan], list[str]]:
    """The plan for every NIC, in index order, and the warnings for the operator.

    The original's rules (50ConfigureNetwork), addresses checked:

    - IPv4 is configured when the NIC has an IPv4 IP: DHCP when the network
      has a tag of ``dhcp_tags`` or no subnet, else static with the subnet's
      prefix (the IP must lie in the subnet) and the gateway if any (in the
      subnet too).
    - IPv6 is configured when the NIC has an IPv6 IP (Ganeti accepts one,
      e.g. on a routed NIC), the same way: stateful DHCPv6 when the network
      has a ``stateful_dhcpv6_tags`` tag or no subnet6, else static with
      subnet6's prefix and gateway6 (in subnet6 or link-local) if any.
    - Otherwise IPv6 is configured when the network has ``gateway6`` or
      ``subnet6``: stateful DHCPv6 with a ``stateful_dhcpv6_tags`` tag, SLAAC
      plus stateless DHCPv6 with a ``stateless_dhcpv6_tags`` tag, else SLAAC.
    - A single NIC with neither gets ``default_nic_config`` (with a warning).

    Anything malformed (MAC, IP, subnet, gateway, duplicate index or MAC) is
    a TaskError naming the NIC: better no deployment than a guest that is
    unreachable for a reason nobody sees.
    """
    plans: list[NicPlan] = []
    warnings: list[str] = []
    seen_index: set[int] = set()
    seen_mac: set[str] = set()
    for nic in sorted(nics, key=lambda n: n.index):
        index = nic.index
        label = f"NIC {index}"
        if index in seen_index:
            raise TaskError(f"{label}: duplicate NIC index")
        seen_index.add(index)
        mac = _mac(nic, label)
        if mac in seen_mac:
            raise TaskError(f"{label}: MAC address {mac} is used by another NIC too")
        seen_mac.add(mac)
        ip = _ip(_text(nic.ip), label) if _text(nic.ip) else None
        fields = _ipv4_fields(ip if isinstance(ip, ipaddress.IPv4Address) else None, nic, settings, label)
        fields.update(_ipv6_fields(ip if isinstance(ip, ipaddress.IPv6Address) else None, nic, settings, label))
        name = namer(index)
        if not IFNAME_RE.match(name):
            raise TaskError(f"{label}: invalid interface name {name!r}")
        plans.append(NicPlan(index=index, mac=mac, name=name, frontend_type=_text(nic.frontend_type) or None, **fields))

    if len(plans) == 1 and not plans[0].configured:
        default = settings.default_nic_config
        ipv4, ipv6 = parse_default_nic_config(default)
        if ipv4 or ipv6:
            only = plans[0]
            plans[0] = NicPlan(
                index=only.index, mac=only.mac, name=only.name, ipv4=ipv4, ipv6=ipv6, frontend_type=only.frontend_type
            )
            warnings.append(
                f"No network information for the only NIC ({only.name}, {only.mac}); "
                f"applying DEFAULT_NIC_CONFIG={default.strip()}"
            )
        else:
            warnings.append(
                f"No network information for the only NIC ({plans[0].name}, {plans[0].mac}) and "
                "DEFAULT_NIC_CONFIG is empty; leaving it unconfigured"
            )
    for plan in plans:
        if not plan.configured and len(plans) > 1:
            warnings.append(
                f"NIC {plan.index} ({plan.name}, {plan.mac}) has no IPv4 or IPv6 information; leaving it unconfigured"
            )
    return plans, warnings


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


# --- replacing the image's own configuration ------------------------------------

PHYSICAL_ETHERNET = ("eth*", "en*")


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


def _prefix_mask(address: ipaddress.IPv4Interface) -> str:
    return str(address.network.netmask)


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
    not start DHCP on it by itself.
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
        if plan.gateway is not None:
            lines.append(f"route-metric={plan.metric}")
    elif plan.ipv4 == "dhcp":
        lines.append("method=auto")
    else:
        lines.append("method=disabled")
    lines += ["", "[ipv6]", "addr-gen-mode=eui64", "ip6-privacy=0"]
    if plan.ipv6 == "static" and plan.address6 is not None:
        gateway = f",{plan.gateway6}" if plan.gateway6 is not None else ""
        lines += ["method=manual", f"address1={plan.address6.with_prefixlen}{gateway}"]
        if plan.gateway6 is not None:
            lines.append(f"route-metric={plan.metric}")
    else:
        # "auto" follows the router advertisement's M/O flags: SLAAC, stateless or stateful DHCPv6.
        # "ignore" rather than "disabled", which NetworkManager < 1.20 does not know.
        lines.append("method=auto" if plan.ipv6 else "method=ignore")
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
