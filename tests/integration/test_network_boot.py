"""Several NICs, IPv4 and IPv6, proven in booted guests on a network with real DHCP and RA servers.

Each network stack the product writes for a Debian guest gets one deployment
through the real ``create`` with five NICs on five Ganeti networks, then
one boot on a private network (tests/guestnet.py) where dnsmasq serves what
each network's tags promise:

====  ==========================================  ==================================
NIC   Ganeti network (IP, subnets, tags)           what the guest must end up with
====  ==========================================  ==================================
0     IP, SUBNET, GATEWAY, SUBNET6, GATEWAY6;      the static address, default route
      routers advertise SUBNET6                    via GATEWAY with metric 100; SLAAC
                                                   address, v6 default route from RA
1     IP, SUBNET, SUBNET6, GATEWAY6; tag ``dhcp``  DHCPv4 lease, SLAAC (EUI-64)
                                                   address, v4 and v6 default routes
2     SUBNET6, GATEWAY6 only; tag ``dhcpv6``       stateful DHCPv6 lease only, v6
                                                   default route from the RA
3     IPv6 IP, SUBNET6, GATEWAY6; no server        the static IPv6 address, default
                                                   route via GATEWAY6, metric 103
4     SUBNET6, GATEWAY6 only; no tag               SLAAC address, v6 default route
====  ==========================================  ==================================

Checked in the booted guest: the interface with each MAC is ``nicN``; its
global addresses are exactly the expected ones (no more, no less); the
default routes of both families are exactly one per NIC that should have
one, via the right gateway (never merged into one multipath route, which
NICs 0 and 4, both without DHCP, would be on networkd if they shared a
metric). Checked from the network's side: each address answers a ping from
the MAC of its NIC, and the DHCP leases are the ones the guest holds. Then,
for some stacks, a reinstall over the same disk from a snapshot of that
deployed guest (an image that already holds snf-image's configuration for
five other NICs) with two NICs -- the old NIC 1's MAC now on a network
tagged ``nfdhcpd`` (DHCPv4 + SLAAC + stateless DHCPv6), and a new MAC with
a static IPv4 address only -- must boot with only the new configuration:
no leftover NIC, address, route or file naming an old MAC.

The stacks: ifupdown (ext4-msdos), NetworkManager keyfiles (nm), netplan
rendered to systemd-networkd (networkd), systemd-networkd's own .network
files (systemd-networkd: no netplan, an image DHCP file for en*/eth*
beside ours) and cloud-init applying the product's ``network-config``
(cloudinit, with ConfigureNetwork excluded so that the seed's
network-config is what configures the NICs).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import guestboot, guestnet, guests, helpervm
from tests.guestnet import Segment
from tests.osenv import OsDefinition, create_env, install

pytestmark = pytest.mark.vm

GiB = 1 << 30
PASSWORD = "Mult1-NIC pass"
BOOT_TIMEOUT = 420
SETTLE_TIMEOUT = 150  # seconds for DHCP, SLAAC and DHCPv6 to finish on every NIC after login
CLOUD_INIT_READY = r"Cloud-init v\. \S+ finished"
METRIC_BASE = 100  # tasks/_network.py: NIC N's static default route has metric 100 + N

STATIC_SLAAC = Segment(
    "lan0",
    gateway4=ipaddress.IPv4Interface("10.20.0.1/24"),
    gateway6=ipaddress.IPv6Interface("2001:db8:20::1/64"),
    ipv6="slaac",
)
DHCP_SLAAC = Segment(
    "lan1",
    gateway4=ipaddress.IPv4Interface("10.20.1.1/24"),
    dhcp4=True,
    gateway6=ipaddress.IPv6Interface("2001:db8:21::1/64"),
    ipv6="slaac",
)
DHCPV6 = Segment("lan2", gateway6=ipaddress.IPv6Interface("2001:db8:22::1/64"), ipv6="dhcp")
DHCP_STATELESS = Segment(
    "lan3",
    gateway4=ipaddress.IPv4Interface("10.20.3.1/24"),
    dhcp4=True,
    gateway6=ipaddress.IPv6Interface("2001:db8:23::1/64"),
    ipv6="slaac_dhcp",
)
STATIC6 = Segment("lan4", gateway6=ipaddress.IPv6Interface("2001:db8:24::1/64"))
SLAAC = Segment("lan5", gateway6=ipaddress.IPv6Interface("2001:db8:25::1/64"), ipv6="slaac")
STATIC = Segment("lan6", gateway4=ipaddress.IPv4Interface("10.20.6.1/24"))
SEGMENTS = (STATIC_SLAAC, DHCP_SLAAC, DHCPV6, DHCP_STATELESS, STATIC6, SLAAC, STATIC)


@dataclass(frozen=True)
class Nic:
    """A Ganeti NIC of the test and what the guest must make of it."""

    mac: str
    segment: Segment
    ip: str | None = None
    tags: str = ""
    ipv4: str | None = None  # "static" | "dhcp"
    ipv6: str | None = None  # "slaac" | "slaac_dhcp" | "dhcp" | "static"

    def env(self, index: int) -> dict[str, str]:
        """The NIC_<index>_* variables Ganeti gives create for this NIC."""
        prefix = f"NIC_{index}_"
        net = prefix + "NETWORK_"
        s = self.segment
        env = {
            prefix + "MAC": self.mac,
            prefix + "MODE": "bridged",
            prefix + "LINK": s.name,
            prefix + "FRONTEND_TYPE": "paravirtual",
            net + "NAME": s.name,
        }
        if self.ip:
            env[prefix + "IP"] = self.ip
        if s.gateway4 is not None:
            env[net + "SUBNET"] = str(s.gateway4.network)
            env[net + "GATEWAY"] = str(s.gateway4.ip)
        if s.gateway6 is not None:
            env[net + "SUBNET6"] = str(s.gateway6.network)
            env[net + "GATEWAY6"] = str(s.gateway6.ip)
        if self.tags:
            env[net + "TAGS"] = self.tags
        return env


def macs(kind_index: int, *hosts: int) -> list[str]:
    return [f"52:54:00:6e:{kind_index:02x}:{host:02x}" for host in hosts]


# kind -> (index for its MACs, OS properties, whether a reinstall boot is part of the matrix)
KINDS = {
    "ext4-msdos": (1, {}, True),
    "nm": (2, {}, True),
    "networkd": (3, {}, False),
    "systemd-networkd": (5, {}, False),
    "cloudinit": (4, {"CLOUD_INIT": "yes", "EXCLUDE_TASK_ConfigureNetwork": "yes"}, False),
}


def first_nics(kind: str) -> list[Nic]:
    m0, m1, m2, m3, m4 = macs(KINDS[kind][0], 0, 1, 2, 4, 5)
    return [
        Nic(m0, STATIC_SLAAC, ip="10.20.0.77", ipv4="static", ipv6="slaac"),
        Nic(m1, DHCP_SLAAC, ip="10.20.1.77", tags="dhcp", ipv4="dhcp", ipv6="slaac"),
        Nic(m2, DHCPV6, tags="dhcpv6", ipv6="dhcp"),
        Nic(m3, STATIC6, ip="2001:db8:24::77", ipv6="static"),
        Nic(m4, SLAAC, ipv6="slaac"),
    ]


def reinstall_nics(kind: str) -> list[Nic]:
    _, m1, m3 = macs(KINDS[kind][0], 0, 1, 3)
    return [
        Nic(m1, DHCP_STATELESS, ip="10.20.3.77", tags="nfdhcpd", ipv4="dhcp", ipv6="slaac_dhcp"),
        Nic(m3, STATIC, ip="10.20.6.78", ipv4="static"),
    ]


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=timeout)


@pytest.fixture(scope="module")
def osdef(tmp_path_factory: pytest.TempPathFactory) -> OsDefinition:
    definition = install(tmp_path_factory.mktemp("network-boot") / "inst")
    definition.configure(HELPER_DIR=str(helpervm.ensure_helper()), HELPER_SOFT_TIMEOUT="400")
    return definition


@dataclass
class Deployed:
    """A deployed disk of ``kind`` and the NICs it was deployed with."""

    kind: str
    image: guests.GuestImage
    disk: Path
    nics: list[Nic]
    cloud_init: bool


_first: dict[str, Deployed] = {}


def create(osdef: OsDefinition, kind: str, disk: Path, image_name: str, nics: list[Nic], reinstall: bool) -> None:
    """``create`` (or a reinstall) of ``image_name`` from the OS definition's IMAGE_DIR onto ``disk``."""
    _, properties, _ = KINDS[kind]
    env = create_env(
        f"{kind.replace('-', '')}-net.snf.test",
        disk,
        OSP_IMG_ID=f"local://{image_name}",
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_IMG_PROPERTIES=json.dumps(properties),
        NIC_COUNT=str(len(nics)),
    )
    for index, nic in enumerate(nics):
        env.update(nic.env(index))
    if reinstall:
        env["INSTANCE_REINSTALL"] = "1"
    started = time.monotonic()
    result = osdef.run("create", env)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    print(f"\n[timing] {kind}: create{' (reinstall)' if reinstall else ''} took {time.monotonic() - started:.1f}s")


