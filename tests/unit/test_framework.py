"""Ordering, selection, exclusion and overwrite logic of the task framework, with fake tasks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helper import framework, runner, sandbox
from helper.commands import TaskError
from helper.framework import ALL, LINUX, WINDOWS, Context, LoadedTask, Task
from snf_image import schemas
from snf_image.contract.rules import RulesError, new_result_token
from tests.fakeguest import make_ctx, make_rules, run_unsandboxed


def fake(name: str, order: int, ran: list[str], **attrs: Any) -> LoadedTask:
    def body(ctx: Context) -> None:
        ran.append(name)

    return LoadedTask(Task(name=name, order=order, **attrs), body)


def test_discover_sorts_by_order_then_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "faketasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, name, order in [("zeta", "Zeta", 10), ("alpha", "Beta", 50), ("b", "Alpha", 50), ("c", "First", 1)]:
        (pkg / f"{module}.py").write_text(
            textwrap.dedent(f'''
                """Docs of {name}."""
                from helper.framework import Task
                TASK = Task(name="{name}", order={order})
                def run(ctx):
                    pass
            ''')
        )
    (pkg / "_private.py").write_text("raise RuntimeError('not a task')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        loaded = framework.discover("faketasks")
    finally:
        for mod in [m for m in sys.modules if m.startswith("faketasks")]:
            del sys.modules[mod]
    assert [t.name for t in loaded] == ["First", "Zeta", "Alpha", "Beta"]
    assert loaded[0].doc == "Docs of First."


def test_module_without_declaration_is_rejected() -> None:
    with pytest.raises(TypeError):
        framework.load_module(sys.modules[__name__])


def test_real_tasks_are_declared_in_order() -> None:
    names = [t.name for t in framework.discover()]
    expected = [
        "FixPartitionTable",
        "FilesystemResizeUnmounted",
        "MountImage",
        "FilesystemResizeMounted",
        "UmountImage",
    ]
    assert [n for n in names if n in expected] == expected
    assert all(t.doc for t in framework.discover())


def test_task_declaration_is_checked() -> None:
    with pytest.raises(ValueError):
        Task(name="Bad-Name", order=1)
    with pytest.raises(ValueError):
        Task(name="Good", order=1, families=frozenset({"beos"}))


def test_every_task_gets_start_and_end(tmp_path: Path) -> None:
    ran: list[str] = []
    ctx = make_ctx(tmp_path)
    framework.run_tasks([fake("One", 1, ran), fake("Two", 2, ran)], ctx)
    assert ran == ["One", "Two"]
    assert ctx.reporter.lines == [("start", "One"), ("end", "One"), ("start", "Two"), ("end", "Two")]


@pytest.mark.parametrize(
    ("props", "attrs", "excluded"),
    [
        ({"EXCLUDE_TASK_DELETESSHKEYS": "yes"}, {"excludable": True}, True),
        ({"exclude_task_deletesshkeys": "1"}, {"excludable": True}, True),
        ({"EXCLUDE_TASK_DeleteSSHKeys": "yes"}, {"excludable": False}, False),
        ({"EXCLUDE_TASK_DeleteSSHKeys": "no"}, {"excludable": True}, False),
        ({"EXCLUDE_MOUNTED_TASKS": "yes"}, {"mounted": True}, True),
        ({"EXCLUDE_MOUNTED_TASKS": "yes"}, {"mounted": False}, False),
        ({"EXCLUDE_FILESYSTEMRESIZE_TASKS": "on"}, {"resize": True}, True),
        ({"EXCLUDE_FILESYSTEMRESIZE_TASKS": "on"}, {"resize": False}, False),
        ({"CLOUD_INIT": "yes"}, {"cloudinit_skip": True}, True),
        ({"CLOUD_INIT": "yes"}, {"cloudinit_skip": False}, False),
    ],
)
def test_exclusions(tmp_path: Path, props: dict[str, str], attrs: dict[str, bool], excluded: bool) -> None:
    ran: list[str] = []
    ctx = make_ctx(tmp_path, properties=props)
    framework.run_tasks([fake("DeleteSSHKeys", 50, ran, **attrs)], ctx)
    assert (ran == []) is excluded
    assert ctx.reporter.lines[0] == ("start", "DeleteSSHKeys")
    assert ctx.reporter.lines[-1] == ("end", "DeleteSSHKeys")
    warnings = [m for kind, m in ctx.reporter.lines if kind == "warning"]
    if excluded and "CLOUD_INIT" in props:
        assert warnings == ["Task DeleteSSHKeys not running when cloud-init enabled."]
    elif excluded:
        assert warnings == ["Task DeleteSSHKeys was excluded and will not run."]
    else:
        assert warnings == []


def test_family_mismatch_is_a_quiet_no_op(tmp_path: Path) -> None:
    ran: list[str] = []
    ctx = make_ctx(tmp_path, osfamily="freebsd")
    framework.run_tasks([fake("Win", 1, ran, families=WINDOWS), fake("Lin", 2, ran, families=LINUX)], ctx)
    assert ran == []
    assert [k for k, _ in ctx.reporter.lines] == ["start", "end", "start", "end"]


def test_failure_stops_the_run_without_task_end(tmp_path: Path) -> None:
    ran: list[str] = []

    def boom(ctx: Context) -> None:
        raise TaskError("it broke")

    ctx = make_ctx(tmp_path)
    tasks = [fake("One", 1, ran), LoadedTask(Task(name="Bad", order=2), boom), fake("Three", 3, ran)]
    with pytest.raises(TaskError, match="it broke"):
        framework.run_tasks(tasks, ctx)
    assert ran == ["One"]
    assert ctx.reporter.lines[-1] == ("start", "Bad")


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(117, "Structure needs cleaning", "{root}/etc/hosts"), "Structure needs cleaning: /etc/hosts"),
        (OSError(28, "No space left on device"), "No space left on device"),
        (OSError(5, "Input/output error", "/dev/vdb"), "Input/output error: /dev/vdb"),
    ],
)
def test_an_os_error_in_a_task_is_the_images_failure(tmp_path: Path, error: OSError, said: str) -> None:
    """A corrupt or full guest filesystem makes a task's I/O fail: one clear error, no traceback."""
    if error.filename:
        error.filename = error.filename.format(root=tmp_path)

    def io_error(ctx: Context) -> None:
        raise error

    ctx = make_ctx(tmp_path)
    with pytest.raises(TaskError, match=f"^Task Bad failed on the image: {said}$"):
        framework.run_tasks([LoadedTask(Task(name="Bad", order=1), io_error)], ctx)


