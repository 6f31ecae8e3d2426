"""Fake guest roots for the configuration tasks, and the one recording Context every task test uses.

As libguestfs' virt-customize tests drive operations against scripted
guests, these tests drive a task's run(ctx) against a temporary directory
that stands in for the mounted image (a tree shaped like a small Debian
install by default), then read the files back. :func:`make_ctx` is the
Context of those tests (and of the framework's), :func:`make_rules` the
typed rules the host would send. :func:`run_unsandboxed` stands in for
the sandbox of image programs, which only the helper VM can build.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
from pathlib import Path
from typing import Any

from helper import sandbox
from helper.framework import Context
from helper.properties import Properties
from snf_image import hostkeys
from snf_image.contract.rules import HostKey, Rules, RulesDisk, RulesSettings

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
"""
GROUP = """root:x:0:
daemon:x:1:
ssh_keys:x:101:
alice:x:1000:
"""
SHADOW = """root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
alice:!:19000:0:99999:7:::
"""
HOSTS = """127.0.0.1\tlocalhost
127.0.1.1\timage-builder.example.org\timage-builder

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
"""
SSHD_CONFIG = """# bookworm's default
Include /etc/ssh/sshd_config.d/*.conf

#HostKey /etc/ssh/ssh_host_rsa_key
#AuthorizedKeysFile\t.ssh/authorized_keys .ssh/authorized_keys2
KbdInteractiveAuthentication no
UsePAM yes
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""
DEBIAN = {
    "etc/passwd": PASSWD,
    "etc/group": GROUP,
    "etc/shadow": SHADOW,
    "etc/hosts": HOSTS,
    "etc/hostname": "image-builder\n",
    "etc/debian_version": "12.5\n",
    "etc/fstab": "UUID=1111-2222 / ext4 errors=remount-ro 0 1\n",
    "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "etc/ssh/sshd_config": SSHD_CONFIG,
    "etc/ssh/sshd_config.d/.keep": "",
    "etc/ssh/ssh_host_rsa_key": "old private\n",
    "etc/ssh/ssh_host_rsa_key.pub": "ssh-rsa AAAA old\n",
    "etc/ssh/ssh_host_ed25519_key": "old private\n",
    "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA old\n",
    "root/.bashrc": "",
    "home/alice/.profile": "",
}

# What makes a fake guest a cloud-init image: the directory tasks/_cloud_init.py writes its snippets into.
CLOUD_INIT_GUEST = {"etc/cloud/cloud.cfg.d/05_logging.cfg": "# the image's own\n"}


class Recorder:
    """A Reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def task_start(self, task: str) -> None:
        self.lines.append(("start", task))

    def task_end(self, task: str) -> None:
        self.lines.append(("end", task))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))

    @property
    def warnings(self) -> list[str]:
        return [m for kind, m in self.lines if kind == "warning"]


def make_guest(root: Path, files: dict[str, str | None] | None = None, base: dict[str, str] | None = None) -> Path:
    """A guest tree at ``root``: ``base`` (default: Debian-like) overridden by ``files`` (None deletes)."""
    tree: dict[str, str | None] = {**(DEBIAN if base is None else base), **(files or {})}
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in tree.items():
        path = root / rel
        if text is None:
            if path.is_symlink() or path.exists():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if (root / "etc/shadow").exists():
        os.chmod(root / "etc/shadow", 0o640)
    for home, uid in (("home/alice", 1000),):
        if (root / home).is_dir():
            os.chown(root / home, uid, uid)
    return root


RULES = Rules(
    instance_name="vm1.example.com",
    result_token="5a" * 32,
    img_format="diskdump",
    properties={},
    nics=(),
    disks=(RulesDisk(index=0, size_bytes=1024**3),),
    settings=RulesSettings(),
)


@functools.cache
def host_keys() -> tuple[HostKey, ...]:
    """The SSH host keys the host makes for vm1.example.com (real ones, made once per test run)."""
    return hostkeys.generate(RULES.instance_name)


def make_rules(**fields: Any) -> Rules:
    """Rules for one small disk and no NIC, with ``fields`` (typed values) replacing the defaults."""
    return dataclasses.replace(RULES, **fields)


def make_ctx(
    root: Path,
    rules: dict[str, Any] | None = None,
    properties: dict[str, str] | None = None,
    disks: list[Path] | None = None,
    osfamily: str = "linux",
) -> Context:
    """A Context whose target is the fake guest ``root``, reporting into a :class:`Recorder`.

    ``rules`` are fields of :func:`make_rules`; ``properties`` the image properties.
    """
    reporter = Recorder()
    return Context(
        rules=make_rules(**(rules or {})),
        properties=Properties(properties or {}, warn=reporter.warning),
        disks=disks or [Path("/dev/vdb")],
        reporter=reporter,
        target=root,
        osfamily=osfamily,
        root_partition=1,
        resize_partition=1,
    )


def warnings(ctx: Context) -> list[str]:
    """The warnings a task sent."""
    return ctx.reporter.warnings  # type: ignore[attr-defined,no-any-return]


def run_unsandboxed(program: sandbox.Program, seconds: float) -> sandbox.Outcome:
    """``helper.sandbox.run`` without the sandbox, for unit tests of the logic around an image program.

    The sandbox needs the helper VM (cgroup v2, kernel settings of its own,
    the runner as PID 1) and refuses to run anywhere else; the real one is
    exercised by tests/integration/test_image_code_sandbox.py.
    """
    try:
        proc = subprocess.run(list(program.argv), env=dict(program.env), capture_output=True, timeout=seconds)
    except OSError as exc:  # as setpriv reports a program it cannot execute
        message = f"setpriv: failed to execute {program.argv[0]}: {exc.strerror}\n"
        return sandbox.Outcome(127, message, len(message), seconds)
    output = proc.stdout + proc.stderr
    return sandbox.Outcome(proc.returncode, output.decode(errors="replace"), len(output), seconds)
