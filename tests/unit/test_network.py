"""The NIC decision function and every network renderer, as pure functions."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
import yaml

from helper.commands import TaskError
from snf_image.contract.rules import RulesNic, RulesSettings
from tasks import _network
from tasks._nics import NicPlan, plan_nics

SETTINGS = RulesSettings(
    dhcp_tags=("auto", "dhcp", "nfdhcpd"),
    stateful_dhcpv6_tags=("dhcpv6", "stateful_dhcpv6"),
    stateless_dhcpv6_tags=("nfdhcpd", "stateless_dhcpv6"),
    default_nic_config="dhcp",
)
MAC0 = "aa:00:00:00:00:01"
MAC1 = "aa:00:00:00:00:02"


def nic(index: int = 0, mac: str | None = MAC0, tags: tuple[str, ...] = (), **fields: Any) -> RulesNic:
    return RulesNic(index=index, mac=mac, tags=tags, **fields)


def settings(default_nic_config: str) -> RulesSettings:
    return dataclasses.replace(SETTINGS, default_nic_config=default_nic_config)


def one(**fields: Any) -> NicPlan:
    plans, _ = plan_nics([nic(**fields)], settings(""))
    return plans[0]


def static(index: int = 0, mac: str = MAC0, gateway: bool = True, ipv6: str | None = None) -> NicPlan:
    return NicPlan(
        index=index,
        mac=mac,
        name=f"nic{index}",
        ipv4="static",
        ipv6=ipv6,
        address=ipaddress.IPv4Interface(f"192.0.2.{10 + index}/24"),
        gateway=ipaddress.IPv4Address("192.0.2.1") if gateway else None,
    )


def dynamic(index: int = 0, mac: str = MAC0, ipv4: str | None = "dhcp", ipv6: str | None = None) -> NicPlan:
    return NicPlan(index=index, mac=mac, name=f"nic{index}", ipv4=ipv4, ipv6=ipv6)


# --- the decision function -------------------------------------------------------------


def test_static_ipv4_with_gateway() -> None:
    p = one(ip="192.0.2.10", subnet="192.0.2.0/24", gateway="192.0.2.1")
    assert (p.ipv4, p.ipv6, p.name, p.mac) == ("static", None, "nic0", MAC0)
    assert p.address == ipaddress.IPv4Interface("192.0.2.10/24")
    assert p.gateway == ipaddress.IPv4Address("192.0.2.1")
    assert p.metric == 100


def test_static_ipv4_without_gateway() -> None:
    p = one(ip="10.1.2.3", subnet="10.0.0.0/8")
    assert p.ipv4 == "static" and p.gateway is None and str(p.address) == "10.1.2.3/8"


def test_dhcp_tag_wins_over_subnet() -> None:
    p = one(ip="192.0.2.10", subnet="192.0.2.0/24", gateway="192.0.2.1", tags=("dhcp",))
    assert p.ipv4 == "dhcp" and p.address is None


def test_ip_without_subnet_is_dhcp() -> None:
    assert one(ip="192.0.2.10").ipv4 == "dhcp"


def test_no_ip_no_ipv4_even_with_dhcp_tag() -> None:
    p = one(tags=("dhcp",), subnet="192.0.2.0/24")
    assert p.ipv4 is None and not p.configured


@pytest.mark.parametrize(
    ("tags", "expected"),
    [((), "slaac"), (("dhcpv6",), "dhcp"), (("stateless_dhcpv6",), "slaac_dhcp"), (("nfdhcpd",), "slaac_dhcp")],
)
def test_ipv6_modes(tags: tuple[str, ...], expected: str) -> None:
    p = one(subnet6="2001:db8:1::/64", gateway6="2001:db8:1::1", tags=tags)
    assert p.ipv6 == expected
    assert p.subnet6 == ipaddress.IPv6Network("2001:db8:1::/64")


def test_ipv6_from_subnet6_or_gateway6_alone() -> None:
    assert one(subnet6="2001:db8::/64").ipv6 == "slaac"
    assert one(gateway6="fe80::1").ipv6 == "slaac"
    assert one(tags=("dhcpv6",)).ipv6 is None


def test_ipv6_ip_is_static_in_its_subnet6() -> None:
    """Ganeti lets a NIC's IP be IPv6: configured like an IPv4 one, with subnet6 and gateway6."""
    p = one(ip="2001:db8::5", subnet6="2001:db8::/64", gateway6="2001:db8::1", tags=("stateless_dhcpv6", "dhcp"))
    assert (p.ipv4, p.ipv6) == (None, "static")
    assert p.address6 == ipaddress.IPv6Interface("2001:db8::5/64")
    assert p.gateway6 == ipaddress.IPv6Address("2001:db8::1")
    link_local = one(ip="2001:db8::5", subnet6="2001:db8::/64", gateway6="fe80::1")
    assert link_local.gateway6 == ipaddress.IPv6Address("fe80::1")
    assert one(ip="2001:db8::5", subnet6="2001:db8::/64").gateway6 is None


