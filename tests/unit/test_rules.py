"""The rules contract: dataclasses and JSON Schema agree, decoding is strict, the host builds them in one step."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from snf_image import deploy, schemas
from snf_image.contract import codec
from snf_image.contract.constants import SERIAL_DISK_PREFIX
from snf_image.contract.rules import (
    RULES_FORMAT,
    HostKey,
    PersonalityFile,
    Rules,
    RulesDisk,
    RulesError,
    RulesNic,
    RulesSettings,
    is_result_token,
    new_result_token,
)
from snf_image.ganeti import parse_environment
from snf_image.params import validate
from snf_image.settings import DEFAULTS, build_settings

# --- the schema and the dataclasses agree ----------------------------------------------

JSON_TYPES = {str: {"string"}, int: {"integer"}, bool: {"boolean"}}


def resolve(node: dict[str, Any], document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Follow ``$ref`` (within the document, or into another shipped schema) to the node it names."""
    while "$ref" in node:
        target, _, pointer = node["$ref"].partition("#")
        if target:
            document = schemas.load(target.removesuffix(".schema.json"))
        node = document
        for part in filter(None, pointer.split("/")):
            node = node[part]
    return node, document


def schema_types(node: dict[str, Any]) -> set[str]:
    if "const" in node:
        return {"integer" if isinstance(node["const"], int) else "string"}
    if "enum" in node:
        return {"string" if isinstance(v, str) else "null" for v in node["enum"]}
    declared = node["type"]
    return {declared} if isinstance(declared, str) else set(declared)