def first_deployment(kind: str, osdef: OsDefinition, workdir: Path) -> Deployed:
    """The five-NIC deployment of ``kind`` (once per module run)."""
    if kind in _first:
        return _first[kind]
    image = guests.guest_image(kind)
    link = osdef.image_dir / image.path.name
    if not link.exists():
        os.link(image.path, link)  # IMAGE_DIR refuses symlinks that lead out of it; a hard link is inside
    disk = workdir / f"{kind}.raw"
    with open(disk, "wb") as f:
        f.truncate(3 * GiB)
    nics = first_nics(kind)
    create(osdef, kind, disk, image.path.name, nics, reinstall=False)
    found = Deployed(kind, image, disk, nics, "CLOUD_INIT" in KINDS[kind][1])
    _first[kind] = found
    return found


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Observed:
    """The guest's network as ``ip -j`` shows it."""

    names: dict[str, str]  # MAC -> interface name (Ethernet links only)
    addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]  # name -> global addresses
    dynamic: dict[str, set[str]]  # name -> addresses flagged dynamic (leased or autoconfigured)
    routes4: list[tuple[str, str]]  # (gateway, device) of every IPv4 default route
    routes6: list[tuple[str, str]]


def observe(console: guestboot.Console) -> Observed:
    links = json.loads(console.run("ip -j link show"))
    addrs = json.loads(console.run("ip -j addr show"))
    routes4 = json.loads(console.run("ip -j -4 route show default") or "[]")
    routes6 = json.loads(console.run("ip -j -6 route show default") or "[]")
    names = {link["address"]: link["ifname"] for link in links if link.get("link_type") == "ether"}
    addresses: dict[str, list] = {}
    dynamic: dict[str, set[str]] = {}
    for entry in addrs:
        for info in entry.get("addr_info", []):
            if info.get("scope") != "global":
                continue
            address = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
            addresses.setdefault(entry["ifname"], []).append(address)
            if info.get("dynamic"):
                dynamic.setdefault(entry["ifname"], set()).add(str(address.ip))
    return Observed(
        names,
        addresses,
        dynamic,
        sorted((r.get("gateway", ""), r.get("dev", "")) for r in routes4),
        sorted((r.get("gateway", ""), r.get("dev", "")) for r in routes6),
    )