def test_ipv6_ip_without_subnet6_or_with_the_stateful_tag_is_dhcpv6() -> None:
    """As an IPv4 IP without a subnet is DHCP's to hand out, an IPv6 one without subnet6 is DHCPv6's."""
    assert (one(ip="2001:db8::5").ipv6, one(ip="2001:db8::5").address6) == ("dhcp", None)
    assert one(ip="2001:db8::5", subnet6="2001:db8::/64", tags=("dhcpv6",)).ipv6 == "dhcp"


def test_dual_stack() -> None:
    p = one(ip="192.0.2.10", subnet="192.0.2.0/24", subnet6="2001:db8::/64", tags=("nfdhcpd",))
    assert (p.ipv4, p.ipv6) == ("dhcp", "slaac_dhcp")


@pytest.mark.parametrize(
    ("default", "expected"),
    [
        ("dhcp", ("dhcp", None)),
        ("dhcpv6", (None, "dhcp")),
        ("slaac", (None, "slaac")),
        ("dhcp+slaac_dhcp", ("dhcp", "slaac_dhcp")),
    ],
)
def test_single_nic_default(default: str, expected: tuple[str | None, str | None]) -> None:
    plans, warnings = plan_nics([nic()], settings(default))
    assert (plans[0].ipv4, plans[0].ipv6) == expected
    assert len(warnings) == 1 and f"DEFAULT_NIC_CONFIG={default}" in warnings[0]


def test_single_nic_empty_default_warns_and_stays_unconfigured() -> None:
    plans, warnings = plan_nics([nic()], settings(""))
    assert not plans[0].configured and "unconfigured" in warnings[0]


def test_default_not_applied_to_two_nics() -> None:
    plans, warnings = plan_nics([nic(0, MAC0, ip="192.0.2.10"), nic(1, MAC1)], SETTINGS)
    assert plans[0].ipv4 == "dhcp" and not plans[1].configured
    assert [w for w in warnings if "NIC 1" in w]


def test_order_names_and_mac_normalised() -> None:
    plans, _ = plan_nics(
        [nic(1, "AA-00-00-00-00-02", ip="192.0.2.2"), nic(0, "AA:00:00:00:00:01", ip="192.0.2.1")], SETTINGS
    )
    assert [(p.index, p.name, p.mac) for p in plans] == [(0, "nic0", MAC0), (1, "nic1", MAC1)]
    assert plans[1].metric == 101


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mac": "zz:00:00:00:00:01"}, "invalid MAC"),
        ({"mac": None}, "invalid MAC"),
        ({"ip": "192.0.2.300"}, "invalid IP"),
        ({"ip": "2001:db8::5", "subnet6": "2001:db8:1::/64"}, "not in subnet6"),
        ({"ip": "2001:db8::5", "subnet6": "2001:db8::/64", "gateway6": "2001:db8:1::1"}, "neither in subnet6"),
        ({"ip": "2001:db8::5", "subnet6": "2001:db8::/64", "subnet": "garbage/24"}, "invalid subnet"),
        ({"ip": "192.0.2.1; rm -rf /"}, "invalid IP"),
        ({"ip": "192.0.2.10", "subnet": "192.0.2.0"}, "CIDR"),
        ({"ip": "192.0.2.10", "subnet": "garbage/24"}, "invalid subnet"),
        ({"ip": "192.0.2.10", "subnet": "2001:db8::/64"}, "IPv4 network"),
        ({"ip": "198.51.100.7", "subnet": "192.0.2.0/24"}, "not in subnet"),
        ({"ip": "192.0.2.10", "subnet": "192.0.2.0/24", "gateway": "198.51.100.1"}, "gateway .* not in subnet"),
        ({"ip": "192.0.2.10", "subnet": "192.0.2.0/24", "gateway": "x"}, "invalid gateway"),
        ({"subnet6": "2001:db8::/200"}, "invalid subnet6"),
        ({"subnet6": "192.0.2.0/24"}, "IPv6 network"),
        ({"gateway6": "192.0.2.1"}, "invalid gateway6"),
    ],
)
def test_garbage_is_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError, match=rf"^NIC 0: .*{message}"):
        plan_nics([nic(**fields)], SETTINGS)


