"""Turning a stored record into what the inspector prints: a summary, as a panel or JSON.

Pure functions: a record in, a summary or a renderable out. A message that cannot be
decoded still gets a summary; what could not be read is left empty rather than raising,
and a message too deeply nested for the email package is summarised from its headers,
with the reason in `problem`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from maillab_common.forward import Record

PREVIEW_LINES = 5
# Where a line is shown to a person (a panel, `list`), longer text is cut here: a 4 MB
# Subject is a fact about the message, not something to scroll past. JSON keeps it whole.
SHOWN_CHARACTERS = 300
TOO_DEEP = "MIME parts nested too deeply to read: headers only"


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
    preview: tuple[str, ...]  # the first lines of the text body
    problem: str = ""  # why attachments and body could not be read, if they could not


def parse_message(record: Record) -> EmailMessage:
    """The whole message; raises RecursionError where its MIME parts nest thousands deep."""
    message = message_from_bytes(record.delivery.message, policy=default)
    assert isinstance(message, EmailMessage)  # the default policy's factory
    return message


def parse_headers(record: Record) -> EmailMessage:
    """The message's headers only: cheap, and possible however deep its MIME parts nest."""
    message = BytesParser(policy=default).parsebytes(record.delivery.message, headersonly=True)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class Contents:
    """What a person reads in a message: its headers, text body and attachments."""

    headers: EmailMessage
    text: str
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, decoded bytes)
    problem: str = ""  # why the body and attachments are missing, when they are


def read_contents(record: Record) -> Contents:
    """The message taken apart; from its headers only where the email package cannot do more."""
    try:
        message = parse_message(record)
        return Contents(message, text_body(message), attachment_payloads(message))
    except RecursionError:
        return Contents(parse_headers(record), "", [], TOO_DEEP)
    except Exception as exc:  # hostile MIME the email package trips over (IndexError, TypeError, ...)
        return Contents(parse_headers(record), "", [], f"MIME parts unreadable ({type(exc).__name__}): headers only")


def summarize(domain: str, record: Record) -> MessageSummary:
    delivery = record.delivery
    contents = read_contents(record)
    message = contents.headers
    return MessageSummary(
        domain=domain,
        offset=record.offset,
        received=delivery.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        mail_from=delivery.mail_from,
        rcpt_to=delivery.rcpt_tos,
        subject=header_text(message, "Subject"),
        message_id=header_text(message, "Message-ID"),
        size=len(delivery.message),
        attachments=tuple(
            AttachmentSummary(filename=name, content_type=kind, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, kind, data in contents.attachments
        ),
        preview=tuple(contents.text.splitlines()[:PREVIEW_LINES]),
        problem=contents.problem,
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


def text_body(message: EmailMessage) -> str:
    """The plain-text body, or '' when there is none or it cannot be decoded."""
    try:
        part = message.get_body(preferencelist=("plain",))
        content = part.get_content() if part is not None else ""
    except (LookupError, ValueError, AttributeError):  # unknown charsets, broken MIME
        return ""
    return content if isinstance(content, str) else ""


def header_text(message: Message, name: str) -> str:
    """The header's decoded value on one line; its raw value where decoding leaves nothing."""
    raw = next((value for key, value in message.raw_items() if key.lower() == name.lower()), None)
    return "" if raw is None else " ".join(_decoded(message, name, raw).split())


def headers_shown(message: Message) -> list[tuple[str, str]]:
    """Every header in order, decoded where it can be, as stored where it cannot."""
    return [(name, _decoded(message, name, raw)) for name, raw in message.raw_items()]


def _decoded(message: Message, name: str, raw: str) -> str:
    try:
        text = str(message.policy.header_fetch_parse(name, raw))
    except Exception:  # the email package's header parser on hostile input (ValueError, TypeError, ...)
        text = ""
    if not text.strip():
        # Undecodable bytes arrive as surrogates, which no output stream can write.
        text = str(raw).encode("utf-8", "surrogateescape").decode("utf-8", "replace").strip()
    return text


def as_json(summary: MessageSummary) -> str:
    return json.dumps(
        {
            "domain": summary.domain,
            "offset": summary.offset,
            "received": summary.received,
            "mail_from": summary.mail_from,
            "rcpt_to": list(summary.rcpt_to),
            "subject": summary.subject,
            "message_id": summary.message_id,
            "size": summary.size,
            "attachments": [
                {"filename": a.filename, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
                for a in summary.attachments
            ],
            "problem": summary.problem,
        },
        ensure_ascii=False,
    )


def as_panel(summary: MessageSummary) -> Panel:
    fields = Table.grid(padding=(0, 1))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("from", Text(f"<{summary.mail_from}>"))
    fields.add_row("to", Text(", ".join(f"<{rcpt}>" for rcpt in summary.rcpt_to)))
    fields.add_row("subject", Text(shown(summary.subject)))
    fields.add_row("message-id", Text(shown(summary.message_id)))
    fields.add_row("size", Text(f"{summary.size} bytes"))
    for a in summary.attachments:
        fields.add_row("attachment", Text(f"{a.filename} ({a.content_type}, {a.size} bytes, sha256 {a.sha256[:12]})"))
    if summary.problem:
        fields.add_row("problem", Text(summary.problem, style="yellow"))
    parts: list[Table | Text] = [fields]
    if summary.preview:
        parts.append(Text("\n".join(shown(line) for line in summary.preview), style="dim"))
    return Panel(
        Group(*parts),
        title=Text(f"{summary.received} {summary.domain}"),
        title_align="left",
        subtitle=Text(f"offset {summary.offset}"),
        subtitle_align="right",
    )


def as_line(summary: MessageSummary) -> str:
    """One line per message, for `inspector list`."""
    return (
        f"{summary.received}  {summary.domain}  {shown(summary.message_id)}  <{summary.mail_from}>  "
        f"{summary.size}B  {len(summary.attachments)} att  {shown(summary.subject)}"
        + (f"  [{summary.problem}]" if summary.problem else "")
    )


def shown(text: str) -> str:
    """`text` cut to SHOWN_CHARACTERS, saying how much was left out."""
    if len(text) <= SHOWN_CHARACTERS:
        return text
    return f"{text[:SHOWN_CHARACTERS]}… ({len(text) - SHOWN_CHARACTERS} more characters)"
