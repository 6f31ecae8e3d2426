"""The Linux tasks proven on real Debian guests: deploy through ``create``, read every file back, then boot it.

For each network style of the test guests (ifupdown, NetworkManager,
netplan + systemd-networkd, cloud-init) one deployment through the real
``create`` entry script onto a bigger disk, with a password, an SSH key, a
static IPv4 NIC and a personality file. Checked from outside (debugfs on
the deployed root partition): every file the tasks were to write. Then the
deployed disk boots under TCG with the guest's own kernel and initrd and a
NIC with the instance's MAC (tests/guestboot.py); over the serial console,
root logs in with the injected password and the test looks at the hostname,
the NIC's address, the authorized keys, the personality file and sshd's
host keys -- what the guest really does with the files.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from passlib.hash import sha512_crypt

from tests import guestboot, guests, helpervm
from tests.osenv import OsDefinition, create_env, install, monitor_messages, public_key_of, task_events, task_seconds

pytestmark = pytest.mark.vm

GiB = 1 << 30
SECTOR = 512
PASSWORD = "Sn4f-t3st pass"
# On qemu's user network (restrict=on keeps it inside), outside the range its DHCP server hands out
# (10.0.2.15 and up), so an address the guest got by DHCP instead can never pass for the static one.
ADDRESS = ipaddress.IPv4Interface("10.0.2.77/24")
GATEWAY = "10.0.2.2"
PERSONALITY_PATH = "/etc/snf-test/personality.txt"
PERSONALITY_TEXT = "injected by img_personality\n"
PERSONALITY_MODE = 0o640
KEY_TYPES = ("rsa", "ecdsa", "ed25519")
UDEV_RULES = "/etc/udev/rules.d/70-snf-image-net.rules"
SEED = "/var/lib/cloud/seed/nocloud-net"
CLOUD_CFG = "/etc/cloud/cloud.cfg.d"
CLOUD_DEFAULT_USER = "debian"  # system_info.default_user of Debian's cloud.cfg

# kind -> (MAC of its NIC 0, whether it is deployed with CLOUD_INIT)
KINDS = {
    "ext4-msdos": ("52:54:00:5a:00:01", False),
    "nm": ("52:54:00:5a:00:02", False),
    "networkd": ("52:54:00:5a:00:03", False),
    "cloudinit": ("52:54:00:5a:00:04", True),
}
BOOT_KINDS = ["ext4-msdos", "nm", "networkd", "cloudinit"]
BOOT_TIMEOUT = 360  # seconds to the login prompt (and cloud-init's end); ~60-180 s under TCG on a busy machine


@dataclass
class Deployment:
    """One finished ``create`` of a kind: the disk, what was asked, and what it took."""

    kind: str
    image: guests.GuestImage
    disk: Path
    name: str
    mac: str
    cloud_init: bool
    public_key: str
    seconds: float
    messages: list[dict] = field(default_factory=list)

    @property
    def root_offset(self) -> int:
        table = json.loads(run(["sfdisk", "--json", str(self.disk)]).stdout)["partitiontable"]
        number = self.image.meta["root_partition"]
        part = next(p for p in table["partitions"] if p["node"].endswith(str(number)))
        return part["start"] * SECTOR

    def read(self, path: str) -> str:
        return guests.read_fs_file(self.disk, self.root_offset, None, "ext4", path).decode()

    def exists(self, path: str) -> bool:
        return guests.fs_path_exists(self.disk, self.root_offset, None, "ext4", path)

    def meta_data(self) -> dict:
        """The NoCloud seed's meta-data, parsed (safe_dump folds long keys over lines)."""
        return yaml.safe_load(self.read(f"{SEED}/meta-data"))

    def stat(self, path: str) -> tuple[int, int, int]:
        """(permission bits, uid, gid) of a path in the deployed root, from debugfs."""
        out = run(["debugfs", "-R", f"stat {path}", f"{self.disk}?offset={self.root_offset}"]).stdout
        mode = re.search(r"Mode:\s+0?([0-7]+)", out)
        owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
        assert mode and owner, f"debugfs stat {path}: {out[:500]}"
        return int(mode.group(1), 8) & 0o7777, int(owner.group(1)), int(owner.group(2))


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The one subprocess helper of this module: argument list, text, checked, bounded."""
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=timeout)


@pytest.fixture(scope="module")
def helper_dir() -> Path:
    return helpervm.ensure_helper()


@pytest.fixture(scope="module")
def osdef(tmp_path_factory: pytest.TempPathFactory, helper_dir: Path) -> OsDefinition:
    definition = install(tmp_path_factory.mktemp("linux-guests") / "inst")
    definition.configure(HELPER_DIR=str(helper_dir), HELPER_SOFT_TIMEOUT="400", IMAGE_DIR=str(guests.cache_dir()))
    return definition


@pytest.fixture(scope="module")
def public_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    key = tmp_path_factory.mktemp("sshkey") / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "snf-test@outside", "-f", str(key)])
    return key.with_suffix(".pub").read_text().strip()


_deployments: dict[str, Deployment] = {}


def deploy(kind: str, osdef: OsDefinition, workdir: Path, public_key: str) -> Deployment:
    """create for ``kind`` (once per module run): bigger disk, password, key, static NIC, personality."""
    if kind in _deployments:
        return _deployments[kind]
    mac, cloud_init = KINDS[kind]
    image = guests.guest_image(kind)
    disk = workdir / f"{kind}.raw"
    with open(disk, "wb") as f:
        f.truncate(3 * GiB)
    name = f"{kind.replace('-', '')}.snf.test"
    properties = {"CLOUD_INIT": "yes"} if cloud_init else {}
    personality = [
        {
            "path": PERSONALITY_PATH,
            "contents": base64.b64encode(PERSONALITY_TEXT.encode()).decode(),
            "owner": "root",
            "group": "root",
            "mode": PERSONALITY_MODE,
        }
    ]
    env = create_env(
        name,
        disk,
        OSP_IMG_ID=f"local://{image.path.name}",
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_AUTH_KEYS=public_key,
        OSP_IMG_PERSONALITY=json.dumps(personality),
        OSP_IMG_PROPERTIES=json.dumps(properties),
        NIC_COUNT="1",
        NIC_0_MAC=mac,
        NIC_0_IP=str(ADDRESS.ip),
        NIC_0_MODE="bridged",
        NIC_0_LINK="br0",
        NIC_0_FRONTEND_TYPE="paravirtual",
        NIC_0_NETWORK_NAME="snf-test-net",
        NIC_0_NETWORK_SUBNET=str(ADDRESS.network),
        NIC_0_NETWORK_GATEWAY=GATEWAY,
    )
    started = time.monotonic()
    result = osdef.run("create", env)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    ps = run(["ps", "-eo", "args"]).stdout
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(disk) in line]
    assert not list(osdef.tmpdir.iterdir()), "create left files in its TMPDIR"
    found = Deployment(kind, image, disk, name, mac, cloud_init, public_key, seconds, monitor_messages(result.stderr))
    _deployments[kind] = found
    took = task_seconds(found.messages)
    slow = ", ".join(f"{task} {t:.1f}s" for task, t in sorted(took.items(), key=lambda item: -item[1])[:3])
    keys = took["DeleteSSHKeys"]
    print(f"\n[timing] {kind}: create took {seconds:.1f}s; DeleteSSHKeys {keys:.2f}s; slowest tasks: {slow}")
    return found


@pytest.fixture(scope="module", params=list(KINDS))
def deployment(request: pytest.FixtureRequest, osdef, public_key, tmp_path_factory) -> Deployment:
    return deploy(request.param, osdef, tmp_path_factory.mktemp(request.param), public_key)


# --- read back from outside --------------------------------------------------------------


def test_every_task_ran_and_reported(deployment: Deployment) -> None:
    events = task_events(deployment.messages)
    started = [task for kind, task in events if kind == "task-start"]
    assert started == [task for kind, task in events if kind == "task-end"]
    for task in ("ChangePassword", "AssignHostname", "ConfigureNetwork", "DeleteSSHKeys", "EnforcePersonality"):
        assert task in started
    if deployment.cloud_init:
        assert "InitializeDatasource" in started
    assert not [m for m in deployment.messages if m["type"] == "image-error"]


def test_hostname_and_hosts(deployment: Deployment) -> None:
    short = deployment.name.split(".")[0]
    assert deployment.read("/etc/hostname") == deployment.name + "\n"
    hosts = deployment.read("/etc/hosts")
    assert re.search(rf"^127\.0\.1\.1\s+{re.escape(deployment.name)}\s+{short}\s*$", hosts, re.M), hosts
    assert re.search(r"^127\.0\.0\.1\s+localhost", hosts, re.M), hosts
    if deployment.cloud_init:
        assert deployment.meta_data()["local-hostname"] == deployment.name


def test_password_and_authorized_keys(deployment: Deployment) -> None:
    if deployment.cloud_init:
        cfg = deployment.read(f"{CLOUD_CFG}/98_snf-image-ChangePassword.cfg")
        hashed = re.search(r"root:(\$6\$\S+)", cfg)
        assert hashed and sha512_crypt.verify(PASSWORD, hashed.group(1)), cfg
        assert deployment.stat(f"{CLOUD_CFG}/98_snf-image-ChangePassword.cfg")[0] == 0o600
        assert deployment.meta_data()["public-keys"] == [deployment.public_key]
        return
    root = next(line for line in deployment.read("/etc/shadow").splitlines() if line.startswith("root:"))
    assert sha512_crypt.verify(PASSWORD, root.split(":")[1]), root
    assert deployment.stat("/root/.ssh") == (0o700, 0, 0)
    assert deployment.stat("/root/.ssh/authorized_keys") == (0o600, 0, 0)
    assert deployment.public_key in deployment.read("/root/.ssh/authorized_keys").splitlines()


def test_ssh_host_keys_are_new(deployment: Deployment, tmp_path: Path) -> None:
    if deployment.cloud_init:
        # handed to cloud-init, as the original: it deletes and regenerates them at first boot (checked there)
        assert "ssh_deletekeys: true" in deployment.read(f"{CLOUD_CFG}/98_snf-image-DeleteSSHKeys.cfg")
        return
    for kind in KEY_TYPES:  # the image has all three, so the instance gets all three (made on the host)
        private = f"/etc/ssh/ssh_host_{kind}_key"
        assert deployment.stat(private) == (0o600, 0, 0)
        assert deployment.stat(private + ".pub") == (0o644, 0, 0)
        assert deployment.read(private) != deployment.image.read_file(private).decode()
        public = deployment.read(private + ".pub")
        assert public.endswith(f" root@{deployment.name.split('.')[0]}\n")
        assert public_key_of(deployment.read(private), tmp_path) == public.split()[:2]


def test_machine_id_is_new(deployment: Deployment) -> None:
    machine_id = deployment.read("/etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id)
    assert machine_id != deployment.image.meta["machine_id"]


def test_personality_file(deployment: Deployment) -> None:
    if deployment.cloud_init:
        cfg = deployment.read(f"{CLOUD_CFG}/98_snf-image-EnforcePersonality.cfg")
        assert PERSONALITY_PATH in cfg
        assert base64.b64encode(PERSONALITY_TEXT.encode()).decode() in cfg
        assert f"0{PERSONALITY_MODE:o}" in cfg
        return
    assert deployment.read(PERSONALITY_PATH) == PERSONALITY_TEXT
    assert deployment.stat(PERSONALITY_PATH) == (PERSONALITY_MODE, 0, 0)


def test_network_configuration(deployment: Deployment) -> None:
    mac = deployment.mac
    rules = deployment.read(UDEV_RULES)
    assert f'ATTR{{address}}=="{mac}"' in rules and 'NAME="nic0"' in rules
    style = deployment.image.meta["network"]
    if style in ("ifupdown", "cloudinit"):
        interfaces = deployment.read("/etc/network/interfaces")
        assert "iface nic0 inet static" in interfaces
        assert f"address {ADDRESS.ip}" in interfaces and f"netmask {ADDRESS.netmask}" in interfaces
        assert f"gateway {GATEWAY}" in interfaces
        assert not re.search(r"^\s*iface eth0", interfaces, re.M), "the image's own eth0 stanza is replaced"
    elif style == "nm":
        path = "/etc/NetworkManager/system-connections/snf-image-nic0.nmconnection"
        profile = deployment.read(path)
        assert deployment.stat(path) == (0o600, 0, 0)
        assert f"mac-address={mac.upper()}" in profile
        assert f"address1={ADDRESS.with_prefixlen},{GATEWAY}" in profile
    elif style == "networkd":
        path = "/etc/netplan/60-snf-image.yaml"
        netplan = deployment.read(path)
        assert deployment.stat(path)[0] == 0o600
        assert f"macaddress: {mac}" in netplan and ADDRESS.with_prefixlen in netplan
    if deployment.cloud_init:
        assert "config: disabled" in deployment.read(f"{CLOUD_CFG}/98_snf-image-ConfigureNetwork.cfg")
        seed_network = yaml.safe_load(deployment.read(f"{SEED}/network-config"))
        nic0 = seed_network["config"][0]
        assert (nic0["name"], nic0["mac_address"]) == ("nic0", mac)
        assert nic0["subnets"][0]["address"] == ADDRESS.with_prefixlen


def test_the_filesystem_is_clean(deployment: Deployment) -> None:
    check = subprocess.run(
        ["e2fsck", "-fn", f"{deployment.disk}?offset={deployment.root_offset}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- boot ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOOT_KINDS)
def test_deployed_guest_boots_and_uses_its_configuration(
    kind: str, osdef, public_key, tmp_path_factory, tmp_path: Path
) -> None:
    """Root logs in with the injected password; the NIC has the static address; keys and files are in place."""
    found = deploy(kind, osdef, tmp_path_factory.mktemp(kind), public_key)
    times = guestboot.BootTimes()
    log = tmp_path / "console.log"
    started = time.monotonic()
    with guestboot.booted(
        found.disk,
        found.image.kernel_file,
        found.image.initrd_file,
        found.image.meta["kernel_cmdline"],
        found.mac,
        PASSWORD,
        log,
        times=times,
        ready=r"Cloud-init v\. \S+ finished" if found.cloud_init else None,
        boot_timeout=BOOT_TIMEOUT,
    ) as console:
        state = console.run("systemctl is-system-running --wait", timeout=240)
        assert console.run("hostname") in (found.name, found.name.split(".")[0])
        assert console.run("hostname -f") == found.name  # /etc/hosts' 127.0.1.1 line

        links = console.run("ip -o link show")
        addresses = console.run("ip -o -4 addr show")
        line = next((ln for ln in links.splitlines() if found.mac in ln), "")
        assert line, f"no interface with {found.mac}:\n{links}"
        ifname = line.split(":")[1].strip().split("@")[0]
        assert ifname == "nic0", f"the NIC is {ifname}, not nic0:\n{links}"
        configured = re.compile(rf"^\d+:\s+{ifname}\s+inet {re.escape(ADDRESS.with_prefixlen)}\s", re.M)
        deadline = time.monotonic() + 60
        while not configured.search(addresses):
            if time.monotonic() > deadline:
                raise AssertionError(f"{ifname} has no {ADDRESS}:\n{addresses}\n{console.run('ip -o addr show')}")
            time.sleep(3)
            addresses = console.run("ip -o -4 addr show")
        line = next(ln for ln in addresses.splitlines() if configured.match(ln))
        assert " dynamic " not in line, f"{ifname}'s address came from DHCP, not the configuration: {line}"
        routes = console.run("ip -4 route show default")
        assert f"default via {GATEWAY} dev {ifname}" in routes, routes

        owners = console.run("stat -c '%U %a' /root/.ssh /root/.ssh/authorized_keys")
        assert owners.splitlines() == ["root 700", "root 600"], owners
        assert public_key in console.run("cat /root/.ssh/authorized_keys")
        if found.cloud_init:
            # meta-data public-keys go to cloud-init's default user; root's copy is disabled (disable_root)
            user = CLOUD_DEFAULT_USER
            owners = console.run(f"stat -c '%U %a' /home/{user}/.ssh /home/{user}/.ssh/authorized_keys")
            assert owners.splitlines() == [f"{user} 700", f"{user} 600"], owners
            assert public_key in console.run(f"cat /home/{user}/.ssh/authorized_keys")
            # first-boot secrets are gone once cloud-init has used them
            rc, left = console.status(f"ls {CLOUD_CFG}/98_snf-image-ChangePassword.cfg")
            assert rc != 0, left
            assert console.run(f"stat -c %s {SEED}/user-data") == "0"
        assert console.run(f"cat {PERSONALITY_PATH}") == PERSONALITY_TEXT.strip()
        assert console.run(f"stat -c '%U %G %a' {PERSONALITY_PATH}") == f"root root {PERSONALITY_MODE:o}"
        rc, keys = console.status("ls /etc/ssh/ssh_host_ed25519_key.pub /etc/ssh/ssh_host_rsa_key.pub")
        assert rc == 0, keys
        image_key = found.image.read_file("/etc/ssh/ssh_host_ed25519_key.pub").decode().split()[1]
        assert image_key not in console.run("cat /etc/ssh/ssh_host_ed25519_key.pub"), "the image host key is in use"
        rc, sshd = console.status("systemctl is-active ssh")
        assert rc == 0, f"sshd is not running: {sshd}\n{console.run('systemctl status ssh --no-pager -l')}"
        failed = console.run("systemctl --failed --no-legend --plain")
        if found.cloud_init and state == "degraded" and failed.split()[:1] == ["cloud-config.service"]:
            # the test guest has no locales package, so cloud-init's locale module fails; nothing else may
            modules = re.findall(r"Running module (\S+) .* failed", console.run("cat /var/log/cloud-init.log"))
            assert set(modules) == {"locale"}, modules
        else:
            assert state == "running", f"{state}; failed units:\n{failed}"
    boot = time.monotonic() - started
    print(
        f"\n[timing] {kind}: login prompt after {times.login_prompt:.1f}s, shell after {times.shell:.1f}s, "
        f"checks done after {boot:.1f}s"
    )