def test_duplicates_are_errors() -> None:
    with pytest.raises(TaskError, match=r"MAC address .* another NIC"):
        plan_nics([nic(0, MAC0), nic(1, MAC0)], SETTINGS)
    with pytest.raises(TaskError, match="duplicate NIC index"):
        plan_nics([nic(0, MAC0), nic(0, MAC1)], SETTINGS)


def test_bad_default_nic_config() -> None:
    with pytest.raises(TaskError, match="Invalid DEFAULT_NIC_CONFIG"):
        plan_nics([nic()], settings("static"))


def test_no_nics() -> None:
    assert plan_nics([], SETTINGS) == ([], [])


# --- udev ------------------------------------------------------------------------------


def test_udev_rules() -> None:
    text = _network.render_udev_rules([static(0), dynamic(1, MAC1)])
    assert text.splitlines()[2:] == [
        f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC0}", ATTR{{type}}=="1", NAME="nic0"',
        f'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{{address}}=="{MAC1}", ATTR{{type}}=="1", NAME="nic1"',
    ]


# --- ifupdown ------------------------------------------------------------------------------

BLOCK_HEAD = [
    "# BEGIN snf-image ConfigureNetwork",
    "# Written by snf-image (ConfigureNetwork); a new deployment rewrites it.",
    "# Names are pinned by MAC in /etc/udev/rules.d/70-snf-image-net.rules.",
]
LO = ["# The loopback network interface", "auto lo", "iface lo inet loopback", ""]


def test_interfaces_static_with_gateway_from_empty() -> None:
    assert _network.render_interfaces("", [static()]).splitlines() == [
        *LO,
        *BLOCK_HEAD,
        "auto nic0",
        "allow-hotplug nic0",
        "iface nic0 inet static",
        "    address 192.0.2.10",
        "    netmask 255.255.255.0",
        "    gateway 192.0.2.1",
        "    metric 100",
        "# END snf-image ConfigureNetwork",
    ]


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "stanzas"),
    [
        ("dhcp", None, ["iface nic0 inet dhcp"]),
        (None, "dhcp", ["iface nic0 inet6 dhcp"]),
        (None, "slaac", ["iface nic0 inet6 auto", "    privext 0"]),
        ("dhcp", "slaac_dhcp", ["iface nic0 inet dhcp", "iface nic0 inet6 auto", "    privext 0", "    dhcp 1"]),
    ],
)
def test_interfaces_dynamic(ipv4: str | None, ipv6: str | None, stanzas: list[str]) -> None:
    lines = _network.render_interfaces("", [dynamic(ipv4=ipv4, ipv6=ipv6)]).splitlines()
    assert lines[len(LO) + len(BLOCK_HEAD) :] == [
        "auto nic0",
        "allow-hotplug nic0",
        *stanzas,
        "# END snf-image ConfigureNetwork",
    ]


