"""OS parameters: precedence, decoding and every validation rule, with hostile inputs."""

import base64
import json

import pytest

from snf_image.errors import OperatorError
from snf_image.params import ParameterErrors, merge_sources, parse_config_document, validate
from snf_image.settings import OS_PARAMETERS

GOOD = {"img_id": "local://debian", "img_format": "diskdump"}


def problems(raw):
    with pytest.raises(ParameterErrors) as err:
        validate(raw)
    return err.value.problems


def test_precedence_defaults_osp_config_url():
    merged = merge_sources(
        {"img_format": "extdump", "img_id": "a", "helper_memory": "1"},
        {"img_id": "b", "unknown": "x"},
        {"img_id": "c"},
    )
    assert merged == {"img_format": "extdump", "img_id": "c"}


def test_valid_parameters_are_decoded():
    personality = [{"path": "/etc/motd", "contents": base64.b64encode(b"hi").decode(), "mode": 420}]
    result = validate(
        {
            **GOOD,
            "img_passwd": "s3cr3t ünïcode",
            "img_properties": json.dumps({"osfamily": "linux", "Root_Partition": 1, "x": True}),
            "inst_properties": '{"OSFAMILY": "windows"}',
            "img_personality": json.dumps(personality),
            "os_product_key": "ABCDE-12345-FGHIJ-67890-KLMNO",
            "cloud_userdata": base64.b64encode(b"#cloud-config\n").decode(),
            "img_checksum": "sha256:" + "a" * 64,
        }
    )
    assert result.img_properties == {"OSFAMILY": "linux", "ROOT_PARTITION": "1", "X": "yes"}
    assert result.properties["OSFAMILY"] == "windows"
    assert result.img_personality[0]["path"] == "/etc/motd"


def test_every_problem_is_a_line_naming_its_parameter():
    found = problems(
        {
            "img_id": "",
            "img_format": "vmdk",
            "img_passwd": "a",
            "img_passwd_hash": "b",
            "img_properties": "[1, 2]",
            "inst_properties": "{not json",
            "img_personality": '[{"path": "etc/x", "contents": "!!"}]',
            "os_product_key": "ABCDE",
            "os_answer_file": "file:///etc/shadow",
            "config_url": "gopher://x",
            "cloud_userdata": "not base64!",
            "img_checksum": "crc32:abc",
        }
    )
    for name in (
        "img_id",
        "img_format",
        "img_passwd, img_passwd_hash",
        "img_properties",
        "inst_properties",
        "img_personality",
        "os_product_key",
        "os_answer_file",
        "config_url",
        "cloud_userdata",
        "img_checksum",
    ):
        assert any(p.startswith(name + ":") for p in found), (name, found)
    assert all("\n" not in p for p in found)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("img_properties", "[" * 100000 + "]" * 100000),
        ("img_properties", '{"a": "' + "x" * (2 * 1024 * 1024) + '"}'),
        ("img_properties", '{"a": {"nested": 1}}'),
        ("img_properties", '{"bad key!": "1"}'),
        ("img_properties", '{"": "1"}'),
        ("img_personality", '{"path": "/x"}'),
        ("img_personality", '[{"path": "/x", "contents": "", "mode": "0644"}]'),
        ("img_personality", '[{"path": "/x", "contents": "", "owner": "ro ot"}]'),
        ("img_personality", '[{"path": "/x", "contents": "", "extra": 1}]'),
        ("img_passwd_hash", "$6$a:b"),
        ("img_passwd", "a\x00b"),
        ("img_properties", '{"A": "a\\u0000b"}'),
        ("inst_properties", '{"A": "\\u0000"}'),
        ("img_personality", '[{"path": "/etc/a\\u0000b", "contents": ""}]'),
    ],
)
def test_hostile_values_are_refused(name, value):
    found = problems({**GOOD, name: value})
    assert any(p.startswith(name) for p in found), found


def test_empty_json_parameters_mean_unset():
    result = validate({**GOOD, "img_properties": "", "img_personality": " "})
    assert result.img_properties == {} and result.img_personality == ()


def test_verify_without_image_when_config_url_will_provide_it():
    assert validate({"config_url": "https://cfg.example/x.json"}, require_image=False) is None


def test_config_document():
    doc = parse_config_document('{"IMG_ID": "local://x", "img_passwd": "p"}', "u")
    assert doc == {"img_id": "local://x", "img_passwd": "p"}
    for bad in ('["x"]', '{"IMG_ID": 1}', '{"helper_dir": "/"}', '{"config_url": "http://loop"}', "nope"):
        with pytest.raises(OperatorError):
            parse_config_document(bad, "u")


SECRET = "Zq7-S3CRET-zQ7"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("img_passwd", SECRET * 200),
        ("img_passwd_hash", f"$6${SECRET}:x"),
        ("os_product_key", SECRET),
        ("cloud_userdata", f"not base64 {SECRET}"),
        ("auth_keys", SECRET * 200000),
        ("config_url", f"gopher://user:{SECRET}@h/x?token={SECRET}"),
        ("os_answer_file", f"file:///{SECRET}"),
        ("img_id", SECRET * 1000),
        ("img_format", SECRET),
        ("img_checksum", f"sha256:{SECRET}"),
        ("img_properties", json.dumps({"PASSWORD": {"nested": SECRET}})),
        ("img_properties", json.dumps({f"bad {SECRET}": "1"})),
        ("img_personality", json.dumps([{"path": "/x", "contents": "", "mode": SECRET}])),
        ("img_personality", json.dumps([{"path": "/x", "contents": f"!{SECRET}!"}])),
        ("img_personality", json.dumps([{"path": "/x", "contents": "", SECRET: 1}])),
        ("inst_properties", '{"a": "' + SECRET + '"'),
    ],
    ids=lambda value: value if value in OS_PARAMETERS else "",
)
def test_no_problem_text_repeats_a_value(name, value):
    """A rejected value may be a secret (a password one character too long): it is never echoed."""
    found = problems({**GOOD, name: value})
    assert any(p.startswith(name) for p in found), found
    assert not [p for p in found if SECRET in p or SECRET[:7] in p], found


def test_a_nul_inside_json_is_named_not_echoed():
    found = problems({**GOOD, "img_properties": '{"CUSTOM_TASK": "c2VjcmV0\\u0000"}'})
    assert found == ["img_properties: CUSTOM_TASK: contains a NUL character"]
