"""snf-image under a real Ganeti 3.0 cluster: what an operator does, checked on the guest disk afterwards.

One cluster (tests/ganeti.py) serves the module; every test names its
instances through the ``instances`` fixture, which removes them even when the
test fails. Guest disks are read back by the test itself (sfdisk, the ext4
superblock, a read-only loop mount), never through the product.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from snf_image import __version__, metrics, schemas
from snf_image.contract import constants
from tests import debpkg
from tests.ganeti import (
    COMMON_ADD_ARGS,
    EXPORT_DIR,
    FILE_STORAGE,
    NODE,
    NODE_IP,
    Cluster,
    Deployment,
    run,
)

pytestmark = pytest.mark.ganeti

SECTOR = 512
MiB = 1024 * 1024
DISK_MIB = 1600  # the guest image is 1536 MiB: room for the resize (and a small swap) to show
OS = "snf-image+default"
PROPERTIES = {"OSFAMILY": "linux", "ROOT_PARTITION": "1"}


def osparams(**params: str) -> str:
    """``-O`` value: Ganeti splits on commas, so those inside values (JSON) are escaped."""
    return ",".join(f"{key}={value.replace(',', chr(92) + ',')}" for key, value in params.items())


def image_params(img_id: str, password: str, properties: dict[str, str] | None = None, **extra: str) -> str:
    return osparams(
        img_id=img_id,
        img_format="diskdump",
        img_passwd=password,
        img_properties=json.dumps(properties or PROPERTIES),
        **extra,
    )


# --------------------------------------------------------------------------- reading a guest disk


@dataclass
class Partition:
    number: int
    start: int  # sectors
    size: int  # sectors
    type: str

    @property
    def end(self) -> int:
        return self.start + self.size - 1


@dataclass
class Guest:
    """What the tests check on a deployed disk."""

    disk_sectors: int
    partitions: list[Partition]
    fs_bytes: int
    hostname: str
    root_hash: str
    files: dict[str, bytes]


def disk_bytes(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def partitions(disk: Path) -> list[Partition]:
    table = json.loads(run(["sfdisk", "--json", disk]).output)["partitiontable"]
    result = []
    for entry in table["partitions"]:
        number = int(entry["node"].rsplit("p", 1)[-1]) if "p" in entry["node"][-4:] else int(entry["node"][-1])
        result.append(Partition(number, entry["start"], entry["size"], str(entry["type"])))
    return result


def ext4_bytes(disk: Path, offset: int) -> int:
    """Size of the ext4 filesystem at ``offset`` from its superblock (blocks x block size)."""
    with open(disk, "rb") as fh:
        fh.seek(offset + 1024)
        sb = fh.read(1024)
    assert struct.unpack_from("<H", sb, 0x38)[0] == 0xEF53, "no ext4 superblock at the root partition"
    blocks = struct.unpack_from("<I", sb, 0x04)[0]
    if struct.unpack_from("<I", sb, 0x60)[0] & 0x80:  # INCOMPAT_64BIT
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
    return blocks * (1024 << struct.unpack_from("<I", sb, 0x18)[0])


def read_guest(cluster: Cluster, disk: Path, root_number: int = 1, extra_files: tuple[str, ...] = ()) -> Guest:
    parts = partitions(disk)
    root = next(p for p in parts if p.number == root_number)
    offset, size = root.start * SECTOR, root.size * SECTOR
    with cluster.mounted_ro(disk, offset, size) as mnt:
        hostname = (mnt / "etc/hostname").read_text().strip()
        shadow = (mnt / "etc/shadow").read_text()
        paths = {name: mnt / name.lstrip("/") for name in extra_files}
        files = {name: path.read_bytes() for name, path in paths.items() if path.exists()}
    root_hash = next(line.split(":")[1] for line in shadow.splitlines() if line.startswith("root:"))
    return Guest(disk_bytes(disk) // SECTOR, parts, ext4_bytes(disk, offset), hostname, root_hash, files)


def password_matches(password: str, hashed: str) -> bool:
    """crypt(3) of the host (libxcrypt: yescrypt, sha512, ...) against the guest's hash."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return bool(hashed) and hashed[0] not in "!*" and crypt.crypt(password, hashed) == hashed


