"""One address contract: the agent never sends what the server refuses, and the fast path is the full parser.

The agent checks addresses with check_mailbox (maillab_common.addresses.parse_mailbox); the
server parses them with parse_path and decides with the handler's hooks. These properties
generate addresses from an alphabet of the characters that have made them disagree before
(dots, quotes, brackets, hyphens, 63- and 64-character labels, UTF-8 and IDNA, controls,
U+2028, address literals) and hold the two sides to each other.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from maillab_agent.message import BadInput, check_mailbox
from maillab_common.addresses import InvalidAddress, Mailbox, domain_of, parse_mailbox, parse_path
from maillab_server.config import ServerConfig
from maillab_server.handler import ForwardHandler
from maillab_server.store import ForwardStore
from tests.unit.conftest import StartServer

TRICKY = [
    *"aZ0.\"\\@[]-_() ,:;<>%+'!#",
    "\u00fc",  # ü
    "\u00df",  # ß, which IDNA 2003 maps to "ss"
    "\u3002",  # ideographic full stop, a label separator to IDNA
    "\uff21",  # fullwidth A, which IDNA maps to "a"
    "\U0001f600",
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",  # NEL
    "\u00a0",  # no-break space
    "\u200b",  # zero-width space
    "\u2028",  # line separator
    "\u2029",
    "\ufeff",
    "\ud800",  # a lone surrogate: how Python passes on bytes that are not UTF-8
]
VISIBLE = [character for character in TRICKY if character.isprintable()]
# Near misses are where the two sides used to part: most generated parts are valid, some are
# one step over a limit, and the rest is noise from the whole alphabet.
fragments = st.text(st.sampled_from(TRICKY), max_size=12)
visible = st.text(st.sampled_from(VISIBLE), max_size=12)
good_labels = st.sampled_from(
    [
        "a",
        "test",
        "x" * 63,
        "b\u00fccher",
        "B\u00dcCHER",
        "xn--bcher-kva",
        "1",
        "a-b",
        "\u00df",
        "\uff21",
        "\u00fc" * 20,
    ]
)
near_labels = st.sampled_from(["x" * 64, "-a", "a-", "a_b", "", "\u00fc" * 60, "a\u3002b", "\U0001f600"])
labels = st.one_of(good_labels, good_labels, good_labels, near_labels, visible, fragments)
literals = st.sampled_from(
    [
        *["[1.2.3.4]", "[192.0.2.300]", "[IPv6:::1]", "[ipv6:2001:DB8::1]", "[IPv6:fe80::1%eth0]", "[IPv6:1.2.3.4]"],
        *["[tag:x]", "[x-lab:any.thing]", "[2001:db8::1]", "[]", "[IPv6:]", "[1.2.3.4", "[\u0661.2.3.4]", "[ 1.2.3.4]"],
    ]
)
domains = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    literals,
    st.integers(120, 130).map(lambda n: "a." * n + "test"),  # about the 253-character limit
)
good_locals = st.sampled_from(
    [
        *["a", "first.last", "x" * 64, "\u00fc" * 32, '"a b"', '"a@b"', '"a\\"b"', '""', '"' + "@" * 62 + '"'],
        *["!#$%&'*+/=?^_`{|}~-", "b\u00fccher", '"(\\\\)"'],
    ]
)
near_locals = st.sampled_from(["x" * 65, "\u00fc" * 33, '"\\\u00fc"', ".a", "a.", "a..b", "a(b)", '"a', ""])
locals_ = st.one_of(
    good_locals,
    good_locals,
    near_locals,
    visible,
    visible.map(lambda text: f'"{text}"'),
    fragments,
    fragments.map(lambda text: f'"{text}"'),
)
good_domains = st.one_of(
    st.lists(good_labels, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["[192.0.2.1]", "[IPv6:::1]", "[IPv6:2001:DB8::ffff:1.2.3.4]"]),
)
addresses = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", good_locals, good_domains),
    st.builds(lambda local, domain: f"{local}@{domain}", locals_, good_domains),
    st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains),
    st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains),
    st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains),
    st.text(st.sampled_from(TRICKY), max_size=40),
    st.text(max_size=30),
)


def agent_accepts(address: str) -> bool:
    try:
        check_mailbox(address)
    except BadInput:
        event("the agent refuses")
        return False
    event("the agent accepts")  # --hypothesis-show-statistics: about a fifth of the examples
    return True


class RecordingHandler(ForwardHandler):
    """The server's handler, noting each address it is asked about, as aiosmtpd gave it."""

    def __init__(self, store: ForwardStore, config: ServerConfig) -> None:
        super().__init__(store, config)
        self.asked: list[str] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        self.asked.append(address)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        self.asked.append(address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def lab(start_server: StartServer, tmp_path: Path) -> Iterator[tuple[RecordingHandler, smtplib.SMTP]]:
    config = ServerConfig(forward_dir=tmp_path / "forward")
    config.forward_dir.mkdir()
    handler = RecordingHandler(ForwardStore(config.forward_dir), config)
    server = start_server(handler)
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.command_encoding = "utf-8"  # as the agent writes its commands
        client.ehlo()
        yield handler, client


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=addresses)
@example(address="a@" + "x" * 64 + ".test")  # a label of 64: the agent took it, the server said 553
@example(address="a@[tag:x]")  # a general address literal: the same
@example(address="\u00fc" * 33 + "@one.test")  # 33 characters, 66 bytes before the @
@example(address='"a@b"@one.test')
def test_the_server_takes_every_address_the_agent_sends(
    lab: tuple[RecordingHandler, smtplib.SMTP], address: str
) -> None:
    """Over a socket to a real server: what check_mailbox takes, MAIL and RCPT take too, unchanged."""
    if not agent_accepts(address):
        return
    handler, client = lab
    utf8 = "" if address.isascii() else " SMTPUTF8"  # the agent's own MAIL command (smtp.py _envelope)
    try:
        assert client.docmd("MAIL", f"FROM:<{address}>{utf8}")[0] == 250, "refused as a sender"
        assert client.docmd("RCPT", f"TO:<{address}>")[0] == 250, "refused as a recipient"
        assert handler.asked == [address, address]  # the server heard the address the agent meant
    finally:
        handler.asked.clear()
        assert client.docmd("RSET")[0] == 250  # not client.rset(), which goes back to ASCII


