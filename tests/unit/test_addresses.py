"""Addresses and domains: what parses, what does not, why, and at what cost.

parse_mailbox (the agent's) and normalise_domain (the forward-file name) are checked
against tables with their exact error text; parse_path (the server's fast path) against
aiosmtpd's own parser and against hostile inputs.
"""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP

from maillab_common.addresses import (
    InvalidAddress,
    Mailbox,
    check_recipient,
    check_sender,
    domain_of,
    group_by_domain,
    normalise_domain,
    parse_mailbox,
    parse_path,
)
from maillab_server.config import ServerConfig
from maillab_server.protocol import LabSMTP, Sessions, protocol_factory

# What clients send and aiosmtpd took: parse_path gives the same address.
HONEST = [
    "<alice@example.test>",
    "<alice@example.test> SIZE=1000 BODY=8BITMIME",
    "<>",
    "<> SIZE=10",
    "<@relay.test,@other.test:x@y.test>",
    "a@b",
    "a@b SIZE=1",
    '<"q q"@one.test>',
    '<"a\\"b"@c.test>',
    "<postmaster>",
    "<a@my_host>",
    "<a@[192.0.2.1]>",
    "<a@[IPv6:2001:db8::1]>",
    "<a@[x-lab:anything]>",
    "<b\u00fccher@b\u00fccher.test>",
    "<first.last+tag@sub.example.test>",
]

# Not RFC 5321 (comments, folding, obsolete or broken syntax): refused, where aiosmtpd
# guessed.
REFUSED = [
    "<a(comment)@b.test>",
    "<a b@c.test>",
    "< a@b.test >",
    "<a..b@c.test>",
    "<.a@b.test>",
    "<a.@b.test>",
    "<a@b.test.>",
    "<a@>",
    "<@>",
    "<a@b.test",
    "a@b.test>",
    '<"unclosed@x.test>',
    "<a\x1b[2J@b.test>",
    "",
    "   ",
]