def assert_deployed(guest: Guest, name: str, password: str) -> None:
    assert guest.hostname == name
    assert password_matches(password, guest.root_hash), f"root's hash {guest.root_hash!r} is not of {password!r}"
    root = next(p for p in guest.partitions if p.number == 1)
    last = max(guest.partitions, key=lambda p: p.end)
    # The last partition ends 2048 sectors before the end of the disk, as the original leaves it.
    assert last.end == guest.disk_sectors - 2048 - 1, (last, guest.disk_sectors)
    # The root filesystem fills its (grown) partition.
    assert root.size * SECTOR - guest.fs_bytes < 4096 * 16, (root, guest.fs_bytes)
    assert guest.fs_bytes > 1536 * MiB - 2 * MiB


# --------------------------------------------------------------------------- fixtures


class Instances:
    """Instance names for one test; removes them (and their exports) afterwards, whatever happened."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.names: list[str] = []

    def __call__(self, name: str) -> str:
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        present = self.cluster.instances()
        for name in self.names:
            if name in present:
                self.cluster.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name, check=False)
        exports = self.cluster.exec("gnt-backup", "list", "--no-headers", check=False).output
        for line in exports.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1] in self.names:
                self.cluster.exec("gnt-backup", "remove", fields[1], check=False)


@pytest.fixture
def instances(ganeti_cluster: Cluster) -> Iterator[Instances]:
    names = Instances(ganeti_cluster)
    try:
        yield names
    finally:
        names.cleanup()


@pytest.fixture
def deploy(snf_deployment: Deployment, snf_helper: Path, debian_image) -> Deployment:
    """Everything a real deployment needs: the helper and the Debian image in IMAGE_DIR."""
    return snf_deployment


def add(
    cluster: Cluster, name: str, params: str, *extra: str, template: str = "file", check: bool = True
) -> subprocess.CompletedProcess | object:
    args = ["gnt-instance", "add", "-o", OS, "-t", template]
    if template != "blockdev":
        args += ["--disk", f"0:size={DISK_MIB}M"]
    if "--net" not in extra:
        args.append("--no-nics")
    return cluster.gnt(*args, *extra, "-O", params, *COMMON_ADD_ARGS, name, check=check)


def summary_lines(log_text: str) -> list[str]:
    """The deployment's summary lines of an OS log (after the log's timestamp and level)."""
    return [line.split(" INFO ", 1)[1] for line in log_text.splitlines() if " INFO summary: " in line]


def prometheus_samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """METRICS_FILE read with Prometheus' own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def last_log(cluster: Cluster, kind: str, name: str) -> str:
    logs = cluster.os_logs(kind, name)
    assert logs, f"no {kind} log for {name}"
    return logs[-1].read_text(errors="replace")


# --------------------------------------------------------------------------- installation


def test_upgrade_keeps_the_edited_settings(snf_deployment: Deployment) -> None:
    """The session installed the previous build, edited snf-image.conf, then upgraded to this build."""
    assert snf_deployment.previous_version == f"{__version__}~e2e.prev"
    assert debpkg.installed_version() == __version__
    assert snf_deployment.settings_edited.startswith("# edited by snf-image's e2e tests")
    assert snf_deployment.settings_after_upgrade == snf_deployment.settings_edited


def test_os_is_invalid_until_the_helper_is_built(
    ganeti_cluster: Cluster, snf_deployment: Deployment, snf_helper: Path
) -> None:
    status = snf_deployment.status_before_helper
    assert status is not None and status.returncode == 1, status
    assert "build it with: snf-image helper build" in status.output, status.output
    before = snf_deployment.diagnose_before_helper
    assert "OS: snf-image [global status: invalid]" in before, before
    assert "run: snf-image helper build" in before, before
    after = ganeti_cluster.gnt("gnt-os", "diagnose").output
    assert "OS: snf-image [global status: valid]" in after, after


