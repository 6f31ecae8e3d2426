"""Windows answer files, prepared on the host and handed to the jail in rules["files"].

The jail has no network, so ``os_answer_file`` is downloaded here (through
the network image source: http, https, ftp, ftps only -- ``file://`` would
read the host's files into the guest). Without one, the shipped templates
(``snf_image/data/unattend.xml`` for Vista and later, ``sysprep.inf`` for
XP/2003) are filled with the WINDOWS_TIMEZONE setting. Both files are always
sent: the host cannot know the image's OS family, which the jail may only
detect. An unknown WINDOWS_TIMEZONE is an operator error here, before any
disk is touched (the original substituted an empty TimeZone).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import OperatorError
from .settings import Settings

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent / "data"
TIMEZONES = DATA / "windows-timezones.txt"
UNATTEND_TEMPLATE = DATA / "unattend.xml"
SYSPREP_TEMPLATE = DATA / "sysprep.inf"
UNATTEND = "unattend.xml"
SYSPREP = "sysprep.inf"
MAX_ANSWER_FILE = 1024 * 1024


@dataclass(frozen=True)
class TimeZone:
    """One row of the table: sysprep.inf's index and unattend.xml's name."""

    index: str
    name: str
    display: str


@functools.cache
def timezones() -> dict[str, TimeZone]:
    """The time zone table by lower-case name."""
    table = {}
    for line in TIMEZONES.read_text("utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        index, name, display = line.split("\t")
        table[name.lower()] = TimeZone(index, name, display)
    return table


def timezone(name: str) -> TimeZone:
    """The time zone WINDOWS_TIMEZONE names (any case); OperatorError for an unknown one."""
    found = timezones().get(name.strip().lower())
    if found is None:
        raise OperatorError(
            f"WINDOWS_TIMEZONE: unknown Windows time zone {name!r} "
            f"(use a name from {TIMEZONES.name}, e.g. 'GMT Standard Time' or 'W. Europe Standard Time')"
        )
    return found


def check_settings(settings: Settings) -> None:
    """What verify checks of the Windows settings."""
    timezone(settings.windows_timezone)


def decode_answer_file(data: bytes, url: str) -> str:
    """The text of a downloaded answer file: UTF-16 with a BOM, UTF-8 (BOM or not), else Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.info("os_answer_file %s is not UTF-8; reading it as Latin-1", url)
        return data.decode("latin-1")


def fetch_answer_file(url: str, settings: Settings) -> str:
    """Download ``os_answer_file`` (bounded size) with the network source's retries and TLS settings."""
    from .sources import select_source
    from .sources.network import redact_url

    source = select_source(url, settings)
    if source.name != "network":
        raise OperatorError(f"os_answer_file: {redact_url(url)!r} is not an http, https, ftp or ftps URL")
    chunks = bytearray()
    buffer = bytearray(64 * 1024)
    with source.open(url) as stream:
        while True:
            count = stream.readinto(memoryview(buffer))
            if not count:
                break
            chunks += buffer[:count]
            if len(chunks) > MAX_ANSWER_FILE:
                raise OperatorError(f"os_answer_file: {redact_url(url)} is larger than {MAX_ANSWER_FILE} bytes")
    return decode_answer_file(bytes(chunks), redact_url(url))


def answer_files(settings: Settings, answer_file_url: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(rules["files"], properties to add): the answer files for the jail.

    With ``os_answer_file`` its text serves as both unattend.xml and
    sysprep.inf and IGNORE_UNATTEND is set (the image's own answer file is
    replaced), as the original did.
    """
    if answer_file_url:
        text = fetch_answer_file(answer_file_url, settings)
        return {UNATTEND: text, SYSPREP: text}, {"IGNORE_UNATTEND": "yes"}
    zone = timezone(settings.windows_timezone)
    # bytes, not read_text: the templates' CRLF line ends must survive
    unattend = UNATTEND_TEMPLATE.read_bytes().decode("utf-8").replace("@TIMEZONE@", zone.name)
    sysprep = SYSPREP_TEMPLATE.read_bytes().decode("utf-8").replace("@TIMEZONE_INDEX@", zone.index)
    return {UNATTEND: unattend, SYSPREP: sysprep}, {}
