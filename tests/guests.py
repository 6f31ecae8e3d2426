"""Real Debian guest images for the test suite, built once per machine and cached.

End-to-end tests need something real to deploy: a Debian bookworm system that
boots, has a partition table, an fstab naming filesystems by UUID, network
configuration in the styles the product edits, SSH host keys to delete.  Building
one takes minutes, so every artifact lives in a cache directory
(``guests/`` under ``SNF_IMAGE_TEST_CACHE``, default ``/var/cache/snf-image-tests``) under a name
that carries a hash of everything it is built from: change a package list, a
kind's parameters or a ``*_RECIPE_VERSION`` and that artifact (and only what is
derived from it) is rebuilt.

Stages:

* a shared debootstrap base rootfs (directory), the slow part (~2-3 min);
* per kind: copy the base, install the kind's extra packages in a chroot,
  write the configuration, then make the filesystems *without mounting them*
  (``mke2fs -d``, ``mkfs.xfs -p`` from a generated protofile) and assemble a
  sparse raw disk (``sfdisk`` script + ``dd conv=notrunc,sparse``).

Each artifact ``<kind>-<key>.img`` has ``<kind>-<key>.json`` metadata beside it
and host copies of the guest's kernel and initrd (``.vmlinuz``, ``.initrd``) so a
test can boot the deployed guest with ``qemu -kernel/-initrd`` without reading
the guest filesystem on the host.

Other tests call :func:`guest_image`; the README's demo calls :func:`sample_image`.
From a shell: ``/usr/bin/python3 -m tests.guests build ext4-msdos xfs-gpt``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SUITE = "bookworm"
MIRROR = os.environ.get("SNF_IMAGE_TEST_MIRROR", "http://deb.debian.org/debian")
DEFAULT_CACHE = Path("/var/cache/snf-image-tests")

# Bump when the base build steps change (rebuilds the base and every kind).
BASE_RECIPE_VERSION = 1
# Bump when the per-kind customization or assembly changes (rebuilds the kinds only).
KIND_RECIPE_VERSION = 3

# What a small bootable, SSH-reachable Debian guest needs on top of minbase.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "openssh-server",
    "passwd",
    "sudo",
    "iproute2",
    "procps",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "e2fsprogs",
)

MiB = 1024 * 1024
SECTOR = 512
DISK_SIZE = 1536 * MiB
BOOT_SIZE = 255 * MiB
HOSTNAME = "snf-guest"

# Deterministic UUIDs: uuid5(namespace, "<kind>/<role>").
UUID_NAMESPACE = uuid.UUID("5f0c6c8e-6a55-4c0b-9d1e-7a1d5b1e6a11")

GPT_LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GPT_ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

# Packages whose installed version goes into the metadata when present.
PACKAGES_OF_INTEREST: tuple[str, ...] = (
    "linux-image-cloud-amd64",
    "systemd",
    "openssh-server",
    "ifupdown",
    "network-manager",
    "netplan.io",
    "cloud-init",
    "xfsprogs",
    "e2fsprogs",
)

HOST_TOOLS: dict[str, str] = {
    # command -> Debian package providing it
    "debootstrap": "debootstrap",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "sfdisk": "fdisk",
    "blkid": "util-linux",
}

_T0 = time.monotonic()


# --------------------------------------------------------------------------- kinds


@dataclasses.dataclass(frozen=True)
class KindSpec:
    """What distinguishes one kind of guest; every field goes into its cache key."""

    name: str
    description: str
    # "msdos", "gpt", or None for a bare filesystem image (extdump).
    table: str | None
    root_fs: str
    network: str  # ifupdown | nm | networkd (netplan) | systemd-networkd (no netplan) | cloudinit
    packages: tuple[str, ...] = ()
    purge: tuple[str, ...] = ()
    separate_boot: bool = False
    # The kind whose root tree and UUIDs this kind shares (extdump <-> ext4-msdos).
    tree_of: str | None = None
    # The whole disk's size (bytes); the last partition takes what the others leave.
    size: int = DISK_SIZE


KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "ext4-msdos",
            "msdos table, one ext4 root partition at 1 MiB, ifupdown eth0 dhcp",
            table="msdos",
            root_fs="ext4",
            network="ifupdown",
        ),
        KindSpec(
            "xfs-gpt",
            "GPT table, ext4 /boot (p1) and XFS root (p2), both mounted by UUID",
            table="gpt",
            root_fs="xfs",
            network="ifupdown",
            packages=("xfsprogs",),
            separate_boot=True,
        ),
        KindSpec(
            "nm",
            "like ext4-msdos with NetworkManager; interfaces reduced to lo",
            table="msdos",
            root_fs="ext4",
            network="nm",
            packages=("network-manager",),
        ),
        KindSpec(
            "networkd",
            "like ext4-msdos with systemd-networkd + netplan.io, ifupdown purged",
            table="msdos",
            root_fs="ext4",
            network="networkd",
            packages=("netplan.io",),
            purge=("ifupdown", "isc-dhcp-client"),
        ),
        KindSpec(
            "systemd-networkd",
            "like ext4-msdos with systemd-networkd alone (no netplan): a DHCP .network for en*/eth*, ifupdown purged",
            table="msdos",
            root_fs="ext4",
            network="systemd-networkd",
            purge=("ifupdown", "isc-dhcp-client"),
        ),
        KindSpec(
            "cloudinit",
            "like ext4-msdos with cloud-init installed (NoCloud seeded by the product)",
            table="msdos",
            root_fs="ext4",
            network="cloudinit",
            packages=("cloud-init",),
        ),
        KindSpec(
            "extdump",
            "bare ext4 filesystem image of the ext4-msdos root (img_format=extdump)",
            table=None,
            root_fs="ext4",
            network="ifupdown",
            tree_of="ext4-msdos",
        ),
    )
}

#: Kinds only the benchmarks deploy (built on demand like the others, not by the test suite).
BENCHMARK_KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec(
            "xfs-gpt-2g",
            "xfs-gpt on a 2 GiB disk: the image of issue #14's deployment figures (benchmarks/deploy.py)",
            table="gpt",
            root_fs="xfs",
            network="ifupdown",
            packages=("xfsprogs",),
            separate_boot=True,
            size=2048 * MiB,
        ),
    )
}

SAMPLE_KIND = "ext4-msdos"


def spec_of(kind: str) -> KindSpec:
    """A kind of the suite or of the benchmarks; ValueError for anything else."""
    spec = KINDS.get(kind) or BENCHMARK_KINDS.get(kind)
    if spec is None:
        raise ValueError(f"unknown guest kind {kind!r}; known: {', '.join([*KINDS, *BENCHMARK_KINDS])}")
    return spec


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of a kind's disk layout (bytes, 1-based number)."""

    number: int
    start: int
    size: int
    fs_type: str
    mountpoint: str
    label: str
    fs_uuid: str
    part_uuid: str
    gpt_type: str | None = None


