"""WINDOWS_TIMEZONE against CLDR, the source of truth for Windows time zone names (Debian's unicode-cldr-core).

The checked-in table must be exactly what scripts/windows-timezones makes of
the installed CLDR; the hand-kept sysprep.inf indexes may only name zones
CLDR knows. Then the lookups: Windows names and IANA names (CLDR's own and
their bcp47 aliases), any case, and the answer files made from them.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snf_image import windows
from snf_image.errors import OperatorError

REPO = Path(__file__).resolve().parents[2]
CLDR_WINDOWS_ZONES = Path("/usr/share/unicode/cldr/common/supplemental/windowsZones.xml")


def cldr_mapping() -> dict[str, set[str]]:
    """Windows name -> its IANA names, straight from windowsZones.xml (no aliases)."""
    found: dict[str, set[str]] = {}
    for zone in ET.parse(CLDR_WINDOWS_ZONES).getroot().iter("mapZone"):
        found.setdefault(zone.get("other"), set()).update(zone.get("type").split())
    return found


def test_the_table_is_what_cldr_says() -> None:
    generated = subprocess.run(
        ["/usr/bin/python3", str(REPO / "scripts" / "windows-timezones")], capture_output=True, text=True, check=True
    ).stdout
    assert windows.TIMEZONES.read_text() == generated, "stale table: run scripts/windows-timezones --update"


def test_every_cldr_zone_and_iana_name_is_accepted() -> None:
    mapping = cldr_mapping()
    assert len(mapping) > 130
    for name, iana_names in mapping.items():
        assert windows.timezone(name).name == name
        for iana in iana_names:
            assert windows.timezone(iana).name == name, iana


def test_the_sysprep_indexes_name_cldr_zones() -> None:
    rows = [line.split("\t") for line in windows.TIMEZONE_INDEXES.read_text().splitlines() if not line.startswith("#")]
    names = [name for _, name in rows]
    indexes = [index for index, _ in rows]
    assert set(names) <= set(cldr_mapping()), set(names) - set(cldr_mapping())
    assert all(re.fullmatch(r"[0-9]{3}", index) for index in indexes)
    assert len(set(indexes)) == len(indexes) == len(set(names)) >= 74
    assert {name: index for index, name in rows}["GMT Standard Time"] == "085"


@pytest.mark.parametrize(
    ("given", "name", "index"),
    [
        ("GMT Standard Time", "GMT Standard Time", "085"),
        ("w. europe standard time", "W. Europe Standard Time", "110"),
        ("Europe/Athens", "GTB Standard Time", "130"),
        ("europe/berlin", "W. Europe Standard Time", "110"),
        ("Asia/Kolkata", "India Standard Time", "190"),  # a bcp47 alias of CLDR's Asia/Calcutta
        ("America/Los_Angeles", "Pacific Standard Time", "004"),
        ("Etc/UTC", "UTC", None),
        ("America/Adak", "Aleutian Standard Time", None),  # no XP/2003 index
        ("  Pacific/Auckland ", "New Zealand Standard Time", "290"),
    ],
)
def test_lookup(given: str, name: str, index: str | None) -> None:
    zone = windows.timezone(given)
    assert (zone.name, zone.index) == (name, index)


def test_windows_names_win_over_iana_names() -> None:
    """No IANA name shadows a Windows name of another zone (UTC is both, and the same zone)."""
    for key, zone in windows.timezones().items():
        if key == zone.name.lower():
            continue
        assert key not in {z.name.lower() for z in windows.timezones().values() if z is not zone}


@pytest.mark.parametrize("name", ["Mars Standard Time", "Mid-Atlantic Standard Time", "Europe/Atlantis", ""])
def test_unknown_zones_are_operator_errors(name: str) -> None:
    with pytest.raises(OperatorError, match=r"^WINDOWS_TIMEZONE: unknown time zone"):
        windows.timezone(name)


class Settings:
    windows_timezone = ""


def template_files(zone: str) -> dict[str, str]:
    settings = Settings()
    settings.windows_timezone = zone
    files, properties = windows.answer_files(settings, None)  # type: ignore[arg-type]
    assert properties == {}
    return files


def test_the_templates_get_the_zone_an_iana_name_maps_to() -> None:
    files = template_files("Europe/Athens")
    assert "<TimeZone>GTB Standard Time</TimeZone>" in files[windows.UNATTEND]
    assert "\r\n    TimeZone=130\r\n" in files[windows.SYSPREP]


def test_a_zone_xp_does_not_know_leaves_sysprep_without_time_zone() -> None:
    files = template_files("America/Adak")
    assert "<TimeZone>Aleutian Standard Time</TimeZone>" in files[windows.UNATTEND]
    sysprep = files[windows.SYSPREP]
    assert "\r\n    ; TimeZone: Aleutian Standard Time has no Windows XP/2003 index; mini-setup chooses\r\n" in sysprep
    assert not re.search(r"^\s*TimeZone\s*=", sysprep, re.M) and "@TIMEZONE" not in sysprep
