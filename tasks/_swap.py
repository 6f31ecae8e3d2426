"""The SWAP property, read alike by FixPartitionTable (which makes the partition) and AddSwap (which formats it).

``N:SIZE``: partition N of the deployed disk, SIZE MiB, at its end; a single
letter: that instance disk (``b`` is the second), used whole.
"""

from __future__ import annotations

import re

from helper.commands import TaskError

SWAP_RE = re.compile(r"^(?:(?P<letter>[A-Za-z])|(?P<number>[1-9][0-9]*):(?P<size>[1-9][0-9]*))$")


def parse_swap(value: str) -> tuple[int, int] | str | None:
    """SWAP as (partition, size MiB), a disk letter (lower case), or None when unset; TaskError when malformed."""
    value = value.strip()
    if not value:
        return None
    m = SWAP_RE.match(value)
    if m is None:
        raise TaskError(f"Invalid SWAP property {value!r}: expected <partition>:<size in MB> or a disk letter")
    if m.group("letter"):
        return m.group("letter").lower()
    return int(m.group("number")), int(m.group("size"))


def swap_partition(value: str) -> tuple[int, int] | None:
    """The (partition, size MiB) SWAP asks to create, or None when it is unset or names a whole disk."""
    spec = parse_swap(value)
    return None if isinstance(spec, str) else spec
