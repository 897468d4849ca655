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
    text = literal[5:] if literal.lower().startswith("ipv6:") else literal
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidAddress(f"[{literal}] is not a valid address literal") from None
    if (address.version == 6) != (text is not literal):
        raise InvalidAddress(f"[{literal}] is not a valid address literal")
    return f"[ipv6:{address.compressed}]" if address.version == 6 else f"[{address}]"


def group_by_domain(addresses: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The addresses grouped by forward file, in the order first seen."""
    groups: dict[str, list[str]] = {}
    for address in addresses:
        groups.setdefault(domain_of(address), []).append(address)
    return {domain: tuple(group) for domain, group in groups.items()}