def mismatches(tp: Any, node: dict[str, Any], document: dict[str, Any], where: str) -> list[str]:
    """How the JSON that type ``tp`` encodes to differs from what schema ``node`` describes."""
    node, document = resolve(node, document)
    problems: list[str] = []
    expected = schema_types(node)
    nullable = typing.get_origin(tp) in (types.UnionType, typing.Union)
    if nullable:
        (tp,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
    if nullable != ("null" in expected):
        problems.append(f"{where}: nullable in one, not in the other")
    expected.discard("null")
    origin = typing.get_origin(tp)
    if origin is tuple:
        if expected != {"array"}:
            problems.append(f"{where}: a tuple, but the schema says {sorted(expected)}")
        else:
            problems += mismatches(typing.get_args(tp)[0], node["items"], document, f"{where}[]")
    elif origin is Mapping:
        if expected != {"object"} or not isinstance(node.get("additionalProperties"), dict):
            problems.append(f"{where}: a mapping, but the schema has no object of any keys")
        else:
            problems += mismatches(typing.get_args(tp)[1], node["additionalProperties"], document, f"{where}{{}}")
    elif dataclasses.is_dataclass(tp):
        if expected != {"object"}:
            problems.append(f"{where}: an object, but the schema says {sorted(expected)}")
        else:
            problems += dataclass_mismatches(tp, node, document, where)
    elif JSON_TYPES[tp] != expected:
        problems.append(f"{where}: {tp.__name__}, but the schema says {sorted(expected)}")
    return problems


def dataclass_mismatches(
    cls: type, node: dict[str, Any], document: dict[str, Any], where: str, envelope: frozenset[str] = frozenset()
) -> list[str]:
    """Fields against properties, requiredness (no default) against ``required``, and each field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    properties = {name: sub for name, sub in node.get("properties", {}).items() if name not in envelope}
    problems = [f"{where}: schema property {name!r} has no field" for name in sorted(set(properties) - set(fields))]
    problems += [f"{where}: field {name!r} is not in the schema" for name in sorted(set(fields) - set(properties))]
    required = set(node.get("required", ())) - envelope
    optional = {name for name, f in fields.items() if codec.has_default(f)}
    problems += [f"{where}.{name}: required in one, not in the other" for name in sorted(required & optional)]
    problems += [
        f"{where}.{name}: required in one, not in the other"
        for name in sorted(set(fields) - optional - required)
        if name in properties
    ]
    if node.get("additionalProperties") is not False:
        problems.append(f"{where}: the schema allows unknown keys, the decoder refuses them")
    hints = codec.field_types(cls)
    for name in sorted(set(fields) & set(properties)):
        problems += mismatches(hints[name], properties[name], document, f"{where}.{name}")
    return problems


def rules_mismatches(schema: dict[str, Any]) -> list[str]:
    return dataclass_mismatches(Rules, schema, schema, "rules", envelope=frozenset({"format"}))


def test_schema_and_dataclasses_agree() -> None:
    schema = schemas.load("rules")
    assert rules_mismatches(schema) == []
    assert schema["properties"]["format"] == {"const": RULES_FORMAT}
    assert "format" in schema["required"]


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (lambda s: s["properties"].update(resume_token={"type": "string"}), "'resume_token' has no field"),
        (lambda s: s["properties"].pop("hypervisor"), "field 'hypervisor' is not in the schema"),
        (lambda s: s["properties"]["nics"]["items"]["properties"].pop("gateway6"), "'gateway6' is not in the"),
        (lambda s: s["required"].append("password"), "rules.password: required"),
        (lambda s: s["required"].remove("disks"), "rules.disks: required"),
        (lambda s: s["properties"]["debug"].update(type="string"), "rules.debug: bool"),
        (lambda s: s["properties"]["password"].update(type="string"), "rules.password: nullable"),
        (lambda s: s["properties"]["settings"].pop("additionalProperties"), "allows unknown keys"),
    ],
)
def test_a_disagreement_is_found(change: Any, found: str) -> None:
    """The comparison is not vacuous: each kind of drift between schema and dataclasses shows."""
    schema = copy.deepcopy(schemas.load("rules"))
    change(schema)
    assert any(found in problem for problem in rules_mismatches(schema)), rules_mismatches(schema)


PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"


def full_rules() -> Rules:
    """Every field set to something other than its default."""
    return Rules(
        instance_name="vm1.example.org",
        result_token=new_result_token(),
        old_instance_name="old.example.org",
        hypervisor="kvm",
        img_format="extdump",
        properties={"OSFAMILY": "linux", "ROOT_PARTITION": "1"},
        password="s3cret",
        password_hash="$6$salt$hash",
        auth_keys="ssh-ed25519 AAAA k",
        personality=(PersonalityFile(path="/etc/motd", contents="aGk=", owner="root", group="wheel", mode=0o644),),
        os_product_key="AAAAA-BBBBB-CCCCC-DDDDD-EEEEE",
        cloud_userdata="I2Nsb3VkLWNvbmZpZw==",
        nics=(
            RulesNic(
                index=0,
                mac="aa:00:00:00:00:01",
                ip="192.0.2.10",
                mode="bridged",
                link="br0",
                name="eth-a",
                frontend_type="paravirtual",
                network_name="net1",
                subnet="192.0.2.0/24",
                gateway="192.0.2.1",
                subnet6="2001:db8::/64",
                gateway6="2001:db8::1",
                tags=("dhcp", "nfdhcpd"),
            ),
        ),
        disks=(RulesDisk(index=0, size_bytes=1 << 30, frontend_type="paravirtual"), RulesDisk(index=1, size_bytes=0)),
        settings=RulesSettings(
            dhcp_tags=("dhcp",),
            stateful_dhcpv6_tags=("dhcpv6",),
            stateless_dhcpv6_tags=("nfdhcpd",),
            default_nic_config="dhcp+slaac",
            windows_timezone="GMT Standard Time",
            cloud_init_debug=True,
        ),
        files={"unattend.xml": "<unattend/>\r\n", "sysprep.inf": "[Unattended]\r\n"},
        ssh_host_keys=(HostKey(kind="ed25519", private=PRIVATE_KEY, public="ssh-ed25519 AAAAC3 root@vm1\n"),),
        only_tasks=("AssignHostname",),
        debug=True,
    )


def test_a_full_rules_round_trips_and_validates() -> None:
    rules = full_rules()
    data = rules.to_json()
    assert schemas.first_error("rules", json.loads(data)) is None
    assert Rules.from_json(data) == rules
    defaults = {f.name: f.default for f in dataclasses.fields(Rules) if f.default is not dataclasses.MISSING}
    assert all(getattr(rules, name) != value for name, value in defaults.items()), "a field left at its default"


def test_the_result_token_is_fresh_random_and_never_shown() -> None:
    tokens = {new_result_token() for _ in range(100)}
    assert len(tokens) == 100 and all(is_result_token(t) and len(t) == 64 for t in tokens)
    rules = full_rules()
    assert rules.result_token not in repr(rules)


def test_the_private_host_keys_stay_out_of_repr() -> None:
    rules = full_rules()
    assert PRIVATE_KEY not in repr(rules) and "ssh-ed25519 AAAAC3" in repr(rules)


def test_disks_are_found_by_a_serial_made_from_their_index() -> None:
    assert RulesDisk(index=3, size_bytes=0).serial == f"{SERIAL_DISK_PREFIX}3" == "snf-disk3"


# --- strict decoding: one RulesError, naming where, never a value -----------------------


def with_change(path: list[str | int], value: Any) -> bytes:
    obj = json.loads(full_rules().to_json())
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "does not hold UTF-8 JSON"),
        (b"{", "does not hold UTF-8 JSON"),
        (b"[" * 100_000, "does not hold UTF-8 JSON"),
        (b"[]", "not in format 1"),
        (with_change(["format"], 2), "not in format 1"),
        (with_change(["format"], KeyError), "not in format 1"),
        (with_change(["instance_name"], KeyError), "rules: missing field 'instance_name'"),
        (with_change(["surprise"], 1), "rules: unknown field 'surprise'"),
        (with_change(["password"], 42), "rules.password: expected a string, not an integer"),
        (with_change(["nics", 0, "index"], True), r"rules.nics\[0\].index: expected an integer, not a boolean"),
        (with_change(["nics", 0, "index"], -1), r"rules.nics\[0\]: index -1 is negative"),
        (with_change(["nics", 0, "mac"], KeyError), r"rules.nics\[0\]: missing field 'mac'"),
        (with_change(["nics", 0, "tags"], "dhcp"), r"rules.nics\[0\].tags: expected an array, not a string"),
        (with_change(["nics"], {}), "rules.nics: expected an array, not an object"),
        (with_change(["ssh_host_keys", 0, "private"], None), r"rules.ssh_host_keys\[0\].private: expected a string"),
        (with_change(["disks"], []), "rules: no instance disk"),
        (with_change(["disks", 0, "index"], 0.5), r"rules.disks\[0\].index: expected an integer, not float"),
        (with_change(["settings", "cloud_init_debug"], "yes"), "rules.settings.cloud_init_debug: expected a boolean"),
        (with_change(["personality", 0, "path"], None), r"rules.personality\[0\].path: expected a string, not null"),
        (with_change(["personality", 0, "mode"], "0644"), r"rules.personality\[0\].mode: expected an integer"),
        (with_change(["personality", 0, "mode"], True), r"rules.personality\[0\].mode: expected an integer"),
        (with_change(["properties", "X"], 1), r"rules.properties\['X'\]: expected a string"),
        (with_change(["files"], ["unattend.xml"]), "rules.files: expected an object, not an array"),
        (with_change(["only_tasks"], [1]), r"rules.only_tasks\[0\]: expected a string"),
        (with_change(["result_token"], KeyError), "rules: missing field 'result_token'"),
        (with_change(["result_token"], "s3cret"), "rules: the result token is not 64 lower-case hex digits"),
        (with_change(["result_token"], "AB" * 32), "rules: the result token is not 64 lower-case hex digits"),
    ],
)
def test_malformed_rules_are_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(RulesError, match=message) as caught:
        Rules.from_json(data)
    assert "s3cret" not in str(caught.value) and "\n" not in str(caught.value)


def test_optional_fields_may_be_left_out() -> None:
    minimal = {
        "format": RULES_FORMAT,
        "instance_name": "vm1",
        "img_format": "diskdump",
        "properties": {},
        "nics": [{"index": 0, "mac": None, "tags": []}],
        "disks": [{"index": 0, "size_bytes": 1}],
        "settings": {},
        "result_token": "0123456789abcdef" * 4,
    }
    assert schemas.first_error("rules", minimal) is None
    rules = Rules.from_json(json.dumps(minimal).encode())
    assert rules.password is None and rules.personality == () and rules.files == {} and rules.only_tasks is None
    assert rules.nics[0].ip is None and rules.settings == RulesSettings()


# --- the host builds them in one step ----------------------------------------------------

ENVIRONMENT = {
    "OS_API_VERSION": "20",
    "OS_NAME": "snf-image",
    "OS_VARIANT": "default",
    "DEBUG_LEVEL": "0",
    "INSTANCE_NAME": "inst1.example.org",
    "HYPERVISOR": "kvm",
    "DISK_COUNT": "2",
    "DISK_0_PATH": "/dev/null",
    "DISK_0_SIZE": "64",
    "DISK_0_FRONTEND_TYPE": "paravirtual",
    "DISK_1_PATH": "/dev/null",
    "NIC_COUNT": "1",
    "NIC_0_MAC": "AA:00:00:B7:D0:59",
    "NIC_0_IP": "198.51.100.50",
    "NIC_0_NETWORK_SUBNET": "198.51.100.0/24",
    "NIC_0_NETWORK_TAGS": "dhcp nfdhcpd",
}


def test_build_rules_is_complete_and_valid() -> None:
    instance = parse_environment(ENVIRONMENT, "create").instance
    assert instance is not None
    settings = build_settings({**DEFAULTS, "CLOUD_INIT_DEBUG": "yes"}, Path("/nonexistent"))
    params = validate(
        {
            "img_id": "null",
            "img_format": "ntfsdump",
            "img_passwd": "pw",
            "img_properties": json.dumps({"OSFAMILY": "windows", "ROOT_PARTITION": "2", "USERS": "admin"}),
            "inst_properties": json.dumps({"USERS": "operator"}),
            "img_personality": json.dumps(
                [{"path": "/a", "contents": "aGk="}, {"path": "/b", "contents": "", "mode": 420}]
            ),
        }
    )
    rules = deploy.build_rules(
        instance,
        settings,
        params,
        implied_properties={"OSFAMILY": "linux", "ROOT_PARTITION": "1", "SWAP": "2:512"},
        answer_files={"unattend.xml": "<x/>"},
        answer_properties={"IGNORE_UNATTEND": "yes", "ROOT_PARTITION": "3"},
    )
    assert schemas.first_error("rules", json.loads(rules.to_json())) is None
    assert rules.properties == {
        "OSFAMILY": "windows",  # the image's own beat what the format implies
        "ROOT_PARTITION": "3",  # the answer file's beat everything
        "SWAP": "2:512",
        "USERS": "operator",  # the instance's beat the image's
        "IGNORE_UNATTEND": "yes",
    }
    assert (rules.instance_name, rules.hypervisor, rules.img_format, rules.password) == (
        "inst1.example.org",
        "kvm",
        "ntfsdump",
        "pw",
    )
    assert rules.personality == (
        PersonalityFile(path="/a", contents="aGk="),
        PersonalityFile(path="/b", contents="", mode=420),
    )
    assert rules.disks == (
        RulesDisk(index=0, size_bytes=64 << 20, frontend_type="paravirtual"),
        RulesDisk(index=1, size_bytes=0),
    )
    (nic,) = rules.nics
    assert (nic.mac, nic.ip, nic.subnet, nic.tags) == (
        "aa:00:00:b7:d0:59",
        "198.51.100.50",
        "198.51.100.0/24",
        ("dhcp", "nfdhcpd"),
    )
    assert rules.settings.dhcp_tags == settings.dhcp_tags and rules.settings.cloud_init_debug
    assert rules.files == {"unattend.xml": "<x/>"} and rules.only_tasks is None


def test_build_rules_for_a_rename() -> None:
    environment = {**ENVIRONMENT, "OLD_INSTANCE_NAME": "old.example.org"}
    instance = parse_environment(environment, "rename").instance
    assert instance is not None
    settings = build_settings(DEFAULTS, Path("/nonexistent"))
    rules = deploy.build_rules(instance, settings, None, only_tasks=deploy.RENAME_TASKS)
    assert schemas.first_error("rules", json.loads(rules.to_json())) is None
    assert (rules.old_instance_name, rules.only_tasks, rules.password, rules.personality, rules.files) == (
        "old.example.org",
        ("AssignHostname",),
        None,
        (),
        {},
    )
