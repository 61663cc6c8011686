"""Text from a study, a file or a user, made safe to show on a terminal, in a widget, a
figure or a one-line comment.

A study is data from elsewhere (a shared database, a colleague's file): its strings (the
study name, an allocation, a device name, a fail reason) may hold control characters. ESC
opens a terminal escape sequence (clear the screen, set the window title, an OSC-8 link),
BEL closes one, CR rewrites the line, C1's 0x9B is an 8-bit CSI, and bidirectional overrides
reorder what is shown (Trojan Source, CVE-2021-42574). `printable` replaces each with a
visible stand-in, so the terminal is never sent one.

Rich markup (``[red]``, ``[link=...]``) in such text is a second matter: show it through
`rich.text.Text` (or Textual with ``markup=False``), never as a markup string.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, the bidirectional marks, embeddings, overrides and isolates,
# the Unicode line and paragraph separators, and lone surrogates (unencodable: a UTF-8
# terminal stream would raise on them).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _stand_in(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # caret notation: ESC is ^[, BEL ^G, CR ^M
    if code == 0x7F:
        return "^?"
    return "\ufffd"


def printable(text: object, *, newlines: bool = False) -> str:
    """`text` (any value, through `str`) with every control character replaced by a visible
    stand-in: C0 in caret notation (``\\x1b`` -> ``^[``), DEL as ``^?``, C1 controls,
    bidirectional controls, line separators and lone surrogates as U+FFFD. `newlines` keeps
    ``\\n`` (a multi-line pane); else it becomes ``^J``."""
    text = str(text)
    if text.isprintable():  # the common case: no control, format or separator character
        return text
    if newlines:
        return "\n".join(_UNSAFE.sub(_stand_in, line) for line in text.split("\n"))
    return _UNSAFE.sub(_stand_in, text)
