"""What operators watch: one summary line per deployment in the OS log, and METRICS_FILE.

A deployment (Ganeti's create or rename, ``snf-image deploy``) runs inside
:func:`watch`, which learns what happened from the progress messages (bytes
copied, the OS family the helper detected) and from a few notes of the code
it runs: :func:`note_image` (which image, which source), the :func:`timed`
phases, and :func:`note_image_cache`, the image cache's hook. When the
deployment ends, whether it succeeded or not, it logs one line::

    summary: operation=create instance=web1 image=https://images.example/debian.img?... source=network
    bytes=1073741824 os_family=linux copy=0.71s helper=5.40s total=6.30s result=success

and, when METRICS_FILE is set, counts it there (:mod:`snf_image.metrics`).
Image ids appear without credentials or query strings; nothing else in the
line can carry a secret.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .contract import messages
from .contract.constants import HELPER_WARNING, MSG_COPY_PROGRESS, MSG_HELPER, OSFAMILIES
from .metrics import MetricsFile, process_token
from .progress import Progress
from .settings import Settings
from .sources.urls import redact_id

log = logging.getLogger("snf-image")

PHASE_COPY = "copy"
PHASE_HELPER = "helper"
SUCCESS = "success"
FAILURE = "failure"
UNKNOWN = "unknown"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class DeploymentRecord:
    """What one deployment did, as far as the host knows."""

    operation: str
    instance: str
    metrics: MetricsFile | None = None
    image: str = "-"
    source: str = "-"
    copied_bytes: int = 0
    os_family: str = UNKNOWN
    phases: dict[str, float] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    total: float = 0.0
    result: str = FAILURE

    def observe(self, message: Mapping[str, Any]) -> None:
        """A progress message of this deployment: the copy's position, the helper's detection."""
        if message.get("type") == MSG_COPY_PROGRESS:
            self.copied_bytes = int(message["position"])
        elif message.get("type") == MSG_HELPER and message.get("subtype") == HELPER_WARNING:
            for text in message.get("messages", []):
                found = messages.parse_detected(str(text))
                if found is not None and found[0] == "OSFAMILY" and found[1] in OSFAMILIES:
                    self.os_family = found[1]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time phase ``name``; the helper phase also counts in the helper VMs gauge."""
        token = process_token() if name == PHASE_HELPER and self.metrics is not None else None
        if token is not None:
            _safely(self.metrics.helper_started, token)
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start
            if token is not None:
                _safely(self.metrics.helper_ended, token)

    def line(self) -> str:
        """The summary line (no secret: the image id is redacted)."""
        fields = [
            f"operation={self.operation}",
            f"instance={self.instance}",
            f"image={self.image}",
            f"source={self.source}",
            f"bytes={self.copied_bytes}",
            f"os_family={self.os_family}",
        ]
        if self.cache_hits or self.cache_misses:
            fields.append(f"cache={'hit' if self.cache_hits else 'miss'}")
        fields += [f"{name}={seconds:.2f}s" for name, seconds in self.phases.items()]
        fields += [f"total={self.total:.2f}s", f"result={self.result}"]
        return "summary: " + " ".join(fields)


_current: contextvars.ContextVar[DeploymentRecord | None] = contextvars.ContextVar("snf_image_deployment", default=None)


def _safely(action: Callable[..., None], *args: Any) -> None:
    """Metrics never fail a deployment: a problem is one warning in the log."""
    try:
        action(*args)
    except OSError as exc:
        log.warning("metrics: cannot update METRICS_FILE: %s", exc)


@contextlib.contextmanager
def watch(operation: str, instance: str, settings: Settings, progress: Progress) -> Iterator[DeploymentRecord]:
    """Record the deployment run in this block; log its summary (and count it) however it ends."""
    metrics = MetricsFile(settings.metrics_file) if settings.metrics_file else None
    record = DeploymentRecord(operation, instance, metrics)
    progress.observe(record.observe)
    reset = _current.set(record)
    start = time.monotonic()
    try:
        yield record
        record.result = SUCCESS
    finally:
        _current.reset(reset)
        record.total = time.monotonic() - start
        log.info("%s", record.line())
        if metrics is not None:
            _safely(
                metrics.record,
                record.operation,
                record.result,
                record.os_family,
                record.phases,
                record.copied_bytes,
                record.cache_hits,
                record.cache_misses,
            )


def timed(name: str) -> Callable[[F], F]:
    """Decorator: each call of the function is (part of) phase ``name`` of the current deployment."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            record = _current.get()
            if record is None:
                return func(*args, **kwargs)
            with record.phase(name):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def note_image(img_id: str, source: str, properties: Mapping[str, str]) -> None:
    """The image being deployed, the source serving it and the OS family its properties declare."""
    record = _current.get()
    if record is None:
        return
    record.image = redact_id(img_id)
    record.source = source
    family = properties.get("OSFAMILY", "").lower()
    if family in OSFAMILIES:
        record.os_family = family


def note_image_cache(hit: bool) -> None:
    """The image cache's hook: call once per deployment that asked the cache, with whether it held the image."""
    record = _current.get()
    if record is None:
        return
    if hit:
        record.cache_hits += 1
    else:
        record.cache_misses += 1
