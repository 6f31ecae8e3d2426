"""Operator settings: built-in defaults < snf-image.conf (+ .yaml) < variant file.

The files use the original's ``KEY=value`` syntax so an existing
``/etc/snf-image/snf-image.conf`` drops in, but they are *parsed*, never
sourced: quotes and comments are understood, ``$VAR`` expansion and command
substitution are not. A ``.yaml`` file of the same name may hold the same
keys as a mapping.

Keys that name an OS parameter (``IMG_ID=...``, ``IMG_FORMAT=...``) are
defaults for that parameter, as in the original (OSP_* and config_url win).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import OperatorError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = Path("/etc/snf-image")
DEFAULT_VARIANTS_DIR = Path("/etc/ganeti/snf-image/variants")
CONFIG_NAME = "snf-image"

#: The OS parameters (parameters.list), lower-case as Ganeti passes them.
OS_PARAMETERS = (
    "img_id",
    "img_format",
    "img_passwd",
    "img_passwd_hash",
    "img_properties",
    "img_personality",
    "img_checksum",
    "inst_properties",
    "auth_keys",
    "config_url",
    "os_product_key",
    "os_answer_file",
    "cloud_userdata",
)

DEFAULT_NIC_CONFIGS = ("", "dhcp", "dhcpv6", "slaac", "slaac_dhcp", "dhcp+dhcpv6", "dhcp+slaac", "dhcp+slaac_dhcp")
ACCELERATORS = ("auto", "kvm", "tcg")

#: Keys the original knew that have no meaning here; accepted with a warning so old files still load.
OBSOLETE_KEYS = frozenset(
    {
        "MULTISTRAP_CONFIG",
        "MULTISTRAP_APTPREFDIR",
        "XEN_SCRIPTS_DIR",
        "XEN_CMD",
        "VERSION_CHECK",
        "LOSETUP",
        "TIMEOUT",
        "CURL",
        "TAR",
        "BLOCKDEV",
        "DD",
        "PARTED",
        "MD5SUM",
        "DATE",
        "AWK",
        "KPARTX",
        "SFDISK",
        "INSTALL_MBR",
        "UNATTEND",
    }
)

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
_YES = ("yes", "true", "on", "1", "set")
_NO = ("no", "false", "off", "0", "unset", "")


def parse_conf(text: str, origin: str) -> dict[str, str]:
    """Parse ``KEY=value`` lines with shell quoting; raise OperatorError on anything else."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    result: dict[str, str] = {}
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise OperatorError(f"{origin}: cannot parse: {exc}") from exc
    for token in tokens:
        if token == "export":
            continue
        key, sep, value = token.partition("=")
        if not sep or not _KEY.match(key):
            raise OperatorError(f"{origin}: expected KEY=value, found {token!r}")
        if "$(" in value or "`" in value:
            raise OperatorError(f"{origin}: {key}: command substitution is not supported")
        result[key] = value
    return result