def kind_uuid(kind: str, role: str) -> str:
    """Deterministic UUID for a kind's filesystem/partition, so fstab can name it before mkfs."""
    return str(uuid.uuid5(UUID_NAMESPACE, f"{kind}/{role}"))


def layout(spec: KindSpec) -> list[Partition]:
    """The partitions of a kind (for extdump: the one filesystem, numbered 1 as the product exposes it)."""
    tree = spec.tree_of or spec.name
    if spec.table == "gpt":
        boot_start = 1 * MiB
        root_start = boot_start + BOOT_SIZE
        root_size = spec.size - root_start - 1 * MiB  # leave room for the backup GPT
        return [
            Partition(
                1,
                boot_start,
                BOOT_SIZE,
                "ext4",
                "/boot",
                "boot",
                kind_uuid(tree, "boot"),
                kind_uuid(tree, "part-boot"),
                GPT_LINUX_FS,
            ),
            Partition(
                2,
                root_start,
                root_size,
                spec.root_fs,
                "/",
                "root",
                kind_uuid(tree, "root"),
                kind_uuid(tree, "part-root"),
                GPT_ROOT_X86_64,
            ),
        ]
    root_size = spec.size - 1 * MiB
    return [Partition(1, 1 * MiB, root_size, spec.root_fs, "/", "root", kind_uuid(tree, "root"), "", None)]


def disk_size(spec: KindSpec) -> int:
    """Virtual size of the artifact: the whole disk, or the bare filesystem for extdump."""
    return spec.size if spec.table else layout(spec)[0].size


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def base_key() -> str:
    """Cache key of the base rootfs: suite, variant, package list and base recipe version."""
    return _digest(
        {
            "suite": SUITE,
            "variant": "minbase",
            "packages": sorted(BASE_PACKAGES),
            "recipe": BASE_RECIPE_VERSION,
        }
    )


def cache_key(kind: str) -> str:
    """Cache key of a kind: its base, its parameters, its layout and the kind recipe version."""
    spec = spec_of(kind)
    inputs: dict[str, Any] = {
        "base": base_key(),
        "recipe": KIND_RECIPE_VERSION,
        "spec": _spec_fields(spec),
        "layout": [dataclasses.asdict(p) for p in layout(spec)],
        "disk_size": disk_size(spec),
        "hostname": HOSTNAME,
    }
    if spec.tree_of:
        tree_spec = KINDS[spec.tree_of]
        inputs["tree"] = {
            "spec": _spec_fields(tree_spec),
            "layout": [dataclasses.asdict(p) for p in layout(tree_spec)],
        }
    return _digest(inputs)


