"""A stored record as data: the message summary that panels, JSON, `verify` and `show` read,
and the headline that one line (`list`, a `watch` that falls behind) reads.

Pure functions: a record in, a summary or a headline out; no I/O and no terminal. A
headline is what the header block alone says (the envelope, Subject, Message-ID), found
without the email package's parser but field for field as it finds them; a summary takes
the whole message apart (MIME parts, attachments and their SHA-256, the text body), and is
a headline too. A message that cannot be decoded still gets a summary; what could not be
read is left empty rather than raising, and a message too deeply nested for the email
package is summarised from its headers, with the reason in `problem`.

Every cost a message controls is bounded. The email package's header parser is slow and,
on some inputs (thousands of encoded words, parameters), super-linear in the length of a
field, so it is given at most FIELD_CHARACTERS of each field (the rest is kept as stored),
at most HEADER_BUDGET characters of fields per message, and at most MAX_PARTS MIME parts;
past that a message is summarised from its headers, with `problem` saying why. A headline
scans the header block in linear time and gives the parser only its two fields, each cut
to FIELD_CHARACTERS. Header values that repeat across messages (a part's
`text/plain; charset="utf-8"`) are parsed once a process (SHARED_FIELDS), still charged
to each message's budget.

The text in a summary is the message's text exactly (controls included): making it safe to
print is the renderers' job (render.py).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy, Policy
from email.utils import getaddresses
from typing import Any, TypeVar

from maillab_common.forward import Record
from maillab_inspector import quickmime

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
# What the web view may spend on the detail of one message: it answers requests, so a
# hostile message must not hold a worker for a minute, as it may hold `show`.
WEB_HEADER_BUDGET = 2 * 1024 * 1024
WEB_PARTS = 5_000
# Header values up to SHARED_CHARACTERS long are parsed once a process and the header object
# shared: the MIME walk reads the same few (`text/plain; charset="utf-8"`, `base64`,
# `attachment; filename="a1.bin"`) in every message. The SHARED_FIELDS used last are kept
# (at most about 6 MiB); a value that never comes back (a multipart boundary) soon goes.
SHARED_CHARACTERS = 128
SHARED_FIELDS = 512


@dataclass(frozen=True)
class AttachmentSummary:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Headline:
    """What the header block says: the envelope, Subject and Message-ID; one line's worth."""

    domain: str
    offset: int
    received: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    subject: str
    message_id: str
    size: int
    problem: str = ""  # why part of the Subject or Message-ID could not be decoded, if it could not


@dataclass(frozen=True, kw_only=True)
class MessageSummary(Headline):
    """The whole message taken apart. A headline too, whose `problem` also says why the
    attachments and body could not be read, if they could not."""

    attachments: tuple[AttachmentSummary, ...]
    preview: tuple[str, ...]  # the first lines of the text body


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


def web_budget() -> Budget:
    """The budget of the web view's detail of a message: whole for any message a program sends, and
    a few seconds at most for a hostile one (the thorough budget can take over a minute on some)."""
    return Budget(header_characters=WEB_HEADER_BUDGET, parts=WEB_PARTS)


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
            if len(value) <= SHARED_CHARACTERS and self.header_factory is _FIELDS.header_factory:
                parsed = _shared_field(name, value)
            else:
                parsed = super().header_fetch_parse(name, head)
            self.budget.parsed[name, value] = parsed
        return parsed


def _new_part(policy: Policy) -> EmailMessage:
    """Every message and MIME part the parser creates; counted against the budget."""
    if isinstance(policy, BoundedPolicy) and policy.budget is not None:
        policy.budget.spend_part()
    return EmailMessage(policy)


