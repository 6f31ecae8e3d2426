"""JSON Schemas shipped with the package, and validators built from them once."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema

_NAMES = ("progress", "params", "rules")


@functools.cache
def load(name: str) -> dict[str, Any]:
    """The schema document ``<name>.schema.json``."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@functools.cache
def _store() -> dict[str, Any]:
    """Every shipped schema by its file name and by its $id, so that $refs between them resolve offline."""
    store: dict[str, Any] = {}
    for name in _NAMES:
        store[f"{name}.schema.json"] = store[load(name)["$id"]] = load(name)
    return store


@functools.cache
def validator(name: str, definition: str | None = None) -> jsonschema.protocols.Validator:
    """A validator for schema ``name``, or for one of its ``$defs``."""
    schema = load(name)
    if definition is not None:
        schema = {"$ref": f"{schema['$id']}#/$defs/{definition}"}
    cls = jsonschema.validators.validator_for(load(name))
    resolver = jsonschema.RefResolver(load(name)["$id"], load(name), store=_store())
    return cls(schema, resolver=resolver, format_checker=cls.FORMAT_CHECKER)


def first_error(name: str, instance: Any, definition: str | None = None) -> str | None:
    """The most relevant validation error as one line, or None if ``instance`` is valid."""
    error = jsonschema.exceptions.best_match(validator(name, definition).iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message
