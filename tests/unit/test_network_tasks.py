"""ConfigureNetwork and InitializeDatasource on fake guest roots: files, modes, owners, backups, re-runs."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from helper.commands import TaskError
from helper.framework import Context
from snf_image.contract.rules import RulesNic, RulesSettings
from tasks import _cloud_init, configure_network, initialize_datasource
from tests import fakeguest

MAC0 = "aa:00:00:00:00:01"
MAC1 = "aa:00:00:00:00:02"
SETTINGS = RulesSettings(
    dhcp_tags=("dhcp",),
    stateful_dhcpv6_tags=("dhcpv6",),
    stateless_dhcpv6_tags=("nfdhcpd",),
    default_nic_config="dhcp",
    cloud_init_debug=False,
)
NICS = (
    RulesNic(
        index=0,
        mac=MAC0,
        ip="192.0.2.10",
        subnet="192.0.2.0/24",
        gateway="192.0.2.1",
        subnet6="2001:db8::/64",
        gateway6="2001:db8::1",
        tags=(),
    ),
    RulesNic(index=1, mac=MAC1, ip="10.0.0.5", subnet="10.0.0.0/24", tags=("dhcp",)),
)


def make_ctx(
    root: Path, nics: tuple[RulesNic, ...] | None = None, props: dict[str, str] | None = None, **rules: Any
) -> Context:
    """The shared fake Context with this module's NICs and settings."""
    defaults = {"instance_name": "vm1.example.org", "nics": NICS if nics is None else nics, "settings": SETTINGS}
    return fakeguest.make_ctx(root, {**defaults, **rules}, properties=props)


def put(root: Path, path: str, text: str = "", mode: int = 0o644) -> Path:
    host = root / path.lstrip("/")
    host.parent.mkdir(parents=True, exist_ok=True)
    host.write_text(text)
    host.chmod(mode)
    return host


def enable(root: Path, unit: str) -> None:
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).symlink_to(f"/lib/systemd/system/{unit}")  # dangling in the fake root: lexists is enough


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def mode(root: Path, path: str) -> int:
    return stat.S_IMODE((root / path.lstrip("/")).stat().st_mode)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def backups(root: Path) -> list[str]:
    base = root / "var/backups/snf-image"
    return (
        sorted(str(p.relative_to(base)).split("/", 1)[1] for p in base.rglob("*") if p.is_file())
        if base.exists()
        else []
    )


# --- Debian ifupdown ---------------------------------------------------------------------

DEBIAN_INTERFACES = """\
# interfaces(5) file used by ifup(8) and ifdown(8)
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug ens3
iface ens3 inet dhcp
"""


def debian(root: Path) -> None:
    put(root, "/etc/debian_version", "12.5\n")
    put(root, "/etc/network/interfaces", DEBIAN_INTERFACES)
    put(root, "/etc/network/interfaces.d/50-cloud-init", "auto eth0\niface eth0 inet dhcp\n")
    put(root, "/etc/network/interfaces.d/br0", "auto br0\niface br0 inet manual\n")
    put(root, "/usr/sbin/ifup", "#!/bin/sh\n", 0o755)
    (root / "sbin").symlink_to("usr/sbin")


