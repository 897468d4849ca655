"""The classroom dialect's grammar: what the SMTP of course programs allows, for both sides.

The server's classroom listener answers in it and checks HELO and paths against it; the
agent's classroom client names itself in it, and `conform` grades a course server by it.
docs/classroom.md describes the dialect.
"""

from __future__ import annotations

import re

CODES = frozenset({"220", "221", "250", "354", "500", "501", "503"})  # every reply code of the dialect
# A HELO domain, and the domain of a path: letters and digits in dot-separated elements,
# each starting with a letter (no hyphens, no address literals).
_DOMAIN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*")


def is_domain(text: str) -> bool:
    """Whether `text` is a domain in the dialect's grammar (HELO's, and a path's)."""
    return _DOMAIN.fullmatch(text) is not None
