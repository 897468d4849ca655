"""RFC 5321 mailboxes: the syntax of local-part@domain, as SMTP commands carry them.

The agent checks every address against it before anything reaches the wire; the server
parses MAIL and RCPT addresses that fit it without aiosmtpd's much slower general parser.
"""

from __future__ import annotations

import re

# RFC 5321 section 4.1.2 <Mailbox>, with RFC 6531's UTF-8 allowed in atoms and labels.
_UTF8 = "\u0080-\U0010ffff"
_ATEXT = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_UTF8}-]"
_DOT_STRING = f"{_ATEXT}+(?:\\.{_ATEXT}+)*"
_QUOTED_STRING = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_UTF8}]|\\\\[\\x20-\\x7e])*"'
_LET_DIG = f"[A-Za-z0-9{_UTF8}]"
_SUB_DOMAIN = f"{_LET_DIG}(?:[A-Za-z0-9{_UTF8}-]*{_LET_DIG})?"
_ADDRESS_LITERAL = r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
_MAILBOX = re.compile(f"({_DOT_STRING}|{_QUOTED_STRING})@({_SUB_DOMAIN}(?:\\.{_SUB_DOMAIN})*|{_ADDRESS_LITERAL})")


def mailbox_problem(address: str) -> str:
    """'' for an RFC 5321 mailbox, else what is wrong with it, for an error message."""
    match = _MAILBOX.fullmatch(address)
    if match is None:
        return "is not a valid mailbox: expected local-part@domain (RFC 5321)"
    if len(match[1].encode(errors="surrogateescape")) > 64 or len(match[2].encode(errors="surrogateescape")) > 255:
        return "is too long: at most 64 bytes before the @ and 255 after"
    return ""
