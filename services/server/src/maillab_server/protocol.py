"""aiosmtpd's SMTP protocol with what a lab server needs on top: a connection limit and a clean shutdown.

`Sessions` knows every open connection. Over the limit, a new connection is answered 421
and closed. On shutdown, a connection in the middle of DATA may finish its message; every
other command, on every connection, is answered 421 and the connection closed.

Fault injection (chaos.py) has its say here at connect, HELO/EHLO, AUTH and the reply to
DATA; at MAIL, RCPT and the end of DATA the handler asks, and a `HangUp` it raises closes
the connection here.

This is the lab's policy only: what it needs of aiosmtpd's internals goes through
smtp_base.py, the one module that touches them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol

from aiosmtpd.smtp import syntax

from maillab_common.addresses import parse_path
from maillab_common.esmtp import ONCE
from maillab_server.chaos import Chaos, HangUp
from maillab_server.config import ServerConfig
from maillab_server.data import DataScanner, Problem
from maillab_server.smtp_base import SMTPBase
from maillab_server.spool import LabEnvelope, Spool
from maillab_server.tls import LabLogins, tls_context

log = logging.getLogger(__name__)
# The most one DATA read takes. The reader holds up to twice this while a client sends faster than
# the server stores: with the spool threshold, what a session in DATA costs at most.
_DATA_READ = 256 * 1024
# C0, DEL and C1 (CSI, OSC ...), line separators and bidi controls: what maillab_common.text
# shows as escapes in logs goes back to a client as "?".
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
# Wrong credentials (535 from AUTH's own check, not a fault's 535): the second and third
# answers each come two seconds late, and the third is followed by 421 and a close. At most
# three guesses per connection, and every guess after a connection's first costs the guesser
# two seconds, whether it stays or not.
AUTH_FAILURES_BEFORE_CLOSE = 3
AUTH_FAILURE_DELAY = 2.0  # seconds; an asyncio.sleep, so other sessions go on meanwhile
_CREDENTIALS_INVALID = "535 "


class Connection(Protocol):
    """What `Sessions` needs of a connection, on either port (LabSMTP, or classroom.py's)."""

    in_data: bool

    def refuse_commands(self) -> None:
        """From now on, answer whatever comes with a refusal and close."""

    async def hang_up(self) -> None:
        """Say that the server is shutting down, and close."""


class Sessions:
    """Every open connection of the server, on every port: one connection limit, one shutdown."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open: set[Connection] = set()
        self.closing = False

    def refusal(self) -> str | None:
        """Why a new connection is refused instead of greeted, if it is."""
        if self.closing:
            return "shutting down"
        if len(self.open) >= self.max_connections:
            return f"too many connections (at most {self.max_connections})"
        return None

    def in_data(self) -> int:
        return sum(session.in_data for session in self.open)

    async def shut_down(self, grace: float) -> None:
        """Refuse new commands, let messages being received finish within `grace`, close all."""
        self.closing = True
        for session in self.open:
            session.refuse_commands()
        await asyncio.gather(*(session.hang_up() for session in list(self.open) if not session.in_data))
        deadline = time.monotonic() + grace
        while self.in_data() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(session.hang_up() for session in list(self.open)))


async def read_message(
    envelope: LabEnvelope, scanner: DataScanner, read: Callable[[], Awaitable[bytes]], open_spool: Callable[[], Spool]
) -> tuple[Problem | None, bytes] | None:
    """Read DATA to its end with `scanner`: the message into `envelope`, and what came after it.

    `read` gives the connection's next bytes (b"" at its end). A message past the scanner's
    spool threshold is not held: all but its last few bytes go to a spool (`open_spool`) as
    they come. Returns None when the client went away in the middle (nothing to store), else
    (problem, rest): with a problem (too big, a line too long) nothing is kept and the spool
    is closed already, so its disk space is free before the client hears; without one the
    envelope holds the message, in `content` or, spooled, in `spool` (closed by whoever
    takes it: the handler, or the caller if it does not).
    """
    spool: Spool | None = None
    try:
        while (finished := scanner.feed(chunk := await read())) is None:
            if scanner.spooling:
                if spool is None:
                    spool = open_spool()
                spool.write(scanner.take())
            if not chunk:
                return None
        if finished.problem is not None or finished.message is None:
            return finished.problem or Problem.TOO_BIG, finished.rest  # no message comes only with a problem
        if spool is not None:
            spool.finish(bytes(finished.message))
            envelope.spool, spool = spool, None
        else:
            # bytes, as aiosmtpd promises handlers; the bytearray goes at once, and the handler
            # may drop the message once converted: a message is never held more than twice.
            envelope.content = envelope.original_content = bytes(finished.message)
        return None, finished.rest
    finally:
        if spool is not None:
            spool.close()


class LabSMTP(SMTPBase):
    envelope_class = LabEnvelope
    # aiosmtpd refuses any MAIL parameter it does not know itself (and any with a "-"): this
    # one gets past, and stays in mail_options for the handler. RCPT passes it too, where
    # the handler ignores it rather than refuses it.
    passed_parameters = frozenset({ONCE})

    def __init__(
        self,
        handler: Any,
        *,
        sessions: Sessions,
        max_line_length: int,
        lenient: bool = False,
        chaos: Chaos | None = None,
        **options: Any,
    ) -> None:
        self._lenient = lenient
        # aiosmtpd reads its limit (CRLF included, plus one) from this attribute as it starts.
        self.line_length_limit = max_line_length + 1
        super().__init__(handler, **options)
        self._sessions = sessions
        self.in_data = False
        # Without users AUTH can only fail: it is neither advertised (see the handler's EHLO) nor taken.
        self.auth_enabled = options.get("authenticator") is not None
        self._auth_failures = 0
        self._checking_credentials = False  # inside aiosmtpd's AUTH: a 535 now is a wrong password
        self.refused = False  # answered 421 (or a fault's reply) as it came: aiosmtpd never saw the connection
        self._chaos = Chaos() if chaos is None else chaos
        self._greeting_delay = 0.0  # a fault's, in seconds: the greeting comes this late
        self._hung_up = False  # a fault closed the connection: nothing more is said on it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The second call, after STARTTLS, finds the connection already counted.
        if self.transport is None and (reason := self._sessions.refusal()) is not None:
            self.refused = True
            log.warning("refused %r: %s", transport.get_extra_info("peername"), reason)
            connection: Any = transport  # a stream transport: it can write
            connection.write(f"421 4.3.2 {self.hostname} {reason}; try again later\r\n".encode())
            connection.close()  # once the reply is sent
            return
        if (
            self.transport is None
            and (fault := self._chaos.decide("connect", peer=transport.get_extra_info("peername"))) is not None
        ):
            if fault.action == "delay":
                self._greeting_delay = fault.delay
            else:  # a reply instead of the greeting, or none, and the connection closed
                self.refused = True
                stream: Any = transport
                if fault.action == "reply":
                    stream.write(f"{fault.reply}\r\n".encode())
                stream.close()
                return
        super().connection_made(transport)
        self._sessions.open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self._sessions.open.discard(self)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels the session at the client's EOF but keeps the connection half open, and
        # so counted: a client that connects and closes before its greeting was sent (a port probe)
        # held its place (CLOSE-WAIT) until the idle timeout, and 100 of them locked the server.
        # The session is over (aiosmtpd reads nothing more, even what was sent before the EOF): close.
        if not self.refused:
            super().eof_received()
        return False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname or not await self.faulted("helo"):
            await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname or not await self.faulted("helo"):
            await super().smtp_EHLO(hostname)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        try:
            await super().smtp_MAIL(arg)  # the handler's hook has chaos's say
        except HangUp as hang_up:
            await self.hang_up_for(hang_up)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        try:
            await super().smtp_RCPT(arg)
        except HangUp as hang_up:
            await self.hang_up_for(hang_up)

    async def faulted(self, stage: str) -> bool:
        """Whether a fault at `stage` answered the command (or closed the connection) instead of the lab."""
        assert self.session is not None and self.envelope is not None
        envelope = self.envelope
        try:
            reply = await self._chaos.intervene(
                stage,
                peer=self.session.peer,
                sender=envelope.mail_from,
                recipients=tuple(envelope.rcpt_tos),
                before_delay=self.extend_idle_timeout,
            )
        except HangUp as hang_up:
            await self.hang_up_for(hang_up)
            return True
        if reply is None:
            return False
        await self.push(reply)
        return True

    async def hang_up_for(self, hang_up: HangUp) -> None:
        """Close as a fault says: after its reply (a 421), or without one; nothing more is said after."""
        if hang_up.reply is not None:
            await self.push(hang_up.reply)
        self._hung_up = True

        async def ignored(arg: str | None) -> None:
            """Pipelined commands read before the close: not acted on (a DATA after it stores nothing)."""

        self.answer_every_command_with(ignored)
        if self.transport is not None:
            self.transport.close()  # once what was said before has gone

    @syntax("AUTH <mechanism>", when="auth_enabled")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.auth_enabled:
            await self.push("502 5.5.1 AUTH not available: this server has no users")
            return
        if await self.faulted("auth"):
            return
        failures = self._auth_failures
        # Its 535 reply goes through push(), which counts and delays it. Only here: a fault's 535
        # (`auth reply=535`, `rcpt-535@...`) is no guess at a password.
        self._checking_credentials = True
        try:
            await super().smtp_AUTH(arg)
        finally:
            self._checking_credentials = False
        if self.session is None or self._auth_failures == failures:
            return
        if self._auth_failures >= AUTH_FAILURES_BEFORE_CLOSE:
            log.warning("closing %r after %d failed AUTH attempts", self.session.peer, self._auth_failures)
            await self.close_with_421("too many failed AUTH attempts")

    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._receive_data(arg)
        finally:
            self.in_data = False

    async def _receive_data(self, arg: str) -> None:
        """aiosmtpd's smtp_DATA, with the data read in bulk by DataScanner instead of line by line.

        A message past the handler's `spool_threshold` (if it has one) is not held: the scanner
        hands out all but its last few bytes as they come, and they go to the handler's spool.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, LabEnvelope)
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if await self.faulted("data"):
            self.end_transaction()  # refused as a whole: the client starts again with MAIL
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        handler: Any = self.event_handler
        scanner = DataScanner(
            max_size=self.data_size_limit or 2**62,
            max_line_length=self.line_length_limit - 1,
            lenient=self._lenient,
            spool_threshold=getattr(handler, "spool_threshold", None),
        )
        try:
            with self.bulk_reader(_DATA_READ) as reader:
                result = await read_message(
                    envelope, scanner, partial(reader.read, _DATA_READ), lambda: handler.open_spool()
                )
            if result is None:
                return  # the client went away in the middle: nothing to store
            problem, rest = result
            self.unread(rest)  # pipelined commands, for the command loop
            if problem is not None:
                self.end_transaction()
                await self.push(problem.value)
                return
            hook = getattr(handler, "handle_DATA", None)
            try:
                status = "250 OK" if hook is None else await hook(self, self.session, envelope)
            except HangUp as hang_up:
                self.end_transaction()
                await self.hang_up_for(hang_up)
                return
            self.end_transaction()
            await self.push(status)
        finally:
            if envelope.spool is not None:  # a handler without handle_DATA, or one that failed
                envelope.spool.close()

    async def push(self, status: str | bytes) -> None:
        if self._hung_up:
            return  # a fault closed the connection: pipelined commands read before it get no reply
        if self._greeting_delay:  # the first reply is the greeting
            delay, self._greeting_delay = self._greeting_delay, 0.0
            self.extend_idle_timeout(delay)
            await asyncio.sleep(delay)
        # aiosmtpd quotes what the client sent in some replies ('500 Error: command "..." not
        # recognized'); a CR, NUL or other control byte there would break the reply's line.
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if self._checking_credentials and text.startswith(_CREDENTIALS_INVALID):
            # A wrong password: from the second on, its answer comes late, so that a guesser
            # cannot hang up and try again at once (an asyncio.sleep: other sessions go on).
            self._auth_failures += 1
            if self._auth_failures > 1:
                self.extend_idle_timeout(AUTH_FAILURE_DELAY)
                await asyncio.sleep(AUTH_FAILURE_DELAY)
        if not text.isprintable():
            # Control bytes, and the surrogates that undecodable client bytes become, go as "?".
            text = _CONTROL_CHARACTERS.sub("?", text).encode("utf-8", "replace").decode("utf-8")
        await super().push(text)

    def parse_address(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL, RCPT or VRFY argument, and the text after it (its parameters).

        aiosmtpd parses addresses with the email package's RFC 5322 parser: slow on a plain
        address, and super-linear on hostile ones (a 500-character run of quotes or comments
        costs about 60 times an honest address, growing with the square of the length; 1,000
        nested comments raise RecursionError). `parse_path` is one linear regular expression
        over RFC 5321 paths, as lenient as aiosmtpd where clients rely on it; what it does not
        take (comments, folding, obsolete syntax) gets aiosmtpd's 553. A local part past
        RFC 5321's 64 octets is taken, as aiosmtpd takes it (its local_part_limit is 0).
        """
        parsed = parse_path(arg)
        return (None, None) if parsed is None else parsed

    def refuse_commands(self) -> None:
        async def shutting_down(arg: str | None) -> None:
            await self.close_with_421()

        self.answer_every_command_with(shutting_down)

    async def hang_up(self) -> None:
        await self.close_with_421()

    async def close_with_421(self, reason: str = "shutting down") -> None:
        """Say 421 and close; a client that does not read its replies is cut off after a moment."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            await asyncio.wait_for(self.push(f"421 4.3.2 {self.hostname} {reason}; try again later"), 2.0)
        except (ConnectionError, OSError):
            pass
        except TimeoutError:
            transport: Any = self.transport
            if transport is not None:
                transport.abort()  # close() would wait for the unread replies forever
            return
        if self.transport is not None:
            self.transport.close()


def protocol_factory(
    handler: Any, config: ServerConfig, sessions: Sessions, *, chaos: Chaos | None = None
) -> Callable[[], LabSMTP]:
    """What the event loop calls for each connection: the server's whole SMTP configuration.

    Fault injection is the handler's (ForwardHandler.chaos), shared by both ports, unless
    `chaos` is given: the health listener's is an empty Chaos(), so connect, HELO/EHLO, AUTH
    and the reply to DATA, asked here, meet no rule there. Its MAIL, RCPT and end of DATA are
    still the shared handler's, which asks the shared rules; the health check sends only NOOP,
    which no rule is asked about.
    """
    return partial(
        LabSMTP,
        handler,
        sessions=sessions,
        chaos=getattr(handler, "chaos", None) if chaos is None else chaos,
        max_line_length=config.max_line_length,
        lenient=config.lenient_line_endings,
        hostname=config.hostname,
        ident="maillab ESMTP",
        data_size_limit=config.max_message_size,
        enable_SMTPUTF8=True,
        timeout=config.idle_timeout,
        tls_context=tls_context(config),
        require_starttls=config.require_tls,
        authenticator=LabLogins(config.auth_users) if config.auth_users else None,
        auth_required=config.require_auth,
        # Over plain connections too when STARTTLS is off: a lab may teach AUTH without TLS.
        auth_require_tls=config.starttls,
    )
