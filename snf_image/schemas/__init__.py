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
    """The most relevant validation error as one line, or None if ``instance`` is valid.

    The line names where (the path inside ``instance``) and what the schema wanted, never the
    rejected value: values may be secrets (a password too long) or hostile text.
    """
    error = jsonschema.exceptions.best_match(validator(name, definition).iter_errors(instance))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {describe(error)}" if where else describe(error)


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values) if isinstance(values, list | tuple) else str(values)


_BOUNDS = {
    "minLength": "shorter than {} characters",
    "maxLength": "longer than {} characters",
    "minItems": "fewer than {} items",
    "maxItems": "more than {} items",
    "minProperties": "fewer than {} entries",
    "maxProperties": "more than {} entries",
    "minimum": "less than {}",
    "maximum": "more than {}",
    "exclusiveMinimum": "not more than {}",
    "exclusiveMaximum": "not less than {}",
}
#: Patterns whose failure reads better as a sentence than as the regular expression.
_PATTERN_WORDS = {
    "^[^\\x00]*$": "contains a NUL character",
    "^/[^\\x00]*$": "must be an absolute path without NUL characters",
}


def describe(error: jsonschema.exceptions.ValidationError) -> str:
    """What ``error``'s schema keyword demanded, in words, built from the schema alone (not the value)."""
    keyword, wanted = error.validator, error.validator_value
    if keyword in _BOUNDS:
        return _BOUNDS[keyword].format(wanted)
    if keyword == "type":
        return f"must be of type {_join(wanted).replace(', ', ' or ')}"
    if keyword == "enum":
        return f"must be one of {_join(wanted)}"
    if keyword == "pattern" and wanted in _PATTERN_WORDS:
        return _PATTERN_WORDS[wanted]
    if keyword == "pattern":
        subject = "a name " if "propertyNames" in error.schema_path else ""
        return f"{subject}does not match {wanted}"
    if keyword == "required" and isinstance(error.instance, dict):
        return f"lacks {_join([key for key in wanted if key not in error.instance])}"
    if keyword == "additionalProperties" and isinstance(error.schema, dict):
        return f"may only have the fields {_join(list(error.schema.get('properties', {})))}"
    if keyword == "format":
        return f"is not a valid {wanted}"
    return f"is not valid ({keyword})"
