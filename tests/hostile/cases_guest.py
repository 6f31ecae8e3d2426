"""Symlinks (and other odd entries) inside the guest at the paths the tasks write and read.

Each case is the sane small guest with one path changed: the file itself made a symlink, or a
directory on the way, pointing elsewhere in the guest (another task's file, the decoy) or
"outside" it (absolute and ``../../..`` targets, which the jail resolves inside the guest root).
The guest-path policy (README, Security) decides: the last component of a path a task writes is
never followed, and a symlinked directory on the way is refused unless it is one of the standard
layout's links. A refusal must name the path; a success must leave the decoy, the link's target
and the layout links as they were, with the tasks' files where they belong.
"""

from __future__ import annotations

import base64
import json
import stat

from tests.hostile import guest
from tests.hostile.case import Case, tasks_did_their_work
from tests.hostile.guest import DECOY, Tree
from tests.hostile.lab import INSTANCE, Deployment, Lab

LINK = "symbolic link"


def deploy(lab: Lab, edit, **changes: object) -> Deployment:
    image = lab.linux_image(edit)
    return Deployment(f"local://{image.path.name}", **changes)  # type: ignore[arg-type]


def personality(*files: tuple[str, bytes]) -> dict[str, str]:
    entries = [{"path": path, "contents": base64.b64encode(data).decode(), "mode": 0o644} for path, data in files]
    return {"img_personality": json.dumps(entries)}


def untouched(lab: Lab, *paths: str) -> None:
    """These guest files still hold what the image had."""
    found = lab.guest()
    pristine = guest.linux_tree(lab.work / "pristine")
    for path in paths:
        assert found.read(path) == pristine.text(path), f"{path} was changed"


# --- the control -----------------------------------------------------------------------------------


def control_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    keys = found.entry("/usr/home/alice/.ssh/authorized_keys")
    assert keys is not None and (keys.kind, keys.uid, keys.mode & 0o777) == ("regular", 1000, 0o600), keys
    assert "address 192.0.2.10" in found.read("/etc/network/interfaces")
    assert len(found.read("/etc/machine-id")) == 33
    assert found.read("/etc/motd") == "personality\n"


def control(lab: Lab) -> Deployment:
    """The sane guest with the layout links real images have: every task writes where it means to."""
    return deploy(lab, None, osparams=personality(("/etc/motd", b"personality\n")))


# --- a symlinked file --------------------------------------------------------------------------------


def hostname_to_shadow(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("etc/hostname", "/etc/shadow"))


def hosts_outside(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("etc/hosts", "../../../../../../../srv/decoy"))


def shadow_to_decoy(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("etc/shadow", DECOY))


def passwd_to_a_device(lab: Lab) -> Deployment:
    """/etc/passwd -> a character device with the result port's numbers (4:65)."""

    def edit(t: Tree) -> None:
        t.node("dev/ttyS1", stat.S_IFCHR | 0o666, 4, 65)
        t.link("etc/passwd", "/dev/ttyS1")

    return deploy(lab, edit)


def fstab_to_shadow(lab: Lab) -> Deployment:
    """AddSwap edits /etc/fstab, which links to /etc/shadow (MountImage only reads it)."""
    return deploy(lab, lambda t: t.link("etc/fstab", "/etc/shadow"), properties={"SWAP": "2:8"})


def keys_to_shadow(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("root/.ssh/authorized_keys", "/etc/shadow"))


def machine_id_to_decoy(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("etc/machine-id", "../srv/decoy"))


def machine_id_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    entry = found.entry("/etc/machine-id")
    assert entry is not None and entry.kind == "regular", entry
    assert len(found.read("/etc/machine-id")) == 33
    assert found.entry("/var/lib/dbus/machine-id").link == "/etc/machine-id"  # type: ignore[union-attr]