def test_interfaces_two_nics_and_an_unconfigured_one() -> None:
    plans = [static(0), static(1, MAC1, ipv6="slaac"), dynamic(2, "aa:00:00:00:00:03", ipv4=None)]
    block = _network.render_interfaces("", plans).splitlines()[len(LO) + len(BLOCK_HEAD) :]
    assert block == [
        "auto nic0",
        "allow-hotplug nic0",
        "iface nic0 inet static",
        "    address 192.0.2.10",
        "    netmask 255.255.255.0",
        "    gateway 192.0.2.1",
        "    metric 100",
        "auto nic1",
        "allow-hotplug nic1",
        "iface nic1 inet static",
        "    address 192.0.2.11",
        "    netmask 255.255.255.0",
        "    gateway 192.0.2.1",
        "    metric 101",
        "iface nic1 inet6 auto",
        "    privext 0",
        "# nic2 (aa:00:00:00:00:03): no IPv4/IPv6 information, left unconfigured",
        "# END snf-image ConfigureNetwork",
    ]


DEBIAN_INTERFACES = """\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug ens3
iface ens3 inet dhcp
# a comment inside the stanza
    dns-nameservers 192.0.2.53 \\
        192.0.2.54
iface ens3 inet6 auto

auto br0 eth0
iface br0 inet static
    address 10.9.9.1/24
    bridge_ports none

auto eth0.100
iface eth0.100 inet manual
"""


def test_interfaces_preserves_unrelated_config() -> None:
    out = _network.render_interfaces(DEBIAN_INTERFACES, [dynamic()])
    head = out.split("# BEGIN")[0]
    assert head == (
        "# This file describes the network interfaces available on your system\n"
        "# and how to activate them. For more information, see interfaces(5).\n"
        "\n"
        "source /etc/network/interfaces.d/*\n"
        "\n"
        "# The loopback network interface\n"
        "auto lo\n"
        "iface lo inet loopback\n"
        "\n"
        "# The primary network interface\n"
        "# a comment inside the stanza\n"
        "\n"
        "auto br0\n"
        "iface br0 inet static\n"
        "    address 10.9.9.1/24\n"
        "    bridge_ports none\n"
        "\n"
        "auto eth0.100\n"
        "iface eth0.100 inet manual\n"
        "\n"
    )
    assert out.count("iface lo inet loopback") == 1


def test_interfaces_rerun_is_idempotent() -> None:
    once = _network.render_interfaces(DEBIAN_INTERFACES, [static(), dynamic(1, MAC1)])
    twice = _network.render_interfaces(once, [static(), dynamic(1, MAC1)])
    assert twice == once
    assert once.count("# BEGIN snf-image") == 1 and once.count("iface nic0 inet static") == 1
    # a changed plan replaces the block
    changed = _network.render_interfaces(once, [dynamic()])
    assert "inet static" not in changed.split("# BEGIN")[1] and changed.count("# BEGIN snf-image") == 1


def test_interfaces_crlf_kept() -> None:
    crlf = "auto lo\r\niface lo inet loopback\r\n\r\nallow-hotplug eth0\r\niface eth0 inet dhcp\r\n"
    out = _network.render_interfaces(crlf, [dynamic()])
    assert out.startswith("auto lo\r\niface lo inet loopback\r\n\r\n# BEGIN")
    assert "\n" not in out.replace("\r\n", "")
    assert "eth0" not in out
    assert _network.render_interfaces(out, [dynamic()]) == out


def test_strip_interfaces_keeps_file_without_ours() -> None:
    text = "# only comments\nauto lo\niface lo inet loopback\n"
    assert _network.strip_interfaces(text, ["nic0"]) == text


def test_interfaces_sources() -> None:
    assert _network.interfaces_sources(DEBIAN_INTERFACES + "source-directory interfaces.d\n") == [
        ("source", "/etc/network/interfaces.d/*"),
        ("source-directory", "interfaces.d"),
    ]


# --- ifcfg -------------------------------------------------------------------------------------


