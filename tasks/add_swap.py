"""AddSwap: format the swap space the SWAP property asks for and add it to /etc/fstab.

``SWAP`` is either ``N:SIZE`` -- partition ``N`` of the deployed disk,
which FixPartitionTable created (``SIZE`` MiB) -- or a disk letter: ``b``
is the instance's second disk (``c`` the third, ...), used whole; ``a``,
the disk the image is on, is refused. The space gets ``mkswap`` and an
``/etc/fstab`` line ``UUID=<uuid> none swap sw 0 0``.

It never destroys data: the root partition, and a partition or disk that
holds anything but swap (a filesystem, a partition table), are refused.
Existing swap keeps its UUID, so running the task again changes nothing
and never duplicates the fstab line. An image without ``/etc/fstab`` is
an error.

Under ``CLOUD_INIT`` FixPartitionTable does not run, so ``N:SIZE`` is
handed to the cloud-init configuration (``tasks/_cloud_init.py``:
``add_swap``, a swap file of SIZE MiB); a disk letter works as without
cloud-init.

Properties: SWAP, CLOUD_INIT.
"""

from __future__ import annotations

import re
from pathlib import Path

from helper import disks, fsutil
from helper.commands import TaskError
from helper.framework import LINUX, Context, Task

from . import _cloud_init, _unix
from ._swap import parse_swap

TASK = Task(
    name="AddSwap",
    order=50,
    families=LINUX,
    excludable=True,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

FSTAB = "/etc/fstab"
UUID_RE = re.compile(r"^[0-9A-Fa-f-]{8,64}$")


def disk_index(letter: str, count: int) -> int:
    """The instance disk index a SWAP letter names (b -> 1); a and disks that do not exist are refused."""
    index = ord(letter) - ord("a")
    if index == 0:
        raise TaskError("Swap disk cannot be the first disk")
    if index >= count:
        raise TaskError(f"Swap disk {letter} is not available (the instance has {count} disk(s))")
    return index


def add_fstab_swap(text: str, uuid: str) -> str:
    """fstab text with a swap line for ``uuid`` appended, unless a line already names that UUID."""
    newline = _unix.newline_of(text)
    lines = _unix.split_lines(text)
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if fields and fields[0].replace('"', "").upper() == f"UUID={uuid}".upper():
            return text
    lines.append(f"UUID={uuid}\tnone\tswap\tsw\t0\t0")
    return _unix.join_lines(lines, newline)


def make_swap(ctx: Context, device: Path, what: str) -> str:
    """mkswap ``device`` (keeping the UUID of swap already there); returns the UUID. Refuses to overwrite data."""
    info = disks.probe(device)
    kind = info.get("TYPE") or (f"a {info['PTTYPE']} partition table" if info.get("PTTYPE") else "")
    if kind and kind != "swap":
        raise TaskError(f"{what} holds {kind}; refusing to overwrite it with swap")
    argv: list[str | Path] = ["mkswap"]
    old_uuid = info.get("UUID", "") if kind == "swap" else ""
    if UUID_RE.match(old_uuid):
        argv += ["-U", old_uuid]
    argv.append(device)
    ctx.run(argv)
    uuid = disks.probe(device).get("UUID", "")
    if not UUID_RE.match(uuid):
        raise TaskError(f"mkswap left no UUID on {what}")
    return uuid


def swap_device(ctx: Context, spec: tuple[int, int] | str) -> tuple[Path, str]:
    """The device to format and its name for messages."""
    if isinstance(spec, str):
        index = disk_index(spec, len(ctx.disks))
        return ctx.disks[index], f"swap disk {spec} ({ctx.disks[index]})"
    number = spec[0]
    if number == ctx.root_partition:
        raise TaskError(f"SWAP partition {number} is the root partition")
    return ctx.partition(number), f"swap partition {number}"


def apply(ctx: Context, spec: tuple[int, int] | str) -> None:
    """mkswap and the fstab line (Linux)."""
    if not fsutil.resolve(ctx.target, FSTAB).is_file():
        raise TaskError(f"The image has no {FSTAB}; cannot add swap")
    device, what = swap_device(ctx, spec)
    uuid = make_swap(ctx, device, what)
    fstab = fsutil.read_text(ctx.target, FSTAB)
    new = add_fstab_swap(fstab, uuid)
    if new != fstab:
        fsutil.write_text(ctx.target, FSTAB, new)


def run(ctx: Context) -> None:
    """Format and register the SWAP space (a partition under CLOUD_INIT: cloud-init's swap file)."""
    spec = parse_swap(ctx.properties.get("SWAP"))
    if spec is None:
        return
    if ctx.cloud_init and not isinstance(spec, str):
        _cloud_init.add_swap(ctx, spec[1])
        return
    apply(ctx, spec)
