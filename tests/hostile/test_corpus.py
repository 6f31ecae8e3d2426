"""The hostile corpus (#13): every case deployed through the real ``create``, judged by the one rule.

Each case makes its input here (no binary blob), runs ``create`` in a Lab of its own (real helper
VM where the case reaches it) and is judged by :func:`tests.hostile.verdict.judge`. One line per
case is printed (``HOSTILE: id | outcome | reason | seconds``): run with ``-s`` for the table.
Kill signals in each phase of a deployment are tests/integration/test_kills.py's; the cases
here that interrupt a deployment do it while hostile code runs.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tests import helpervm
from tests.hostile import cases_code, cases_disk, cases_formats, cases_guest, cases_host, cases_ntfs
from tests.hostile.case import Case
from tests.hostile.lab import SECRETS, Lab
from tests.hostile.verdict import REFUSED, judge

pytestmark = pytest.mark.vm

CASES: list[Case] = [
    *cases_host.CASES,
    *cases_formats.CASES,
    *cases_guest.CASES,
    *cases_disk.CASES,
    *cases_ntfs.CASES,
    *cases_code.CASES,
]


def test_the_corpus_is_big_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.fixture(scope="module")
def helper_dir() -> Path:
    return helpervm.ensure_helper()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_hostile_case(case: Case, tmp_path: Path, helper_dir: Path) -> None:
    lab = Lab(tmp_path, helper_dir, use_hash=zlib.crc32(case.id.encode()) % 2 == 1)
    try:
        deployment = case.make(lab)
        before = lab.canary.fingerprint()
        run = lab.deploy(deployment)
        outcome = judge(
            run,
            reason=case.reason,
            harmless=None if case.harmless is None else lambda: case.harmless(lab),  # type: ignore[misc]
            canary=lab.canary,
            canary_before=before,
            disk=lab.disk,
            secrets=SECRETS,
        )
        if case.afterwards is not None:
            case.afterwards(lab)
    finally:
        lab.close()
    said = run.error_lines[0].removeprefix("ERROR: ") if outcome == REFUSED else ""
    print(f"\nHOSTILE: {case.id} | {outcome} | {said} | {run.seconds:.1f}s")