def test_ifcfg_static_with_gateway_and_slaac_dhcp() -> None:
    assert _network.render_ifcfg(static(ipv6="slaac_dhcp")).splitlines()[1:] == [
        "DEVICE=nic0",
        "NAME=nic0",
        f"HWADDR={MAC0}",
        "TYPE=Ethernet",
        "ONBOOT=yes",
        "NM_CONTROLLED=yes",
        "BOOTPROTO=none",
        "IPADDR=192.0.2.10",
        "PREFIX=24",
        "NETMASK=255.255.255.0",
        "GATEWAY=192.0.2.1",
        "METRIC=100",
        "IPV4_ROUTE_METRIC=100",
        "IPV6INIT=yes",
        "IPV6_FAILURE_FATAL=no",
        "IPV6_AUTOCONF=yes",
        "IPV6_PRIVACY=no",
        "DHCPV6C=yes",
        'DHCPV6C_OPTIONS="-S"',
    ]


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "tail"),
    [
        ("dhcp", None, ["BOOTPROTO=dhcp", "IPV6INIT=no", "IPV6_FAILURE_FATAL=no"]),
        (
            None,
            "dhcp",
            [
                "BOOTPROTO=none",
                "IPV4_FAILURE_FATAL=no",
                "IPV6INIT=yes",
                "IPV6_FAILURE_FATAL=no",
                "IPV6_AUTOCONF=no",
                "DHCPV6C=yes",
            ],
        ),
        (
            None,
            "slaac",
            [
                "BOOTPROTO=none",
                "IPV4_FAILURE_FATAL=no",
                "IPV6INIT=yes",
                "IPV6_FAILURE_FATAL=no",
                "IPV6_AUTOCONF=yes",
                "IPV6_PRIVACY=no",
            ],
        ),
    ],
)
def test_ifcfg_dynamic(ipv4: str | None, ipv6: str | None, tail: list[str]) -> None:
    text = _network.render_ifcfg(dynamic(ipv4=ipv4, ipv6=ipv6))
    assert text.splitlines()[7:] == tail
    assert "FAULURE" not in text


def test_sysconfig_network() -> None:
    old = "# from the image\r\nNETWORKING=no\r\nHOSTNAME=old.example\r\nGATEWAY=10.0.0.1\r\nGATEWAYDEV=eth0\r\n"
    out = _network.render_sysconfig_network(old, [static(ipv6="slaac")])
    assert out == (
        "# from the image\r\nHOSTNAME=old.example\r\n"
        "# snf-image: networking\r\nNETWORKING=yes\r\nNETWORKING_IPV6=yes\r\n"
    )
    assert _network.render_sysconfig_network(out, [static(ipv6="slaac")]) == out
    assert _network.render_sysconfig_network("", [dynamic()]) == "# snf-image: networking\nNETWORKING=yes\n"


# --- NetworkManager ------------------------------------------------------------------------------


def test_nmconnection_static() -> None:
    uuid = _network.connection_uuid(MAC0)
    assert _network.render_nmconnection(static(ipv6="slaac")).splitlines()[1:] == [
        "[connection]",
        "id=nic0",
        f"uuid={uuid}",
        "type=ethernet",
        "autoconnect=true",
        "autoconnect-priority=10",
        "",
        "[ethernet]",
        "mac-address=AA:00:00:00:00:01",
        "",
        "[ipv4]",
        "method=manual",
        "address1=192.0.2.10/24,192.0.2.1",
        "route-metric=100",
        "",
        "[ipv6]",
        "addr-gen-mode=eui64",
        "ip6-privacy=0",
        "method=auto",
        "route-metric=100",
    ]
    assert uuid == _network.connection_uuid(MAC0) != _network.connection_uuid(MAC1)


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "v4", "v6"),
    [
        ("dhcp", None, "method=auto", "method=ignore"),
        (None, "dhcp", "method=disabled", "method=auto"),
        (None, None, "method=disabled", "method=ignore"),
    ],
)
def test_nmconnection_dynamic(ipv4: str | None, ipv6: str | None, v4: str, v6: str) -> None:
    """Learned routes carry the NIC's metric too: NetworkManager's own per-device ones would collide with ours."""
    text = _network.render_nmconnection(dynamic(1, MAC1, ipv4=ipv4, ipv6=ipv6))
    ipv4_section, ipv6_section = text.split("[ipv4]\n")[1].split("\n[ipv6]\n")
    assert ipv4_section.splitlines() == [v4, *(["route-metric=101"] if ipv4 else [])]
    assert ipv6_section.splitlines()[2:] == [v6, *(["route-metric=101"] if ipv6 else [])]