def test_debian_ifupdown(tmp_path: Path) -> None:
    debian(tmp_path)
    ctx = make_ctx(tmp_path)
    configure_network.run(ctx)
    text = read(tmp_path, "/etc/network/interfaces")
    assert text.startswith("# interfaces(5) file used by ifup(8) and ifdown(8)\nsource /etc/network/interfaces.d/*\n")
    assert "ens3" not in text and text.count("iface lo inet loopback") == 1
    assert "iface nic0 inet static\n    address 192.0.2.10\n    netmask 255.255.255.0\n    gateway 192.0.2.1\n" in text
    assert "iface nic0 inet6 auto\n    privext 0\n" in text
    assert "iface nic1 inet dhcp\n" in text
    assert read(tmp_path, "/etc/network/interfaces.d/50-cloud-init") == ""
    assert read(tmp_path, "/etc/network/interfaces.d/br0") == "auto br0\niface br0 inet manual\n"
    rules = read(tmp_path, "/etc/udev/rules.d/70-snf-image-net.rules")
    assert f'ATTR{{address}}=="{MAC0}", ATTR{{type}}=="1", NAME="nic0"' in rules
    assert f'ATTR{{address}}=="{MAC1}", ATTR{{type}}=="1", NAME="nic1"' in rules
    # backups outside the sourced directory, content intact
    assert backups(tmp_path) == ["etc/network/interfaces", "etc/network/interfaces.d/50-cloud-init"]
    assert not [n for n in os.listdir(tmp_path / "etc/network/interfaces.d") if n not in ("50-cloud-init", "br0")]
    assert not (tmp_path / "etc/cloud").exists()
    assert ctx.reporter.warnings == []  # type: ignore[attr-defined]

    before = snapshot(tmp_path)
    configure_network.run(make_ctx(tmp_path))
    assert snapshot(tmp_path) == before


def test_ifupdown_needs_ifup(tmp_path: Path) -> None:
    put(tmp_path, "/etc/network/interfaces", DEBIAN_INTERFACES)
    ctx = make_ctx(tmp_path)
    configure_network.run(ctx)
    assert read(tmp_path, "/etc/network/interfaces") == DEBIAN_INTERFACES
    assert ctx.reporter.warnings == ["Don't know how to configure the network for this OS"]  # type: ignore[attr-defined]


# --- NetworkManager -----------------------------------------------------------------------


def nm_layout(root: Path) -> None:
    put(root, "/etc/redhat-release", "Rocky Linux release 9.3\n")
    put(root, "/etc/sysconfig/network-scripts/readme-ifcfg-rh.txt", "x\n")
    enable(root, "NetworkManager.service")
    put(
        root,
        "/etc/NetworkManager/system-connections/old.nmconnection",
        f"[connection]\nid=old\n[ethernet]\nmac-address={MAC0.upper()}\n",
        0o600,
    )
    put(root, "/etc/NetworkManager/system-connections/wifi.nmconnection", "[connection]\nid=wifi\n", 0o600)


