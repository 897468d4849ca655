"""The inspector's search syntax: what parse() reads, what it refuses and where, and which messages to_sql() selects.

The semantic tests run the SQL against the catalogue's own schema (catalogue.SCHEMA) in an
in-memory SQLite database holding a handful of messages written by hand.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from maillab_inspector.catalogue import SCHEMA, address_domain, normal_address
from maillab_inspector.query import (
    MAX_LENGTH,
    MAX_TERMS,
    Query,
    QuerySyntaxError,
    Term,
    arrival_keys,
    on_rows_alone,
    parse,
    to_seq_set,
    to_sql,
    wake_key,
)


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp())


def add_message(
    db: sqlite3.Connection,
    seq: int,
    *,
    domain: str,
    received: str,
    size: int,
    subject: str,
    body: str,
    mail_from: str,
    to: tuple[str, ...],
    message_id: str,
    attachments: tuple[str, ...] = (),
) -> None:
    """One catalogued message, its addresses normalised as the catalogue stores them."""
    row = {
        "seq": seq, "id": f"id{seq}", "domain": domain, "inode": 1, "offset": seq * 100, "length": 10,
        "received": epoch(received), "mail_from": mail_from, "rcpt_to": json.dumps(to), "header_from": mail_from,
        "header_to": ", ".join(to), "header_cc": "", "subject": subject, "date": "", "message_id": message_id,
        "size": size, "snippet": "", "attachment_count": len(attachments), "problem": "",
    }  # fmt: skip
    db.execute(f"INSERT INTO messages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    if mail_from:  # the null sender ('') has no address
        address = normal_address(mail_from)
        db.execute("INSERT INTO addresses VALUES (?, 'from', ?, ?)", [seq, address, address_domain(address)])
    db.executemany(
        "INSERT INTO addresses VALUES (?, 'to', ?, ?)",
        [(seq, normal_address(a), address_domain(normal_address(a))) for a in to],
    )
    db.executemany(
        "INSERT INTO attachments VALUES (?, ?, ?, 'application/octet-stream', 1, '')",
        [(seq, index, name) for index, name in enumerate(attachments)],
    )
    db.execute(
        "INSERT INTO message_text (rowid, subject, body, addresses) VALUES (?, ?, ?, ?)",
        [seq, subject, body, " ".join((mail_from, *to))],
    )


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.executescript(SCHEMA)
    add_message(
        connection, 1, domain="x.test", received="2026-11-29T10:00:00", size=500,
        subject="Password reset", body="hello world, your code is 1234", mail_from="sender@y.test",
        to=("a@x.test",), message_id="one@y.test", attachments=("Report.PDF",),
    )  # fmt: skip
    add_message(
        connection, 2, domain="x.test", received="2026-11-28T23:30:00", size=20 * 1024,
        subject="Weekly report", body="the password is reset weekly, see report_2026", mail_from="Bob@y.test",
        to=("ba@x.test", "carol@x.test"), message_id="two@y.test",
    )  # fmt: skip
    add_message(
        connection, 3, domain="x.test.evil", received="2026-11-30T00:00:00", size=3 * 1024 * 1024,
        subject='NEAR(x) "quoted" OR stuff', body="literal AND star* caret^ col:on", mail_from="eve@evil.test",
        to=("a@x.test.evil", "a@sub.x.test"), message_id="three@evil.test", attachments=("notes.txt", "report.pdf.exe"),
    )  # fmt: skip
    add_message(
        connection, 4, domain="x.test", received="2026-11-29T00:00:00", size=10 * 1024,
        subject="Café menu", body="crème brûlée", mail_from="",
        to=("A@x.test",), message_id="<four>@x.test",
    )  # fmt: skip
    yield connection
    connection.close()


def selected(db: sqlite3.Connection, text: str) -> set[int]:
    """The seqs the query selects; checked against the set of the full-text and address tables where it has one."""
    condition, parameters = to_sql(parse(text))
    seqs = {seq for (seq,) in db.execute(f"SELECT seq FROM messages AS m WHERE {condition}", parameters)}
    from_indexes = to_seq_set(parse(text))
    if from_indexes is not None:
        assert from_indexes.sql.count("?") == len(from_indexes.parameters)
        rows = db.execute(from_indexes.sql, from_indexes.parameters).fetchall()
        if not from_indexes.repeats:
            assert len(rows) == len(set(rows)), "each message once: the catalogue counts these rows"
        assert {seq for (seq,) in rows} == seqs, f"to_seq_set disagrees with to_sql for {text!r}"
    return seqs


# ---- reading ------------------------------------------------------------------------------------------------------

PARSED = [
    ("", []),
    ("   ", []),
    ("hello", [(None, "hello", False, 0)]),
    ("hello world", [(None, "hello", False, 0), (None, "world", False, 6)]),
    ('"password reset"', [(None, "password reset", False, 0)]),
    ('-"password reset"', [(None, "password reset", True, 0)]),
    ("-hello", [(None, "hello", True, 0)]),
    ("to:a@x.test", [("to", "a@x.test", False, 0)]),
    ("TO:a@x.test", [("to", "a@x.test", False, 0)]),
    ("  -From:<b@y.test>", [("from", "<b@y.test>", True, 2)]),
    ('subject:"password reset" x', [("subject", "password reset", False, 0), (None, "x", False, 25)]),
    ('subject:"say \\"hi\\" \\\\o/"', [("subject", 'say "hi" \\o/', False, 0)]),
    ("message-id:<a@b>", [("message-id", "<a@b>", False, 0)]),
    ("has:attachment\tlarger:10KiB", [("has", "attachment", False, 0), ("larger", "10KiB", False, 15)]),
    ("10:30", [(None, "10:30", False, 0)]),  # not a field name: free text
    (":x", [(None, ":x", False, 0)]),
    ('a"b', [(None, 'a"b', False, 0)]),  # a quote inside a word is just a character
    ("--x", [(None, "-x", True, 0)]),
    ("OR AND NEAR(", [(None, "OR", False, 0), (None, "AND", False, 3), (None, "NEAR(", False, 7)]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "terms"), PARSED)
def test_parse_reads_terms(text: str, terms: list[tuple[str | None, str, bool, int]]) -> None:
    query = parse(text)
    assert query.text == text
    assert [(term.field, term.value, term.negated, term.position) for term in query.terms] == terms


REFUSED = [
    ("-", 0, "nothing after '-'"),
    ("a - b", 2, "nothing after '-'"),
    ("subjet:x", 0, "unknown field 'subjet'"),
    ("ok http://x.test/", 3, "unknown field 'http'"),
    ("to:", 3, "needs a value"),
    ("to: a@x.test", 3, "needs a value"),
    ('to:""', 3, "the quotes hold nothing"),
    ('""', 0, "the quotes hold nothing"),
    ('"abc', 0, "never closed"),
    ('x subject:"abc', 10, "never closed"),
    ('"abc"def', 5, "closing quote"),
    ("has:attachmentz", 4, "only 'attachment'"),
    ("has:", 4, "needs a value"),
    ("larger:lots", 7, "not a size"),
    ("smaller:10XB", 8, "not a size"),
    ("larger:1e6", 7, "not a size"),
    ("larger:-5", 7, "not a size"),
    ("larger:99999999999GiB", 7, "more bytes"),
    ("before:yesterday", 7, "not a date"),
    ("after:2026-13-01", 6, "not a date"),
    ("after:2026-11-29T25:00", 6, "not a date"),
    ("domain:a_b.test", 7, "not a valid domain"),
    ("domain:..", 7, "not a valid domain"),
    ("to:a@", 3, "no domain"),
    ("from:@", 5, "needs an address or a domain"),
    ("message-id:<>", 11, "needs a value"),
    ("...", 0, "no letter or digit"),
    ("-***", 1, "no letter or digit"),
    ('subject:"()"', 8, "no letter or digit"),
    ("x \x00", 2, "control character"),
    ("a\ud800", 1, "surrogate"),
    ("a\x07b", 1, "control character"),
    ("x" * (MAX_LENGTH + 1), MAX_LENGTH, "too long"),
    ("x " * MAX_TERMS + "y", 2 * MAX_TERMS, "too many terms"),
]


@pytest.mark.parametrize(("text", "position", "reason"), REFUSED)
def test_parse_refuses_at_the_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(QuerySyntaxError) as refused:
        parse(text)
    assert refused.value.position == position
    assert reason in refused.value.reason


def test_the_error_message_names_the_position_and_the_reason() -> None:
    with pytest.raises(QuerySyntaxError) as refused:
        parse("to:a@x.test subjet:x")
    assert str(refused.value).startswith("at character 13: unknown field 'subjet'")
    assert isinstance(refused.value, ValueError)


def test_a_term_built_by_hand_is_checked_by_to_sql() -> None:
    query = Query(terms=(Term(field="larger", value="huge", negated=False, position=7),), text="")
    with pytest.raises(QuerySyntaxError) as refused:
        to_sql(query)
    assert refused.value.position == 7


@pytest.mark.parametrize(("field", "value"), [(None, "--"), ("subject", "!!"), ("to", "@"), ("from", "a@")])
def test_a_term_built_by_hand_is_checked_by_to_seq_set(field: str | None, value: str) -> None:
    query = Query(terms=(Term(field=field, value=value, negated=False, position=3),), text="")
    with pytest.raises(QuerySyntaxError) as refused:
        to_seq_set(query)
    assert refused.value.position == 3


@pytest.mark.parametrize("address", ["Bob@X.Test", "a@b@C.TEST", "Q.q@ÉX.test", "[1]@[IPv6:::1]"])
def test_a_whole_address_is_looked_up_as_the_catalogue_stores_it(address: str) -> None:
    assert to_sql(parse(f"from:{address}"))[1] == ["from", normal_address(address)]
    assert to_sql(parse(f"to:<{address}>"))[1] == ["to", normal_address(address)]


def test_domain_is_compared_as_the_server_names_its_files() -> None:
    assert to_sql(parse("domain:Bücher.Example"))[1] == ["xn--bcher-kva.example"]


def test_no_terms_select_everything(db: sqlite3.Connection) -> None:
    assert to_sql(parse("  ")) == ("1", [])
    assert selected(db, "") == {1, 2, 3, 4}


# ---- selecting ----------------------------------------------------------------------------------------------------

SELECTED = [
    # whole addresses: never a substring, never a longer domain; the domain in any case, the local part exact
    ("to:a@x.test", {1}),
    ("to:<a@x.test>", {1}),
    ("to:a@X.TEST", {1}),
    ("to:A@x.test", {4}),
    ("to:ba@x.test", {2}),
    ("to:carol@x.test", {2}),
    ("to:a@x.test.evil", {3}),
    ("to:x.test", {1, 2, 4}),  # a domain alone: every address at exactly that domain
    ("to:@X.Test", {1, 2, 4}),
    ("to:test", set()),
    ("to:x.test.evil", {3}),
    ("to:a@sub.x.test", {3}),
    ("to:sub.x.test", {3}),
    ("from:bob@y.test", set()),
    ("from:Bob@Y.test", {2}),
    ("from:y.test", {1, 2}),
    ("from:a@x.test", set()),  # roles are kept apart
    ("to:sender@y.test", set()),
    ("to:%@x.test", set()),  # LIKE's wildcards are characters here
    ("to:_.test", set()),
    ("-to:a@x.test", {2, 3, 4}),
    # the forward file
    ("domain:x.test", {1, 2, 4}),
    ("domain:X.TEST", {1, 2, 4}),
    ("domain:@x.test.evil", {3}),
    ("-domain:x.test", {3}),
    # full text: whole words anywhere, every term must hold, phrases in order
    ("password", {1, 2}),
    ("PASSWORD reset", {1, 2}),
    ('"password reset"', {1}),
    ('"reset password"', set()),
    ("password -weekly", {1}),
    ("pass", set()),  # no prefixes
    ("1234", {1}),
    ("cafe", {4}),  # diacritics are folded
    ("brulee crème", {4}),
    ("evil.test", {3}),
    ("report-2026", {2}),  # punctuation separates words
    ('"2026 report"', set()),  # an address as free text is a phrase of its words
    # subject: only the subject column
    ("subject:password", {1}),
    ("subject:weekly", {2}),
    ("subject:hello", set()),
    ('subject:"password reset"', {1}),
    ('subject:"reset password"', set()),
    ("-subject:password", {2, 3, 4}),
    # hostile text is text
    ("NEAR(x)", {3}),
    ("OR", {3}),
    ('"\\"quoted\\""', {3}),
    ("star*", {3}),
    ("caret^", {3}),
    # attachments
    ("filename:report.pdf", {1}),
    ("filename:REPORT.PDF", {1}),
    ("filename:report", set()),
    ("filename:notes.txt", {3}),
    ('filename:"report.pdf.exe"', {3}),
    ("has:attachment", {1, 3}),
    ("has:Attachments", {1, 3}),
    ("-has:attachment", {2, 4}),
    # sizes: larger is >, smaller is <
    ("larger:500", {2, 3, 4}),
    ("larger:499", {1, 2, 3, 4}),
    ("smaller:500", set()),
    ("smaller:501", {1}),
    ("larger:10KiB", {2, 3}),
    ("larger:10kb", {2, 3, 4}),
    ("smaller:10KiB", {1}),
    ("larger:20KB smaller:3MiB", {2}),
    ("larger:3mb", {3}),
    ("larger:3MiB", set()),
    ("smaller:1.5KiB", {1}),
    ("larger:1GiB", set()),
    # times: before is <, after is at or after; a date is midnight UTC, a time without an offset is UTC
    ("before:2026-11-29", {2}),
    ("after:2026-11-29", {1, 3, 4}),
    ("after:2026-11-29 before:2026-11-30", {1, 4}),
    ("after:2026-11-29T10:00", {1, 3}),
    ("after:2026-11-29T10:00:00.5Z", {3}),
    ("before:2026-11-29T10:00:00Z", {2, 4}),
    ("before:2026-11-29T11:00:00+01:00", {2, 4}),
    ("before:2026-11-29T11:00:01+01:00", {1, 2, 4}),
    ('after:"2026-11-29 09:30-01:00"', {3}),
    ("-after:2026-11-29", {2}),
    # message ids, with or without their angle brackets
    ("message-id:one@y.test", {1}),
    ("message-id:<one@y.test>", {1}),
    ("message-id:one", set()),
    ("message-id:<<four>@x.test>", {4}),
    # everything together
    ("to:x.test -has:attachment password", {2}),
    # words and addresses together (answered from the full-text and address tables alone)
    ("to:x.test password", {1, 2}),
    ("to:x.test subject:weekly password", {2}),
    ("from:y.test to:a@x.test", {1}),
    ('to:sub.x.test to:x.test.evil "literal and"', {3}),
]


@pytest.mark.parametrize(("text", "seqs"), SELECTED)
def test_query_selects(db: sqlite3.Connection, text: str, seqs: set[int]) -> None:
    assert selected(db, text) == seqs


def test_a_word_that_looks_like_a_field_is_refused_until_quoted(db: sqlite3.Connection) -> None:
    with pytest.raises(QuerySyntaxError, match="unknown field 'col'"):
        parse("col:on")
    assert selected(db, '"col:on"') == {3}


# ---- hostile text never reaches SQLite as syntax ------------------------------------------------------------------

HOSTILE = [
    '"',
    '""""',
    '"a"" b"',
    "a\"b'c",
    "*",
    "a*",
    "^a",
    "NEAR(a b)",
    "NEAR(",
    "a OR b",
    "a AND b",
    "NOT a",
    "(a",
    "a)",
    "{subject}: a",
    "subject: a",
    "body:a",
    "addresses:x",
    "a:b",
    "-(a)",
    "+a",
    "a - - b",
    "to:a'b@x.test",
    'to:"a b"@x.test',
    "filename:'; DROP TABLE messages; --",
    "domain:x.test'--",
    "to:%",
    "to:\\",
    "from:a@%",
    "larger:0",
    "x\ty\nz\r",
    "x\u2028y\x1fz",
    "\u200b",
    "\ufeffa",
    "\U0001f4e7",
    "\ue000",
    "a\x00",
    "\x7f",
    "\ud800",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_searched_or_refused(db: sqlite3.Connection, text: str) -> None:
    with contextlib.suppress(QuerySyntaxError):
        selected(db, text)