def _read_yaml(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise OperatorError(f"{path}: cannot read: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OperatorError(f"{path}: expected a mapping of settings")
    result = {}
    for key, value in data.items():
        if not isinstance(key, str) or not _KEY.match(key.upper()):
            raise OperatorError(f"{path}: invalid setting name {key!r}")
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        elif value is None:
            value = ""
        result[key.upper()] = str(value)
    return result


def read_settings_file(base: Path) -> dict[str, str]:
    """``base.conf`` then ``base.yaml``, whichever exist."""
    result: dict[str, str] = {}
    conf = base.with_name(base.name + ".conf")
    if conf.is_file():
        try:
            text = conf.read_text("utf-8")
        except OSError as exc:
            raise OperatorError(f"{conf}: cannot read: {exc}") from exc
        result.update(parse_conf(text, str(conf)))
    yml = base.with_name(base.name + ".yaml")
    if yml.is_file():
        result.update(_read_yaml(yml))
    return result


def parse_bool(value: str | None, name: str) -> bool:
    """The original's yes/no words; anything else is an error (settings are the operator's)."""
    word = (value or "").strip().lower()
    if word in _YES:
        return True
    if word in _NO:
        return False
    raise OperatorError(f"setting {name} must be yes or no, got {value!r}")


def parse_duration(value: str, name: str) -> float:
    """``timeout(1)`` durations: a number with an optional s/m/h/d suffix."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", value)
    if not match:
        raise OperatorError(f"setting {name} must be a duration like 120, 90s, 5m; got {value!r}")
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * factor


def _helper_user(value: str) -> str:
    """The user qemu and the image converter run as: never empty (qemu would keep root), never privileged."""
    user = value.strip()
    if not user:
        raise OperatorError(
            "setting HELPER_USER is empty: the helper VM and the image converter must run as an unprivileged user"
        )
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return user  # not on this node: qemu's -runas and the converter say so when they start
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise OperatorError(
            f"setting HELPER_USER: {user!r} is privileged; the helper VM and the image converter must not run as root"
        )
    return user


def parse_size(value: str, name: str) -> int:
    """A size in bytes with an optional binary suffix: 0, 1048576, 512M, 20G, 1T."""
    match = re.fullmatch(r"\s*([0-9]{1,15})\s*([KMGT]?)(?:i?B)?\s*", value, re.IGNORECASE)
    if not match:
        raise OperatorError(f"setting {name} must be a size like 0, 500M, 20G; got {value!r}")
    return int(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ")


def _positive_int(value: str, name: str) -> int:
    if not re.fullmatch(r"\s*[0-9]{1,9}\s*", value) or int(value) <= 0:
        raise OperatorError(f"setting {name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Typed settings for one run. ``raw`` keeps every key for the image sources' own settings."""

    config_dir: Path
    helper_dir: Path
    helper_soft_timeout: float
    helper_hard_timeout: float
    helper_user: str
    #: Run the helper VM when qemu has no seccomp sandbox (a loud warning each time) instead of refusing.
    helper_allow_no_seccomp: bool
    helper_memory: int
    #: Helper VMs running at once on the node (0: no limit), and where their slots are kept (helperslots).
    helper_max_running: int
    helper_slots_dir: Path
    helper_debug: bool
    helper_accel: str
    helper_qemu: str
    #: The image converter's limits: address space in MiB, CPU time in seconds.
    converter_memory: int
    converter_cpu_time: float
    progress_monitor: str
    dhcp_tags: tuple[str, ...]
    stateful_dhcpv6_tags: tuple[str, ...]
    stateless_dhcpv6_tags: tuple[str, ...]
    default_nic_config: str
    windows_timezone: str
    image_debug: bool
    cloud_init_debug: bool
    #: The node-local cache of remote images (snf_image.sources.cache); size 0 turns it off.
    image_cache_dir: Path
    image_cache_size: int
    #: Defaults for OS parameters, lower-case names (from IMG_ID=... lines).
    param_defaults: Mapping[str, str]
    raw: Mapping[str, str] = field(repr=False)
    #: The node exporter textfile of METRICS_FILE (None: no metrics).
    metrics_file: Path | None = None
    #: Explicit overrides (the CLI's --set): they win over every file, a source's own file too.
    overrides: Mapping[str, str] = field(default_factory=dict, repr=False)

    def source_config(self, name: str) -> dict[str, str]:
        """Settings of one image source: the main settings overlaid with ``backends/src/<name>.conf``."""
        config = dict(self.raw)
        config.update(read_settings_file(self.config_dir / "backends" / "src" / name))
        config.update(self.overrides)
        return config

    def source_priority(self, name: str, default: int) -> int:
        """``backends/src/<name>.priority`` (the original's file) or SOURCE_PRIORITIES ``name=N``."""
        for item in self.raw.get("SOURCE_PRIORITIES", "").split():
            key, _, value = item.partition("=")
            if key == name:
                return _positive_int(value, f"SOURCE_PRIORITIES[{name}]")
        path = self.config_dir / "backends" / "src" / f"{name}.priority"
        if path.is_file():
            text = path.read_text("utf-8").strip()
            if re.fullmatch(r"[0-9]{1,2}", text):
                return int(text)
            log.warning("ignoring %s: priority must be a number of 1 or 2 digits", path)
        return default

    def source_disabled(self, name: str) -> bool:
        """``backends/src/<name>.disabled`` exists, or ``name`` is in SOURCES_DISABLED."""
        if name in self.raw.get("SOURCES_DISABLED", "").split():
            return True
        return (self.config_dir / "backends" / "src" / f"{name}.disabled").exists()


DEFAULTS: dict[str, str] = {
    "HELPER_DIR": "/var/lib/snf-image/helper",
    "HELPER_SOFT_TIMEOUT": "120",
    "HELPER_HARD_TIMEOUT": "5",
    "HELPER_USER": "nobody",
    "HELPER_ALLOW_NO_SECCOMP": "no",
    "HELPER_MEMORY": "512",
    "HELPER_MAX_RUNNING": "auto",
    "HELPER_SLOTS_DIR": "/run/snf-image/helper-slots",
    "HELPER_DEBUG": "no",
    "HELPER_ACCEL": "auto",
    "KVM": "qemu-system-x86_64",
    "CONVERTER_MEMORY": "1024",
    "CONVERTER_CPU_TIME": "30m",
    "PROGRESS_MONITOR": "",
    "DHCP_TAGS": "auto dhcp nfdhcpd",
    "STATEFUL_DHCPV6_TAGS": "dhcpv6 stateful_dhcpv6",
    "STATELESS_DHCPV6_TAGS": "nfdhcpd stateless_dhcpv6",
    "DEFAULT_NIC_CONFIG": "dhcp",
    "WINDOWS_TIMEZONE": "GMT Standard Time",
    "IMAGE_DEBUG": "no",
    "CLOUD_INIT_DEBUG": "no",
    "IMAGE_CACHE_DIR": "/var/cache/snf-image/images",
    "IMAGE_CACHE_SIZE": "0",
    "METRICS_FILE": "",
}


def variant_file_base(variants_dir: Path, variant: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", variant):
        raise OperatorError(f"invalid OS variant name {variant!r}")
    return variants_dir / variant


def load_settings(
    config_dir: Path = DEFAULT_CONFIG_DIR,
    variants_dir: Path = DEFAULT_VARIANTS_DIR,
    variant: str = "",
    official_variants: tuple[str, ...] = (),
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, the config file, the variant file and explicit overrides (CLI) into Settings."""
    raw = dict(DEFAULTS)
    raw.update(read_settings_file(config_dir / CONFIG_NAME))
    if variant:
        base = variant_file_base(variants_dir, variant)
        if not base.with_name(variant + ".conf").is_file() and not base.with_name(variant + ".yaml").is_file():
            if variant in official_variants:
                raise OperatorError(f"published variant {variant!r} is missing its config file {base}.conf")
            raise OperatorError(f"unofficial variant {variant!r} is unsupported")
        raw.update(read_settings_file(base))
    raw.update(overrides or {})
    return build_settings(raw, config_dir, overrides)


def build_settings(raw: Mapping[str, str], config_dir: Path, overrides: Mapping[str, str] | None = None) -> Settings:
    """Validate merged raw settings into :class:`Settings`; one error per bad key."""
    for key in sorted(set(raw) & OBSOLETE_KEYS):
        log.warning("setting %s is obsolete and ignored", key)
    nic_config = raw["DEFAULT_NIC_CONFIG"].strip()
    if nic_config not in DEFAULT_NIC_CONFIGS:
        raise OperatorError(
            f"setting DEFAULT_NIC_CONFIG must be one of {', '.join(repr(v) for v in DEFAULT_NIC_CONFIGS)};"
            f" got {nic_config!r}"
        )
    accel = raw["HELPER_ACCEL"].strip().lower()
    if accel not in ACCELERATORS:
        raise OperatorError(f"setting HELPER_ACCEL must be one of {', '.join(ACCELERATORS)}; got {accel!r}")
    param_defaults = {k.lower(): v for k, v in raw.items() if k.lower() in OS_PARAMETERS}
    return Settings(
        config_dir=config_dir,
        helper_dir=Path(raw["HELPER_DIR"]),
        helper_soft_timeout=parse_duration(raw["HELPER_SOFT_TIMEOUT"], "HELPER_SOFT_TIMEOUT"),
        helper_hard_timeout=parse_duration(raw["HELPER_HARD_TIMEOUT"], "HELPER_HARD_TIMEOUT"),
        helper_user=_helper_user(raw["HELPER_USER"]),
        helper_allow_no_seccomp=parse_bool(raw["HELPER_ALLOW_NO_SECCOMP"], "HELPER_ALLOW_NO_SECCOMP"),
        helper_memory=_positive_int(raw["HELPER_MEMORY"], "HELPER_MEMORY"),
        helper_max_running=_max_running(raw["HELPER_MAX_RUNNING"]),
        helper_slots_dir=Path(raw["HELPER_SLOTS_DIR"]),
        helper_debug=parse_bool(raw["HELPER_DEBUG"], "HELPER_DEBUG"),
        helper_accel=accel,
        helper_qemu=raw["KVM"],
        converter_memory=_positive_int(raw["CONVERTER_MEMORY"], "CONVERTER_MEMORY"),
        converter_cpu_time=parse_duration(raw["CONVERTER_CPU_TIME"], "CONVERTER_CPU_TIME"),
        progress_monitor=raw["PROGRESS_MONITOR"].strip(),
        dhcp_tags=tuple(raw["DHCP_TAGS"].split()),
        stateful_dhcpv6_tags=tuple(raw["STATEFUL_DHCPV6_TAGS"].split()),
        stateless_dhcpv6_tags=tuple(raw["STATELESS_DHCPV6_TAGS"].split()),
        default_nic_config=nic_config,
        windows_timezone=raw["WINDOWS_TIMEZONE"],
        image_debug=parse_bool(raw["IMAGE_DEBUG"], "IMAGE_DEBUG"),
        cloud_init_debug=parse_bool(raw["CLOUD_INIT_DEBUG"], "CLOUD_INIT_DEBUG"),
        image_cache_dir=Path(raw["IMAGE_CACHE_DIR"]),
        image_cache_size=parse_size(raw["IMAGE_CACHE_SIZE"], "IMAGE_CACHE_SIZE"),
        param_defaults=param_defaults,
        raw=dict(raw),
        metrics_file=_metrics_file(raw.get("METRICS_FILE", "")),
        overrides=dict(overrides or {}),
    )


def _max_running(value: str) -> int:
    """HELPER_MAX_RUNNING: ``auto``, a count, or 0 for no limit.

    ``auto`` is the CPUs this process may run on: under TCG a helper VM keeps one busy.
    """
    if value.strip().lower() == "auto":
        return max(len(os.sched_getaffinity(0)), 1)
    if not re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
        raise OperatorError(f"setting HELPER_MAX_RUNNING must be auto, a number of helper VMs or 0, got {value!r}")
    return int(value)


def _metrics_file(value: str) -> Path | None:
    if not value.strip():
        return None
    path = Path(value.strip())
    if not path.is_absolute() or not path.name.endswith(".prom"):
        raise OperatorError(f"setting METRICS_FILE must be an absolute path ending in .prom, got {value!r}")
    return path