def test_os_is_valid_and_lists_every_parameter(
    ganeti_cluster: Cluster, snf_deployment: Deployment, snf_helper: Path
) -> None:
    diagnose = ganeti_cluster.gnt("gnt-os", "diagnose")
    assert "OS: snf-image [global status: valid]" in diagnose.output, diagnose.output
    assert "snf-image+default" in ganeti_cluster.gnt("gnt-os", "list").output
    info = ganeti_cluster.gnt("gnt-os", "info", "snf-image").output
    assert "  - valid: True" in info and "  - trusted: True" in info and "    - default" in info, info
    section = info.split("  - parameters:\n", 1)[1].split("\n  - ", 1)[0]
    shown = dict(line.strip()[2:].split(": ", 1) for line in section.splitlines())
    listed = (Path(__file__).resolve().parents[2] / "parameters.list").read_text().splitlines()
    expected = dict(line.split(None, 1) for line in listed if line.strip())
    assert len(expected) >= 13
    assert shown == expected


# --------------------------------------------------------------------------- refused before any disk


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (osparams(img_id="local://debian.img", img_format="qcow9"), "img_format"),
        (osparams(img_id="local://debian.img", img_format="diskdump", img_properties="{oops"), "img_properties"),
        (
            osparams(
                img_id="local://debian.img",
                img_format="diskdump",
                img_properties='{"OSFAMILY": "linux", "ROOT_PARTITION": }',
            ),
            "img_properties",
        ),
    ],
    ids=["bad-format", "not-json", "broken-json"],
)
def test_verify_refuses_bad_parameters_before_any_disk(
    ganeti_cluster: Cluster,
    snf_deployment: Deployment,
    snf_helper: Path,
    instances: Instances,
    params: str,
    reason: str,
) -> None:
    name = instances("inst9.gnt.test")
    result = add(ganeti_cluster, name, params, check=False)
    assert result.returncode != 0
    assert "OS Parameters validation failed" in result.output, result.output
    assert f"ERROR: {reason}" in result.output, result.output
    assert name not in ganeti_cluster.instances()
    assert not (FILE_STORAGE / name).exists()


def test_unreachable_image_fails_the_job_with_its_reason(
    ganeti_cluster: Cluster, snf_deployment: Deployment, snf_helper: Path, instances: Instances
) -> None:
    name = instances("inst9.gnt.test")
    params = image_params(f"http://{NODE_IP}:9/debian.img", "s3cr3t")  # nothing listens on port 9
    snf_deployment.reset_monitor(name)
    result = add(ganeti_cluster, name, params, check=False)
    assert result.returncode != 0
    assert "OS create script failed" in result.output, result.output
    log_text = last_log(ganeti_cluster, "add", name)
    errors = [line for line in log_text.splitlines() if line.startswith("ERROR: ")]
    assert errors, log_text
    assert f"{NODE_IP}:9" in errors[-1] and "refused" in errors[-1], errors
    assert errors[-1] in result.output  # the operator sees the reason in the job's output
    monitor = snf_deployment.monitor_messages(name)
    assert [m["type"] for m in monitor].count(constants.MSG_ERROR) == 1, monitor
    assert name in ganeti_cluster.instances()  # Ganeti keeps a failed create's instance (the fixture removes it)
    (line,) = summary_lines(log_text)
    assert f"instance={name} image=http://{NODE_IP}:9/debian.img source=network" in line, line
    assert line.endswith(" result=failure"), line


# --------------------------------------------------------------------------- deployments