@pytest.fixture
def handler_call(tmp_path: Path) -> Iterator[Any]:
    """Call one of the real handler's hooks with real aiosmtpd Session and Envelope objects."""
    config = ServerConfig(forward_dir=tmp_path)
    handler = ForwardHandler(ForwardStore(tmp_path), config)
    loop = asyncio.new_event_loop()

    def call(hook: str, address: str) -> str:
        session, envelope = Session(loop=loop), Envelope()
        reply: str = loop.run_until_complete(getattr(handler, hook)(None, session, envelope, address, []))
        return reply

    try:
        yield call
    finally:
        loop.close()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=addresses)
@example(address="a@" + "x" * 64 + ".test")
@example(address="a@[tag:x]")
def test_parse_path_and_the_handler_take_every_address_the_agent_sends(handler_call: Any, address: str) -> None:
    """In process, many more examples: parse_path on <address>, then the handler's MAIL and RCPT."""
    if not agent_accepts(address):
        return
    assert parse_path(f"<{address}>") == (address, "")
    assert handler_call("handle_MAIL", address).startswith("250 ")
    assert handler_call("handle_RCPT", address).startswith("250 ")


@settings(max_examples=3000, deadline=None)
@given(text=addresses, route=st.sampled_from(["", "@relay.test:", "@a.test,@b.test:"]))
@example(text='"a@b"@one.test', route="")
def test_the_fast_path_agrees_with_the_full_parser(text: str, route: str) -> None:
    """Where parse_mailbox takes a mailbox, parse_path takes it whole and splits it at the same @."""
    try:
        mailbox = parse_mailbox(text)
    except InvalidAddress:
        event("parse_mailbox refuses")
        return
    event("parse_mailbox accepts")
    parsed = parse_path(f"<{route}{text}>")
    assert parsed == (text, "")
    address = parsed[0]
    # The server's local part and domain (domain_of) are what comes before and after the last @.
    local, _, domain = address.rpartition("@")
    assert mailbox == Mailbox(local=local, domain=domain, forward_name=domain_of(address))
    assert parse_path(f"{text} SIZE=10") == (text, " SIZE=10")  # a bare mailbox too