def test_fts_syntax_is_searched_for_as_words(db: sqlite3.Connection) -> None:
    _, parameters = to_sql(parse('NEAR( "a \\" b" subject:"x\\" y" *z'))
    assert parameters == ['"NEAR("', '"a "" b"', 'subject : "x"" y"', '"*z"']


SYNTAX = [" ", "-", '"', "\\", ":", "*", "^", "(", ")", "<", ">", "@", "%", "_", "'", "\x00", "\t", "OR", "NEAR", "é"]
WORDS = ["to:", "from:", "subject:", "domain:", "has:", "larger:", "before:", "message-id:", "filename:", "x.test"]
VALUES = ["a", "10", "KiB", "2026-11-29", "T10:00", "Z", "+01:00", "attachment", ".", "x:"]
FRAGMENTS = st.sampled_from([*SYNTAX, *WORDS, *VALUES])


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text() | st.lists(FRAGMENTS, max_size=12).map("".join))
@example(text='to:a@x.test subject:"a b" -has:attachment larger:1KiB before:2026-11-29T10:00+01:00 x')
def test_any_text_is_a_query_that_runs_or_a_syntax_error(db: sqlite3.Connection, text: str) -> None:
    try:
        query = parse(text)
    except QuerySyntaxError as refused:
        assert 0 <= refused.position <= len(text)
        return
    assert all(0 <= term.position < len(text) for term in query.terms)
    condition, parameters = to_sql(query)
    assert condition.count("?") == len(parameters)
    db.execute(f"SELECT count(*) FROM messages AS m WHERE {condition}", parameters).fetchone()
    selected(db, text)  # and the set from the indexes, where there is one, is the same