def test_add_from_local_image_and_progress_stream(
    ganeti_cluster: Cluster, deploy: Deployment, instances: Instances
) -> None:
    name = instances("inst1.gnt.test")
    deploy.reset_monitor(name)
    add(ganeti_cluster, name, image_params("local://debian.img", "Local-pa55"))
    guest = read_guest(ganeti_cluster, ganeti_cluster.disk_path(name))
    assert_deployed(guest, name, "Local-pa55")

    messages = deploy.monitor_messages(name)
    for message in messages:
        assert schemas.first_error("progress", message) is None, message
        assert "timestamp" in message
    types = [m["type"] for m in messages]
    assert constants.MSG_ERROR not in types, messages
    copies = [m for m in messages if m["type"] == constants.MSG_COPY_PROGRESS]
    assert copies and copies[-1]["position"] == copies[-1]["total"] and copies[-1]["progress"] == 100
    starts = [m["task"] for m in messages if m.get("subtype") == constants.HELPER_TASK_START]
    ends = [m["task"] for m in messages if m.get("subtype") == constants.HELPER_TASK_END]
    assert starts and starts == ends, (starts, ends)
    for task in ("FixPartitionTable", "AssignHostname", "ChangePassword"):
        assert task in starts, starts
    assert messages[-1]["type"] == constants.MSG_INFO, messages[-1]

    (line,) = summary_lines(last_log(ganeti_cluster, "add", name))
    assert f"operation=create instance={name} image=local://debian.img source=local bytes=" in line, line
    assert " os_family=linux copy=" in line and " helper=" in line and line.endswith(" result=success"), line
    found = prometheus_samples(deploy.metrics_file)
    assert found[(metrics.DEPLOYMENTS, (("operation", "create"), ("os_family", "linux"), ("result", "success")))] >= 1
    assert found[(metrics.PHASE_SECONDS + "_count", (("phase", "helper"),))] >= 1
    assert found[(metrics.HELPERS_RUNNING, ())] == 0


def test_add_over_http_from_inside_the_cluster_network(
    ganeti_cluster: Cluster, deploy: Deployment, instances: Instances
) -> None:
    name = instances("inst2.gnt.test")
    with ganeti_cluster.http_server(deploy.image_dir) as url:
        add(ganeti_cluster, name, image_params(f"{url}/debian.img", "Http-pa55"))
    assert f"{url}/debian.img" in last_log(ganeti_cluster, "add", name)
    assert_deployed(read_guest(ganeti_cluster, ganeti_cluster.disk_path(name)), name, "Http-pa55")


def test_blockdev_adoption_then_reinstall(ganeti_cluster: Cluster, deploy: Deployment, instances: Instances) -> None:
    name = instances("inst3.gnt.test")
    device = ganeti_cluster.loop_device("blk-e2e", DISK_MIB)
    add(
        ganeti_cluster,
        name,
        image_params("local://debian.img", "Block-pa55"),
        "--disk",
        f"0:adopt={device}",
        template="blockdev",
    )
    with open(device, "rb") as fh:
        assert fh.read(MiB) == bytes(MiB)  # adoption does not run create
    ganeti_cluster.gnt("gnt-instance", "reinstall", "-f", "-O", image_params("local://debian.img", "Block-pa55"), name)
    log_text = last_log(ganeti_cluster, "add", name)
    assert "DISK_0" not in log_text or "Traceback" not in log_text
    assert_deployed(read_guest(ganeti_cluster, device), name, "Block-pa55")


def test_kvm_hypervisor(ganeti_cluster: Cluster, deploy: Deployment, instances: Instances) -> None:
    name = instances("inst4.gnt.test")
    add(
        ganeti_cluster,
        name,
        image_params("local://debian.img", "Kvm-pa55"),
        "-H",
        "kvm",
        "--net",
        "0:mode=bridged,link=gntbr0",
    )
    assert "kvm" in ganeti_cluster.exec("gnt-instance", "list", "--no-headers", "-o", "hypervisor", name).output
    assert_deployed(read_guest(ganeti_cluster, ganeti_cluster.disk_path(name)), name, "Kvm-pa55")