def test_networkmanager(tmp_path: Path) -> None:
    nm_layout(tmp_path)
    configure_network.run(make_ctx(tmp_path))
    conns = tmp_path / "etc/NetworkManager/system-connections"
    assert sorted(os.listdir(conns)) == [
        "snf-image-nic0.nmconnection",
        "snf-image-nic1.nmconnection",
        "wifi.nmconnection",
    ]
    for name in ("snf-image-nic0.nmconnection", "snf-image-nic1.nmconnection"):
        st = (conns / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    nic0 = (conns / "snf-image-nic0.nmconnection").read_text()
    assert "mac-address=AA:00:00:00:00:01\n" in nic0 and "address1=192.0.2.10/24,192.0.2.1\n" in nic0
    assert "[ipv6]\naddr-gen-mode=eui64\nip6-privacy=0\nmethod=auto\n" in nic0
    assert backups(tmp_path) == ["etc/NetworkManager/system-connections/old.nmconnection"]
    assert not (tmp_path / "etc/sysconfig/network-scripts/ifcfg-nic0").exists()

    before = snapshot(tmp_path)
    configure_network.run(make_ctx(tmp_path))
    assert snapshot(tmp_path) == before
    # fewer NICs on a re-run: our stale profile goes
    configure_network.run(make_ctx(tmp_path, nics=NICS[:1]))
    assert not (conns / "snf-image-nic1.nmconnection").exists()


def test_nm_networking_property_forces_keyfiles(tmp_path: Path) -> None:
    debian(tmp_path)
    configure_network.run(make_ctx(tmp_path, props={"NM_NETWORKING": "yes"}))
    assert (tmp_path / "etc/NetworkManager/system-connections/snf-image-nic0.nmconnection").is_file()
    assert read(tmp_path, "/etc/network/interfaces") == DEBIAN_INTERFACES


# --- netplan (+ networkd) and networkd alone --------------------------------------------------------


def test_netplan_wins_over_networkd(tmp_path: Path) -> None:
    put(tmp_path, "/etc/debian_version", "bookworm/sid\n")
    put(tmp_path, "/usr/sbin/netplan", "", 0o755)
    put(tmp_path, "/etc/netplan/50-cloud-init.yaml", "network:\n  version: 2\n  ethernets:\n    ens3: {dhcp4: true}\n")
    enable(tmp_path, "systemd-networkd.service")
    put(tmp_path, "/etc/cloud/cloud.cfg.d/05_logging.cfg", "")
    configure_network.run(make_ctx(tmp_path))
    path = "/etc/netplan/60-snf-image.yaml"
    assert mode(tmp_path, path) == 0o600
    data = yaml.safe_load(read(tmp_path, path))
    assert set(data["network"]["ethernets"]) == {"nic0", "nic1"}
    nic0 = data["network"]["ethernets"]["nic0"]
    assert nic0["match"] == {"macaddress": MAC0} and nic0["set-name"] == "nic0"
    assert nic0["addresses"] == ["192.0.2.10/24"] and nic0["routes"][0]["via"] == "192.0.2.1"
    # the image's entry for its old NIC name would claim nic0 through its altname ens3: removed, backed up
    stock = yaml.safe_load(read(tmp_path, "/etc/netplan/50-cloud-init.yaml"))
    assert stock == {"network": {"version": 2}}
    assert backups(tmp_path) == ["etc/netplan/50-cloud-init.yaml"]
    # nic0 takes router advertisements: their routes get its metric through a drop-in on netplan's file
    dropins = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "etc/systemd/network").rglob("*.conf"))
    assert dropins == ["etc/systemd/network/10-netplan-nic0.network.d/60-snf-image.conf"]
    assert read(tmp_path, f"/{dropins[0]}").splitlines()[1:] == ["[IPv6AcceptRA]", "RouteMetric=100"]
    # cloud-init is in the image: it must not regenerate the network config
    cfg = yaml.safe_load(read(tmp_path, "/etc/cloud/cloud.cfg.d/98_snf-image-ConfigureNetwork.cfg"))
    assert cfg == {"network": {"config": "disabled"}}


def test_netplan_drop_ins_follow_the_nics(tmp_path: Path) -> None:
    """A redeployment whose NIC has no IPv6 any more loses its drop-in; the image's own drop-ins stay."""
    put(tmp_path, "/usr/sbin/netplan", "", 0o755)
    put(tmp_path, "/etc/netplan/50-image.yaml", "network: {version: 2}\n")
    image_dropin = put(tmp_path, "/etc/systemd/network/10-netplan-nic0.network.d/mtu.conf", "[Link]\nMTUBytes=9000\n")
    configure_network.run(make_ctx(tmp_path))
    ours = tmp_path / "etc/systemd/network/10-netplan-nic0.network.d/60-snf-image.conf"
    assert ours.is_file()
    configure_network.run(make_ctx(tmp_path, nics=(dataclasses.replace(NICS[0], subnet6=None, gateway6=None),)))
    assert not ours.exists() and image_dropin.is_file()


