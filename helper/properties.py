"""Image properties as the tasks see them.

The host merges img_properties and inst_properties and puts the result in
rules.properties; here they become one read-only mapping with
case-insensitive names. Booleans are decoded exactly as the original's
``check_yes_no``: yes|true|on|1|set mean yes, no|false|off|0|unset or an
undefined property mean no, an empty value means no (with a warning), and
anything else means yes (with a warning) -- an operator who typed a value
asked for something. Unlike the original, the comparison ignores case, so
``No`` is no rather than "invalid, hence yes".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

YES = frozenset({"yes", "true", "on", "1", "set"})
NO = frozenset({"no", "false", "off", "0", "unset"})


def parse_bool(name: str, value: str | None) -> tuple[bool, str | None]:
    """Decode a boolean property: (value, warning or None). ``None`` means undefined."""
    if value is None:
        return False, None
    word = value.strip().lower()
    if word in YES:
        return True, None
    if word in NO:
        return False, None
    if word == "":
        return False, f"Property {name} is empty; treating it as 'no'."
    return True, f"Invalid value for boolean property {name}: {value!r}; treating it as 'yes'."


class Properties(Mapping[str, str]):
    """Read-only, case-insensitive mapping of property names to string values."""

    def __init__(self, raw: Mapping[str, Any] | None = None, warn: Callable[[str], None] | None = None) -> None:
        self._values = {str(k).upper(): "" if v is None else str(v) for k, v in (raw or {}).items()}
        self._warn = warn
        self._warned: set[str] = set()

    def __getitem__(self, key: str) -> str:
        return self._values[key.upper()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.upper() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str, default: str = "") -> str:  # type: ignore[override]
        """The value, or ``default`` (empty) when the property is undefined."""
        return self._values.get(key.upper(), default)

    def value(self, key: str) -> str:
        """The value stripped of surrounding blanks; empty when undefined."""
        return self.get(key).strip()

    def flag(self, key: str) -> bool:
        """A boolean property; a doubtful value warns once per property."""
        name = key.upper()
        result, warning = parse_bool(name, self._values.get(name))
        if warning and name not in self._warned:
            self._warned.add(name)
            if self._warn is not None:
                self._warn(warning)
        return result
