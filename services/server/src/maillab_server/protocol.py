"""aiosmtpd's SMTP protocol with what a lab server needs on top: a connection limit and a clean shutdown.

`Sessions` knows every open connection. Over the limit, a new connection is answered 421
and closed. On shutdown, a connection in the middle of DATA may finish its message; every
other command, on every connection, is answered 421 and the connection closed.

This is the lab's policy only: what it needs of aiosmtpd's internals goes through
smtp_base.py, the one module that touches them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from aiosmtpd.smtp import syntax

from maillab_common.addresses import parse_path
from maillab_common.esmtp import ONCE
from maillab_server.config import ServerConfig
from maillab_server.data import DataScanner
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
# Wrong credentials (535): the second and third answers each come two seconds late, and the
# third is followed by 421 and a close. At most three guesses per connection, and every
# guess after a connection's first costs the guesser two seconds, whether it stays or not.
AUTH_FAILURES_BEFORE_CLOSE = 3
AUTH_FAILURE_DELAY = 2.0  # seconds; an asyncio.sleep, so other sessions go on meanwhile
_CREDENTIALS_INVALID = "535 "


class Sessions:
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.open: set[LabSMTP] = set()
        self.closing = False

    def in_data(self) -> int:
        return sum(session.in_data for session in self.open)

    async def shut_down(self, grace: float) -> None:
        """Refuse new commands, let messages being received finish within `grace`, close all."""
        self.closing = True
        for session in self.open:
            session.refuse_commands()
        await asyncio.gather(*(session.close_with_421() for session in list(self.open) if not session.in_data))
        deadline = time.monotonic() + grace
        while self.in_data() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(session.close_with_421() for session in list(self.open)))


class LabSMTP(SMTPBase):
    envelope_class = LabEnvelope
    # aiosmtpd refuses any MAIL parameter it does not know itself (and any with a "-"): this
    # one gets past, and stays in mail_options for the handler. RCPT passes it too, where
    # the handler ignores it rather than refuses it.
    passed_parameters = frozenset({ONCE})

    def __init__(
        self, handler: Any, *, sessions: Sessions, max_line_length: int, lenient: bool = False, **options: Any
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
        self.refused = False  # answered 421 as it came: aiosmtpd never saw the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The second call, after STARTTLS, finds the connection already counted.
        if self.transport is None and (reason := self._refusal()) is not None:
            self.refused = True
            log.warning("refused %r: %s", transport.get_extra_info("peername"), reason)
            connection: Any = transport  # a stream transport: it can write
            connection.write(f"421 4.3.2 {self.hostname} {reason}; try again later\r\n".encode())
            connection.close()  # once the reply is sent
            return
        super().connection_made(transport)
        self._sessions.open.add(self)

    def _refusal(self) -> str | None:
        """Why a new connection is answered 421 instead of the greeting, if it is."""
        if self._sessions.closing:
            return "shutting down"
        if len(self._sessions.open) >= self._sessions.max_connections:
            return f"too many connections (at most {self._sessions.max_connections})"
        return None

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self._sessions.open.discard(self)
        super().connection_lost(error)

    @syntax("AUTH <mechanism>", when="auth_enabled")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.auth_enabled:
            await self.push("502 5.5.1 AUTH not available: this server has no users")
            return
        failures = self._auth_failures
        await super().smtp_AUTH(arg)  # its 535 reply goes through push(), which counts and delays it
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
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        handler: Any = self.event_handler
        scanner = DataScanner(
            max_size=self.data_size_limit or 2**62,
            max_line_length=self.line_length_limit - 1,
            lenient=self._lenient,
            spool_threshold=getattr(handler, "spool_threshold", None),
        )
        spool: Spool | None = None
        try:
            with self.bulk_reader(_DATA_READ) as reader:
                while (finished := scanner.feed(await reader.read(_DATA_READ) or b"")) is None:
                    if scanner.spooling:
                        if spool is None:
                            spool = handler.open_spool()
                        spool.write(scanner.take())
                    if reader.at_eof():
                        return  # the client went away in the middle: nothing to store
            self.unread(finished.rest)  # pipelined commands, for the command loop
            if finished.problem is not None or finished.message is None:
                if spool is not None:
                    spool.close()  # before the reply: its disk space is free when the client hears
                self.end_transaction()
                await self.push(finished.problem.value if finished.problem else "451 4.3.0 Error")
                return
            if spool is not None:
                spool.finish(bytes(finished.message))
                # The handler's from here: it closes the spool once the store is done with it.
                envelope.spool, spool = spool, None
            else:
                # bytes, as aiosmtpd promises handlers; the bytearray goes at once, and the handler
                # may drop the message once converted: a message is never held more than twice.
                envelope.content = envelope.original_content = bytes(finished.message)
            del finished
            hook = getattr(handler, "handle_DATA", None)
            status = "250 OK" if hook is None else await hook(self, self.session, envelope)
            self.end_transaction()
            await self.push(status)
        finally:
            if spool is not None:
                spool.close()
            if envelope.spool is not None:  # a handler without handle_DATA, or one that failed
                envelope.spool.close()

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd quotes what the client sent in some replies ('500 Error: command "..." not
        # recognized'); a CR, NUL or other control byte there would break the reply's line.
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if text.startswith(_CREDENTIALS_INVALID):
            # A wrong password: from the second on, its answer comes late, so that a guesser
            # cannot hang up and try again at once (an asyncio.sleep: other sessions go on).
            self._auth_failures += 1
            if self._auth_failures > 1:
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
        take (comments, folding, obsolete syntax) gets aiosmtpd's 553.
        """
        parsed = parse_path(arg)
        if parsed is None:
            return None, None
        address, rest = parsed
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    def refuse_commands(self) -> None:
        async def shutting_down(arg: str | None) -> None:
            await self.close_with_421()

        self.answer_every_command_with(shutting_down)

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


def protocol_factory(handler: Any, config: ServerConfig, sessions: Sessions) -> Callable[[], LabSMTP]:
    """What the event loop calls for each connection: the server's whole SMTP configuration."""
    return partial(
        LabSMTP,
        handler,
        sessions=sessions,
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