# -- which arrivals can wake a wait -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "domain", "key"),
    [
        ("message-id:<a@x.test> to:bob@x.test", None, ("message-id", "a@x.test")),
        ("to:bob@X.Test subject:hi", "x.test", ("to address", "bob@x.test")),
        ("from:x.TEST", None, ("from domain", "x.test")),
        ("hello domain:Y.test", None, ("domain", "y.test")),
        ("hello", "y.test", ("domain", "y.test")),
        ("-message-id:a@x.test -to:bob@x.test hello larger:1KiB", None, None),
        ("", None, None),
    ],
)
def test_a_wait_is_keyed_by_the_rarest_thing_its_query_names(text: str, domain: str | None, key: object) -> None:
    assert wake_key(parse(text) if text else None, domain) == key


def test_arrival_keys_name_the_message_id_the_domain_and_each_address_by_role() -> None:
    keys = arrival_keys("a@x.test", "x.test", [("to", "Bob@x.test", "x.test"), ("from", "al@y.test", "y.test")])
    assert keys == {
        ("message-id", "a@x.test"),
        ("domain", "x.test"),
        ("to address", "Bob@x.test"),
        ("to domain", "x.test"),
        ("from address", "al@y.test"),
        ("from domain", "y.test"),
    }


@pytest.mark.parametrize(
    ("text", "alone"),
    [
        ("message-id:a@x.test", True),
        ("message-id:a@x.test domain:x.test has:attachment larger:1KiB -before:2026-01-01", True),
        ("message-id:a@x.test hello", False),
        ("message-id:a@x.test subject:hi", False),
        ("message-id:a@x.test -from:y.test", False),
        ("message-id:a@x.test filename:a.pdf", False),
    ],
)
def test_a_query_is_answered_from_rows_alone_only_without_text_addresses_or_file_names(text: str, alone: bool) -> None:
    assert on_rows_alone(parse(text)) is alone
