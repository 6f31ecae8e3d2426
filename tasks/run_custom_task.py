"""RunCustomTask: run the image's own configuration program, sandboxed, in the helper.

The ``CUSTOM_TASK`` property holds a base64-encoded program. It is decoded
into a temporary file and run as root inside the helper VM -- not chrooted
into the image, so it has the helper's tools and sees the mounted image at
``$SNF_IMAGE_TARGET`` -- but in the sandbox of image programs
(``helper/sandbox.py``): its own namespaces, a /dev with only the instance
disks, no way to the helper's disks, serial ports or other processes, no
capability to mount, load modules or power off, at most 256 processes and
half the helper's memory, and a time limit (the ``IMAGE_PROGRAM_TIMEOUT``
property, in seconds; 300 by default) after which it is stopped with all it
started. A program without a ``#!`` line is run by ``/bin/sh``. Its
environment describes the deployment as the overwrite scripts' does
(``SNF_IMAGE_TARGET``, ``SNF_IMAGE_DEV``, ``SNF_IMAGE_DEV_<n>``,
``SNF_IMAGE_OSFAMILY``, ``SNF_IMAGE_HOSTNAME``, ``SNF_IMAGE_PROPERTY_<NAME>``,
...), without the password, hash or keys, which the original leaked to it.
A non-zero exit, the time limit or the memory limit fails the deployment,
with the last line of its output as the reason. Without ``CUSTOM_TASK`` the
task only warns.

Properties: CUSTOM_TASK, IMAGE_PROGRAM_TIMEOUT.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path

from helper import sandbox
from helper.commands import TaskError
from helper.framework import ALL, Context, Task, overwrite_env

TASK = Task(
    name="RunCustomTask",
    order=70,
    families=ALL,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

NO_TASK = "No custom task to run (the CUSTOM_TASK property is empty)"


def decode_script(value: str) -> bytes:
    """The program in a CUSTOM_TASK value (blanks and line breaks in the base64 are allowed)."""
    try:
        script = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskError("CUSTOM_TASK is not valid base64") from exc
    if not script:
        raise TaskError("CUSTOM_TASK decodes to an empty program")
    return script


def command(script: bytes, path: Path) -> list[str]:
    """How to run the program saved at ``path``: directly with a #! line, else with /bin/sh."""
    return [str(path)] if script.startswith(b"#!") else ["/bin/sh", str(path)]


def program(ctx: Context, script: bytes, path: Path) -> sandbox.Program:
    """The sandboxed run of the program saved at ``path``: its directory is all of the helper it reads."""
    return sandbox.Program(
        argv=tuple(command(script, path)),
        env=overwrite_env(ctx, TASK),
        target=ctx.target,
        disks=tuple(ctx.disks),
        readonly=(path.parent,),
    )


def run(ctx: Context) -> None:
    """Decode CUSTOM_TASK and run it in its sandbox; its failure is the task's failure."""
    value = ctx.properties.value("CUSTOM_TASK")
    if not value:
        ctx.warning(NO_TASK)
        return
    script = decode_script(value)
    seconds = sandbox.time_limit(ctx.properties)
    with tempfile.TemporaryDirectory(prefix="snf-custom-task-") as tmp:
        path = Path(tmp) / "custom-task"
        path.write_bytes(script)
        os.chmod(path, 0o700)
        outcome = sandbox.run(program(ctx, script, path), seconds)
    problem = outcome.failure("The custom task")
    if problem is not None:
        raise TaskError(problem)
