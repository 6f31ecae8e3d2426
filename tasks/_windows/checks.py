"""What the image's registry says, and whether Windows will accept what we give it (pure decisions)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from helper import registry
from helper.commands import TaskError

GENERALIZED = frozenset({"IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE", "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT"})
ARCHITECTURES = {"amd64": "amd64", "x86": "x86", "arm64": "arm64", "ia64": "ia64"}
COMPUTER_NAME_MAX = 15
COMPUTER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Characters Windows refuses in account names, and the ones our scripts would have to escape.
BAD_USER_CHARS = set('"/\\[]:;|=,+*?<>@%^&!') | {chr(c) for c in range(32)}


def nt_major(current_version: Any, major_number: Any) -> int:
    """The NT major version from the SOFTWARE hive's CurrentVersion / CurrentMajorVersionNumber."""
    major = registry.nt_major_of(current_version, major_number)
    if major is None:
        raise TaskError("Cannot tell the Windows version: no CurrentVersion in the SOFTWARE hive")
    return major


def check_family(osfamily: str, major: int) -> None:
    """The image's NT version must fit its OSFAMILY: the answer file format depends on it."""
    if osfamily == "windows" and major < 6:
        raise TaskError(f"This is Windows NT {major} (XP/2003): use OSFAMILY 'windows-legacy'")
    if osfamily == "windows-legacy" and major >= 6:
        raise TaskError(f"This is Windows NT {major} (Vista or later): use OSFAMILY 'windows'")


def check_image_state(state: str | None) -> None:
    """A Vista+ image must be generalized by sysprep, or every instance would share its SID and identity."""
    if state in GENERALIZED:
        return
    advice = "run 'sysprep /generalize /oobe /shutdown' in it before making the image"
    if state is None:
        raise TaskError(f"The image has no sysprep ImageState; it is not generalized: {advice}")
    if state == "IMAGE_STATE_COMPLETE":
        raise TaskError(f"The image is not generalized (ImageState {state}): {advice}")
    if state == "IMAGE_STATE_UNDEPLOYABLE":
        raise TaskError(f"The image is undeployable (ImageState {state}: sysprep failed or was interrupted); {advice}")
    raise TaskError(f"The image is not generalized (ImageState {state}): {advice}")


def check_legacy_setup(system_setup: Any, mini_setup: Any) -> None:
    """An XP/2003 image must be resealed with ``sysprep -mini -reseal`` so mini-setup runs at first boot."""
    if system_setup != 1 or mini_setup != 1:
        raise TaskError(
            "The image is not sysprepped (Setup\\SystemSetupInProgress and MiniSetupInProgress are not 1): "
            "run 'sysprep -mini -reseal -quiet' in it before making the image"
        )


def unattend_arch(processor_architecture: Any) -> str:
    """processorArchitecture for unattend.xml from PROCESSOR_ARCHITECTURE (AMD64 -> amd64, x86 -> x86)."""
    value = str(processor_architecture or "").strip().lower()
    if value not in ARCHITECTURES:
        raise TaskError(f"Unknown PROCESSOR_ARCHITECTURE {processor_architecture!r} in the SYSTEM hive")
    return ARCHITECTURES[value]


def computer_name(instance_name: str) -> str:
    """The ComputerName for an instance: the first label of its name, checked as Windows wants it.

    At most 15 characters (the original counted the newline of ``wc -c``
    and so refused 15), letters, digits, '-' and '_', not all digits.
    """
    name = instance_name.strip().split(".", 1)[0]
    if not name or len(name) > COMPUTER_NAME_MAX:
        raise TaskError(f"Invalid Windows computer name {name!r}: 1 to {COMPUTER_NAME_MAX} characters are allowed")
    if not COMPUTER_NAME.match(name):
        raise TaskError(f"Invalid Windows computer name {name!r}: only letters, digits, '-' and '_' are allowed")
    if name.isdigit():
        raise TaskError(f"Invalid Windows computer name {name!r}: it cannot be all digits")
    return name


def check_user_name(name: str) -> str:
    """``name`` if it can be a Windows account name our scripts can carry without escaping."""
    if not name or len(name) > 20 or any(c in BAD_USER_CHARS for c in name) or name.strip(" .") != name:
        raise TaskError(f"Invalid Windows user name {name!r}")
    return name


def missing_users(wanted: Iterable[str], existing: Iterable[str]) -> list[str]:
    """The ``wanted`` users that are not accounts: whole names, compared without case as Windows does.

    (The original grepped, so ``Admin`` matched ``Administrator``.)
    """
    known = {name.casefold() for name in existing}
    return [user for user in wanted if user.casefold() not in known]