class SharedClassRegistry(HeaderRegistry):
    """The default header registry, but for the class it makes for a header name: one per
    kind of header a process, not one per header parsed. The stdlib's makes a new class
    each time, and classes are freed only by the cyclic garbage collector: tens of thousands
    of them piled up over a backlog (80 MiB and more, most of `watch`'s memory)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        kind = self.registry.get(name.lower(), self.default_class)
        made = self._made.get(kind)
        if made is None:  # at most one for each class in the registry, whatever the names
            made = self._made[kind] = super().__getitem__(name)
        return made


# Fields read one at a time (Subject, Message-ID): each is bounded, so no budget is needed.
_FIELDS = BoundedPolicy(header_factory=SharedClassRegistry(), message_factory=_new_part)


@functools.lru_cache(maxsize=SHARED_FIELDS)
def _shared_field(name: str, value: str) -> str:
    """The header object of a short field, made once a process. Header objects are never
    changed after they are made (a str, and read-only properties over what was parsed), and
    the inspector never changes or writes out a message it read, so one can serve every message."""
    return EmailPolicy.header_fetch_parse(_FIELDS, name, value)  # type: ignore[no-any-return]


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
    contents = read_contents(record, budget)
    subject, message_id = _raw(contents.headers, "Subject"), _raw(contents.headers, "Message-ID")
    problems = [contents.problem] if contents.problem else []
    return _made(
        MessageSummary,
        domain,
        record,
        subject,
        message_id,
        attachments=tuple(
            AttachmentSummary(filename=name, content_type=kind, size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, kind, data in contents.attachments
        ),
        preview=tuple(contents.text.splitlines()[:PREVIEW_LINES]),
        problem="; ".join(problems + _field_problems(subject, message_id)),
    )


def headline(domain: str, record: Record) -> Headline:
    """The record's headline, from its header block alone: the same Subject and Message-ID as
    its summary, at a fraction of the cost (no MIME parts, no parser but for those two fields)."""
    subject, message_id = _raw_fields(record.delivery.message)
    problem = "; ".join(_field_problems(subject, message_id))
    return _made(Headline, domain, record, subject, message_id, problem=problem)


Kind = TypeVar("Kind", bound=Headline)  # a headline or a summary


def _made(
    kind: type[Kind], domain: str, record: Record, subject: str | None, message_id: str | None, **rest: Any
) -> Kind:
    """A headline or a summary (`rest` its own fields): what both say, from the envelope and the two raw fields."""
    delivery = record.delivery
    return kind(
        domain=domain,
        offset=record.offset,
        received=delivery.received_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        mail_from=delivery.mail_from,
        rcpt_to=delivery.rcpt_tos,
        subject=field_text("Subject", subject),
        message_id=field_text("Message-ID", message_id),
        size=len(delivery.message),
        **rest,
    )


def _field_problems(subject: str | None, message_id: str | None) -> list[str]:
    """Each of the two fields longer than the parser is given that holds encoded words past that."""
    return [
        f"{name} over {FIELD_CHARACTERS // 1024} KiB: encoded words past that shown as stored"
        for name, raw in (("Subject", subject), ("Message-ID", message_id))
        if raw is not None and "=?" in raw[len(field_head(raw)) :]
    ]


# The header block as the email package's feedparser reads it: the lines (each ended by LF,
# CR or CRLF, the last perhaps by nothing) that start with "Name:", "From " or a space or tab;
# it ends at the first other line, the empty one included. Linear: no line can match two ways.
_HEADER_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[ \t])[^\r\n]*(?:\r\n|\r|\n|\Z))*")
# A field's value: the rest of its line and the continuation lines after it, without the last line end.
_FIELD_VALUE = re.compile(rb"[^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*")


def _raw_fields(message: bytes) -> tuple[str | None, str | None]:
    """The raw Subject and Message-ID (the first of each) as the email package's `raw_items()`
    gives them, from one linear scan of the header block."""
    block = _HEADER_BLOCK.match(message)
    assert block is not None  # it matches the empty string
    headers = message[: block.end()]
    lowered = headers.lower()  # field names are ASCII, and compared as str.lower() does
    return _raw_field(headers, lowered, b"subject:"), _raw_field(headers, lowered, b"message-id:")


def _raw_field(headers: bytes, lowered: bytes, label: bytes) -> str | None:
    if lowered.startswith(label):
        start = 0
    else:
        # The first line that starts with the label: after an LF, or after a CR ending a line of its own.
        starts = [at + 1 for at in (lowered.find(b"\n" + label), lowered.find(b"\r" + label)) if at >= 0]
        if not starts:
            return None
        start = min(starts)
    value = _FIELD_VALUE.match(headers, start + len(label))
    assert value is not None  # it matches the empty string
    # As the email package decodes header bytes and strips them (EmailPolicy.header_source_parse).
    return value[0].decode("ascii", "surrogateescape").lstrip(" \t")


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
    return field_text(name, _raw(message, name))


def field_text(name: str, raw: str | None) -> str:
    """A field's decoded value on one line, from its raw value (None: the message has no such field)."""
    if raw is None:
        return ""
    plain = name.lower() == "subject" and raw.isascii() and "=?" not in raw
    if plain or (name.lower() == "message-id" and _PLAIN_ID.fullmatch(raw)):
        return " ".join(_LINE_ENDS.sub("", raw).split())
    return " ".join(_decoded(_FIELDS, name, raw).split())


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