def test_netplan_keeps_the_image_entries_for_other_devices(tmp_path: Path) -> None:
    put(tmp_path, "/usr/sbin/netplan", "", 0o755)
    stock = (
        "# the image's own\nnetwork:\n  version: 2\n  renderer: networkd\n  ethernets:\n"
        "    eth0: {dhcp4: true}\n    all-en:\n      match: {name: 'en*'}\n      dhcp4: true\n"
        f"    by-mac:\n      match: {{macaddress: '{MAC1.upper()}'}}\n      dhcp4: true\n"
        "    storage:\n      match: {driver: mlx5_core}\n      dhcp4: true\n"
        "  bridges:\n    br0: {interfaces: [storage]}\n"
    )
    put(tmp_path, "/etc/netplan/50-image.yaml", stock, 0o600)
    put(tmp_path, "/etc/netplan/notes.txt", "not netplan\n")
    configure_network.run(make_ctx(tmp_path))
    text = read(tmp_path, "/etc/netplan/50-image.yaml")
    assert yaml.safe_load(text) == {
        "network": {
            "version": 2,
            "renderer": "networkd",
            "ethernets": {"storage": {"match": {"driver": "mlx5_core"}, "dhcp4": True}},
            "bridges": {"br0": {"interfaces": ["storage"]}},
        }
    }
    assert mode(tmp_path, "/etc/netplan/50-image.yaml") == 0o600
    before = snapshot(tmp_path)
    configure_network.run(make_ctx(tmp_path))
    assert snapshot(tmp_path) == before


def test_networkd(tmp_path: Path) -> None:
    enable(tmp_path, "systemd-networkd.service")
    put(tmp_path, "/etc/systemd/network/99-dhcp.network", "[Match]\nName=en*\n[Network]\nDHCP=yes\n")
    configure_network.run(make_ctx(tmp_path))
    net = tmp_path / "etc/systemd/network"
    assert sorted(os.listdir(net)) == ["10-snf-image-nic0.network", "10-snf-image-nic1.network", "99-dhcp.network"]
    text = (net / "10-snf-image-nic0.network").read_text()
    assert f"[Match]\nMACAddress={MAC0}\n" in text and "[Route]\nGateway=192.0.2.1\nMetric=100\n" in text
    assert "DHCP=ipv4" in (net / "10-snf-image-nic1.network").read_text()
    assert mode(tmp_path, "/etc/systemd/network/10-snf-image-nic0.network") == 0o644


# --- Red Hat ifcfg -------------------------------------------------------------------------------


def test_redhat_ifcfg(tmp_path: Path) -> None:
    put(tmp_path, "/etc/redhat-release", "CentOS Linux release 7.9.2009 (Core)\n")
    put(tmp_path, "/etc/sysconfig/network", "NETWORKING=yes\nHOSTNAME=template\nGATEWAY=172.16.0.1\n")
    scripts = "/etc/sysconfig/network-scripts"
    put(tmp_path, f"{scripts}/ifcfg-eth0", "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n")
    put(tmp_path, f"{scripts}/ifcfg-lo", "DEVICE=lo\n")
    put(tmp_path, f"{scripts}/ifcfg-br0", "DEVICE=br0\nTYPE=Bridge\n")
    put(tmp_path, f"{scripts}/ifup-eth", "#!/bin/sh\n", 0o755)
    configure_network.run(make_ctx(tmp_path))
    names = sorted(os.listdir(tmp_path / scripts.lstrip("/")))
    assert names == ["ifcfg-br0", "ifcfg-lo", "ifcfg-nic0", "ifcfg-nic1", "ifup-eth"]
    nic0 = read(tmp_path, f"{scripts}/ifcfg-nic0")
    assert f"HWADDR={MAC0}\n" in nic0 and "IPADDR=192.0.2.10\n" in nic0 and "GATEWAY=192.0.2.1\n" in nic0
    assert "IPV6_FAILURE_FATAL=no\n" in read(tmp_path, f"{scripts}/ifcfg-nic1")
    network = read(tmp_path, "/etc/sysconfig/network")
    assert "HOSTNAME=template\n" in network and "GATEWAY" not in network
    assert network.count("NETWORKING=yes") == 1 and "NETWORKING_IPV6=yes" in network
    assert backups(tmp_path) == ["etc/sysconfig/network", "etc/sysconfig/network-scripts/ifcfg-eth0"]
    before = snapshot(tmp_path)
    configure_network.run(make_ctx(tmp_path))
    assert snapshot(tmp_path) == before


