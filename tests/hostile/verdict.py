"""The one rule every hostile case is judged by, written once.

A deployment fed hostile input ends in exactly one of two ways, and any correct implementation
satisfies this rule whichever it chooses:

* a **clean refusal**: a non-zero exit, exactly one ``ERROR:`` line, exactly one ``image-error``
  progress message, both naming the reason (the case says what the reason is about);
* a **harmless success**: exit 0, no ``ERROR:`` line, no ``image-error``, and the case's own proof
  that the hostile content had no effect outside the guest, nor outside the paths the tasks meant
  to write inside it.

Whichever it is, never: an unhandled exception on the host or in the helper ("Internal error",
a traceback, in the output, the console log relayed into it, or a progress message). And after
every case the host is checked: nothing left behind (no process, loop or nbd device, mount, or
temporary entry: :mod:`tests.leftovers`), the canary file outside the image directory untouched
and none of its bytes on the instance disk, and no secret of the deployment in any output, log,
progress message, child's command line or environment, or file the run left.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.leftovers import Leftovers

REFUSED, SUCCEEDED = "refused", "succeeded harmlessly"
#: What an unhandled exception looks like, wherever it surfaces.
UNHANDLED = ("Traceback (most recent call last)", "Internal error")


@dataclass
class Run:
    """Everything one deployment showed: what it printed, what it reported, what it left."""

    returncode: int
    stdout: str
    stderr: str
    messages: list[dict]
    seconds: float
    leftovers: Leftovers
    #: "command line of <pid>" / "environment of <pid>" -> text, sampled while the run lived
    children: dict[str, str] = field(default_factory=dict)
    #: files the run created or changed (outside the instance disk) -> their text
    files: dict[str, str] = field(default_factory=dict)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in (self.stdout + self.stderr).splitlines() if line.startswith("ERROR:")]

    @property
    def image_errors(self) -> list[str]:
        return [" ".join(m.get("messages", [])) for m in self.messages if m.get("type") == "image-error"]


@dataclass(frozen=True)
class Canary:
    """A host file outside the image directory that hostile inputs try to reach."""

    path: Path
    marker: bytes

    @classmethod
    def plant(cls, path: Path) -> Canary:
        marker = b"CANARY-" + hashlib.sha256(os.fsencode(path)).hexdigest().encode()
        path.write_bytes((marker + b"\n") * 4096)
        return cls(path, marker)

    def fingerprint(self) -> tuple[bytes, int, int, int]:
        st = self.path.stat()
        return hashlib.sha256(self.path.read_bytes()).digest(), st.st_mtime_ns, st.st_ctime_ns, st.st_mode

    def found_in(self, disk: Path) -> bool:
        """Whether the canary's bytes were copied onto ``disk``."""
        if not disk.exists() or disk.stat().st_size == 0:
            return False
        with open(disk, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(self.marker) >= 0


def _refusal_problems(run: Run, reason: str) -> list[str]:
    problems = []
    if len(run.error_lines) != 1:
        problems.append(f"{len(run.error_lines)} ERROR: lines, not one: {run.error_lines}")
    if len(run.image_errors) != 1:
        problems.append(f"{len(run.image_errors)} image-error messages, not one: {run.image_errors}")
    for where, text in [("the ERROR: line", line) for line in run.error_lines] + [
        ("the image-error message", message) for message in run.image_errors
    ]:
        if not re.search(reason, text, re.IGNORECASE):
            problems.append(f"{where} does not name the reason /{reason}/: {text!r}")
    return problems


def judge(
    run: Run,
    *,
    reason: str | None,
    harmless: Callable[[], None] | None,
    canary: Canary,
    canary_before: tuple[bytes, int, int, int],
    disk: Path,
    secrets: Mapping[str, str],
) -> str:
    """The verdict on one case: REFUSED or SUCCEEDED, or an AssertionError saying what broke the rule.

    ``reason``: a regular expression a refusal's reason must match (None: this case may not be
    refused); ``harmless``: the case's proof, for a success, that the hostile content had no
    effect outside the guest or the paths meant (None: this case may not succeed).
    """
    problems: list[str] = []
    shown = {"stdout": run.stdout, "stderr (with the helper's console)": run.stderr}
    shown["progress messages"] = "\n".join(map(str, run.messages))
    for where, text in shown.items():
        problems += [f"an unhandled exception ({mark!r}) in {where}" for mark in UNHANDLED if mark in text]
    if run.leftovers:
        problems.append(f"left behind: {run.leftovers}")
    if canary.fingerprint() != canary_before:
        problems.append(f"the canary {canary.path} was changed")
    if canary.found_in(disk):
        problems.append(f"the canary's bytes ({canary.path}) were copied onto the instance disk")
    places = {**shown, **run.children, **run.files}
    problems += [f"the {what} in {where}" for what, value in secrets.items() for where, text in places.items()
                 if value in text]  # fmt: skip
    if run.returncode != 0:
        outcome = REFUSED
        if reason is None:
            problems.append(f"refused, but this case must succeed harmlessly: {run.error_lines}")
        else:
            problems += _refusal_problems(run, reason)
    else:
        outcome = SUCCEEDED
        if run.error_lines or run.image_errors:
            problems.append(f"exit 0 with errors reported: {run.error_lines} {run.image_errors}")
        if harmless is None:
            problems.append(f"succeeded, but this case must be refused (/{reason}/)")
        else:
            try:
                harmless()
            except AssertionError as exc:
                problems.append(f"the success was not harmless: {exc}")
    if problems:
        tail = run.stderr[-4000:]
        raise AssertionError("the hostile case broke the rule:\n- " + "\n- ".join(problems) + f"\n--- stderr:\n{tail}")
    return outcome
