"""Turning a stored record into what the inspector prints: a summary, as text or JSON.

Pure functions: a record in, a string out. A message that cannot be decoded still gets a
summary; what could not be read is left empty rather than raising.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default

from maillab_common.forward import Record


@dataclass(frozen=True)
class AttachmentSummary:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class MessageSummary:
    domain: str
    offset: int
    received: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    subject: str
    message_id: str
    size: int
    attachments: tuple[AttachmentSummary, ...]


def summarize(domain: str, record: Record) -> MessageSummary:
    delivery = record.delivery
    message = message_from_bytes(delivery.message, policy=default)
    return MessageSummary(
        domain=domain,
        offset=record.offset,
        received=delivery.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        mail_from=delivery.mail_from,
        rcpt_to=delivery.rcpt_tos,
        subject=_header(message, "Subject"),
        message_id=_header(message, "Message-ID"),
        size=len(delivery.message),
        attachments=tuple(_attachments(message)),
    )


def attachment_payloads(message: Message) -> list[tuple[str, str, bytes]]:
    """(filename, content type, decoded bytes) of every attachment in the message."""
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        if filename is None and part.get_content_disposition() != "attachment":
            continue
        payload = part.get_payload(decode=True)
        found.append((filename or "", part.get_content_type(), payload if isinstance(payload, bytes) else b""))
    return found


def as_text(summary: MessageSummary) -> str:
    lines = [
        f"=== {summary.received} {summary.domain} @{summary.offset}",
        f"  from:       <{summary.mail_from}>",
        f"  to:         {', '.join(f'<{rcpt}>' for rcpt in summary.rcpt_to)}",
        f"  subject:    {summary.subject}",
        f"  message-id: {summary.message_id}",
        f"  size:       {summary.size} bytes",
    ]
    lines += [
        f"  attachment: {a.filename} ({a.content_type}, {a.size} bytes, sha256 {a.sha256[:12]})"
        for a in summary.attachments
    ]
    return "\n".join(lines)


def as_json(summary: MessageSummary) -> str:
    return json.dumps(asdict(summary), ensure_ascii=False)


def _header(message: EmailMessage | Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, AttributeError):  # the email package's parser on malformed headers
        return ""
    return "" if value is None else " ".join(str(value).split())


def _attachments(message: Message) -> list[AttachmentSummary]:
    return [
        AttachmentSummary(
            filename=filename, content_type=content_type, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        )
        for filename, content_type, data in attachment_payloads(message)
    ]
