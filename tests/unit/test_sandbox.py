"""The pure parts of the image programs' sandbox: command lines, plan, devices, mounts, output, verdicts.

The sandbox itself needs the helper VM (tests/integration/test_image_code_sandbox.py);
here: what it is told to do, and that it refuses to run anywhere else.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helper import confine, sandbox
from helper.properties import Properties


def test_the_program_keeps_only_the_capabilities_to_edit_the_guest() -> None:
    argv = sandbox.confined_argv(["/tmp/snf-custom-task-x/custom-task", "pre-exec"])
    assert argv[0] == sandbox.SETPRIV
    assert argv[argv.index("--") + 1 :] == ["/tmp/snf-custom-task-x/custom-task", "pre-exec"]
    bounding = argv[argv.index("--bounding-set") + 1].split(",")
    assert bounding[0] == "-all"
    kept = {cap.removeprefix("+") for cap in bounding[1:]}
    assert kept == {"chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setfcap", "sys_chroot"}
    assert argv[argv.index("--inh-caps") + 1] == "-all"
    assert "--no-new-privs" in argv[: argv.index("--")]


def test_the_stage_runs_in_new_namespaces_and_dies_with_unshare() -> None:
    argv = sandbox.unshare_argv("/usr/bin/python3")
    options = argv[: argv.index("--")]
    assert options[0] == "unshare"
    assert {"--mount", "--pid", "--ipc", "--uts", "--net", "--cgroup", "--fork", "--kill-child"} <= set(options)
    assert argv[argv.index("--") + 1 :] == ["/usr/bin/python3", "-m", "helper.confine"]


def test_the_plan_travels_as_json() -> None:
    plan = sandbox.Plan(
        argv=["setpriv", "--", "x"],
        env={"PATH": "/bin", "SNF_IMAGE_TARGET": "/tmp/snf-target-1"},
        target="/tmp/snf-target-1",
        devices=[("/dev/vdb", 254, 16), ("/dev/vdb1", 254, 17)],
        readonly=["/tmp/snf-custom-task-1"],
        cgroup="/sys/fs/cgroup/snf-image-program-1",
        status_fd=7,
    )
    assert sandbox.Plan.from_json(plan.to_json()) == plan


def fake_sys_block(root: Path) -> Path:
    for entry, dev, partition in (
        ("vdb", "254:16", None),
        ("vdb/vdb1", "254:17", "1"),
        ("vdb/vdb2", "254:18", "2"),
        ("vdc", "254:32", None),
    ):
        (root / entry).mkdir(parents=True)
        (root / entry / "dev").write_text(dev + "\n")
        if partition:
            (root / entry / "partition").write_text(partition + "\n")
    (root / "vdb" / "queue").mkdir()  # not a partition
    return root


def test_the_sandbox_gets_the_instance_disks_and_their_partitions_only(tmp_path: Path) -> None:
    sys_block = fake_sys_block(tmp_path)
    nodes = sandbox.device_nodes([Path("/dev/vdb"), Path("/dev/vdc")], sys_block)
    assert nodes == [("/dev/vdb", 254, 16), ("/dev/vdb1", 254, 17), ("/dev/vdb2", 254, 18), ("/dev/vdc", 254, 32)]
    with pytest.raises(sandbox.SandboxError, match="cannot give the sandbox the disk vdz"):
        sandbox.device_nodes([Path("/dev/vdz")], sys_block)


MOUNTINFO = r"""22 1 254:0 / / ro,relatime - ext4 /dev/vda ro
25 22 0:21 / /tmp rw,nosuid,nodev - tmpfs tmp rw
40 25 254:33 / /tmp/snf-target-ab rw,relatime - ext4 /dev/vdc1 rw
41 40 254:34 / /tmp/snf-target-ab/boot rw,relatime - ext4 /dev/vdc2 rw
42 40 254:35 / /tmp/snf-target-ab/srv/with\040space rw - ext4 /dev/vdc3 rw
43 25 254:36 / /tmp/snf-target-abc rw - ext4 /dev/vdd1 rw
"""


def test_the_mounts_of_the_guest_are_found_parents_first() -> None:
    assert confine.mounts_under(MOUNTINFO, "/tmp/snf-target-ab") == [
        "/tmp/snf-target-ab",
        "/tmp/snf-target-ab/boot",
        "/tmp/snf-target-ab/srv/with space",
    ]
    assert confine.mounts_under(MOUNTINFO, "/mnt") == []


def test_only_the_tail_of_the_output_is_kept() -> None:
    tail = sandbox.OutputTail(limit=10)
    tail.feed(b"abc")
    assert tail.text() == "abc" and not tail.cut
    tail.feed(b"x" * 1_000_000 + b"\nlast")
    assert tail.text() == "xxxxx\nlast" and tail.total == 1_000_008 and tail.cut
    tail.feed(b"\xff")
    assert tail.text().endswith("last\ufffd")


def outcome(returncode: int | None, output: str = "", **kw: object) -> sandbox.Outcome:
    return sandbox.Outcome(returncode, output, len(output), 30, **kw)  # type: ignore[arg-type]


def test_what_the_operator_reads_when_a_program_fails() -> None:
    what = "The custom task"
    assert outcome(0).failure(what) is None
    assert outcome(101).failure(what, (0, 101)) is None
    assert outcome(3, "working\nbroken: no root\n\n").failure(what) == (
        "The custom task failed with exit code 3: broken: no root"
    )
    assert outcome(1).failure(what) == "The custom task failed with exit code 1"
    assert outcome(-signal.SIGSEGV).failure(what) == "The custom task was killed by signal SIGSEGV"
    assert outcome(None).failure(what) == "The custom task ended abnormally: its sandbox went away before it did"
    assert outcome(None, timed_out=True).failure(what) == (
        "The custom task did not finish in 30 s (IMAGE_PROGRAM_TIMEOUT) and was stopped"
    )
    assert outcome(None, out_of_memory=True, memory_mib=240).failure(what) == (
        "The custom task was killed: it went over its memory limit of 240 MiB"
    )
    long = outcome(2, "y" * 5000).failure(what)
    assert long is not None and len(long) < 400 and long.endswith("...")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, sandbox.DEFAULT_TIMEOUT), ("", sandbox.DEFAULT_TIMEOUT), (" 42 ", 42), ("86400", 86400)],
)
def test_the_time_limit(value: str | None, seconds: int) -> None:
    properties = Properties({} if value is None else {"image_program_timeout": value})
    assert sandbox.time_limit(properties) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "ten", "86401", "9" * 100])
def test_a_bad_time_limit_is_refused(value: str) -> None:
    with pytest.raises(sandbox.SandboxError, match="Invalid IMAGE_PROGRAM_TIMEOUT"):
        sandbox.time_limit(Properties({"IMAGE_PROGRAM_TIMEOUT": value}))


def test_the_sandbox_is_made_only_inside_the_helper_vm(tmp_path: Path) -> None:
    """Outside the helper it would mount cgroup2 and change kernel settings of the host: it refuses."""
    program = sandbox.Program(("/bin/true",), {}, tmp_path, ())
    with pytest.raises(sandbox.SandboxError, match="image programs run only inside the helper VM"):
        sandbox.run(program, 5)
