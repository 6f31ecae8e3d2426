"""Image sources: the registry, and picking the one that handles an image id.

Built-in sources are listed here; third-party ones register an entry point
in the ``snf_image.sources`` group (a subclass of
:class:`~snf_image.sources.base.ImageSource`) and need no change to this
package. Settings decide priorities (``backends/src/<name>.priority`` or
``SOURCE_PRIORITIES``) and what is disabled (``<name>.disabled`` or
``SOURCES_DISABLED``). The first enabled source, by priority, whose probe
accepts the id wins.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from ..errors import OperatorError
from .base import ImageSource, ImageStream
from .urls import redact_id

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "snf_image.sources"
#: Built-in sources as module:class, imported only when sources are listed (the copy path and
#: the jail import this package for the base classes alone, without requests & co).
BUILTIN = (
    "pithos:PithosSource",
    "pithos:PithosMapSource",
    "null:NullSource",
    "network:NetworkSource",
    "local:LocalSource",
)


def _builtin_classes() -> list[type[ImageSource]]:
    classes = []
    for spec in BUILTIN:
        module, _, name = spec.partition(":")
        classes.append(getattr(importlib.import_module(f"{__name__}.{module}"), name))
    return classes


__all__ = ["ImageSource", "ImageStream", "available_sources", "select_source"]


def _plugin_classes() -> list[type[ImageSource]]:
    from importlib import metadata

    classes = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # a broken plugin must not break deployments from other sources
            log.warning("ignoring image source plugin %s: %s", entry.name, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, ImageSource)):
            log.warning("ignoring image source plugin %s: not an ImageSource subclass", entry.name)
            continue
        classes.append(cls)
    return classes


def available_sources(settings: Settings) -> list[ImageSource]:
    """Enabled sources, highest priority first (ties: built-ins in their listed order)."""
    ranked = []
    seen: set[str] = set()
    for position, cls in enumerate((*_builtin_classes(), *_plugin_classes())):
        if cls.name in seen:
            log.warning("ignoring a second image source named %r (%s)", cls.name, cls.__module__)
            continue
        seen.add(cls.name)
        if settings.source_disabled(cls.name):
            log.info("image source %s is disabled", cls.name)
            continue
        priority = settings.source_priority(cls.name, cls.default_priority)
        ranked.append((-priority, position, cls(settings.source_config(cls.name))))
    ranked.sort(key=lambda item: item[:2])
    return [source for _, _, source in ranked]


def select_source(img_id: str, settings: Settings) -> ImageSource:
    """The source that handles ``img_id``; OperatorError when none does."""
    for source in available_sources(settings):
        if source.probe(img_id):
            log.info("image %r is handled by the %s source", redact_id(img_id), source.name)
            return source
    raise OperatorError(f"img_id: no source can handle image id {redact_id(img_id)!r}")
