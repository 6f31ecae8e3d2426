"""The Ganeti OS interface (API 20): the environment of an OS script, as typed objects.

Built once at the entry point from ``os.environ``; nothing below reads the
environment again. Every missing or malformed variable is an
:class:`OperatorError` whose message names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import OperatorError
from .targets import unsupported_disk

SUPPORTED_API_VERSION = 20
SCRIPTS = ("create", "import", "export", "rename", "verify")
_OSP_PREFIX = "OSP_"


@dataclass(frozen=True)
class Disk:
    """One instance disk as Ganeti describes it (``DISK_<N>_*``)."""

    index: int
    path: str | None
    uri: str | None
    access: str
    size_mib: int | None
    backend_type: str | None
    frontend_type: str | None
    uuid: str | None = None
    name: str | None = None

    @property
    def target(self) -> str:
        """What to open: the node path, or the userspace URI when there is no path."""
        if self.path:
            return self.path
        if self.uri:
            return self.uri
        raise OperatorError(f"DISK_{self.index}_PATH and DISK_{self.index}_URI are both missing")


@dataclass(frozen=True)
class Network:
    """The Ganeti network a NIC is attached to (``NIC_<N>_NETWORK_*``)."""

    name: str | None = None
    subnet: str | None = None
    gateway: str | None = None
    subnet6: str | None = None
    gateway6: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Nic:
    """One instance NIC (``NIC_<N>_*``)."""

    index: int
    mac: str | None
    ip: str | None = None
    mode: str | None = None
    link: str | None = None
    name: str | None = None
    frontend_type: str | None = None
    network: Network = field(default_factory=Network)


@dataclass(frozen=True)
class OsEnvironment:
    """What every script gets, ``verify`` included."""

    api_version: int
    os_name: str | None
    variant: str
    debug_level: int
    #: OS parameters as given by Ganeti, lower-case names, values verbatim.
    osparams: Mapping[str, str]


@dataclass(frozen=True)
class Instance:
    """The instance part of the environment (create, import, export, rename)."""

    name: str
    hypervisor: str
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    hvparams: Mapping[str, str]
    uuid: str | None = None
    os: str | None = None
    reinstall: bool = False
    old_name: str | None = None


@dataclass(frozen=True)
class TransferDevice:
    """The disk an import or export script reads or writes."""

    index: int
    path: str
    #: Where to report the export size (``EXP_SIZE_FD``), if Ganeti asked.
    size_fd: int | None = None


@dataclass(frozen=True)
class ScriptEnvironment:
    """The whole environment of one OS script invocation."""

    script: str
    os: OsEnvironment
    instance: Instance | None = None
    transfer: TransferDevice | None = None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _require(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if value is None:
        raise OperatorError(f"missing Ganeti environment variable {name}")
    return value


def _integer(env: Mapping[str, str], name: str, minimum: int = 0, required: bool = True) -> int | None:
    raw = _require(env, name) if required else _get(env, name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw.strip()):
        raise OperatorError(f"Ganeti environment variable {name} is not a number: {raw!r}")
    value = int(raw.strip())
    if value < minimum:
        raise OperatorError(f"Ganeti environment variable {name} must be at least {minimum}, got {value}")
    return value


def parse_os_environment(env: Mapping[str, str]) -> OsEnvironment:
    """The core variables every script receives."""
    api = _integer(env, "OS_API_VERSION")
    if api != SUPPORTED_API_VERSION:
        raise OperatorError(
            f"unsupported OS_API_VERSION {api}: only OS API version {SUPPORTED_API_VERSION} is supported"
        )
    debug = _integer(env, "DEBUG_LEVEL", required=False) or 0
    osparams = {key[len(_OSP_PREFIX) :].lower(): value for key, value in env.items() if key.startswith(_OSP_PREFIX)}
    return OsEnvironment(
        api_version=api,
        os_name=_get(env, "OS_NAME"),
        variant=env.get("OS_VARIANT", "") or "",
        debug_level=debug,
        osparams=osparams,
    )


_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _parse_disk(env: Mapping[str, str], index: int) -> Disk:
    prefix = f"DISK_{index}_"
    path = _get(env, prefix + "PATH")
    uri = _get(env, prefix + "URI")
    if path is None and uri is None:
        raise OperatorError(f"missing Ganeti environment variable {prefix}PATH (or {prefix}URI)")
    problem = unsupported_disk(path or uri or "")
    if problem:  # refused before anything is copied, not by the jail afterwards
        raise OperatorError(f"{prefix}{'PATH' if path else 'URI'}: {problem}")
    access = _get(env, prefix + "ACCESS") or "rw"
    if access not in ("rw", "ro"):
        raise OperatorError(f"Ganeti environment variable {prefix}ACCESS must be rw or ro, got {access!r}")
    return Disk(
        index=index,
        path=path,
        uri=uri,
        access=access,
        size_mib=_integer(env, prefix + "SIZE", required=False),
        backend_type=_get(env, prefix + "BACKEND_TYPE"),
        frontend_type=_get(env, prefix + "FRONTEND_TYPE"),
        uuid=_get(env, prefix + "UUID"),
        name=_get(env, prefix + "NAME"),
    )


def _parse_nic(env: Mapping[str, str], index: int) -> Nic:
    prefix = f"NIC_{index}_"
    mac = _get(env, prefix + "MAC")
    if mac is not None and not _MAC.match(mac):
        raise OperatorError(f"Ganeti environment variable {prefix}MAC is not a MAC address: {mac!r}")
    net = prefix + "NETWORK_"
    tags = tuple((_get(env, net + "TAGS") or "").split())
    return Nic(
        index=index,
        mac=mac.lower() if mac else None,
        ip=_get(env, prefix + "IP"),
        mode=_get(env, prefix + "MODE"),
        link=_get(env, prefix + "LINK"),
        name=_get(env, prefix + "NAME"),
        frontend_type=_get(env, prefix + "FRONTEND_TYPE"),
        network=Network(
            name=_get(env, net + "NAME"),
            subnet=_get(env, net + "SUBNET"),
            gateway=_get(env, net + "GATEWAY"),
            subnet6=_get(env, net + "SUBNET6"),
            gateway6=_get(env, net + "GATEWAY6"),
            tags=tags,
        ),
    )


def parse_instance(env: Mapping[str, str], script: str) -> Instance:
    """The instance variables (not given to ``verify``)."""
    name = _require(env, "INSTANCE_NAME")
    hypervisor = _require(env, "HYPERVISOR")
    disk_count = _integer(env, "DISK_COUNT")
    if disk_count < 1:
        raise OperatorError("DISK_COUNT is 0: at least one disk is needed")
    disks = tuple(_parse_disk(env, i) for i in range(disk_count))
    nic_count = _integer(env, "NIC_COUNT", required=False) or 0
    nics = tuple(_parse_nic(env, i) for i in range(nic_count))
    hvparams = {k[len("INSTANCE_HV_") :]: v for k, v in env.items() if k.startswith("INSTANCE_HV_")}
    old_name = None
    if script == "rename":
        old_name = _require(env, "OLD_INSTANCE_NAME")
    return Instance(
        name=name,
        hypervisor=hypervisor,
        disks=disks,
        nics=nics,
        hvparams=hvparams,
        uuid=_get(env, "INSTANCE_UUID"),
        os=_get(env, "INSTANCE_OS"),
        reinstall=_get(env, "INSTANCE_REINSTALL") == "1",
        old_name=old_name,
    )


def _parse_transfer(env: Mapping[str, str], script: str) -> TransferDevice:
    kind = "IMPORT" if script == "import" else "EXPORT"
    path = _get(env, f"{kind}_DEVICE") or _get(env, f"{kind}_DISK_PATH") or _get(env, f"{kind}_DISK_URI")
    if path is None:
        raise OperatorError(f"missing Ganeti environment variable {kind}_DEVICE")
    size_fd = _integer(env, "EXP_SIZE_FD", required=False) if script == "export" else None
    return TransferDevice(index=_integer(env, f"{kind}_INDEX", required=False) or 0, path=path, size_fd=size_fd)


def parse_environment(env: Mapping[str, str], script: str) -> ScriptEnvironment:
    """Everything Ganeti passed to ``script``; raises OperatorError naming what is wrong."""
    if script not in SCRIPTS:
        raise OperatorError(f"unknown OS script {script!r}")
    os_env = parse_os_environment(env)
    if script == "verify":
        return ScriptEnvironment(script=script, os=os_env)
    instance = parse_instance(env, script)
    transfer = _parse_transfer(env, script) if script in ("import", "export") else None
    return ScriptEnvironment(script=script, os=os_env, instance=instance, transfer=transfer)
