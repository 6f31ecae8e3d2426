"""The network settings, parsed once and validated before any connection is made.

Every key is read from the source's own settings (the main config overlaid
with ``backends/src/<name>.conf``); an empty value means "unset", so
``KEY=`` restores the default. The table of keys and defaults is in
:mod:`snf_image.sources.network`'s docstring and the README.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import OperatorError
from ..settings import parse_bool, parse_duration

DEFAULTS: dict[str, str] = {
    "HTTP_CONNECT_TIMEOUT": "10",
    "HTTP_READ_TIMEOUT": "60",
    "HTTP_RETRIES": "5",
    "RETRY_BACKOFF": "0.5",
    "HTTP_RESTART_SKIP_MAX": str(64 * 1024 * 1024),
    "TLS_CA_BUNDLE": "",
    "TLS_INSECURE": "no",
    "FTP_TIMEOUT": "60",
    "FTP_RETRIES": "5",
    "DOWNLOAD_MIN_RATE": "1024",
    "DOWNLOAD_RATE_WINDOW": "60",
    "ALLOW_PRIVATE_REDIRECTS": "no",
}


def setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> str:
    """A setting's value; an empty value means "unset" so ``KEY=`` restores the default."""
    value = (config.get(key) or "").strip()
    return value if value else defaults[key]


def int_setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> int:
    """A non-negative integer setting; anything else is the operator's error."""
    value = setting(config, key, defaults)
    if not re.fullmatch(r"[0-9]{1,15}", value):
        raise OperatorError(f"setting {key} must be a non-negative integer, got {value!r}")
    return int(value)


def seconds_setting(config: Mapping[str, str], key: str, defaults: Mapping[str, str] = DEFAULTS) -> float:
    """A positive duration (``timeout(1)`` syntax: 10, 1.5, 2m)."""
    value = parse_duration(setting(config, key, defaults), key)
    if value <= 0:
        raise OperatorError(f"setting {key} must be greater than zero")
    return value


def bool_setting(config: Mapping[str, str], key: str) -> bool:
    """A yes/no setting."""
    return parse_bool(setting(config, key), key)


def tls_verify(config: Mapping[str, str]) -> bool | str:
    """``False`` (insecure), a CA bundle path, or ``True`` (system trust store)."""
    if bool_setting(config, "TLS_INSECURE"):
        return False
    bundle = setting(config, "TLS_CA_BUNDLE")
    if bundle:
        try:
            with open(bundle, "rb"):
                pass
        except OSError as exc:
            raise OperatorError(f"setting TLS_CA_BUNDLE: cannot read {bundle}: {exc.strerror}") from None
        return bundle
    return True


@dataclass(frozen=True)
class RetryOptions:
    """How often and how patiently to retry a broken transfer."""

    retries: int
    backoff: float


@dataclass(frozen=True)
class RateOptions:
    """The slowest transfer tolerated: ``min_rate`` bytes/s over each ``window`` seconds (0: no limit)."""

    min_rate: int = 0
    window: float = 60.0

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> RateOptions:
        """Parse ``DOWNLOAD_MIN_RATE`` and ``DOWNLOAD_RATE_WINDOW``."""
        return cls(int_setting(config, "DOWNLOAD_MIN_RATE"), seconds_setting(config, "DOWNLOAD_RATE_WINDOW"))


@dataclass(frozen=True)
class HttpOptions:
    """The HTTP settings."""

    connect_timeout: float
    read_timeout: float
    retry: RetryOptions
    restart_skip_max: int
    verify: bool | str
    rate: RateOptions = RateOptions()
    allow_private_redirects: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> HttpOptions:
        """Parse the ``HTTP_*``/``TLS_*``/``DOWNLOAD_*`` settings; raises :class:`OperatorError`."""
        return cls(
            connect_timeout=seconds_setting(config, "HTTP_CONNECT_TIMEOUT"),
            read_timeout=seconds_setting(config, "HTTP_READ_TIMEOUT"),
            retry=RetryOptions(int_setting(config, "HTTP_RETRIES"), _backoff(config)),
            restart_skip_max=int_setting(config, "HTTP_RESTART_SKIP_MAX"),
            verify=tls_verify(config),
            rate=RateOptions.from_config(config),
            allow_private_redirects=bool_setting(config, "ALLOW_PRIVATE_REDIRECTS"),
        )


@dataclass(frozen=True)
class FtpOptions:
    """The FTP settings."""

    timeout: float
    retry: RetryOptions
    verify: bool | str
    rate: RateOptions = RateOptions()

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> FtpOptions:
        """Parse the ``FTP_*``/``TLS_*``/``DOWNLOAD_*`` settings; raises :class:`OperatorError`."""
        return cls(
            timeout=seconds_setting(config, "FTP_TIMEOUT"),
            retry=RetryOptions(int_setting(config, "FTP_RETRIES"), _backoff(config)),
            verify=tls_verify(config),
            rate=RateOptions.from_config(config),
        )


def _backoff(config: Mapping[str, str]) -> float:
    return parse_duration(setting(config, "RETRY_BACKOFF"), "RETRY_BACKOFF")