def _spec_fields(spec: KindSpec) -> dict[str, Any]:
    """A kind's fields for its key, without the size: ``disk_size`` and the layout carry it."""
    return {name: value for name, value in dataclasses.asdict(spec).items() if name != "size"}


# --------------------------------------------------------------------------- helpers


def cache_dir() -> Path:
    """Where guest artifacts live (guests/ of the suite's cache); survives between runs on this machine."""
    path = Path(os.environ.get("SNF_IMAGE_TEST_CACHE", str(DEFAULT_CACHE))) / "guests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(msg: str) -> None:
    """Progress on stderr: builds take minutes and a silent test looks hung."""
    print(f"[guests {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's last output: a build log is the only clue."""

    def __str__(self) -> str:
        tail = "\n".join(str(x).rstrip() for x in (self.output, self.stderr) if x)
        return f"{super().__str__()}\n{tail[-3000:]}" if tail else super().__str__()


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """The one subprocess helper: argument lists, check=True, output kept for the error message."""
    argv = [os.fspath(a) for a in args]
    proc = subprocess.run(
        argv,
        env=env,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if not capture else subprocess.PIPE,
        check=False,
    )
    if proc.returncode != 0:
        out = (proc.stdout or b"").decode(errors="replace")[-4000:]
        err = (proc.stderr or b"").decode(errors="replace")[-4000:] if capture else ""
        raise CommandFailed(proc.returncode, argv, output=out, stderr=err)
    return proc


def missing_host_tools() -> list[str]:
    """Debian packages to install on the host before images can be built."""
    return sorted(
        {
            pkg
            for tool, pkg in HOST_TOOLS.items()
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists() and not Path("/sbin", tool).exists()
        }
    )


def ensure_host_tools() -> None:
    """Install the missing build tools with apt-get: a fresh CI machine has only what the project installs."""
    missing = missing_host_tools()
    if not missing:
        return
    log(f"installing host tools: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def _tool(name: str) -> str:
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if Path(d, name).exists():
            return str(Path(d, name))
    return name


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (from /proc/self/mounts)."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt == prefix or mnt.startswith(prefix + "/"):
            points.append(mnt)
    return sorted(points, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts anything left mounted inside (a killed build's chroot /proc)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        for mnt in _mounts_under(path):
            subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock so two pytest processes never build the same artifact twice."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {path.name} (another process is building it)")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _clean_stale_tmp(final: Path) -> None:
    """Remove half-built leftovers of final; only called while holding final's lock."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        log(f"removing stale {stale.name}")
        remove_tree(stale)


def disk_usage(path: Path) -> int:
    """Bytes actually allocated (sparse files use far less than their size)."""
    return path.stat().st_blocks * 512


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- chroot


CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "HOME": "/root",
}


@contextlib.contextmanager
def chroot_session(root: Path) -> Iterator[None]:
    """/proc mounted, services forbidden (policy-rc.d 101), host DNS; all undone on exit."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    if resolv.is_symlink():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    run(["mount", "-t", "proc", "proc", proc])
    try:
        yield
    finally:
        for mnt in _mounts_under(root):
            if subprocess.run(["umount", mnt], check=False).returncode != 0:
                subprocess.run(["umount", "-l", mnt], check=False)
        policy.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


def in_chroot(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside the guest tree (call within chroot_session)."""
    return run(["chroot", root, *args], env=CHROOT_ENV)


def apt_install(root: Path, packages: Sequence[str], purge: Sequence[str] = ()) -> None:
    """Install (without recommends) and purge packages, rebuild the initramfs, drop apt's caches.

    The initramfs is rebuilt even without packages: the one debootstrap made
    predates /etc/fstab, so it lacks fsck for the root filesystem.
    """
    with chroot_session(root):
        if packages or purge:
            in_chroot(root, "apt-get", "update", "-qq")
        if packages:
            in_chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages)
        if purge:
            in_chroot(root, "apt-get", "purge", "-y", "-qq", *purge)
            in_chroot(root, "apt-get", "autoremove", "--purge", "-y", "-qq")
        in_chroot(root, "update-initramfs", "-u", "-k", "all")
        in_chroot(root, "apt-get", "clean")
    _drop_apt_lists(root)


def _drop_apt_lists(root: Path) -> None:
    lists = root / "var/lib/apt/lists"
    if lists.is_dir():
        for entry in lists.iterdir():
            if entry.is_file():
                entry.unlink()
    for cache_bin in (root / "var/cache/apt").glob("*.bin"):
        cache_bin.unlink()


def installed_versions(root: Path) -> dict[str, str]:
    """Versions of the packages of interest installed in the tree (read from its dpkg database)."""
    out = run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"],
        capture=True,
    ).stdout.decode()
    versions = {}
    for line in out.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if name in PACKAGES_OF_INTEREST and status.startswith("ii"):
            versions[name] = version
    return versions


# --------------------------------------------------------------------------- base


def base_rootfs() -> Path:
    """The shared debootstrap tree (cached directory), building it if missing."""
    final = cache_dir() / f"base-{SUITE}-{base_key()}"
    if (final / "etc/os-release").exists():
        return final
    with file_lock(final.with_name(final.name + ".lock")):
        if (final / "etc/os-release").exists():
            return final
        ensure_host_tools()
        _clean_stale_tmp(final)
        tmp = _tmp_name(final)
        started = time.monotonic()
        try:
            log(f"debootstrap {SUITE} base -> {final.name} (a few minutes)")
            run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, tmp, MIRROR])
            _configure_base(tmp)
            os.rename(tmp, final)
        finally:
            remove_tree(tmp)
        log(f"base built in {time.monotonic() - started:.0f}s")
    return final


def _configure_base(root: Path) -> None:
    """Settings every kind shares, done once so each kind doesn't pay for them."""
    with chroot_session(root):
        in_chroot(root, "apt-get", "clean")
    _drop_apt_lists(root)
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://security.debian.org/debian-security {SUITE}-security main\n"
    )


# --------------------------------------------------------------------------- kinds: tree


INTERFACES_HEADER = """\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
"""

INTERFACES_ETH0 = """
# The primary network interface
allow-hotplug eth0
iface eth0 inet dhcp
"""

NETPLAN_YAML = """\
# Written by the snf-image test suite's guest builder.
network:
  version: 2
  renderer: networkd
  ethernets:
    eth0:
      dhcp4: true
    all-en:
      match:
        name: "en*"
      dhcp4: true
"""

NETWORKD_DHCP = """\
# Written by the snf-image test suite's guest builder.
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""

CLOUD_CFG = """\
# Only look where the product seeds us: no slow probing of cloud metadata services.
datasource_list: [ NoCloud, ConfigDrive, None ]
"""


def fstab_text(parts: Sequence[Partition]) -> str:
    """fstab by UUID, as Debian's installer writes it."""
    lines = [
        "# /etc/fstab: static file system information.",
        "#",
        "# <file system> <mount point>   <type>  <options>       <dump>  <pass>",
    ]
    for p in sorted(parts, key=lambda p: p.mountpoint):
        if p.mountpoint == "/":
            opts = "errors=remount-ro" if p.fs_type == "ext4" else "defaults"
            passno = 1 if p.fs_type == "ext4" else 0
        else:
            opts, passno = "defaults", 2
        lines.append(f"UUID={p.fs_uuid} {p.mountpoint:<15} {p.fs_type:<7} {opts:<15} 0       {passno}")
    return "\n".join(lines) + "\n"


def hosts_text(hostname: str) -> str:
    return (
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n\n"
        "# The following lines are desirable for IPv6 capable hosts\n"
        "::1     localhost ip6-localhost ip6-loopback\n"
        "ff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
    )


def customize_tree(root: Path, spec: KindSpec) -> None:
    """Install the kind's packages and write its configuration into the copied base tree."""
    tree = spec.tree_of or spec.name
    etc = root / "etc"
    (etc / "fstab").write_text(fstab_text(layout(spec)))
    (etc / "hostname").write_text(HOSTNAME + "\n")
    (etc / "hosts").write_text(hosts_text(HOSTNAME))
    for name in ("fstab", "hostname", "hosts"):
        (etc / name).chmod(0o644)
    # initramfs-tools finds the root fs type (for fsck in the initrd) by probing the
    # fstab's device, which doesn't exist while building: name the type instead.
    (etc / "initramfs-tools/conf.d/snf-guest-fstype").write_text(f"FSTYPE={spec.root_fs}\n")
    log(
        f"{spec.name}: apt-get install {' '.join(spec.packages) or '-'}"
        f"{' ; purge ' + ' '.join(spec.purge) if spec.purge else ''}; update-initramfs"
    )
    apt_install(root, spec.packages, spec.purge)
    (etc / "machine-id").write_text(uuid.UUID(kind_uuid(tree, "machine-id")).hex + "\n")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.parent.is_dir():
        dbus_id.unlink(missing_ok=True)
        dbus_id.symlink_to("/etc/machine-id")
    if (etc / "resolv.conf").is_symlink():
        (etc / "resolv.conf").unlink()
    (etc / "resolv.conf").write_text("")
    (etc / "resolv.conf").chmod(0o644)
    _lock_root_password(root)
    _serial_console(root)
    _network(root, spec)
    keys = sorted((etc / "ssh").glob("ssh_host_*_key"))
    if not keys:
        raise RuntimeError(f"{spec.name}: no SSH host keys in the tree")


def _lock_root_password(root: Path) -> None:
    """Root is locked (as a fresh install with a sudo user would be); the product sets a password."""
    shadow = root / "etc/shadow"
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            pw = fields[1]
            fields[1] = pw if pw.startswith("!") else "!" + (pw or "*")
        lines.append(":".join(fields))
    shadow.write_text("\n".join(lines) + "\n")


def _serial_console(root: Path) -> None:
    """A ttyS0 login must work when the boot test passes console=ttyS0."""
    for unit in ("serial-getty@.service", "serial-getty@ttyS0.service", "getty.target"):
        masked = root / "etc/systemd/system" / unit
        if masked.is_symlink() and os.readlink(masked) == "/dev/null":
            masked.unlink()
    securetty = root / "etc/securetty"
    if securetty.exists() and "ttyS0" not in securetty.read_text().split():
        with securetty.open("a") as fh:
            fh.write("ttyS0\n")


def _network(root: Path, spec: KindSpec) -> None:
    etc = root / "etc"
    interfaces = etc / "network/interfaces"
    if spec.network == "ifupdown":
        interfaces.write_text(INTERFACES_HEADER + INTERFACES_ETH0)
    elif spec.network == "nm":
        interfaces.write_text(INTERFACES_HEADER)
    elif spec.network == "cloudinit":
        interfaces.write_text(INTERFACES_HEADER)
        (etc / "cloud/cloud.cfg.d/90_snf_datasources.cfg").write_text(CLOUD_CFG)
    elif spec.network == "networkd":
        interfaces.unlink(missing_ok=True)
        netplan = etc / "netplan/50-snf-guest.yaml"
        netplan.parent.mkdir(parents=True, exist_ok=True)
        netplan.write_text(NETPLAN_YAML)
        netplan.chmod(0o600)
        _enable_networkd(etc)
    elif spec.network == "systemd-networkd":
        interfaces.unlink(missing_ok=True)
        (etc / "systemd/network").mkdir(parents=True, exist_ok=True)
        (etc / "systemd/network/50-snf-guest.network").write_text(NETWORKD_DHCP)
        _enable_networkd(etc)
    else:
        raise ValueError(f"unknown network style {spec.network!r}")


def _enable_networkd(etc: Path) -> None:
    wants = etc / "systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "systemd-networkd.service"
    if not link.exists():
        link.symlink_to("/lib/systemd/system/systemd-networkd.service")


def kernel_paths(root: Path) -> tuple[str, str]:
    """Guest paths of the newest kernel and its initrd (what the boot test hands to qemu)."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RuntimeError(f"no kernel under {root}/boot")
    kernel = kernels[-1]
    initrd = root / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-", 1)
    if not initrd.exists():
        raise RuntimeError(f"no {initrd.name} next to {kernel.name}")
    return f"/boot/{kernel.name}", f"/boot/{initrd.name}"


# --------------------------------------------------------------------------- filesystems


def make_ext4(tree: Path, image: Path, size: int, fs_uuid: str, label: str) -> None:
    """Populated ext4 straight from a directory: no mount, no loop device."""
    with open(image, "wb") as fh:
        fh.truncate(size)
    run(
        [
            _tool("mke2fs"),
            "-q",
            "-F",
            "-t",
            "ext4",
            "-U",
            fs_uuid,
            "-L",
            label,
            "-E",
            f"hash_seed={fs_uuid}",
            "-d",
            tree,
            image,
        ]
    )


def make_xfs(tree: Path, image: Path, size: int, fs_uuid: str, label: str, workdir: Path) -> None:
    """XFS populated through a loop mount of the fixture's own image file, unmounted in finally.

    mkfs.xfs -p (protofile) was tried first and cannot carry a full Debian root:
    a name starting with ':' (ucf's cache) is a protofile comment, and it has no
    sticky bit, xattrs, hard links or timestamps.
    """
    with open(image, "wb") as fh:
        fh.truncate(size)
    run([_tool("mkfs.xfs"), "-q", "-f", "-m", f"uuid={fs_uuid}", "-L", label, image])
    mnt = workdir / "xfs-mnt"
    mnt.mkdir()
    run(["mount", "-t", "xfs", "-o", "loop", image, mnt])
    try:
        run(["cp", "-a", f"{tree}/.", f"{mnt}/"])
    finally:
        if subprocess.run(["umount", mnt], check=False).returncode != 0:
            subprocess.run(["umount", "-l", mnt], check=False)
    mnt.rmdir()


# --------------------------------------------------------------------------- disk


def sfdisk_script(spec: KindSpec) -> str:
    """The partition table as an sfdisk script: explicit sectors, deterministic ids."""
    tree = spec.tree_of or spec.name
    parts = layout(spec)
    if spec.table == "msdos":
        disk_id = "0x" + uuid.UUID(kind_uuid(tree, "disk")).hex[:8]
        lines = ["label: dos", f"label-id: {disk_id}", "unit: sectors", ""]
        for p in parts:
            lines.append(
                f"start={p.start // SECTOR}, size={p.size // SECTOR}, type=83"
                + (", bootable" if p.mountpoint == "/" else "")
            )
    else:
        lines = ["label: gpt", f"label-id: {kind_uuid(tree, 'disk').upper()}", "unit: sectors", ""]
        for p in parts:
            lines.append(
                f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.gpt_type}, "
                f"uuid={p.part_uuid.upper()}, name={p.label}"
            )
    return "\n".join(lines) + "\n"


def assemble_disk(spec: KindSpec, fs_images: dict[int, Path], image: Path) -> None:
    """Sparse raw disk: partition table from a script, filesystems copied at their offsets."""
    with open(image, "wb") as fh:
        fh.truncate(spec.size)
    run([_tool("sfdisk"), "--quiet", "--no-reread", "--no-tell-kernel", image], input=sfdisk_script(spec).encode())
    for p in layout(spec):
        src = fs_images[p.number]
        if src.stat().st_size != p.size:
            raise RuntimeError(f"{src} is {src.stat().st_size} bytes, partition {p.number} is {p.size}")
        run(["dd", f"if={src}", f"of={image}", "bs=1M", f"seek={p.start // MiB}", "conv=notrunc,sparse", "status=none"])


# --------------------------------------------------------------------------- artifacts


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A cached guest artifact: the raw image and its metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def metadata_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def kernel_file(self) -> Path:
        """Host copy of the guest's kernel, for qemu -kernel."""
        return Path(self.meta["kernel_file"])

    @property
    def initrd_file(self) -> Path:
        return Path(self.meta["initrd_file"])

    @property
    def root_uuid(self) -> str:
        return self.meta["fs_uuids"]["/"]

    def _locate(self, path: str) -> tuple[int, int | None, str, str]:
        """(offset, size, fs type, path inside that filesystem) of a guest path."""
        if not self.meta["partitions"]:
            return 0, None, self.meta["fs_type"], path
        best = max(
            (
                p
                for p in self.meta["partitions"]
                if path == p["mountpoint"] or path.startswith(p["mountpoint"].rstrip("/") + "/")
            ),
            key=lambda p: len(p["mountpoint"]),
        )
        inner = "/" + path[len(best["mountpoint"]) :].lstrip("/")
        return best["start"], best["size"], best["fs_type"], inner

    def read_file(self, path: str) -> bytes:
        """A file of the pristine guest, read from outside (e.g. to compare with a deployed disk)."""
        return read_fs_file(self.path, *self._locate(path))

    def exists(self, path: str) -> bool:
        """Whether a path (file, dir or dangling symlink) exists in the pristine guest."""
        return fs_path_exists(self.path, *self._locate(path))


@contextlib.contextmanager
def mounted_readonly(image: Path, offset: int, size: int | None, fs_type: str) -> Iterator[Path]:
    """Read-only loop mount of one filesystem inside an image file (no journal replay); always unmounted."""
    opts = ["ro", "loop", f"offset={offset}"] + ([f"sizelimit={size}"] if size else [])
    opts.append("norecovery" if fs_type == "xfs" else "noload")
    mnt = Path(tempfile.mkdtemp(prefix="snf-guest-ro-"))
    try:
        run(["mount", "-t", fs_type, "-o", ",".join(opts), image, mnt])
        try:
            yield mnt
        finally:
            if subprocess.run(["umount", mnt], check=False).returncode != 0:
                subprocess.run(["umount", "-l", mnt], check=False)
    finally:
        mnt.rmdir()


def _debugfs(image: Path, offset: int, request: str) -> subprocess.CompletedProcess[bytes]:
    return run([_tool("debugfs"), "-R", request, f"{image}?offset={offset}"], capture=True)


def read_fs_file(image: Path, offset: int, size: int | None, fs_type: str, path: str) -> bytes:
    """Contents of path in the filesystem at offset: debugfs for ext*, a read-only mount otherwise."""
    if fs_type.startswith("ext"):
        proc = _debugfs(image, offset, f"cat {path}")
        if b"not found" in proc.stderr or b"File not found" in proc.stderr:
            raise FileNotFoundError(path)
        return proc.stdout
    with mounted_readonly(image, offset, size, fs_type) as mnt:
        return (mnt / path.lstrip("/")).read_bytes()


def fs_path_exists(image: Path, offset: int, size: int | None, fs_type: str, path: str) -> bool:
    """Whether path exists (without following a final symlink) in the filesystem at offset."""
    if fs_type.startswith("ext"):
        return b"not found" not in _debugfs(image, offset, f"stat {path}").stderr
    with mounted_readonly(image, offset, size, fs_type) as mnt:
        target = mnt / path.lstrip("/")
        return target.exists() or target.is_symlink()


def artifact_stem(kind: str) -> Path:
    return cache_dir() / f"{kind}-{cache_key(kind)}"


def _load(stem: Path) -> GuestImage | None:
    image, meta = stem.with_suffix(".img"), stem.with_suffix(".json")
    if not (image.exists() and meta.exists()):
        return None
    data = json.loads(meta.read_text())
    # Paths beside the image, wherever the cache directory now is.
    data["kernel_file"] = str(stem.with_suffix(".vmlinuz"))
    data["initrd_file"] = str(stem.with_suffix(".initrd"))
    if not (Path(data["kernel_file"]).exists() and Path(data["initrd_file"]).exists()):
        return None
    return GuestImage(image, data)


def guest_image(kind: str) -> GuestImage:
    """The cached artifact of a kind, built (with its base) if missing; what tests call."""
    spec = spec_of(kind)
    stem = artifact_stem(kind)
    found = _load(stem)
    if found:
        return found
    base = base_rootfs()
    with file_lock(stem.with_suffix(".lock")):
        found = _load(stem)
        if found:
            return found
        _clean_stale_tmp(stem)
        work = _tmp_name(stem)
        started = time.monotonic()
        try:
            work.mkdir()
            _build(spec, base, stem, work)
        finally:
            remove_tree(work)
        log(f"{kind}: built in {time.monotonic() - started:.0f}s")
    found = _load(stem)
    if found is None:
        raise RuntimeError(f"{kind}: build finished without an artifact at {stem}")
    return found


def sample_image() -> GuestImage:
    """The smallest kind that shows a deployment working end to end (README demo)."""
    return guest_image(SAMPLE_KIND)


def _build(spec: KindSpec, base: Path, stem: Path, work: Path) -> None:
    started = time.monotonic()
    parts = layout(spec)
    fs_images: dict[int, Path] = {}
    extdump = KINDS["extdump"]
    reuse = spec.table and extdump.tree_of == spec.name
    if reuse:
        # Same tree, same UUIDs: assemble the disk around the cached extdump filesystem.
        src = guest_image("extdump")
        fs_images[1] = src.path
        kernel, initrd = src.meta["kernel"], src.meta["initrd"]
        versions = src.meta["packages"]
        ssh_keys = src.meta["ssh_host_keys"]
        shutil.copyfile(src.kernel_file, work / "vmlinuz")
        shutil.copyfile(src.initrd_file, work / "initrd")
    else:
        tree = work / "root"
        log(f"{spec.name}: copying base tree")
        run(["cp", "-a", "--reflink=auto", base, tree])
        customize_tree(tree, KINDS[spec.tree_of] if spec.tree_of else spec)
        kernel, initrd = kernel_paths(tree)
        versions = installed_versions(tree)
        ssh_keys = sorted(f"/etc/ssh/{k.name}" for k in (tree / "etc/ssh").glob("ssh_host_*"))
        shutil.copyfile(tree / kernel.lstrip("/"), work / "vmlinuz")
        shutil.copyfile(tree / initrd.lstrip("/"), work / "initrd")
        boot_tree = None
        if spec.separate_boot:
            boot_tree = work / "boot"
            boot_tree.mkdir()
            for entry in sorted((tree / "boot").iterdir()):
                entry.rename(boot_tree / entry.name)
        for p in parts:
            fs_image = work / f"fs{p.number}.img"
            src_tree = boot_tree if p.mountpoint == "/boot" else tree
            log(f"{spec.name}: mkfs.{p.fs_type} {p.mountpoint} ({p.size // MiB} MiB)")
            if p.fs_type == "ext4":
                make_ext4(src_tree, fs_image, p.size, p.fs_uuid, p.label)
            elif p.fs_type == "xfs":
                make_xfs(src_tree, fs_image, p.size, p.fs_uuid, p.label, work)
            else:
                raise ValueError(f"unsupported fs {p.fs_type}")
            fs_images[p.number] = fs_image
        remove_tree(tree)

    if spec.table:
        image = work / "disk.img"
        log(f"{spec.name}: assembling {spec.table} disk")
        assemble_disk(spec, fs_images, image)
    else:
        image = fs_images[1]
    root = next(p for p in parts if p.mountpoint == "/")
    meta = {
        "kind": spec.name,
        "description": spec.description,
        "format": "diskdump" if spec.table else "extdump",
        "cache_key": stem.name.rsplit("-", 1)[1],
        "base_key": base_key(),
        "recipe_version": {"base": BASE_RECIPE_VERSION, "kind": KIND_RECIPE_VERSION},
        "suite": SUITE,
        "virtual_size": image.stat().st_size,
        "disk_usage": disk_usage(image),
        "partition_table": spec.table,
        "partitions": [
            {
                "number": p.number,
                "start": p.start,
                "size": p.size,
                "fs_type": p.fs_type,
                "fs_uuid": p.fs_uuid,
                "label": p.label,
                "mountpoint": p.mountpoint,
                "part_uuid": p.part_uuid or None,
                "gpt_type": p.gpt_type,
            }
            for p in parts
        ]
        if spec.table
        else [],
        "root_partition": root.number if spec.table else None,
        "fs_type": root.fs_type,
        "fs_uuids": {p.mountpoint: p.fs_uuid for p in parts},
        "kernel": kernel,
        "initrd": initrd,
        "kernel_file": str(stem.with_suffix(".vmlinuz")),
        "initrd_file": str(stem.with_suffix(".initrd")),
        "kernel_cmdline": f"root=UUID={root.fs_uuid} ro console=ttyS0 net.ifnames=0",
        "hostname": HOSTNAME,
        "network": spec.network,
        "packages": versions,
        "ssh_host_keys": ssh_keys,
        "machine_id": uuid.UUID(kind_uuid(spec.tree_of or spec.name, "machine-id")).hex,
        "root_password": "locked",
        "sha256": sha256_file(image),
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    # Publish: side files and image first, metadata last (its presence means "complete").
    os.rename(work / "vmlinuz", stem.with_suffix(".vmlinuz"))
    os.rename(work / "initrd", stem.with_suffix(".initrd"))
    os.rename(image, stem.with_suffix(".img"))
    tmp_meta = work / "meta.json"
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.rename(tmp_meta, stem.with_suffix(".json"))


def clean_old(keep: Sequence[str] = ()) -> list[Path]:
    """Remove cached artifacts whose key is no longer current (recipe or package changes)."""
    kinds = [*KINDS, *BENCHMARK_KINDS]
    current = {artifact_stem(k).name for k in kinds} | {f"base-{SUITE}-{base_key()}"} | set(keep)
    removed = []
    for entry in cache_dir().iterdir():
        stem = entry.name.split(".", 1)[0] if not entry.name.startswith(".") else ""
        if stem and stem not in current and (entry.name.startswith("base-") or stem.rsplit("-", 1)[0] in kinds):
            remove_tree(entry)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------- CLI


def _describe(img: GuestImage) -> str:
    m = img.meta
    return (
        f"{m['kind']:<11} {m['virtual_size'] / MiB:7.0f} MiB virtual, "
        f"{disk_usage(img.path) / MiB:6.0f} MiB on disk, built in {m['build_seconds']:.0f}s  {img.path}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m tests.guests build KIND...|all``, ``list``, ``clean``."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.guests", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build", help="build (or find cached) guest images")
    build.add_argument(
        "kinds", nargs="+", metavar="KIND", help=f"one of {', '.join([*KINDS, *BENCHMARK_KINDS])}, or all"
    )
    sub.add_parser("list", help="show kinds, cache keys and whether they are cached")
    sub.add_parser("clean", help="remove artifacts whose cache key is out of date")
    args = parser.parse_args(argv)

    if args.cmd == "list":
        for kind in [*KINDS, *BENCHMARK_KINDS]:
            found = _load(artifact_stem(kind))
            print(f"{kind:<11} {cache_key(kind)}  {_describe(found) if found else 'not built'}")
        return 0
    if args.cmd == "clean":
        for path in clean_old():
            print(f"removed {path}")
        return 0
    kinds = list(KINDS) if args.kinds == ["all"] else args.kinds
    unknown = [k for k in kinds if k not in KINDS and k not in BENCHMARK_KINDS]
    if unknown:
        parser.error(f"unknown kind(s): {', '.join(unknown)}")
    total = time.monotonic()
    t = time.monotonic()
    base_rootfs()
    log(f"base ready after {time.monotonic() - t:.0f}s")
    for kind in kinds:
        t = time.monotonic()
        img = guest_image(kind)
        log(f"{kind} ready after {time.monotonic() - t:.0f}s")
        print(_describe(img), flush=True)
    log(f"total {time.monotonic() - total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