def test_only_tasks_adds_mounting_machinery(tmp_path: Path) -> None:
    ran: list[str] = []
    tasks = [
        fake("FixPartitionTable", 10, ran),
        fake("MountImage", 30, ran, mounted=True, structural=True),
        fake("AssignHostname", 50, ran, mounted=True),
        fake("ChangePassword", 50, ran, mounted=True),
        fake("UmountImage", 80, ran, mounted=True, structural=True),
    ]
    chosen = framework.select(tasks, ["assignhostname"])
    assert [t.name for t in chosen] == ["MountImage", "AssignHostname", "UmountImage"]
    assert [t.name for t in framework.select(tasks, ["FixPartitionTable"])] == ["FixPartitionTable"]
    assert framework.select(tasks, None) == tasks
    with pytest.raises(TaskError, match="nosuchtask"):
        framework.select(tasks, ["NoSuchTask"])


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    directory = tmp_path / "root" / "snf-image" / "helper"
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


@pytest.fixture(autouse=True)
def unsandboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overwrite scripts run without their sandbox here: only the helper VM can build it."""
    monkeypatch.setattr(sandbox, "run", run_unsandboxed)


def overridable_ctx(tmp_path: Path, allow: str = "yes") -> tuple[Context, list[str], LoadedTask]:
    ran: list[str] = []
    ctx = make_ctx(tmp_path, properties={"ALLOW_MOUNTED_TASK_OVERWRITING": allow})
    return ctx, ran, fake("AssignHostname", 50, ran, overridable=True, mounted=True)


def test_overwrite_replaces_the_task(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_script(tmp_path, "Overwrite_Task_AssignHostname", f'echo "$1 $SNF_IMAGE_TASK" >> {log}\nexit 0\n')
    ctx, ran, task = overridable_ctx(tmp_path)
    framework.run_tasks([task], ctx)
    assert ran == []
    assert log.read_text() == "pre-exec AssignHostname\n"
    assert (
        "warning",
        "Task AssignHostname was overwritten by file: `/root/snf-image/helper/Overwrite_Task_AssignHostname'",
    ) in ctx.reporter.lines


def test_overwrite_101_runs_task_then_post_exec(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_script(
        tmp_path, "overwrite_task_AssignHostname", f'echo "$1" >> {log}\n[ "$1" = pre-exec ] && exit 101\nexit 0\n'
    )
    ctx, ran, task = overridable_ctx(tmp_path)
    framework.run_tasks([task], ctx)
    assert ran == ["AssignHostname"]
    assert log.read_text() == "pre-exec\npost-exec\n"


def test_overwrite_failure_fails_the_task(tmp_path: Path) -> None:
    write_script(tmp_path, "overwrite_task_AssignHostname", "echo no luck >&2\nexit 3\n")
    ctx, _, task = overridable_ctx(tmp_path)
    with pytest.raises(TaskError, match=r"overwrite_task_AssignHostname pre-exec failed with exit code 3: no luck$"):
        framework.run_tasks([task], ctx)


def test_overwrite_post_exec_may_not_ask_for_the_task_again(tmp_path: Path) -> None:
    write_script(tmp_path, "overwrite_task_AssignHostname", "exit 101\n")
    ctx, ran, task = overridable_ctx(tmp_path)
    with pytest.raises(TaskError, match=r"overwrite_task_AssignHostname post-exec failed with exit code 101$"):
        framework.run_tasks([task], ctx)
    assert ran == ["AssignHostname"]


def test_overwrite_runs_in_the_sandbox_with_the_guest_and_the_disks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write_script(tmp_path, "overwrite_task_AssignHostname", "exit 0\n")
    seen: list[tuple[sandbox.Program, float]] = []

    def record(program: sandbox.Program, seconds: float) -> sandbox.Outcome:
        seen.append((program, seconds))
        return sandbox.Outcome(0, "", 0, seconds)

    monkeypatch.setattr(sandbox, "run", record)
    ctx, _, task = overridable_ctx(tmp_path)
    framework.run_tasks([task], ctx)
    ((program, seconds),) = seen
    assert program.argv == (str(script), "pre-exec")
    assert program.target == tmp_path and program.disks == (Path("/dev/vdb"),) and program.readonly == ()
    assert program.env == framework.overwrite_env(ctx, task.task)
    assert seconds == sandbox.DEFAULT_TIMEOUT


def test_an_image_program_can_always_start_whatever_the_properties(tmp_path: Path) -> None:
    """A property the kernel would refuse in an environment (over 128 KiB) stays out; the rest get in."""
    huge = {"CUSTOM_TASK": "A" * (200 * 1024)}
    many = {f"P{i}": "v" * 60 * 1024 for i in range(40)}
    ctx = make_ctx(tmp_path, properties={**huge, **many, "OSFAMILY": "linux"})
    env = framework.overwrite_env(ctx, fake("AssignHostname", 50, []).task)
    assert "SNF_IMAGE_PROPERTY_CUSTOM_TASK" not in env
    assert env["SNF_IMAGE_PROPERTY_OSFAMILY"] == "linux" and env["SNF_IMAGE_PROPERTY_P0"] == "v" * 60 * 1024
    assert sum(len(k) + len(v) for k, v in env.items()) <= framework.PROPERTY_ENV_BUDGET + 4096
    assert subprocess.run(["/bin/true"], env=env, check=False).returncode == 0


def test_overwrite_needs_permission_and_overridable(tmp_path: Path) -> None:
    write_script(tmp_path, "overwrite_task_AssignHostname", "exit 0\n")
    ctx, ran, task = overridable_ctx(tmp_path, allow="no")
    framework.run_tasks([task], ctx)
    assert ran == ["AssignHostname"]
    ctx, ran, _ = overridable_ctx(tmp_path)
    framework.run_tasks([fake("AssignHostname", 50, ran)], ctx)
    assert ran == ["AssignHostname"]


def test_overwrite_symlink_cannot_escape_the_guest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil").write_text("#!/bin/sh\nexit 0\n")
    (outside / "evil").chmod(0o755)
    guest = tmp_path / "guest"
    helper_dir = guest / "root" / "snf-image" / "helper"
    helper_dir.mkdir(parents=True)
    (helper_dir / "overwrite_task_AssignHostname").symlink_to(outside / "evil")
    ran: list[str] = []
    ctx = make_ctx(guest, properties={"ALLOW_MOUNTED_TASK_OVERWRITING": "yes"})
    framework.run_tasks([fake("AssignHostname", 50, ran, overridable=True)], ctx)
    assert ran == ["AssignHostname"]  # the link resolved inside the guest, where nothing exists


# --- the runner's logic, without a VM ---------------------------------------


def one_partition(_: Path) -> Any:
    from helper.detect import Partition, Table

    return Table("msdos", 512, (Partition(1, 2048, 4096, "83"),))


def run_runner(tmp_path: Path, props: dict[str, str], tasks: list[LoadedTask], **kw: Any) -> list[dict[str, Any]]:
    stream = io.StringIO()
    try:
        runner.run(
            make_rules(properties=props, **kw.pop("extra", {})),
            [Path("/dev/vdb")],
            runner.ProgressReporter(stream),
            tasks=tasks,
            target=tmp_path,
            table_reader=one_partition,
            detector=kw.pop("detector", lambda dev, warn: ("linux", 1)),
            **kw,
        )
    finally:
        run_runner.lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    return run_runner.lines  # type: ignore[attr-defined]


def test_runner_exclude_all_tasks(tmp_path: Path) -> None:
    ran: list[str] = []
    lines = run_runner(tmp_path, {"EXCLUDE_ALL_TASKS": "yes"}, [fake("One", 1, ran)])
    assert ran == []
    assert lines == [
        {
            "subtype": "warning",
            "messages": ["EXCLUDE_ALL_TASKS is set. All configuration tasks were prevented from running."],
        }
    ]


def test_runner_autodetects_and_passes_context(tmp_path: Path) -> None:
    seen: list[Context] = []
    task = LoadedTask(Task(name="Look", order=1, families=ALL), seen.append)
    lines = run_runner(tmp_path, {}, [task], detector=lambda dev, warn: ("linux", 1))
    assert [m for ln in lines if ln["subtype"] == "warning" for m in ln["messages"]] == [
        "Needed image properties are missing. Autodetecting them...",
        "Detected OSFAMILY: linux",
        "Detected ROOT_PARTITION: 1",
    ]
    (ctx,) = seen
    assert (ctx.osfamily, ctx.root_partition, ctx.resize_partition) == ("linux", 1, 1)
    assert ctx.device == Path("/dev/vdb") and ctx.target == tmp_path


def test_runner_uses_given_properties(tmp_path: Path) -> None:
    def no_detection(dev: Path, warn: object) -> None:
        raise AssertionError("must not detect")

    seen: list[Context] = []
    run_runner(
        tmp_path,
        {"osfamily": "linux", "root_partition": "1"},
        [LoadedTask(Task(name="Look", order=1), seen.append)],
        detector=no_detection,
    )
    assert seen[0].osfamily == "linux"


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"OSFAMILY": "beos", "ROOT_PARTITION": "1"}, "Invalid OSFAMILY"),
        ({"OSFAMILY": "linux", "ROOT_PARTITION": "x"}, "Invalid ROOT_PARTITION"),
        ({"OSFAMILY": "linux", "ROOT_PARTITION": "3"}, "does not exist"),
    ],
)
def test_runner_rejects_bad_properties(tmp_path: Path, props: dict[str, str], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        run_runner(tmp_path, props, [])


def test_runner_detection_failure(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"Unable to detect .* \(no partition of a type that can hold a root\); set"):
        run_runner(tmp_path, {}, [], detector=lambda dev, warn: None)


def test_a_detection_failure_names_the_partitions_it_turned_down(tmp_path: Path) -> None:
    def detector(device: Path, warn) -> None:
        for number in range(1, 6):
            warn(f"Partition {number} is not a linux root: it holds swap")

    with pytest.raises(TaskError) as failure:
        run_runner(tmp_path, {}, [], detector=detector)
    message = str(failure.value)
    assert "(Partition 1 is not a linux root: it holds swap; Partition 2" in message
    assert "Partition 3 is not" in message and "Partition 4" not in message


def test_runner_failure_hook_runs_before_unmount(tmp_path: Path) -> None:
    calls: list[str] = []

    def boom(ctx: Context) -> None:
        raise TaskError("no")

    with pytest.raises(TaskError):
        run_runner(
            tmp_path,
            {"OSFAMILY": "linux", "ROOT_PARTITION": "1"},
            [LoadedTask(Task(name="Boom", order=1), boom)],
            on_failure=lambda: calls.append("hook"),
        )
    assert calls == ["hook"]


def test_runner_only_tasks(tmp_path: Path) -> None:
    ran: list[str] = []
    tasks = [fake("One", 1, ran), fake("Two", 2, ran)]
    run_runner(tmp_path, {"OSFAMILY": "linux", "ROOT_PARTITION": "1"}, tasks, extra={"only_tasks": ("two",)})
    assert ran == ["Two"]


def test_progress_lines_are_valid_and_bounded() -> None:
    stream = io.StringIO()
    reporter = runner.ProgressReporter(stream)
    reporter.task_start("Fix")
    reporter.warning("x" * 100_000)
    reporter.error("multi\nline\treason")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [ln["subtype"] for ln in lines] == ["task-start", "warning", "error"]
    assert all(len(line) < 4096 for line in stream.getvalue().splitlines())
    assert all(schemas.first_error("progress", line, "helper_line") is None for line in lines)
    assert lines[2]["messages"] == ["multi line reason"]


def test_read_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "rules"
    rules = make_rules(properties={"OSFAMILY": "linux"})
    disk.write_bytes(rules.to_json() + b"\0" * 700)
    assert runner.read_rules(disk) == rules
    disk.write_bytes(b'{"format": 2}' + b"\0" * 10)
    with pytest.raises(RulesError, match="not in format 1"):
        runner.read_rules(disk)
    disk.write_bytes(b"\xff\xfe" + b"\0" * 10)
    with pytest.raises(RulesError, match="UTF-8 JSON"):
        runner.read_rules(disk)
    monkeypatch.setattr(runner, "RULES_MAX_BYTES", 100)
    disk.write_bytes(b"{" * 101)
    with pytest.raises(RulesError, match="larger than the rules disk"):
        runner.read_rules(disk)
    with pytest.raises(RulesError, match="cannot read the rules disk"):
        runner.read_rules(tmp_path / "missing")


def test_find_by_serial(tmp_path: Path) -> None:
    from helper import disks

    for name, serial in [("vda", "snf-helper-root"), ("vdb", "snf-disk0"), ("vdc", "snf-rules")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "serial").write_text(serial + "\n")
    (tmp_path / "loop0").mkdir()
    assert disks.find_by_serial("snf-rules", tmp_path) == Path("/dev/vdc")
    assert disks.find_by_serial("snf-disk7", tmp_path) is None


def test_main_refuses_without_activation_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0 quiet\n")
    monkeypatch.setattr(runner, "CMDLINE", tmp_path / "cmdline")
    monkeypatch.setattr(runner, "RESULT_PORT", str(tmp_path / "result"))
    monkeypatch.setattr(runner, "PROGRESS_PORT", str(tmp_path / "progress"))
    assert runner.main() == 1
    assert (tmp_path / "result").read_text() == (
        "ERROR: snf_image_activate_helper is missing from the kernel command line\n"
    )
    (line,) = (tmp_path / "progress").read_text().splitlines()
    assert json.loads(line)["subtype"] == "error"


def test_main_runs_and_reports_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0 snf_image_activate_helper\n")
    monkeypatch.setattr(runner, "CMDLINE", tmp_path / "cmdline")
    monkeypatch.setattr(runner, "RESULT_PORT", str(tmp_path / "result"))
    monkeypatch.setattr(runner, "PROGRESS_PORT", str(tmp_path / "progress"))
    rules_disk = tmp_path / "rules"
    rules = make_rules(properties={"EXCLUDE_ALL_TASKS": "yes"}, result_token=(token := new_result_token()))
    rules_disk.write_bytes(rules.to_json() + b"\0" * 100)
    monkeypatch.setattr(runner, "wait_for_serial", lambda serial, wait=0: rules_disk)
    assert runner.main() == 0
    assert (tmp_path / "result").read_text() == f"SUCCESS {token}\n"


def test_main_reports_malformed_rules_as_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cmdline").write_text("console=ttyS0 snf_image_activate_helper\n")
    monkeypatch.setattr(runner, "CMDLINE", tmp_path / "cmdline")
    monkeypatch.setattr(runner, "RESULT_PORT", str(tmp_path / "result"))
    monkeypatch.setattr(runner, "PROGRESS_PORT", str(tmp_path / "progress"))
    rules_disk = tmp_path / "rules"
    broken = json.loads(make_rules().to_json())
    broken["nics"] = [{"index": 0, "mac": None, "tags": "dhcp"}]
    rules_disk.write_bytes(json.dumps(broken).encode() + b"\0" * 100)
    monkeypatch.setattr(runner, "wait_for_serial", lambda serial, wait=0: rules_disk)
    assert runner.main() == 1
    assert (tmp_path / "result").read_text() == (
        "ERROR: malformed rules: rules.nics[0].tags: expected an array, not a string\n"
    )
