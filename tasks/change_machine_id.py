"""ChangeMachineId: give the instance its own systemd/D-Bus machine id.

Images are copies of one installation, and ``/etc/machine-id`` identifies
the installation (journal, DHCP DUIDs derived from it, ...). When the image
has ``/etc/machine-id`` it gets a fresh random id (128 random bits in the
systemd form, 32 lower-case hex digits and a newline; a symlink there is
replaced by the file, never written through); likewise
``/var/lib/dbus/machine-id`` when present -- unless it is a symlink, which
stays a symlink (to ``/etc/machine-id``, normally). A missing file is a
warning: systemd creates one at first boot.

Runs under ``CLOUD_INIT`` too. Properties: none.
"""

from __future__ import annotations

import stat
import uuid

from helper import fsutil
from helper.framework import LINUX, Context, Task

TASK = Task(
    name="ChangeMachineId",
    order=50,
    families=LINUX,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

MACHINE_ID = "/etc/machine-id"
MACHINE_ID_MODE = 0o444  # systemd's
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"


def new_machine_id() -> str:
    """A random machine id as systemd writes it (a version 4 UUID without dashes, newline-terminated)."""
    return uuid.uuid4().hex + "\n"


def run(ctx: Context) -> None:
    """Write a fresh id into the image's machine-id files; the D-Bus one only if it is a real file."""
    machine_id = new_machine_id()
    if fsutil.resolve(ctx.target, MACHINE_ID).is_file():  # a symlink is replaced, never written through
        found = fsutil.entry(ctx.target, MACHINE_ID)
        mode = stat.S_IMODE(found.stat().st_mode) if found.is_file() and not found.is_symlink() else MACHINE_ID_MODE
        fsutil.write_file(ctx.target, MACHINE_ID, machine_id.encode(), mode=mode)
    else:
        ctx.warning(f"The image has no {MACHINE_ID}; systemd will create one at first boot")
    dbus = fsutil.entry(ctx.target, DBUS_MACHINE_ID)
    if dbus.is_symlink():
        return
    if dbus.is_file():
        fsutil.write_text(ctx.target, DBUS_MACHINE_ID, machine_id)
    else:
        ctx.warning(f"The image has no {DBUS_MACHINE_ID}; not changing it")
