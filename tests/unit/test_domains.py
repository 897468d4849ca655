"""Recipient domains: what names a forward file, and that nothing escapes /forward."""

from __future__ import annotations

import pytest

from maillab_common.domains import InvalidAddress, domain_of, group_by_domain, normalise_domain

VALID = {
    "Example.TEST": "example.test",
    "localhost": "localhost",
    "a-b.c0.test": "a-b.c0.test",
    "b\u00fccher.example": "xn--bcher-kva.example",
    "[192.0.2.1]": "[192.0.2.1]",
    "[IPv6:2001:DB8::1]": "[ipv6:2001:db8::1]",
    "[ipv6:0000:0000:0000:0000:0000:ffff:192.0.2.1]": "[ipv6:::ffff:c000:201]",
    "[IPv6:::]": "[ipv6:::]",
    "x" * 63 + ".test": "x" * 63 + ".test",
}

INVALID = [
    "",
    "..",
    ".",
    ".hidden",
    "a..b",
    "a/b",
    "../etc",
    "/etc/passwd",
    "a\x00b",
    "a b",
    "-lead.test",
    "trail-.test",
    "under_score.test",
    "x" * 64 + ".test",
    ".".join(["abcdefghi"] * 26),  # 259 characters
    "[192.0.2.1",
    "[300.1.1.1]",
    "[2001:db8::1]",  # IPv6 literals need the IPv6: tag
    "[IPv6:192.0.2.1]",
    "example.test.",
    "[IPv6:fe80::1%..]",  # a zone id: any text, and once a file name
    "[IPv6:fe80::1%eth0]",
    "[IPv6:fe80::1%2F..%2Fetc]",
    "[IPv6:::1%" + "a" * 290 + "]",  # 300 characters: once 250 at RCPT, then 451 at every DATA
    "[IPv6:" + "0:" * 30 + ":1]",
    "[x-lab:any/thing]",  # a general address literal
    "[tag:..]",
    "[\u0661.2.3.4]",  # Arabic-Indic digits
    "[192.0.2.1 ]",
    "[]",
    "[IPv6:]",
]


@pytest.mark.parametrize(("domain", "expected"), VALID.items())
def test_valid_domains_are_normalised(domain: str, expected: str) -> None:
    assert normalise_domain(domain) == expected


@pytest.mark.parametrize("domain", INVALID)
def test_invalid_domains_are_refused(domain: str) -> None:
    with pytest.raises(InvalidAddress):
        normalise_domain(domain)


@pytest.mark.parametrize("address", ["no-at-sign", "@example.test", "user@", "user@../x"])
def test_addresses_without_a_usable_domain_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddress):
        domain_of(address)


def test_the_domain_is_what_follows_the_last_at_sign() -> None:
    assert domain_of('"a@b"@Example.Test') == "example.test"


def test_grouping_keeps_first_seen_order_and_merges_case() -> None:
    groups = group_by_domain(["a@B.test", "b@a.test", "c@b.TEST"])
    assert groups == {"b.test": ("a@B.test", "c@b.TEST"), "a.test": ("b@a.test",)}