def test_reinstall_rename_export_import(ganeti_cluster: Cluster, deploy: Deployment, instances: Instances) -> None:
    """One instance through an operator's life: add, reinstall with new settings, rename, export, import."""
    first, renamed = instances("inst5.gnt.test"), instances("inst6.gnt.test")
    add(ganeti_cluster, first, image_params("local://debian.img", "First-pa55"))

    # reinstall: a new password, and properties that ask for a swap partition
    swap_props = {**PROPERTIES, "SWAP": "2:32"}
    ganeti_cluster.gnt(
        "gnt-instance", "reinstall", "-f", "-O", image_params("local://debian.img", "Second-pa55", swap_props), first
    )
    guest = read_guest(ganeti_cluster, ganeti_cluster.disk_path(first), extra_files=("/etc/fstab",))
    assert_deployed(guest, first, "Second-pa55")
    assert not password_matches("First-pa55", guest.root_hash)
    swap = next(p for p in guest.partitions if p.number == 2)
    assert swap.size * SECTOR == 32 * MiB and swap.type.lower() in ("82", "s")
    assert b"swap" in guest.files["/etc/fstab"]

    # rename: the guest's hostname follows
    result = ganeti_cluster.gnt("gnt-instance", "rename", "-f", "--no-name-check", "--no-ip-check", first, renamed)
    assert "Could not run OS rename script" not in result.output, result.output
    guest = read_guest(ganeti_cluster, ganeti_cluster.disk_path(renamed))
    assert guest.hostname == renamed
    assert password_matches("Second-pa55", guest.root_hash)

    # export; then, as after losing the instance, import the export into a new instance of the same name:
    # Ganeti runs the rename script after every import, and only a same-name import leaves nothing to rename
    ganeti_cluster.gnt("gnt-backup", "export", "-n", NODE, renamed)
    exported = sorted(p for p in (EXPORT_DIR / renamed).iterdir() if p.name != "config.ini")
    assert len(exported) == 1
    assert _same_bytes(exported[0], ganeti_cluster.disk_path(renamed))
    ganeti_cluster.gnt("gnt-instance", "remove", "-f", renamed)
    result = ganeti_cluster.gnt(
        "gnt-backup",
        "import",
        "-n",
        NODE,
        "-t",
        "file",
        "--disk",
        f"0:size={DISK_MIB}M",
        "--no-name-check",
        "--no-ip-check",
        "--no-nics",
        "--src-node",
        NODE,
        "--src-dir",
        str(EXPORT_DIR / renamed),
        renamed,
    )
    assert "not imported successfully" not in result.output, result.output  # a failed import only warns
    assert "Failed to run rename script" not in result.output, result.output
    assert _same_bytes(ganeti_cluster.disk_path(renamed), exported[0]), (
        "the imported disk differs from the export: the rename Ganeti runs after the import "
        f"(OLD_INSTANCE_NAME = INSTANCE_NAME = {renamed}) must leave the disk alone"
    )


def _same_bytes(a: Path, b: Path) -> bool:
    """Chunked comparison (GiB-sized disks); reads the whole length of both."""
    if disk_bytes(a) != disk_bytes(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(8 * MiB)
            if chunk != fb.read(8 * MiB):
                return False
            if not chunk:
                return True


# --------------------------------------------------------------------------- last: the package goes


def test_purge_leaves_no_file_of_ours(ganeti_cluster: Cluster, snf_deployment: Deployment, snf_helper: Path) -> None:
    """apt purge: the package's files, its settings and the state snf-image made on the node are gone."""
    files = debpkg.package_files()
    assert Path("/usr/share/ganeti/os/snf-image/create") in files
    assert Path(
        "/var/lib/snf-image/ganeti-os/ganeti_api_version"
    ).is_file()  # what Ganeti reads: state, not a package file
    debpkg.apt("purge", debpkg.PACKAGE)
    assert debpkg.installed_version() is None
    assert debpkg.leftovers(files) == []
    assert "snf-image" not in ganeti_cluster.gnt("gnt-os", "diagnose").output
