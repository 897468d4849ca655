"""Addresses as SMTP commands carry them: what parses, what does not, and at what cost."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP

from maillab_common.addresses import mailbox_problem, parse_path
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
    assert mailbox_problem(text[1:-1]) != ""


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
