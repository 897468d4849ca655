"""Recipient domains: which forward file an address belongs in, and which addresses are refused.

The server uses it to accept recipients and name files; the inspector uses it to know
which file a manifest's recipient should have landed in.

A domain name becomes a file name under /forward, so this module is the guard that keeps
every input inside that folder: only lower-case A-labels and address literals get through.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

MAX_DOMAIN_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# RFC 5321 IPv4-address-literal and IPv6-addr: ASCII digits, hex digits, ":" and "."; the
# longest IPv6 spelling (eight full groups, or six and an IPv4 address) is 45 characters.
_IPV4_TEXT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]{2,45}")


class InvalidAddress(ValueError):
    """An address whose domain cannot name a forward file."""


def domain_of(address: str) -> str:
    """The forward-file name for a recipient address: its domain, normalised."""
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidAddress(f"{address!r} is not of the form local-part@domain")
    return normalise_domain(domain)


def normalise_domain(domain: str) -> str:
    if domain.startswith("[") and domain.endswith("]"):
        return _address_literal(domain[1:-1])
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidAddress(f"{domain!r} is not a valid domain name") from None
    labels = ascii_domain.split(".")
    if len(ascii_domain) > MAX_DOMAIN_LENGTH or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidAddress(f"{domain!r} is not a valid domain name")
    return ascii_domain


def _address_literal(literal: str) -> str:
    """An IPv4 or IPv6 address literal (RFC 5321 4.1.3), in one spelling per address.

    Only the characters RFC 5321 allows in each form get as far as `ipaddress`, which would
    also take an IPv6 zone id ("%" and anything after it, a file name of the client's
    choosing). General address literals ("[tag:content]") name no host the lab can store
    for, so they are refused too.
    """
    tagged = literal[:5].lower() == "ipv6:"
    text = literal[5:] if tagged else literal
    if not (_IPV6_TEXT if tagged else _IPV4_TEXT).fullmatch(text):
        raise InvalidAddress(f"[{literal}] is not a valid address literal")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidAddress(f"[{literal}] is not a valid address literal") from None
    if (address.version == 6) != tagged:
        raise InvalidAddress(f"[{literal}] is not a valid address literal")
    return f"[ipv6:{address.compressed}]" if address.version == 6 else f"[{address}]"


def group_by_domain(addresses: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The addresses grouped by forward file, in the order first seen."""
    groups: dict[str, list[str]] = {}
    for address in addresses:
        groups.setdefault(domain_of(address), []).append(address)
    return {domain: tuple(group) for domain, group in groups.items()}
