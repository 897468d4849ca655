"""A headline (the header block alone, for one line) says what the full summary says.

`model.headline` reads the Subject and Message-ID without the email package's parser, so
these tests hold it to the parser: for generated header blocks (folded lines, encoded
words, duplicate and differently cased names, CRs and CRLFs, controls, NULs, bytes that are
not ASCII, no separator before the body) and for every message of the hostile batteries,
the headline's fields are the summary's. tests/unit/test_inspector_bounds.py bounds its work.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import fields, replace
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from maillab_common.forward import Record, render_record
from maillab_inspector import model, stored
from maillab_inspector.model import FIELD_CHARACTERS, Headline, MessageSummary, headline, summarize
from maillab_inspector.render import as_line
from maillab_inspector.tail import ForwardTail
from tests.helpers import BASE
from tests.hostile import hostile_messages
from tests.unit.test_inspector_battery import HOSTILE as MALFORMED

FIELD_PROBLEM = "encoded words past that shown as stored"


def record(message: bytes, offset: int = 0) -> Record:
    return Record(offset=offset, length=len(message), delivery=replace(BASE, message=message))


def assert_same_line(message: bytes) -> Headline:
    """The headline of `message` says what its summary says, but for the MIME problems it cannot know."""
    line, summary = headline("x.test", record(message)), summarize("x.test", record(message))
    for field in fields(Headline):
        if field.name != "problem":
            assert getattr(line, field.name) == getattr(summary, field.name), (field.name, message[:300])
    field_problems = [problem for problem in summary.problem.split("; ") if problem.endswith(FIELD_PROBLEM)]
    assert line.problem == "; ".join(field_problems), (summary.problem, message[:300])
    return line


WORD = b"=?utf-8?b?" + base64.b64encode("é ü".encode()) + b"?="
FIELDS = [b"Subject", b"subject", b"SUBJECT", b"SuBjEcT", b"Message-ID", b"message-id", b"Message-Id", b"MESSAGE-ID"]
OTHERS = [
    b"From",
    b"To",
    b"X-Subject",
    b"Subjects",
    b"Message-ID-X",
    b"Content-Type",
    b"Subject ",
    b"S\xc3\xbcbject",
    b"",
]
PIECES = [b" ", b"\t", b"  ", b"plain", b"<a@b.test>", b"<", b">", b"@", b"=?", b"?=", WORD, b"=?utf-8?q?caf=C3=A9?="]
PIECES += [b"=?iso-8859-1?q?x_y?=", b"=?x-nonexistent?b?!!?=", b"=?utf-8?b?////?=", b"\x00", b"\x1b]0;T\x07", b"\x7f"]
PIECES += [b"\xc3\xa9", b"\xff\xfe", b"\x85", b"\x0b", b":", b";", b'"', b"(c)", b"From ", b"\r", b"\r "]
# Mostly bytes that keep a value on its line, so that header blocks run on; now and then a line end.
noise = st.binary(max_size=4).map(lambda value: value.replace(b"\n", b"").replace(b"\r", b""))
values = st.lists(st.sampled_from(PIECES) | noise, max_size=8).map(b"".join)
# Past FIELD_CHARACTERS: what a summary reports as a problem, and so must a headline.
long_values = st.sampled_from([b""] * 5 + [b"w " * (FIELD_CHARACTERS // 2 + 10)]).flatmap(
    lambda padding: values.map(lambda value: padding + value)
)
names = st.sampled_from(FIELDS) | st.sampled_from(OTHERS)
field_lines = st.tuples(names, st.sampled_from([b":", b": ", b":\t", b":  ", b" :"]), long_values).map(b"".join)
continuations = st.tuples(st.sampled_from([b" ", b"\t", b"  "]), values).map(b"".join)
# Lines the feedparser treats apart: a Unix From line, a field without a name, a line that
# ends the header block (no colon, a name with a space or a byte that is not ASCII, empty).
odd_lines = st.sampled_from(
    [b"From sender Sat Jan  1 00:00:00 2026", b":no name", b"no colon", b"X Y: z", b"", b"\x00"]
)
# Half of them fields, a third continuations, the rest odd lines.
kinds = st.sampled_from([field_lines] * 3 + [continuations] * 2 + [odd_lines])
lines = st.lists(kinds.flatmap(lambda kind: kind), max_size=10)
line_ends = st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"])


@settings(max_examples=400, deadline=None)
@example(header=[([b"X: a", b"subject:\tb", b" c", b"Message-Id: <m@x>"], b"\r")], separator=b"\r\n", body=b"")
@example(header=[([b"From x", b" y", b":z", b"Subject: s", b"SUBJECT: t"], b"\n")], separator=b"", body=b" b\n")
@given(
    header=st.lists(st.tuples(lines, line_ends), max_size=3),
    separator=st.sampled_from([b"\n", b"\r\n", b"\r", b""]),
    body=st.sampled_from([b"", b"body\n", b"Subject: in the body\nMessage-ID: <body@x>\n", b" indented\n"]),
)
def test_a_headline_reads_the_fields_a_summary_reads(
    header: list[tuple[list[bytes], bytes]], separator: bytes, body: bytes
) -> None:
    message = b"".join(end.join(group) + end for group, end in header if group) + separator + body
    assert_same_line(message)


@pytest.mark.parametrize("case", hostile_messages())
def test_a_headline_of_a_hostile_message_is_its_summarys(case: str) -> None:
    assert_same_line(hostile_messages()[case])


@pytest.mark.parametrize("case", MALFORMED)
def test_a_headline_of_a_malformed_message_is_its_summarys(case: str) -> None:
    line = assert_same_line(MALFORMED[case][0])
    assert MALFORMED[case][1] in (None, line.subject)


def test_a_summary_is_a_headline_and_prints_the_same_line() -> None:
    message = b"Subject: s\nMessage-ID: <m@x.test>\nContent-Type: multipart/mixed\n\n--x\n\nhi\n"
    summary = summarize("x.test", record(message))
    assert isinstance(summary, MessageSummary) and isinstance(summary, Headline)
    assert as_line(summary) == as_line(headline("x.test", record(message)))
    line = as_line(headline("x.test", record(b"Subject: s\nMessage-ID: <m@x.test>\n\nx\n")))
    assert line == "2026-11-28T09:05:07Z  x.test  <m@x.test>  <alice@example.test>  37B  s", "no attachment column"


def test_headlines_log_damage_and_problems_as_summaries_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plain = render_record(replace(BASE, message=b"Subject: one\n\nx\n"))
    long = render_record(replace(BASE, message=b"Subject: " + b"w " * FIELD_CHARACTERS + WORD + b"\n\nx\n"))
    (tmp_path / "x.test").write_bytes(plain + b"GARBAGE\n" + long)
    with caplog.at_level(logging.WARNING):
        found = list(stored.headlines(ForwardTail(tmp_path).poll_all()))
    assert [line.subject[:3] for line in found] == ["one", "w w"]
    assert "damaged bytes" in caplog.text and f"Subject over {FIELD_CHARACTERS // 1024} KiB" in caplog.text


def test_a_headline_that_raises_is_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(domain: str, record: Record) -> Headline:
        raise ValueError("unexpected")

    monkeypatch.setattr(model, "headline", broken)
    with caplog.at_level(logging.WARNING):
        assert stored.headline("x.test", record(b"Subject: s\n\nx\n", offset=7)) is None
    assert "x.test: the message at offset 7 cannot be summarised: unexpected" in caplog.text
