"""A private network for booted guests, with real DHCPv4, DHCPv6 and router advertisement servers on it.

A guest's network configuration is only proven when the guest gets its
addresses the way a cloud's network hands them out: DHCPv4 from a server,
IPv6 from router advertisements (SLAAC), with stateless DHCPv6 for the other
options, or from a stateful DHCPv6 server. :func:`lab` builds that in a
network namespace of its own, so nothing reaches the host's network: one
bridge per :class:`Segment` (a Ganeti network), the namespace's address on
it as the guests' gateway, one dnsmasq serving each segment what it asks
for, and one tap per guest NIC in its segment's bridge. qemu runs inside the
namespace (:attr:`Lab.command_prefix`) and opens the taps by name.

From the namespace the test sees what the servers did (dnsmasq's leases and
log) and what is on the wire: :meth:`Lab.neighbour` pings a guest address
and returns the MAC that answered, which proves the address is on the NIC
with that MAC, whatever the guest says about itself.

Everything is torn down on the way out: dnsmasq (by the pid this module
started) and the namespace with its bridges and taps.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import guestboot

IPV6_MODES = ("slaac", "slaac_dhcp", "dhcp")
DHCP4_RANGE = (100, 199)  # host numbers of a segment's DHCPv4 range
DHCP6_RANGE = (0x100, 0x1FF)  # host numbers of a segment's stateful DHCPv6 range
LEASE_TIME = "1h"


def run(argv: Sequence[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The one subprocess helper of this module: argument list, text, bounded."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass(frozen=True)
class Segment:
    """One guest link (a Ganeti network): a bridge with the gateway's addresses and the servers it runs.

    ``ipv6``: None (no router advertisements), ``slaac`` (advertise the
    prefix for autoconfiguration), ``slaac_dhcp`` (the same, plus stateless
    DHCPv6 for the other options) or ``dhcp`` (stateful DHCPv6: the
    advertisement sets the M flag and no autonomous prefix, addresses come
    from the DHCPv6 range).
    """

    name: str
    gateway4: ipaddress.IPv4Interface | None = None
    dhcp4: bool = False
    gateway6: ipaddress.IPv6Interface | None = None
    ipv6: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", self.name):  # room for the veth suffix
            raise ValueError(f"bad segment name {self.name!r}")
        if self.dhcp4 and self.gateway4 is None:
            raise ValueError(f"{self.name}: DHCPv4 needs gateway4")
        if self.ipv6 is not None and (self.ipv6 not in IPV6_MODES or self.gateway6 is None):
            raise ValueError(f"{self.name}: IPv6 mode {self.ipv6!r} needs one of {IPV6_MODES} and gateway6")

    @property
    def dhcp4_range(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        assert self.gateway4 is not None
        net = self.gateway4.network
        return net[DHCP4_RANGE[0]], net[DHCP4_RANGE[1]]

    @property
    def dhcp6_range(self) -> tuple[ipaddress.IPv6Address, ipaddress.IPv6Address]:
        assert self.gateway6 is not None
        net = self.gateway6.network
        return net[DHCP6_RANGE[0]], net[DHCP6_RANGE[1]]

    def dnsmasq_args(self) -> list[str]:
        """What dnsmasq serves on this segment."""
        args = []
        if self.dhcp4:
            first, last = self.dhcp4_range
            netmask = self.gateway4.netmask if self.gateway4 else None
            args.append(f"--dhcp-range={first},{last},{netmask},{LEASE_TIME}")
        if self.ipv6 == "slaac":
            args.append(f"--dhcp-range=::,constructor:{self.name},ra-only,64,{LEASE_TIME}")
        elif self.ipv6 == "slaac_dhcp":
            args.append(f"--dhcp-range=::,constructor:{self.name},ra-stateless,64,{LEASE_TIME}")
        elif self.ipv6 == "dhcp":
            first, last = (str(a).split("::", 1)[1] for a in self.dhcp6_range)
            args.append(f"--dhcp-range=::{first},::{last},constructor:{self.name},64,{LEASE_TIME}")
        return args


def eui64(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The SLAAC address of ``mac`` in /64 ``prefix`` (modified EUI-64, RFC 4291 appendix A)."""
    octets = bytearray(bytes.fromhex(mac.replace(":", "")))
    octets[0] ^= 0x02
    interface_id = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return prefix[int.from_bytes(interface_id, "big")]


