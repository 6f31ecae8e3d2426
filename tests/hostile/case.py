"""A hostile case: what it attacks, how its input is made, and what its verdict may be.

Every case is judged by the one rule of :mod:`tests.hostile.verdict`; the case only says what a
refusal must name (``reason``) and how to prove a success harmless (``harmless``). A case gives
the one its deployment takes today; a case that gives both accepts either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.hostile import guest
from tests.hostile.lab import INSTANCE, PASSWORD, PASSWORD_HASH, Deployment, Lab


@dataclass(frozen=True)
class Case:
    """One hostile input, made in the test by ``make``."""

    id: str
    attacks: str
    make: Callable[[Lab], Deployment]
    #: A refusal must name this (a regular expression, searched without case).
    reason: str | None = None
    #: A success must pass this: the hostile content had no effect outside the guest or the paths meant.
    harmless: Callable[[Lab], None] | None = None
    #: Whether the case reaches the helper VM (for the report; cases refused on the host boot nothing).
    boots: bool = True
    #: Checked whatever the verdict: what hostile code reached, read back from the guest it wrote to.
    afterwards: Callable[[Lab], None] | None = None


def password_set(lab: Lab, text: str) -> None:
    """root's line of shadow ``text`` carries the deployment's password (or its hash)."""
    from passlib.hash import sha512_crypt

    line = next((ln for ln in text.splitlines() if ln.startswith("root:")), "")
    hashed = line.split(":")[1] if line else ""
    if lab.use_hash:
        assert hashed == PASSWORD_HASH, f"root's shadow entry: {line!r}"
    else:
        assert hashed.startswith("$6$") and sha512_crypt.verify(PASSWORD, hashed), f"root's shadow entry: {line!r}"


def tasks_did_their_work(lab: Lab, *, skip: tuple[str, ...] = ()) -> guest.Guest:
    """The deployed guest holds what the tasks meant to write, where they meant it; the decoy is intact.

    ``skip``: the paths a case attacked (checked by the case itself).
    """
    found = lab.guest()
    if "/etc/hostname" not in skip:
        assert found.read("/etc/hostname") == INSTANCE + "\n"
    if "/etc/shadow" not in skip:
        password_set(lab, found.read("/etc/shadow"))
    if "/etc/hosts" not in skip:
        assert INSTANCE in found.read("/etc/hosts")
    if "/root/.ssh" not in skip:
        assert "corpus@test" in found.read("/root/.ssh/authorized_keys")
    decoy = found.entry(guest.DECOY)
    assert decoy is not None and decoy.kind == "regular" and decoy.uid == 0, decoy
    assert found.read(guest.DECOY) == guest.FILES[guest.DECOY.lstrip("/")], "the decoy was written"
    for path, target in guest.LAYOUT_LINKS.items():
        if f"/{path}" not in skip:
            link = found.entry(f"/{path}")
            assert link is not None and link.kind == "symlink" and link.link == target, f"/{path}: {link}"
    return found
