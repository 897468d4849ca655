"""Every private name of aiosmtpd (and asyncio) that maillab_server/smtp_base.py relies on, checked.

aiosmtpd is pinned below 2, but a minor release may still rename or rework an internal. Each
test here names one internal, checks its shape, and checks that aiosmtpd still uses it the
way the lab needs, through a real session where one can tell. A failure says which name
changed and what the server needs it for: fix smtp_base.py, and only it.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from maillab_server.protocol import LabSMTP, Sessions
from maillab_server.smtp_base import SMTPBase
from tests.unit.conftest import free_port

ADAPTER = "maillab_server/smtp_base.py"


def changed(name: str, why: str) -> str:
    return f"aiosmtpd {aiosmtpd.__version__} changed {name}: {ADAPTER} relies on it for {why}"


def python_changed(name: str, why: str) -> str:
    return f"Python {sys.version.split()[0]} changed asyncio.StreamReader.{name}: {ADAPTER} relies on it for {why}"


def unchecked(value: object) -> Any:
    """`value`, for reading private attributes that type stubs do not declare."""
    return value


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


class ProbeEnvelope(Envelope):
    pass


class RecordingHandler:
    """Keeps what aiosmtpd hands to the MAIL and RCPT hooks."""

    def __init__(self) -> None:
        self.envelopes: list[type[Envelope]] = []
        self.mail_options: list[list[str]] = []

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        self.envelopes.append(type(envelope))
        self.mail_options.append(mail_options)
        envelope.mail_from = address
        return "250 OK"


class ProbeSMTP(SMTPBase):
    """The adapter with every one of its methods reachable from a command."""

    envelope_class = ProbeEnvelope
    passed_parameters = frozenset({"XPROBE"})

    def __init__(self, handler: Any, timeout: float = 300) -> None:
        super().__init__(handler, hostname="probe.test", timeout=timeout)
        self.parsed: list[str] = []

    def parse_address(self, arg: str) -> tuple[str | None, str | None]:
        self.parsed.append(arg)
        return super().parse_address(arg)

    async def smtp_XUNREAD(self, arg: str | None) -> None:
        """Hands `arg` (and a CRLF) back to the command loop, as DATA does with pipelined commands."""
        self.unread(f"{arg}\r\n".encode())
        await self.push("250 unread")

    async def smtp_XBULK(self, arg: str | None) -> None:
        """Tells the reader's limit inside `bulk_reader`, and after it."""
        with self.bulk_reader(4096) as reader:
            inside = unchecked(reader)._limit
        await self.push(f"250 {inside} {unchecked(self._reader)._limit}")

    async def smtp_XSHUT(self, arg: str | None) -> None:
        async def closed(arg: str | None) -> None:
            await self.push("421 closed")

        self.answer_every_command_with(closed)
        await self.push("250 shut")

    async def smtp_XHOLD(self, arg: str | None) -> None:
        """Holds its reply back `arg` seconds, the idle timer pushed out first."""
        seconds = float(arg or 0)
        self.extend_idle_timeout(seconds)
        await asyncio.sleep(seconds)
        await self.push("250 held")

    async def smtp_XEND(self, arg: str | None) -> None:
        before = self.envelope
        self.end_transaction()
        fresh = self.envelope is not before and type(self.envelope) is ProbeEnvelope
        await self.push(f"250 {fresh}")


class ProbeController(Controller):
    def __init__(self, handler: RecordingHandler, timeout: float = 300) -> None:
        self.protocols: list[ProbeSMTP] = []
        self.timeout = timeout
        super().__init__(handler, hostname="127.0.0.1", port=free_port())

    def factory(self) -> ProbeSMTP:
        protocol = ProbeSMTP(self.handler, self.timeout)
        self.protocols.append(protocol)
        return protocol


@pytest.fixture
def probe() -> Iterator[ProbeController]:
    controller = ProbeController(RecordingHandler())
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


class Dialog:
    """A raw SMTP connection: a command, then its reply (the last line of a multi-line one)."""

    def __init__(self, probe: ProbeController) -> None:
        self.socket = socket.create_connection((probe.hostname, probe.port), timeout=10)
        self.replies = self.socket.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def reply(self) -> bytes:
        line = self.replies.readline()
        while line[3:4] == b"-":
            line = self.replies.readline()
        return line.rstrip(b"\r\n")

    def command(self, line: str) -> bytes:
        self.socket.sendall(f"{line}\r\n".encode())
        return self.reply()

    def close(self) -> None:
        self.replies.close()
        self.socket.close()


