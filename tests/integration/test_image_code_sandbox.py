"""Image-supplied programs (CUSTOM_TASK, overwrite_task_*) in their sandbox, through the real ``create``.

A real Debian image is deployed in the real helper VM, under each helper kernel,
with a program that attacks the helper (tests/sandboxattacks.py: forge the
result, reach the serial ports and the rules disk by every route, mount, load a
module, write kernel knobs, touch other processes, escape its cgroup, fork
without end, power the VM off) or that abuses its resources (sleeps forever,
fork-bombs, floods its output, eats memory). Each deployment ends in a clean
refusal -- exit code 1, one ``ERROR:`` line, one image-error message, nothing
left behind -- or in a success in which the hostile act had no effect; and the
verdict is always the runner's. What the attacks got is read back from the
deployed disk.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests import guests, helpervm
from tests.osenv import OsDefinition, create_env, install, monitor_messages

pytestmark = pytest.mark.vm

GiB = 1 << 30
SECTOR = 512
ATTACKS = Path(__file__).resolve().parent.parent / "sandboxattacks.py"
PASSWORD = "sandbox-secret-Pa55"
FAILED = "ERROR: Image customization failed: "
#: An image program's environment besides the properties (helper.framework.overwrite_env): no secret in it.
DESCRIBED = {
    "PATH",
    "SNF_IMAGE_TASK",
    "SNF_IMAGE_TARGET",
    "SNF_IMAGE_DEV",
    "SNF_IMAGE_DEV_0",
    "SNF_IMAGE_DEV_COUNT",
    "SNF_IMAGE_OSFAMILY",
    "SNF_IMAGE_ROOT_PARTITION",
    "SNF_IMAGE_RESIZE_PART",
    "SNF_IMAGE_HOSTNAME",
}
KERNELS = ["custom", "debian"]
# Device numbers planted in the image: the result port (4:65) and, for whichever dynamic major
# virtio-blk gets, the first five virtio disks (the rules disk is one of them).
PLANTED_BLOCK = [(major, minor) for major in range(250, 255) for minor in (0, 16, 32, 48, 64)]


@pytest.fixture(scope="module", params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ext4 test guest with device nodes planted in /root/planted and the attacks as an overwrite script."""
    image = guests.guest_image("ext4-msdos")
    images = tmp_path_factory.mktemp("hostile-images")
    hostile = images / "hostile.img"
    subprocess.run(["cp", "--sparse=always", str(image.path), str(hostile)], check=True)
    requests = ["mkdir /root/planted", "cd /root/planted", "mknod ttyS1 c 4 65", "sif ttyS1 mode 020666"]
    for major, minor in PLANTED_BLOCK:
        requests += [f"mknod vd-{major}-{minor} b {major} {minor}", f"sif vd-{major}-{minor} mode 060666"]
    requests += [
        "mkdir /root/snf-image",
        "mkdir /root/snf-image/helper",
        "cd /root/snf-image/helper",
        f"write {ATTACKS} overwrite_task_AssignHostname",
        "sif overwrite_task_AssignHostname mode 0100755",
    ]
    offset = image.meta["partitions"][0]["start"]
    subprocess.run(
        ["debugfs", "-w", "-f", "-", f"{hostile}?offset={offset}"],
        input="\n".join(requests) + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    return hostile


@pytest.fixture
def osdef(tmp_path: Path, kernel: str, hostile_image: Path) -> OsDefinition:
    definition = install(tmp_path / "inst")
    definition.configure(
        HELPER_DIR=str(helpervm.ensure_helper(kernel)), HELPER_SOFT_TIMEOUT="120", IMAGE_DIR=str(hostile_image.parent)
    )
    return definition


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def deploy(osdef: OsDefinition, disk: Path, **properties: str) -> tuple[subprocess.CompletedProcess, float]:
    with open(disk, "wb") as f:
        f.truncate(3 * GiB)
    env = create_env(
        "sandboxed.example.test",
        disk,
        OSP_IMG_ID="local://hostile.img",
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_IMG_PROPERTIES=json.dumps({"EXCLUDE_TASK_DeleteSSHKeys": "yes", **properties}),
    )
    start = time.monotonic()
    result = osdef.run("create", env)
    seconds = time.monotonic() - start
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "qemu-system" in line and str(disk) in line]
    assert not list(osdef.tmpdir.iterdir())
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stderr and "Internal error" not in stderr, stderr[-3000:]
    assert PASSWORD not in stderr
    return result, seconds


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one ERROR line of a failed create (which must also send exactly one image-error)."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, errors
    assert len([m for m in monitor_messages(result.stderr) if m["type"] == "image-error"]) == 1
    return errors[0]


def read_guest(disk: Path, path: str) -> str:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout)
    start = table["partitiontable"]["partitions"][0]["start"] * SECTOR
    return guests.read_fs_file(disk, start, None, "ext4", path).decode()


