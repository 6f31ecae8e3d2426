"""SELinuxAutorelabel: have SELinux images relabel their filesystem at first boot.

Files the jail writes carry no SELinux labels, which an enforcing system
refuses to use (an unlabelled ``/etc/shadow`` means no logins). Touching
``/.autorelabel`` makes the image relabel everything at its next boot.
Done for Red Hat family images (as the original) and for any image whose
``/etc/selinux/config`` says ``SELINUX=enforcing`` or ``permissive``; not
when that file says ``disabled``.

Properties: none.
"""

from __future__ import annotations

from helper import fsutil
from helper.framework import LINUX, Context, Task

from . import _unix

TASK = Task(
    name="SELinuxAutorelabel",
    order=50,
    families=LINUX,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

SELINUX_CONFIG = "/etc/selinux/config"
AUTORELABEL = "/.autorelabel"


def selinux_mode(config: str) -> str | None:
    """The SELINUX= mode of an /etc/selinux/config text (lower case), or None if not set."""
    mode = None
    for line in _unix.split_lines(config):
        if _unix.is_comment(line) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key.strip() == "SELINUX":
            mode = value.split("#", 1)[0].strip().strip("\"'").lower()
    return mode


def needs_relabel(distro: str | None, config: str | None) -> bool:
    """Whether to relabel: Red Hat family unless SELinux is disabled, others only when SELinux is on."""
    mode = None if config is None else selinux_mode(config)
    if mode == "disabled":
        return False
    return distro == "redhat" or mode in ("enforcing", "permissive")


def run(ctx: Context) -> None:
    """Touch /.autorelabel when the image uses SELinux."""
    config = fsutil.read_optional(ctx.target, SELINUX_CONFIG)
    if needs_relabel(_unix.base_distro(ctx.target), config):
        fsutil.write_file(ctx.target, AUTORELABEL, b"", mode=0o644)
