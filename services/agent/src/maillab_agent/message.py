"""Building the messages the agent sends: pure functions, no sockets.

`build_message` makes one message from what a user typed; `batch_messages` makes a
reproducible batch of test messages from a seed, each with attachments of varied types
(their contents come from testdata.py). How a message goes on the wire is smtp.py's.
Every value that reaches a header or an SMTP command is checked here first: a line break
there would inject headers or commands, and any other control character is not header text
(RFC 5322) and would reach a terminal that shows the message. Sizes and counts are bounded,
so that no input makes building a message slow or memory-hungry.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from maillab_agent.testdata import ATTACHMENT_KINDS, words
from maillab_common.addresses import InvalidAddress, parse_mailbox

DEFAULT_DOMAINS = ("alpha.test", "beta.test", "gamma.test")
DEFAULT_SENDER = "agent@maillab.test"
_SIZE = re.compile(r"(\d{1,12})\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)  # after strip(): linear
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}
_SIZE_UNITS |= {"g": 1024**3, "gb": 1024**3, "gib": 1024**3}
MAX_ATTACHMENT_SIZE = 1024**3  # one attachment; a batch is built in memory before it is sent
MAX_BATCH_MEMORY = 4 * 1024**3  # a batch is built whole before it is sent: see batch_memory
MAX_BATCH_COUNT = 1_000_000
MAX_RECIPIENTS = 1000  # per message; RFC 5321 asks servers to take at least 100
MAX_HEADERS = 1000  # extra headers per message
MAX_HEADER_TEXT = 16 * 1024  # characters in one header's value: folding costs more than linear
# Not header text (RFC 5322 VCHAR and WSP, or UTF-8): C0 controls but tab, DEL, C1 controls,
# the Unicode line and paragraph separators (Python's email package splits lines there), and
# lone surrogates, which is how Python passes on bytes that are not UTF-8.
_NOT_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_LINE_BREAK = re.compile("[\r\n]")
# RFC 5322 field-name: printable US-ASCII but the colon.
_FIELD_NAME = re.compile("[\x21-\x39\x3b-\x7e]{1,200}")
# Headers the agent writes itself, from its own flags: a second one would break the message.
_OWN_HEADERS = {"from", "to", "cc", "subject", "date", "message-id", "mime-version"}


class BadInput(ValueError):
    """Input the agent refuses before anything reaches the wire."""


class UnsafeInput(BadInput):
    """A value that would put a line break into a header or an SMTP command."""


class InvalidMailbox(BadInput):
    """An address that is not an RFC 5321 <Mailbox>."""


def check_mailbox(address: str) -> str:
    """`address` if it is a mailbox the server takes as sender and recipient; InvalidMailbox otherwise.

    maillab_common.addresses.parse_mailbox decides, so the agent refuses before connecting
    every address the server would refuse.
    """
    require_single_line(address, "an address")
    try:
        parse_mailbox(address)
    except InvalidAddress as exc:
        raise InvalidMailbox(f"{shorten(address)} is not a valid mailbox: {exc}") from None
    return address


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send, with its envelope."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    message_id: str
    attachments: tuple[Attachment, ...]
    data: bytes  # the message as sent, CRLF line endings


def require_single_line(value: str, what: str) -> str:
    """`value` if it is text for one header line: no line break, control character or non-UTF-8 byte."""
    if _LINE_BREAK.search(value):
        raise UnsafeInput(f"{what} must not contain a line break (CR or LF): {shorten(value)}")
    if found := _NOT_TEXT.search(value):
        character = found[0]
        if "\ud800" <= character <= "\udfff":
            raise UnsafeInput(f"{what} is not valid UTF-8: {shorten(value)}")
        raise UnsafeInput(
            f"{what} must not contain a control character (U+{ord(character):04X} at {found.start()}): {shorten(value)}"
        )
    return value


def require_text(value: str, what: str) -> str:
    """`value` if it can be encoded as UTF-8 (a body may hold any other character)."""
    if found := re.search("[\ud800-\udfff]", value):
        raise UnsafeInput(f"{what} is not valid UTF-8 (a byte that is not UTF-8 at {found.start()})")
    return value


def check_header(name: str, value: str) -> tuple[str, str]:
    """An extra header for `build_message`: an RFC 5322 field name, and a value of one line."""
    require_single_line(name, "a header name")
    if not _FIELD_NAME.fullmatch(name):
        raise BadInput(
            f"the header name {shorten(name)} is not an RFC 5322 field name"
            " (1 to 200 printable ASCII characters, no space or colon)"
        )
    if name.lower() in _OWN_HEADERS or name.lower().startswith("content-"):
        raise BadInput(f"the header {name} is set by the agent itself (use the flags for it)")
    require_single_line(value, f"the value of the header {name}")
    if len(value) > MAX_HEADER_TEXT:
        raise BadInput(f"the value of the header {name} is too long: at most {MAX_HEADER_TEXT} characters")
    return name, value


def _parsed_header(name: str, value: str) -> object:
    """`value` parsed as the header `name` and folded once, to see that it can be written."""
    try:
        parsed = SMTP.header_store_parse(name, value)[1]
        SMTP.fold_binary(name, parsed)
    # The email package's parsers for structured headers (addresses, message ids) can fail
    # on malformed values in ways of their own, not only with HeaderParseError.
    except (ValueError, LookupError, TypeError, AttributeError, RecursionError):
        raise BadInput(f"the value of the header {name} is not valid there: {shorten(value)}") from None
    return parsed


def shorten(value: str, limit: int = 80) -> str:
    """`value` as a Python literal for an error message, cut to about `limit` characters."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def parse_size(text: str) -> int:
    """'100KiB', '2M', '512' (bytes) -> a byte count, at most MAX_ATTACHMENT_SIZE."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise BadInput(f"{shorten(text)} is not a size such as 512, 100KiB or 2MiB")
    size = int(match[1]) * _SIZE_UNITS[(match[2] or "").lower()]
    if size > MAX_ATTACHMENT_SIZE:
        raise BadInput(f"{shorten(text)} is too large: at most 1GiB")
    return size


def parse_size_range(text: str) -> tuple[int, int]:
    """'100KiB' -> (102400, 102400); '10KiB-1MiB' -> (10240, 1048576)."""
    low, dash, high = text.partition("-")
    sizes = (parse_size(low), parse_size(high)) if dash else (parse_size(text),) * 2
    if sizes[0] > sizes[1]:
        raise BadInput(f"{shorten(text)}: the smaller size comes first")
    return sizes


def build_message(
    *,
    mail_from: str,
    to: Sequence[str],
    subject: str,
    body: str,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    html_body: str | None = None,
    attachments: Sequence[Attachment] = (),
    headers: Iterable[tuple[str, str]] = (),
    message_id: str,
    boundary_seed: str | None = None,
) -> Outgoing:
    recipients = (*to, *cc, *bcc)
    if len(recipients) > MAX_RECIPIENTS:
        raise BadInput(f"{len(recipients)} recipients: at most {MAX_RECIPIENTS} a message")
    for address in (mail_from, *recipients):
        check_mailbox(address)
    require_single_line(subject, "the subject")
    if len(subject) > MAX_HEADER_TEXT:
        raise BadInput(f"the subject is too long: at most {MAX_HEADER_TEXT} characters")
    headers = [check_header(name, value) for name, value in headers]
    if len(headers) > MAX_HEADERS:
        raise BadInput(f"{len(headers)} extra headers: at most {MAX_HEADERS}")
    require_text(body, "the body")
    if html_body is not None:
        require_text(html_body, "the HTML body")
    for attachment in attachments:
        require_single_line(attachment.filename, "an attachment's file name")
    message = EmailMessage(policy=SMTP)
    message["From"] = mail_from
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    for name, value in headers:
        parsed = _parsed_header(name, value)
        try:
            message[name] = parsed
        except ValueError as exc:  # a second Reply-To, say
            raise BadInput(f"the header {name}: {exc}") from None
    message.set_content(body)
    if html_body is not None:
        message.add_alternative(html_body, subtype="html")
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename)
    if boundary_seed is not None:
        # Fixed boundaries make the same seed give the same bytes.
        for number, part in enumerate(part for part in message.walk() if part.is_multipart()):
            part.set_boundary(f"=_maillab_{boundary_seed}_{number}")
    return Outgoing(
        mail_from=mail_from,
        rcpt_tos=recipients,
        subject=subject,
        message_id=message_id,
        attachments=tuple(attachments),
        data=message.as_bytes(),
    )


def batch_messages(
    *,
    seed: int,
    count: int,
    attachments: int,
    attachment_size: tuple[int, int] = (8 * 1024, 8 * 1024),
    html: bool = False,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    recipients_per_message: int = 1,
    mail_from: str = DEFAULT_SENDER,
    memory_budget: int = MAX_BATCH_MEMORY,
) -> list[Outgoing]:
    """`count` test messages; the same arguments always give the same messages.

    A batch that `batch_memory` says would take more than `memory_budget` bytes is refused.
    """
    if count > MAX_BATCH_COUNT:
        raise BadInput(f"{count} messages: at most {MAX_BATCH_COUNT:,} in one batch")
    if recipients_per_message > MAX_RECIPIENTS:
        raise BadInput(f"{recipients_per_message} recipients a message: at most {MAX_RECIPIENTS}")
    if (need := batch_memory(count, attachments, attachment_size[1], recipients_per_message)) > memory_budget:
        raise BadInput(
            f"the batch would take about {need / 1024**2:,.0f} MiB of memory, where at most"
            f" {memory_budget // 1024**2:,} MiB is allowed here: send fewer or smaller messages"
        )
    rng = random.Random(seed)
    messages = []
    for index in range(count):
        recipients = [
            f"user{rng.randrange(1000)}@{domains[(index + offset) % len(domains)]}"
            for offset in range(recipients_per_message)
        ]
        files = tuple(
            _attachment(rng, kind=(index + number) % len(ATTACHMENT_KINDS), number=number, size=attachment_size)
            for number in range(attachments)
        )
        body = words(rng, 40) + "\n"
        messages.append(
            build_message(
                mail_from=mail_from,
                to=recipients,
                subject=f"maillab batch {seed} message {index + 1} of {count}",
                body=body,
                html_body=f"<html><body><p>{body}</p></body></html>\n" if html else None,
                attachments=files,
                message_id=f"<batch-{seed}-{index + 1}@maillab-agent.test>",
                boundary_seed=f"{seed}_{index + 1}",
            )
        )
    return messages


def batch_memory(count: int, attachments: int, attachment_size: int, recipients_per_message: int) -> int:
    """About how many bytes `batch_messages` holds at most: each attachment raw and in base64,
    and each message's bytes twice (as built and as sent), with a kilobyte of headers."""
    message = 1024 + 40 * recipients_per_message + attachments * attachment_size * 4 // 3
    return count * (2 * message + attachments * attachment_size)


def _attachment(rng: random.Random, *, kind: int, number: int, size: tuple[int, int]) -> Attachment:
    file = ATTACHMENT_KINDS[kind]
    data = file.make(rng, max(rng.randint(*size), 1))
    return Attachment(filename=f"attachment-{number + 1}.{file.extension}", content_type=file.content_type, data=data)
