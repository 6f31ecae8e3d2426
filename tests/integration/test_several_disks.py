"""An instance with a data disk and a swap disk: ``SWAP`` naming the second disk, as the README shows.

A Debian guest (tests/guests.py, ext4-msdos) is deployed by ``create`` onto
three disks: ``a`` the image, ``b`` blank and named by ``SWAP=b``, ``c`` a
data disk with its own partition table and ext4 filesystem. Checked from
outside: disk b holds one swap area over the whole disk (the header read
here, not by blkid), the guest's fstab is the image's plus exactly one line
naming that swap by UUID, and disk c is byte-identical. Then the guest
boots with its three disks and uses the swap; then ``create`` runs again
as Ganeti's reinstall does (INSTANCE_REINSTALL=1) over the used disks: the
same fstab byte for byte, the same swap UUID, still one swap line, disk c
still untouched.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import guestboot, guests, helpervm
from tests.osenv import OsDefinition, create_env, install

pytestmark = pytest.mark.vm

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
SECTOR = 512
SWAP_SIZE = 128 * MiB
DATA_SIZE = 64 * MiB
PASSWORD = "Sn4f-several disks"
MAC = "52:54:00:5a:00:31"
NAME = "disks.snf.test"


@dataclass(frozen=True)
class SwapHeader:
    """The Linux swap header (version 1) of a disk, read from its first page."""

    version: int
    last_page: int
    uuid: str


def swap_header(disk: Path) -> SwapHeader | None:
    with open(disk, "rb") as f:
        page = f.read(PAGE)
    if page[PAGE - 10 :] != b"SWAPSPACE2":
        return None
    version, last_page, _bad = (int.from_bytes(page[o : o + 4], "little") for o in (1024, 1028, 1032))
    return SwapHeader(version, last_page, str(uuid.UUID(bytes=page[1036:1052])))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120, **kwargs)


def data_disk(path: Path, tree: Path) -> Path:
    """A data disk as a user leaves one: an msdos table and an ext4 partition holding a file."""
    tree.mkdir()
    (tree / "notes.txt").write_text("the user's data\n")
    with open(path, "wb") as f:
        f.truncate(DATA_SIZE)
    run(["sfdisk", "--quiet", str(path)], input="label: dos\nstart=2048, type=83\n")
    run(["mke2fs", "-q", "-t", "ext4", "-F", "-L", "data", "-E", "offset=1048576", "-d", str(tree), str(path), "63M"])
    return path


@dataclass
class Instance:
    image: guests.GuestImage
    root: Path
    swap: Path
    data: Path

    def fstab(self) -> str:
        table = json.loads(run(["sfdisk", "--json", str(self.root)]).stdout)["partitiontable"]
        offset = table["partitions"][0]["start"] * SECTOR
        return guests.read_fs_file(self.root, offset, None, "ext4", "/etc/fstab").decode()


@pytest.fixture(scope="module")
def osdef(tmp_path_factory: pytest.TempPathFactory) -> OsDefinition:
    definition = install(tmp_path_factory.mktemp("several-disks") / "inst")
    definition.configure(
        HELPER_DIR=str(helpervm.ensure_helper()), HELPER_SOFT_TIMEOUT="400", IMAGE_DIR=str(guests.cache_dir())
    )
    return definition


def create(osdef: OsDefinition, instance: Instance, **extra: str) -> None:
    """Ganeti's create (or, with INSTANCE_REINSTALL=1, its reinstall) of the three-disk instance."""
    disks = {}
    for index, disk in ((1, instance.swap), (2, instance.data)):
        disks.update({f"DISK_{index}_PATH": str(disk), f"DISK_{index}_ACCESS": "rw"})
        disks.update({f"DISK_{index}_BACKEND_TYPE": "file:loop", f"DISK_{index}_FRONTEND_TYPE": "paravirtual"})
    env = create_env(
        NAME,
        instance.root,
        OSP_IMG_ID=f"local://{instance.image.path.name}",
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_IMG_PROPERTIES=json.dumps({"SWAP": "b"}),
        DISK_COUNT="3",
        NIC_COUNT="1",
        NIC_0_MAC=MAC,
        NIC_0_IP="10.0.2.78",
        NIC_0_NETWORK_SUBNET="10.0.2.0/24",
        NIC_0_NETWORK_GATEWAY="10.0.2.2",
        **disks,
        **extra,
    )
    started = time.monotonic()
    result = osdef.run("create", env)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    print(f"\n[timing] create with three disks took {time.monotonic() - started:.1f}s")
    assert not list(osdef.tmpdir.iterdir())


def check_swap_and_fstab(instance: Instance) -> tuple[str, str]:
    """The swap header and the fstab are right; returns (swap UUID, fstab)."""
    header = swap_header(instance.swap)
    assert header is not None, "disk b holds no swap area"
    assert header.version == 1 and header.last_page == SWAP_SIZE // PAGE - 1  # the whole disk
    fstab = instance.fstab()
    swaps = [line.split() for line in fstab.splitlines() if line.split()[2:3] == ["swap"]]
    assert swaps == [[f"UUID={header.uuid}", "none", "swap", "sw", "0", "0"]]
    image_fstab = instance.image.read_file("/etc/fstab").decode()
    assert fstab == image_fstab + f"UUID={header.uuid}\tnone\tswap\tsw\t0\t0\n"  # nothing else changed
    return header.uuid, fstab


def test_swap_disk_data_disk_and_reinstall(osdef: OsDefinition, tmp_path: Path) -> None:
    instance = Instance(guests.guest_image("ext4-msdos"), tmp_path / "a.raw", tmp_path / "b.raw", tmp_path / "c.raw")
    for disk, size in ((instance.root, 3 * GiB), (instance.swap, SWAP_SIZE)):
        with open(disk, "wb") as f:
            f.truncate(size)
    data_disk(instance.data, tmp_path / "data-tree")
    data_digest = sha256(instance.data)

    create(osdef, instance)
    swap_uuid, fstab = check_swap_and_fstab(instance)
    assert sha256(instance.data) == data_digest

    with guestboot.booted(
        instance.root,
        instance.image.kernel_file,
        instance.image.initrd_file,
        instance.image.meta["kernel_cmdline"],
        MAC,
        PASSWORD,
        tmp_path / "console.log",
        boot_timeout=360,
        extra_disks=(instance.swap, instance.data),
    ) as console:
        state = console.run("systemctl is-system-running --wait", timeout=240)
        assert state == "running", console.run("systemctl --failed --no-legend --plain")
        assert console.run("swapon --show=NAME,TYPE,SIZE --noheadings --bytes").split() == [
            "/dev/vdb", "partition", str(SWAP_SIZE - PAGE)]  # fmt: skip
        assert console.run("blkid -s UUID -o value /dev/vdb") == swap_uuid
        rc, _ = console.status("findmnt /dev/vdc1")
        assert rc != 0, "the data disk was mounted"
        assert console.run("blkid -s LABEL -o value /dev/vdc1") == "data"
        console.run("sync")
    assert sha256(instance.data) == data_digest

    create(osdef, instance, INSTANCE_REINSTALL="1")
    assert check_swap_and_fstab(instance) == (swap_uuid, fstab)
    assert sha256(instance.data) == data_digest
