"""What the catalogue keeps of a record (model.catalogue_entry), a message read whole for the web
(model.message_detail), a record read again at its offset (stored.record_at), and verify.check
over the catalogue's rows."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records, render_record
from maillab_inspector.catalogue import Entry, Found
from maillab_inspector.model import (
    CATALOGUE_TEXT,
    AttachmentSummary,
    catalogue_entry,
    message_detail,
    summarize,
)
from maillab_inspector.stored import record_at
from maillab_inspector.verify import Expected, check
from tests.helpers import BASE, MULTIPART
from tests.hostile import hostile_messages


def stored(message: bytes, **trace: object) -> Record:
    """`message` as a record of a forward file, parsed back from the bytes the server writes."""
    items, rest = parse_records(render_record(replace(BASE, message=message, **trace)), 0)  # type: ignore[arg-type]
    assert not rest and len(items) == 1 and isinstance(items[0], Record)
    return items[0]


ADDRESSED = (
    b'From: "Doe, Jane" <Jane@Example.TEST>\n'
    b"To: bob@x.test, Carol <carol@Y.test>, undisclosed-recipients:;\n"
    b"Cc: =?utf-8?q?D=C3=A9d=C3=A9?= <dede@z.test>, not-an-address\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= menu\n"
    b"Date: Sat, 28 Nov 2026 09:05:07 +0000\n"
    b"Message-ID: <abc.123@x.test>\n\n"
    b"Line one,\n\n   line\ttwo.\n"
)


def test_an_entry_holds_the_envelope_the_decoded_headers_and_where_the_record_is() -> None:
    record = stored(ADDRESSED, transaction_id="TX1")
    entry = catalogue_entry("x.test", record, inode=77)
    assert entry.id == hashlib.sha256(b"x.test\x000\x00TX1").hexdigest()[:16]
    assert (entry.domain, entry.inode, entry.offset, entry.length) == ("x.test", 77, 0, record.length)
    assert entry.received == int(datetime(2026, 11, 28, 9, 5, 7, tzinfo=UTC).timestamp())
    assert (entry.mail_from, entry.rcpt_to) == ("alice@example.test", ("bob@example.test",))
    assert entry.header_from == '"Doe, Jane" <Jane@Example.TEST>'
    assert entry.header_to == "bob@x.test, Carol <carol@Y.test>, undisclosed-recipients:;"
    assert entry.header_cc.startswith("Dédé") and "dede@z.test" in entry.header_cc
    assert entry.subject == "café menu"
    assert entry.date == "Sat, 28 Nov 2026 09:05:07 +0000"
    assert entry.message_id == "abc.123@x.test"
    assert entry.from_addresses == ("Jane@Example.TEST",)
    assert entry.to_addresses == ("bob@x.test", "carol@Y.test", "dede@z.test")
    assert entry.size == len(ADDRESSED)
    assert entry.snippet == "Line one, line two."
    assert entry.text == "Line one,\n\n   line\ttwo.\n"
    assert (entry.attachments, entry.problem) == ((), "")


def test_the_same_record_at_another_offset_or_in_another_file_has_another_id() -> None:
    record = stored(ADDRESSED)
    ids = {
        catalogue_entry("x.test", record, 1).id,
        catalogue_entry("y.test", record, 1).id,
        catalogue_entry("x.test", replace(record, offset=10), 1).id,
        catalogue_entry("x.test", stored(ADDRESSED, transaction_id="OTHER"), 1).id,
    }
    assert len(ids) == 4
    assert catalogue_entry("x.test", record, 2).id == catalogue_entry("x.test", record, 1).id


def test_attachments_are_summarised_as_a_summary_does() -> None:
    record = stored(MULTIPART)
    entry = catalogue_entry("x.test", record, 1)
    assert entry.attachments == summarize("x.test", record).attachments
    assert entry.attachments == (AttachmentSummary("p.png", "image/png", 5, hashlib.sha256(b"hello").hexdigest()),)
    assert (entry.subject, entry.snippet, entry.message_id) == ("café", "hello", "m@x.test")


def test_the_snippet_is_the_first_200_characters_and_the_text_is_bounded() -> None:
    body = ("word  \n" * 30_000).encode()
    entry = catalogue_entry("x.test", stored(b"Subject: long\n\n" + body), 1)
    assert len(entry.snippet) == 200 and entry.snippet.startswith("word word ")
    assert len(entry.text) == CATALOGUE_TEXT


def test_a_message_without_headers_or_body_gives_empty_fields() -> None:
    entry = catalogue_entry("x.test", stored(b"\n"), 1)
    assert (entry.subject, entry.header_from, entry.message_id, entry.snippet) == ("", "", "", "")
    assert entry.from_addresses == entry.to_addresses == ()


def test_eight_bit_junk_and_unknown_charsets_give_valid_unicode() -> None:
    message = (
        b"From: J\xe9r\xf4me <j\xe9@x.test>\nTo: \xff\xfe@y.test\nSubject: caf\xe9 =?x-unknown?q?abc?=\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\n\nbody \xe9\xff\n"
    )
    entry = catalogue_entry("x.test", stored(message), 1)
    for text in (entry.header_from, entry.header_to, entry.subject, entry.snippet, entry.text, entry.problem):
        text.encode("utf-8")  # raises on a surrogate: what SQLite and JSON could not take
    for address in entry.from_addresses + entry.to_addresses:
        address.encode("utf-8")
    assert "caf" in entry.subject


def test_a_message_of_many_recipients_is_catalogued_under_its_first_ones() -> None:
    message = f"Subject: s\nTo: {', '.join(f'u{n}@x.test' for n in range(100_000))}\n\nx\n".encode()
    entry = catalogue_entry("x.test", stored(message), 1)
    assert entry.to_addresses[:2] == ("u0@x.test", "u1@x.test")
    assert 100 < len(entry.to_addresses) < 5000
    assert len(entry.header_to) <= 32 * 1024


@pytest.mark.parametrize("name", list(hostile_messages()))
def test_a_hostile_message_never_raises(name: str) -> None:
    entry = catalogue_entry("x.test", stored(hostile_messages()[name]), 1)
    assert isinstance(entry, Entry)
    assert len(entry.subject) <= 32 * 1024 and len(entry.text) <= CATALOGUE_TEXT
    for text in (entry.subject, entry.header_to, entry.text, entry.problem):
        text.encode("utf-8")


HTML = (
    b"From: a@x.test\nSubject: both\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="m"\n\n'
    b'--m\nContent-Type: multipart/alternative; boundary="a"\n\n'
    b"--a\nContent-Type: text/plain; charset=utf-8\n\nplain text\n"
    b"--a\nContent-Type: text/html; charset=utf-8\n\n<p>html <b>text</b></p>\n--a--\n"
    b'--m\nContent-Type: application/pdf\nContent-Disposition: attachment; filename="r.pdf"\n'
    b"Content-Transfer-Encoding: base64\n\nJVBERi0=\n--m--\n"
)


def test_a_detail_has_every_header_both_bodies_and_the_attachments() -> None:
    detail = message_detail(stored(HTML))
    assert detail.headers[:2] == [("From", "a@x.test"), ("Subject", "both")]
    assert detail.text == "plain text"
    assert detail.html == "<p>html <b>text</b></p>"
    assert detail.attachments == [("r.pdf", "application/pdf", b"%PDF-")]
    assert detail.problem == ""


def test_a_detail_without_html_has_an_empty_one() -> None:
    detail = message_detail(stored(MULTIPART))
    assert (detail.html, detail.text, detail.problem) == ("", "hello", "")
    assert ("Subject", "café") in detail.headers


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: s\nContent-Type: text/html; charset=x-no-such-charset\n\n<p>\xe9</p>\n",
        b"Subject: \xff\xfe\nX-Junk: =?utf-8?b?////?=\nContent-Type: text/html\n\n<p>\xe9\xff</p>\n",
        hostile_messages()["MIME nested 3,000 deep"],
        hostile_messages()["a subject of 26,000 encoded words (560 KB)"],
        hostile_messages()["a To of 100,000 addresses"],
    ],
    ids=["unknown charset", "8-bit junk", "nested", "encoded words", "many addresses"],
)
def test_a_detail_of_a_hostile_message_never_raises_and_is_valid_unicode(message: bytes) -> None:
    detail = message_detail(stored(message))
    for name, value in detail.headers:
        (name + value).encode("utf-8")
    (detail.text + detail.html + detail.problem).encode("utf-8")


# ---- record_at ------------------------------------------------------------------------------------------------------


@pytest.fixture
def forward(tmp_path: Path) -> Path:
    root = tmp_path / "forward"
    root.mkdir()
    (root / "x.test").write_bytes(
        b"".join(
            render_record(replace(BASE, transaction_id=f"T{n}", message=f"Subject: n{n}\n\nb\n".encode()))
            for n in range(3)
        )
    )
    return root


def records_of(path: Path) -> list[Record]:
    items, rest = parse_records(path.read_bytes(), 0)
    assert not rest
    return [item for item in items if isinstance(item, Record)]


def test_record_at_reads_the_record_back(forward: Path) -> None:
    inode = os.stat(forward / "x.test").st_ino
    for record in records_of(forward / "x.test"):
        assert record_at(forward, "x.test", inode, record.offset, record.length) == record


def test_record_at_gives_none_for_anything_but_that_record(forward: Path, tmp_path: Path) -> None:
    inode = os.stat(forward / "x.test").st_ino
    second = records_of(forward / "x.test")[1]
    at = (second.offset, second.length)
    assert record_at(forward, "x.test", inode + 1, *at) is None, "another inode: the file was replaced"
    assert record_at(forward, "x.test", inode, second.offset + 1, second.length) is None
    assert record_at(forward, "x.test", inode, second.offset, second.length - 1) is None
    assert record_at(forward, "x.test", inode, second.offset, second.length * 2) is None, "two records"
    assert record_at(forward, "x.test", inode, second.offset, 10**9) is None, "past the end"
    assert record_at(forward, "y.test", inode, *at) is None
    assert record_at(forward, "x.test", inode, -1, second.length) is None
    (tmp_path / "outside").write_bytes((forward / "x.test").read_bytes())
    outside = os.stat(tmp_path / "outside").st_ino
    assert record_at(forward, "../outside", outside, *at) is None
    (forward / "link.test").symlink_to(tmp_path / "outside")
    assert record_at(forward, "link.test", outside, *at) is None


def test_record_at_gives_none_once_the_file_is_replaced(forward: Path) -> None:
    inode = os.stat(forward / "x.test").st_ino
    record = records_of(forward / "x.test")[0]
    replacement = forward / "new"
    replacement.write_bytes((forward / "x.test").read_bytes())
    replacement.replace(forward / "x.test")
    assert record_at(forward, "x.test", inode, record.offset, record.length) is None


# ---- verify over the catalogue ---------------------------------------------------------------------------------------


def found(subject: str, attachments: tuple[AttachmentSummary, ...] = (), problem: str = "") -> Found:
    return Found(
        seq=1,
        id="i",
        domain="x.test",
        message_id="1@x",
        inode=1,
        offset=0,
        length=1,
        subject=subject,
        problem=problem,
        attachments=attachments,
        deleted=False,
    )


def test_check_counts_the_catalogues_rows_as_it_counts_summaries() -> None:
    attachment = AttachmentSummary("a.txt", "text/plain", 1, "aa")
    expected = [
        Expected("<1@x>", "x.test", "first", (("a.txt", "aa"),)),
        Expected("<2@x>", "x.test", "second", ()),
        Expected("<3@x>", "x.test", "third", ()),
        Expected("<4@x>", "x.test", "fourth", ()),
    ]
    report = check(
        expected,
        {
            ("<1@x>", "x.test"): [found("first", (attachment,))],
            ("<2@x>", "x.test"): [found("other")],
            ("<4@x>", "x.test"): [found("fourth"), found("fourth")],
        },
    )
    assert (report.expected, report.delivered) == (4, 2)
    assert report.missing == [("<3@x>", "x.test")]
    assert report.corrupted == [(("<2@x>", "x.test"), "subject 'other', expected 'second'")]
    assert report.duplicated == [(("<4@x>", "x.test"), 2)]
