"""Text from a client or a message, made safe to print on a terminal or in a log line.

A terminal acts on control characters: ESC starts a sequence that sets the window title,
clears the screen or defines a hyperlink; BEL rings; the 8-bit C1 controls (CSI U+009B,
OSC U+009D, NEL U+0085) do the same without an ESC; a line feed starts what looks like a
new log line. `visible` shows each of them as an escape instead, so that the text is
printed and never obeyed.
"""

from __future__ import annotations

import re

# C0 (tab and line feed included), DEL and C1; the Unicode line and paragraph separators;
# the bidi marks, embeddings, overrides and isolates that reorder what a reader sees; and
# lone surrogates (from surrogateescape), which no terminal or UTF-8 stream can take.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every control character shown as an escape, and nothing else changed.

    C0 controls (tab, CR and LF included), DEL and C1 controls become `\\x1b`-style
    escapes; U+2028, U+2029, the bidi controls (U+061C, U+200E, U+200F, U+202A-U+202E,
    U+2066-U+2069) and lone surrogates become `\\u2028`-style escapes. A backslash is left
    as it is, so an escape in the output may also be text the client sent: the point is
    that no control acts, not that the original can be recovered. Linear in `len(text)`;
    text without controls is returned as it is.
    """
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)
