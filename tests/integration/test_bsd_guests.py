"""create end to end on FreeBSD, NetBSD and OpenBSD images, in the helper VM with its own (UFS-writing) kernel.

Images: tests/bsdimages.py (makefs UFS, sgdisk GPT, the project's disklabel
writer). Each is deployed by ``create`` onto a bigger disk with a password,
an SSH key, two NICs and a personality file, with OSFAMILY and ROOT_PARTITION
left to detection: UFS1 and UFS2 roots, in GPT partitions (FreeBSD) and in
disklabels of MBR slices (OpenBSD FFS1, NetBSD FFSv2), and a FreeBSD whose
UFS1 root comes after a UFS2 /var that detection must turn down, saying so.
Then it is read back: the partition tables from the host,
the UFS through a second helper VM running tests/ufsprobe.py (read-only
mounts, no code of the tasks) -- the host has no UFS driver. The kernel's
own view of the partitions (/proc/partitions in that VM) checks the
disklabel code's numbering and sizes independently. With Debian's kernel
(the fallback) a BSD image is a clear error.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from passlib import hash as passlib_hash

from helper import disklabel
from snf_image import jail
from tests import bsdimages, helpervm
from tests.osenv import create_env, install, monitor_messages, public_key_of, task_events, task_seconds

pytestmark = pytest.mark.vm

MIB = 1 << 20
SECTOR = 512
DISK = 160 * MIB
PASSWORD = "Bsd-s3cret"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsdTestKeyForSnfImage bsd@test"
PERSONALITY = {"path": "/etc/snf-injected", "contents": base64.b64encode(b"hello bsd\n").decode(),
               "owner": "alice", "group": "wheel", "mode": 0o640}  # fmt: skip
UFSPROBE = Path(__file__).resolve().parent.parent / "ufsprobe.py"
NICS = {
    "NIC_COUNT": "2",
    "NIC_0_MAC": "aa:00:00:00:b5:01",
    "NIC_0_IP": "192.0.2.10",
    "NIC_0_FRONTEND_TYPE": "paravirtual",
    "NIC_0_NETWORK_SUBNET": "192.0.2.0/24",
    "NIC_0_NETWORK_GATEWAY": "192.0.2.1",
    "NIC_0_NETWORK_SUBNET6": "2001:db8::/64",
    "NIC_0_NETWORK_GATEWAY6": "2001:db8::1",
    "NIC_1_MAC": "aa:00:00:00:b5:02",
    "NIC_1_FRONTEND_TYPE": "e1000",
    "NIC_1_NETWORK_SUBNET": "10.0.0.0/24",
    "NIC_1_NETWORK_TAGS": "dhcp",
    "NIC_1_IP": "10.0.0.5",
}


@pytest.fixture(scope="module")
def helper_dir() -> Path:
    started = time.monotonic()
    built = helpervm.ensure_helper()
    print(f"\n[timing] helper with its own kernel ready in {time.monotonic() - started:.0f}s")
    return built


@pytest.fixture(scope="module")
def probe_dir(helper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpervm.probe_helper_dir(helper_dir, tmp_path_factory.mktemp("ufsprobe") / "h", {"ufsprobe": UFSPROBE})


@dataclass
class Deployed:
    image: bsdimages.BsdImage
    disk: Path
    messages: list[dict]
    seconds: float


_done: dict[str, Deployed] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bsd")


def deploy(family: str, helper_dir: Path, workdir: Path) -> Deployed:
    """create of the bsdimages ``family`` image (once per module run)."""
    if family in _done:
        return _done[family]
    images = workdir / "images"
    image = bsdimages.build(family, images, helpervm.CACHE / "bsd-tools")
    osdef = install(workdir / f"inst-{family}")
    osdef.configure(HELPER_DIR=str(helper_dir), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(images))
    disk = workdir / f"{family}.raw"
    with open(disk, "wb") as f:
        f.truncate(DISK)
    env = create_env(
        f"{family.replace('-', '')}1.example.test",
        disk,
        OSP_IMG_ID=f"local://{image.path.name}",
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_AUTH_KEYS=KEY,
        OSP_IMG_PERSONALITY=json.dumps([PERSONALITY]),
        OSP_IMG_PROPERTIES=json.dumps({"USERS": "root alice"}),
        **NICS,
    )
    started = time.monotonic()
    result = osdef.run("create", env)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(disk) in line]
    assert not list(osdef.tmpdir.iterdir()), "create left files in its TMPDIR"
    took = task_seconds(monitor_messages(result.stderr))["DeleteSSHKeys"]
    print(f"\n[timing] {family}: create took {seconds:.1f}s; DeleteSSHKeys {took:.2f}s")
    _done[family] = Deployed(image, disk, monitor_messages(result.stderr), seconds)
    return _done[family]


def helper_warnings(done: Deployed) -> list[str]:
    return [m["messages"][0] for m in done.messages if m.get("subtype") == "warning"]


def rejections(done: Deployed) -> list[str]:
    """The partitions detection turned down, with its reasons."""
    return [w for w in helper_warnings(done) if w.startswith("Partition ")]


def inspect(probe_dir: Path, disk: Path, inspect: list[dict]) -> tuple[list[dict], dict[int, int]]:
    """The ufsprobe's facts about ``disk`` (attached read-only) and the kernel's partition sizes."""
    progress: list[dict] = []
    log: list[str] = []
    cfg = jail.HelperConfig(helper_dir=probe_dir, runner="ufsprobe", accel="auto", soft_timeout=180.0, user=None)
    rules, token = helpervm.probe_rules({"inspect": inspect})
    disks = [jail.JailDisk(str(disk), 0, readonly=True)]
    jail.run_helper(cfg, disks, rules, progress.append, log.append, token=token)
    facts = [json.loads(m["messages"][0]) for m in progress if m.get("subtype") == "warning"]
    table = next(f for f in facts if "partitions" in f)
    return facts, kernel_sizes(table["partitions"], table["disk"])


def files(facts: list[dict]) -> dict[str, dict]:
    return {f["path"]: f for f in facts if "path" in f}


def kernel_sizes(partitions: str, disk: str) -> dict[int, int]:
    """Partition number -> size in 512-byte sectors, from /proc/partitions (1 KiB blocks)."""
    sizes = {}
    for line in partitions.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3].startswith(disk) and fields[3] != disk:
            sizes[int(fields[3][len(disk) :])] = int(fields[2]) * 2
    return sizes


ALGORITHMS = {"rsa": "ssh-rsa", "ecdsa": "ecdsa-sha2-nistp256", "ed25519": "ssh-ed25519"}


def check_common(found: dict[str, dict], family: str, default_prefix: str, verify, workdir: Path) -> None:
    """Password, keys, host keys, personality, hostname-independent checks shared by the three."""
    master = found["/etc/master.passwd"]
    assert master["mode"] == 0o600
    for line in master["text"].splitlines():
        fields = line.split(":")
        if fields[0] in ("root", "alice"):
            assert fields[1].startswith(default_prefix) and verify(PASSWORD, fields[1]), line
            assert fields[5] == "0"
    assert not found["/etc/spwd.db"]["exists"] and found["/etc/pwd.db"]["exists"]
    for kind in ("rsa", "ecdsa", "ed25519"):  # the image's three keys replaced by the ones the host made
        private, public = found[f"/etc/ssh/ssh_host_{kind}_key"], found[f"/etc/ssh/ssh_host_{kind}_key.pub"]
        assert (private["mode"], private["uid"], public["mode"], public["uid"]) == (0o600, 0, 0o644, 0)
        assert private["text"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        algorithm, _, comment = public["text"].split()
        assert algorithm == ALGORITHMS[kind] and comment.startswith("root@")  # root@<the instance's short name>
        if private["size"] == len(private["text"]):  # whole (the probe reads 2 KiB: not an RSA key)
            assert public_key_of(private["text"], workdir) == public["text"].split()[:2]
    assert found["/etc/ssh/moduli"]["exists"]
    keys = found["/root/.ssh/authorized_keys"]
    assert keys["text"] == KEY + "\n" and keys["mode"] == 0o600 and keys["uid"] == 0
    alice = found["/home/alice/.ssh/authorized_keys"]
    if family != "openbsd":  # OpenBSD's /home is its own filesystem, checked apart
        assert alice["text"] == KEY + "\n" and alice["uid"] == 1001 and alice["mode"] == 0o600
    injected = found["/etc/snf-injected"]
    assert injected["text"] == "hello bsd\n" and injected["mode"] == 0o640 and injected["gid"] == 0


COMMON_PATHS = [
    "/etc/master.passwd", "/etc/spwd.db", "/etc/pwd.db", "/etc/ssh/moduli", "/root/.ssh/authorized_keys",
    "/home/alice/.ssh/authorized_keys", "/etc/snf-injected", "/etc/rc.conf", "/etc/rc.local",
    "/etc/rc.local.snf-image-orig", "/etc/rc.firsttime", "/etc/myname", "/firstboot", "/etc/mygate",
] + [f"/etc/ssh/ssh_host_{k}_key{s}" for k in ("rsa", "ecdsa", "ed25519") for s in ("", ".pub")]  # fmt: skip


def test_openbsd(helper_dir: Path, probe_dir: Path, workdir: Path) -> None:
    done = deploy("openbsd", helper_dir, workdir)
    warnings = [m["messages"][0] for m in done.messages if m.get("subtype") == "warning"]
    assert "Detected OSFAMILY: openbsd" in warnings and "Detected ROOT_PARTITION: 5" in warnings
    started = [t for kind, t in task_events(done.messages) if kind == "task-start"]
    assert started[0] == "FixPartitionTable" and "UmountImage" in started
    total = DISK // SECTOR
    with open(done.disk, "rb") as f:
        mbr = f.read(SECTOR)
        f.seek(65 * SECTOR)
        label = disklabel.parse(f.read(SECTOR), "openbsd")  # checksum checked
    assert disklabel.mbr_slices(mbr) == [(4, "a6", 64, total - 64)]
    assert (label.secperunit, label.bend, label.get("c").size) == (total, total, total)
    e = label.get("e")
    assert e.offset == 73792 and total - 32 < e.end <= total and e.size % 32 == 0
    assert label.get("a").size == 65536 and label.get("b").size == 8192  # root and swap keep their size
    facts, partitions = inspect(probe_dir, done.disk, [
        {"partition": 5, "paths": [*COMMON_PATHS, "/etc/hostname.vio0", "/etc/hostname.em0"]},
        {"partition": 7, "paths": ["/alice/.ssh/authorized_keys", "/alice/.profile"]},
    ])  # fmt: skip
    # the kernel's own disklabel parser agrees with ours: a, b, e as 5, 6, 7 with the grown e
    assert partitions == {4: total - 64, 5: 65536, 6: 8192, 7: e.size}
    found = files(facts)
    check_common(found, "openbsd", "$2b$", passlib_hash.bcrypt.verify, workdir)
    assert found["/etc/myname"]["text"] == "openbsd1.example.test\n"
    firsttime = found["/etc/rc.firsttime"]["text"]
    assert "/usr/sbin/pwd_mkdb -p /etc/master.passwd" in firsttime
    assert f"/sbin/growfs -q -y {bsdimages.DUID}.e" in firsttime and "umount /home" in firsttime
    assert not found["/etc/rc.local"]["exists"]
    assert found["/etc/hostname.vio0"]["text"].splitlines()[1:] == [
        "inet 192.0.2.10 255.255.255.0 NONE", "inet6 autoconf", "up"]  # fmt: skip
    assert found["/etc/hostname.em0"]["text"].splitlines()[1:] == ["dhcp", "up"]
    assert found["/etc/mygate"]["text"].splitlines()[-1] == "192.0.2.1"
    home = next(f for f in facts if f.get("path") == "/alice/.ssh/authorized_keys")
    assert home["text"] == KEY + "\n" and home["uid"] == 1000  # /home mounted from e, owner from passwd


def test_netbsd(helper_dir: Path, probe_dir: Path, workdir: Path) -> None:
    done = deploy("netbsd", helper_dir, workdir)
    warnings = [m["messages"][0] for m in done.messages if m.get("subtype") == "warning"]
    assert "Detected OSFAMILY: netbsd" in warnings and "Detected ROOT_PARTITION: 5" in warnings
    total = DISK // SECTOR
    with open(done.disk, "rb") as f:
        mbr = f.read(SECTOR)
        f.seek(2049 * SECTOR)
        label = disklabel.parse(f.read(SECTOR), "netbsd")
    assert disklabel.mbr_slices(mbr) == [(1, "a9", 2048, total - 2048)]
    assert label.get("d").size == total and (label.get("c").offset, label.get("c").size) == (2048, total - 2048)
    assert label.get("a").end == total and label.get("b").size == 8192
    facts, partitions = inspect(probe_dir, done.disk, [
        {"partition": 5, "paths": [*COMMON_PATHS, "/etc/ifconfig.vioif0", "/etc/ifconfig.wm0"]},
    ])  # fmt: skip
    assert partitions == {1: total - 2048, 5: total - 10240, 6: 8192}
    assert next(f["ufstype"] for f in facts if "ufstype" in f) == "ufs2"  # FFSv2 in a disklabel partition
    found = files(facts)
    check_common(found, "netbsd", "$sha1$", passlib_hash.sha1_crypt.verify, workdir)
    assert found["/etc/myname"]["text"] == "netbsd1.example.test\n"
    rc_conf = found["/etc/rc.conf"]["text"].splitlines()
    assert 'hostname="netbsd1.example.test"' in rc_conf and 'resize_root="YES"' in rc_conf
    assert 'defaultroute="192.0.2.1"' in rc_conf and 'ip6mode="autohost"' in rc_conf
    rc_local = found["/etc/rc.local"]["text"]
    assert "/usr/sbin/pwd_mkdb -p /etc/master.passwd" in rc_local.splitlines()
    assert found["/etc/rc.local.snf-image-orig"]["text"] == "#!/bin/sh\necho 'the image rc.local'\n"
    assert found["/etc/ifconfig.vioif0"]["text"].splitlines()[1:] == [
        "up", "inet 192.0.2.10 netmask 255.255.255.0", "inet6 -ifdisabled"]  # fmt: skip
    assert "!dhcpcd -q -b -4 $int" in found["/etc/ifconfig.wm0"]["text"]
    size = next(f["fs_bytes"] for f in facts if "fs_bytes" in f)
    assert size < 45 * MIB  # UFS is grown by the guest at first boot (resize_root), not here


def test_freebsd(helper_dir: Path, probe_dir: Path, workdir: Path) -> None:
    done = deploy("freebsd", helper_dir, workdir)
    warnings = helper_warnings(done)
    assert "Detected OSFAMILY: freebsd" in warnings and "Detected ROOT_PARTITION: 3" in warnings
    assert rejections(done) == []  # freebsd-boot and freebsd-swap are never candidates
    verify = subprocess.run(["sgdisk", "--verify", str(done.disk)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout  # backup header at the new end
    total = DISK // SECTOR
    facts, partitions = inspect(probe_dir, done.disk, [
        {"partition": 3, "paths": COMMON_PATHS, "dirs": ["/etc/ssh"]},
    ])  # fmt: skip
    assert partitions[3] == total - 2048 - 18432  # grown up to 1 MiB before the end
    assert next(f["ufstype"] for f in facts if "ufstype" in f) == "ufs2"
    found = files(facts)
    check_common(found, "freebsd", "$6$", passlib_hash.sha512_crypt.verify, workdir)
    rc_conf = found["/etc/rc.conf"]["text"].splitlines()
    for line in ('hostname="freebsd1.example.test"', 'growfs_enable="YES"', 'sshd_enable="YES"',
                 'ifconfig_vtnet0="inet 192.0.2.10 netmask 255.255.255.0"', 'defaultrouter="192.0.2.1"',
                 'ifconfig_vtnet0_ipv6="inet6 -ifdisabled accept_rtadv"', 'ifconfig_em0="DHCP"',
                 'rtsold_enable="YES"'):  # fmt: skip
        assert line in rc_conf, (line, rc_conf)
    assert found["/firstboot"]["exists"]
    rc_local = found["/etc/rc.local"]["text"]
    assert "/usr/sbin/pwd_mkdb -p /etc/master.passwd" in rc_local and "rm -f /etc/rc.local" in rc_local
    ssh_dir = next(f["entries"] for f in facts if f.get("dir") == "/etc/ssh")
    keys = [f"ssh_host_{kind}_key{suffix}" for kind in ("ecdsa", "ed25519", "rsa") for suffix in ("", ".pub")]
    assert sorted(ssh_dir) == ["moduli", *keys, "sshd_config"]  # no leftover of the image's keys, no temp file


def test_freebsd_ufs1_root_after_a_rejected_ufs2_partition(helper_dir: Path, probe_dir: Path, workdir: Path) -> None:
    """Detection mounts each UFS with the ufstype its superblock shows, and says why it turned /var down."""
    done = deploy("freebsd-ufs1", helper_dir, workdir)
    warnings = helper_warnings(done)
    assert "Detected OSFAMILY: freebsd" in warnings and "Detected ROOT_PARTITION: 4" in warnings
    assert rejections(done) == ["Partition 3 is not a freebsd root: its UFS2 filesystem has no /etc/fstab"]
    total = DISK // SECTOR
    facts, partitions = inspect(probe_dir, done.disk, [
        {"partition": 4, "paths": COMMON_PATHS},
        {"partition": 3, "paths": ["/log/messages"]},
    ])  # fmt: skip
    assert partitions[4] == total - 2048 - 51200 and partitions[3] == 16 * MIB // SECTOR  # the root grown
    assert {f["partition"]: f["ufstype"] for f in facts if "ufstype" in f} == {4: "44bsd", 3: "ufs2"}
    found = files(facts)
    check_common(found, "freebsd", "$6$", passlib_hash.sha512_crypt.verify, workdir)
    rc_conf = found["/etc/rc.conf"]["text"].splitlines()
    assert 'hostname="freebsdufs11.example.test"' in rc_conf and 'growfs_enable="YES"' in rc_conf
    assert found["/log/messages"]["text"].startswith("Jan  1 00:00:00 freebsd-image syslogd")  # /var untouched


def test_debian_kernel_is_a_clear_error(workdir: Path, tmp_path: Path) -> None:
    """With Debian's kernel (no UFS, no BSD disklabels) a BSD image fails with the fix in one line."""
    images = tmp_path / "images"
    image = bsdimages.build("openbsd", images, helpervm.CACHE / "bsd-tools")
    osdef = install(tmp_path / "inst")
    osdef.configure(HELPER_DIR=str(helpervm.ensure_helper("debian")), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(images))
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(DISK)
    env = create_env("obsd.example.test", disk, OSP_IMG_ID=f"local://{image.path.name}", OSP_IMG_FORMAT="diskdump")
    result = osdef.run("create", env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and "--kernel custom" in errors[0], errors
    assert not list(osdef.tmpdir.iterdir())


def test_image_files_are_left_alone(workdir: Path) -> None:
    """The source images are not modified by a deployment (the copy is)."""
    for deployed in _done.values():
        assert deployed.image.path.exists()
    shutil.rmtree(workdir / "images", ignore_errors=True)