def session(probe: ProbeController, *commands: str) -> list[bytes]:
    """Each command's reply, one command at a time."""
    dialog = Dialog(probe)
    try:
        return [dialog.command(command) for command in commands]
    finally:
        dialog.close()


def test_getaddr_is_how_aiosmtpd_parses_mail_and_rcpt_addresses(probe: ProbeController) -> None:
    why = "parsing MAIL and RCPT addresses with maillab's linear parser (parse_path)"
    assert parameters(SMTP._getaddr) == ["self", "arg"], changed("SMTP._getaddr's parameters", why)
    replies = session(probe, "EHLO client.test", "MAIL FROM:<a@x.test>", "RCPT TO:<b@y.test>")
    assert replies[1:] == [b"250 OK", b"250 OK"], changed("SMTP._getaddr's results", why)
    assert probe.protocols[-1].parsed == ["<a@x.test>", "<b@y.test>"], changed("when SMTP._getaddr is called", why)


def test_getparams_is_where_aiosmtpd_checks_mail_parameters(probe: ProbeController) -> None:
    why = "letting XMAILLAB-ONCE past aiosmtpd's check of MAIL parameters"
    assert parameters(SMTP._getparams) == ["self", "params"], changed("SMTP._getparams's parameters", why)
    replies = session(probe, "EHLO client.test", "MAIL FROM:<a@x.test> XPROBE")
    assert replies[1] == b"250 OK", changed("how SMTP._getparams is used", why)
    assert probe.handler.mail_options == [["XPROBE"]], changed("what MAIL hands on after SMTP._getparams", why)
    # The check itself is still aiosmtpd's: a parameter not passed is refused.
    replies = session(probe, "EHLO client.test", "MAIL FROM:<a@x.test> XOTHER")
    assert replies[1].startswith(b"555 "), changed("SMTP._getparams's check", why)


def test_create_envelope_makes_every_transactions_envelope(probe: ProbeController) -> None:
    why = "giving each transaction the lab's envelope, which carries the spool"
    assert parameters(SMTP._create_envelope) == ["self"], changed("SMTP._create_envelope's parameters", why)
    reset = "SMTP._set_post_data_state's parameters"
    assert parameters(SMTP._set_post_data_state) == ["self"], changed(reset, "end_transaction, after DATA")
    commands = ("EHLO client.test", "MAIL FROM:<a@x.test>", "RSET", "MAIL FROM:<a@x.test>", "XEND")
    replies = session(probe, *commands)
    assert probe.handler.envelopes == [ProbeEnvelope, ProbeEnvelope], changed("where envelopes are made", why)
    assert replies[-1] == b"250 True", changed("SMTP.envelope after SMTP._create_envelope", why)


def test_smtp_methods_is_the_command_table(probe: ProbeController) -> None:
    why = "answering every command with 421 while the server shuts down"
    replies = session(probe, "NOOP", "XSHUT", "NOOP", "EHLO client.test")
    assert replies == [b"250 OK", b"250 shut", b"421 closed", b"421 closed"], changed("SMTP._smtp_methods", why)
    assert session(probe, "NOOP") == [b"250 OK"], "only the connection told so answers 421"


def test_reader_is_the_stream_the_command_loop_reads(probe: ProbeController) -> None:
    why = "reading DATA in bulk and handing back the pipelined commands after it"
    dialog = Dialog(probe)
    try:
        assert dialog.command("XUNREAD NOOP") == b"250 unread"
        assert dialog.reply() == b"250 OK", changed("SMTP._reader (the stream its command loop reads)", why)
        bulk = dialog.command("XBULK")
    finally:
        dialog.close()
    assert bulk == f"250 4096 {SMTP.line_length_limit}".encode(), changed("SMTP._reader's limit", why)