def host_key_to_shadow(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.link("etc/ssh/ssh_host_ed25519_key", "/etc/shadow")
        t.link("etc/ssh/ssh_host_ed25519_key.pub", DECOY)

    return deploy(lab, edit)


def host_key_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    key = found.entry("/etc/ssh/ssh_host_ed25519_key")
    assert key is not None and key.kind == "regular" and key.mode & 0o777 == 0o600, key
    assert found.read("/etc/ssh/ssh_host_ed25519_key").startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def personality_final_link(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("etc/motd", "/etc/shadow"), osparams=personality(("/etc/motd", b"hi\n")))


def personality_final_link_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    assert found.read("/etc/motd") == "hi\n"


def interfaces_to_shadow(lab: Lab) -> Deployment:
    """/etc/network/interfaces -> /etc/shadow: ConfigureNetwork backs up the link (not shadow), writes its own."""
    return deploy(lab, lambda t: t.link("etc/network/interfaces", "/etc/shadow"))


def interfaces_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    entry = found.entry("/etc/network/interfaces")
    assert entry is not None and entry.kind == "regular", entry
    assert "address 192.0.2.10" in found.read("/etc/network/interfaces")
    (stamp,) = found.names("/var/backups/snf-image")
    saved = found.entry(f"/var/backups/snf-image/{stamp}/etc/network/interfaces")
    assert saved is not None and (saved.kind, saved.link) == ("symlink", "/etc/shadow"), saved  # no copy of shadow


def hostname_loop(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.link("etc/hostname", "hostname.d/x")
        t.link("etc/hostname.d", "/etc/hostname")

    return deploy(lab, edit)


def hostname_fifo(lab: Lab) -> Deployment:
    """A FIFO where /etc/hostname should be: reading it would block the helper forever."""
    return deploy(lab, lambda t: t.node("etc/hostname", stat.S_IFIFO | 0o644))


def hostname_device(lab: Lab) -> Deployment:
    """/etc/hostname is a character device with the result port's numbers (4:65)."""
    return deploy(lab, lambda t: t.node("etc/hostname", stat.S_IFCHR | 0o666, 4, 65))


def replaced_node_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab)
    assert found.entry("/etc/hostname").kind == "regular"  # type: ignore[union-attr]


def shadow_directory(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.path("etc/shadow").unlink()
        t.path("etc/shadow").mkdir()

    return deploy(lab, edit)


def hosts_hard_link(lab: Lab) -> Deployment:
    """/etc/hosts is a hard link to /etc/shadow: the same file under two names."""

    def edit(t: Tree) -> None:
        t.path("etc/hosts").unlink()
        t.path("etc/hosts").hardlink_to(t.path("etc/shadow"))

    return deploy(lab, edit)


def hosts_hard_link_harmless(lab: Lab) -> None:
    found = tasks_did_their_work(lab, skip=("/etc/hosts",))
    hosts = found.read("/etc/hosts")
    assert INSTANCE in hosts and lab.guest().read("/etc/shadow") != hosts


# --- a symlinked directory on the way ----------------------------------------------------------------


def etc_elsewhere(lab: Lab) -> Deployment:
    """/etc -> /srv/etc, a whole copy: the guest boots with it, but every write in /etc would land in /srv."""

    def edit(t: Tree) -> None:
        t.path("etc").rename(t.path("srv/etc"))
        t.link("etc", "/srv/etc")

    return deploy(lab, edit)


def etc_network_elsewhere(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.write("srv/net/interfaces", guest.INTERFACES)
        t.link("etc/network", "/srv/net")

    return deploy(lab, edit)


def root_ssh_to_etc(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("root/.ssh", "/etc"))


def home_to_etc(lab: Lab) -> Deployment:
    """alice's home is reached through the layout link /home -> usr/home, then usr/home/alice -> /etc."""
    return deploy(lab, lambda t: t.link("usr/home/alice", "/etc"))


def etc_ssh_outside(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.path("etc/ssh").rename(t.path("srv/ssh"))
        t.link("etc/ssh", "../../../../srv/ssh")

    return deploy(lab, edit)


def nm_connections_to_cron(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.path("etc/cron.d").mkdir(parents=True)
        t.link("etc/NetworkManager/system-connections", "/etc/cron.d")

    return deploy(lab, edit, properties={"NM_NETWORKING": "yes"})


def netplan_elsewhere(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.write("usr/sbin/netplan", "#!/bin/sh\n", 0o755)
        t.path("srv/plans").mkdir(parents=True)
        t.link("etc/netplan", "/srv/plans")

    return deploy(lab, edit)


def udev_rules_elsewhere(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.path("srv/rules").mkdir(parents=True)
        t.link("etc/udev/rules.d", "/srv/rules")

    return deploy(lab, edit)


def backups_to_etc(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("var/backups", "/etc"))


def cloud_seed_to_etc(lab: Lab) -> Deployment:
    def edit(t: Tree) -> None:
        t.write("etc/cloud/cloud.cfg.d/05_logging.cfg", "# the image's own\n")
        t.link("var/lib/cloud", "/etc")

    return deploy(lab, edit, properties={"CLOUD_INIT": "yes"})


def personality_through_link(lab: Lab) -> Deployment:
    return deploy(lab, lambda t: t.link("opt", "/etc"), osparams=personality(("/opt/app/app.conf", b"x\n")))


def layout_link_hijacked(lab: Lab) -> Deployment:
    """/home is where the layout has a link, but this one points to /etc: alice's keys would land in /etc."""

    def edit(t: Tree) -> None:
        t.write("etc/alice/.profile", "")
        t.link("home", "/etc")

    return deploy(lab, edit)


CASES = [
    Case("guest-control", "control: a sane guest with the layout links of real images (merged /usr, /var/run, "
         "/home -> usr/home, dbus machine-id link); every task writes where it means", control,
         harmless=control_harmless),
    Case("guest-hostname-to-shadow", "/etc/hostname -> /etc/shadow", hostname_to_shadow, f"/etc/hostname.*{LINK}"),
    Case("guest-hosts-outside", "/etc/hosts -> ../../../../../../../srv/decoy (climbing out)", hosts_outside,
         f"/etc/hosts.*{LINK}"),
    Case("guest-shadow-to-decoy", "/etc/shadow -> /srv/decoy (the password would land there)", shadow_to_decoy,
         f"/etc/shadow.*{LINK}"),
    Case("guest-passwd-to-device", "/etc/passwd -> a device node with the result port's numbers",
         passwd_to_a_device, "/etc/passwd"),
    Case("guest-fstab-to-shadow", "/etc/fstab -> /etc/shadow, edited by AddSwap", fstab_to_shadow,
         f"/etc/fstab.*{LINK}"),
    Case("guest-keys-to-shadow", "/root/.ssh/authorized_keys -> /etc/shadow", keys_to_shadow,
         f"authorized_keys.*{LINK}"),
    Case("guest-machine-id-to-decoy", "/etc/machine-id -> ../srv/decoy", machine_id_to_decoy,
         harmless=machine_id_harmless),
    Case("guest-host-key-to-shadow", "SSH host key -> /etc/shadow, its .pub -> the decoy", host_key_to_shadow,
         harmless=host_key_harmless),
    Case("guest-personality-final-link", "personality file /etc/motd -> /etc/shadow", personality_final_link,
         harmless=personality_final_link_harmless),
    Case("guest-interfaces-to-shadow", "/etc/network/interfaces -> /etc/shadow", interfaces_to_shadow,
         harmless=interfaces_harmless),
    Case("guest-hostname-loop", "/etc/hostname in a loop of symlinks", hostname_loop, "/etc/hostname"),
    Case("guest-hostname-fifo", "/etc/hostname is a FIFO (a read would block)", hostname_fifo,
         harmless=replaced_node_harmless),
    Case("guest-hostname-device", "/etc/hostname is a device node with the result port's numbers",
         hostname_device, harmless=replaced_node_harmless),
    Case("guest-shadow-directory", "/etc/shadow is a directory", shadow_directory, "/etc/shadow"),
    Case("guest-hosts-hard-link", "/etc/hosts is a hard link to /etc/shadow", hosts_hard_link,
         harmless=hosts_hard_link_harmless),
    Case("guest-etc-elsewhere", "/etc -> /srv/etc (every file the tasks write)", etc_elsewhere,
         f"/etc is a {LINK}"),
    Case("guest-etc-network-elsewhere", "/etc/network -> /srv/net (interfaces written there)",
         etc_network_elsewhere, f"/etc/network.*{LINK}"),
    Case("guest-root-ssh-to-etc", "/root/.ssh -> /etc (authorized_keys would land in /etc)", root_ssh_to_etc,
         f"/root/.ssh.*{LINK}"),
    Case("guest-home-to-etc", "alice's home (through /home -> usr/home) -> /etc", home_to_etc,
         f"/home/alice.*{LINK}"),
    Case("guest-etc-ssh-outside", "/etc/ssh -> ../../../../srv/ssh (host keys written there)", etc_ssh_outside,
         f"/etc/ssh.*{LINK}"),
    Case("guest-nm-connections-to-cron", "NetworkManager's system-connections -> /etc/cron.d",
         nm_connections_to_cron, f"system-connections.*{LINK}"),
    Case("guest-netplan-elsewhere", "/etc/netplan -> /srv/plans", netplan_elsewhere, f"/etc/netplan.*{LINK}"),
    Case("guest-udev-rules-elsewhere", "/etc/udev/rules.d -> /srv/rules", udev_rules_elsewhere,
         f"/etc/udev/rules.d.*{LINK}"),
    Case("guest-backups-to-etc", "/var/backups -> /etc (ConfigureNetwork's backups)", backups_to_etc,
         f"/var/backups.*{LINK}"),
    Case("guest-cloud-seed-to-etc", "/var/lib/cloud -> /etc under CLOUD_INIT (the user-data's seed)",
         cloud_seed_to_etc, f"/var/lib/cloud.*{LINK}"),
    Case("guest-personality-through-link", "personality /opt/app/app.conf with /opt -> /etc",
         personality_through_link, f"/opt.*{LINK}"),
    Case("guest-layout-link-hijacked", "/home -> /etc (a layout link's name, a foreign target)",
         layout_link_hijacked, f"/home.*{LINK}"),
]  # fmt: skip
