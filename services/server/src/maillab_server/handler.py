"""The aiosmtpd handler: it checks addresses, renders records and hands them to the store.

This is the only module that speaks SMTP replies; the store raises errors that carry them.
Fault injection (chaos.py) has its say at MAIL, RCPT and the end of DATA here, where the
lab's ESMTP port and the classroom port share it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from maillab_common.addresses import InvalidAddress, check_recipient, check_sender, group_by_domain
from maillab_common.esmtp import ONCE
from maillab_common.forward import (
    RECORD_END,
    Delivery,
    render_body,
    render_trace,
    to_mbox_line_endings,
)
from maillab_server.chaos import AFTER_STORE_DISCONNECT, BeforeDelay, Chaos, HangUp
from maillab_server.config import ServerConfig
from maillab_server.errors import StorageError
from maillab_server.smtp_base import SMTPBase
from maillab_server.spool import LabEnvelope, Spool
from maillab_server.store import ForwardStore, Part

log = logging.getLogger(__name__)


def trace_safe(text: str) -> str:
    """`text` made fit for a Received header: printable, no spaces or parentheses."""
    return "".join(c if c.isprintable() and c not in " ()" else "_" for c in text) or "unknown"


def advertise_extensions(responses: list[str], *, auth: bool = True) -> list[str]:
    """The EHLO reply with PIPELINING (RFC 2920) and XMAILLAB-ONCE added before its last line.

    aiosmtpd reads commands one at a time from its stream and answers each in order, so
    pipelined commands already work; it just does not say so, and clients then wait for
    every reply before the next command. Without `auth` (no users), aiosmtpd's AUTH line goes:
    every attempt could only fail.
    """
    kept = responses[:-1] if auth else [line for line in responses[:-1] if not line.startswith("250-AUTH")]
    return [*kept, "250-PIPELINING", f"250-{ONCE}", responses[-1]]


def _refused(session: Session, role: str, address: str, reply: str) -> str:
    """`reply`, logged: a lab user whose client is refused can see why in the server's log.

    The address is the client's own text; the log formatter shows its control characters
    as escapes.
    """
    log.info("refused %s <%s> from %r: %s", role, address, session.peer, reply)
    return reply


def _before_delay(server: Any) -> BeforeDelay | None:
    """What keeps `server`'s idle timer from cutting a fault's delay short: aiosmtpd's timer, on
    the SMTP port. The classroom port has none to keep: its idle timeout runs only while it reads."""
    return server.extend_idle_timeout if isinstance(server, SMTPBase) else None


def _client_gone(server: Any) -> bool:
    """Whether the client of `server` went away (its EOF, or the connection closed).

    The classroom port says so (`client_gone`); on the SMTP port aiosmtpd cancels the hook
    itself when that happens.
    """
    return bool(getattr(server, "client_gone", False))


class ForwardHandler:
    """aiosmtpd's hooks; classroom.py calls MAIL's, RCPT's and DATA's too, which ask `server` only
    about a fault's delay (its idle timer, whether its client is gone).

    MAIL's, RCPT's and DATA's raise `HangUp` when a fault closes the connection: the protocol
    closes it, with no reply or after the hang-up's own.
    """

    def __init__(self, store: ForwardStore, config: ServerConfig, chaos: Chaos | None = None) -> None:
        self._store = store
        self._config = config
        self.chaos = Chaos(config.chaos) if chaos is None else chaos

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return advertise_extensions(responses, auth=bool(self._config.auth_users))

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        try:
            check_sender(address)
        except InvalidAddress as exc:
            return _refused(session, "sender", address, f"553 5.1.7 {exc}")
        fault = await self.chaos.intervene(
            "mail", peer=session.peer, sender=address, before_delay=_before_delay(server)
        )
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self._config.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self._config.max_recipients})"
        try:
            check_recipient(address)
        except InvalidAddress as exc:
            return _refused(session, "recipient", address, f"553 5.1.3 {exc}")
        fault = await self.chaos.intervene(
            "rcpt",
            peer=session.peer,
            sender=envelope.mail_from,
            recipients=(address,),
            before_delay=_before_delay(server),
        )
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    @property
    def spool_threshold(self) -> int:
        """Past this many bytes of DATA the protocol spools the message (`open_spool`) instead of holding it."""
        return self._config.spool_threshold

    def open_spool(self) -> Spool:
        return Spool(self._store.root)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message, after fault injection's say: a message refused is never stored, and
        one that a fault hangs up on after the store (the lost reply) is stored as any other.

        A client that went away during a fault's delay gets nothing stored: it never hears of
        the message, and would send it again (the classroom dialect has no XMAILLAB-ONCE).
        """
        recipients = tuple(envelope.rcpt_tos)
        fault = self.chaos.decide("data-end", peer=session.peer, sender=envelope.mail_from, recipients=recipients)
        after_store = fault is not None and fault.action == AFTER_STORE_DISCONNECT
        if fault is not None and not after_store:
            # The spool, if any, stays the envelope's on every way out here: its owner closes it.
            if (reply := await fault.perform(_before_delay(server))) is not None:
                return reply
            if _client_gone(server):
                log.info("not stored: %r went away while its reply was delayed", session.peer)
                raise HangUp()
        reply = await self._store_message(session, envelope)
        if after_store and reply.startswith("250"):
            raise HangUp()
        return reply

    async def _store_message(self, session: Session, envelope: Envelope) -> str:
        started = time.monotonic()
        transaction_id = secrets.token_hex(8).upper()
        spool = envelope.spool if isinstance(envelope, LabEnvelope) else None
        if spool is None:
            message = to_mbox_line_endings(envelope.original_content or b"")
            envelope.content = envelope.original_content = None  # a large message is held once, not twice
            # The body once, for every domain: a 30 MB message to 100 domains is held once, not 100
            # times (and, with no line to escape, it is `message` itself).
            body: Part = render_body(message)
            length = len(message)
        else:
            # This handler's from here: closed once the store is done with it, and not before.
            assert isinstance(envelope, LabEnvelope)
            envelope.spool = None
            try:
                spool.check()
            except StorageError as exc:
                spool.close()
                log.warning("id=%s not stored: %s", transaction_id, exc)
                return exc.smtp_reply
            # Not held: the store copies the spool, and XMAILLAB-ONCE compares it, a chunk at a time.
            message = b""
            body = spool
            length = spool.length
        # Until the store has the spool, nothing may leave it open: every way out closes it.
        try:
            peer: Any = session.peer
            template = Delivery(
                # aiosmtpd keeps the null sender as "<>" (an empty one would read as no MAIL yet)
                mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                rcpt_tos=(),
                received_at=datetime.now(UTC).replace(microsecond=0),
                transaction_id=transaction_id,
                helo=trace_safe(session.host_name or ""),
                peer=trace_safe(str(peer[0]) if isinstance(peer, tuple) else str(peer)),
                server_name=trace_safe(self._config.hostname),
                tls=session.ssl is not None,
                message=message,
            )
            groups = group_by_domain(envelope.rcpt_tos)
            body_length = len(body) if isinstance(body, bytes) else body.length
            deliveries = {domain: replace(template, rcpt_tos=rcpts) for domain, rcpts in groups.items()}
            records = {
                domain: (render_trace(delivery, body_length), body, RECORD_END)
                for domain, delivery in deliveries.items()
            }
            once = deliveries if ONCE in envelope.mail_options else None
            future = self._store.submit(records, once=once)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        if spool is not None:
            # Done includes cancelled: a client that goes away cancels the wait below, and the
            # commit thread, if it has begun, reads the spool until it is done all the same.
            future.add_done_callback(lambda _: spool.close())
        try:
            already_stored = await asyncio.wrap_future(future)
        except StorageError as exc:
            log.warning("id=%s not stored: %s", transaction_id, exc)
            return exc.smtp_reply
        log.info(
            "id=%s from=<%s> rcpts=%d bytes=%d domains=%s%s ms=%.1f",
            transaction_id,
            envelope.mail_from,
            len(envelope.rcpt_tos),
            length,
            ",".join(groups),
            f" already-stored={','.join(already_stored)}" if already_stored else "",
            (time.monotonic() - started) * 1000,
        )
        if already_stored and len(already_stored) == len(records):
            return "250 2.0.0 OK: already stored by an earlier attempt"
        return f"250 2.0.0 OK: stored as {transaction_id}"
