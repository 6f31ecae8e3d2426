"""The rules: everything the host tells the jail about one deployment, as one typed, frozen value.

The host builds a :class:`Rules` in one step (``snf_image.deploy.build_rules``),
checks its JSON against ``snf_image/schemas/rules.schema.json`` (the
published description of this layout) and writes :meth:`Rules.to_json` onto
the rules disk; the jail's runner reads it back with :meth:`Rules.from_json`
and every task reads typed fields (``ctx.rules.instance_name``,
``ctx.rules.nics``, ...). The JSON is never handled as a dict anywhere else.

To add a field: add it to the dataclass (with a default unless every rules
disk must carry it) and to the schema; ``tests/unit/test_rules.py`` checks
that the two agree, field by field.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import codec
from .constants import SERIAL_DISK_PREFIX
from .errors import SnfImageError

#: The layout version; a jail refuses rules of another one (host and helper image out of step).
RULES_FORMAT = 1

#: The mode of a personality file that does not give one (0440, as the original).
PERSONALITY_DEFAULT_MODE = 0o440

#: Random bytes in a deployment's result token (:attr:`Rules.result_token`, hex-encoded).
RESULT_TOKEN_BYTES = 32


class RulesError(SnfImageError):
    """The rules disk is missing, unreadable or malformed: a host-side bug, never the image's fault."""


def disk_serial(index: int) -> str:
    """The virtio serial of instance disk ``index``, by which the jail finds it."""
    return f"{SERIAL_DISK_PREFIX}{index}"


def new_result_token() -> str:
    """A fresh per-deployment token: the proof that a SUCCESS line comes from the runner."""
    return secrets.token_hex(RESULT_TOKEN_BYTES)


def is_result_token(value: str) -> bool:
    """Whether ``value`` has the shape of a result token (lower-case hex of RESULT_TOKEN_BYTES bytes)."""
    return len(value) == 2 * RESULT_TOKEN_BYTES and all(c in "0123456789abcdef" for c in value)


def _check_index(index: int) -> None:
    if index < 0:
        raise ValueError(f"index {index} is negative")


@dataclass(frozen=True, kw_only=True)
class RulesDisk:
    """One instance disk, by its Ganeti index (the jail finds it by :attr:`serial`)."""

    index: int
    size_bytes: int
    frontend_type: str | None = None

    def __post_init__(self) -> None:
        _check_index(self.index)

    @property
    def serial(self) -> str:
        return disk_serial(self.index)


@dataclass(frozen=True, kw_only=True)
class RulesNic:
    """One NIC as Ganeti describes it, with its network's addresses and tags (all unchecked text)."""

    index: int
    mac: str | None
    tags: tuple[str, ...]
    ip: str | None = None
    mode: str | None = None
    link: str | None = None
    name: str | None = None
    frontend_type: str | None = None
    network_name: str | None = None
    subnet: str | None = None
    gateway: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None

    def __post_init__(self) -> None:
        _check_index(self.index)


@dataclass(frozen=True, kw_only=True)
class RulesSettings:
    """The node's settings the tasks need (snf-image.conf)."""

    dhcp_tags: tuple[str, ...] = ()
    stateful_dhcpv6_tags: tuple[str, ...] = ()
    stateless_dhcpv6_tags: tuple[str, ...] = ()
    default_nic_config: str = ""
    windows_timezone: str = ""
    cloud_init_debug: bool = False


@dataclass(frozen=True, kw_only=True)
class PersonalityFile:
    """One img_personality entry as the operator gave it (``contents`` base64; checked by the task)."""

    path: str
    contents: str
    owner: str = ""
    group: str = ""
    mode: int = PERSONALITY_DEFAULT_MODE


@dataclass(frozen=True, kw_only=True)
class HostKey:
    """An SSH host key the host made for the instance, in OpenSSH's own file formats.

    kind: ssh-keygen's type (rsa, ecdsa, ed25519).
    private: the private key file: a secret, kept out of repr.
    public: the ``.pub`` line.
    """

    kind: str
    private: str = field(repr=False)
    public: str


@dataclass(frozen=True, kw_only=True)
class Rules:
    """One deployment's rules.

    properties: img_properties overridden by inst_properties, then by what
        the image format and the answer file imply; keys upper-case.
    files: answer files by name (unattend.xml, sysprep.inf), as text.
    only_tasks: when set (rename), run only these tasks plus the mounting
        machinery they need.
    result_token: :func:`new_result_token`, fresh for every deployment; the
        runner writes it with SUCCESS on the result port and the host
        accepts no SUCCESS without it. Image code never sees it: it lives only here, in
        the runner's memory and on the rules disk, which the sandbox
        (helper.sandbox) cannot reach.
    ssh_host_keys: one fresh key per type for DeleteSSHKeys (snf_image.hostkeys).
    Secrets (password, password_hash, cloud_userdata, os_product_key,
    result_token, the private host keys) live only here: never in a log, an error text or a
    child's environment.
    """

    instance_name: str
    img_format: str
    properties: Mapping[str, str]
    nics: tuple[RulesNic, ...]
    disks: tuple[RulesDisk, ...]
    settings: RulesSettings
    result_token: str = field(repr=False)
    old_instance_name: str | None = None
    hypervisor: str = ""
    password: str | None = None
    password_hash: str | None = None
    auth_keys: str | None = None
    personality: tuple[PersonalityFile, ...] = ()
    os_product_key: str | None = None
    cloud_userdata: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    ssh_host_keys: tuple[HostKey, ...] = ()
    only_tasks: tuple[str, ...] | None = None
    debug: bool = False

    def __post_init__(self) -> None:
        if not self.disks:
            raise ValueError("no instance disk")
        if not is_result_token(self.result_token):
            raise ValueError(f"the result token is not {2 * RESULT_TOKEN_BYTES} lower-case hex digits")

    def to_json(self) -> bytes:
        """The rules disk's content (before padding): UTF-8 JSON with the format version."""
        return json.dumps({"format": RULES_FORMAT, **codec.encode(self)}).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Rules:
        """The rules in ``data``; RulesError, naming the problem (never a value), if they do not fit."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RulesError(f"the rules disk does not hold UTF-8 JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.pop("format", None) != RULES_FORMAT:
            raise RulesError(f"the rules are not in format {RULES_FORMAT}; helper and host versions differ")
        try:
            return codec.decode(cls, obj, "rules")
        except codec.DecodeError as exc:
            raise RulesError(f"malformed rules: {exc}") from None