def check_attacks(disk: Path, phase: str) -> None:
    report = json.loads(read_guest(disk, "/root/sandbox-attacks.json"))
    assert report["phase"] == phase
    abilities = report.pop("abilities")
    environment = report.pop("environment")
    report.pop("phase")
    assert environment["SNF_IMAGE_TARGET"].startswith("/tmp/snf-target-")
    assert environment["SNF_IMAGE_HOSTNAME"] == "sandboxed.example.test"
    assert environment["SNF_IMAGE_DEV"] == environment["SNF_IMAGE_DEV_0"]
    # LC_CTYPE: python3 sets it in its own environment when it starts in the C locale (PEP 538)
    described = {name for name in environment if not name.startswith("SNF_IMAGE_PROPERTY_")} - {"LC_CTYPE"}
    assert described == DESCRIBED
    assert abilities == {
        "read_instance_disk": True,
        "write_tmp": True,
        "dev_null": True,
        "chroot_into_guest": True,
        "planted_rules_node": True,  # one planted node had the rules disk's number: the attack was real
    }
    expected = {
        "serial_ports",
        "mknod_result_port",
        "result_port_from_sysfs",
        "planted_nodes",
        "rules_disk",
        "mount",
        "namespaces",
        "load_module",
        "kernel_knobs",
        "other_processes",
        "signal_init",
        "cgroup_escape",
        "fork_limit",
        "power",
    }
    assert set(report) == expected
    breaches = {name: outcome["detail"] for name, outcome in report.items() if not outcome["refused"]}
    assert breaches == {}
    assert PASSWORD not in json.dumps(report) and PASSWORD not in json.dumps(environment)


def test_custom_task_attacks_are_refused_and_the_runner_decides(osdef: OsDefinition, tmp_path: Path) -> None:
    """The program forges SUCCESS on every route it finds, then fails: the deployment fails, for its reason."""
    disk = tmp_path / "disk.raw"
    result, _ = deploy(osdef, disk, CUSTOM_TASK=b64(ATTACKS.read_text()))
    assert refusal(result) == FAILED + "The custom task failed with exit code 1: attacks finished"
    check_attacks(disk, "custom-task")


def test_a_forged_success_does_not_count(osdef: OsDefinition, tmp_path: Path) -> None:
    """The simplest forgery: SUCCESS on the result port, then failure."""
    script = "#!/bin/sh\necho SUCCESS > /dev/ttyS1\necho 'no luck' >&2\nexit 4\n"
    result, _ = deploy(osdef, tmp_path / "disk.raw", CUSTOM_TASK=b64(script))
    assert refusal(result) == FAILED + "The custom task failed with exit code 4: no luck"
    assert "cannot create /dev/ttyS1: Read-only file system" in result.stderr.decode()


def test_overwrite_script_attacks_are_refused(osdef: OsDefinition, tmp_path: Path) -> None:
    """The image's overwrite_task_AssignHostname attacks in pre-exec, asks for the task (101), then post-exec."""
    disk = tmp_path / "disk.raw"
    result, _ = deploy(osdef, disk, ALLOW_MOUNTED_TASK_OVERWRITING="yes")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    check_attacks(disk, "pre-exec")
    assert read_guest(disk, "/root/sandbox-post-exec") == "post-exec ran\n"
    assert read_guest(disk, "/etc/hostname").strip() == "sandboxed.example.test"


def test_a_program_that_never_ends_is_stopped_with_its_children(osdef: OsDefinition, tmp_path: Path) -> None:
    script = "#!/bin/sh\nsleep 100000 &\n(trap '' TERM HUP; sleep 100000) &\nexec sleep 100000\n"
    result, seconds = deploy(osdef, tmp_path / "disk.raw", CUSTOM_TASK=b64(script), IMAGE_PROGRAM_TIMEOUT="5")
    assert refusal(result) == FAILED + "The custom task did not finish in 5 s (IMAGE_PROGRAM_TIMEOUT) and was stopped"
    assert seconds < 100  # the helper's own timeout (120 s) was not what stopped it


def test_a_fork_bomb_is_contained(osdef: OsDefinition, tmp_path: Path) -> None:
    """The bomb hits the process limit (the shell gives up: "Cannot fork"), the memory limit of its
    cgroup (hundreds of shells), or, still trying, the time limit: which one first depends on load.

    Either way the runner, outside the bomb's cgroup, still forks, cleans up and gives its verdict on time.
    """
    script = "#!/bin/sh\nbomb() { bomb | bomb & }\nwhile true; do bomb; done\n"
    result, seconds = deploy(osdef, tmp_path / "disk.raw", CUSTOM_TASK=b64(script), IMAGE_PROGRAM_TIMEOUT="10")
    error = refusal(result)
    limits = (
        "failed with exit code 2: (.*: )?Cannot fork",
        r"did not finish in 10 s \(IMAGE_PROGRAM_TIMEOUT\) and was stopped",
        r"was killed: it went over its memory limit of [0-9]+ MiB",
    )
    assert re.fullmatch(re.escape(FAILED + "The custom task ") + f"({'|'.join(limits)})", error), error
    assert seconds < 100


def test_a_flood_of_output_is_bounded(osdef: OsDefinition, tmp_path: Path) -> None:
    script = "#!/bin/sh\nyes 'flooding the helper' | head -c 150000000\necho 'last words' >&2\nexit 3\n"
    result, _ = deploy(osdef, tmp_path / "disk.raw", CUSTOM_TASK=b64(script))
    assert refusal(result) == FAILED + "The custom task failed with exit code 3: last words"
    assert len(result.stderr) < 4 << 20  # the console log got the tail, not 150 MB


def test_a_program_that_eats_memory_is_killed(osdef: OsDefinition, tmp_path: Path) -> None:
    script = "#!/usr/bin/python3\nchunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result, _ = deploy(osdef, tmp_path / "disk.raw", CUSTOM_TASK=b64(script))
    error = refusal(result)
    assert error.startswith(FAILED + "The custom task was killed: it went over its memory limit of "), error