# --- netplan / network-config v2 -------------------------------------------------------------------


def test_netplan_parses_back() -> None:
    plans = [static(0, ipv6="slaac"), dynamic(1, MAC1, ipv6="dhcp"), dynamic(2, "aa:00:00:00:00:03", None, None)]
    from tasks._cloud_init import dump

    data = yaml.safe_load(dump(_network.render_netplan(plans)))
    assert data == {
        "network": {
            "version": 2,
            "ethernets": {
                "nic0": {
                    "match": {"macaddress": MAC0},
                    "set-name": "nic0",
                    "dhcp4": False,
                    "dhcp6": False,
                    "addresses": ["192.0.2.10/24"],
                    "routes": [{"to": "0.0.0.0/0", "via": "192.0.2.1", "metric": 100}],
                    "accept-ra": True,
                },
                "nic1": {
                    "match": {"macaddress": MAC1},
                    "set-name": "nic1",
                    "dhcp4": True,
                    "dhcp6": True,
                    "dhcp4-overrides": {"route-metric": 101},
                    "dhcp6-overrides": {"route-metric": 101},
                },
                "nic2": {
                    "match": {"macaddress": "aa:00:00:00:00:03"},
                    "set-name": "nic2",
                    "dhcp4": False,
                    "dhcp6": False,
                },
            },
        }
    }


def test_v2_slaac_dhcp() -> None:
    entry = _network.network_config_v2([dynamic(ipv4=None, ipv6="slaac_dhcp")])["ethernets"]["nic0"]
    assert entry["dhcp6"] is True and entry["accept-ra"] is True and entry["dhcp4"] is False


# --- systemd-networkd ---------------------------------------------------------------------------


def test_networkd_static() -> None:
    assert _network.render_networkd(static(ipv6="slaac")).splitlines()[1:] == [
        "[Match]",
        f"MACAddress={MAC0}",
        "",
        "[Network]",
        "DHCP=no",
        "Address=192.0.2.10/24",
        "IPv6AcceptRA=yes",
        "IPv6PrivacyExtensions=no",
        "",
        "[IPv6AcceptRA]",
        "RouteMetric=100",
        "",
        "[Route]",
        "Gateway=192.0.2.1",
        "Metric=100",
    ]


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "dhcp"),
    [("dhcp", None, "ipv4"), ("dhcp", "dhcp", "yes"), (None, "dhcp", "ipv6"), (None, "slaac_dhcp", "no")],
)
def test_networkd_dhcp(ipv4: str | None, ipv6: str | None, dhcp: str) -> None:
    text = _network.render_networkd(dynamic(ipv4=ipv4, ipv6=ipv6))
    assert f"\nDHCP={dhcp}\n" in text
    assert ("IPv6AcceptRA=yes" in text) == bool(ipv6)
    # learned routes carry the NIC's metric: no multipath default across two NICs' networks
    assert ("[DHCPv4]\nRouteMetric=100\n" in text) == (ipv4 == "dhcp")
    assert ("[IPv6AcceptRA]\nRouteMetric=100\n" in text) == bool(ipv6)


# --- static IPv6 in every format ------------------------------------------------------------------


def static6(index: int = 0, gateway6: str | None = "2001:db8::1") -> NicPlan:
    """A NIC whose Ganeti IP is IPv6: the address in subnet6, gateway6 as its default route."""
    return NicPlan(
        index=index,
        mac=MAC0,
        name=f"nic{index}",
        ipv6="static",
        address6=ipaddress.IPv6Interface("2001:db8::5/64"),
        subnet6=ipaddress.IPv6Network("2001:db8::/64"),
        gateway6=ipaddress.IPv6Address(gateway6) if gateway6 else None,
    )