def sourced(path: Path) -> dict[str, str]:
    """The variables an ifcfg file sets when sourced by bash, which is how initscripts' ifup reads it."""
    out = subprocess.run(
        ["env", "-i", "bash", "-c", 'set -a; . "$1"; env -0', "bash", str(path)],
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout.decode()
    ignore = {"PWD", "SHLVL", "_"}
    return dict(item.split("=", 1) for item in out.split("\0") if item and item.split("=", 1)[0] not in ignore)


def test_redhat_ifcfg_every_mode_as_initscripts_and_networkmanager_read_it(tmp_path: Path) -> None:
    """Each mode's ifcfg file, sourced by bash as initscripts does, sets what RHEL's readers act on.

    The keys and values are the ones initscripts' doc/sysconfig.txt and
    NetworkManager's ifcfg-rh plugin define: BOOTPROTO, IPADDR/PREFIX,
    GATEWAY/METRIC, IPV6INIT, IPV6_AUTOCONF (SLAAC), DHCPV6C (+ ``-S`` for
    stateless), IPV6ADDR, IPV6_DEFAULTGW (with %DEVICE); bash's view equals
    the plain KEY=value reading NetworkManager's svGetValue does.
    """
    put(tmp_path, "/etc/redhat-release", "Rocky Linux release 9.3 (Blue Onyx)\n")
    scripts = "/etc/sysconfig/network-scripts"
    put(tmp_path, f"{scripts}/ifcfg-eth0", "DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n")
    macs = [f"aa:00:00:00:01:0{i}" for i in range(5)]
    nics = (
        RulesNic(index=0, mac=macs[0], ip="192.0.2.10", subnet="192.0.2.0/24", gateway="192.0.2.1", tags=()),
        RulesNic(index=1, mac=macs[1], ip="10.0.1.5", subnet="10.0.1.0/24", subnet6="2001:db8:1::/64", tags=("dhcp",)),
        RulesNic(index=2, mac=macs[2], subnet6="2001:db8:2::/64", gateway6="2001:db8:2::1", tags=("dhcpv6",)),
        RulesNic(
            index=3, mac=macs[3], ip="2001:db8:3::5", subnet6="2001:db8:3::/64", gateway6="2001:db8:3::1", tags=()
        ),
        RulesNic(
            index=4,
            mac=macs[4],
            ip="10.0.4.5",
            subnet="10.0.4.0/24",
            subnet6="2001:db8:4::/64",
            tags=("dhcp", "nfdhcpd"),
        ),
    )
    configure_network.run(make_ctx(tmp_path, nics=nics))
    common = {"TYPE": "Ethernet", "ONBOOT": "yes", "NM_CONTROLLED": "yes", "IPV6_FAILURE_FATAL": "no"}
    no_ipv4 = {"BOOTPROTO": "none", "IPV4_FAILURE_FATAL": "no"}
    slaac = {"IPV6INIT": "yes", "IPV6_AUTOCONF": "yes", "IPV6_PRIVACY": "no"}
    meanings = [
        {
            "BOOTPROTO": "none",
            "IPADDR": "192.0.2.10",
            "PREFIX": "24",
            "NETMASK": "255.255.255.0",
            "GATEWAY": "192.0.2.1",
            "METRIC": "100",
            "IPV4_ROUTE_METRIC": "100",
            "IPV6INIT": "no",
        },
        {"BOOTPROTO": "dhcp", **slaac},
        {**no_ipv4, "IPV6INIT": "yes", "IPV6_AUTOCONF": "no", "DHCPV6C": "yes"},
        {
            **no_ipv4,
            "IPV6INIT": "yes",
            "IPV6_AUTOCONF": "no",
            "IPV6ADDR": "2001:db8:3::5/64",
            "IPV6_DEFAULTGW": "2001:db8:3::1%nic3",
            "IPV6_ROUTE_METRIC": "103",
        },
        {"BOOTPROTO": "dhcp", **slaac, "DHCPV6C": "yes", "DHCPV6C_OPTIONS": "-S"},
    ]
    assert sorted(os.listdir(tmp_path / scripts.lstrip("/"))) == [f"ifcfg-nic{i}" for i in range(5)]
    for index, meaning in enumerate(meanings):
        path = tmp_path / scripts.lstrip("/") / f"ifcfg-nic{index}"
        identity = {"DEVICE": f"nic{index}", "NAME": f"nic{index}", "HWADDR": macs[index]}
        assert sourced(path) == {**identity, **common, **meaning}, f"ifcfg-nic{index}"
        assert configure_network.ifcfg_values(path.read_text()) == sourced(path)
    assert "NETWORKING_IPV6=yes" in read(tmp_path, "/etc/sysconfig/network")


# --- hostile images --------------------------------------------------------------------------------------


def test_symlinked_target_is_replaced_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    put(root, "/usr/sbin/netplan", "", 0o755)
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/netplan/60-snf-image.yaml").symlink_to(outside)
    configure_network.run(make_ctx(root))
    assert outside.read_text() == "precious\n"
    assert not (root / "etc/netplan/60-snf-image.yaml").is_symlink()


def test_a_symlinked_file_is_backed_up_as_the_link_not_what_it_points_at(tmp_path: Path) -> None:
    root = tmp_path / "root"
    debian(root)
    put(root, "/etc/shadow", "root:$6$secret:19000::::::\n", 0o640)
    (root / "etc/network/interfaces").unlink()
    (root / "etc/network/interfaces").symlink_to("/etc/shadow")
    configure_network.run(make_ctx(root))
    (saved,) = (root / "var/backups/snf-image").glob("*/etc/network/interfaces")
    assert saved.is_symlink() and os.readlink(saved) == "/etc/shadow"
    assert read(root, "/etc/shadow") == "root:$6$secret:19000::::::\n"
    assert not (root / "etc/network/interfaces").is_symlink()


def test_symlinked_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "/usr/sbin/netplan", "", 0o755)
    (root / "etc/netplan").mkdir(parents=True)
    (root / "etc/udev").mkdir(parents=True)
    (root / "etc/udev/rules.d").symlink_to(tmp_path)  # absolute: it would be resolved inside the root
    (root / tmp_path.relative_to("/")).mkdir(parents=True)
    with pytest.raises(TaskError, match=r"/etc/udev/rules\.d is a symbolic link in the image"):
        configure_network.run(make_ctx(root))
    assert not (tmp_path / "70-snf-image-net.rules").exists()
    assert not (root / tmp_path.relative_to("/") / "70-snf-image-net.rules").exists()


