"""One message in an SMTP session of its own: what `send` and `interactive` do on the wire.

The session connects, says EHLO, upgrades with STARTTLS and logs in with AUTH PLAIN when
asked, sends MAIL, RCPT and DATA, and always ends with QUIT. In the classroom dialect of
course programs it hands the whole session to classroom.py (HELO, LF, one command at a
time). Any way it can fail comes out as one SessionFailed naming the stage (connect, helo,
starttls, auth, mail, rcpt, data), so that the CLI can map each to an exit code of its
own. Commands and replies go to an optional observer as they happen; nothing here prints.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum

from maillab_agent import classroom
from maillab_agent.message import Outgoing
from maillab_agent.smtp import Envelope, Observer, Reply, SmtpClient, SmtpConnectionError, SmtpError, wire_data
from maillab_common.loop import run

LOCAL_NAME = "maillab-agent"
_REFUSED = {"rcpt": "every recipient refused", "mail": "sender refused", "data": "message refused"}


class Dialect(StrEnum):
    """The SMTP a server speaks: RFC 5321, or the classroom dialect of course programs."""

    RFC = "rfc"
    CLASSROOM = "classroom"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class SessionFailed(Exception):
    """The message was not sent: `stage` is where the session ended, the text says why."""

    def __init__(self, stage: str, text: str) -> None:
        super().__init__(text)
        self.stage = stage


@dataclass(frozen=True)
class Session:
    host: str
    port: int
    timeout: float
    starttls: bool = False
    credentials: Credentials | None = None
    observer: Observer | None = None
    dialect: Dialect = Dialect.RFC

    async def deliver_async(self, outgoing: Outgoing) -> dict[str, Reply]:
        """Send `outgoing`; returns the recipients that refused it, if only some did."""
        try:
            if self.dialect is Dialect.CLASSROOM:
                if self.starttls or self.credentials is not None:
                    raise ValueError("the classroom dialect has no STARTTLS or AUTH")
                return await classroom.deliver(
                    self.host,
                    self.port,
                    timeout=self.timeout,
                    domain=classroom.helo_domain(socket.gethostname()),
                    mail_from=outgoing.mail_from,
                    rcpt_tos=outgoing.rcpt_tos,
                    message=outgoing.data,
                    observer=self.observer,
                )
            client = await SmtpClient.connect(
                self.host, self.port, timeout=self.timeout, local_name=LOCAL_NAME, observer=self.observer
            )
            try:
                if self.starttls:
                    await client.starttls(_unchecked_tls(), self.host, LOCAL_NAME)
                if self.credentials is not None:
                    await client.login(self.credentials.user, self.credentials.password)
                envelope = Envelope(
                    mail_from=outgoing.mail_from, rcpt_tos=outgoing.rcpt_tos, data=wire_data(outgoing.data)
                )
                return await client.send(envelope)
            finally:
                await client.quit()
        except SmtpConnectionError as exc:
            raise SessionFailed("connect", f"cannot talk to {self.host}:{self.port}: {exc}") from exc
        except SmtpError as exc:
            detail = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in exc.refused.items()) or str(exc.reply)
            what = _REFUSED.get(exc.stage, f"{exc.stage} refused")
            raise SessionFailed(exc.stage, f"{what}: {detail}") from exc

    def deliver(self, outgoing: Outgoing) -> dict[str, Reply]:
        """deliver_async on an event loop of its own."""
        return run(self.deliver_async(outgoing))

    def probe(self) -> None:
        """Connect, greet and quit: SessionFailed at stage "connect" if the server is not there to talk to."""

        async def greet() -> None:
            client = await SmtpClient.connect(self.host, self.port, timeout=self.timeout, local_name=LOCAL_NAME)
            await client.quit()

        try:
            run(greet())
        except (SmtpConnectionError, SmtpError) as exc:
            raise SessionFailed("connect", f"cannot talk to {self.host}:{self.port}: {exc}") from exc


def _unchecked_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False  # a lab's certificate is self-signed
    context.verify_mode = ssl.CERT_NONE
    return context