def test_interfaces_static_ipv6() -> None:
    lines = _network.render_interfaces_block([static6(1)])
    assert lines[3:-1] == [
        "auto nic1",
        "allow-hotplug nic1",
        "iface nic1 inet6 static",
        "    address 2001:db8::5",
        "    netmask 64",
        "    accept_ra 0",
        "    gateway 2001:db8::1",
        "    metric 101",
    ]
    assert "gateway" not in "\n".join(_network.render_interfaces_block([static6(gateway6=None)]))


def test_ifcfg_static_ipv6() -> None:
    assert _network.render_ifcfg(static6()).splitlines()[7:] == [
        "BOOTPROTO=none",
        "IPV4_FAILURE_FATAL=no",
        "IPV6INIT=yes",
        "IPV6_FAILURE_FATAL=no",
        "IPV6_AUTOCONF=no",
        "IPV6ADDR=2001:db8::5/64",
        "IPV6_DEFAULTGW=2001:db8::1%nic0",
        "IPV6_ROUTE_METRIC=100",
    ]
    assert "IPV6_DEFAULTGW=fe80::1%nic0\n" in _network.render_ifcfg(static6(gateway6="fe80::1"))


def test_nmconnection_static_ipv6() -> None:
    lines = _network.render_nmconnection(static6())
    assert lines.split("[ipv6]\n", 1)[1].splitlines() == [
        "addr-gen-mode=eui64",
        "ip6-privacy=0",
        "method=manual",
        "address1=2001:db8::5/64,2001:db8::1",
        "route-metric=100",
    ]


def test_v2_static_ipv6_with_static_ipv4() -> None:
    dual = dataclasses.replace(static(), ipv6="static", address6=ipaddress.IPv6Interface("2001:db8::5/64"))
    dual = dataclasses.replace(dual, gateway6=ipaddress.IPv6Address("fe80::1"))
    entry = _network.network_config_v2([dual])["ethernets"]["nic0"]
    assert entry["addresses"] == ["192.0.2.10/24", "2001:db8::5/64"]
    assert entry["routes"] == [
        {"to": "0.0.0.0/0", "via": "192.0.2.1", "metric": 100},
        {"to": "::/0", "via": "fe80::1", "metric": 100},
    ]
    assert entry["accept-ra"] is False and entry["dhcp6"] is False


def test_networkd_static_ipv6() -> None:
    assert _network.render_networkd(static6()).splitlines()[4:] == [
        "[Network]",
        "DHCP=no",
        "Address=2001:db8::5/64",
        "IPv6AcceptRA=no",
        "",
        "[Route]",
        "Gateway=2001:db8::1",
        "Metric=100",
    ]


# --- cloud-init network-config v1 ---------------------------------------------------------------


def test_network_config_v1_every_mode() -> None:
    """Gateways and metrics per subnet, the three IPv6 types: what cloud-init renders without loss."""
    plans = [
        static(0, ipv6="slaac"),
        dynamic(1, MAC1, ipv6="slaac_dhcp"),
        dynamic(2, "aa:00:00:00:00:03", None, "dhcp"),
        static6(3),
        dynamic(4, "aa:00:00:00:00:05", None, None),
    ]
    plans[3] = dataclasses.replace(plans[3], mac="aa:00:00:00:00:04")
    config = _network.network_config_v1(plans)
    assert config["version"] == 1
    assert [(c["type"], c["name"], c["mac_address"]) for c in config["config"]] == [
        ("physical", f"nic{p.index}", p.mac) for p in plans
    ]
    assert [c["subnets"] for c in config["config"]] == [
        [
            {"type": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1", "metric": 100},
            {"type": "ipv6_slaac"},
        ],
        [{"type": "dhcp4", "metric": 101}, {"type": "ipv6_dhcpv6-stateless"}],
        [{"type": "ipv6_dhcpv6-stateful"}],
        [{"type": "static6", "address": "2001:db8::5/64", "gateway": "2001:db8::1", "metric": 103}],
        [],
    ]
    assert config["config"][3]["accept-ra"] is False
    assert "accept-ra" not in config["config"][0]
