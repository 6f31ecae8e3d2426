"""BSD branches of the tasks on fake FreeBSD, NetBSD and OpenBSD roots, and the pure editors of tasks/_bsd.py."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from passlib import hash as passlib_hash

from helper.commands import TaskError
from snf_image.contract.rules import PersonalityFile, RulesNic, RulesSettings
from tasks import (
    _bsd,
    assign_hostname,
    change_password,
    configure_network,
    delete_ssh_keys,
    enforce_personality,
    filesystem_resize_mounted,
    mount_image,
)
from tasks._nics import NicPlan
from tests.fakeguest import host_keys, make_ctx, make_guest, warnings

MASTER_PASSWD = """# $FreeBSD$
#
root:$6$old$oldhash:0:0::0:0:Charlie &:/root:/bin/sh
toor:*:0:0::0:0:Bourne-again Superuser:/root:
daemon:*:1:1::0:0:Owner of many system processes:/root:/usr/sbin/nologin
alice:$6$old$alice:1001:1001:staff:1700000000:0:Alice:/home/alice:/bin/sh
"""
PASSWD = """root:*:0:0:Charlie &:/root:/bin/sh
daemon:*:1:1:Owner of many system processes:/root:/usr/sbin/nologin
alice:*:1001:1001:Alice:/home/alice:/bin/sh
"""
GROUP = "wheel:*:0:root\ndaemon:*:1:\nalice:*:1001:\n"


def bsd_tree(family: str) -> dict[str, str]:
    tree = {
        "etc/master.passwd": MASTER_PASSWD,
        "etc/passwd": PASSWD,
        "etc/group": GROUP,
        "etc/spwd.db": "old db",
        "etc/pwd.db": "old db",
        "etc/ssh/sshd_config": "#HostKey /etc/ssh/ssh_host_rsa_key\nHostKey /etc/ssh/extra_key\n",
        "etc/ssh/ssh_host_rsa_key": "k",
        "etc/ssh/ssh_host_rsa_key.pub": "k",
        "etc/ssh/ssh_host_ed25519_key": "k",
        "etc/ssh/extra_key": "k",
        "etc/ssh/moduli": "keep",
        "home/alice/.profile": "",
    }
    if family == "freebsd":
        tree["etc/rc.conf"] = (
            'hostname="freebsd-image"\nifconfig_vtnet0="DHCP"\n'
            'ifconfig_em0_ipv6="inet6 accept_rtadv"\nsshd_enable="YES"\n'
        )
        tree["etc/freebsd-update.conf"] = ""
    elif family == "netbsd":
        tree["etc/rc.conf"] = "rc_configured=YES\nhostname=netbsd-image\n"
        tree["etc/myname"] = "netbsd-image\n"
        tree["etc/ifconfig.vioif0"] = "up\ninet 10.9.9.9 netmask 255.0.0.0\n"
        tree["etc/rc.local"] = "#!/bin/sh\necho the image's own\n"
    else:
        tree["etc/myname"] = "openbsd-image\n"
        tree["etc/hostname.vio0"] = "dhcp\n"
        tree["etc/hostname.vio3"] = "dhcp\n"
        tree["etc/hostname.lo1"] = "up\n"
        tree["etc/mygate"] = "10.0.0.1\n"
    return tree


def guest(tmp_path: Path, family: str) -> Path:
    root = make_guest(tmp_path / "root", base=bsd_tree(family))
    os.chmod(root / "etc/master.passwd", 0o600)
    os.chown(root / "home/alice", 1001, 1001)
    return root


# --- editors -----------------------------------------------------------------


def test_rc_set_replaces_first_drops_later_keeps_the_rest() -> None:
    text = '# comment\nhostname="a"\nsshd_enable="YES"\nhostname=b  # again\n'
    assert _bsd.rc_set(text, {"hostname": "vm1", "growfs_enable": "YES"}) == (
        '# comment\nhostname="vm1"\nsshd_enable="YES"\ngrowfs_enable="YES"\n'
    )
    assert _bsd.rc_get("a=\"1\"\na='2' # x\n", "a") == "2"
    with pytest.raises(ValueError):
        _bsd.rc_set("", {"hostname": 'x"; rm -rf /'})


def test_master_password_keeps_fields_and_clears_change() -> None:
    text, found = _bsd.set_master_password(MASTER_PASSWD, "alice", "$2b$10$new")
    assert found
    assert "alice:$2b$10$new:1001:1001:staff:0:0:Alice:/home/alice:/bin/sh" in text.splitlines()
    assert text.replace("alice:$2b$10$new:1001:1001:staff:0:", "alice:$6$old$alice:1001:1001:staff:1700000000:") == (
        MASTER_PASSWD
    )
    assert _bsd.set_master_password(MASTER_PASSWD, "bob", "x") == (MASTER_PASSWD, False)


def test_interface_names_count_per_driver() -> None:
    plans = [
        NicPlan(0, "aa:00:00:00:00:01", "nic0", frontend_type="paravirtual"),
        NicPlan(1, "aa:00:00:00:00:02", "nic1", frontend_type="e1000"),
        NicPlan(2, "aa:00:00:00:00:03", "nic2", frontend_type="e1000"),
        NicPlan(3, "aa:00:00:00:00:04", "nic3", frontend_type="rtl8139"),
        NicPlan(4, "aa:00:00:00:00:05", "nic4"),
    ]
    assert _bsd.interface_names("freebsd", plans) == ["vtnet0", "em0", "em1", "re0", "vtnet1"]
    assert _bsd.interface_names("netbsd", plans) == ["vioif0", "wm0", "wm1", "re0", "vioif1"]
    assert _bsd.interface_names("openbsd", plans) == ["vio0", "em0", "em1", "rl0", "vio1"]


def static(index: int = 0, ipv6: str | None = None) -> NicPlan:
    return NicPlan(
        index,
        f"aa:00:00:00:00:0{index + 1}",
        f"nic{index}",
        ipv4="static",
        ipv6=ipv6,
        address=ipaddress.IPv4Interface("192.0.2.10/24"),
        gateway=ipaddress.IPv4Address("192.0.2.1"),
    )


def test_freebsd_rc_conf_network() -> None:
    plans = [static(ipv6="slaac"), NicPlan(1, "aa:00:00:00:00:02", "nic1", ipv4="dhcp")]
    old = (
        'ifconfig_vtnet0="DHCP"\nifconfig_em0_ipv6="inet6 accept_rtadv"\ndefaultrouter="10.0.0.1"\nsshd_enable="YES"\n'
    )
    new = _bsd.render_freebsd_rc_conf(old, plans, ["vtnet0", "vtnet1"])
    assert new == (
        'ifconfig_vtnet0="inet 192.0.2.10 netmask 255.255.255.0"\n'
        'defaultrouter="192.0.2.1"\n'
        'sshd_enable="YES"\n'
        'ifconfig_vtnet0_ipv6="inet6 -ifdisabled accept_rtadv"\n'
        'ifconfig_vtnet1="DHCP"\n'
        'ipv6_activate_all_interfaces="YES"\n'
        'rtsold_enable="YES"\n'
    )


def test_netbsd_and_openbsd_interface_files() -> None:
    assert _bsd.render_netbsd_ifconfig(static(ipv6="slaac")).splitlines()[1:] == [
        "up",
        "inet 192.0.2.10 netmask 255.255.255.0",
        "inet6 -ifdisabled",
    ]
    dhcp = NicPlan(0, "aa:00:00:00:00:01", "nic0", ipv4="dhcp")
    assert _bsd.render_netbsd_ifconfig(dhcp).splitlines()[1:] == ["up", "!dhcpcd -q -b -4 $int"]
    assert _bsd.render_openbsd_hostname_if(static(ipv6="slaac")).splitlines()[1:] == [
        "inet 192.0.2.10 255.255.255.0 NONE",
        "inet6 autoconf",
        "up",
    ]
    assert _bsd.render_openbsd_hostname_if(dhcp).splitlines()[1:] == ["dhcp", "up"]


def test_rc_local_round_trip() -> None:
    text = _bsd.firstboot_rc_local("job one\njob two", "/etc/rc.local.snf-image-orig")
    assert _bsd.parse_our_rc_local(text) == (["job one", "job two"], True)
    assert _bsd.parse_our_rc_local("#!/bin/sh\necho mine\n") is None


# --- tasks on fake roots -------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "path", "expected"),
    [
        ("freebsd", "etc/rc.conf", 'hostname="vm1.example.com"'),
        ("openbsd", "etc/myname", "vm1.example.com"),
        ("netbsd", "etc/myname", "vm1.example.com"),
        ("netbsd", "etc/rc.conf", 'hostname="vm1.example.com"'),
    ],
)
def test_assign_hostname(tmp_path: Path, family: str, path: str, expected: str) -> None:
    root = guest(tmp_path, family)
    assign_hostname.run(make_ctx(root, osfamily=family))
    assert expected in (root / path).read_text().splitlines()
    assert not (root / "etc/hosts").exists()


@pytest.mark.parametrize(
    ("family", "prefix", "verify"),
    [
        ("freebsd", "$6$", passlib_hash.sha512_crypt.verify),
        ("openbsd", "$2b$", passlib_hash.bcrypt.verify),
        ("netbsd", "$sha1$", passlib_hash.sha1_crypt.verify),
    ],
)
def test_change_password_default_hash_and_first_boot_pwd_mkdb(tmp_path: Path, family: str, prefix: str, verify) -> None:
    root = guest(tmp_path, family)
    ctx = make_ctx(root, rules={"password": "s3cret", "auth_keys": "ssh-ed25519 AAAA k"}, osfamily=family)
    change_password.run(ctx)
    fields = (root / "etc/master.passwd").read_text().splitlines()[2].split(":")
    assert fields[0] == "root" and fields[1].startswith(prefix) and verify("s3cret", fields[1])
    assert fields[5] == "0" and fields[2:5] == ["0", "0", ""]
    assert (root / "etc/master.passwd").stat().st_mode & 0o777 == 0o600
    assert not (root / "etc/spwd.db").exists() and (root / "etc/pwd.db").exists()
    if family == "openbsd":
        assert _bsd.PWD_MKDB in (root / "etc/rc.firsttime").read_text()
        assert not (root / "etc/rc.local").exists()
    else:
        rc_local = (root / "etc/rc.local").read_text()
        assert _bsd.PWD_MKDB in rc_local.splitlines()
        if family == "netbsd":  # the image's own rc.local is saved and put back by ours
            assert (root / "etc/rc.local.snf-image-orig").read_text() == "#!/bin/sh\necho the image's own\n"
            assert 'mv -f "/etc/rc.local.snf-image-orig" /etc/rc.local' in rc_local
        else:
            assert "rm -f /etc/rc.local" in rc_local
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA k\n" and keys.stat().st_mode & 0o777 == 0o600
    change_password.run(ctx)  # a second run adds no second job
    script = root / ("etc/rc.firsttime" if family == "openbsd" else "etc/rc.local")
    assert script.read_text().count(_bsd.PWD_MKDB) == 1


def test_change_password_method_override_and_missing_user(tmp_path: Path) -> None:
    root = guest(tmp_path, "openbsd")
    ctx = make_ctx(
        root,
        rules={"password": "pw"},
        properties={"USERS": "alice", "PASSWD_HASHING_METHOD": "sha256"},
        osfamily="openbsd",
    )
    change_password.run(ctx)
    alice = (root / "etc/master.passwd").read_text().splitlines()[-1].split(":")
    assert alice[1].startswith("$5$") and alice[5] == "0" and alice[4] == "staff"
    ctx = make_ctx(root, rules={"password": "pw"}, properties={"USERS": "bob"}, osfamily="openbsd")
    with pytest.raises(TaskError, match="bob"):
        change_password.run(ctx)


@pytest.mark.parametrize("family", ["freebsd", "netbsd", "openbsd"])
def test_delete_ssh_keys_bsd(tmp_path: Path, family: str) -> None:
    root = guest(tmp_path, family)
    delete_ssh_keys.run(make_ctx(root, rules={"ssh_host_keys": host_keys()}, osfamily=family))
    names = ["extra_key", "extra_key.pub", "moduli", "sshd_config"]  # its one HostKey line, an unknown type: rsa
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == names
    rsa = next(key for key in host_keys() if key.kind == "rsa")
    assert (root / "etc/ssh/extra_key").read_text() == rsa.private
    assert (root / "etc/ssh/extra_key").stat().st_mode & 0o777 == 0o600


def test_personality_owner_from_the_image(tmp_path: Path) -> None:
    root = guest(tmp_path, "freebsd")
    entry = PersonalityFile(path="/home/alice/new/f", contents="aGk=", owner="alice", group="wheel", mode=0o600)
    enforce_personality.run(make_ctx(root, rules={"personality": (entry,)}, osfamily="freebsd"))
    st = (root / "home/alice/new/f").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1001, 0, 0o600)


NICS = (
    RulesNic(index=0, mac="aa:00:00:00:00:01", ip="192.0.2.10", subnet="192.0.2.0/24", gateway="192.0.2.1",
             subnet6="2001:db8::/64", gateway6="2001:db8::1", tags=(), frontend_type="paravirtual"),
    RulesNic(index=1, mac="aa:00:00:00:00:02", tags=("dhcp",), subnet="10.0.0.0/24", ip="10.0.0.5",
             frontend_type="e1000"),
)  # fmt: skip
SETTINGS = RulesSettings(dhcp_tags=("dhcp",), default_nic_config="")


def network_ctx(root: Path, family: str):
    return make_ctx(root, rules={"nics": NICS, "settings": SETTINGS}, osfamily=family)


def test_configure_network_freebsd(tmp_path: Path) -> None:
    root = guest(tmp_path, "freebsd")
    configure_network.run(network_ctx(root, "freebsd"))
    rc = (root / "etc/rc.conf").read_text().splitlines()
    assert 'ifconfig_vtnet0="inet 192.0.2.10 netmask 255.255.255.0"' in rc
    assert 'ifconfig_em0="DHCP"' in rc and 'defaultrouter="192.0.2.1"' in rc
    assert 'ifconfig_vtnet0_ipv6="inet6 -ifdisabled accept_rtadv"' in rc and 'rtsold_enable="YES"' in rc
    assert 'ifconfig_em0_ipv6="inet6 accept_rtadv"' not in rc and 'sshd_enable="YES"' in rc
    before = (root / "etc/rc.conf").read_text()
    configure_network.run(network_ctx(root, "freebsd"))
    assert (root / "etc/rc.conf").read_text() == before


def test_configure_network_netbsd(tmp_path: Path) -> None:
    root = guest(tmp_path, "netbsd")
    configure_network.run(network_ctx(root, "netbsd"))
    assert (root / "etc/ifconfig.vioif0").read_text().splitlines()[1:] == [
        "up",
        "inet 192.0.2.10 netmask 255.255.255.0",
        "inet6 -ifdisabled",
    ]
    assert "!dhcpcd -q -b -4 $int" in (root / "etc/ifconfig.wm0").read_text()
    rc = (root / "etc/rc.conf").read_text().splitlines()
    assert 'defaultroute="192.0.2.1"' in rc and 'ip6mode="autohost"' in rc and "rc_configured=YES" in rc


def test_configure_network_openbsd(tmp_path: Path) -> None:
    root = guest(tmp_path, "openbsd")
    configure_network.run(network_ctx(root, "openbsd"))
    assert (root / "etc/hostname.vio0").read_text().splitlines()[1:] == [
        "inet 192.0.2.10 255.255.255.0 NONE",
        "inet6 autoconf",
        "up",
    ]
    assert (root / "etc/hostname.em0").read_text().splitlines()[1:] == ["dhcp", "up"]
    assert (root / "etc/hostname.vio0").stat().st_mode & 0o777 == 0o640
    assert not (root / "etc/hostname.vio3").exists()  # a NIC the instance does not have
    assert (root / "etc/hostname.lo1").exists()  # not a NIC
    assert (root / "etc/mygate").read_text().splitlines()[1:] == ["192.0.2.1"]


def test_mount_entries_freebsd_and_openbsd() -> None:
    fstab = mount_image.parse_fstab(
        "/dev/gpt/rootfs / ufs rw 1 1\n/dev/ada0p3 /usr ufs rw 2 2\n/dev/ada0p2 none swap sw 0 0\n"
        "/dev/gpt/data /data ufs rw 2 2\nproc /proc procfs rw 0 0\n"
    )
    chosen, problems = mount_image.bsd_to_mount(fstab, "freebsd", {}, "")
    assert [(e.mountpoint, n) for e, n in chosen] == [("/usr", 3)]
    assert problems == ["fstab: not mounting /data: /dev/gpt/data is not a partition of the image's disk"]
    fstab = mount_image.parse_fstab(
        "0123456789abcdef.a / ffs rw 1 1\n0123456789abcdef.b none swap sw\n0123456789abcdef.i /var ffs rw,nodev 1 2\n"
        "0123456789abcdef.e /home ffs rw 1 2\nfedcba9876543210.d /other ffs rw 1 2\n/dev/sd1a /mnt ffs rw 1 2\n"
        "/dev/wd0d /usr ffs rw 1 2\n"
    )
    letters = {"a": 5, "b": 6, "d": 7, "e": 8, "i": 9}
    chosen, problems = mount_image.bsd_to_mount(fstab, "openbsd", letters, "0123456789abcdef")
    assert [(e.mountpoint, n) for e, n in chosen] == [("/home", 8), ("/usr", 7), ("/var", 9)]
    assert len(problems) == 2


def test_fstab_mountpoint_for_openbsd_growth() -> None:
    fstab = "0123456789abcdef.a / ffs rw 1 1\n0123456789abcdef.e /home ffs rw,nodev 1 2\n"
    assert filesystem_resize_mounted.fstab_mountpoint(fstab, "e", "0123456789abcdef") == (
        "0123456789abcdef.e",
        "/home",
    )
    assert filesystem_resize_mounted.fstab_mountpoint("/dev/sd0d /usr ffs rw 1 2\n", "d", "") == ("/dev/sd0d", "/usr")
    assert filesystem_resize_mounted.fstab_mountpoint(fstab, "d", "0123456789abcdef") is None


def test_warnings_helper_is_used(tmp_path: Path) -> None:
    root = guest(tmp_path, "freebsd")
    ctx = make_ctx(root, rules={"personality": ()}, osfamily="freebsd")
    enforce_personality.run(ctx)
    assert warnings(ctx) == [enforce_personality.NO_PERSONALITY]


def test_bsd_static_ipv6() -> None:
    """A NIC whose Ganeti IP is IPv6: the address on the interface, gateway6 as the IPv6 default router."""
    plans = [
        NicPlan(0, "aa:00:00:00:00:01", "nic0", ipv4="dhcp"),
        NicPlan(
            1,
            "aa:00:00:00:00:02",
            "nic1",
            ipv6="static",
            address6=ipaddress.IPv6Interface("2001:db8::5/64"),
            gateway6=ipaddress.IPv6Address("fe80::1"),
        ),
    ]
    old = 'ipv6_defaultrouter="2001:db8:9::1"\n'
    assert _bsd.render_freebsd_rc_conf(old, plans, ["vtnet0", "vtnet1"]) == (
        'ipv6_defaultrouter="fe80::1%vtnet1"\n'  # in place of the image's
        'ifconfig_vtnet0="DHCP"\n'
        'ifconfig_vtnet1="up"\n'
        'ifconfig_vtnet1_ipv6="inet6 -ifdisabled 2001:db8::5 prefixlen 64"\n'
        'ipv6_activate_all_interfaces="YES"\n'
    )
    assert _bsd.render_netbsd_ifconfig(plans[1]).splitlines()[1:] == ["up", "inet6 2001:db8::5 prefixlen 64"]
    assert _bsd.render_openbsd_hostname_if(plans[1]).splitlines()[1:] == ["inet6 2001:db8::5 64", "up"]
    assert _bsd.default_gateway6(plans, ["vio0", "vio1"]) == "fe80::1%vio1"
