"""The classroom listener: SMTP as the programs of a networking course speak it, on a port of its own.

The dialect: every line, both ways, ends with one LF; the client says `HELO <domain>`,
`MAIL FROM: <local@domain>`, `RCPT TO: <local@domain>` once per recipient, `DATA`, the
message, a line holding only `.`, and `QUIT`; the server answers with one line per reply,
`<code> <printable ASCII text>` LF, in one write, with only the codes 220 (greeting), 250,
354, 500 (unknown command), 501 (bad argument), 503 (out of order) and 221 (QUIT).

Why a protocol of its own and not aiosmtpd: aiosmtpd ends every reply with CRLF, answers
EHLO and HELP over several lines (a write each), and has replies in a dozen codes outside
the dialect (421, 451, 452, 502, 530, 552, 553, 554, 555 ...) spread over its command methods.
Bending all of that into the dialect would mean overriding most of it and checking every
aiosmtpd release for new replies. The dialect has seven commands; this module speaks them
itself and reuses everything else: the handler's MAIL, RCPT and DATA hooks (the same
address checks, records, store and durability: 250 only after the fsync), DataScanner for
DATA (lenient: LF or CRLF, `.` LF ends it, dot-unstuffing), the spool for large messages,
and `Sessions`: one connection limit and one shutdown for both ports.

Reading is lenient about line ends (LF or CRLF) and holds commands to the dialect's grammar,
as a course server would, so that `agent conform` grades this listener as it grades theirs:
- HELO takes one domain of letters and digits in dot-separated elements, each starting with
  a letter (no hyphens); anything else gets 501.
- MAIL FROM and RCPT TO take `<local@domain>`: the brackets needed, spaces allowed after the
  colon and before the line end, no parameters; the local part as addresses.parse_mailbox
  reads it, the domain in HELO's grammar. Then the handler's checks, as on the main port.
- Commands out of order get 503, unknown ones 500: EHLO among them, as the dialect has it.
- An RFC client gets a working session the way RFC 5321 4.1.4 has it meet an old server:
  its EHLO gets 500, and it falls back to HELO (smtplib does). After an EHLO, HELO takes
  any name RFC 5321 allows (a domain or an address literal) and paths any domain the main
  port takes, so that smtplib and the agent work with their own names. RSET and NOOP get
  250; VRFY, STARTTLS, AUTH and the rest get 500. No extensions: no SIZE, PIPELINING,
  8BITMIME, STARTTLS or AUTH.

Answers are strict: only the codes above. Whatever the dialect has no code for gets 500 and
text that says what happened: a message not stored (the store failed, or the disk is full),
a message too big, a line too long, too many recipients, too many connections, shutting
down, idle too long. The RFC answers for the first (451, 452) are transient, and the dialect
has no transient code; of its codes, only a negative one keeps every client from taking the
message as stored (a 221, the only other closing reply, is positive: a client that checks
for "2" would take it as success). So 500, "... not stored ...; try again later", and the
session goes on, as after 451 on the main port. 221 answers QUIT and nothing else.

Smuggling: here a bare LF ends a line and `.` LF ends DATA, so a message with LF "." LF
inside ends there and what follows is read as commands. That is the dialect, and why it has
a port of its own: the main port stays strict (data.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiosmtpd.smtp import Session

from maillab_common.addresses import InvalidAddress, normalise_domain, parse_mailbox, parse_path
from maillab_common.classroom import CODES, is_domain
from maillab_server.chaos import HangUp
from maillab_server.config import ServerConfig
from maillab_server.data import DataScanner
from maillab_server.handler import ForwardHandler
from maillab_server.protocol import Sessions, read_message
from maillab_server.spool import LabEnvelope

log = logging.getLogger(__name__)

# The handler's RFC codes that the dialect has a code for; every other refusal is 500.
_DIALECT_CODE = {"501": "501", "503": "503", "553": "501", "555": "501"}
_ENHANCED_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3} ")
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_READ = 256 * 1024  # the most one read takes, in DATA and out of it
_HANG_UP_WAIT = 2.0  # seconds a closing reply may take to go out before the connection is cut


def reply_line(code: str, text: str) -> bytes:
    """One reply as the dialect writes it: the code, a space, printable ASCII text, LF."""
    assert code in CODES, code
    return f"{code} {_NOT_PRINTABLE_ASCII.sub('?', text) or 'OK'}\n".encode("ascii")


def in_dialect(reply: str) -> bytes:
    """The handler's RFC reply in the dialect: its code mapped, its enhanced status code dropped."""
    code, _, text = reply.partition(" ")
    text = _ENHANCED_STATUS.sub("", text, count=1) if _ENHANCED_STATUS.match(text) else text
    if code.startswith("2"):
        return reply_line("250", text)
    return reply_line(_DIALECT_CODE.get(code, "500"), text)


