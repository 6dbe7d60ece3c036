"""Text from result files, made safe to print: on a terminal, and inside Markdown.

Case names, model names and file names come from files anyone can write. Printed raw, an ANSI
escape in a case name can recolour, rewrite or hide lines of a terminal (or a CI log that renders
escapes), a newline can forge a line of the verdict, and a backtick can end the Markdown code span
around a name in ``comparison.md`` and let the rest of the name be read as Markdown or HTML.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["md_code", "md_text", "terminal_safe"]

#: Control characters (C0, DEL, C1), format characters (bidirectional overrides, zero-width
#: characters) and line or paragraph separators: everything that is not shown as itself.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """``text`` with every character that a terminal would not show as itself written as a Python
    escape (``\\x1b``, ``\\n``, ``\\u202e``); backslashes stay as they are, printable text too."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span that no backtick in it can end: the fence is one backtick
    longer than the longest run inside (CommonMark), padded with spaces when the text starts or ends
    with a backtick. Control characters are escaped as for a terminal. Pipes are left alone: a
    table cell escapes them (see ``kvperf.gate.render``)."""
    safe = terminal_safe(text)
    longest = max((len(run) for run in re.findall(r"`+", safe)), default=0)
    fence = "`" * (longest + 1)
    # CommonMark strips one space from each end of a span that starts and ends with one: pad then too.
    edge = (safe[:1], safe[-1:])
    pad = " " if not safe or "`" in edge or edge == (" ", " ") else ""
    return f"{fence}{pad}{safe}{pad}{fence}"


#: Characters that can start Markdown or HTML syntax inside a line of text.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")


def md_text(text: str) -> str:
    """``text`` as plain Markdown text: control characters escaped as for a terminal, and every
    character that could open emphasis, a link, a code span, HTML or a table cell backslash-escaped
    (CommonMark shows an escaped punctuation character as itself)."""
    return _MD_SPECIAL.sub(r"\\\1", terminal_safe(text))
