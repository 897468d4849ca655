"""A stored record as data: the message summary that the renderers, `verify` and `show` read.

Pure functions: a record in, a summary out; no I/O and no terminal. A message that cannot
be decoded still gets a summary; what could not be read is left empty rather than raising,
and a message too deeply nested for the email package is summarised from its headers,
with the reason in `problem`.

Every cost a message controls is bounded. The email package's header parser is slow and,
on some inputs (thousands of encoded words, parameters), super-linear in the length of a
field, so it is given at most FIELD_CHARACTERS of each field (the rest is kept as stored),
at most HEADER_BUDGET characters of fields per message, and at most MAX_PARTS MIME parts;
past that a message is summarised from its headers, with `problem` saying why.

The text in a summary is the message's text exactly (controls included): making it safe to
print is the renderers' job (render.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy, Policy, default

from maillab_common.forward import Record

PREVIEW_LINES = 5
TOO_DEEP = "MIME parts nested too deeply to read: headers only"
# The header parser gets at most this much of one field, cut at a space; the rest is shown
# as stored. A legitimate field (a subject, a long RFC 2231 file name) is far shorter.
FIELD_CHARACTERS = 8 * 1024
# What the email package may spend on the header fields of one message (its MIME walk reads
# each part's Content-Type, Content-Disposition and Content-Transfer-Encoding), in
# characters: each time a field is read, FETCH_COST, its length, and its length squared
# over QUADRATIC on top, as the parser's cost grows that way on some fields (thousands of
# parameters or addresses). About 800 ordinary attachments fit; the worst input costs
# about 2 s (bench/inspector.py).
HEADER_BUDGET = 512 * 1024
FETCH_COST = 16
QUADRATIC = 4096
# The same for `show`, which decodes every header of one message; past it, fields are
# shown as stored.
SHOW_HEADER_BUDGET = 512 * 1024
# MIME parts a summary takes apart; about as many as the email package can nest.
MAX_PARTS = 1_000
# What `show` and `verify` may spend on one message they were asked about: far more than a
# summary (a legitimate message of 20,000 attachments is read whole), still bounded.
THOROUGH_HEADER_BUDGET = 32 * 1024 * 1024
THOROUGH_PARTS = 20_000


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
    problem: str = ""  # why attachments and body, or part of a header, could not be read, if they could not


class TooMuchWork(Exception):
    """The message asks more of the email package than a summary spends on one message."""


class Budget:
    """What the email package may still spend on one message: header characters and MIME parts."""

    def __init__(self, header_characters: int = HEADER_BUDGET, parts: int = MAX_PARTS) -> None:
        self.header_characters, self.parts = header_characters, parts
        self._limits = (header_characters, parts)
        # The email package asks for one field many times (a part's Content-Type, say): each is parsed once.
        # Bounded by the budget, as each entry was paid for.
        self.parsed: dict[tuple[str, str], str] = {}

    def spend_header(self, characters: int) -> None:
        self.header_characters -= FETCH_COST + characters + characters * characters // QUADRATIC
        if self.header_characters < 0:
            raise TooMuchWork(f"header fields over {self._limits[0] // 1024} KiB to parse: headers only")

    def spend_part(self) -> None:
        self.parts -= 1
        if self.parts < 0:
            raise TooMuchWork(f"more than {self._limits[1]:,} MIME parts: headers only")


def thorough_budget() -> Budget:
    """The budget of `show` and `verify`, which read one message a person asked about."""
    return Budget(header_characters=THOROUGH_HEADER_BUDGET, parts=THOROUGH_PARTS)


class BoundedPolicy(EmailPolicy):
    """The default policy, with each field cut to FIELD_CHARACTERS and work counted against a budget."""

    budget: Budget | None = None

    def header_fetch_parse(self, name: str, value: str) -> str:
        if hasattr(value, "name"):  # already parsed (set by a program, not read from bytes)
            return value
        head = field_head(value)
        if self.budget is None:
            return super().header_fetch_parse(name, head)  # type: ignore[no-any-return]
        # Charged each time: what the email package does with a field after parsing it (its
        # older parameter parser, say) costs as much again, and the same field may repeat in every part.
        self.budget.spend_header(len(head))
        parsed = self.budget.parsed.get((name, value))
        if parsed is None:
            parsed = self.budget.parsed[name, value] = super().header_fetch_parse(name, head)
        return parsed


def _new_part(policy: Policy) -> EmailMessage:
    """Every message and MIME part the parser creates; counted against the budget."""
    if isinstance(policy, BoundedPolicy) and policy.budget is not None:
        policy.budget.spend_part()
    return EmailMessage(policy)


# Fields read one at a time (Subject, Message-ID): each is bounded, so no budget is needed.
_FIELDS = BoundedPolicy(header_factory=default.header_factory, message_factory=_new_part)


def bounded_policy(budget: Budget | None) -> BoundedPolicy:
    return _FIELDS.clone(budget=budget)  # type: ignore[call-arg]  # typeshed lists only EmailPolicy's own


def field_head(value: str) -> str:
    """The part of a header field that is parsed: all of it, or its first FIELD_CHARACTERS cut at a space."""
    if len(value) <= FIELD_CHARACTERS:
        return value
    cut = max(value.rfind(" ", 0, FIELD_CHARACTERS), value.rfind("\t", 0, FIELD_CHARACTERS))
    return value[: cut if cut > 0 else FIELD_CHARACTERS]


def parse_message(record: Record, budget: Budget | None = None) -> EmailMessage:
    """The whole message; raises RecursionError where its MIME parts nest thousands deep, and
    TooMuchWork where it has more parts or header characters than `budget` allows."""
    message = BytesParser(policy=bounded_policy(budget or Budget())).parsebytes(record.delivery.message)
    assert isinstance(message, EmailMessage)  # the policy's factory
    return message


def parse_headers(record: Record) -> EmailMessage:
    """The message's headers only: cheap, and possible however deep its MIME parts nest."""
    message = BytesParser(policy=_FIELDS).parsebytes(record.delivery.message, headersonly=True)
    assert isinstance(message, EmailMessage)
    return message