@dataclass
class Expected:
    addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]
    routes4: list[tuple[str, str]]
    routes6: list[tuple[str, str]]


def expected(nics: list[Nic], lab: guestnet.Lab) -> Expected | str:
    """What the guest must have, given what the servers handed out so far; a reason while they have not yet."""
    leases4 = lab.leases4()
    leases6 = lab.leases6()
    addresses: dict[str, list] = {}
    routes4: list[tuple[str, str]] = []
    routes6: list[tuple[str, str]] = []
    for index, nic in enumerate(nics):
        name = f"nic{index}"
        s = nic.segment
        mine: list = []
        if nic.ipv4 == "static":
            assert s.gateway4 is not None
            mine.append(ipaddress.IPv4Interface(f"{nic.ip}/{s.gateway4.network.prefixlen}"))
            routes4.append((str(s.gateway4.ip), name))
        elif nic.ipv4 == "dhcp":
            assert s.gateway4 is not None
            if nic.mac not in leases4:
                return f"no DHCPv4 lease for {nic.mac} yet"
            mine.append(ipaddress.IPv4Interface(f"{leases4[nic.mac]}/{s.gateway4.network.prefixlen}"))
            routes4.append((str(s.gateway4.ip), name))
        if nic.ipv6 in ("slaac", "slaac_dhcp"):
            assert s.gateway6 is not None
            mine.append(ipaddress.IPv6Interface(f"{guestnet.eui64(s.gateway6.network, nic.mac)}/64"))
        elif nic.ipv6 == "dhcp":
            assert s.gateway6 is not None
            low, high = s.dhcp6_range
            leased = [a for a in leases6 if low <= a <= high]
            if len(leased) != 1:
                return f"DHCPv6 leases in {low}-{high}: {leased}"
            mine.append(ipaddress.IPv6Interface(f"{leased[0]}/128"))
        if nic.ipv6 == "static":
            assert s.gateway6 is not None
            mine.append(ipaddress.IPv6Interface(f"{nic.ip}/{s.gateway6.network.prefixlen}"))
            routes6.append((str(s.gateway6.ip), name))
        elif nic.ipv6:
            routes6.append((str(lab.router_link_local(s.name)), name))
        addresses[name] = sorted(mine, key=str)
    return Expected(addresses, sorted(routes4), sorted(routes6))


