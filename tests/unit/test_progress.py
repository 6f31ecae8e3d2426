"""Progress messages: the seed's shapes, validated, delivered to a real monitor program or the log."""

import io
import json
import sys
import time

import pytest

from snf_image import schemas
from snf_image.progress import MONITOR_CLOSE_TIMEOUT, Progress, make_message


def test_messages_have_the_seed_shapes():
    msg = make_message("image-copy-progress", position=5, total=10, progress=50.0)
    assert set(msg) == {"type", "timestamp", "position", "total", "progress"}
    with pytest.raises(ValueError):
        make_message("image-copy-progress", position=-1, total=10, progress=0)
    with pytest.raises(ValueError):
        make_message("image-info", messages=[])
    with pytest.raises(ValueError):
        make_message("image-bogus", messages=["x"])


@pytest.mark.parametrize(
    ("line", "valid"),
    [
        ({"subtype": "task-start", "task": "FixPartitionTable"}, True),
        ({"subtype": "task-end", "task": "MountImage"}, True),
        ({"subtype": "warning", "messages": ["careful"]}, True),
        ({"subtype": "error", "stderr": "boom"}, True),
        ({"subtype": "task-start", "task": "rm -rf /"}, False),
        ({"subtype": "task-start"}, False),
        ({"subtype": "warning", "messages": ["x" * 5000]}, False),
        ({"subtype": "warning", "messages": ["a"], "extra": 1}, False),
        ({"subtype": "reboot"}, False),
        (["task-start"], False),
    ],
)
def test_helper_lines_are_checked(line, valid):
    assert (schemas.first_error("progress", line, "helper_line") is None) == valid


def test_without_monitor_messages_go_to_the_log():
    log = io.StringIO()
    progress = Progress(stream=log)
    progress.info("hello")
    line = log.getvalue()
    assert line.startswith("[MONITOR] ") and json.loads(line[10:])["messages"] == ["hello"]


def test_monitor_program_receives_json_lines(tmp_path):
    out = tmp_path / "got"
    monitor = tmp_path / "monitor"
    monitor.write_text(f'#!/bin/sh\necho "$1" > {out}\ncat >> {out}\n')
    monitor.chmod(0o755)
    with Progress(str(monitor), "inst1") as progress:
        progress.info("one")
        progress.copy_progress(1, 4)
        progress.helper({"subtype": "task-end", "task": "MountImage"})
    lines = out.read_text().splitlines()
    assert lines[0] == "inst1"
    types = [json.loads(line)["type"] for line in lines[1:]]
    assert types == ["image-info", "image-copy-progress", "image-helper"]
    assert json.loads(lines[2])["progress"] == 25.0


def test_dead_monitor_never_fails_the_deployment(tmp_path):
    log = io.StringIO()
    with Progress("/bin/true", "inst1", stream=log) as progress:
        for _ in range(200):  # the pipe breaks once true has exited
            progress.info("x" * 1000)
    assert "[MONITOR]" in log.getvalue()


def test_monitor_that_cannot_start_falls_back_to_the_log():
    log = io.StringIO()
    with Progress("/nonexistent/monitor", "inst1", stream=log) as progress:
        progress.error("failed")
    assert '"image-error"' in log.getvalue()


def test_listener_sees_everything():
    seen = []
    with Progress(listener=seen.append, stream=sys.stderr) as progress:
        progress.info("a")
    assert seen[0]["messages"] == ["a"]


def test_a_monitor_that_stops_reading_delays_nothing(tmp_path, caplog):
    """A real monitor that reads one line and then nothing more: sending never blocks, closing is bounded."""
    monitor = tmp_path / "monitor"
    monitor.write_text("#!/bin/sh\nhead -n 1 > /dev/null\nexec sleep 3600\n")
    monitor.chmod(0o755)
    start = time.monotonic()
    with Progress(str(monitor), "inst1") as progress:
        proc = progress._proc
        for n in range(3000):  # ~3 MB: far more than the pipe and the queue hold
            progress.info(f"message {n} " + "x" * 1000)
        sent = time.monotonic() - start
    closed = time.monotonic() - start - sent
    assert sent < 5, sent
    assert closed < MONITOR_CLOSE_TIMEOUT + 2, closed
    assert proc.returncode is not None  # killed and reaped, with its sleep (its process group)
    assert caplog.text.count("progress monitor is not reading its input") == 1
    assert "messages it did not read in time" in caplog.text


def test_a_monitor_that_reads_slowly_gets_every_message(tmp_path):
    out = tmp_path / "got"
    monitor = tmp_path / "monitor"
    monitor.write_text(f'#!/bin/sh\nwhile read -r line; do echo "$line" >> {out}; sleep 0.001; done\n')
    monitor.chmod(0o755)
    with Progress(str(monitor), "inst1") as progress:
        for n in range(200):
            progress.info(f"message {n}")
    lines = out.read_text().splitlines()
    assert [json.loads(line)["messages"] for line in lines] == [[f"message {n}"] for n in range(200)]
