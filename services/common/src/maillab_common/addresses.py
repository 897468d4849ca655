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
# IPv4, IPv6 (no zone id; at most 45 characters, as in domains.py) or a general literal,
# whose tag cannot be IPv6 (that one's content is an IPv6 address or nothing).
_ADDRESS_LITERAL = (
    r"\[(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]{2,45}"
    r"|(?![Ii][Pp][Vv]6:)[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
)
_MAILBOX = re.compile(f"({_DOT_STRING}|{_QUOTED_STRING})@({_SUB_DOMAIN}(?:\\.{_SUB_DOMAIN})*|{_ADDRESS_LITERAL})")


# What a MAIL or RCPT command may carry, more lenient than <Mailbox> where aiosmtpd was and
# clients rely on it: a local part alone ("<alice>"), a domain that is no host name
# ("a@my_host"; a recipient's domain is checked after, by domains.py), no angle brackets.
# Quoted strings and dot-strings as in RFC 5321; no comments, folding or obsolete syntax.
# Every character has one place in it, so the match is one linear pass (no nested
# quantifier can take the same text two ways).
_LOOSE_LABEL = r"[^\x00-\x20\x7f<>()\[\]\\,;:\"@.]+"
_LOOSE_DOMAIN = f"(?:{_LOOSE_LABEL}(?:\\.{_LOOSE_LABEL})*|\\[[\\x21-\\x5a\\x5e-\\x7e{_UTF8}]*\\])"
_LOOSE_MAILBOX = f"(?:{_DOT_STRING}|{_QUOTED_STRING})(?:@{_LOOSE_DOMAIN})?"
_ROUTE = r"@[^\x00-\x20\x7f<>,:@]+(?:,@[^\x00-\x20\x7f<>,:@]+)*:"  # RFC 5321 A-d-l, ignored
_PATH = re.compile(f"[ \\t]*(?:<(?:{_ROUTE})?({_LOOSE_MAILBOX})>|(<>)|({_LOOSE_MAILBOX})(?=[ \\t]|\\Z))")


def parse_path(text: str) -> tuple[str, str] | None:
    """The address at the start of a MAIL or RCPT argument, and the text after it.

    `<mailbox>`, `<@route:mailbox>` (the route is dropped) and a bare `mailbox` give the
    mailbox; `<>` gives "<>", as aiosmtpd gives the null sender. None for anything else.
    Linear in `len(text)`: a hostile argument costs what an honest one of its length does.
    """
    match = _PATH.match(text)
    if match is None:
        return None
    return match[match.lastindex or 0], text[match.end() :]


def mailbox_problem(address: str) -> str:
    """'' for an RFC 5321 mailbox, else what is wrong with it, for an error message."""
    match = _MAILBOX.fullmatch(address)
    if match is None:
        return "is not a valid mailbox: expected local-part@domain (RFC 5321)"
    if len(match[1].encode(errors="surrogateescape")) > 64 or len(match[2].encode(errors="surrogateescape")) > 255:
        return "is too long: at most 64 bytes before the @ and 255 after"
    return ""
