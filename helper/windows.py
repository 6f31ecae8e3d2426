"""What the jail knows of a Windows root before and across the Windows tasks.

:func:`windows_dir` finds the Windows directory (detection and the tasks
alike); :class:`WindowsImage` is the type of ``Context.windows``, here so
that the framework's Context can name it without importing a task module
(``tasks._windows.guest.image`` fills it in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import fsutil

SNF_DIR = "SnfScripts"  # under %WINDIR%: the first-boot scripts snf-image leaves
WINDOWS_DIRS = ("/Windows", "/WINNT")  # WINNT: systems upgraded from Windows 2000


def windows_dir(root: Path) -> str | None:
    """The guest path of the Windows directory under ``root`` (the one with System32), as the image spells it."""
    for name in WINDOWS_DIRS:
        system32 = fsutil.resolve(root, f"{name}/System32", ignore_case=True)
        if system32.is_dir():
            return fsutil.guest_path(root, system32.parent)
    return None


@dataclass
class WindowsImage:
    """The image's Windows directory and the facts read from its hives."""

    windir: str
    arch: str
    control_set: str
    major: int
    answer_file: str | None = None  # guest path of the unattend.xml / sysprep.inf the tasks edit

    @property
    def snf_dir(self) -> str:
        return f"{self.windir}/{SNF_DIR}"

    def hive(self, name: str) -> str:
        return f"{self.windir}/System32/config/{name}"
