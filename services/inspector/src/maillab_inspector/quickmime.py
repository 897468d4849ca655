"""The common shapes of MIME taken apart with byte operations: what the catalogue needs, fast.

The email package's parser costs about a millisecond and a half a message here, most of it
compiling a regular expression for each multipart boundary (each message has its own) and
parsing header objects; the catalogue takes apart every message at the server's full rate
and a reindex 100,000 in a row. `contents` reads the shapes that mail from programs has (a
single part; multipart parts of text and base64 or quoted-printable attachments, nested a
few deep) with `bytes.find` and a few splits, and gives the same text body and attachments
as model.read_contents, byte for byte (tests/unit/test_quickmime.py compares them).
Whatever it is not sure to read as the email package would, it leaves to it: it returns
None for a CR, a parameter in RFC 2231, with escapes or 8-bit bytes, an encoded word, a message/* part,
multipart/related or digest, a missing closing boundary, an empty part, an unusual
transfer encoding, a header block that does not end in an empty line, and past MAX_PARTS
or MAX_DEPTH.

Pure: bytes in, values out.
"""

from __future__ import annotations

import binascii
import itertools
import quopri
import re
from dataclasses import dataclass, field

MAX_PARTS = 200
MAX_DEPTH = 4
MAX_FIELD = 1024  # characters of a Content-Type or Content-Disposition: far more than programs write

# The header block as the email package's feedparser reads it (model._HEADER_BLOCK, for LF
# line ends): lines that start with "Name:" or a space or tab.
_HEADER_LINES = re.compile(rb"(?:(?:[\x21-\x39\x3b-\x7e]*:|[ \t])[^\n]*(?:\n|\Z))*")
_TOKEN = re.compile(r"[a-z0-9!#$%&+.^_`{|}~/-]*")  # a type/subtype or a disposition, lowercased (or nothing)
_TOKEN_VALUE = re.compile(r'\s*([^\s=;"]+)\s*=\s*("[^"\\]*"|[^\s;"]*)\s*')


class NotQuick(Exception):
    """A shape left to the email package."""


Fields = list[tuple[str, str]]  # (name, value) of each header field in order, as Message.raw_items() gives them


@dataclass(frozen=True)
class QuickContents:
    fields: Fields  # the message's header fields
    text: str  # the first text/plain part that is not an attachment, decoded ('' when none)
    attachments: list[tuple[str, str, bytes]]  # (filename, content type, decoded bytes), in order


def contents(message: bytes) -> QuickContents | None:
    """The message's headers, text body and attachments, or None when it is not a shape read here."""
    if b"\r" in message:
        return None
    try:
        head, body = _split(message)
        fields = _fields(head)
        found = _Found()
        _walk(_first(fields), body, found, depth=0)
    except NotQuick:
        return None
    return QuickContents(fields, found.text if found.text is not None else "", found.attachments)


@dataclass
class _Found:
    text: str | None = None
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)
    parts: int = 0


def _split(entity: bytes) -> tuple[bytes, bytes]:
    """The header block and the body, split at the empty line."""
    block = _HEADER_LINES.match(entity)
    assert block is not None  # it matches the empty string
    end = block.end()
    if end == len(entity):
        if entity.endswith(b"\n") or not entity:
            return entity, b""
        raise NotQuick("a header block that ends without its line end")
    if entity[end : end + 1] != b"\n":
        raise NotQuick("a header block that does not end in an empty line")
    return entity[:end], entity[end + 1 :]


def _fields(head: bytes) -> Fields:
    """The header fields, each value with its continuation lines, as the email package's parser keeps them."""
    lines: list[tuple[str, list[str]]] = []  # each field's name, and its value's lines (joined once: linear)
    for line in head.decode("ascii", "surrogateescape").split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            if not lines:
                raise NotQuick("a continuation line first")
            lines[-1][1].append(line)
            continue
        name, _, value = line.partition(":")
        if not name:
            raise NotQuick("a field without a name")  # the parser drops it, and joins what follows elsewhere
        lines.append((name, [value.lstrip(" \t")]))
    return [(name, "\n".join(value)) for name, value in lines]


def _first(fields: Fields) -> dict[str, str]:
    """The first value of each field name (lowercased), unfolded and stripped."""
    first: dict[str, str] = {}
    for name, value in fields:
        first.setdefault(name.lower(), " ".join(value.split("\n")).strip())
    return first


