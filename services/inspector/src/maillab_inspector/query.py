"""The inspector's search syntax: query text -> `Query` (a tuple of `Term`s) -> an SQL condition.

Pure: no I/O. `parse` reads what a user typed (the web view's search box, the API's `query`
parameter) and refuses anything it cannot read with a `QuerySyntaxError` that names the
character where the problem starts. `to_sql` turns a query into a condition over
`messages AS m` with `?` parameters, against the catalogue's schema (catalogue.py): the
tables `messages`, `addresses`, `attachments` and the FTS5 table `message_text`.

The grammar (docs/api.md, "Query syntax", is the user's version):

    query  = term*                        whitespace between terms; every term must hold
    term   = ["-"] (field ":" value | "quoted phrase" | word)
    value  = "quoted" | characters up to the next whitespace

User text never reaches FTS5 as syntax: every word and phrase becomes one FTS5 string
("..." with each " doubled), so `OR`, `NEAR(`, `*`, `^` and `:` are searched for as text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from maillab_common.addresses import InvalidAddress, normalise_domain

MAX_LENGTH = 4096  # characters of query text: keeps every FTS string small
MAX_TERMS = 64  # an AND of terms nests in SQLite's expression tree, which allows a depth of 1000
MAX_BYTES = 2**63 - 1  # the largest size SQLite's INTEGER holds

SQL_ALL = "1"  # the condition of a query without terms


class QuerySyntaxError(ValueError):
    """The query text cannot be read: `position` is the 0-based index of the offending character."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"at character {position + 1}: {reason}")
        self.position = position
        self.reason = reason


@dataclass(frozen=True)
class Term:
    field: str | None  # a field name in lower case, or None for free text (a word or a "phrase")
    value: str  # as typed, without its quotes
    negated: bool  # written with a leading "-": the term must not hold
    position: int  # where the term starts in the query text (its "-" when negated)


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]
    text: str


class _BadValue(ValueError):
    """A value its field cannot use; the caller knows where the value is."""


Condition = tuple[str, list[object]]


# ---- reading the text ---------------------------------------------------------------------------------------------

_FIELD = re.compile(r"([A-Za-z][A-Za-z-]*):")


def parse(text: str) -> Query:
    """The query `text` as terms; raises QuerySyntaxError at the first thing it cannot read."""
    if len(text) > MAX_LENGTH:
        raise QuerySyntaxError(MAX_LENGTH, f"the query is too long: at most {MAX_LENGTH} characters")
    for index, character in enumerate(text):
        # A NUL ends an FTS5 string early (an sqlite3 error); a lone surrogate cannot be encoded for SQLite.
        category = unicodedata.category(character)
        if (category == "Cc" and not character.isspace()) or category == "Cs":
            raise QuerySyntaxError(index, f"{character!r} is a control character (or half a surrogate pair)")
    terms: list[Term] = []
    position = _skip_space(text, 0)
    while position < len(text):
        if len(terms) == MAX_TERMS:
            raise QuerySyntaxError(position, f"too many terms: at most {MAX_TERMS}")
        term, value_position, position = _read_term(text, position)
        try:
            _condition(term)
        except _BadValue as error:
            raise QuerySyntaxError(value_position, str(error)) from None
        terms.append(term)
        position = _skip_space(text, position)
    return Query(terms=tuple(terms), text=text)


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _read_term(text: str, start: int) -> tuple[Term, int, int]:
    """The term at `start`, where its value starts, and where the term ends."""
    position = start
    negated = text[position] == "-"
    if negated:
        position += 1
        if position == len(text) or text[position].isspace():
            raise QuerySyntaxError(start, "nothing after '-': write -word or -field:value")
    field: str | None = None
    named = _FIELD.match(text, position)
    if text[position] != '"' and named:
        field = named[1].lower()
        if field not in _BUILDERS:
            word, _ = _read_value(text, position)
            raise QuerySyntaxError(
                position,
                f"unknown field {named[1]!r} (the fields: {', '.join(_BUILDERS)}); "
                f'to search for the text, quote it: "{word}"',
            )
        position = named.end()
        if position == len(text) or text[position].isspace():
            raise QuerySyntaxError(position, f"{field}: needs a value")
    value_position = position
    value, position = _read_value(text, position)
    if not value:
        raise QuerySyntaxError(value_position, "the quotes hold nothing")
    return Term(field=field, value=value, negated=negated, position=start), value_position, position


