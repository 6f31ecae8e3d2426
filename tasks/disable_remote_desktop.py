"""DisableRemoteDesktopConnections: keep Remote Desktop off until Windows setup has finished.

Until the first boot completes, the instance still has the image's
password and no computer name of its own; nobody should be able to log in
remotely. ``fDenyTSConnections`` is set to 1 in the current control set of
the SYSTEM hive (hivex), and SetupComplete.cmd puts back the image's own
value afterwards (or deletes the value if the image had none -- the
original turned Remote Desktop on in that case).
"""

from __future__ import annotations

from helper import registry
from helper.commands import TaskError
from helper.framework import WINDOWS, Context, Task

from ._windows import guest, scripts

TASK = Task(
    name="DisableRemoteDesktopConnections",
    order=50,
    families=WINDOWS,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=True,
    overridable=True,
)

VALUE = "fDenyTSConnections"


def run(ctx: Context) -> None:
    """Deny RDP in the image now; restore the original setting at the end of setup."""
    win = guest.image(ctx)
    key = f"{win.control_set}\\Control\\Terminal Server"
    try:
        with registry.opened(guest.hive_file(ctx, win.hive("SYSTEM")), write=True) as system:
            original = system.value(key, VALUE)
            system.set_dword(key, VALUE, 1)
    except registry.HiveError as exc:
        raise TaskError(str(exc)) from exc
    if original is not None and not isinstance(original, int):
        ctx.warning(f"{VALUE} in the image is not a REG_DWORD; Remote Desktop will be enabled after setup")
        original = 0
    guest.append_setup_complete(ctx, [scripts.rdp_restore_line(original)])
