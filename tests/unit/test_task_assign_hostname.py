"""AssignHostname: the hosts and shell-variable editors, and runs against fake guests of several layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helper.commands import TaskError
from tasks import assign_hostname as ah
from tests.fakeguest import CLOUD_INIT_GUEST, HOSTS, make_ctx, make_guest, warnings

FQDN = "vm1.example.com"


def test_check_hostname() -> None:
    assert ah.check_hostname(" vm1.example.com. ") == FQDN
    assert ah.check_hostname("a") == "a"
    for bad in ("", "-a", "a..b", "a b", "a\nb", "x" * 64, "ä.com", "a;rm -rf /", "a" + ".b" * 127):
        with pytest.raises(TaskError, match="Invalid hostname"):
            ah.check_hostname(bad)


def test_set_hosts_replaces_the_127_0_1_1_line() -> None:
    new = ah.set_hosts(HOSTS, FQDN)
    assert new.splitlines()[1] == "127.0.1.1\tvm1.example.com vm1"
    assert new.replace("127.0.1.1\tvm1.example.com vm1", "") == HOSTS.replace(
        "127.0.1.1\timage-builder.example.org\timage-builder", ""
    )


def test_set_hosts_short_name_only_once() -> None:
    assert ah.set_hosts("127.0.0.1 localhost\n", "vm1") == "127.0.0.1 localhost\n127.0.1.1\tvm1\n"


def test_set_hosts_adds_after_localhost_and_drops_duplicates() -> None:
    text = "# header\n127.0.0.1 localhost\n127.0.0.1 localhost.localdomain\n::1 localhost\n  127.0.1.1 a\n127.0.1.1 b"
    assert ah.set_hosts(text, FQDN) == (
        "# header\n127.0.0.1 localhost\n127.0.0.1 localhost.localdomain\n::1 localhost\n"
        "127.0.1.1\tvm1.example.com vm1\n"
    )
    assert ah.set_hosts("# 127.0.1.1 commented\n10.0.0.1 other\n", "h") == (
        "127.0.1.1\th\n# 127.0.1.1 commented\n10.0.0.1 other\n"
    )
    assert ah.set_hosts("", "h") == "127.0.1.1\th\n"


def test_set_hosts_crlf_and_unicode_comment() -> None:
    text = "127.0.0.1 localhost # lö\r\n127.0.1.1 old\r\n"
    assert ah.set_hosts(text, "h.d") == "127.0.0.1 localhost # lö\r\n127.0.1.1\th.d h\r\n"


def test_set_variable() -> None:
    text = "NETWORKING=yes\nHOSTNAME=old\n#HOSTNAME=comment\nexport HOSTNAME=dup\n"
    assert ah.set_variable(text, "HOSTNAME", FQDN) == f"NETWORKING=yes\nHOSTNAME={FQDN}\n#HOSTNAME=comment\n"
    assert ah.set_variable("NETWORKING=yes", "HOSTNAME", "h") == "NETWORKING=yes\nHOSTNAME=h\n"
    assert ah.set_variable("", "hostname", "h", quote=True) == 'hostname="h"\n'
    assert ah.set_variable("export HOSTNAME=x\r\n", "HOSTNAME", "h") == "export HOSTNAME=h\r\n"
    assert ah.set_variable("A=1\n", "HOSTNAME", "h", add=False) == "A=1\n"
    assert ah.has_variable("  HOSTNAME=x", "HOSTNAME") and not ah.has_variable("MYHOSTNAME=x", "HOSTNAME")


def test_run_debian(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    ctx = make_ctx(root, {"instance_name": FQDN})
    ah.run(ctx)
    assert (root / "etc/hostname").read_text() == FQDN + "\n"
    assert "127.0.1.1\tvm1.example.com vm1\n" in (root / "etc/hosts").read_text()
    assert "image-builder" not in (root / "etc/hosts").read_text()
    assert warnings(ctx) == []


def test_run_rename_is_idempotent(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    ah.run(make_ctx(root, {"instance_name": "old.example.com"}))
    ah.run(make_ctx(root, {"instance_name": FQDN, "only_tasks": ["AssignHostname"]}))
    hosts = (root / "etc/hosts").read_text()
    assert hosts.count("127.0.1.1") == 1 and "old" not in hosts
    assert (root / "etc/hostname").read_text() == FQDN + "\n"


def test_run_redhat_sysconfig(tmp_path: Path) -> None:
    root = make_guest(
        tmp_path,
        {
            "etc/hostname": None,
            "etc/debian_version": None,
            "etc/redhat-release": "CentOS release 6.10 (Final)\n",
            "etc/sysconfig/network": "NETWORKING=yes\nHOSTNAME=localhost.localdomain\n",
        },
    )
    ah.run(make_ctx(root, {"instance_name": FQDN}))
    assert (root / "etc/sysconfig/network").read_text() == f"NETWORKING=yes\nHOSTNAME={FQDN}\n"
    assert not (root / "etc/hostname").exists()


def test_run_modern_redhat_updates_both(tmp_path: Path) -> None:
    root = make_guest(
        tmp_path,
        {"etc/debian_version": None, "etc/redhat-release": "x", "etc/sysconfig/network": "HOSTNAME=old\n"},
    )
    ah.run(make_ctx(root, {"instance_name": FQDN}))
    assert (root / "etc/hostname").read_text() == FQDN + "\n"
    assert (root / "etc/sysconfig/network").read_text() == f"HOSTNAME={FQDN}\n"


@pytest.mark.parametrize(
    ("marker", "path", "expected"),
    [
        ("etc/SuSE-release", "etc/HOSTNAME", FQDN + "\n"),
        ("etc/slackware-version", "etc/HOSTNAME", FQDN + "\n"),
        ("etc/gentoo-release", "etc/conf.d/hostname", f'hostname="{FQDN}"\n'),
        ("etc/arch-release", "etc/hostname", FQDN + "\n"),
        ("etc/coreos/x", "etc/hostname", FQDN + "\n"),
    ],
)
def test_run_other_layouts(tmp_path: Path, marker: str, path: str, expected: str) -> None:
    root = make_guest(tmp_path, {"etc/hostname": None, "etc/debian_version": None, marker: ""})
    ctx = make_ctx(root, {"instance_name": FQDN})
    ah.run(ctx)
    assert (root / path).read_text() == expected
    assert warnings(ctx) == []


def test_run_old_arch_rc_conf(tmp_path: Path) -> None:
    rc = 'LOCALE="en_US.UTF-8"\nHOSTNAME="myhost"\nDAEMONS=(syslog-ng network)\n'
    root = make_guest(
        tmp_path, {"etc/hostname": None, "etc/debian_version": None, "etc/arch-release": "", "etc/rc.conf": rc}
    )
    ah.run(make_ctx(root, {"instance_name": FQDN}))
    assert (root / "etc/rc.conf").read_text() == rc.replace('"myhost"', f'"{FQDN}"')
    assert not (root / "etc/hostname").exists()


def test_run_unknown_distro_and_missing_hosts(tmp_path: Path) -> None:
    root = make_guest(tmp_path, {"etc/hostname": None, "etc/debian_version": None, "etc/hosts": None})
    ctx = make_ctx(root, {"instance_name": FQDN})
    ah.run(ctx)
    assert (root / "etc/hostname").read_text() == FQDN + "\n"
    assert "127.0.1.1\tvm1.example.com vm1" in (root / "etc/hosts").read_text()
    assert "127.0.0.1\tlocalhost" in (root / "etc/hosts").read_text()
    assert len(warnings(ctx)) == 2


def test_run_symlinks_cannot_escape(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "passwd"
    outside.write_text("precious\n")
    (root / "passwd").write_text("in the guest\n")
    (root / "etc/hostname").unlink()
    (root / "etc/hostname").symlink_to("/../../passwd")
    with pytest.raises(TaskError, match="Refusing to edit /etc/hostname: it is a symbolic link"):
        ah.run(make_ctx(root, {"instance_name": FQDN}))
    assert outside.read_text() == "precious\n"
    assert (root / "passwd").read_text() == "in the guest\n"


def test_run_bad_name(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    with pytest.raises(TaskError):
        ah.run(make_ctx(root, {"instance_name": "x\n127.0.0.1 evil"}))


def test_run_cloud_init_sets_meta_data_and_the_files(tmp_path: Path) -> None:
    root = make_guest(tmp_path, CLOUD_INIT_GUEST)
    ah.run(make_ctx(root, {"instance_name": FQDN}, {"CLOUD_INIT": "yes"}))
    seed = root / "var/lib/cloud/seed/nocloud-net"
    assert yaml.safe_load((seed / "meta-data").read_text()) == {"local-hostname": FQDN}
    assert (seed / "meta-data").stat().st_mode & 0o777 == 0o600 and seed.stat().st_mode & 0o777 == 0o700
    assert (root / "etc/hostname").read_text() == FQDN + "\n"  # in case the image's cloud-init keeps its name
