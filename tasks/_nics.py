"""What each NIC of the instance gets: the one network decision, shared by ConfigureNetwork and InitializeDatasource.

One pure decision function (:func:`plan_nics`) turns the rules' NIC list
and settings into a :class:`NicPlan` per NIC; :func:`plan` is the same for a
task's context, its warnings reaching the operator once per run. The
renderers of every format are in :mod:`tasks._network`.

Interface names. Current distributions name NICs after their bus position
(ens3, enp0s3), which the jail cannot know. Formats that can match a NIC by
MAC do so (netplan ``match: macaddress``, networkd ``[Match] MACAddress=``,
NetworkManager ``mac-address``, ifcfg ``HWADDR``); and because ifupdown can
only name interfaces, every Linux renderer also pins the name by MAC with a
udev rule (``_network.render_udev_rules``) so that Ganeti NIC ``N`` is ``nicN``
on every image whatever its renderer. The prefix is deliberately not
``eth``: renaming into the kernel's own ``ethN`` namespace races with the
kernel's names when the probe order differs from Ganeti's order
(systemd.link(5) warns against it), and a lost race leaves a NIC
unconfigured.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from helper.commands import TaskError
from helper.framework import Context
from snf_image.contract.rules import RulesNic, RulesSettings

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


def plan(ctx: Context) -> list[NicPlan]:
    """The NIC plans of this deployment; their warnings reach the operator once per run."""
    plans, warnings = plan_nics(ctx.rules.nics, ctx.rules.settings)
    for message in warnings:
        if message not in ctx.network_warnings:
            ctx.network_warnings.add(message)
            ctx.warning(message)
    return plans