def test_garbage_nic_fails_before_writing(tmp_path: Path) -> None:
    debian(tmp_path)
    bad = (RulesNic(index=0, mac=MAC0, ip="192.0.2.10", subnet="192.0.2.0/33", tags=()),)
    with pytest.raises(TaskError, match="NIC 0: invalid subnet"):
        configure_network.run(make_ctx(tmp_path, nics=bad))
    assert read(tmp_path, "/etc/network/interfaces") == DEBIAN_INTERFACES


def test_single_nic_default_warns(tmp_path: Path) -> None:
    debian(tmp_path)
    ctx = make_ctx(tmp_path, nics=(RulesNic(index=0, mac=MAC0, tags=()),))
    configure_network.run(ctx)
    assert "iface nic0 inet dhcp" in read(tmp_path, "/etc/network/interfaces")
    assert ctx.reporter.warnings == [  # type: ignore[attr-defined]
        f"No network information for the only NIC (nic0, {MAC0}); applying DEFAULT_NIC_CONFIG=dhcp"
    ]


# --- cloud-init ---------------------------------------------------------------------------------------------


def cloud_layout(root: Path) -> None:
    put(root, "/etc/SuSE-release", "openSUSE\n")  # no native format we know
    (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)


def test_initialize_datasource_and_unknown_network(tmp_path: Path) -> None:
    cloud_layout(tmp_path)
    userdata = b"#cloud-config\nruncmd: [[touch, /x]]\n\xff\x00binary"
    ctx = make_ctx(tmp_path, props={"CLOUD_INIT": "yes"}, cloud_userdata=base64.b64encode(userdata).decode())
    initialize_datasource.run(ctx)
    configure_network.run(ctx)

    cfg = yaml.safe_load(read(tmp_path, "/etc/cloud/cloud.cfg.d/98_snf-image.cfg"))
    assert cfg == {"datasource_list": ["NoCloud"]}
    seed = tmp_path / "var/lib/cloud/seed/nocloud-net"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o700
    meta = yaml.safe_load((seed / "meta-data").read_text())
    assert meta["instance-id"].startswith("vm1.example.org-")
    assert (seed / "user-data").read_bytes() == userdata
    for name in ("meta-data", "user-data", "network-config"):
        st = (seed / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    net = yaml.safe_load((seed / "network-config").read_text())
    assert net["version"] == 1
    nic0, nic1 = net["config"]
    assert nic0 == {
        "type": "physical",
        "name": "nic0",
        "mac_address": MAC0,
        "subnets": [
            {"type": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1", "metric": 100},
            {"type": "ipv6_slaac"},
        ],
    }
    assert nic1["subnets"] == [{"type": "dhcp4", "metric": 101}]
    script = tmp_path / "var/lib/cloud/scripts/per-once/snf-image-clear-user-data.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    assert ": > /var/lib/cloud/seed/nocloud-net/user-data" in script.read_text()
    # no native format: network left to cloud-init, not disabled
    assert not (tmp_path / "etc/cloud/cloud.cfg.d/98_snf-image-ConfigureNetwork.cfg").exists()
    assert ctx.reporter.warnings == []  # type: ignore[attr-defined]


def test_initialize_datasource_debug_and_no_userdata(tmp_path: Path) -> None:
    cloud_layout(tmp_path)
    debug = dataclasses.replace(SETTINGS, cloud_init_debug=True)
    ctx = make_ctx(tmp_path, props={"CLOUD_INIT": "yes"}, settings=debug)
    initialize_datasource.run(ctx)
    assert ctx.reporter.warnings == ["No cloud user-data provided"]  # type: ignore[attr-defined]
    assert read(tmp_path, "/var/lib/cloud/seed/nocloud-net/user-data") == ""
    cfg = yaml.safe_load(read(tmp_path, "/etc/cloud/cloud.cfg.d/98_snf-image.cfg"))
    assert "[handler_cf]" in cfg["logcfg"] and (tmp_path / "var/log/snf-image").is_dir()
    assert mode(tmp_path, "/var/lib/cloud/scripts/per-once/snf-image-clear-user-data.sh") == 0o600


def test_initialize_datasource_needs_cloud_init_and_flag(tmp_path: Path) -> None:
    initialize_datasource.run(make_ctx(tmp_path))  # no CLOUD_INIT: nothing
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TaskError, match="no cloud-init configuration directory"):
        initialize_datasource.run(make_ctx(tmp_path, props={"CLOUD_INIT": "yes"}))
    cloud_layout(tmp_path)
    with pytest.raises(TaskError, match="cloud_userdata is not valid base64"):
        initialize_datasource.run(make_ctx(tmp_path, props={"CLOUD_INIT": "yes"}, cloud_userdata="@@@"))


def test_native_network_under_cloud_init_disables_cloud_init_network(tmp_path: Path) -> None:
    debian(tmp_path)
    (tmp_path / "etc/cloud/cloud.cfg.d").mkdir(parents=True)
    ctx = make_ctx(tmp_path, props={"CLOUD_INIT": "yes"})
    initialize_datasource.run(ctx)
    configure_network.run(ctx)
    assert "iface nic0 inet static" in read(tmp_path, "/etc/network/interfaces")
    cfg = yaml.safe_load(read(tmp_path, "/etc/cloud/cloud.cfg.d/98_snf-image-ConfigureNetwork.cfg"))
    assert cfg == {"network": {"config": "disabled"}}


def test_hooks(tmp_path: Path) -> None:
    cloud_layout(tmp_path)
    put(tmp_path, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    put(tmp_path, "/etc/group", "root:x:0:\nalice:x:1000:\n")
    ctx = make_ctx(tmp_path, props={"CLOUD_INIT": "yes"})
    initialize_datasource.run(ctx)
    hashed = "$6$saltsalt$" + "x" * 86
    _cloud_init.set_hostname(ctx, "vm1.example.org")
    creds = SimpleNamespace(users=["root", "alice"], hashed=hashed, keys=["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"])
    _cloud_init.change_password(ctx, creds)
    _cloud_init.change_password(ctx, creds)  # a re-run adds no duplicate
    _cloud_init.add_swap(ctx, 512)
    _cloud_init.delete_ssh_keys(ctx)
    files = [SimpleNamespace(path="/etc/motd", contents=b"hi\x00", owner="1000", group="", mode=0o440)]
    _cloud_init.inject_files(ctx, files)

    seed = tmp_path / "var/lib/cloud/seed/nocloud-net"
    meta = yaml.safe_load((seed / "meta-data").read_text())
    assert meta["local-hostname"] == "vm1.example.org"
    assert meta["public-keys"] == ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]
    assert "instance-id" in meta

    d = "/etc/cloud/cloud.cfg.d"
    pw = f"{d}/98_snf-image-ChangePassword.cfg"
    assert yaml.safe_load(read(tmp_path, pw)) == {
        "ssh_pwauth": True,
        "chpasswd": {"expire": False, "list": [f"root:{hashed}", f"alice:{hashed}"]},
    }
    assert mode(tmp_path, pw) == 0o600
    rm = read(tmp_path, "/var/lib/cloud/scripts/per-once/snf-image-remove-ChangePassword.sh")
    assert f"rm -f -- {pw}\n" in rm
    assert yaml.safe_load(read(tmp_path, f"{d}/98_snf-image-AddSwap.cfg")) == {
        "swap": {"filename": "/swap.img", "size": 512 * 2**20, "maxsize": 512 * 2**20}
    }
    assert yaml.safe_load(read(tmp_path, f"{d}/98_snf-image-DeleteSSHKeys.cfg")) == {"ssh_deletekeys": True}
    wf = yaml.safe_load(read(tmp_path, f"{d}/98_snf-image-EnforcePersonality.cfg"))
    assert wf == {
        "write_files": [
            {
                "path": "/etc/motd",
                "content": base64.b64encode(b"hi\x00").decode(),
                "encoding": "b64",
                "owner": "alice:root",
                "permissions": "0440",
            }
        ]
    }
    assert mode(tmp_path, f"{d}/98_snf-image-EnforcePersonality.cfg") == 0o600


def test_password_hash_cloud_init_cannot_read(tmp_path: Path) -> None:
    cloud_layout(tmp_path)
    ctx = make_ctx(tmp_path, props={"CLOUD_INIT": "yes"})
    with pytest.raises(TaskError, match="PASSWD_HASHING_METHOD=sha512"):
        _cloud_init.change_password(ctx, SimpleNamespace(users=["root"], hashed="$sha1$1$abc$def", keys=[]))


def test_yaml_is_dumped_safely() -> None:
    tricky = {"list": ["root:pa:ss\nword: [x]", "user:#not a comment", "no"], "key: evil": "- item"}
    assert yaml.safe_load(_cloud_init.dump(tricky)) == tricky
