"""Frozen dataclasses to JSON values and back, strictly: how the contract's values are serialised.

Both sides use it, so it is standard library only (the jail imports it at
boot; jsonschema alone would cost seconds under TCG). A field's type says
what its JSON may be: ``str``, ``int`` (never a bool), ``bool``, ``X | None``,
``tuple[X, ...]`` (an array), ``Mapping[str, X]`` (an object) or another
such dataclass (an object with exactly its fields: an unknown key is
refused, a field without a default is required). Adding a field to a
contract dataclass is therefore all it takes to carry it across.

A value that does not fit is a :class:`DecodeError` naming where, never
what: the rules carry secrets, and the message may reach a log.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_JSON_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}


class DecodeError(ValueError):
    """A JSON value that does not fit its type; the message names the path."""


def encode(value: Any) -> Any:
    """The JSON value of ``value``: dataclasses become objects (every field written), tuples arrays."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [encode(item) for item in value]
    if isinstance(value, Mapping):
        return {key: encode(item) for key, item in value.items()}
    return value


def decode(cls: type[T], value: Any, where: str = "") -> T:
    """The ``cls`` dataclass that ``value`` (parsed JSON) describes; DecodeError if it does not fit."""
    return _decode(cls, value, where or cls.__name__)  # type: ignore[no-any-return]


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of dataclass ``cls``."""
    return typing.get_type_hints(cls)


def has_default(field: dataclasses.Field[Any]) -> bool:
    """Whether a field may be left out (in the JSON as in the constructor)."""
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def _kind(value: Any) -> str:
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if value is None:
            return None
        (single,) = inner  # the contract only uses X | None
        return _decode(single, value, where)
    if origin is tuple:
        item_type, _ellipsis = typing.get_args(tp)
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected an array, not {_kind(value)}")
        return tuple(_decode(item_type, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is Mapping:
        _key_type, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: expected an object, not {_kind(value)}")
        return {key: _decode(item_type, item, f"{where}[{key[:64]!r}]") for key, item in value.items()}
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, where)
    if tp in (str, int, bool):
        if type(value) is not tp:  # exact: a bool is not an integer here
            raise DecodeError(f"{where}: expected {_JSON_NAMES[tp]}, not {_kind(value)}")
        return value
    raise TypeError(f"{where}: the contract cannot carry the type {tp!r}")


def _decode_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(f"{where}: expected an object, not {_kind(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise DecodeError(f"{where}: unknown field {unknown[0][:64]!r}")
    types_ = field_types(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _decode(types_[name], value[name], f"{where}.{name}")
        elif not has_default(field):
            raise DecodeError(f"{where}: missing field {name!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # an invariant of the dataclass (__post_init__)
        raise DecodeError(f"{where}: {exc}") from None
