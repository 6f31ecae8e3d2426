"""What the Windows tasks learn once from the image and share: the type of ``Context.windows``.

It lives here, not with the tasks, so that the framework's Context can name
it without importing a task module (``tasks._windows.image`` fills it in).
"""

from __future__ import annotations

from dataclasses import dataclass

SNF_DIR = "SnfScripts"  # under %WINDIR%: the first-boot scripts snf-image leaves


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