@dataclass(frozen=True)
class Contents:
    """What a person reads in a message: its headers, text body and attachments."""

    headers: EmailMessage
    text: str
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, decoded bytes)
    problem: str = ""  # why the body and attachments are missing, when they are


def read_contents(record: Record, budget: Budget | None = None) -> Contents:
    """The message taken apart; from its headers only where the email package cannot do more."""
    try:
        message = parse_message(record, budget)
        return Contents(message, text_body(message), attachment_payloads(message))
    except RecursionError:
        return Contents(parse_headers(record), "", [], TOO_DEEP)
    except TooMuchWork as exc:
        return Contents(parse_headers(record), "", [], str(exc))
    except Exception as exc:  # hostile MIME the email package trips over (IndexError, TypeError, ...)
        return Contents(parse_headers(record), "", [], f"MIME parts unreadable ({type(exc).__name__}): headers only")


def summarize(domain: str, record: Record, budget: Budget | None = None) -> MessageSummary:
    delivery = record.delivery
    contents = read_contents(record, budget)
    message = contents.headers
    problems = [contents.problem] if contents.problem else []
    problems += [
        f"{name} over {FIELD_CHARACTERS // 1024} KiB: encoded words past that shown as stored"
        for name in ("Subject", "Message-ID")
        if _partly_decoded(message, name)
    ]
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
        problem="; ".join(problems),
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


def _raw(message: Message, name: str) -> str | None:
    return next((value for key, value in message.raw_items() if key.lower() == name.lower()), None)


# Values the header parser gives back unchanged (but for line ends), as tests/unit/test_inspector.py
# checks: an ASCII subject without encoded words, a plain Message-ID. Most are; it is the
# slowest part of a summary, which is what `list` prints thousands of.
_LINE_ENDS = re.compile(r"\r|\n")
_PLAIN_ID = re.compile(r"\s*<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+>\s*")


def header_text(message: Message, name: str) -> str:
    """The header's decoded value on one line; its raw value where decoding leaves nothing."""
    raw = _raw(message, name)
    if raw is None:
        return ""
    plain = name.lower() == "subject" and raw.isascii() and "=?" not in raw
    if plain or (name.lower() == "message-id" and _PLAIN_ID.fullmatch(raw)):
        return " ".join(_LINE_ENDS.sub("", raw).split())
    return " ".join(_decoded(_FIELDS, name, raw).split())


def _partly_decoded(message: Message, name: str) -> bool:
    """Whether the field is longer than the parser is given and holds encoded words past that."""
    raw = _raw(message, name)
    return raw is not None and "=?" in raw[len(field_head(raw)) :]


def headers_shown(message: Message) -> list[tuple[str, str]]:
    """Every header in order, decoded where it can be, as stored where it cannot or past the budget."""
    policy = bounded_policy(Budget(header_characters=SHOW_HEADER_BUDGET))
    return [(name, _decoded(policy, name, raw)) for name, raw in message.raw_items()]


def _decoded(policy: Policy, name: str, raw: str) -> str:
    try:
        text = str(policy.header_fetch_parse(name, raw))
    except Exception:  # the header parser on hostile input (ValueError, TypeError, ...), or TooMuchWork
        text = ""
    if not text.strip():
        return _as_stored(raw).strip()
    # Past FIELD_CHARACTERS, the field as stored (cut at a space, so no encoded word is split).
    return text + _as_stored(raw[len(field_head(raw)) :])


def _as_stored(raw: str) -> str:
    # Undecodable bytes arrive as surrogates, which no output stream can write.
    return str(raw).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
