"""METRICS_FILE: the node exporter textfile, read back with Prometheus' own parser; real locks, real processes."""

from __future__ import annotations

import multiprocessing
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from snf_image import metrics


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def record(path: Path, result: str = "success", family: str = "linux", copy: float = 0.7, helper: float = 5.4):
    metrics.MetricsFile(path).record("create", result, family, {"copy": copy, "helper": helper}, 1000, 1, 0)


def test_counts_and_histogram_read_back(tmp_path):
    path = tmp_path / "snf-image.prom"
    record(path)
    record(path, copy=3.0)
    record(path, result="failure", family="windows", copy=0.2, helper=700.0)
    found = samples(path)
    key = metrics.DEPLOYMENTS.removesuffix("_total")
    labels = (("operation", "create"), ("os_family", "linux"), ("result", "success"))
    assert found[(key + "_total", labels)] == 2
    assert found[(key + "_total", (("operation", "create"), ("os_family", "windows"), ("result", "failure")))] == 1
    bucket = metrics.PHASE_SECONDS + "_bucket"
    assert found[(bucket, (("le", "0.5"), ("phase", "copy")))] == 1
    assert found[(bucket, (("le", "1.0"), ("phase", "copy")))] == 2
    assert found[(bucket, (("le", "5.0"), ("phase", "copy")))] == 3
    assert found[(bucket, (("le", "600.0"), ("phase", "helper")))] == 2
    assert found[(bucket, (("le", "+Inf"), ("phase", "helper")))] == 3
    assert found[(metrics.PHASE_SECONDS + "_count", (("phase", "helper"),))] == 3
    assert abs(found[(metrics.PHASE_SECONDS + "_sum", (("phase", "copy"),))] - 3.9) < 1e-9
    assert found[(metrics.COPIED_BYTES.removesuffix("_total") + "_total", ())] == 3000
    assert found[(metrics.CACHE_HITS.removesuffix("_total") + "_total", ())] == 3
    assert found[(metrics.HELPERS_RUNNING, ())] == 0
    # only METRICS_FILE ends in .prom: the exporter reads nothing else we write
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "snf-image.prom",
        "snf-image.prom.lock",
        "snf-image.prom.state",
    ]


def _many(path: str, count: int) -> None:
    for _ in range(count):
        record(Path(path))


def test_concurrent_deployments_lose_no_count(tmp_path):
    path = tmp_path / "snf-image.prom"
    workers = [multiprocessing.Process(target=_many, args=(str(path), 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    labels = (("operation", "create"), ("os_family", "linux"), ("result", "success"))
    assert samples(path)[(metrics.DEPLOYMENTS, labels)] == 100


def test_helper_gauge_follows_live_processes(tmp_path):
    path = tmp_path / "snf-image.prom"
    metrics_file = metrics.MetricsFile(path)
    mine = metrics.process_token()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other = metrics.process_token(sleeper.pid)
        metrics_file.helper_started(mine)
        metrics_file.helper_started(other)
        assert samples(path)[(metrics.HELPERS_RUNNING, ())] == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    metrics_file.helper_ended(mine)  # the killed one is dropped too: it cannot end its phase itself
    assert samples(path)[(metrics.HELPERS_RUNNING, ())] == 0


def test_an_unreadable_state_starts_from_zero(tmp_path):
    path = tmp_path / "snf-image.prom"
    (tmp_path / "snf-image.prom.state").write_text("{not json")
    record(path)
    labels = (("operation", "create"), ("os_family", "linux"), ("result", "success"))
    assert samples(path)[(metrics.DEPLOYMENTS, labels)] == 1
