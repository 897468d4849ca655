"""The forward-file format: the contract between the server and the inspector.

A forward file (`/forward/<domain>`) is an mbox file: one record per message per
recipient domain, mboxrd-escaped, LF line endings, readable by mutt and Python's
`mailbox.mbox`. Each record carries an `X-Maillab-Length` trace header that gives the
exact byte length of the stored message, so a reader can tell a complete record from a
torn one. docs/forward-format.md describes the same bytes in prose.

Everything here is pure: bytes in, values out. Only the server's store writes these
files. The inspector reads them through its tail alone; the server reads back what its
store wrote (the XMAILLAB-ONCE lookup, the start-up repair), from inside the store.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

LENGTH_HEADER = "X-Maillab-Length"
NULL_SENDER_FROM_LINE = "MAILER-DAEMON"

# The trace block (From line up to and including the length header) of a valid record
# is far smaller than this; past it, unparseable bytes are damage, not a record in the
# middle of being read.
MAX_TRACE_BYTES = 256 * 1024
# Where damage has no record after it yet, hold back this much: it may be the start of
# the "\nFrom " that ends the damage.
_RESYNC_TAIL = len(b"\nFrom ") - 1

# A run of CRs before a LF, matched only from the run's first CR: a search that could start
# inside a run would go over the rest of it again from each CR (quadratic in the run).
_CRS_BEFORE_LF = re.compile(rb"(?<!\r)\r++\n")
_FROM_LINE_ESCAPE = re.compile(rb"^(>*From )", re.MULTILINE)
_FROM_LINE_UNESCAPE = re.compile(rb"^>(>*From )", re.MULTILINE)
_LENGTH_LINE = ("\n" + LENGTH_HEADER + ": ").encode()
_TRACE = re.compile(
    rb"From [^\n]*\n"
    rb"Return-Path: <(?P<mail_from>[^\n]*)>\n"
    rb"(?P<rcpts>(?:Delivered-To: [^\n]*\n)*)"
    rb"Received: from (?P<helo>[^\n]*) \((?P<peer>[^\n()]*)\)\n"
    rb"\tby (?P<server>[^\n ]+) \(maillab\) with (?P<proto>ESMTPS?) id (?P<txid>[^\n;]+);\n"
    rb"\t(?P<date>[^\n]+)\n" + _LENGTH_LINE[1:] + rb"(?P<length>[0-9]{1,12})\n"
)


@dataclass(frozen=True)
class Delivery:
    """One message as stored in one domain's forward file."""

    mail_from: str  # "" for the null sender <>
    rcpt_tos: tuple[str, ...]  # the recipients of this domain only
    received_at: datetime  # UTC, whole seconds
    transaction_id: str
    helo: str
    peer: str
    server_name: str
    tls: bool
    message: bytes  # as stored: LF line endings, unescaped


@dataclass(frozen=True)
class Record:
    """A complete record found at `offset` in a forward file, `length` bytes long."""

    offset: int
    length: int
    delivery: Delivery


@dataclass(frozen=True)
class Damaged:
    """Bytes at `offset` that are not a valid record (hand edits, a repaired crash)."""

    offset: int
    length: int
    reason: str


def same_delivery(stored: Delivery, delivery: Delivery) -> bool:
    """Whether two deliveries are one message: the same sender, recipients and bytes.

    The trace (time, transaction id, peer) differs between two attempts of one message.
    """
    return (stored.mail_from, stored.rcpt_tos, stored.message) == (
        delivery.mail_from,
        delivery.rcpt_tos,
        delivery.message,
    )