def _read_value(text: str, start: int) -> tuple[str, int]:
    """A value at `start`: "quoted" (with \\" and \\\\ inside) or up to the next whitespace; and where it ends."""
    if text[start] != '"':
        end = start
        while end < len(text) and not text[end].isspace():
            end += 1
        return text[start:end], end
    characters: list[str] = []
    position = start + 1
    while position < len(text):
        character = text[position]
        if character == "\\" and position + 1 < len(text) and text[position + 1] in '"\\':
            characters.append(text[position + 1])
            position += 2
        elif character == '"':
            position += 1
            if position < len(text) and not text[position].isspace():
                raise QuerySyntaxError(position, "a closing quote ends its term: put a space after it")
            return "".join(characters), position
        else:
            characters.append(character)
            position += 1
    raise QuerySyntaxError(start, "this quote is never closed")


# ---- building the SQL ---------------------------------------------------------------------------------------------


def to_sql(query: Query) -> Condition:
    """A condition over `messages AS m` that holds when every term does, and its parameters."""
    if not query.terms:
        return SQL_ALL, []
    parts: list[str] = []
    parameters: list[object] = []
    for term in query.terms:
        try:
            sql, values = _condition(term)
        except _BadValue as error:  # a Term built by hand rather than by parse()
            raise QuerySyntaxError(term.position, str(error)) from None
        parts.append(f"NOT ({sql})" if term.negated else f"({sql})")
        parameters.extend(values)
    return " AND ".join(parts), parameters


def _condition(term: Term) -> Condition:
    if term.field is None:
        return _text(term.value)
    build = _BUILDERS.get(term.field)
    if build is None:
        raise _BadValue(f"unknown field {term.field!r}")
    return build(term.value)


_FTS = "m.seq IN (SELECT rowid FROM message_text WHERE message_text MATCH ?)"


def _fts_string(value: str) -> str:
    """`value` as one FTS5 string: FTS5 reads it as the phrase of its words, never as syntax."""
    if not any(_indexed(character) for character in value):
        # An FTS5 string without a word in it is an empty phrase, which would quietly match nothing.
        raise _BadValue(f"{value!r} holds no letter or digit, and only words are indexed")
    return '"' + value.replace('"', '""') + '"'


def _indexed(character: str) -> bool:
    """Whether FTS5's unicode61 tokenizer keeps `character` in a word (its default: letters, numbers, private use)."""
    category = unicodedata.category(character)
    return category[0] in "LN" or category == "Co"


def _text(value: str) -> Condition:
    """Free text: the words (or the phrase) anywhere in the subject, the body or the addresses."""
    return _FTS, [_fts_string(value)]


def _subject(value: str) -> Condition:
    return _FTS, ["subject : " + _fts_string(value)]


def _address(role: str) -> Callable[[str], Condition]:
    def build(value: str) -> Condition:
        sql, values = _address_seqs(role, value)
        return f"m.seq IN ({sql})", values

    return build


def _address_seqs(role: str, value: str) -> Condition:
    """The seqs of the messages with the address `value`, or with any address at the domain `value`, in `role`."""
    column, wanted = _address_column(role, value)
    return f"SELECT seq FROM addresses WHERE role = ? AND {column} = ?", [role, wanted]


