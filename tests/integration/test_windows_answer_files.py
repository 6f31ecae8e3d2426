"""The Windows answer file from the host: ``os_answer_file`` over HTTP and HTTPS, and WINDOWS_TIMEZONE by IANA name.

Synthetic Windows images (tests/wintree.py, as in test_windows_vm.py) are
deployed through ``create`` in the real helper VM, then the answer file the
image will boot with is read back from the instance's NTFS and parsed here
with lxml / a plain INI reader, not with the tasks' editors:

- a Vista+ image with its own unattend.xml, ``os_answer_file`` an http://
  URL on a loopback server: the served file replaces the image's own
  (os_answer_file implies IGNORE_UNATTEND), with the jail's additions;
- an XP image with its own sysprep.inf, ``os_answer_file`` an https:// URL
  on a loopback TLS server trusted through TLS_CA_BUNDLE: the served
  sysprep.inf replaces the image's;
- an XP image given the host's template with WINDOWS_TIMEZONE=Europe/Athens:
  sysprep.inf gets GTB Standard Time's index, 130.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from tests import helpervm, wintree
from tests.integration.test_windows_vm import create, helper_warnings, text
from tests.osenv import OsDefinition, install
from tests.servers import ImageServer, TlsFiles

pytestmark = pytest.mark.vm

UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
KEY = "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"
SERVED_UNATTEND = """<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
    <settings pass="specialize">
        <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" \
publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS" \
xmlns:wcm="http://schemas.microsoft.com/WMIConfig/2002/State">
            <ComputerName>*</ComputerName>
            <RegisteredOrganization>Served over HTTP</RegisteredOrganization>
            <TimeZone>Aleutian Standard Time</TimeZone>
        </component>
    </settings>
</unattend>
""".replace("\n", "\r\n")
SERVED_SYSPREP = (
    "; served over HTTPS\r\n"
    "[Unattended]\r\n"
    "    OemSkipEula=Yes\r\n"
    "    InstallFilesPath=C:\\sysprep\\i386\r\n"
    "\r\n"
    "[GuiUnattended]\r\n"
    "    AdminPassword=*\r\n"
    "    OEMSkipRegional=1\r\n"
    "    TimeZone=004\r\n"
    "\r\n"
    "[UserData]\r\n"
    '    FullName="Served over HTTPS"\r\n'
    "    ComputerName=*\r\n"
)


@pytest.fixture
def osdef(tmp_path: Path) -> OsDefinition:
    definition = install(tmp_path / "inst")
    definition.configure(
        HELPER_DIR=str(helpervm.ensure_helper()), HELPER_SOFT_TIMEOUT="300", IMAGE_DIR=str(definition.image_dir)
    )
    return definition


def shell_setup(unattend: bytes, settings_pass: str) -> dict[str, str]:
    """The simple elements of the amd64 Shell-Setup component of ``settings_pass``."""
    ns = {"u": UNATTEND_NS}
    root = etree.fromstring(unattend)
    (component,) = root.xpath(
        f"u:settings[@pass='{settings_pass}']/u:component[@name='Microsoft-Windows-Shell-Setup']", namespaces=ns
    )
    return {etree.QName(child).localname: child.text for child in component if len(child) == 0}


def ini_value(ini: str, section: str, key: str) -> str | None:
    """``key``'s value in ``[section]`` of an INI text, unquoted (names case-insensitive, as Windows reads them)."""
    current = None
    for line in ini.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]").lower()
        elif current == section.lower() and "=" in stripped and not stripped.startswith(";"):
            name, _, value = stripped.partition("=")
            if name.strip().lower() == key.lower():
                value = value.strip()
                return value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return None


def test_os_answer_file_over_http_replaces_the_images_unattend(
    osdef: OsDefinition, tmp_path: Path, http_server: Callable[..., ImageServer]
) -> None:
    wintree.build_image(osdef.image_dir / "win.img", wintree.WindowsSpec())
    server = http_server({"/answers/unattend.xml": SERVED_UNATTEND.encode()})
    disk, result = create(
        osdef, tmp_path, "win.img", img_passwd="pw", os_answer_file=server.url("/answers/unattend.xml")
    )
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/answers/unattend.xml")]
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert any(w.endswith("unattend.xml (IGNORE_UNATTEND)") for w in helper_warnings(result)), helper_warnings(result)
    with wintree.deployed(disk, tmp_path / "check") as (root, _, _):
        unattend = (root / "Windows/Panther/unattend.xml").read_bytes()
    specialize = shell_setup(unattend, "specialize")
    assert specialize["RegisteredOrganization"] == "Served over HTTP"
    assert specialize["TimeZone"] == "Aleutian Standard Time"
    assert specialize["ComputerName"] == "win1"  # the jail's additions on the served file
    assert b"echo image's own" not in unattend and b"<Name>operator</Name>" not in unattend  # the image's is gone
    assert b"ChangePassword.cmd" in unattend


def test_os_answer_file_over_https_replaces_the_images_sysprep_inf(
    osdef: OsDefinition, tmp_path: Path, http_server: Callable[..., ImageServer], tls_files: TlsFiles
) -> None:
    osdef.configure(
        HELPER_DIR=str(helpervm.ensure_helper()),
        HELPER_SOFT_TIMEOUT="300",
        IMAGE_DIR=str(osdef.image_dir),
        TLS_CA_BUNDLE=str(tls_files.ca_cert),
    )
    wintree.build_image(osdef.image_dir / "xp.img", wintree.legacy_spec())
    server = http_server({"/sysprep.inf": SERVED_SYSPREP.encode()}, tls=True)
    url = server.url("/sysprep.inf")
    assert url.startswith("https://")
    disk, result = create(
        osdef, tmp_path, "xp.img", name="xp1", img_passwd="pw", os_product_key=KEY, os_answer_file=url
    )
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/sysprep.inf")]
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert "Detected OSFAMILY: windows-legacy" in helper_warnings(result)
    with wintree.deployed(disk, tmp_path / "check") as (root, _, _):
        sysprep = text(root / "sysprep/sysprep.inf")
    assert sysprep.startswith("; served over HTTPS\r\n")
    assert ini_value(sysprep, "UserData", "FullName") == "Served over HTTPS"
    assert ini_value(sysprep, "GuiUnattended", "TimeZone") == "004"
    assert ini_value(sysprep, "UserData", "ComputerName") == "xp1"
    assert ini_value(sysprep, "UserData", "ProductKey") == KEY


def test_an_iana_timezone_gives_sysprep_inf_its_windows_index(osdef: OsDefinition, tmp_path: Path) -> None:
    osdef.configure(
        HELPER_DIR=str(helpervm.ensure_helper()),
        HELPER_SOFT_TIMEOUT="300",
        IMAGE_DIR=str(osdef.image_dir),
        WINDOWS_TIMEZONE="Europe/Athens",
    )
    wintree.build_image(osdef.image_dir / "xp.img", wintree.legacy_spec())
    disk, result = create(
        osdef, tmp_path, "xp.img", name="xp2", img_passwd="pw", img_properties=json.dumps({"IGNORE_UNATTEND": "yes"})
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    with wintree.deployed(disk, tmp_path / "check") as (root, _, _):
        sysprep = text(root / "sysprep/sysprep.inf")
    assert sysprep.startswith("; snf-image default sysprep.inf")  # the host's template, not the image's
    assert ini_value(sysprep, "GuiUnattended", "TimeZone") == "130"  # GTB Standard Time
    assert not re.search("@[A-Z_]+@", sysprep)
