"""Windows text files and the INI editor (sysprep.inf, CmdLines.txt): comments, CRLF and UTF-16 kept."""

from __future__ import annotations

import re

from helper.commands import TaskError

CRLF = "\r\n"


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, codec) of a Windows text file: UTF-16 with a BOM, UTF-8 with or without one, else cp1252."""
    if data.startswith(b"\xff\xfe"):
        return data[2:].decode("utf-16-le"), "utf-16-le-bom"
    if data.startswith(b"\xfe\xff"):
        return data[2:].decode("utf-16-be"), "utf-16-be-bom"
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-bom"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def encode_text(text: str, codec: str) -> bytes:
    """``text`` back in the file's own encoding (see :func:`decode_text`)."""
    if codec == "utf-16-le-bom":
        return b"\xff\xfe" + text.encode("utf-16-le")
    if codec == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    if codec == "utf-8-bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    if codec == "cp1252":
        return text.encode("cp1252", errors="replace")
    return text.encode("utf-8")


def ini_codec(text: str) -> str:
    """How to store a new INI file: ASCII as such; anything else as UTF-16 with a BOM, which XP's setup reads."""
    return "utf-8" if text.isascii() else "utf-16-le-bom"


def newline_of(text: str) -> str:
    """The file's line end; Windows' own is CRLF."""
    return "\n" if "\n" in text and "\r\n" not in text else CRLF


# --- INI -------------------------------------------------------------------


def _section_of(line: str) -> str | None:
    m = re.match(r"^\s*\[([^\]]*)\]", line)
    return m.group(1).strip().lower() if m else None


def _key_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith(";") or "=" not in stripped:
        return None
    return stripped.split("=", 1)[0].strip().lower()


def _section_range(lines: list[str], section: str) -> tuple[int, int] | None:
    """(header index, end index exclusive) of the first ``[section]``, case-insensitive."""
    wanted = section.lower()
    start = None
    for i, line in enumerate(lines):
        name = _section_of(line)
        if name is None:
            continue
        if start is not None:
            return start, i
        if name == wanted:
            start = i
    return (start, len(lines)) if start is not None else None


def ini_unquote(value: str) -> str:
    """An INI value without surrounding quotes and blanks."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def ini_get(text: str, section: str, key: str) -> str | None:
    """The value of ``key`` in ``[section]`` (first one, unquoted), or None."""
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        return None
    for line in lines[found[0] + 1 : found[1]]:
        if _key_of(line) == key.lower():
            return ini_unquote(line.split("=", 1)[1].split(";", 1)[0] if '"' not in line else line.split("=", 1)[1])
    return None


def _insert_at_section_end(lines: list[str], start: int, end: int, new: str) -> None:
    """Insert ``new`` after the last non-blank line of the section (before blank lines that separate sections)."""
    at = end
    while at > start + 1 and not lines[at - 1].strip():
        at -= 1
    lines.insert(at, new)


def _indent_of(lines: list[str], start: int, end: int) -> str:
    for line in lines[start + 1 : end]:
        if line.strip() and not line.strip().startswith(";"):
            return line[: len(line) - len(line.lstrip())]
    return ""


def _with_new_section(lines: list[str], section: str, first: str, newline: str) -> str:
    """The text of ``lines`` with ``[section]`` holding ``first`` appended, a blank line before it."""
    if lines and lines[-1].strip():
        lines.append("")
    lines += [f"[{section}]", first]
    return newline.join(lines) + newline


def ini_set(text: str, section: str, key: str, value: str) -> str:
    """INI text with ``key=value`` in ``[section]``: the first such key replaced, later duplicates dropped.

    A missing key goes at the end of the section, a missing section at the
    end of the file. Comments, indentation, other lines and the line ends
    are kept.
    """
    newline = newline_of(text)
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        return _with_new_section(lines, section, f"{key}={value}", newline)
    start, end = found
    indent = _indent_of(lines, start, end)
    placed = False
    out = lines[: start + 1]
    for line in lines[start + 1 : end]:
        if _key_of(line) == key.lower():
            if not placed:
                out.append(f"{line[: len(line) - len(line.lstrip())]}{key}={value}")
                placed = True
            continue
        out.append(line)
    if not placed:
        _insert_at_section_end(out, start, len(out), f"{indent}{key}={value}")
    out += lines[end:]
    return newline.join(out) + newline


def ini_add_line(text: str, section: str, entry: str) -> str:
    """INI text with the bare line ``entry`` (a CmdLines.txt command) at the end of ``[section]``, once."""
    newline = newline_of(text)
    lines = text.splitlines()
    found = _section_range(lines, section)
    if found is None:
        return _with_new_section(lines, section, entry, newline)
    start, end = found
    if any(line.strip() == entry for line in lines[start + 1 : end]):
        return newline.join(lines) + newline
    _insert_at_section_end(lines, start, end, entry)
    return newline.join(lines) + newline


def ini_quote(value: str) -> str:
    """A sysprep.inf value in double quotes; TaskError for what quotes cannot hold."""
    if '"' in value or any(c in value for c in "\r\n\0"):
        raise TaskError("A sysprep.inf value cannot contain double quotes or line breaks")
    return f'"{value}"'
