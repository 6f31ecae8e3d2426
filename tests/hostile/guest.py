"""Small Linux guest images made in the test, and a reader of what a deployment left in them.

The corpus needs dozens of images that differ from a sane one by one hostile detail, each built
in well under a second: a tree shaped like a small merged-/usr Debian (the layout links real
images have: ``/bin -> usr/bin``, ``/var/run -> /run``, ``/etc/os-release -> ../usr/lib/...``,
``/var/lib/dbus/machine-id -> /etc/machine-id``, ``/home -> usr/home`` as FreeBSD and ostree
systems have it), written to a directory, made into an ext4 with ``mke2fs -d`` (no mount on
the host) and put behind an msdos or GPT table by ``sfdisk``. A case edits the tree before
(symlinks, device nodes, sparse files) or the filesystem after (``debugfs -w``: directory hard
links, a dirty journal) the build.

:class:`Guest` reads the deployed disk back from outside with debugfs: entries are looked at
without following a final symlink, and the host never mounts the hostile filesystem.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests import fakeguest

MiB = 1 << 20
SECTOR = 512
ROOT_START = 1 * MiB
IMAGE_SIZE = 40 * MiB
HOSTNAME = "image-builder"

#: The symlinks of a sane image's layout (merged /usr, /run, FreeBSD's or ostree's /home), as Debian ships them.
LAYOUT_LINKS = {
    "bin": "usr/bin",
    "sbin": "usr/sbin",
    "lib": "usr/lib",
    "lib64": "usr/lib64",
    "home": "usr/home",
    "var/run": "/run",
    "var/lock": "/run/lock",
    "etc/os-release": "../usr/lib/os-release",
    "etc/mtab": "../proc/self/mounts",
    "etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf",
    "etc/localtime": "/usr/share/zoneinfo/Etc/UTC",
    "var/lib/dbus/machine-id": "/etc/machine-id",
}
INTERFACES = "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"
#: Files besides fakeguest.DEBIAN's (whose /home/alice moves under /usr/home).
FILES = {
    "usr/lib/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    "usr/sbin/ifup": "#!/bin/sh\nexit 0\n",
    "usr/share/zoneinfo/Etc/UTC": "TZif2\n",
    "etc/network/interfaces": INTERFACES,
    "etc/motd": "Welcome to the image.\n",
    "srv/decoy": "decoy: a file the hostile links point at\n",
    "root/.profile": "# root's profile\n",
    "usr/home/alice/.profile": "# alice's profile\n",
}
EMPTY_DIRS = ("proc", "sys", "dev", "run/lock", "tmp", "mnt", "etc/network/interfaces.d", "usr/lib64", "usr/bin")
#: Whose home is where (uid, gid), as /etc/passwd says.
HOMES = {"usr/home/alice": (1000, 1000)}
DECOY = "/srv/decoy"


def sh(*argv: str | os.PathLike[str], input: bytes | None = None) -> str:
    """Run a tool of the test (never a shell string); its output, or an AssertionError naming the failure."""
    proc = subprocess.run([os.fspath(a) for a in argv], input=input, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{argv[0]} failed: {proc.stderr.decode(errors='replace')[-1000:]}"
    return proc.stdout.decode(errors="replace")


@dataclass
class Tree:
    """The guest's root directory on the host, before it becomes a filesystem."""

    root: Path
    fs_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def path(self, guest_path: str) -> Path:
        return self.root / guest_path.lstrip("/")

    def write(self, guest_path: str, text: str | bytes, mode: int = 0o644) -> None:
        path = self.path(guest_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        path.chmod(mode)

    def link(self, guest_path: str, target: str) -> None:
        """Make ``guest_path`` a symlink to ``target`` (whatever was there goes)."""
        path = self.path(guest_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)
        path.symlink_to(target)

    def node(self, guest_path: str, mode: int, major: int = 0, minor: int = 0) -> None:
        """A device node or FIFO (``stat.S_IFCHR | 0o666``, ...) at ``guest_path``, whatever was there gone."""
        path = self.path(guest_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        os.mknod(path, mode, os.makedev(major, minor))

    def sparse(self, guest_path: str, size: int, head: str = "") -> None:
        """A file of ``size`` bytes that is a hole after ``head``."""
        self.write(guest_path, head)
        with open(self.path(guest_path), "r+b") as f:
            f.truncate(size)

    def text(self, guest_path: str) -> str:
        return self.path(guest_path).read_text()


def linux_tree(root: Path) -> Tree:
    """The sane guest: fakeguest's Debian files plus the layout links and what the tasks look for."""
    tree = Tree(root)
    files = {k: v for k, v in fakeguest.DEBIAN.items() if not k.startswith("home/")}
    files["etc/fstab"] = f"UUID={tree.fs_uuid} / ext4 errors=remount-ro 0 1\n"
    for rel, text in {**files, **FILES}.items():
        tree.write(rel, text, 0o755 if rel.endswith("ifup") else 0o644)
    tree.path("etc/shadow").chmod(0o640)
    for rel in EMPTY_DIRS:
        tree.path(rel).mkdir(parents=True, exist_ok=True)
    tree.path("tmp").chmod(0o1777)
    for rel, target in LAYOUT_LINKS.items():
        tree.link(rel, target)
    for rel, (uid, gid) in HOMES.items():
        os.chown(tree.path(rel), uid, gid)
        os.chown(tree.path(rel) / ".profile", uid, gid)
    return tree


@dataclass(frozen=True)
class Disk:
    """An image file with one ext4 root partition at ``offset``."""

    path: Path
    offset: int
    fs_uuid: str


def make_ext4(tree: Tree, fs_image: Path, size: int, *extra: str) -> None:
    with open(fs_image, "wb") as f:
        f.truncate(size)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-U", tree.fs_uuid, "-E", f"hash_seed={tree.fs_uuid}", *extra,
       "-d", tree.root, fs_image)  # fmt: skip


def make_disk(
    tree: Tree,
    image: Path,
    *,
    table: str = "msdos",
    size: int = IMAGE_SIZE,
    second: Tree | None = None,
    second_size: int = 8 * MiB,
    mke2fs: tuple[str, ...] = (),
) -> Disk:
    """``image``: a partition table (``table``: msdos or gpt) with the tree's ext4 at 1 MiB as partition 1.

    ``second``: a second partition of ``second_size`` at the end, holding that tree's ext4.
    ``mke2fs``: more options for the root filesystem.
    """
    room = (1 * MiB if table == "gpt" else 0) + (second_size if second is not None else 0)
    root_size = size - ROOT_START - room
    parts = [(tree, ROOT_START, root_size, mke2fs)]
    if second is not None:
        parts.append((second, ROOT_START + root_size, second_size, ()))
    with open(image, "wb") as f:
        f.truncate(size)
    label = "dos" if table == "msdos" else "gpt"
    kind = "83" if table == "msdos" else "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    lines = [f"label: {label}", "unit: sectors", ""]
    lines += [f"start={start // SECTOR}, size={length // SECTOR}, type={kind}" for _, start, length, _ in parts]
    sh("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image, input=("\n".join(lines) + "\n").encode())
    for number, (source, start, length, options) in enumerate(parts, start=1):
        fs_image = image.with_suffix(f".fs{number}")
        make_ext4(source, fs_image, length, *options)
        sh("dd", f"if={fs_image}", f"of={image}", "bs=1M", f"seek={start // MiB}", "conv=notrunc,sparse",
           "status=none")  # fmt: skip
        fs_image.unlink()
    return Disk(image, ROOT_START, tree.fs_uuid)


def debugfs_write(disk: Disk, *requests: str) -> None:
    """Edit the filesystem with ``debugfs -w`` (what mke2fs -d cannot make: directory hard links, ...)."""
    out = subprocess.run(
        ["debugfs", "-w", "-f", "-", f"{disk.path}?offset={disk.offset}"],
        input="\n".join(requests) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


@dataclass(frozen=True)
class Entry:
    """A directory entry of the deployed guest, as debugfs sees it (a final symlink not followed)."""

    kind: str  # "regular", "directory", "symlink", "character special", ...
    mode: int
    uid: int
    gid: int
    size: int
    link: str  # the target of a symlink


_TYPE = re.compile(r"Type: (\S+(?: special)?)\s+Mode:\s+0?([0-7]+)")
_OWNER = re.compile(r"User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size: (\d+)")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"')


class Guest:
    """The root filesystem of a deployed disk, read with debugfs from outside."""

    def __init__(self, disk: Path, offset: int) -> None:
        self.disk = disk
        self.offset = offset

    @classmethod
    def of(cls, disk: Path, partition: int = 1) -> Guest:
        """The partition's filesystem, wherever the deployment moved it to."""
        table = sh("sfdisk", "--dump", disk)
        for line in table.splitlines():
            if re.match(rf"^\S*?{partition} :", line):
                start = int(re.search(r"start=\s*(\d+)", line).group(1))  # type: ignore[union-attr]
                return cls(disk, start * SECTOR)
        raise AssertionError(f"no partition {partition} on {disk}: {table}")

    def _debugfs(self, request: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["debugfs", "-R", request, f"{self.disk}?offset={self.offset}"], capture_output=True, timeout=60
        )

    def entry(self, path: str) -> Entry | None:
        """The entry at ``path`` (intermediate links are followed by debugfs, the last is not), or None."""
        out = self._debugfs(f'stat "{path}"')
        text = out.stdout.decode(errors="replace")
        kind, owner = _TYPE.search(text), _OWNER.search(text)
        if kind is None or owner is None:
            return None
        link = _FAST_LINK.search(text)
        target = link.group(1) if link else ""
        if kind.group(1) == "symlink" and not link:  # a slow symlink: its target is in a data block
            target = self._debugfs(f'cat "{path}"').stdout.decode(errors="replace")
        return Entry(kind.group(1), int(kind.group(2), 8), int(owner.group(1)), int(owner.group(2)),
                     int(owner.group(3)), target)  # fmt: skip

    def read(self, path: str) -> str:
        """The text of regular file ``path`` (the test fails if it is anything else)."""
        found = self.entry(path)
        assert found is not None and found.kind == "regular", f"{path} is not a regular file: {found}"
        return self._debugfs(f'cat "{path}"').stdout.decode(errors="replace")

    def names(self, directory: str) -> list[str]:
        """The names in ``directory`` but . and .. (``ls -p`` lines: /inode/mode/uid/gid/name/size/)."""
        out = self._debugfs(f'ls -p "{directory}"').stdout.decode(errors="replace")
        fields = [line.split("/") for line in out.splitlines() if line.startswith("/")]
        return sorted(f[5] for f in fields if len(f) > 5 and f[5] not in (".", ".."))