def to_mbox_line_endings(message: bytes) -> bytes:
    """The message with LF line endings and a final newline, as mbox stores it.

    CRs before a line end go with it (a CR there carries nothing), which makes this
    idempotent: what it returns is rendered and parsed back unchanged.
    """
    if not message.endswith(b"\n"):
        message += b"\n"
    if b"\r" not in message:  # one already converted, say: a single memchr
        return message
    message = message.replace(b"\r\n", b"\n")  # the usual case, at the speed of bytes.replace
    # Runs of CRs before a line end are left; one linear pass takes them all.
    return _CRS_BEFORE_LF.sub(b"\n", message) if b"\r" in message and b"\r\n" in message else message


def to_smtp_line_endings(stored: bytes) -> bytes:
    """A stored message (LF line endings, mbox escaping undone) with its lines ended as SMTP sends them, CRLF.

    The inverse of `to_mbox_line_endings` for a client that kept to SMTP (every line ended
    with CRLF, as the DATA command's end also requires): its bytes come back exactly. A bare
    LF or CR before a line end that a client sent anyway comes back as CRLF: mbox keeps LF alone.
    """
    return stored.replace(b"\n", b"\r\n")


def render_body(message: bytes) -> bytes:
    """The stored form of a message: LF line endings, mboxrd-escaped. The same for every domain.

    `BodyRenderer` given the whole message at once: a held message and a spooled one are
    rendered by the same code. A message with nothing to change comes back as it is.
    """
    renderer = BodyRenderer()
    body = renderer.feed(message)
    end = renderer.finish()
    return body + end if end else body


# The end of a line start that may yet become an escaped line: ">"s, then a part of "From".
_FROM_LINE_START = re.compile(rb">*(F|Fr|Fro|From)?\Z")


class BodyRenderer:
    """The stored form of a message (LF line endings, mboxrd-escaped), a chunk at a time: the same bytes, however cut.

    This is the one rendering of a body: `render_body` gives it the whole message at once,
    and a spool (a message too large to hold) a chunk at a time.

    `feed` takes the next bytes of the message and returns the next bytes of its stored form;
    `finish` returns the last ones. Between chunks it holds back only what the next chunk
    decides: CRs at the end (a LF after them takes them away) and up to four bytes of a line
    that may become "From " (which gets a ">" in front). A run of ">"s at a line's start is
    passed on at once: a ">" added after the run gives the same bytes as one added before it.
    """

    def __init__(self) -> None:
        self.length = 0  # bytes returned so far: at the end, the stored length
        self._crs = 0  # CRs held back
        self._held = b""  # the start of a possible "From " line, held back
        self._at_line_start = True  # what comes next starts a line (after nothing but ">"s)
        self._ends_with_lf = False  # the last byte converted

    def feed(self, chunk: bytes) -> bytes:
        return self._escape(self._line_endings(chunk), last=False)

    def finish(self) -> bytes:
        # to_mbox_line_endings adds the final LF, which takes any CRs before it.
        ending = b"\n" if self._crs or not self._ends_with_lf else b""
        self._crs = 0
        return self._escape(ending, last=True)

    def _line_endings(self, chunk: bytes) -> bytes:
        if self._crs:
            chunk, self._crs = b"\r" * self._crs + chunk, 0
        if chunk.endswith(b"\r"):
            kept = chunk.rstrip(b"\r")
            self._crs = len(chunk) - len(kept)
            chunk = kept
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
            if b"\r\n" in chunk:
                chunk = _CRS_BEFORE_LF.sub(b"\n", chunk)
        if chunk:
            self._ends_with_lf = chunk.endswith(b"\n")
        return chunk

    def _escape(self, text: bytes, *, last: bool) -> bytes:
        if self._held:
            text, self._held = self._held + text, b""
        at_line_start = self._at_line_start
        if not last:
            line_start = text.rfind(b"\n") + 1
            partial = _FROM_LINE_START.match(text, line_start) if line_start or at_line_start else None
            self._at_line_start = partial is not None
            if partial is not None and partial[1]:
                self._held = partial[1]
                text = text[: partial.start(1)]
        if b"From " in text:
            if at_line_start:
                text = _FROM_LINE_ESCAPE.sub(rb">\1", text)
            elif (first := text.find(b"\n") + 1) > 0:
                text = text[:first] + _FROM_LINE_ESCAPE.sub(rb">\1", text[first:])
        self.length += len(text)
        return text


