"""The summary line of a deployment and what it counts in METRICS_FILE."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from snf_image import summary
from snf_image.contract import constants
from snf_image.progress import Progress, make_message
from snf_image.settings import DEFAULTS, build_settings


def _settings(tmp_path: Path, metrics: bool = True):
    raw = {**DEFAULTS, "METRICS_FILE": str(tmp_path / "node.prom") if metrics else ""}
    return build_settings(raw, tmp_path)


@summary.timed(summary.PHASE_COPY)
def _copy(progress: Progress) -> None:
    summary.note_image("https://user:s3cr3t@images.example/debian.img?token=abc", "network", {"OSFAMILY": "Linux"})
    summary.note_image_cache(hit=False)
    progress.copy_progress(4096, 8192)
    progress.copy_progress(8192, 8192)


@summary.timed(summary.PHASE_HELPER)
def _helper(metrics_file: Path, seen: list[str], fail: bool) -> None:
    """What METRICS_FILE says while the helper phase runs."""
    if metrics_file.is_file():
        seen += [line for line in metrics_file.read_text().splitlines() if line.startswith("snf_image_helper_vms")]
    if fail:
        raise RuntimeError("boom")


def _deploy(tmp_path: Path, fail: bool = False) -> tuple[str, list[str]]:
    settings = _settings(tmp_path)
    seen: list[str] = []
    progress = Progress(stream=io.StringIO())
    with summary.watch("create", "web1", settings, progress) as record:
        _copy(progress)
        _helper(tmp_path / "node.prom", seen, fail)
    return record.line(), seen


def test_the_summary_line_has_every_phase_and_no_secret(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="snf-image")
    line, _ = _deploy(tmp_path)
    assert line.startswith(
        "summary: operation=create instance=web1 image=https://images.example/debian.img?... source=network "
        "bytes=8192 os_family=linux cache=miss copy="
    ), line
    assert " helper=" in line and " total=" in line and line.endswith(" result=success")
    assert "s3cr3t" not in line and "token" not in line
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")] == [line]


def test_a_failed_deployment_is_summarized_and_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="snf-image")
    with pytest.raises(RuntimeError):
        _deploy(tmp_path, fail=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")]
    assert len(lines) == 1 and lines[0].endswith(" result=failure"), lines
    text = (tmp_path / "node.prom").read_text()
    assert 'snf_image_deployments_total{operation="create",os_family="linux",result="failure"} 1' in text
    assert "snf_image_image_cache_misses_total 1" in text


def test_the_helper_counts_as_running_while_it_runs(tmp_path):
    _, seen = _deploy(tmp_path)
    assert seen == ["snf_image_helper_vms_running 1"]
    assert "snf_image_helper_vms_running 0" in (tmp_path / "node.prom").read_text()


def test_the_os_family_the_helper_detected(tmp_path):
    settings = _settings(tmp_path, metrics=False)
    progress = Progress(stream=io.StringIO())
    with summary.watch("create", "web1", settings, progress) as record:
        for text in ("Detected OSFAMILY: freebsd", "Detected OSFAMILY: plan9"):
            progress.send(make_message(constants.MSG_HELPER, subtype=constants.HELPER_WARNING, messages=[text]))
    assert record.os_family == "freebsd"
    assert not (tmp_path / "node.prom").exists()


def test_an_unwritable_metrics_file_never_fails_the_deployment(tmp_path, caplog):
    (tmp_path / "node.prom").mkdir()  # cannot be replaced by a file
    line, _ = _deploy(tmp_path)
    assert line.endswith("result=success")
    assert any("metrics: cannot update METRICS_FILE" in r.getMessage() for r in caplog.records)