# What the catalogue keeps of one message (catalogue.py stores it; the web view lists and searches it).
SNIPPET_CHARACTERS = 200
CATALOGUE_TEXT = 64 * 1024  # characters of the text body kept for full-text search
# Characters of one header's decoded text kept for listing (a legitimate Subject is at most
# 16 KiB, the agent's limit); the field as stored is always in the forward file.
CATALOGUE_FIELD = 32 * 1024
# Header fields read for addresses, and addresses kept, per role (From; To and Cc): a
# message of 100,000 recipients is catalogued under its first few thousand.
ADDRESS_FIELDS = 64
MAX_ADDRESSES = 4096


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One record as the catalogue keeps it (catalogue.py): where it is, what lists show, what search reads.

    Every text is valid Unicode (bytes that were not are replaced), so that it can be stored and sent as JSON.
    """

    id: str  # stable across a reindex: the file, the offset and the transaction
    domain: str
    inode: int
    offset: int
    length: int
    received: int  # epoch seconds, UTC
    mail_from: str
    rcpt_to: tuple[str, ...]
    header_from: str
    header_to: str
    header_cc: str
    from_addresses: tuple[str, ...]  # addr-specs in the header From
    to_addresses: tuple[str, ...]  # addr-specs in the header To and Cc
    subject: str
    date: str
    message_id: str  # without <>
    size: int
    snippet: str
    text: str  # the text body, its first CATALOGUE_TEXT characters
    attachments: tuple[AttachmentSummary, ...]
    problem: str


def entry_id(domain: str, offset: int, transaction_id: str) -> str:
    return hashlib.sha256(f"{domain}\0{offset}\0{transaction_id}".encode()).hexdigest()[:16]


def catalogue_entry(domain: str, record: Record, inode: int) -> Entry:
    """What the catalogue keeps of `record`, read from file `domain` (whose inode is `inode`).

    The shapes programs send are read by quickmime, at a fraction of the email package's
    cost; the rest by the email package, on a summary's budget, once. Hostile content never
    raises; what could not be read is empty, and `problem` says why.
    """
    delivery = record.delivery
    quick = quickmime.contents(delivery.message)
    if quick is not None:
        fields, body, attachments, problems = quick.fields, quick.text, quick.attachments, []
    else:
        contents = read_contents(record)
        fields, body, attachments = list(contents.headers.raw_items()), contents.text, contents.attachments
        problems = [contents.problem] if contents.problem else []
    subject, message_id = _first_raw(fields, "Subject"), _first_raw(fields, "Message-ID")
    text = valid_text(body[:CATALOGUE_TEXT])
    return Entry(
        id=entry_id(domain, record.offset, delivery.transaction_id),
        domain=domain,
        inode=inode,
        offset=record.offset,
        length=record.length,
        received=int(delivery.received_at.timestamp()),
        mail_from=delivery.mail_from,
        rcpt_to=delivery.rcpt_tos,
        header_from=_listed(fields, "From"),
        header_to=_listed(fields, "To"),
        header_cc=_listed(fields, "Cc"),
        from_addresses=_addresses(fields, ("from",)),
        to_addresses=_addresses(fields, ("to", "cc")),
        subject=_field_listed("Subject", subject),
        date=_listed(fields, "Date"),
        message_id=_field_listed("Message-ID", message_id).strip().strip("<>"),
        size=len(delivery.message),
        snippet=" ".join(text[: SNIPPET_CHARACTERS * 8].split())[:SNIPPET_CHARACTERS],
        text=text,
        attachments=tuple(
            AttachmentSummary(
                filename=valid_text(name),
                content_type=valid_text(kind),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
            for name, kind, data in attachments
        ),
        problem=valid_text("; ".join(problems + _field_problems(subject, message_id))),
    )


def valid_text(text: str) -> str:
    """`text` with what is not Unicode (bytes read as surrogates) replaced: it can be stored, and sent as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no byte became
        return text.encode("utf-8", "replace").decode("utf-8")


