"""OS parameters: merged from their sources, decoded, validated.

Precedence (lowest first): defaults in snf-image.conf / the variant file,
``OSP_*`` from Ganeti, the JSON object fetched from ``config_url``.
Validation collects every problem, one line each naming the parameter, so
``verify`` tells the operator everything at once.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import schemas
from .errors import OperatorError
from .settings import OS_PARAMETERS

#: Bounds for hostile or mistaken input (bytes of the raw parameter value).
MAX_JSON_PARAM = 1024 * 1024
MAX_PERSONALITY = 32 * 1024 * 1024
MAX_CONFIG_URL_DOCUMENT = 1024 * 1024

JSON_PARAMS = ("img_properties", "inst_properties", "img_personality")


class ParameterErrors(OperatorError):
    """Several parameter problems; ``str()`` is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class OsParams:
    """The decoded OS parameters of one deployment."""

    img_id: str
    img_format: str
    img_passwd: str | None = None
    img_passwd_hash: str | None = None
    img_properties: Mapping[str, str] = field(default_factory=dict)
    inst_properties: Mapping[str, str] = field(default_factory=dict)
    img_personality: tuple[Mapping[str, Any], ...] = ()
    img_checksum: str | None = None
    auth_keys: str | None = None
    config_url: str | None = None
    os_product_key: str | None = None
    os_answer_file: str | None = None
    cloud_userdata: str | None = None

    @property
    def properties(self) -> dict[str, str]:
        """Image properties with the instance's overriding them, keys upper-case."""
        merged = dict(self.img_properties)
        merged.update(self.inst_properties)
        return merged


def merge_sources(
    defaults: Mapping[str, str], osparams: Mapping[str, str], config: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Apply the precedence rules; unknown OSP_ names are Ganeti's business (parameters.list)."""
    merged = {k: v for k, v in defaults.items() if k in OS_PARAMETERS}
    merged.update({k: v for k, v in osparams.items() if k in OS_PARAMETERS})
    merged.update(config or {})
    return merged


def parse_config_document(text: str, url: str) -> dict[str, str]:
    """The JSON object served at ``config_url``: keys are OS parameter names (any case), values strings."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise OperatorError(f"config_url: {url} did not return valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise OperatorError(f"config_url: {url} must return a JSON object")
    result = {}
    for key, value in data.items():
        name = key.lower()
        if name not in OS_PARAMETERS or name == "config_url":
            raise OperatorError(f"config_url: {url} sets unknown parameter {key!r}")
        if not isinstance(value, str):
            raise OperatorError(f"config_url: {url}: the value of {key!r} must be a string")
        result[name] = value
    return result


def _decode_json(name: str, raw: str, limit: int, problems: list[str]) -> Any:
    if len(raw.encode("utf-8", "surrogatepass")) > limit:
        problems.append(f"{name}: too large (more than {limit} bytes)")
        return None
    try:
        return json.loads(raw)
    except RecursionError:
        problems.append(f"{name}: JSON nested too deeply")
    except ValueError as exc:
        problems.append(f"{name}: not valid JSON: {exc}")
    return None


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _stringify_properties(value: dict[str, Any]) -> dict[str, str]:
    """Keys upper-case (properties are case-insensitive); non-string values as the original's str()."""
    result = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = "yes" if item else "no"
        result[key.upper()] = str(item)
    return result


def validate(raw: Mapping[str, str], require_image: bool = True) -> OsParams | None:
    """Decode and validate merged raw parameters; raise ParameterErrors listing every problem.

    With ``require_image=False`` (verify with a config_url still to be fetched) img_id and
    img_format may be missing, and None is returned when they are.
    """
    problems: list[str] = []
    decoded: dict[str, Any] = {}
    for name, value in raw.items():
        if "\x00" in value:
            problems.append(f"{name}: contains a NUL character")
            continue
        if name in JSON_PARAMS:
            limit = MAX_PERSONALITY if name == "img_personality" else MAX_JSON_PARAM
            if value.strip() == "":
                continue
            value = _decode_json(name, value, limit, problems)
            if value is None:
                continue
        decoded[name] = value

    for name in ("img_id", "img_format"):
        if not raw.get(name):
            if require_image:
                problems.append(f"{name}: missing (required)")
            decoded.pop(name, None)
    if "img_passwd" in raw and "img_passwd_hash" in raw:
        problems.append("img_passwd, img_passwd_hash: conflicting parameters, give only one")

    problems.extend(_schema_problems(decoded))
    for item in decoded.get("img_personality", []) if isinstance(decoded.get("img_personality"), list) else []:
        if isinstance(item, dict) and isinstance(item.get("contents"), str) and not _is_base64(item["contents"]):
            problems.append(f"img_personality: contents of {item.get('path')!r} is not valid base64")
    if isinstance(decoded.get("cloud_userdata"), str) and not _is_base64(decoded["cloud_userdata"]):
        problems.append("cloud_userdata: not valid base64")

    if problems:
        raise ParameterErrors(problems)
    if "img_id" not in decoded or "img_format" not in decoded:
        return None
    for name in ("img_properties", "inst_properties"):
        if name in decoded:
            decoded[name] = _stringify_properties(decoded[name])
    if "img_personality" in decoded:
        decoded["img_personality"] = tuple(decoded["img_personality"])
    return OsParams(**decoded)


_MESSAGES = {
    "img_format": "must be one of diskdump, extdump, ntfsdump",
    "os_product_key": "invalid product key; valid format is XXXXX-XXXXX-XXXXX-XXXXX-XXXXX",
    "os_answer_file": "must be an http, https, ftp or ftps URL",
    "config_url": "must be an http, https, ftp or ftps URL",
    "img_checksum": "must be <algorithm>:<hex digest> with md5, sha1, sha256 or sha512",
    "img_passwd_hash": "must be a crypt(3) hash on one line without ':'",
}


def _schema_problems(decoded: dict[str, Any]) -> list[str]:
    """One line per parameter that fails its schema, worded for the operator."""
    problems = []
    known = schemas.load("params")["properties"]
    for name, value in decoded.items():
        if name not in known:
            problems.append(f"{name}: not a parameter of snf-image")
            continue
        error = schemas.first_error("params", {name: value})
        if error is not None:
            detail = _MESSAGES.get(name) or error.removeprefix(name).lstrip("/: ")
            problems.append(f"{name}: {detail}")
    return problems