def render_trace(delivery: Delivery, body_length: int) -> bytes:
    """The From line and trace headers that go before a body of `body_length` bytes."""
    received_at = delivery.received_at.astimezone(UTC)
    # mbox readers take the From line for ASCII without spaces (Python's mailbox does).
    sender = "".join(c if "!" <= c <= "~" else "_" for c in delivery.mail_from) or NULL_SENDER_FROM_LINE
    protocol = "ESMTPS" if delivery.tls else "ESMTP"
    lines = [
        f"From {sender} {time.asctime(received_at.timetuple())}",
        f"Return-Path: <{delivery.mail_from}>",
        *(f"Delivered-To: {rcpt}" for rcpt in delivery.rcpt_tos),
        f"Received: from {delivery.helo} ({delivery.peer})",
        f"\tby {delivery.server_name} (maillab) with {protocol} id {delivery.transaction_id};",
        f"\t{format_datetime(received_at)}",
        f"{LENGTH_HEADER}: {body_length}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


# The blank line after the body ends a record, as mbox requires.
RECORD_END = b"\n"


def render_record(delivery: Delivery) -> bytes:
    """The bytes to append to a forward file for one delivery: trace, body, end.

    The server writes each record as these same three parts (the body rendered once for
    every domain of a message, or spooled); tests and benchmarks write this.
    """
    body = render_body(delivery.message)
    return b"".join((render_trace(delivery, len(body)), body, RECORD_END))


def parse_records(buf: bytes, offset: int = 0) -> tuple[list[Record | Damaged], bytes]:
    """Parse the records at the start of `buf`, which begins at `offset` in its file.

    Returns what could be parsed, complete records and damaged stretches in file order,
    and the leftover bytes: an incomplete record at the end, to be parsed again once
    more bytes have arrived (or, after a crash, a torn tail for the server to cut off).
    """
    items: list[Record | Damaged] = []
    pos = 0
    while pos < len(buf):
        if not buf.startswith(b"From ", pos):
            if len(buf) - pos < len(b"From ") and b"From ".startswith(buf[pos:]):
                break
            nxt = _next_record_start(buf, pos)
            if nxt is None:
                end = len(buf) - _RESYNC_TAIL
                if end > pos:
                    items.append(Damaged(offset + pos, end - pos, "not the start of a record"))
                    pos = end
                break
            items.append(Damaged(offset + pos, nxt - pos, "not the start of a record"))
            pos = nxt
            continue
        parsed = _parse_one(buf, pos, offset)
        if parsed is None:
            break
        items.append(parsed)
        pos += parsed.length
    return items, buf[pos:]


def _next_record_start(buf: bytes, pos: int) -> int | None:
    found = buf.find(b"\nFrom ", pos)
    return None if found == -1 else found + 1


def _parse_one(buf: bytes, pos: int, offset: int) -> Record | Damaged | None:
    """The record or damage at `pos`, or None when `buf` ends before it does."""
    length_line = buf.find(_LENGTH_LINE, pos, pos + MAX_TRACE_BYTES)
    trace_end = -1 if length_line == -1 else buf.find(b"\n", length_line + 1, pos + MAX_TRACE_BYTES)
    if trace_end == -1:
        if len(buf) - pos < MAX_TRACE_BYTES:
            return None
        return _damage(buf, pos, offset, "no length header in the trace block")
    trace_end += 1
    match = _TRACE.fullmatch(buf, pos, trace_end)
    if match is None:
        return _damage(buf, pos, offset, "malformed trace headers")
    body_end = trace_end + int(match["length"])
    if len(buf) < body_end + 1:
        # Unless the length runs over the start of a later record, the rest is yet to come.
        nxt = _next_record_start(buf, trace_end)
        if nxt is None:
            return None
        return _damage(buf, pos, offset, "shorter than its length header says")
    ends_cleanly = buf[body_end - 1 : body_end + 1] == b"\n\n"
    if not ends_cleanly or buf.find(b"\nFrom ", trace_end, body_end) != -1:
        return _damage(buf, pos, offset, "the length header does not match the record")
    try:
        delivery = _delivery(match, buf[trace_end:body_end])
    except ValueError as exc:  # includes UnicodeDecodeError
        return _damage(buf, pos, offset, f"unreadable trace headers: {exc}")
    return Record(offset=offset + pos, length=body_end + 1 - pos, delivery=delivery)


def _damage(buf: bytes, pos: int, offset: int, reason: str) -> Damaged:
    nxt = _next_record_start(buf, pos + 1)
    end = len(buf) if nxt is None else nxt
    return Damaged(offset + pos, end - pos, reason)


def _delivery(match: re.Match[bytes], body: bytes) -> Delivery:
    rcpts = [line.decode("utf-8") for line in match["rcpts"].split(b"\n") if line]
    received_at = parsedate_to_datetime(match["date"].decode("ascii"))
    if received_at.tzinfo is None:
        raise ValueError("the Received date has no time zone")
    return Delivery(
        mail_from=match["mail_from"].decode("utf-8"),
        rcpt_tos=tuple(line.removeprefix("Delivered-To: ") for line in rcpts),
        received_at=received_at.astimezone(UTC),
        transaction_id=match["txid"].decode("ascii"),
        helo=match["helo"].decode("utf-8"),
        peer=match["peer"].decode("ascii"),
        server_name=match["server"].decode("ascii"),
        tls=match["proto"] == b"ESMTPS",
        message=_FROM_LINE_UNESCAPE.sub(rb"\1", body) if b">From " in body else body,
    )


@dataclass(frozen=True)
class Trace:
    """A record's trace block, read without its body: enough to tell whether it can be a copy."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    length: int  # bytes of the trace block, From line to the length header's line end
    body_length: int  # what its X-Maillab-Length says


def parse_trace(buf: bytes, pos: int = 0) -> Trace | None:
    """The trace block that starts at `pos` in `buf`, or None when no complete, valid one does.

    The same checks `parse_records` makes of a trace (the date included); the body is not
    looked at, so the cost is that of the trace alone, at most MAX_TRACE_BYTES.
    """
    length_line = buf.find(_LENGTH_LINE, pos, pos + MAX_TRACE_BYTES)
    trace_end = -1 if length_line == -1 else buf.find(b"\n", length_line + 1, pos + MAX_TRACE_BYTES)
    if trace_end == -1:
        return None
    match = _TRACE.fullmatch(buf, pos, trace_end + 1)
    if match is None:
        return None
    try:
        delivery = _delivery(match, b"")
    except ValueError:  # includes UnicodeDecodeError
        return None
    return Trace(
        mail_from=delivery.mail_from,
        rcpt_tos=delivery.rcpt_tos,
        length=trace_end + 1 - pos,
        body_length=int(match["length"]),
    )


def trace_prefix(mail_from: str) -> bytes:
    """How a record of this sender starts as the server writes it: the LF before its From line, and its start."""
    sender = "".join(c if "!" <= c <= "~" else "_" for c in mail_from) or NULL_SENDER_FROM_LINE
    return f"\nFrom {sender} ".encode()


def trace_is_cut(buf: bytes, pos: int) -> bool:
    """Whether `buf` may end inside the trace block that starts at `pos` (more bytes would tell)."""
    if len(buf) - pos >= MAX_TRACE_BYTES:
        return False
    length_line = buf.find(_LENGTH_LINE, pos)
    return length_line == -1 or buf.find(b"\n", length_line + 1) == -1