def _walk(headers: dict[str, str], body: bytes, found: _Found, depth: int, in_attachment: bool = False) -> None:
    """Take apart one entity: its attachments (every leaf with a file name or the attachment
    disposition, as model.attachment_payloads) and the text body (the first text/plain leaf
    not under an attachment, as EmailMessage.get_body)."""
    found.parts += 1
    if found.parts > MAX_PARTS or depth > MAX_DEPTH:
        raise NotQuick("too many parts, or too deep")
    ctype, params = _parameters(headers.get("content-type"))
    disposition, disposition_params = _parameters(headers.get("content-disposition"), default="")
    in_attachment = in_attachment or disposition == "attachment"
    maintype = ctype.partition("/")[0]
    if maintype == "message" or ctype in ("multipart/related", "multipart/digest"):
        raise NotQuick(ctype)
    if maintype == "multipart":
        boundary = params.get("boundary")
        if not boundary:
            raise NotQuick("a multipart without a boundary")
        for part in _parts(body, boundary.rstrip()):
            part_head, part_body = _split(part)
            _walk(_first(_fields(part_head)), part_body, found, depth + 1, in_attachment)
        return
    filename = disposition_params.get("filename", params.get("name"))
    if filename is not None or disposition == "attachment":
        found.attachments.append(((filename or "").strip(), ctype, _decoded(headers, body)))
    if ctype == "text/plain" and found.text is None and not in_attachment:
        charset = params.get("charset") or "ASCII"
        try:
            found.text = _decoded(headers, body).decode(charset, errors="replace")
        except LookupError:  # an unknown charset: as model.text_body, no text
            found.text = ""


def _parameters(value: str | None, default: str = "text/plain") -> tuple[str, dict[str, str]]:
    """The lowercased type (or disposition) and the parameters, each name's first; NotQuick for anything unusual."""
    if value is None:
        return default, {}
    if len(value) > MAX_FIELD:
        raise NotQuick("a long field, which the email package reads cut (model.FIELD_CHARACTERS)")
    if not value.isascii() or "\\" in value or "=?" in value or "(" in value or "*" in value or "'" in value:
        raise NotQuick("a parameter in RFC 2231, a comment, an escape or an encoded word")
    kind, _, rest = value.partition(";")
    kind = kind.strip().lower()
    if not _TOKEN.fullmatch(kind):
        raise NotQuick("a type or disposition that is not a token")
    if default and kind.count("/") != 1:
        kind = default
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(";"):
            if not item.strip():
                continue
            match = _TOKEN_VALUE.fullmatch(item)
            if match is None:
                raise NotQuick("a parameter that is not name=value")
            name, raw = match[1].lower(), match[2]
            params.setdefault(name, raw[1:-1] if raw.startswith('"') else raw)
    return kind, params


def _parts(body: bytes, boundary: str) -> list[bytes]:
    """The parts between the boundary lines, each without the line end that belongs to the next
    boundary; NotQuick without a closing boundary, or with an empty part."""
    separator = b"--" + boundary.encode("ascii", "surrogateescape")
    lines = []  # each boundary line: where it starts, and where the line after it starts
    at = 0 if body.startswith(separator) else _line_starting(body, separator, 0)
    while at >= 0:
        line_end = body.find(b"\n", at)
        after = len(body) if line_end < 0 else line_end + 1
        # What follows the separator on its line: `(--)?[ \t]*` on a boundary line, as the email package matches it.
        rest = body[at + len(separator) : after].rstrip(b"\n")
        closing = rest.startswith(b"--")
        if not (rest[2:] if closing else rest).strip(b" \t"):
            lines.append((at, after))
            if closing:
                break
            if len(lines) > MAX_PARTS:
                raise NotQuick("too many parts")
        at = _line_starting(body, separator, after)
    else:
        raise NotQuick("no closing boundary")
    parts = []
    for (_, after), (start, _) in itertools.pairwise(lines):
        if start - 1 <= after:
            raise NotQuick("an empty part, or two boundary lines in a row")
        parts.append(body[after : start - 1])  # the line end before a boundary line is the boundary's
    if not parts:
        raise NotQuick("a multipart without parts")
    return parts


def _line_starting(body: bytes, prefix: bytes, start: int) -> int:
    """Where the first line at or after `start` (a line's start) that begins with `prefix` starts; -1 if none."""
    found = body.find(b"\n" + prefix, max(start - 1, 0))
    return found + 1 if found >= 0 else -1


def _decoded(headers: dict[str, str], body: bytes) -> bytes:
    encoding = headers.get("content-transfer-encoding", "").lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(b"".join(body.splitlines()), strict_mode=True)
        except binascii.Error:
            raise NotQuick("base64 the email package repairs") from None
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    if encoding in ("", "7bit", "8bit", "binary"):
        return body
    raise NotQuick(f"the transfer encoding {encoding!r}")