# Hostile shapes, a megabyte each: a thousand times the command-length limit, where a
# quadratic parser would not finish and a recursive one would overflow its stack.
MEGABYTE = 1 << 20
HOSTILE = {
    "quotes": "<" + '"' * MEGABYTE + ">",
    "open comments": "<" + "(" * MEGABYTE + ">",
    "nested comments": "<" + "(" * (MEGABYTE // 2) + ")" * (MEGABYTE // 2) + "a@b>",
    "quotes and comments": "<" + '("' * (MEGABYTE // 2) + ">",
    "dots": "<" + "a." * (MEGABYTE // 2) + "@b>",
    "labels": "<a@" + "a." * (MEGABYTE // 2) + ">",
    "hyphens": "<a@" + "a-" * (MEGABYTE // 2) + ">",
    "quoted pairs": '<"' + "\\" * MEGABYTE + ">",
    "route": "<" + "@a," * (MEGABYTE // 3) + ">",
    "brackets": "<a@" + "[" * MEGABYTE + ">",
    "literal": "<a@[IPv6:" + ":" * MEGABYTE + "]>",
    "general literal": "<a@[" + "a" * MEGABYTE + ">",
    "no closing bracket": "<" + "a" * MEGABYTE,
    "spaces": "<" + " a" * (MEGABYTE // 2) + "@b>",
    "bare quotes": '"' * MEGABYTE,
}


def aiosmtpd_address(text: str) -> str | None:
    parser = SMTP.__new__(SMTP)
    parser.local_part_limit = 0
    address: str | None = parser._getaddr(text)[0]
    return address


@pytest.mark.parametrize("text", HONEST)
def test_what_clients_send_parses_as_aiosmtpd_parsed_it(text: str) -> None:
    parsed = parse_path(text)
    assert parsed is not None
    assert parsed[0] == aiosmtpd_address(text)
    assert parsed[1].split() == text.partition(">")[2].split() if ">" in text else parsed[1].split() == text.split()[1:]


@pytest.mark.parametrize("text", REFUSED)
def test_what_rfc_5321_does_not_allow_is_refused(text: str) -> None:
    assert parse_path(text) is None


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_addresses_cost_one_pass(text: str) -> None:
    parsed = parse_path(text)  # finishing is the test; some shapes are even addresses
    assert parsed is None or parsed[0] in text
    with pytest.raises(InvalidAddress):
        parse_mailbox(text[1:-1])


def make_protocol() -> LabSMTP:
    async def make() -> LabSMTP:
        return protocol_factory(object(), ServerConfig(), Sessions(1))()

    return asyncio.run(make())


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_server_parses_hostile_addresses_in_one_pass(text: str) -> None:
    protocol = make_protocol()
    for argument in (text, text[:500] + ">"):  # and at the command-length limit
        address, _ = protocol._getaddr(argument)
        assert address is None or address in argument


# parse_mailbox: what the agent takes, split as written, with the forward file it names.
MAILBOXES = {
    "alice@example.test": ("alice", "example.test", "example.test"),
    "First.Last+tag@Sub.Example.TEST": ("First.Last+tag", "Sub.Example.TEST", "sub.example.test"),
    "!#$%&'*+/=?^_`{|}~-@x.test": ("!#$%&'*+/=?^_`{|}~-", "x.test", "x.test"),
    '"a b"@one.test': ('"a b"', "one.test", "one.test"),
    '"a@b"@one.test': ('"a@b"', "one.test", "one.test"),
    '"a\\"b\\\\c"@one.test': ('"a\\"b\\\\c"', "one.test", "one.test"),
    '""@one.test': ('""', "one.test", "one.test"),
    "b\u00fccher@b\u00fccher.test": ("b\u00fccher", "b\u00fccher.test", "xn--bcher-kva.test"),
    "a@localhost": ("a", "localhost", "localhost"),
    "a@[192.0.2.1]": ("a", "[192.0.2.1]", "[192.0.2.1]"),
    "a@[IPv6:2001:DB8::1]": ("a", "[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]"),
    "a@[IPv6:::1]": ("a", "[IPv6:::1]", "[ipv6:::1]"),
    "x" * 64 + "@" + "y" * 63 + ".test": ("x" * 64, "y" * 63 + ".test", "y" * 63 + ".test"),
}

# parse_mailbox: what the agent refuses, and the exact reason it gives.
EMPTY_LABEL = "it has an empty label (two dots in a row, or a dot at either end)"
LABEL_64 = "y" * 64
TOO_LONG = "is too long (64 characters): at most 63"
ONLY_IP = "only IPv4 and IPv6 literals name a forward file"
NOT_MAILBOXES = {
    "": "there is no @ between the local part and the domain",
    "alice": "there is no @ between the local part and the domain",
    "@one.test": "the local part (before the @) is empty",
    "a@": "the domain (after the @) is empty",
    ".a@one.test": "the local part starts with a dot",
    "a.@one.test": "the local part ends with a dot",
    "a..b@one.test": "the local part has two dots in a row",
    "a b@one.test": "the local part holds ' ', which only a quoted local part may hold",
    "a(c)@one.test": "the local part holds '(', which only a quoted local part may hold",
    "Name <a@one.test>": "the local part holds ' ', which only a quoted local part may hold",
    '"open@one.test': "the quoted local part has no closing quote",
    '"a\\': "the quoted local part has no closing quote",
    '"a"b@one.test': "the quoted local part must be followed by @ and a domain",
    '"\\\u00fc"@one.test': "the quoted local part escapes '\u00fc': only printable ASCII may follow a backslash",
    "a\u2028b@one.test": "the character U+2028 at index 1 is not allowed in an address",
    "a@one.test\x00": "the character U+0000 at index 10 is not allowed in an address",
    "a\x1b[2J@one.test": "the character U+001B at index 1 is not allowed in an address",
    "a\u00a0b@one.test": "the character U+00A0 at index 1 is not allowed in an address",
    "a\u200bb@one.test": "the character U+200B at index 1 is not allowed in an address",
    "a\ud800@one.test": "the character U+D800 at index 1 is not allowed in an address",
    "x" * 65 + "@one.test": "the local part is too long (65 bytes): at most 64",
    "\u00fc" * 33 + "@one.test": "the local part is too long (66 bytes): at most 64",
    "a@" + "\u00fc" * 128: "the domain is too long (256 bytes): at most 255",
    "a@" + "x" * 319: "it is too long (321 characters): at most 64 bytes before the @ and 255 after",
    "a@b@one.test": "'b@one.test' is not a valid domain name: it holds '@', which no host name holds",
    "a@one..test": f"'one..test' is not a valid domain name: {EMPTY_LABEL}",
    "a@one.test.": f"'one.test.' is not a valid domain name: {EMPTY_LABEL}",
    "a@my_host": "'my_host' is not a valid domain name: it holds '_', which no host name holds",
    "a@-x.test": "'-x.test' is not a valid domain name: the label '-x' starts or ends with a hyphen",
    "a@" + LABEL_64 + ".test": f"'{LABEL_64}.test' is not a valid domain name: the label '{LABEL_64}' {TOO_LONG}",
    "a@" + ".".join(["abcdefghi"] * 25) + ".abcd": (
        f"{'.'.join(['abcdefghi'] * 25)[:80]!r}... (254 characters) is not a valid domain name:"
        " it is too long (254 characters): at most 253"
    ),
    "a@[tag:x]": f"'[tag:x]' is a general address literal: {ONLY_IP}",
    "a@[x-lab:any/thing]": f"'[x-lab:any/thing]' is a general address literal: {ONLY_IP}",
    "a@[300.1.1.1]": "'[300.1.1.1]' is not a valid address literal: not an IPv4 address",
    "a@[2001:db8::1]": "'[2001:db8::1]' is not a valid address literal: an IPv6 literal needs the IPv6: tag",
    "a@[IPv6:192.0.2.1]": "'[IPv6:192.0.2.1]' is not a valid address literal: not an IPv6 address",
    "a@[IPv6:fe80::1%eth0]": "'[IPv6:fe80::1%eth0]' is not a valid address literal: not an IPv6 address",
    "a@[]": "'[]' is not a valid address literal: not an IPv4 address",
}


@pytest.mark.parametrize(("text", "expected"), MAILBOXES.items())
def test_a_mailbox_is_split_as_written_and_names_its_forward_file(text: str, expected: tuple[str, str, str]) -> None:
    local, domain, forward_name = expected
    mailbox = parse_mailbox(text)
    assert mailbox == Mailbox(local=local, domain=domain, forward_name=forward_name)
    assert str(mailbox) == text
    assert parse_path(f"<{text}>") == (text, "")  # the server's fast path takes it whole
    assert check_recipient(text) == forward_name


@pytest.mark.parametrize(("text", "reason"), NOT_MAILBOXES.items())
def test_anything_else_is_refused_with_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as raised:
        parse_mailbox(text)
    assert str(raised.value) == reason


def test_the_server_refuses_invisible_characters_in_either_role() -> None:
    with pytest.raises(InvalidAddress, match=r"^The sender address holds characters not allowed in an address$"):
        check_sender("a\u2028b@one.test")
    with pytest.raises(InvalidAddress, match=r"^The recipient address holds characters not allowed in an address$"):
        check_recipient("a\x00b@one.test")
    check_sender("<>")  # the null sender
    check_sender("postmaster")  # lenient, as aiosmtpd was: a sender need not name a forward file
    check_sender("a@my_host")


# normalise_domain: the guard that keeps every forward file inside /forward.
VALID_DOMAINS = {
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

INVALID_DOMAINS = [
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


@pytest.mark.parametrize(("domain", "expected"), VALID_DOMAINS.items())
def test_valid_domains_are_normalised(domain: str, expected: str) -> None:
    assert normalise_domain(domain) == expected


@pytest.mark.parametrize("domain", INVALID_DOMAINS)
def test_invalid_domains_are_refused_in_one_short_line(domain: str) -> None:
    with pytest.raises(InvalidAddress) as raised:
        normalise_domain(domain)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300


@pytest.mark.parametrize("address", ["no-at-sign", "@example.test", "user@", "user@../x"])
def test_addresses_without_a_usable_domain_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddress):
        domain_of(address)


def test_the_domain_is_what_follows_the_last_at_sign() -> None:
    assert domain_of('"a@b"@Example.Test') == "example.test"


def test_grouping_keeps_first_seen_order_and_merges_case() -> None:
    groups = group_by_domain(["a@B.test", "b@a.test", "c@b.TEST"])
    assert groups == {"b.test": ("a@B.test", "c@b.TEST"), "a.test": ("b@a.test",)}