def _is_rfc_name(text: str) -> bool:
    """A name RFC 5321 allows after HELO: a domain or an address literal."""
    try:
        normalise_domain(text)
    except InvalidAddress:
        return False
    return True


def mailbox_argument(arg: str, keyword: str, *, rfc: bool = False) -> str | None:
    """The address in `FROM: <local@domain>` (keyword FROM) or `TO: <...>` (TO); None if malformed.

    With `rfc` (an RFC client's session), the domain may be any that parse_mailbox takes.
    """
    if arg[: len(keyword) + 1].upper() != f"{keyword}:":
        return None
    path = arg[len(keyword) + 1 :].lstrip(" \t")
    parsed = parse_path(path) if path.startswith("<") else None
    if parsed is None or parsed[1].strip(" \t"):
        return None  # no path, or something after it: the dialect has no parameters
    try:
        mailbox = parse_mailbox(parsed[0])
    except InvalidAddress:
        return None
    return parsed[0] if rfc or is_domain(mailbox.domain) else None


class ClassroomSMTP(asyncio.StreamReaderProtocol):
    """One connection to the classroom listener."""

    def __init__(self, handler: ForwardHandler, *, config: ServerConfig, sessions: Sessions) -> None:
        self._input = asyncio.StreamReader(limit=_READ)
        super().__init__(self._input, client_connected_cb=self._converse)
        self._handler = handler
        self._as_server: Any = self  # the hooks' `server`, an aiosmtpd SMTP to their signature, unused by them
        self._config = config
        self._host = config.hostname
        self._sessions = sessions
        self._transport: asyncio.WriteTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending = bytearray()  # read, not yet taken as a command or as data
        self._session = Session(asyncio.get_running_loop())
        self._envelope = LabEnvelope()
        self._helo = False
        self._rfc_client = False  # it said EHLO: from then on, HELO and paths as RFC 5321 has them
        self._refusing = False
        self._greeting_delay = 0.0  # a fault's, in seconds
        # Refused as it came (or a fault replied or closed instead of the greeting): never a session.
        self.refused = False
        self.in_data = False
        # The client sent its EOF or the connection closed: the handler stores nothing after a
        # fault's delay then (the SMTP port's aiosmtpd cancels the whole session at either).
        self.client_gone = False
        self.ended = asyncio.Event()  # set once the conversation is over (never, for a refused connection)
        self._commands: dict[str, Callable[[str], Awaitable[bool]]] = {
            "HELO": self._hello,
            "MAIL": self._mail,
            "RCPT": self._rcpt,
            "DATA": self._data,
            "RSET": self._rset,
            "NOOP": self._noop,
            "QUIT": self._quit,
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.WriteTransport, transport)  # a stream transport (uvloop's is not a subclass)
        if (reason := self._sessions.refusal()) is not None:
            self.refused = True
            log.warning("refused %r on the classroom port: %s", transport.get_extra_info("peername"), reason)
            transport.write(reply_line("500", f"{self._host} {reason}; try again later"))
            transport.close()  # once the reply is sent
            return
        if (fault := self._handler.chaos.decide("connect", peer=transport.get_extra_info("peername"))) is not None:
            if fault.action == "delay":
                self._greeting_delay = fault.delay
            else:  # a reply instead of the greeting, or none, and the connection closed
                self.refused = True
                if fault.action == "reply":
                    transport.write(in_dialect(fault.reply))
                transport.close()
                return
        self._transport = transport
        self._sessions.open.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        if self.refused:
            return
        self._sessions.open.discard(self)
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        # What the client sent before its EOF is still read and answered (a course client may
        # shut down its side and read on), except a message whose reply a fault delays: that
        # one is not stored, as on the SMTP port, where an EOF ends the session at once.
        self.client_gone = True
        return bool(super().eof_received())

    # Shutdown (Sessions.shut_down): the next command is refused; hang_up says so now.
    def refuse_commands(self) -> None:
        self._refusing = True

    async def hang_up(self, reason: str = "shutting down") -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply_line("500", f"{self._host} {reason}; try again later"))
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.drain(), _HANG_UP_WAIT)
            except (ConnectionError, OSError):
                pass
            except TimeoutError:
                transport.abort()  # a client that does not read: close() would wait for it forever
                return
        transport.close()

    def abort(self) -> None:
        """Cut the connection off at once (tests, as their server stops)."""
        if self._transport is not None:
            self._transport.abort()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._session.peer = writer.get_extra_info("peername")
        try:
            await asyncio.sleep(self._greeting_delay)
            await self._say("220", f"{self._host} maillab classroom SMTP ready")
            while (line := await self._command_line()) is not None:
                if self._refusing:
                    await self.hang_up()
                    return
                verb, _, arg = line.strip(" \t").partition(" ")
                command = self._commands.get(verb.upper())
                self._rfc_client |= verb.upper() == "EHLO"
                if command is None:
                    await self._say("500", "Syntax error: command unrecognized")
                elif not await command(arg.strip(" \t")):
                    return
        except HangUp as hang_up:  # a fault (chaos.py): its reply, if any, then the close below
            if hang_up.reply is not None:
                await self._send(in_dialect(hang_up.reply))
        except (ConnectionError, OSError):
            pass  # the client went away
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("classroom session with %r failed", self._session.peer)
        finally:
            if self._transport is not None:
                self._transport.close()
            self.ended.set()

    async def _say(self, code: str, text: str) -> None:
        await self._send(reply_line(code, text))

    async def _send(self, line: bytes) -> None:
        """One reply, in one write: a course client reads each with one recv."""
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(line)
        try:
            # Bounded as a read is: a client that sends and never reads cannot keep its place.
            await asyncio.wait_for(self._writer.drain(), self._config.idle_timeout)
        except TimeoutError:
            log.info("closing %r on the classroom port: it reads no replies", self._session.peer)
            self._writer.transport.abort()

    async def _read(self) -> bytes:
        """The connection's next bytes; b"" at its end, or after the idle timeout (which closes it)."""
        try:
            return await asyncio.wait_for(self._input.read(_READ), self._config.idle_timeout)
        except TimeoutError:
            log.info("closing %r on the classroom port: idle for %.0fs", self._session.peer, self._config.idle_timeout)
            await self.hang_up(f"idle for {self._config.idle_timeout:.0f}s")
            return b""

    async def _command_line(self) -> str | None:
        """The next command line without its LF or CRLF; None at the end of the connection.

        A line longer than the longest allowed (its line end included) is answered 500 and
        skipped; it is never held whole.
        """
        limit = self._config.max_line_length
        too_long = False
        while True:
            end = self._pending.find(b"\n")
            if end == -1:
                if len(self._pending) > limit:
                    too_long = True
                    self._pending.clear()
                chunk = await self._read()
                if not chunk:
                    return None
                self._pending += chunk
                continue
            line = bytes(self._pending[:end])
            del self._pending[: end + 1]
            if too_long or end + 1 > limit:
                too_long = False
                await self._say("500", f"Line too long (at most {limit} bytes with its line end)")
                continue
            return line.removesuffix(b"\r").decode("utf-8", "surrogateescape")

    async def _hello(self, arg: str) -> bool:
        # An RFC client that tried EHLO falls back to HELO with its own name, which RFC 5321
        # allows to be any domain or address literal (smtplib's "[127.0.0.1]", "my-laptop").
        if not (is_domain(arg) or (self._rfc_client and _is_rfc_name(arg))):
            await self._say(
                "501", "Syntax: HELO domain (letters and digits, each dot-separated element starting with a letter)"
            )
            return True
        if await self._faulted("helo"):
            return True
        self._session.host_name = arg
        self._helo = True
        self._envelope = LabEnvelope()  # HELO starts afresh, as in RFC 5321
        await self._say("250", f"{self._host} Hello {arg}")
        return True

    async def _mail(self, arg: str) -> bool:
        if not self._helo:
            await self._say("503", "Bad sequence of commands: HELO first")
        elif self._envelope.mail_from is not None:
            await self._say("503", "Bad sequence of commands: the sender is given already")
        else:
            await self._path(arg, "MAIL FROM", self._handler.handle_MAIL)
        return True

    async def _rcpt(self, arg: str) -> bool:
        if self._envelope.mail_from is None:
            await self._say("503", "Bad sequence of commands: MAIL FROM first")
        else:
            await self._path(arg, "RCPT TO", self._handler.handle_RCPT)
        return True

    async def _path(self, arg: str, command: str, hook: Callable[..., Awaitable[str]]) -> None:
        """MAIL's or RCPT's path, checked by the dialect's grammar, then by the handler's hook."""
        address = mailbox_argument(arg, command.partition(" ")[2], rfc=self._rfc_client)
        if address is None:
            await self._say("501", f"Syntax: {command}: <local@domain>")
        else:
            await self._send(in_dialect(await hook(self._as_server, self._session, self._envelope, address, [])))

    async def _faulted(self, stage: str) -> bool:
        """Whether a fault at `stage` answered the command instead of the lab; HangUp goes up to `_converse`."""
        envelope = self._envelope
        reply = await self._handler.chaos.intervene(
            stage, peer=self._session.peer, sender=envelope.mail_from, recipients=tuple(envelope.rcpt_tos)
        )
        if reply is not None:
            await self._send(in_dialect(reply))
        return reply is not None

    async def _data(self, arg: str) -> bool:
        if not self._envelope.rcpt_tos:
            await self._say("503", "Bad sequence of commands: RCPT TO first")
        elif arg:
            await self._say("501", "Syntax: DATA")
        elif await self._faulted("data"):
            self._envelope = LabEnvelope()  # refused as a whole: the client starts again with MAIL FROM
        else:
            self.in_data = True
            try:
                await self._receive_data()
            finally:
                self.in_data = False
        return True

    async def _receive_data(self) -> None:
        await self._say("354", "End data with a line holding only a dot")
        envelope, self._envelope = self._envelope, LabEnvelope()
        scanner = DataScanner(
            max_size=self._config.max_message_size,
            max_line_length=self._config.max_line_length,
            lenient=True,
            spool_threshold=self._handler.spool_threshold,
        )
        pending, self._pending = bytes(self._pending), bytearray()

        async def read() -> bytes:
            nonlocal pending
            if pending:  # what came with the DATA line's read
                chunk, pending = pending, b""
                return chunk
            return await self._read()

        try:
            result = await read_message(envelope, scanner, read, self._handler.open_spool)
            if result is None:
                return  # the client went away in the middle: nothing to store
            problem, rest = result
            self._pending[0:0] = rest  # pipelined commands
            if problem is not None:
                await self._send(in_dialect(problem.value))
                return
            await self._send(in_dialect(await self._handler.handle_DATA(self._as_server, self._session, envelope)))
        finally:
            if envelope.spool is not None:  # the handler did not take it
                envelope.spool.close()

    async def _rset(self, arg: str) -> bool:
        self._envelope = LabEnvelope()
        await self._say("250", "OK")
        return True

    async def _noop(self, arg: str) -> bool:
        await self._say("250", "OK")
        return True

    async def _quit(self, arg: str) -> bool:
        await self._say("221", f"{self._host} closing connection")
        return False


def classroom_factory(handler: ForwardHandler, config: ServerConfig, sessions: Sessions) -> Callable[[], ClassroomSMTP]:
    """What the event loop calls for each connection to the classroom port."""

    def factory() -> ClassroomSMTP:
        return ClassroomSMTP(handler, config=config, sessions=sessions)

    return factory
