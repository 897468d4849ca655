"""A small asyncio SMTP client: one connection, with PIPELINING, STARTTLS and AUTH.

smtplib waits for each reply before the next command. This client sends MAIL, every RCPT
and DATA in one write when the server offers PIPELINING (RFC 2920), which halves the round
trips per message, and it reports every command and reply to an optional observer, which
the interactive mode prints.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
_READ_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500


class SmtpError(Exception):
    """The server refused a step. `stage` is connect, helo, starttls, auth, mail, rcpt or data."""

    def __init__(self, stage: str, reply: Reply, refused: dict[str, Reply] | None = None) -> None:
        super().__init__(f"{stage}: {reply}")
        self.stage = stage
        self.reply = reply
        self.refused = refused or {}


class SmtpConnectionError(Exception):
    """The connection could not be made, or was lost."""


def wire_data(message: bytes) -> bytes:
    """The DATA payload for `message` (CRLF line endings): dot-stuffed, with the final '.'."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_DOT.sub(b"..", message) + b".\r\n"


Observer = Callable[[str, str], None]  # ("C" or "S", line)


class SmtpClient:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float, observer: Observer | None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._observe = observer
        self.extensions: dict[str, str] = {}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        local_name: str = "maillab-agent",
        observer: Observer | None = None,
    ) -> SmtpClient:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=_READ_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise SmtpConnectionError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
        client = cls(reader, writer, timeout, observer)
        try:
            greeting = await client._read_reply()
            if greeting.code != 220:
                raise SmtpError("connect", greeting)
            await client.ehlo(local_name)
        except BaseException:
            client.abort()
            raise
        return client

    async def ehlo(self, local_name: str) -> None:
        reply = await self.command(f"EHLO {local_name}")
        if reply.code == 250:
            lines = reply.text.split("\n")[1:]
            self.extensions = {word.upper(): rest for word, _, rest in (line.partition(" ") for line in lines)}
            return
        reply = await self.command(f"HELO {local_name}")
        if reply.code != 250:
            raise SmtpError("helo", reply)
        self.extensions = {}

    async def starttls(self, context: ssl.SSLContext, server_hostname: str, local_name: str) -> None:
        if "STARTTLS" not in self.extensions:
            raise SmtpError("starttls", Reply(502, "the server does not offer STARTTLS"))
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpError("starttls", reply)
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.start_tls(context, server_hostname=server_hostname)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise SmtpConnectionError(f"TLS handshake failed: {exc}") from exc
        await self.ehlo(local_name)

    async def login(self, user: str, password: str) -> None:
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" not in mechanisms:
            raise SmtpError("auth", Reply(504, f"the server offers no AUTH PLAIN (it offers: {mechanisms or 'none'})"))
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        reply = await self.command(f"AUTH PLAIN {token}", shown="AUTH PLAIN <credentials>")
        if reply.code != 235:
            raise SmtpError("auth", reply)

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> dict[str, Reply]:
        """Send one message (`data` from `wire_data`); returns the refused recipients, if only some were.

        Raises SmtpError when the sender, every recipient or the message itself is refused.
        """
        parameters = ""
        if "SIZE" in self.extensions:
            parameters += f" SIZE={len(data)}"
        if "SMTPUTF8" in self.extensions and not all(address.isascii() for address in (mail_from, *rcpt_tos)):
            parameters += " SMTPUTF8"
        commands = [f"MAIL FROM:<{mail_from}>{parameters}", *(f"RCPT TO:<{rcpt}>" for rcpt in rcpt_tos), "DATA"]
        if "PIPELINING" in self.extensions:
            self._write(commands)
            replies = [await self._read_reply() for _ in commands]
        else:
            replies = []
            for command in commands:
                replies.append(await self.command(command))
                if not replies[-1].ok:
                    break
        mail_reply, rcpt_replies, data_reply = replies[0], replies[1 : 1 + len(rcpt_tos)], replies[1 + len(rcpt_tos) :]
        if not mail_reply.ok:
            await self._reset_if_open(data_reply)
            raise SmtpError("mail", mail_reply)
        refused = {rcpt: reply for rcpt, reply in zip(rcpt_tos, rcpt_replies, strict=False) if not reply.ok}
        if len(refused) == len(rcpt_tos):
            await self._reset_if_open(data_reply)
            raise SmtpError("rcpt", next(iter(refused.values())), refused)
        if not data_reply or data_reply[0].code != 354:
            await self._reset_if_open(data_reply)
            raise SmtpError("data", data_reply[0] if data_reply else Reply(0, "no reply to DATA"))
        self._writer.write(data)
        await self._drain()
        if self._observe:
            self._observe("C", f"<message, {len(data)} bytes>")
            self._observe("C", ".")
        final = await self._read_reply()
        if not final.ok:
            raise SmtpError("data", final, refused)
        return refused

    async def command(self, line: str, shown: str | None = None) -> Reply:
        self._write([line], shown)
        return await self._read_reply()

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        except (SmtpConnectionError, SmtpError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self._writer.close()

    async def _reset_if_open(self, data_reply: list[Reply]) -> None:
        if data_reply and data_reply[0].code == 354:
            # A pipelined DATA was taken although the transaction failed: end it empty.
            self._writer.write(b".\r\n")
            await self._read_reply()
        await self.command("RSET")

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.drain()
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise SmtpConnectionError(f"the connection was lost: {exc or 'timed out'}") from exc

    def _write(self, lines: Sequence[str], shown: str | None = None) -> None:
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"a line break in an SMTP command: {line!r}")
            if self._observe:
                self._observe("C", shown or line)
        self._writer.write("".join(f"{line}\r\n" for line in lines).encode())

    async def _read_reply(self) -> Reply:
        lines = []
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    raw = await self._reader.readuntil(b"\n")
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if self._observe:
                        self._observe("S", line)
                    if len(line) < 3 or not line[:3].isdigit():
                        raise SmtpConnectionError(f"not an SMTP reply: {line!r}")
                    lines.append(line[4:])
                    if line[3:4] != "-":
                        return Reply(int(line[:3]), "\n".join(lines))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            raise SmtpConnectionError(f"the connection was lost: {exc}") from exc
        except TimeoutError as exc:
            raise SmtpConnectionError(f"no reply within {self._timeout:g}s") from exc
        except asyncio.LimitOverrunError as exc:
            raise SmtpConnectionError("a reply line over 1 MiB") from exc
