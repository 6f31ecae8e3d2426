"""METRICS_FILE as Prometheus sees it: scraped through a real node exporter's textfile collector."""

from __future__ import annotations

import socket
import subprocess
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from snf_image import metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _scrape(url: str, exporter: subprocess.Popen) -> str:
    deadline = time.monotonic() + 30
    while True:
        try:
            return requests.get(url, timeout=5).text
        except requests.ConnectionError:
            assert exporter.poll() is None, exporter.communicate()[0]
            assert time.monotonic() < deadline, "the node exporter did not start listening"
            time.sleep(0.2)


def test_the_node_exporter_serves_our_metrics(tmp_path):
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    metrics_file = metrics.MetricsFile(textfiles / "snf-image.prom")
    metrics_file.record("create", "success", "linux", {"copy": 0.8, "helper": 6.1}, 2 << 30, 0, 1)
    metrics_file.record("create", "failure", "windows", {"copy": 1.5}, 0, 1, 0)
    port = _free_port()
    exporter = subprocess.Popen(
        [
            "prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfiles}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = _scrape(f"http://127.0.0.1:{port}/metrics", exporter)
    finally:
        exporter.terminate()
        exporter.communicate(timeout=10)
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }
    assert found[("node_textfile_scrape_error", ())] == 0, page
    assert found[(metrics.DEPLOYMENTS, (("operation", "create"), ("os_family", "linux"), ("result", "success")))] == 1
    assert found[(metrics.DEPLOYMENTS, (("operation", "create"), ("os_family", "windows"), ("result", "failure")))] == 1
    assert found[(metrics.PHASE_SECONDS + "_bucket", (("le", "1"), ("phase", "copy")))] == 1
    assert found[(metrics.PHASE_SECONDS + "_count", (("phase", "copy"),))] == 2
    assert found[(metrics.COPIED_BYTES, ())] == 2 << 30
    assert found[(metrics.CACHE_HITS, ())] == 1 and found[(metrics.CACHE_MISSES, ())] == 1
    assert found[(metrics.HELPERS_RUNNING, ())] == 0
