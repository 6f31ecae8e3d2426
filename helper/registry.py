"""Windows registry hives, read and edited through hivex (python3-hivex), never by hand.

A hive file (``Windows/System32/config/SYSTEM``, ``SOFTWARE``, ``SAM``) is
binary and its cells are checksummed in places; only hivex writes it. Key
paths are given with backslashes below the hive's root (``Select``,
``ControlSet001\\Control\\Terminal Server``) and matched case-insensitively,
as Windows does. Values come back decoded: REG_SZ / REG_EXPAND_SZ as str,
REG_DWORD as int, anything else as bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7


class HiveError(Exception):
    """A hive that cannot be opened or lacks what we need; the message names it."""


MiB = 1 << 20


def _hivex_handle(path: Path, write: bool):  # hivex imported late: the host side never needs it
    """A hivex handle on ``path``, or the exception hivex raised, without hivex's noise.

    hivex's Python class reports a failed open twice: as the exception, and as a traceback
    printed when the half-made object is collected (its ``__del__`` closes a handle it never
    got). Such an object is closed here only if it has one.
    """
    import hivex

    class _Handle(hivex.Hivex):
        def __del__(self) -> None:
            if hasattr(self, "_o"):
                super().__del__()

    return _Handle(str(path), write=write)


def _editable_size_limit() -> int:
    """The largest hive hivex can edit here: it reads a hive opened for writing whole into memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 3 // 4


class Hive:
    """One open hive; ``write=True`` allows :meth:`set_dword` and :meth:`commit`.

    Read-only, hivex maps the file and reads only the cells asked for, whatever its size;
    for writing it reads the whole file, so a hive bigger than three quarters of the helper's
    memory is refused by name before hivex runs out of it.
    """

    def __init__(self, path: Path | str, write: bool = False) -> None:
        self.path = Path(path)
        try:
            size, limit = self.path.stat().st_size, _editable_size_limit()
            if write and size > limit:
                raise HiveError(
                    f"registry hive {self.path.name} is {size // MiB} MiB: larger than the helper can edit in "
                    f"its memory (up to {limit // MiB} MiB; raise HELPER_MEMORY for such an image)"
                )
            self._h = _hivex_handle(self.path, write)
        except (RuntimeError, OSError) as exc:
            raise HiveError(f"cannot open registry hive {self.path.name}: {exc}") from exc

    def node(self, key: str, create: bool = False) -> int | None:
        """The node of ``key`` (backslash-separated, case-insensitive), or None; ``create`` adds missing keys."""
        node = self._h.root()
        for part in [p for p in key.split("\\") if p]:
            child = self._h.node_get_child(node, part)
            if not child:
                if not create:
                    return None
                child = self._h.node_add_child(node, part)
            node = child
        return node

    def subkeys(self, key: str) -> list[str]:
        """The names of the subkeys of ``key`` (empty if it does not exist)."""
        node = self.node(key)
        if node is None:
            return []
        return [self._h.node_name(child) for child in self._h.node_children(node)]

    def value(self, key: str, name: str) -> str | int | bytes | None:
        """Value ``name`` of ``key`` decoded by type, or None if the key or the value is missing."""
        node = self.node(key)
        if node is None:
            return None
        try:
            value = self._h.node_get_value(node, name)
        except RuntimeError:  # hivex reports a missing value as an error with errno 0
            return None
        if not value:
            return None
        vtype, _length = self._h.value_type(value)
        if vtype in (REG_SZ, REG_EXPAND_SZ):
            return self._h.value_string(value)
        if vtype == REG_DWORD:
            return self._h.value_dword(value)
        return self._h.value_value(value)[1]

    def set_dword(self, key: str, name: str, number: int) -> None:
        """Set REG_DWORD ``name`` of ``key`` (created if missing), other values kept."""
        node = self.node(key, create=True)
        self._h.node_set_value(node, {"key": name, "t": REG_DWORD, "value": number.to_bytes(4, "little")})

    def set_string(self, key: str, name: str, text: str) -> None:
        """Set REG_SZ ``name`` of ``key`` (created if missing), other values kept."""
        node = self.node(key, create=True)
        data = (text + "\0").encode("utf-16-le")
        self._h.node_set_value(node, {"key": name, "t": REG_SZ, "value": data})

    def commit(self) -> None:
        """Write the changes back to the hive file."""
        self._h.commit(None)


@contextmanager
def opened(path: Path | str, write: bool = False) -> Iterator[Hive]:
    """A hive for a with-block; with ``write`` the changes are committed when the block succeeds."""
    hive = Hive(path, write=write)
    yield hive
    if write:
        hive.commit()


def current_control_set(hive: Hive) -> str:
    """``ControlSet00N``: the control set ``Select\\Current`` names (SYSTEM hive)."""
    current = hive.value("Select", "Current")
    if not isinstance(current, int) or not 0 < current < 1000:
        raise HiveError("the SYSTEM hive has no valid Select\\Current value")
    name = f"ControlSet{current:03d}"
    if hive.node(name) is None:
        raise HiveError(f"the SYSTEM hive has no {name} (named by Select\\Current)")
    return name


CURRENT_VERSION_KEY = "Microsoft\\Windows NT\\CurrentVersion"


def nt_major_of(current_version: object, major_number: object) -> int | None:
    """The NT major version: CurrentMajorVersionNumber (Windows 10+: CurrentVersion stays 6.3), else CurrentVersion."""
    if isinstance(major_number, int) and major_number > 0:
        return major_number
    if isinstance(current_version, str):
        head = current_version.strip().split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def nt_major(software: Hive) -> int:
    """The NT major version recorded in a SOFTWARE hive (5 = XP/2003, 6 = Vista to 8.1, 10 = 10 and later)."""
    major = nt_major_of(
        software.value(CURRENT_VERSION_KEY, "CurrentVersion"),
        software.value(CURRENT_VERSION_KEY, "CurrentMajorVersionNumber"),
    )
    if major is None:
        raise HiveError("the SOFTWARE hive has no Windows NT CurrentVersion")
    return major
