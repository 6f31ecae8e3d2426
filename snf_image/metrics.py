"""Deployment metrics for Prometheus, as a node exporter textfile (the METRICS_FILE setting).

Every deployment is a process of its own, so the counts live in a JSON state
file beside METRICS_FILE (``<name>.state``). Each update takes an exclusive
lock (``<name>.lock``), reads the state, changes it, and replaces the state
and then the textfile by rename: the exporter never reads half a file and
deployments running at once never lose a count. Only METRICS_FILE ends in
``.prom``, the one name the exporter's textfile collector reads.

The helper VMs gauge counts the deployments whose helper phase has begun and
not ended, each registered by pid and process start time; a registered
process that is gone (killed with its VM) is dropped at the next update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the phase duration histogram's buckets.
BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
STATE_VERSION = 1

DEPLOYMENTS = "snf_image_deployments_total"
PHASE_SECONDS = "snf_image_phase_duration_seconds"
COPIED_BYTES = "snf_image_copied_bytes_total"
CACHE_HITS = "snf_image_image_cache_hits_total"
CACHE_MISSES = "snf_image_image_cache_misses_total"
HELPERS_RUNNING = "snf_image_helper_vms_running"


def _empty_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "deployments": {},
        "phases": {},
        "copied_bytes": 0,
        "cache_hits": 0,
        "cache_misses": 0,
        "helpers": [],
    }


def process_token(pid: int | None = None) -> str | None:
    """``pid:starttime`` of a live process (a reused pid gets another token), None if it is gone."""
    pid = os.getpid() if pid is None else pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return f"{pid}:{fields[19]}"  # field 22 of stat(5): the start time


def _token_alive(token: str) -> bool:
    pid, _, _start = token.partition(":")
    return pid.isdigit() and process_token(int(pid)) == token


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(state: Mapping[str, Any]) -> str:
    """The textfile for ``state``, in the Prometheus text exposition format."""
    lines = [
        f"# HELP {DEPLOYMENTS} Deployments (create) and renames by snf-image, by result and OS family.",
        f"# TYPE {DEPLOYMENTS} counter",
    ]
    for key, count in sorted(state["deployments"].items()):
        operation, result, family = key.split("|")
        lines.append(f"{DEPLOYMENTS}{_labels(operation=operation, result=result, os_family=family)} {count}")
    lines += [
        f"# HELP {PHASE_SECONDS} Deployment phases: copy (image onto disk), helper (VM boot and tasks).",
        f"# TYPE {PHASE_SECONDS} histogram",
    ]
    for phase, data in sorted(state["phases"].items()):
        for bound, count in zip(BUCKETS, data["buckets"], strict=True):
            lines.append(f"{PHASE_SECONDS}_bucket{_labels(phase=phase, le=_number(bound))} {count}")
        lines.append(f"{PHASE_SECONDS}_bucket{_labels(phase=phase, le='+Inf')} {data['count']}")
        lines.append(f"{PHASE_SECONDS}_sum{_labels(phase=phase)} {_number(round(data['sum'], 6))}")
        lines.append(f"{PHASE_SECONDS}_count{_labels(phase=phase)} {data['count']}")
    for name, key, text, kind in (
        (COPIED_BYTES, "copied_bytes", "Image bytes written onto instance disks.", "counter"),
        (CACHE_HITS, "cache_hits", "Deployments served from the node's image cache.", "counter"),
        (CACHE_MISSES, "cache_misses", "Deployments that fetched an image the cache did not hold.", "counter"),
    ):
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {state[key]}"]
    lines += [
        f"# HELP {HELPERS_RUNNING} Helper VMs running on this node.",
        f"# TYPE {HELPERS_RUNNING} gauge",
        f"{HELPERS_RUNNING} {len(state['helpers'])}",
    ]
    return "\n".join(lines) + "\n"


class MetricsFile:
    """METRICS_FILE and its state: every change is one locked read-modify-replace."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state_path = path.with_name(path.name + ".state")
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """The state to change in place; written (state, then the textfile) when the block ends."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._load()
            yield state
            state["helpers"] = [token for token in state["helpers"] if _token_alive(token)]
            self._replace(self.state_path, json.dumps(state, sort_keys=True))
            self._replace(self.path, render(state))
        finally:
            os.close(fd)

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text("utf-8"))
        except FileNotFoundError:
            return _empty_state()
        except (OSError, ValueError) as exc:
            log.warning("metrics: %s is unreadable (%s); counting from zero", self.state_path, exc)
            return _empty_state()
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("metrics: %s has an unknown layout; counting from zero", self.state_path)
            return _empty_state()
        return state

    def _replace(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, "utf-8")
            tmp.chmod(0o644)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)

    def helper_started(self, token: str) -> None:
        with self.update() as state:
            if token not in state["helpers"]:
                state["helpers"].append(token)

    def helper_ended(self, token: str) -> None:
        with self.update() as state:
            state["helpers"] = [t for t in state["helpers"] if t != token]

    def record(
        self,
        operation: str,
        result: str,
        os_family: str,
        phases: Mapping[str, float],
        copied_bytes: int,
        cache_hits: int,
        cache_misses: int,
    ) -> None:
        """Count one finished deployment."""
        with self.update() as state:
            key = f"{operation}|{result}|{os_family}"
            state["deployments"][key] = state["deployments"].get(key, 0) + 1
            for phase, seconds in phases.items():
                data = state["phases"].setdefault(phase, {"buckets": [0] * len(BUCKETS), "sum": 0.0, "count": 0})
                data["buckets"] = [n + (seconds <= bound) for n, bound in zip(data["buckets"], BUCKETS, strict=True)]
                data["sum"] += seconds
                data["count"] += 1
            state["copied_bytes"] += copied_bytes
            state["cache_hits"] += cache_hits
            state["cache_misses"] += cache_misses