def _first_raw(fields: list[tuple[str, str]], name: str) -> str | None:
    """The first field called `name`, as stored (`_raw` over a message's raw items)."""
    return next((value for key, value in fields if key.lower() == name.lower()), None)


def _listed(fields: list[tuple[str, str]], name: str) -> str:
    return _field_listed(name, _first_raw(fields, name))


def _field_listed(name: str, raw: str | None) -> str:
    """A field's decoded text on one line, cut to CATALOGUE_FIELD.

    A field with nothing to decode (ASCII, no encoded word) is its raw value on one line: the
    header parser, the slowest part of a catalogue entry, would give back the same text (an
    address list as written, rather than as the parser spells it again).
    """
    if raw is not None and raw.isascii() and "=?" not in raw:
        return " ".join(raw[: CATALOGUE_FIELD * 2].split())[:CATALOGUE_FIELD]
    try:
        text = field_text(name, raw)
    except Exception:  # field_text is meant not to raise; a catalogue entry must not, whatever the header
        text = _as_stored(raw or "")
    return valid_text(text[:CATALOGUE_FIELD])


def _addresses(fields: list[tuple[str, str]], names: tuple[str, ...]) -> tuple[str, ...]:
    """The addr-specs (those with an '@') in the fields `names`, each field cut as the parser's are."""
    values = [value for key, value in fields if key.lower() in names][:ADDRESS_FIELDS]
    found: list[str] = []
    for value in values:
        try:
            pairs = getaddresses([" ".join(_LINE_ENDS.sub("", field_head(value)).split())])
        except Exception:  # hostile syntax the address parser trips over
            continue
        found += [valid_text(address) for _, address in pairs if "@" in address]
        if len(found) >= MAX_ADDRESSES:
            break
    return tuple(dict.fromkeys(found[:MAX_ADDRESSES]))


@dataclass(frozen=True)
class Detail:
    """One message as the web view shows it: every header, the text and HTML bodies, the attachments."""

    headers: list[tuple[str, str]]
    text: str
    html: str  # the text/html body; '' when there is none
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, decoded bytes)
    problem: str


def message_detail(record: Record, budget: Budget | None = None) -> Detail:
    """The message a person asked about, read whole (on `budget`, the thorough one by default); never
    raises on hostile content."""
    contents = read_contents(record, budget or thorough_budget())
    problems = [contents.problem] if contents.problem else []
    html = ""
    if not contents.problem:
        try:
            part = contents.headers.get_body(preferencelist=("html",))
            content = part.get_content() if part is not None else ""
            html = content if isinstance(content, str) else ""
        except Exception:  # unknown charsets, broken MIME, past the budget
            problems.append("the HTML body cannot be decoded")
    try:
        shown = headers_shown(contents.headers)
    except Exception:  # headers_shown is meant not to raise; the detail must not
        shown = [(name, _as_stored(value)) for name, value in contents.headers.raw_items()]
    return Detail(
        headers=[(valid_text(name), valid_text(value)) for name, value in shown],
        text=valid_text(contents.text),
        html=valid_text(html),
        attachments=[(valid_text(name), valid_text(kind), data) for name, kind, data in contents.attachments],
        problem="; ".join(problems),
    )
