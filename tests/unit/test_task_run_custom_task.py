"""RunCustomTask: decoding, the command line, its sandboxed run, and small scripts in a fake deployment.

The scripts run without their sandbox here (tests.fakeguest.run_unsandboxed):
only the helper VM can build it; tests/integration/test_image_code_sandbox.py
runs custom tasks in the real one.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from helper import sandbox
from helper.commands import TaskError
from tasks import run_custom_task as rc
from tests.fakeguest import make_ctx, make_guest, run_unsandboxed, warnings


@pytest.fixture(autouse=True)
def unsandboxed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "run", run_unsandboxed)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_decode_script() -> None:
    encoded = b64("#!/bin/sh\necho hi\n")
    assert rc.decode_script(encoded[:8] + "\n " + encoded[8:]) == b"#!/bin/sh\necho hi\n"
    with pytest.raises(TaskError, match="not valid base64"):
        rc.decode_script("@@@")
    with pytest.raises(TaskError, match="empty program"):
        rc.decode_script("")


def test_command() -> None:
    assert rc.command(b"#!/usr/bin/python3\n", Path("/t/s")) == ["/t/s"]
    assert rc.command(b"echo hi\n", Path("/t/s")) == ["/bin/sh", "/t/s"]


def test_the_program_sees_the_guest_the_disks_and_its_own_file(tmp_path: Path) -> None:
    ctx = make_ctx(make_guest(tmp_path), properties={"USERS": "root"}, disks=[Path("/dev/vdb"), Path("/dev/vdc")])
    program = rc.program(ctx, b"echo hi\n", Path("/tmp/snf-custom-task-x/custom-task"))
    assert program.argv == ("/bin/sh", "/tmp/snf-custom-task-x/custom-task")
    assert program.target == tmp_path
    assert program.disks == (Path("/dev/vdb"), Path("/dev/vdc"))
    assert program.readonly == (Path("/tmp/snf-custom-task-x"),)
    assert program.env["SNF_IMAGE_PROPERTY_USERS"] == "root"


def test_the_time_limit_is_a_property(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def record(program: sandbox.Program, seconds: float) -> sandbox.Outcome:
        seen.append(seconds)
        return sandbox.Outcome(0, "", 0, seconds)

    monkeypatch.setattr(sandbox, "run", record)
    for properties in ({}, {"IMAGE_PROGRAM_TIMEOUT": "42"}):
        rc.run(make_ctx(make_guest(tmp_path), properties={"CUSTOM_TASK": b64("exit 0\n"), **properties}))
    assert seen == [sandbox.DEFAULT_TIMEOUT, 42]
    with pytest.raises(sandbox.SandboxError, match="Invalid IMAGE_PROGRAM_TIMEOUT: '0'"):
        rc.run(
            make_ctx(make_guest(tmp_path), properties={"CUSTOM_TASK": b64("exit 0\n"), "IMAGE_PROGRAM_TIMEOUT": "0"})
        )


def test_run_empty_warns(tmp_path: Path) -> None:
    ctx = make_ctx(make_guest(tmp_path))
    rc.run(ctx)
    assert warnings(ctx) == [rc.NO_TASK]


def test_run_sees_the_deployment_but_no_secrets(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    script = '#!/bin/sh\nset -e\nenv > "$SNF_IMAGE_TARGET/env.txt"\necho "$0" > "$SNF_IMAGE_TARGET/argv0"\n'
    ctx = make_ctx(
        root,
        {"password": "hunter2", "auth_keys": "ssh-rsa SECRET"},
        {"CUSTOM_TASK": b64(script), "USERS": "root"},
        disks=[Path("/dev/vdb"), Path("/dev/vdc")],
    )
    rc.run(ctx)
    env = dict(line.split("=", 1) for line in (root / "env.txt").read_text().splitlines() if "=" in line)
    assert env["SNF_IMAGE_TARGET"] == str(root)
    assert env["SNF_IMAGE_DEV"] == "/dev/vdb" and env["SNF_IMAGE_DEV_1"] == "/dev/vdc"
    assert env["SNF_IMAGE_HOSTNAME"] == "vm1.example.com"
    assert env["SNF_IMAGE_PROPERTY_USERS"] == "root"
    assert env["SNF_IMAGE_TASK"] == "RunCustomTask"
    text = (root / "env.txt").read_text()
    assert "hunter2" not in text and "SECRET" not in text
    assert not Path((root / "argv0").read_text().strip()).exists()  # the temporary script is gone


def test_run_without_shebang_uses_sh(tmp_path: Path) -> None:
    root = make_guest(tmp_path)
    rc.run(make_ctx(root, properties={"CUSTOM_TASK": b64('touch "$SNF_IMAGE_TARGET/ran"\n')}))
    assert (root / "ran").exists()


def test_run_failure_is_a_task_error(tmp_path: Path) -> None:
    ctx = make_ctx(make_guest(tmp_path), properties={"CUSTOM_TASK": b64("#!/bin/sh\necho broken >&2\nexit 3\n")})
    with pytest.raises(TaskError, match="exit code 3: broken"):
        rc.run(ctx)
    ctx = make_ctx(make_guest(tmp_path), properties={"CUSTOM_TASK": b64("#!/nonexistent/interpreter\n")})
    with pytest.raises(TaskError, match=r"exit code 127: setpriv: failed to execute .*custom-task"):
        rc.run(ctx)