def _address_column(role: str, value: str) -> tuple[str, str]:
    """The column of the addresses table that `role:value` compares, and what it must hold there:
    ('address', 'local@domain') for a whole address, ('domain', 'domain') for any address at a domain."""
    address = _unbracketed(value)
    local, at, domain = address.rpartition("@")
    if not at or not local:  # x.test or @x.test: every address at that domain
        domain = domain.lower()
        if not domain:
            raise _BadValue(f"{role}: needs an address or a domain")
        # The catalogue keeps each address's domain, lowercased, beside it (catalogue.address_domain).
        return "domain", domain
    if not domain:
        raise _BadValue(f"{value!r} has no domain after its @")
    # The catalogue stores addresses the same way (catalogue.normal_address): the local part
    # as it is, the domain in lower case; so this is an exact match on the whole address.
    return "address", f"{local}@{domain.lower()}"


# Fields compared on a message's own row, with no subquery over the full-text or address tables.
ROW_FIELDS = frozenset({"message-id", "domain", "has", "larger", "smaller", "before", "after"})


def on_rows_alone(query: Query) -> bool:
    """Whether every term of `query` is answered from a message's own row: with a Message-ID among them, a
    lookup of a row or two however large the catalogue (a free word or an address would read an index's all)."""
    return all(term.field in ROW_FIELDS for term in query.terms)


# ---- which commits can wake a wait ------------------------------------------------------------------------------

WakeKey = tuple[str, str]


def arrival_keys(message_id: str, domain: str, addresses: Iterable[tuple[str, str, str]]) -> set[WakeKey]:
    """The keys of a newly catalogued message, from its row: its Message-ID, its domain, and each of its
    (role, address, address's domain) rows of the addresses table. A wait whose `wake_key` is not among
    them cannot match the message, so its arrival need not wake that wait."""
    keys = {("message-id", message_id), ("domain", domain)}
    for role, address, address_domain in addresses:
        keys.add((f"{role} address", address))
        keys.add((f"{role} domain", address_domain))
    return keys


def wake_key(query: Query | None, domain: str | None = None) -> WakeKey | None:
    """A key among the `arrival_keys` of every message that `query` in `domain` matches, the rarest that the
    query names (a Message-ID, then an address, then a domain); None when it names none (free text, sizes,
    times: any arrival may match). Built from the same values as the SQL, so that it never misses a match."""
    ranked: list[tuple[int, WakeKey]] = []
    if domain is not None:
        ranked.append((3, ("domain", domain)))
    for term in query.terms if query is not None else ():
        if term.negated:
            continue
        try:
            if term.field == "message-id":
                _, (message_id,) = _message_id(term.value)
                ranked.append((0, ("message-id", str(message_id))))
            elif term.field in ("from", "to"):
                column, wanted = _address_column(term.field, term.value)
                ranked.append((1 if column == "address" else 2, (f"{term.field} {column}", wanted)))
            elif term.field == "domain":
                _, (named,) = _domain(term.value)
                ranked.append((3, ("domain", str(named))))
        except _BadValue:  # a Term built by hand: to_sql will say what is wrong with it
            return None
    return min(ranked)[1] if ranked else None


@dataclass(frozen=True)
class SeqSet:
    """The seqs of the messages a query matches, as one SELECT of a column `seq`."""

    sql: str
    parameters: list[object]
    repeats: bool  # a message may come more than once (several of its addresses at one domain)
    ordered: bool  # one table's rows, which `WHERE seq < ? ORDER BY seq DESC LIMIT ?` around it reads in that order


def to_seq_set(query: Query) -> SeqSet | None:
    """The query as a SELECT over the full-text and address tables alone, when every term can be
    answered from them (words, phrases, subject:, from:, to:, none negated); None when one cannot.
    The catalogue keeps only visible messages in those tables, so that it can count the matches
    and page through them newest first without a look at each one's row."""
    phrases: list[str] = []
    selects: list[Condition] = []
    for term in query.terms:
        if term.negated:
            return None
        try:
            if term.field is None:
                phrases.append(_fts_string(term.value))
            elif term.field == "subject":
                phrases.append("subject : " + _fts_string(term.value))
            elif term.field in ("from", "to"):
                selects.append(_address_seqs(term.field, term.value))
            else:
                return None
        except _BadValue as error:  # a Term built by hand rather than by parse(), as in to_sql
            raise QuerySyntaxError(term.position, str(error)) from None
    if phrases:  # one MATCH for them all: FTS5 intersects them itself, in rowid order
        match = " AND ".join(f"({phrase})" for phrase in phrases)
        selects.insert(0, ("SELECT rowid AS seq FROM message_text WHERE message_text MATCH ?", [match]))
    if len(selects) == 1:
        ((sql, parameters),) = selects
        return SeqSet(sql, parameters, repeats=not phrases, ordered=True)
    if not selects:
        return None
    parameters = [value for _, values in selects for value in values]
    return SeqSet(" INTERSECT ".join(sql for sql, _ in selects), parameters, repeats=False, ordered=False)