@dataclass
class Lab:
    """A running lab: the namespace, its segments, the taps made so far, dnsmasq's files."""

    namespace: str
    workdir: Path
    segments: dict[str, Segment]
    taps: list[str] = field(default_factory=list)
    dnsmasq_pid: int | None = None

    @property
    def command_prefix(self) -> list[str]:
        """Prefix for a command that must run inside the namespace (qemu, to open the taps)."""
        return ["ip", "netns", "exec", self.namespace]

    def ns(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.command_prefix, *argv], timeout=timeout, check=check)

    def tap(self, segment: str, mac: str) -> guestboot.GuestNic:
        """A new tap in ``segment``'s bridge, for a guest NIC with ``mac``."""
        name = f"tap{len(self.taps)}"
        self.ns("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.ns("ip", "link", "set", name, "master", self.segments[segment].name, "up")
        self.taps.append(name)
        return guestboot.GuestNic(mac=mac, netdev=f"tap,ifname={name},script=no,downscript=no")

    def router_link_local(self, segment: str) -> ipaddress.IPv6Address:
        """The link-local address the segment's router advertisements come from (the guests' IPv6 gateway)."""
        out = self.ns("ip", "-6", "-o", "addr", "show", "dev", segment, "scope", "link").stdout
        match = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", out)
        if not match:
            raise AssertionError(f"{segment} has no link-local address:\n{out}")
        return ipaddress.IPv6Address(match.group(1))

    def leases4(self) -> dict[str, ipaddress.IPv4Address]:
        """dnsmasq's DHCPv4 leases: MAC -> address."""
        leases = {}
        for line in self._lease_lines():
            words = line.split()
            if len(words) >= 3 and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", words[1]):
                leases[words[1]] = ipaddress.IPv4Address(words[2])
        return leases

    def leases6(self) -> list[ipaddress.IPv6Address]:
        """dnsmasq's DHCPv6 leases (addresses; DHCPv6 identifies clients by DUID, not MAC)."""
        found = []
        for line in self._lease_lines():
            words = line.split()
            if len(words) >= 3 and ":" in words[2] and not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", words[1]):
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv6Address(words[2]))
        return found

    def _lease_lines(self) -> list[str]:
        path = self.workdir / "leases"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> str:
        """dnsmasq's log (every DHCP and RA exchange, with --log-dhcp)."""
        path = self.workdir / "dnsmasq.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def neighbour(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, tries: int = 3) -> str | None:
        """Ping ``address`` from the namespace; the MAC that answered (from the neighbour table), or None."""
        family = "-6" if address.version == 6 else "-4"
        for _ in range(tries):
            if self.ns("ping", family, "-c", "1", "-W", "2", str(address), check=False).returncode == 0:
                out = self.ns("ip", family, "neigh", "show", str(address)).stdout
                match = re.search(r"lladdr ([0-9a-f:]{17})", out)
                return match.group(1) if match else None
            time.sleep(1)
        return None


def _wait_link_local(lab: Lab, bridge: str, timeout: float = 10) -> None:
    """Until the bridge's link-local address has passed duplicate address detection (RAs are sent from it)."""
    deadline = time.monotonic() + timeout
    while True:
        out = lab.ns("ip", "-6", "-o", "addr", "show", "dev", bridge, "scope", "link").stdout
        if "fe80::" in out and "tentative" not in out:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{bridge}: no usable link-local address:\n{out}")
        time.sleep(0.2)


def _start_dnsmasq(lab: Lab) -> None:
    served = [s for s in lab.segments.values() if s.dhcp4 or s.ipv6]
    if not served:
        return
    argv = [
        "dnsmasq",
        f"--pid-file={lab.workdir / 'dnsmasq.pid'}",
        f"--dhcp-leasefile={lab.workdir / 'leases'}",
        f"--log-facility={lab.workdir / 'dnsmasq.log'}",
        "--log-dhcp",
        "--port=0",  # no DNS
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-dynamic",
        *(f"--interface={s.name}" for s in served),
    ]
    if any(s.ipv6 for s in served):
        argv.append("--enable-ra")
    for segment in served:
        argv += segment.dnsmasq_args()
    lab.ns(*argv)  # forks into the background once its sockets are bound
    pid_file = lab.workdir / "dnsmasq.pid"
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"dnsmasq wrote no pid file:\n{lab.log()}")
        time.sleep(0.1)
    lab.dnsmasq_pid = int(pid_file.read_text())


def _stop_dnsmasq(lab: Lab) -> None:
    if lab.dnsmasq_pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(lab.dnsmasq_pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(lab.dnsmasq_pid, 0)
            time.sleep(0.1)
        os.kill(lab.dnsmasq_pid, signal.SIGKILL)


@contextlib.contextmanager
def lab(segments: Sequence[Segment], workdir: Path) -> Iterator[Lab]:
    """The namespace with a bridge per segment and dnsmasq serving them; all removed on exit."""
    namespace = f"snf-lab-{os.getpid()}"
    run(["ip", "netns", "add", namespace])
    found = Lab(namespace, workdir, {s.name: s for s in segments})
    try:
        found.ns("ip", "link", "set", "lo", "up")
        # a router: advertisements carry a non-zero router lifetime, so guests take a default route from them
        found.ns("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for s in segments:
            found.ns("ip", "link", "add", s.name, "type", "bridge")
            if s.gateway4 is not None:
                found.ns("ip", "addr", "add", str(s.gateway4), "dev", s.name)
            if s.gateway6 is not None:
                found.ns("ip", "addr", "add", str(s.gateway6), "dev", s.name, "nodad")
            found.ns("ip", "link", "set", s.name, "up")
            # a veth port gives the bridge a carrier (and so its link-local address) before any guest is up
            found.ns("ip", "link", "add", f"{s.name}-p", "type", "veth", "peer", "name", f"{s.name}-q")
            found.ns("ip", "link", "set", f"{s.name}-p", "master", s.name, "up")
            found.ns("ip", "link", "set", f"{s.name}-q", "up")
        for s in segments:
            if s.ipv6:
                _wait_link_local(found, s.name)
        _start_dnsmasq(found)
        yield found
    finally:
        _stop_dnsmasq(found)
        run(["ip", "netns", "del", namespace], check=False)
