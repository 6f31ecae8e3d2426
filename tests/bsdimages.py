"""Synthetic but faithful FreeBSD, NetBSD and OpenBSD disk images for the BSD tests.

Built with the tools each layout needs and nothing of the code under test
except the disklabel writer (which the unit tests check byte by byte):

- OpenBSD: MBR slot 4 of type a6 from sector 64, an OpenBSD disklabel
  (``a`` root, ``b`` swap, ``e`` /home last; ``c`` the disk, DUID in fstab),
  FFS1 filesystems (16 KiB blocks, as OpenBSD's newfs for small disks).
- NetBSD: MBR slot 1 of type a9 from sector 2048, a NetBSD disklabel
  (``b`` swap first, ``a`` root last; ``c`` the slice, ``d`` the disk),
  FFSv2 root (NetBSD's default since 9; superblock at 64 KiB as for FreeBSD).
- FreeBSD: GPT by sgdisk (freebsd-boot, freebsd-swap, freebsd-ufs root last,
  GPT labels as the release images), UFS2 root.
- FreeBSD on UFS1 (``freebsd-ufs1``): the same GPT with a separate /var
  (freebsd-ufs, UFS2, no ``/etc``) before a UFS1 root, fstab naming
  partitions by their device names: detection must turn /var down and find
  the UFS1 root after it.

The filesystems come from NetBSD's makefs (Debian package ``makefs``). Its
UFS1 is the BSDs' own format (Linux mounts it as ``ufstype=44bsd``). Its UFS2
is not quite: NetBSD's makefs deliberately keeps the UFS2 superblock at 8 KiB
(``#if 0 /* XXX makefs is used for small filesystems. */`` in ffs/mkfs.c),
where neither FreeBSD's newfs puts it nor Linux looks for it. So the UFS2
root is made by a copy of makefs with that choice reverted: two constants in
the binary (``fs_sblockloc = SBLOCK_UFS1`` and the folded ``SBLOCK_UFS1 +
SBLOCKSIZE`` of the ``fs_sblkno`` computation) become SBLOCK_UFS2's, found by
their surrounding instructions and refused if not found exactly once. The
result is checked: superblock at 64 KiB with ``fs_sblockloc`` 65536, nothing
at 8 KiB, and with FreeBSD's defaults (32 KiB blocks, 4 KiB fragments) the
first cylinder group starts at fragment 24 -- newfs's own layout.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from helper import disklabel

MIB = 1 << 20
SECTOR = 512
DUID = "3f5e9c2a1b7d4e60"

MASTER_PASSWD = {
    "freebsd": "root:$6$imagesalt$oldhash:0:0::0:0:Charlie &:/root:/bin/csh\n"
    "toor:*:0:0::0:0:Bourne-again Superuser:/root:\n"
    "daemon:*:1:1::0:0:Owner of many system processes:/root:/usr/sbin/nologin\n"
    "alice:*:1001:1001::0:0:Alice:/home/alice:/bin/sh\n",
    "netbsd": "root:$sha1$1$old$oldhash:0:0::0:0:Charlie &:/root:/bin/sh\n"
    "toor:*:0:0::0:0:Bourne-again Superuser:/root:/bin/sh\n"
    "daemon:*:1:1::0:0:The devil himself:/:/sbin/nologin\n"
    "alice:*:1001:100::0:0:Alice:/home/alice:/bin/sh\n",
    "openbsd": "root:$2b$10$oldoldoldoldoldoldoldoO/oldhash:0:0:daemon:0:0:Charlie &:/root:/bin/ksh\n"
    "daemon:*:1:1::0:0:The devil himself:/root:/sbin/nologin\n"
    "alice:*:1000:1000:staff:0:0:Alice:/home/alice:/bin/ksh\n",
}


def passwd_of(master: str) -> str:
    """/etc/passwd as pwd_mkdb makes it from master.passwd (no class, change, expire; no password)."""
    lines = []
    for line in master.splitlines():
        f = line.split(":")
        lines.append(":".join([f[0], "*", f[2], f[3], f[7], f[8], f[9]]))
    return "\n".join(lines) + "\n"


@dataclass
class Tree:
    """A filesystem's content: path -> (text, mode, uid, gid)."""

    files: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def add(self, path: str, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self.files[path] = (text, mode, uid, gid)

    def stage(self, where: Path) -> Path:
        where.mkdir(parents=True)
        for path in sorted(self.dirs):
            d = where / path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
        for path, (text, mode, uid, gid) in self.files.items():
            f = where / path.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
            os.chown(f, uid, gid)
            os.chmod(f, mode)
        for path, (mode, uid, gid) in self.dirs.items():
            d = where / path.lstrip("/")
            os.chown(d, uid, gid)
            os.chmod(d, mode)
        return where


def root_tree(family: str) -> Tree:
    """The root filesystem of a small install of ``family``: the files the tasks read and write."""
    t = Tree()
    master = MASTER_PASSWD[family]
    t.add("/etc/master.passwd", master, 0o600)
    t.add("/etc/passwd", passwd_of(master))
    t.add("/etc/group", "wheel:*:0:root\ndaemon:*:1:\nusers:*:100:\nalice:*:1000:\nalice2:*:1001:\n")
    t.add("/etc/pwd.db", "Berkeley DB stand-in\n")
    t.add("/etc/spwd.db", "Berkeley DB stand-in with the old password\n", 0o600)
    t.add("/etc/ssh/sshd_config", "#PermitRootLogin no\n#HostKey /etc/ssh/ssh_host_ed25519_key\n")
    for kind in ("rsa", "ecdsa", "ed25519"):
        t.add(f"/etc/ssh/ssh_host_{kind}_key", f"old {kind} private key\n", 0o600)
        t.add(f"/etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAA old\n")
    t.add("/etc/ssh/moduli", "# moduli\n")
    t.dirs["/root"] = (0o700, 0, 0)
    t.dirs["/tmp"] = (0o1777, 0, 0)
    t.dirs["/home"] = (0o755, 0, 0)
    if family == "freebsd":
        t.add("/etc/freebsd-update.conf", "KeyPrint 800651ef4b4c71c27e60786d7b487188970f4b4169cc055784e21eb71d410cc5\n")
        t.add(
            "/etc/rc.conf",
            'hostname="freebsd-image"\nifconfig_DEFAULT="DHCP inet6 accept_rtadv"\nsshd_enable="YES"\n'
            'ifconfig_vtnet0="DHCP"\n',
        )
        t.add("/etc/fstab", "# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n"
              "/dev/gpt/rootfs\t/\tufs\trw\t1\t1\n/dev/gpt/swapfs\tnone\tswap\tsw\t0\t0\n")  # fmt: skip
        t.dirs["/home/alice"] = (0o755, 1001, 1001)
    elif family == "netbsd":
        t.add("/etc/release", "NetBSD 10.0/amd64\n")
        t.add("/etc/rc.conf", "if [ -r /etc/defaults/rc.conf ]; then . /etc/defaults/rc.conf; fi\n"
              "rc_configured=YES\nhostname=netbsd-image\nsshd=YES\n")  # fmt: skip
        t.add("/etc/myname", "netbsd-image\n")
        t.add("/etc/ifconfig.vioif0", "up\ninet 10.9.9.9 netmask 255.0.0.0\n")
        t.add("/etc/rc.local", "#!/bin/sh\necho 'the image rc.local'\n", 0o755)
        t.add("/etc/fstab", "/dev/wd0a / ffs rw,log 1 1\n/dev/wd0b none swap sw,dp 0 0\n"
              "kernfs /kern kernfs rw\nptyfs /dev/pts ptyfs rw\nprocfs /proc procfs rw\n")  # fmt: skip
        t.dirs["/home/alice"] = (0o755, 1001, 100)
    else:
        t.add("/etc/motd", "OpenBSD 7.5 (GENERIC) #82: Wed Mar 20 15:48:40 MDT 2024\n")
        t.add("/etc/myname", "openbsd-image.example.org\n")
        t.add("/etc/hostname.vio0", "inet autoconf\n", 0o640)
        t.add("/etc/mygate", "10.0.0.1\n", 0o644)
        t.add("/etc/fstab", f"{DUID}.a / ffs rw 1 1\n{DUID}.b none swap sw\n{DUID}.e /home ffs rw,nodev,nosuid 1 2\n")
    return t


def freebsd_ufs1_trees() -> tuple[Tree, Tree]:
    """The root and /var of the FreeBSD image with a UFS1 root (p4) and a UFS2 /var (p3)."""
    root = root_tree("freebsd")
    root.add("/etc/fstab", "# Device\tMountpoint\tFStype\tOptions\tDump\tPass#\n"
             "/dev/vtbd0p4\t/\tufs\trw\t1\t1\n/dev/vtbd0p3\t/var\tufs\trw\t2\t2\n"
             "/dev/vtbd0p2\tnone\tswap\tsw\t0\t0\n")  # fmt: skip
    root.dirs["/var"] = (0o755, 0, 0)
    var = Tree()
    var.add("/log/messages", "Jan  1 00:00:00 freebsd-image syslogd: kernel boot file is /boot/kernel/kernel\n")
    var.dirs["/db"] = (0o755, 0, 0)
    var.dirs["/tmp"] = (0o1777, 0, 0)
    return root, var


def home_tree() -> Tree:
    t = Tree()
    t.dirs["/alice"] = (0o755, 1000, 1000)
    t.add("/alice/.profile", "PATH=$HOME/bin:$PATH\n", 0o644, 1000, 1000)
    return t


# --- makefs ---------------------------------------------------------------------

_SBLOCKLOC = re.compile(rb"\xc7\x05....\x19\x01\x54\x19.{0,8}?\x48\xc7\x05....(\x00\x20\x00\x00)", re.S)
_SBLKNO = re.compile(rb"\x48\x8d\x86(\x00\x40\x00\x00)")


def ufs2_makefs(cache: Path) -> Path:
    """NetBSD's makefs with FreeBSD's UFS2 superblock location (see the module docstring); cached."""
    out = cache / "makefs-ufs2"
    if out.exists():
        return out
    data = bytearray(Path(shutil.which("makefs") or "/usr/sbin/makefs").read_bytes())
    loc = list(_SBLOCKLOC.finditer(data))
    if len(loc) != 1:
        raise RuntimeError(f"makefs: fs_sblockloc store for UFS2 found {len(loc)} times, expected once")
    sblkno = [m for m in _SBLKNO.finditer(data) if loc[0].end() < m.start() < loc[0].end() + 256]
    if len(sblkno) != 1:
        raise RuntimeError(f"makefs: SBLOCK_UFS1 + SBLOCKSIZE found {len(sblkno)} times, expected once")
    data[loc[0].start(1) : loc[0].end(1)] = struct.pack("<I", 65536)
    data[sblkno[0].start(1) : sblkno[0].end(1)] = struct.pack("<I", 65536 + 8192)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.rename(out)
    return out


def makefs(image: Path, tree: Tree, size: int, version: int, cache: Path) -> None:
    """An FFS image of ``size`` bytes holding ``tree``; UFS2 checked to be laid out as FreeBSD's newfs does."""
    tool = str(ufs2_makefs(cache)) if version == 2 else "makefs"
    options = "version=2,bsize=32768,fsize=4096" if version == 2 else "version=1,bsize=16384,fsize=2048"
    with tempfile.TemporaryDirectory(prefix="snf-bsdtree-") as tmp:
        staged = tree.stage(Path(tmp) / "root")
        subprocess.run([tool, "-t", "ffs", "-B", "le", "-o", options, "-s", str(size), str(image), str(staged)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    with open(image, "rb") as f:
        head = f.read(128 * 1024)
    if version == 2:
        assert struct.unpack_from("<I", head, 65536 + 1372)[0] == 0x19540119, "no UFS2 superblock at 64 KiB"
        assert struct.unpack_from("<I", head, 8192 + 1372)[0] == 0, "a superblock at 8 KiB"
        assert struct.unpack_from("<q", head, 65536 + 1000)[0] == 65536, "fs_sblockloc"
        assert struct.unpack_from("<i", head, 65536 + 8)[0] == 24, "fs_sblkno of FreeBSD's newfs"
    else:
        assert struct.unpack_from("<I", head, 8192 + 1372)[0] == 0x011954, "no UFS1 superblock at 8 KiB"


def _put(disk: Path, offset: int, data: bytes | Path) -> None:
    with open(disk, "r+b") as out:
        out.seek(offset)
        if isinstance(data, bytes):
            out.write(data)
        else:
            with open(data, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


def _mbr(slot: int, ptype: int, start: int, size: int) -> bytes:
    mbr = bytearray(SECTOR)
    mbr[510:512] = b"\x55\xaa"
    base = 446 + 16 * (slot - 1)
    mbr[base] = 0x80
    mbr[base + 4] = ptype
    return disklabel.set_mbr_entry(bytes(mbr), slot, start, size)


@dataclass(frozen=True)
class BsdImage:
    """An image file and what the tests need to know about it."""

    family: str
    path: Path
    root: int  # the kernel's partition number of the root
    others: dict[str, int]  # mount point -> the kernel's partition number


def build(family: str, directory: Path, cache: Path) -> BsdImage:
    """The ``family`` image (48 MiB, or 64 MiB for FreeBSD) in ``directory``; ``freebsd-ufs1`` is a FreeBSD one."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{family}.img"
    work = directory / f"{family}.parts"
    work.mkdir(exist_ok=True)
    path.write_bytes(b"")
    if family == "freebsd":
        size = 64 * MIB
        os.truncate(path, size)
        subprocess.run(
            ["sgdisk", "-a1", "-n1:40:+512K", "-t1:a501", "-c1:gptboot0", "-n2:2048:+8M", "-t2:a502", "-c2:swapfs",
             "-n3:0:0", "-t3:a503", "-c3:rootfs", str(path)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        start = 2048 + 8 * 2048
        end = size // SECTOR - 34
        makefs(work / "root.ufs", root_tree(family), (end - start) * SECTOR // 32768 * 32768, 2, cache)
        _put(path, start * SECTOR, work / "root.ufs")
        image = BsdImage(family, path, 3, {})
    elif family == "freebsd-ufs1":
        size = 64 * MIB
        os.truncate(path, size)
        subprocess.run(
            ["sgdisk", "-a1", "-n1:40:+512K", "-t1:a501", "-c1:gptboot0", "-n2:2048:+8M", "-t2:a502", "-c2:swapfs",
             "-n3:0:+16M", "-t3:a503", "-c3:varfs", "-n4:0:0", "-t4:a503", "-c4:rootfs", str(path)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        var_start = 2048 + 8 * 2048
        start = var_start + 16 * 2048
        end = size // SECTOR - 34
        root, var = freebsd_ufs1_trees()
        makefs(work / "var.ufs", var, 16 * MIB, 2, cache)
        makefs(work / "root.ufs", root, (end - start) * SECTOR // 16384 * 16384, 1, cache)
        _put(path, var_start * SECTOR, work / "var.ufs")
        _put(path, start * SECTOR, work / "root.ufs")
        image = BsdImage("freebsd", path, 4, {"/var": 3})
    elif family == "openbsd":
        total = 48 * MIB // SECTOR
        parts = {"a": (64, 65536, disklabel.FS_BSDFFS), "b": (65600, 8192, disklabel.FS_SWAP),
                 "e": (73792, total - 73792, disklabel.FS_BSDFFS)}  # fmt: skip
        label = disklabel.build("openbsd", total, 64, total - 64, parts, duid=DUID)
        os.truncate(path, total * SECTOR)
        makefs(work / "a.ffs", root_tree(family), 65536 * SECTOR, 1, cache)
        makefs(work / "e.ffs", home_tree(), (total - 73792) * SECTOR, 1, cache)
        _put(path, 64 * SECTOR, work / "a.ffs")
        _put(path, 73792 * SECTOR, work / "e.ffs")
        # the label last: sector 1 of the slice lies in a's boot block area, as on OpenBSD
        _put(path, 0, _mbr(4, 0xA6, 64, total - 64))
        _put(path, 65 * SECTOR, disklabel.to_bytes(label))
        image = BsdImage(family, path, 5, {"/home": 7})  # a=5, b=6, e=7: after the 4 primary slots
    else:
        total = 48 * MIB // SECTOR
        parts = {"a": (10240, total - 10240, disklabel.FS_BSDFFS), "b": (2048, 8192, disklabel.FS_SWAP)}
        label = disklabel.build("netbsd", total, 2048, total - 2048, parts)
        os.truncate(path, total * SECTOR)
        makefs(work / "a.ffs", root_tree(family), (total - 10240) * SECTOR // 32768 * 32768, 2, cache)
        _put(path, 10240 * SECTOR, work / "a.ffs")
        _put(path, 0, _mbr(1, 0xA9, 2048, total - 2048))
        _put(path, 2049 * SECTOR, disklabel.to_bytes(label))
        image = BsdImage(family, path, 5, {})
    shutil.rmtree(work)
    return image
