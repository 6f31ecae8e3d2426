"""SSH host keys for a new instance, made on the host at full speed and handed to the jail in the rules.

Under TCG the helper's own ssh-keygen took 4-7 s for the RSA key alone; here
it takes a fraction of a second, and it runs while the image is being
copied. One key of each type an sshd may use (rsa, ecdsa, ed25519) is made,
whatever the image: the host cannot know which ones the image's sshd wants
(DeleteSSHKeys decides in the jail and installs those), and the three cost
less than deciding would.

The private keys are secrets: they are made in a private (0700) temporary
directory that is removed as soon as they are read, never appear on a
command line (only paths do) or in a log, and travel only in the rules.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import tempdirs
from .contract.rules import HostKey
from .errors import OperatorError
from .lifecycle import child_env

KEY_TYPES = ("rsa", "ecdsa", "ed25519")
KEYGEN_TIMEOUT = 120  # seconds; an RSA key takes well under one


def key_comment(instance_name: str) -> str:
    """``root@<short name>``, as the keys a distribution makes at install time; safe characters only."""
    name = "".join(c for c in instance_name.split(".", 1)[0] if c.isascii() and (c.isalnum() or c in "-_"))
    return f"root@{name or 'localhost'}"


def generate(instance_name: str) -> tuple[HostKey, ...]:
    """One new host key of each of :data:`KEY_TYPES` for instance ``instance_name`` (ssh-keygen, in parallel)."""
    comment = key_comment(instance_name)
    with tempdirs.private("hostkeys") as tmp:  # mkdtemp: 0700
        keygens: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for kind in KEY_TYPES:
                argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(Path(tmp) / kind)]
                keygens[kind] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
                )
        except FileNotFoundError as exc:
            raise OperatorError("ssh-keygen is missing on this node: install openssh-client") from exc
        finally:
            problems = {kind: _wait(keygen) for kind, keygen in keygens.items()}
        for kind, problem in problems.items():
            if problem is not None:
                raise OperatorError(f"ssh-keygen could not make a {kind} host key: {problem}")
        return tuple(
            HostKey(
                kind=kind,
                private=(Path(tmp) / kind).read_text("ascii"),
                public=(Path(tmp) / f"{kind}.pub").read_text("ascii"),
            )
            for kind in KEY_TYPES
        )


def _wait(keygen: subprocess.Popen[bytes]) -> str | None:
    """Wait for one ssh-keygen; what went wrong (its last line of errors), or None."""
    try:
        _, errors = keygen.communicate(timeout=KEYGEN_TIMEOUT)
    except subprocess.TimeoutExpired:
        keygen.kill()
        keygen.communicate()
        return f"no key after {KEYGEN_TIMEOUT} s"
    if keygen.returncode == 0:
        return None
    last = (errors.decode("utf-8", "replace").strip().splitlines() or [f"exit code {keygen.returncode}"])[-1]
    return last