def _domain(value: str) -> Condition:
    """The forward file the copy is in: the recipient domain, as the server names its files."""
    try:
        domain = normalise_domain(value.removeprefix("@"))
    except InvalidAddress as error:
        raise _BadValue(str(error)) from None
    return "m.domain = ?", [domain]


def _message_id(value: str) -> Condition:
    message_id = _unbracketed(value)
    if not message_id:
        raise _BadValue("message-id: needs a value")
    return "m.message_id = ?", [message_id]


def _filename(value: str) -> Condition:
    # COLLATE NOCASE matches the attachments_filename index (and folds ASCII letters only).
    return "m.seq IN (SELECT seq FROM attachments WHERE filename = ? COLLATE NOCASE)", [value]


def _has(value: str) -> Condition:
    if value.lower() not in ("attachment", "attachments"):
        raise _BadValue(f"has: takes only 'attachment', not {value!r}")
    return "m.attachment_count > 0", []


_SIZE = re.compile(r"([0-9]{1,20})(?:\.([0-9]{1,9}))? ?([KMG]i?B|B)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def _size_bytes(value: str) -> int:
    """`10KiB` -> 10240: bytes, with an optional unit (B, KB, MB, GB in powers of 1000; KiB, MiB, GiB of 1024)."""
    written = _SIZE.fullmatch(value.strip())
    if not written:
        raise _BadValue(f"{value!r} is not a size: write 1234, 10KiB, 2MiB, 1GiB, 10KB or 2MB")
    whole: str = written[1]
    fraction: str = written[2] or ""
    scale = _UNITS[(written[3] or "b").lower()]
    places: int = 10 ** len(fraction)
    size = int(whole + fraction) * scale // places  # 1.5KiB -> 15 * 1024 // 10 = 1536
    if size > MAX_BYTES:
        raise _BadValue(f"{value!r} is more bytes than any message has")
    return size


def _larger(value: str) -> Condition:
    return "m.size > ?", [_size_bytes(value)]


def _smaller(value: str) -> Condition:
    return "m.size < ?", [_size_bytes(value)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_seconds(value: str) -> int:
    """An ISO 8601 date (midnight UTC) or datetime (UTC when it names no offset) as whole epoch seconds, rounded up."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _BadValue(
            f"{value!r} is not a date or time: write 2026-11-29, 2026-11-29T10:30 or 2026-11-29T10:30+01:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # received is whole seconds: received < t and received >= t both hold exactly when they do for ceil(t).
    return -((_EPOCH - moment) // timedelta(seconds=1))


def _before(value: str) -> Condition:
    return "m.received < ?", [_epoch_seconds(value)]


def _after(value: str) -> Condition:
    # At or after: before:D and after:D cut time in two with no gap and no overlap.
    return "m.received >= ?", [_epoch_seconds(value)]


def _unbracketed(value: str) -> str:
    """`<a@x.test>` -> `a@x.test`: addresses and Message-IDs are often pasted with their angle brackets."""
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


_BUILDERS: dict[str, Callable[[str], Condition]] = {
    "from": _address("from"),
    "to": _address("to"),
    "domain": _domain,
    "subject": _subject,
    "message-id": _message_id,
    "filename": _filename,
    "has": _has,
    "larger": _larger,
    "smaller": _smaller,
    "before": _before,
    "after": _after,
}
