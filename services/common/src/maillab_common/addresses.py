"""Addresses and domains: the one place that decides what an address is, for every service.

- The agent parses every address with `parse_mailbox` before anything reaches the wire, and
  so refuses, before connecting, every address the server would refuse.
- The server parses MAIL and RCPT arguments with `parse_path`, one linear regular expression
  (aiosmtpd's own parser is slow and super-linear), then decides with `check_sender` and
  `check_recipient`.
- The server's store and the inspector name forward files with `domain_of`,
  `normalise_domain` and `group_by_domain`.

A domain becomes a file name under /forward, so `normalise_domain` is the guard that keeps
every input inside that folder: only lower-case A-labels and IP address literals get through.
An `InvalidAddress` says exactly what is wrong, in words a lab user can act on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LOCAL_PART = 64  # octets, RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # octets, RFC 5321 4.5.3.1.2
MAX_DOMAIN_LENGTH = 253  # characters of the A-label form, without a trailing dot
MAX_LABEL = 63

# RFC 5321 section 4.1.2, with RFC 6531's UTF-8 allowed in atoms and labels.
_UTF8 = "\u0080-\U0010ffff"
_ATEXT = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_UTF8}-]"
_DOT_STRING = f"{_ATEXT}+(?:\\.{_ATEXT}+)*"
_QUOTED_STRING = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_UTF8}]|\\\\[\\x20-\\x7e])*"'
_ATOM_CHARACTER = re.compile(_ATEXT)

# What a MAIL or RCPT command may carry, more lenient than <Mailbox> where aiosmtpd was and
# clients rely on it: a local part alone ("<alice>"), a domain that is no host name
# ("a@my_host"; a recipient's domain is checked after, by check_recipient), no angle brackets.
# Quoted strings and dot-strings as in RFC 5321; no comments, folding or obsolete syntax.
# Every character has one place in it, so the match is one linear pass (no nested
# quantifier can take the same text two ways).
_LOOSE_LABEL = r"[^\x00-\x20\x7f<>()\[\]\\,;:\"@.]+"
_LOOSE_DOMAIN = f"(?:{_LOOSE_LABEL}(?:\\.{_LOOSE_LABEL})*|\\[[\\x21-\\x5a\\x5e-\\x7e{_UTF8}]*\\])"
_LOOSE_MAILBOX = f"(?:{_DOT_STRING}|{_QUOTED_STRING})(?:@{_LOOSE_DOMAIN})?"
_ROUTE = r"@[^\x00-\x20\x7f<>,:@]+(?:,@[^\x00-\x20\x7f<>,:@]+)*:"  # RFC 5321 A-d-l, ignored
_PATH = re.compile(f"[ \\t]*(?:<(?:{_ROUTE})?({_LOOSE_MAILBOX})>|(<>)|({_LOOSE_MAILBOX})(?=[ \\t]|\\Z))")

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The label separators of Python's IDNA codec (RFC 3490 3.1): the full stop and three others.
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
# RFC 5321 IPv4-address-literal and IPv6-addr: ASCII digits, hex digits, ":" and "."; the
# longest IPv6 spelling (eight full groups, or six and an IPv4 address) is 45 characters.
_IPV4_TEXT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_GENERAL_LITERAL_TAG = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:")


class InvalidAddress(ValueError):
    """An address the lab refuses; the message says what is wrong with it."""


@dataclass(frozen=True)
class Mailbox:
    """An RFC 5321 mailbox the lab can deliver to, as written, and the forward file it belongs in."""

    local: str  # before the @, as written: a quoted local part keeps its quotes
    domain: str  # after the @, as written
    forward_name: str  # the normalised domain that names /forward/<forward_name>

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_mailbox(text: str) -> Mailbox:
    """`text` as an RFC 5321 mailbox that names a forward file; InvalidAddress otherwise.

    Stricter than the server on purpose: whatever this takes, the server takes both as a
    sender and as a recipient (tests/unit/test_address_agreement.py holds it to that).
    """
    if len(text) > MAX_LOCAL_PART + 1 + MAX_DOMAIN:  # first, so that a huge input costs nothing
        limit = f"at most {MAX_LOCAL_PART} bytes before the @ and {MAX_DOMAIN} after"
        raise InvalidAddress(f"it is too long ({len(text)} characters): {limit}")
    _check_characters(text)
    local, domain = _split(text)
    if not local:
        raise InvalidAddress("the local part (before the @) is empty")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise InvalidAddress(f"the local part is too long ({len(local.encode())} bytes): at most {MAX_LOCAL_PART}")
    if not domain:
        raise InvalidAddress("the domain (after the @) is empty")
    if len(domain.encode()) > MAX_DOMAIN:
        raise InvalidAddress(f"the domain is too long ({len(domain.encode())} bytes): at most {MAX_DOMAIN}")
    return Mailbox(local=local, domain=domain, forward_name=normalise_domain(domain))


def _check_characters(text: str) -> None:
    """What the server refuses in any address: controls, line separators, other invisible characters."""
    if not text.isprintable():
        index = next(index for index, character in enumerate(text) if not character.isprintable())
        raise InvalidAddress(f"the character U+{ord(text[index]):04X} at index {index} is not allowed in an address")


def _split(text: str) -> tuple[str, str]:
    """The local part (a quoted string or a dot-string) and the text after its @."""
    if text.startswith('"'):
        end = _closing_quote(text)
        if text[end + 1 : end + 2] != "@":
            raise InvalidAddress("the quoted local part must be followed by @ and a domain")
        return text[: end + 1], text[end + 2 :]
    local, at, domain = text.partition("@")
    if not at:
        raise InvalidAddress("there is no @ between the local part and the domain")
    if local.startswith("."):
        raise InvalidAddress("the local part starts with a dot")
    if local.endswith("."):
        raise InvalidAddress("the local part ends with a dot")
    if ".." in local:
        raise InvalidAddress("the local part has two dots in a row")
    for character in local:
        if character != "." and not _ATOM_CHARACTER.fullmatch(character):
            raise InvalidAddress(f"the local part holds {character!r}, which only a quoted local part may hold")
    return local, domain


def _closing_quote(text: str) -> int:
    """The index of the quote that closes the quoted string at the start of `text`."""
    index = 1
    while index < len(text):
        character = text[index]
        if character == '"':
            return index
        if character == "\\":
            escaped = text[index + 1 : index + 2]
            if not escaped:
                break
            if not " " <= escaped <= "~":
                raise InvalidAddress(
                    f"the quoted local part escapes {escaped!r}: only printable ASCII may follow a backslash"
                )
            index += 1
        index += 1
    raise InvalidAddress("the quoted local part has no closing quote")


def parse_path(text: str) -> tuple[str, str] | None:
    """The address at the start of a MAIL or RCPT argument, and the text after it.

    The server's fast path. `<mailbox>`, `<@route:mailbox>` (the route is dropped) and a
    bare `mailbox` give the mailbox; `<>` gives "<>", as aiosmtpd gives the null sender.
    None for anything else. Linear in `len(text)`: a hostile argument costs what an honest
    one of its length does. Wherever `parse_mailbox` takes a mailbox, this takes it too, and
    splits it at the same @ (tests/unit/test_address_agreement.py).
    """
    match = _PATH.match(text)
    if match is None:
        return None
    return match[match.lastindex or 0], text[match.end() :]


def check_sender(address: str) -> None:
    """InvalidAddress if the server refuses `address` (as parse_path gave it) after MAIL FROM."""
    if not address.isprintable():
        raise InvalidAddress("The sender address holds characters not allowed in an address")


def check_recipient(address: str) -> str:
    """The forward-file name for `address` (as parse_path gave it) after RCPT TO; InvalidAddress if refused."""
    if not address.isprintable():
        raise InvalidAddress("The recipient address holds characters not allowed in an address")
    return domain_of(address)


def domain_of(address: str) -> str:
    """The forward-file name for a recipient address: its domain (after the last @), normalised."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidAddress(f"{_shown(address)} is not of the form local-part@domain")
    return normalise_domain(domain)


