"""The client side of the classroom dialect: the SMTP that course programs speak.

Every line ends with a single LF, both ways (a CR before it is a syntax error to such
programs); the client says `HELO <domain>` (letters and digits in dot-separated elements,
each starting with a letter), `MAIL FROM: <path>`, `RCPT TO: <path>` once per recipient,
`DATA`, the dot-stuffed message with LF endings, a line holding only `.`, and `QUIT`. No
EHLO, ESMTP parameters, pipelining, STARTTLS or AUTH. Replies are one line each, from the
codes in CODES.

`ClassroomClient` speaks it one command at a time and reports every line to an optional
observer, as smtp.SmtpClient does; `deliver` sends one message with it, failing with the
same SmtpError stages as the RFC client (connect, helo, mail, rcpt, data). It reads replies
leniently (a CR before the LF is dropped); `reply_problem` says what is wrong with a reply's
form, for conform.py, which is strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from maillab_agent.smtp import Observer, Reply, SmtpConnectionError, SmtpError, dot_stuffed, open_stream
from maillab_common.classroom import CODES

FALLBACK_DOMAIN = "maillab"
MAX_REPLY = 1024  # course clients read each reply with one recv(1024)
_NOT_LET_DIG = re.compile(r"[^A-Za-z0-9]")
_LINE_END = re.compile(rb"\r*\n")
_REPLY = re.compile(rb"([0-9]{3}) ([\x20-\x7e]*)\n")


def helo_domain(hostname: str) -> str:
    """A HELO domain the classroom grammar accepts: `hostname` with what it forbids removed, or "maillab".

    Each dot-separated element keeps its ASCII letters and digits, from its first letter on;
    elements left empty are dropped.
    """
    elements = [_NOT_LET_DIG.sub("", element) for element in hostname.split(".")]
    elements = [element.lstrip("0123456789") for element in elements]
    return ".".join(element for element in elements if element) or FALLBACK_DOMAIN


def wire_message(message: bytes) -> bytes:
    """The DATA lines for `message`: LF line endings, dot-stuffed, ended by a line holding only '.'."""
    message = _LINE_END.sub(b"\n", message)
    if not message.endswith(b"\n"):
        message += b"\n"
    return dot_stuffed(message) + b".\n"


def reply_problem(raw: bytes) -> str | None:
    """What is wrong with the form of one reply as received (its line end included), or None.

    A reply is `<code> <text>` and one LF: a code from CODES, printable ASCII text, no CR,
    at most MAX_REPLY bytes.
    """
    if not raw.endswith(b"\n"):
        return "no line end"
    if raw.endswith(b"\r\n"):
        return "ends in CR LF, not LF"
    if len(raw) > MAX_REPLY:
        return f"{len(raw)} bytes: a course client reads {MAX_REPLY}"
    match = _REPLY.fullmatch(raw)
    if match is None:
        if raw[3:4] == b"-":
            return "a multi-line reply"
        return "not '<code> <printable ASCII text>'"
    if match[1].decode() not in CODES:
        return f"{match[1].decode()} is not a classroom code"
    return None


@dataclass(frozen=True)
class Heard:
    """One reply as received: `raw` with its line end; `extra` is what came with it after that line."""

    raw: bytes
    extra: bytes

    @property
    def line(self) -> str:
        return self.raw.rstrip(b"\r\n").decode("utf-8", errors="replace")

    @property
    def problem(self) -> str | None:
        if self.extra:
            return "more than one line in one reply"
        return reply_problem(self.raw)

    @property
    def reply(self) -> Reply | None:
        """The reply, read leniently (a CR or a space missing is forgiven); None when there is no code."""
        code = self.line[:3]
        if len(code) < 3 or not (code.isascii() and code.isdigit()):
            return None
        return Reply(int(code), self.line[4:])


@dataclass
class ClassroomClient:
    """One connection speaking the classroom dialect, a command and its reply at a time."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float  # for each reply
    observer: Observer | None = None
    received: bytes = b""  # what came in and is not read yet

    @classmethod
    async def open(cls, host: str, port: int, *, timeout: float, observer: Observer | None = None) -> ClassroomClient:
        """Connect; the greeting is not read yet (see `hear`)."""
        reader, writer = await open_stream(host, port, timeout=timeout)
        return cls(reader, writer, timeout, observer)

    def write_command(self, line: str) -> None:
        """Write one command line, ended by LF."""
        if "\r" in line or "\n" in line:
            raise ValueError(f"a line break in a classroom command: {line!r}")
        self._show("C", line)
        self.writer.write(f"{line}\n".encode())

    def write_data(self, content: bytes) -> None:
        """Write a message's DATA lines (from `wire_message`) in one write; the observer sees their size."""
        self._show("C", f"<message, {len(content)} bytes>")
        self._show("C", ".")
        self.writer.write(content)

    async def hear(self) -> Heard:
        """The next reply line, and whatever arrived after it with it; the wait is bounded by the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                while (end := self.received.find(b"\n")) == -1:
                    if len(self.received) > MAX_REPLY * 64:
                        raise SmtpConnectionError(f"a reply line over {MAX_REPLY * 64} bytes")
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        raise SmtpConnectionError("the server closed the connection")
                    self.received += chunk
        except TimeoutError as exc:
            raise SmtpConnectionError(f"no reply within {self.timeout:g}s") from exc
        except (ConnectionError, OSError) as exc:
            raise SmtpConnectionError(f"the connection was lost: {exc}") from exc
        heard = Heard(raw=self.received[: end + 1], extra=self.received[end + 1 :])
        self.received = self.received[end + 1 :]
        self._show("S", heard.line)
        return heard

    async def reply(self) -> Reply:
        """The next reply, read leniently: its last line, should an RFC server send several (`250-...`).

        SmtpConnectionError when a line has no code, or the whole reply does not come within
        the timeout: a server that sends continuation lines forever cannot hold the client.
        """
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    heard = await self.hear()
                    reply = heard.reply
                    if reply is None:
                        raise SmtpConnectionError(f"not an SMTP reply: {heard.line[:200]!r}")
                    if heard.raw[3:4] != b"-":
                        return reply
        except TimeoutError as exc:
            raise SmtpConnectionError(f"no whole reply within {self.timeout:g}s") from exc

    async def command(self, line: str) -> Reply:
        self.write_command(line)
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.writer.wait_closed()

    def _show(self, side: str, line: str) -> None:
        if self.observer:
            self.observer(side, line)


async def deliver(
    host: str,
    port: int,
    *,
    timeout: float,
    domain: str,
    mail_from: str,
    rcpt_tos: Sequence[str],
    message: bytes,
    observer: Observer | None = None,
) -> dict[str, Reply]:
    """Send one message in a classroom session of its own; returns the refused recipients, if only some were.

    Raises SmtpConnectionError when the server cannot be reached or stops answering, and
    SmtpError (stage helo, mail, rcpt or data) when it refuses a step. Always ends with QUIT.
    """
    client = await ClassroomClient.open(host, port, timeout=timeout, observer=observer)
    try:
        greeting = await client.reply()
        if greeting.code != 220:
            raise SmtpError("connect", greeting)
        if (reply := await client.command(f"HELO {domain}")).code != 250:
            raise SmtpError("helo", reply)
        if (reply := await client.command(f"MAIL FROM: <{mail_from}>")).code != 250:
            raise SmtpError("mail", reply)
        replies = {rcpt: await client.command(f"RCPT TO: <{rcpt}>") for rcpt in rcpt_tos}
        refused = {rcpt: reply for rcpt, reply in replies.items() if reply.code != 250}
        if len(refused) == len(rcpt_tos):
            raise SmtpError("rcpt", next(iter(refused.values())), refused)
        if (reply := await client.command("DATA")).code != 354:
            raise SmtpError("data", reply)
        client.write_data(wire_message(message))
        if (reply := await client.reply()).code != 250:
            raise SmtpError("data", reply)
        with contextlib.suppress(SmtpConnectionError):
            await client.command("QUIT")
        return refused
    except SmtpError:
        with contextlib.suppress(SmtpConnectionError):
            await client.command("QUIT")
        raise
    finally:
        await client.close()
