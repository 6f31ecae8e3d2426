"""RunCustomTask: run the image's own configuration script in the helper.

The ``CUSTOM_TASK`` property holds a base64-encoded program. It is decoded
into a temporary file and executed inside the helper VM as root -- not
chrooted into the image, so it runs with the helper's tools and sees the
mounted image at ``$SNF_IMAGE_TARGET``. A program without a ``#!`` line is
run by ``/bin/sh``. Its environment describes the deployment as the
overwrite scripts' does (``SNF_IMAGE_TARGET``, ``SNF_IMAGE_DEV``,
``SNF_IMAGE_DEV_<n>``, ``SNF_IMAGE_OSFAMILY``, ``SNF_IMAGE_HOSTNAME``,
``SNF_IMAGE_PROPERTY_<NAME>``, ...), without the password, hash or keys,
which the original leaked to it. A non-zero exit fails the deployment.
Without ``CUSTOM_TASK`` the task only warns.

Properties: CUSTOM_TASK.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path

from helper.commands import CommandError, TaskError
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


def run(ctx: Context) -> None:
    """Decode CUSTOM_TASK and run it; its failure is the task's failure."""
    value = ctx.properties.value("CUSTOM_TASK")
    if not value:
        ctx.warning(NO_TASK)
        return
    script = decode_script(value)
    with tempfile.TemporaryDirectory(prefix="snf-custom-task-") as tmp:
        path = Path(tmp) / "custom-task"
        path.write_bytes(script)
        os.chmod(path, 0o700)
        try:
            proc = ctx.run(command(script, path), check=False, env=overwrite_env(ctx, TASK))
        except OSError as exc:  # e.g. ENOEXEC: a #! line naming something that is not a program
            raise TaskError(f"The custom task cannot be executed: {exc.strerror}") from exc
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout or "").strip().splitlines()
        detail = f": {output[-1]}" if output else ""
        message = f"The custom task failed with exit code {proc.returncode}{detail}"
        raise CommandError(message, proc.stdout + proc.stderr)
