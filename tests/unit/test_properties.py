"""Boolean and name decoding of image properties (reference §8)."""

from __future__ import annotations

import pytest

from helper.properties import Properties, parse_bool


@pytest.mark.parametrize("value", ["yes", "true", "on", "1", "set", "YES", " True ", "On"])
def test_yes_words(value: str) -> None:
    assert parse_bool("X", value) == (True, None)


@pytest.mark.parametrize("value", ["no", "false", "off", "0", "unset", "NO", "Off "])
def test_no_words(value: str) -> None:
    assert parse_bool("X", value) == (False, None)


def test_undefined_is_no_without_warning() -> None:
    assert parse_bool("X", None) == (False, None)


def test_empty_is_no_with_warning() -> None:
    value, warning = parse_bool("CLOUD_INIT", "")
    assert value is False
    assert "CLOUD_INIT" in warning and "empty" in warning


@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_anything_else_is_yes_with_warning(value: str) -> None:
    result, warning = parse_bool("DO_SYNC", value)
    assert result is True
    assert "Invalid value" in warning and "DO_SYNC" in warning


def test_names_are_case_insensitive() -> None:
    props = Properties({"osfamily": "linux", "Root_Partition": "2"})
    assert props["OSFAMILY"] == "linux"
    assert props.get("root_partition") == "2"
    assert "rOoT_pArTiTiOn" in props
    assert sorted(props) == ["OSFAMILY", "ROOT_PARTITION"]
    assert props.get("MISSING") == ""
    assert props.value("missing") == ""


def test_values_become_strings() -> None:
    props = Properties({"SWAP": 5, "EMPTY": None})
    assert props["SWAP"] == "5"
    assert props["EMPTY"] == ""


def test_flag_warns_once_per_property() -> None:
    warnings: list[str] = []
    props = Properties({"exclude_task_foo": "perhaps", "CLOUD_INIT": ""}, warn=warnings.append)
    assert props.flag("EXCLUDE_TASK_Foo") is True
    assert props.flag("exclude_task_foo") is True
    assert props.flag("CLOUD_INIT") is False
    assert props.flag("NOT_THERE") is False
    assert len(warnings) == 2