def as_text(addresses: dict[str, list]) -> dict[str, list[str]]:
    return {name: sorted(map(str, found)) for name, found in addresses.items() if found}


def check_network(console: guestboot.Console, lab: guestnet.Lab, nics: list[Nic]) -> None:
    """The booted guest's NICs, addresses and default routes are exactly what ``nics`` ask for."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        seen = observe(console)
        want = expected(nics, lab)
        if isinstance(want, Expected) and (
            as_text(seen.addresses) == as_text(want.addresses)
            and seen.routes4 == want.routes4
            and seen.routes6 == want.routes6
        ):
            break
        if time.monotonic() > deadline:
            detail = console.run("ip addr show; ip -4 route; ip -6 route")
            raise AssertionError(
                f"the guest's network is not what the NICs ask for:\nexpected {want}\nobserved {seen}\n"
                f"{detail}\n--- dnsmasq ---\n{lab.log()[-6000:]}"
            )
        time.sleep(5)

    assert {mac: seen.names.get(mac) for mac in (n.mac for n in nics)} == {
        n.mac: f"nic{i}" for i, n in enumerate(nics)
    }, seen.names
    assert sorted(seen.names) == sorted(n.mac for n in nics), f"unexpected Ethernet links: {seen.names}"
    for index, nic in enumerate(nics):
        name = f"nic{index}"
        for address in seen.addresses.get(name, []):
            is_static = (nic.ipv4 if address.version == 4 else nic.ipv6) == "static"
            assert (str(address.ip) in seen.dynamic.get(name, set())) != is_static, (
                f"{name} {address}: static addresses must not be leased, leased ones must be dynamic"
            )
            assert lab.neighbour(address.ip) == nic.mac, f"{address.ip} does not answer from {nic.mac}"
    # static default routes carry the NIC's metric, so that two NICs' gateways never collide
    for index, nic in enumerate(nics):
        for family, mode in (("-4", nic.ipv4), ("-6", nic.ipv6)):
            if mode == "static":
                metric = console.run(f"ip -j {family} route show default dev nic{index}")
                assert [r.get("metric") for r in json.loads(metric)] == [METRIC_BASE + index], metric
    log = lab.log()
    if any(n.ipv6 == "slaac_dhcp" for n in nics):
        segment = next(n.segment.name for n in nics if n.ipv6 == "slaac_dhcp")
        assert re.search(rf"DHCPINFORMATION-REQUEST\({segment}\)", log), "no stateless DHCPv6 request:\n" + log
    if any(n.ipv6 == "dhcp" for n in nics):
        segment = next(n.segment.name for n in nics if n.ipv6 == "dhcp")
        assert re.search(rf"DHCPREPLY\({segment}\) \S*2001:db8", log), "no stateful DHCPv6 reply:\n" + log


def check_system(console: guestboot.Console, cloud_init: bool) -> None:
    """Every unit started (cloud-init's locale module may fail: the test guest has no locales)."""
    state = console.run("systemctl is-system-running --wait", timeout=240)
    failed = console.run("systemctl --failed --no-legend --plain")
    if cloud_init and state == "degraded" and failed.split()[:1] == ["cloud-config.service"]:
        modules = re.findall(r"Running module (\S+) .* failed", console.run("cat /var/log/cloud-init.log"))
        assert set(modules) == {"locale"}, modules
        return
    assert state == "running", f"{state}; failed units:\n{failed}"


def boot_and_check(found: Deployed, nics: list[Nic], tmp_path: Path) -> None:
    """Boot ``found.disk`` on the lab network with ``nics``; check the system and the network."""
    started = time.monotonic()
    times = guestboot.BootTimes()
    with guestnet.lab(SEGMENTS, tmp_path) as lab:
        taps = [lab.tap(nic.segment.name, nic.mac) for nic in nics]
        with guestboot.booted(
            found.disk,
            found.image.kernel_file,
            found.image.initrd_file,
            found.image.meta["kernel_cmdline"],
            nics[0].mac,
            PASSWORD,
            tmp_path / "console.log",
            boot_timeout=BOOT_TIMEOUT,
            times=times,
            ready=CLOUD_INIT_READY if found.cloud_init else None,
            nics=taps,
            prefix=lab.command_prefix,
        ) as console:
            check_system(console, found.cloud_init)
            check_network(console, lab, nics)
            stale_macs = sorted({n.mac for n in found.nics} - {n.mac for n in nics})
            if stale_macs:
                pattern = " ".join(f"-e {m}" for m in stale_macs)
                places = "/etc $(ls -d /run/systemd/network /run/NetworkManager 2>/dev/null)"
                rc, left = console.status(f"grep -rIil {pattern} {places}")
                assert rc == 1 and not left, f"configuration for NICs the instance no longer has:\n{left}"
    print(
        f"\n[timing] {found.kind}: {len(nics)} NICs, login after {times.shell:.1f}s, "
        f"checks done after {time.monotonic() - started:.1f}s"
    )


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_five_nics_booted(kind: str, osdef: OsDefinition, tmp_path_factory, tmp_path: Path) -> None:
    """Static v4 + SLAAC; DHCPv4 + SLAAC; DHCPv6; static v6; SLAAC: each on its MAC's NIC with its routes, no more."""
    found = first_deployment(kind, osdef, tmp_path_factory.mktemp(kind))
    boot_and_check(found, found.nics, tmp_path)


@pytest.mark.parametrize("kind", [k for k, (_, _, again) in KINDS.items() if again])
def test_reinstall_from_snapshot_booted(kind: str, osdef: OsDefinition, tmp_path_factory, tmp_path: Path) -> None:
    """Reinstalled over the same disk from a snapshot of the deployed guest with other NICs: only the new ones."""
    first = first_deployment(kind, osdef, tmp_path_factory.mktemp(kind))
    snapshot = f"snapshot-{kind}.img"
    run(["cp", "--sparse=always", str(first.disk), str(osdef.image_dir / snapshot)])
    try:
        nics = reinstall_nics(kind)
        create(osdef, kind, first.disk, snapshot, nics, reinstall=True)
    finally:
        (osdef.image_dir / snapshot).unlink()
    again = Deployed(kind, first.image, first.disk, first.nics, first.cloud_init)
    boot_and_check(again, nics, tmp_path)