def normalise_domain(domain: str) -> str:
    """A domain as the name of its forward file: lower-case A-labels, or one spelling of an IP literal."""
    if domain.startswith("[") and domain.endswith("]"):
        return _address_literal(domain[1:-1])
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        ascii_domain = ""
    labels = ascii_domain.split(".")
    if (
        not ascii_domain
        or len(ascii_domain) > MAX_DOMAIN_LENGTH
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise InvalidAddress(f"{_shown(domain)} is not a valid domain name: {_domain_problem(domain)}")
    return ascii_domain


def _domain_problem(domain: str) -> str:
    """Why normalise_domain refused `domain`, for its error message."""
    if not domain:
        return "it is empty"
    labels = _DOTS.split(domain)
    if "" in labels:
        return "it has an empty label (two dots in a row, or a dot at either end)"
    for label in labels:
        for character in label:
            if character.isascii() and not (character.isalnum() or character == "-"):
                return f"it holds {character!r}, which no host name holds"
        if label.startswith("-") or label.endswith("-"):
            return f"the label {_shown(label)} starts or ends with a hyphen"
        try:
            length = len(label.encode("idna"))
        except UnicodeError:
            if label.isascii():
                return f"the label {_shown(label)} is too long ({len(label)} characters): at most {MAX_LABEL}"
            return f"the label {_shown(label)} is not a valid internationalised label (IDNA)"
        if length > MAX_LABEL:
            return f"the label {_shown(label)} is too long ({length} characters as IDNA): at most {MAX_LABEL}"
    try:
        length = len(domain.encode("idna"))
    except UnicodeError:
        return "it is not a valid internationalised domain name (IDNA)"
    if length > MAX_DOMAIN_LENGTH:
        return f"it is too long ({length} characters): at most {MAX_DOMAIN_LENGTH}"
    return "its IDNA form is not lower-case letters, digits and hyphens"


def _address_literal(literal: str) -> str:
    """An IPv4 or IPv6 address literal (RFC 5321 4.1.3), in one spelling per address.

    Only the characters RFC 5321 allows in each form get as far as `ipaddress`, which would
    also take an IPv6 zone id ("%" and anything after it, a file name of the client's
    choosing). General address literals ("[tag:content]") name no host the lab can store
    for, so they are refused too.
    """
    shown = _shown(f"[{literal}]")
    tagged = literal[:5].lower() == "ipv6:"
    text = literal[5:] if tagged else literal
    if not tagged and _GENERAL_LITERAL_TAG.match(literal) and not _IPV6_TEXT.fullmatch(literal):
        raise InvalidAddress(f"{shown} is a general address literal: only IPv4 and IPv6 literals name a forward file")
    try:
        if not (_IPV6_TEXT if tagged else _IPV4_TEXT).fullmatch(text):
            raise ValueError
        address = ipaddress.ip_address(text)
    except ValueError:
        if not tagged and _IPV6_TEXT.fullmatch(text) and ":" in text:
            problem = "an IPv6 literal needs the IPv6: tag"
            raise InvalidAddress(f"{shown} is not a valid address literal: {problem}") from None
        kind = "IPv6" if tagged else "IPv4"
        raise InvalidAddress(f"{shown} is not a valid address literal: not an {kind} address") from None
    if (address.version == 6) != tagged:
        raise InvalidAddress(f"{shown} is not a valid address literal: not an IPv6 address")
    return f"[ipv6:{address.compressed}]" if address.version == 6 else f"[{address}]"


def group_by_domain(addresses: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The addresses grouped by forward file, in the order first seen."""
    groups: dict[str, list[str]] = {}
    for address in addresses:
        groups.setdefault(domain_of(address), []).append(address)
    return {domain: tuple(group) for domain, group in groups.items()}


def _shown(text: str, limit: int = 80) -> str:
    """`text` as a Python literal for an error message, cut to about `limit` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"
