"""Many deployments on one node at once (#14.5): four real creates of one remote image started together.

The image is served by a real loopback HTTP server (GETs counted), the creates are the real
entry scripts, and a watch on /proc sees every helper VM they start. Asserted: all succeed,
the image is fetched once (the node's image cache; the other deployments revalidate
their copy with a conditional GET), never more than HELPER_MAX_RUNNING helper
VMs run at once (and that many did: the limit was reached), each with HELPER_MEMORY, the
deployments that found every slot taken said so, and every disk holds its own customized
system. The times are printed (benchmarks/deploy.py compares them with one deployment).
"""

from __future__ import annotations

import mmap
import subprocess
from pathlib import Path

import pytest

from tests import guests, helpervm
from tests.osenv import create_env, install, monitor_messages
from tests.parallel import QemuWatch, run_together

pytestmark = pytest.mark.vm

GiB = 1 << 30
SECTOR = 512
DEPLOYMENTS = 4
LIMIT = 2
MEMORY_MIB = 384
#: What qemu may add to the guest's RAM: its own code and data, and TCG's translation cache (qemu
#: reserves up to 1 GiB of address space for it but fills only what the helper runs). Measured
#: here: a helper VM's peak RSS 247 MiB with HELPER_MEMORY=384 (the guest never touches it all).
QEMU_OVERHEAD_MIB = 160


def image_server(http_server, image: Path):
    """The image served over HTTP with an ETag (so the node's cache may keep it), straight from its file."""
    with open(image, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    server = http_server({"/debian.img": data})
    server.behaviour.etag = '"debian-1"'
    return server


def test_four_creates_of_one_remote_image_at_once(tmp_path, http_server):
    image = guests.guest_image("ext4-msdos")
    server = image_server(http_server, image.path)
    helper_dir = helpervm.ensure_helper()
    osdef = install(tmp_path / "inst")
    osdef.configure(
        HELPER_DIR=str(helper_dir),
        HELPER_SOFT_TIMEOUT="600",
        HELPER_MAX_RUNNING=str(LIMIT),
        HELPER_MEMORY=str(MEMORY_MIB),
        IMAGE_CACHE_DIR=str(tmp_path / "cache"),
        IMAGE_CACHE_SIZE="4G",
    )
    disks, envs = [], []
    for index in range(DEPLOYMENTS):
        disk = tmp_path / f"disk{index}.raw"
        with open(disk, "wb") as f:
            f.truncate(2 * GiB)
        disks.append(disk)
        envs.append(
            create_env(f"vm{index}.example.test", disk, OSP_IMG_ID=server.url("/debian.img"), OSP_IMG_FORMAT="diskdump")
        )

    with QemuWatch(str(helper_dir)) as watch:
        done = run_together(osdef, "create", envs, tmp_path / "logs")

    print(
        f"{DEPLOYMENTS} creates at once, HELPER_MAX_RUNNING={LIMIT}: " + ", ".join(f"{d.seconds:.1f} s" for d in done)
    )
    for finished in done:
        assert finished.returncode == 0, finished.log[-3000:]
    gets = server.gets("/debian.img")
    fetches = [g for g in gets if "If-None-Match" not in g.headers]
    assert len(fetches) == 1  # the others only asked whether the cached copy is still current (304)
    assert [g.headers["If-None-Match"] for g in gets if g not in fetches] == ['"debian-1"'] * (DEPLOYMENTS - 1)
    assert watch.most_at_once == LIMIT
    deployments = [vm for vm in watch.vms.values() if vm.memory_arg]
    assert len(deployments) >= DEPLOYMENTS  # (and the node's KVM probe, if this boot had none yet)
    assert {vm.memory_arg for vm in deployments} == {str(MEMORY_MIB)}
    peak = max(vm.peak_rss_kib for vm in deployments) // 1024
    print(f"peak RSS of a helper VM's qemu: {peak} MiB (HELPER_MEMORY={MEMORY_MIB})")
    assert peak <= MEMORY_MIB + QEMU_OVERHEAD_MIB

    waited = 0
    for index, finished in enumerate(done):
        said = [
            text for m in monitor_messages(finished.log.encode()) if m["type"] == "image-info" for text in m["messages"]
        ]
        if any(text.startswith("Waiting for a helper VM slot: all 2 are taken") for text in said):
            waited += 1
            assert any(text.startswith("Got a helper VM slot after waiting") for text in said)
        assert said[-1] == "Image customization finished successfully."
        check_disk(disks[index], f"vm{index}.example.test", image)
    assert waited >= 1  # four deployments, two slots: someone found them taken
    assert not list(osdef.tmpdir.iterdir())


def check_disk(disk: Path, hostname: str, image: guests.GuestImage) -> None:
    """The image, grown to the disk, clean, and customized for this instance (not another's)."""
    table = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    assert '"start":2048' in table.replace(" ", "")
    offset = 2048 * SECTOR
    check = subprocess.run(["e2fsck", "-fn", f"{disk}?offset={offset}"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert guests.read_fs_file(disk, offset, None, "ext4", "/etc/hostname").decode().strip() == hostname
    assert guests.read_fs_file(disk, offset, None, "ext4", "/etc/ssh/ssh_host_ed25519_key") != image.read_file(
        "/etc/ssh/ssh_host_ed25519_key"
    )
