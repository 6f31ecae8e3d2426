"""/etc/network/interfaces (ifupdown) as pure functions: our marked block in place of the NICs' stanzas.

The plan comes from ``tasks/_network.py`` (:func:`plan_nics`); this module
only edits the interfaces file, keeping everything that is not a stanza of
one of our NICs or of the image's own physical Ethernet NIC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._network import HEADER, MARK, PHYSICAL_ETHERNET, NicPlan, replaced_name
from ._unix import join_lines, newline_of, split_lines

BEGIN = f"# BEGIN {MARK} ConfigureNetwork"
END = f"# END {MARK} ConfigureNetwork"
STANZA_WORDS = ("iface", "mapping", "auto", "source", "source-directory", "rename", "no-auto-down", "no-scripts")


def _is_stanza(word: str) -> bool:
    return word in STANZA_WORDS or word.startswith("allow-")


def interfaces_sources(text: str) -> list[tuple[str, str]]:
    """The ``source``/``source-directory`` lines of an interfaces file: (keyword, pattern)."""
    found = []
    for line in split_lines(text):
        words = line.split()
        if len(words) >= 2 and words[0] in ("source", "source-directory"):
            found.extend((words[0], pattern) for pattern in words[1:])
    return found


def strip_interfaces(text: str, names: Iterable[str], patterns: Sequence[str] = PHYSICAL_ETHERNET) -> str:
    """``text`` without our marked block and without the stanzas of ``names`` or physical Ethernet names.

    The image's own lines for its NIC (``allow-hotplug ens3`` /
    ``iface ens3 inet dhcp``) are what ConfigureNetwork replaces; they
    would otherwise race with ours for the same device or, once it is
    renamed, make ``ifup -a`` fail on a device that no longer exists.
    Loopback, bridges, bonds, VLANs, comments and ``source`` lines stay.
    Line continuations are honoured; the file's line endings are kept.
    """
    newline = newline_of(text)
    wanted = set(names)

    def ours(name: str) -> bool:
        return replaced_name(name, wanted, patterns)

    lines = split_lines(text)
    out: list[str] = []
    skipping = False  # inside an iface/mapping stanza we drop
    in_block = False
    i = 0
    while i < len(lines):
        # a logical line may span several physical ones (trailing backslash)
        j = i
        while lines[j].endswith("\\") and j + 1 < len(lines):
            j += 1
        physical = lines[i : j + 1]
        logical = " ".join(part[:-1] if part.endswith("\\") else part for part in physical)
        i = j + 1
        stripped = logical.strip()
        if stripped == BEGIN:
            in_block = True
            continue
        if in_block:
            if stripped == END:
                in_block = False
            continue
        words = stripped.split()
        if not words or stripped.startswith("#"):
            out.extend(physical)
            continue
        if _is_stanza(words[0]):
            skipping = False
            if words[0] in ("iface", "mapping") and len(words) >= 2 and ours(words[1]):
                skipping = True
                continue
            if words[0] == "auto" or words[0].startswith("allow-"):
                keep = [w for w in words[1:] if not ours(w)]
                if not keep:
                    continue
                if len(keep) != len(words) - 1:
                    indent = logical[: len(logical) - len(logical.lstrip())]
                    out.append(indent + " ".join([words[0], *keep]))
                    continue
            out.extend(physical)
            continue
        if not skipping:
            out.extend(physical)
    return join_lines(out, newline)


def render_interfaces_block(plans: Sequence[NicPlan]) -> list[str]:
    """The marked block of /etc/network/interfaces stanzas for ``plans`` (lines)."""
    lines = [BEGIN, f"# {HEADER}", "# Names are pinned by MAC in /etc/udev/rules.d/70-snf-image-net.rules."]
    for p in plans:
        if not p.configured:
            lines.append(f"# {p.name} ({p.mac}): no IPv4/IPv6 information, left unconfigured")
            continue
        lines += [f"auto {p.name}", f"allow-hotplug {p.name}"]
        if p.ipv4 == "dhcp":
            lines.append(f"iface {p.name} inet dhcp")
        elif p.ipv4 == "static" and p.address is not None:
            lines += [
                f"iface {p.name} inet static",
                f"    address {p.address.ip}",
                f"    netmask {p.address.netmask}",
            ]
            if p.gateway is not None:
                # a metric per NIC: a second plain "gateway" would fail ifup with "File exists"
                lines += [f"    gateway {p.gateway}", f"    metric {p.metric}"]
        if p.ipv6 == "dhcp":
            lines.append(f"iface {p.name} inet6 dhcp")
        elif p.ipv6 in ("slaac", "slaac_dhcp"):
            lines += [f"iface {p.name} inet6 auto", "    privext 0"]
            if p.ipv6 == "slaac_dhcp":
                lines.append("    dhcp 1")
        elif p.ipv6 == "static" and p.address6 is not None:
            lines += [
                f"iface {p.name} inet6 static",
                f"    address {p.address6.ip}",
                f"    netmask {p.address6.network.prefixlen}",
                "    accept_ra 0",  # the gateway is ours: no second default route from an advertisement
            ]
            if p.gateway6 is not None:
                lines += [f"    gateway {p.gateway6}", f"    metric {p.metric}"]
    lines.append(END)
    return lines


def render_interfaces(text: str, plans: Sequence[NicPlan]) -> str:
    """/etc/network/interfaces with our stanzas replacing the NICs' old ones; ``lo`` ensured.

    Idempotent: a second run replaces the marked block instead of adding one.
    """
    newline = newline_of(text) if text else "\n"
    stripped = strip_interfaces(text, [p.name for p in plans])
    lines = split_lines(stripped)
    while lines and not lines[-1].strip():
        lines.pop()
    has_lo = any(ln.split()[:2] == ["iface", "lo"] for ln in lines)
    if not has_lo:
        if lines:
            lines.append("")
        lines += ["# The loopback network interface", "auto lo", "iface lo inet loopback"]
    if lines:
        lines.append("")
    lines += render_interfaces_block(plans)
    return join_lines(lines, newline)