def test_reset_timeout_is_the_idle_timer(probe: ProbeController) -> None:
    why = "holding the idle timer off while a fault's delay holds a reply back"
    assert parameters(SMTP._reset_timeout) == ["self", "duration"], changed("SMTP._reset_timeout's parameters", why)
    assert unchecked(probe.protocols[-1])._timeout_duration == 300, changed("SMTP._timeout_duration", why)
    idle = ProbeController(RecordingHandler(), timeout=0.5)
    idle.start()
    try:
        dialog = Dialog(idle)
        try:
            started = time.monotonic()
            assert dialog.command("XHOLD 1.2") == b"250 held", changed("SMTP._reset_timeout (the idle timer)", why)
            assert time.monotonic() - started >= 1.2
            assert dialog.reply() == b"", changed("SMTP._reset_timeout (the idle timer still runs after)", why)
        finally:
            dialog.close()
    finally:
        idle.stop()


class RecordingTransport(asyncio.Transport):
    """Counts what a StreamReader asks of its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    def pause_reading(self) -> None:
        self.pauses += 1

    def resume_reading(self) -> None:
        pass


def test_stream_reader_limit_is_where_it_pauses_the_socket() -> None:
    why = "raising the point where the reader pauses the socket while DATA lasts"

    async def pauses(limit: int) -> int:
        reader: Any = asyncio.StreamReader(limit=100)
        transport = RecordingTransport()
        reader.set_transport(transport)
        assert reader._limit == 100, python_changed("_limit", why)
        reader._limit = limit
        reader.feed_data(b"x" * 1000)
        return transport.pauses

    assert asyncio.run(pauses(100)) == 1, python_changed("_limit (past twice it, the socket pauses)", why)
    assert asyncio.run(pauses(10_000)) == 0, python_changed("_limit (a raised one no longer pauses)", why)


def test_stream_reader_buffer_is_what_it_reads_next() -> None:
    why = "handing the bytes read past the end of DATA back to aiosmtpd's command loop"

    async def first_line() -> bytes:
        reader: Any = asyncio.StreamReader()
        reader.feed_data(b"RSET\r\n")
        assert isinstance(reader._buffer, bytearray), python_changed("_buffer", why)
        reader._buffer[0:0] = b"NOOP\r\n"
        line: bytes = await reader.readuntil()
        return line

    assert asyncio.run(first_line()) == b"NOOP\r\n", python_changed("_buffer", why)


# What the lab's classes define that aiosmtpd's SMTP has too, each on purpose: the private
# ones above, and public methods. Any other would silently replace one of aiosmtpd's.
OVERRIDES = {
    SMTPBase: {"_getaddr", "_getparams", "_create_envelope"},
    LabSMTP: {
        *("__init__", "connection_made", "connection_lost", "eof_received", "smtp_AUTH", "smtp_DATA", "push"),
        # Fault injection's say (chaos.py) before aiosmtpd's own, or around it for a hang-up.
        *("smtp_HELO", "smtp_EHLO", "smtp_MAIL", "smtp_RCPT"),
    },
    # Set on purpose, and documented by aiosmtpd: the longest command line.
    "LabSMTP()": {"line_length_limit"},
}


def shadowing(names: set[str]) -> str:
    return f"aiosmtpd {aiosmtpd.__version__} now has {sorted(names)} too: rename the lab's own"


@pytest.mark.parametrize("cls", [SMTPBase, LabSMTP])
def test_no_method_of_the_lab_replaces_one_of_aiosmtpd_unawares(cls: type[SMTP]) -> None:
    shadowed = {name for name in vars(cls) if hasattr(SMTP, name) and (name == "__init__" or name[:2] != "__")}
    assert shadowed == OVERRIDES[cls], shadowing(shadowed ^ OVERRIDES[cls])


def test_no_attribute_of_the_lab_replaces_one_of_aiosmtpd_unawares() -> None:
    loop = asyncio.new_event_loop()
    try:
        plain = SMTP(RecordingHandler(), hostname="probe.test", loop=loop)
        lab = LabSMTP(RecordingHandler(), sessions=Sessions(1), max_line_length=1000, hostname="probe.test", loop=loop)
        ours = set(vars(lab)) - set(vars(plain))
        shadowed = {name for name in ours if hasattr(SMTP, name)}
        assert shadowed == OVERRIDES["LabSMTP()"], shadowing(shadowed ^ OVERRIDES["LabSMTP()"])
    finally:
        loop.close()
