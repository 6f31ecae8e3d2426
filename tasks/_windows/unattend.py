"""The unattend.xml editor (lxml): bytes in, bytes out, the document's encoding, BOM, CRLF and comments kept.

Windows setup wants the ``urn:schemas-microsoft-com:unattend`` default
namespace and the ``wcm`` prefix declared on the root; both are kept or
put there. lxml is imported where it is used: only Windows deployments
pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helper.commands import TaskError

UNATTEND_NS = "urn:schemas-microsoft-com:unattend"
WCM_NS = "http://schemas.microsoft.com/WMIConfig/2002/State"
PUBLIC_KEY_TOKEN = "31bf3856ad364e35"
SHELL_SETUP = "Microsoft-Windows-Shell-Setup"
DEPLOYMENT = "Microsoft-Windows-Deployment"


def _q(tag: str) -> str:
    return f"{{{UNATTEND_NS}}}{tag}"


def _wcm(attr: str) -> str:
    return f"{{{WCM_NS}}}{attr}"


def parse_unattend(data: bytes) -> Any:
    """The element tree of an answer file; TaskError if it is not an unattend document."""
    from lxml import etree

    parser = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise TaskError(f"The answer file is not well-formed XML: {exc}") from exc
    if root.tag != _q("unattend"):
        raise TaskError(f"The answer file's root element is {root.tag}, not unattend in {UNATTEND_NS}")
    return root.getroottree()


def _serialize(tree: Any) -> bytes:
    """The document as bytes in its own declared encoding (UTF-8 if none), comments and layout kept."""
    from lxml import etree

    encoding = tree.docinfo.encoding or "utf-8"
    data: bytes = etree.tostring(tree, xml_declaration=True, encoding=encoding)
    return data


def _declare_wcm(tree: Any, keep: list[str]) -> None:
    """Declare ``wcm`` on the root, where Windows setup looks for it, and use it for wcm:action.

    Called after the edit: lxml names an undeclared namespace ``ns0`` on the
    element, and cleanup_namespaces with top_nsmap moves it to the root as
    ``wcm``. Every prefix the document declared (``keep``) stays, used or not.
    """
    from lxml import etree

    etree.cleanup_namespaces(tree, top_nsmap={"wcm": WCM_NS}, keep_ns_prefixes=[*keep, "wcm"])


def _prefixes(tree: Any) -> list[str]:
    root = tree.getroot()
    return sorted({p for element in root.iter() if isinstance(element.tag, str) for p in element.nsmap if p})


def settings_pass(root: Any, name: str, create: bool = True) -> Any:
    """The ``<settings pass="name">`` element (the first), created at the end if missing."""
    from lxml import etree

    for element in root.findall(_q("settings")):
        if element.get("pass") == name:
            return element
    if not create:
        return None
    element = etree.SubElement(root, _q("settings"))
    element.set("pass", name)
    return element


def component(root: Any, pass_name: str, name: str, arch: str, create: bool = True) -> Any:
    """The ``<component name=... processorArchitecture=arch>`` of a pass, created as Windows setup wants it."""
    from lxml import etree

    settings = settings_pass(root, pass_name, create)
    if settings is None:
        return None
    for element in settings.findall(_q("component")):
        if element.get("name") == name and (element.get("processorArchitecture") or "").lower() == arch:
            return element
    if not create:
        return None
    element = etree.SubElement(settings, _q("component"))
    for key, value in (
        ("name", name),
        ("processorArchitecture", arch),
        ("publicKeyToken", PUBLIC_KEY_TOKEN),
        ("language", "neutral"),
        ("versionScope", "nonSxS"),
    ):
        element.set(key, value)
    return element


def _child(parent: Any, tag: str) -> Any:
    from lxml import etree

    found = parent.find(_q(tag))
    return found if found is not None else etree.SubElement(parent, _q(tag))


def _edit(data: bytes, change: Any) -> bytes:
    """Parse, change, serialize -- keeping the input's BOM and CRLF line ends (XML parsing turns CRLF into LF)."""
    tree = parse_unattend(data)
    keep = _prefixes(tree)
    change(tree.getroot())
    _declare_wcm(tree, keep)
    out = _serialize(tree)
    encoding = (tree.docinfo.encoding or "utf-8").lower()
    if encoding.replace("-", "") in ("utf16", "utf16le", "utf16be"):
        text = out.decode("utf-16")
        if b"\r\x00\n\x00" in data or b"\x00\r\x00\n" in data:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        return b"\xff\xfe" + text.encode("utf-16-le")
    if b"\r\n" in data:
        out = out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data.startswith(b"\xef\xbb\xbf") and not out.startswith(b"\xef\xbb\xbf"):
        out = b"\xef\xbb\xbf" + out
    return out


def retarget_arch(data: bytes, arch: str) -> tuple[bytes, bool]:
    """(answer file, changed): components moved to ``arch`` when the file has none for it.

    A file written for the other architecture would be ignored by setup
    whole; one that has components for ``arch`` is left as it is.
    """
    tree = parse_unattend(data)
    components = tree.getroot().iter(_q("component"))
    arches = {(c.get("processorArchitecture") or "").lower() for c in components}
    if not arches or arch in arches:
        return data, False

    def change(root: Any) -> None:
        for c in root.iter(_q("component")):
            c.set("processorArchitecture", arch)

    return _edit(data, change), True


def add_sync_commands(data: bytes, arch: str, commands: Sequence[tuple[str, str]]) -> bytes:
    """Append specialize-pass RunSynchronousCommands (path, description) after the existing ones.

    Orders continue from the highest existing Order; a command whose Path
    is already there is not added twice.
    """

    def change(root: Any) -> None:
        from lxml import etree

        deployment = component(root, "specialize", DEPLOYMENT, arch)
        run = _child(deployment, "RunSynchronous")
        existing = run.findall(_q("RunSynchronousCommand"))
        orders = [int(o.text) for c in existing if (o := c.find(_q("Order"))) is not None and (o.text or "").isdigit()]
        paths = {(p.text or "").strip() for c in existing if (p := c.find(_q("Path"))) is not None}
        order = max(orders, default=0)
        for path, description in commands:
            if path in paths:
                continue
            order += 1
            command = etree.SubElement(run, _q("RunSynchronousCommand"))
            command.set(_wcm("action"), "add")
            etree.SubElement(command, _q("Order")).text = str(order)
            etree.SubElement(command, _q("Path")).text = path
            etree.SubElement(command, _q("Description")).text = description

    return _edit(data, change)


def set_shell_setup(data: bytes, arch: str, values: dict[str, str], pass_name: str = "specialize") -> bytes:
    """Set simple elements (ComputerName, ProductKey, TimeZone) of Shell-Setup in a pass."""

    def change(root: Any) -> None:
        shell = component(root, pass_name, SHELL_SETUP, arch)
        for tag, value in values.items():
            _child(shell, tag).text = value

    return _edit(data, change)


def shell_setup_value(data: bytes, arch: str, tag: str, pass_name: str = "specialize") -> str | None:
    """The text of a Shell-Setup element of a pass, or None."""
    root = parse_unattend(data).getroot()
    shell = component(root, pass_name, SHELL_SETUP, arch, create=False)
    if shell is None:
        return None
    element = shell.find(_q(tag))
    return None if element is None else (element.text or "")
