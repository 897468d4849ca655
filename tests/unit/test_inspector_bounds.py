"""What a message can make the inspector spend: bounded, measured as work (and, for a headline's
own scan, a generous time).

The email package's header parser is super-linear on some fields (thousands of encoded
words, parameters, addresses) and takes every MIME part apart. These tests count what it
is given: characters through the header parsers and MIME parts created, with a meter that
stops counting (and the parse) once a bound is passed, so that code without the bounds
fails at once instead of taking minutes. bench/inspector.py has the times.
"""

from __future__ import annotations

import email.feedparser
import email.headerregistry
import email.message
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from maillab_common.forward import Record, render_record
from maillab_inspector import model
from maillab_inspector.model import (
    FIELD_CHARACTERS,
    HEADER_BUDGET,
    MAX_PARTS,
    SHOW_HEADER_BUDGET,
    Budget,
    headers_shown,
    headline,
    parse_headers,
    summarize,
)
from tests.helpers import BASE, inspector
from tests.hostile import ENCODED_WORD as WORD
from tests.hostile import hostile_messages, multipart

HOSTILE = hostile_messages()


class Exceeded(Exception):
    """Raised by the meter once a bound is passed: the email package gives up, and so does the test."""


@dataclass
class Meter:
    characters: int = 0  # given to the header parsers (the new one, and the older parameter parser)
    longest: int = 0  # the longest field given to one
    parts: int = 0  # messages and MIME parts created by the parser
    exceeded: str = ""
    character_limit: int = 0
    part_limit: int = MAX_PARTS + 2  # the whole message and its parts, then its headers alone

    def field(self, value: object, longest_allowed: int = FIELD_CHARACTERS) -> None:
        length = len(str(value))
        self.characters += length
        self.longest = max(self.longest, length)
        if length > longest_allowed:
            self._exceed(f"a field of {length} characters parsed")
        if self.characters > self.character_limit:
            self._exceed(f"over {self.character_limit} characters parsed")

    def part(self) -> None:
        self.parts += 1
        if self.parts > self.part_limit:
            self._exceed(f"over {self.part_limit} parts")

    def _exceed(self, why: str) -> None:
        self.exceeded = self.exceeded or why
        raise Exceeded(why)


@pytest.fixture
def meter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], Meter]]:
    meters: list[Meter] = []

    def start(character_limit: int) -> Meter:
        meters.append(Meter(character_limit=character_limit))
        return meters[-1]

    registry_call = email.headerregistry.HeaderRegistry.__call__
    parseparam = email.message._parseparam  # type: ignore[attr-defined]
    new_message = email.feedparser.FeedParser._new_message  # type: ignore[attr-defined]

    def counted_registry(self: Any, name: str, value: str) -> Any:
        if meters:
            meters[-1].field(value)
        return registry_call(self, name, value)

    def counted_parseparam(value: str) -> Any:
        if meters:
            meters[-1].field(value, 2 * FIELD_CHARACTERS)  # a parsed field, written out again: quotes added
        return parseparam(value)

    def counted_new_message(self: Any) -> None:
        if meters:
            meters[-1].part()
        new_message(self)

    monkeypatch.setattr(email.headerregistry.HeaderRegistry, "__call__", counted_registry)
    monkeypatch.setattr(email.message, "_parseparam", counted_parseparam)
    monkeypatch.setattr(email.feedparser.FeedParser, "_new_message", counted_new_message)
    yield start


def record(message: bytes) -> Record:
    return Record(offset=0, length=len(message), delivery=replace(BASE, message=message))


@pytest.mark.parametrize("case", HOSTILE)
def test_a_summary_parses_a_bounded_part_of_any_message(case: str, meter: Callable[[int], Meter]) -> None:
    # Each time a field is read it is charged at least its length; the older parameter parser
    # may read it once more.
    measured = meter(2 * HEADER_BUDGET + 2 * FIELD_CHARACTERS)
    summary = summarize("x.test", record(HOSTILE[case]))
    assert measured.exceeded == "", measured
    assert summary.subject, "the subject is still read"


@pytest.mark.parametrize("case", HOSTILE)
def test_a_headline_parses_two_fields_of_any_message_and_no_part(case: str, meter: Callable[[int], Meter]) -> None:
    """A line (`list`, a `watch` behind) gives the parser the Subject and Message-ID, each cut, and nothing else."""
    measured = meter(2 * FIELD_CHARACTERS)
    measured.part_limit = 0
    started = time.perf_counter()
    line = headline("x.test", record(HOSTILE[case]))
    # Its own scan is linear: a generous bound (about 100 ms on the slowest case), so that a
    # quadratic one (seconds to minutes on these megabytes) fails.
    assert time.perf_counter() - started < 2.0
    assert measured.exceeded == "", measured
    assert line.subject, "the subject is read"


@pytest.mark.parametrize("case", HOSTILE)
def test_show_decodes_a_bounded_part_of_any_message(case: str, meter: Callable[[int], Meter]) -> None:
    measured = meter(SHOW_HEADER_BUDGET + FIELD_CHARACTERS)
    shown = headers_shown(parse_headers(record(HOSTILE[case])))
    assert measured.exceeded == "", measured
    assert len(shown) == HOSTILE[case].split(b"\n\n", 1)[0].count(b"\n") + 1, "every field is shown"


def test_a_long_subject_of_encoded_words_is_decoded_in_part_and_kept_whole() -> None:
    summary = summarize("x.test", record(HOSTILE["a subject of 26,000 encoded words (560 KB)"]))
    decoded = summary.subject[: summary.subject.index("=?")].rstrip()
    assert decoded == "é" * len(decoded) and len(decoded) > 1000, "its first 8 KiB, decoded"
    assert summary.subject.endswith(WORD), "the rest as stored"
    assert summary.problem == f"Subject over {FIELD_CHARACTERS // 1024} KiB: encoded words past that shown as stored"


def test_a_long_plain_subject_is_still_whole_and_no_problem() -> None:
    subject = " ".join(["word"] * 100_000)
    summary = summarize("x.test", record(f"Subject: {subject}\n\nx\n".encode()))
    assert summary.subject == subject and summary.problem == ""


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("100,000 MIME parts", f"more than {MAX_PARTS:,} MIME parts: headers only"),
        ("500 parts with 2,000 parameters each", f"header fields over {HEADER_BUDGET // 1024} KiB to parse"),
    ],
)
def test_a_message_past_the_bounds_is_summarised_from_its_headers(case: str, problem: str) -> None:
    summary = summarize("x.test", record(HOSTILE[case]))
    assert summary.subject == "parts" and summary.problem.startswith(problem)


def test_fields_parsed_once_a_process_are_still_charged_to_each_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header object shared across messages (model.SHARED_FIELDS) saves the parse, not the
    charge: the bound holds, and the summary is the same as without it."""
    part = 'Content-Type: text/plain; charset="utf-8"\nContent-Disposition: attachment; filename="a1.bin"\n\nx'
    message = record(multipart([part] * 50))
    shared = [summarize("x.test", message, Budget(header_characters=4000)) for _ in range(2)]
    assert shared[0] == shared[1] and shared[0].problem.startswith("header fields over 3 KiB to parse")
    whole = summarize("x.test", message)
    monkeypatch.setattr(model, "SHARED_CHARACTERS", -1)  # nothing shared
    assert summarize("x.test", message) == whole and len(whole.attachments) == 50
    assert summarize("x.test", message, Budget(header_characters=4000)) == shared[0]


def test_a_message_within_the_bounds_is_read_whole() -> None:
    attachment = 'Content-Type: application/pdf; name="report.pdf"\nContent-Disposition: attachment; filename="r.pdf"'
    message = multipart([f"{attachment}\nContent-Transfer-Encoding: base64\n\naGVsbG8="] * 600)
    summary = summarize("x.test", record(message))
    assert summary.problem == "" and len(summary.attachments) == 600


def test_show_of_a_huge_message_prints_every_header(tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    message = b"Message-ID: <big@x.test>\n" + HOSTILE["100,000 header fields of encoded words"]
    (forward / "x.test").write_bytes(render_record(replace(BASE, message=message)))
    result = inspector(forward, "show", "big@x.test")
    assert result.returncode == 0, result.stderr
    assert "X-H0: éééééé" in result.stdout, "decoded while the budget lasts"
    assert f"X-H99999: {WORD} {WORD}" in result.stdout, "as stored after"


def test_show_and_verify_read_whole_a_message_past_a_summarys_bounds(tmp_path: Path) -> None:
    # 1,200 small attachments: past a summary's part budget (watch and list show its headers),
    # an ordinary message all the same, which show must print and verify must not call corrupted.
    count = MAX_PARTS + 200
    parts = [f"Content-Disposition: attachment; filename=a{n}.txt\n\nx{n}" for n in range(count)]
    message = multipart(["Content-Type: text/plain\n\nthe text body", *parts]).replace(
        b"Subject: parts\n", b"Subject: many\nMessage-ID: <many@x.test>\n"
    )
    forward = tmp_path / "forward"
    forward.mkdir()
    stored = render_record(replace(BASE, message=message, rcpt_tos=("bob@a.test",)))
    (forward / "a.test").write_bytes(stored)
    summary = summarize("a.test", Record(offset=0, length=len(stored), delivery=replace(BASE, message=message)))
    assert "MIME parts" in summary.problem and summary.attachments == ()

    shown = inspector(forward, "show", "many@x.test")
    assert shown.returncode == 0, shown.stderr
    assert "the text body" in shown.stdout

    digests = [hashlib.sha256(f"x{n}".encode()).hexdigest() for n in range(count)]
    entry = {
        "message_id": "<many@x.test>",
        "rcpt_tos": ["bob@a.test"],
        "subject": "many",
        "accepted": True,
        "attachments": [{"filename": f"a{n}.txt", "sha256": digests[n]} for n in range(count)],
    }
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"messages": [entry]}))
    verified = inspector(forward, "verify", "--manifest", str(manifest), "--timeout", "0")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "delivered 1" in verified.stdout and "corrupted 0" in verified.stdout
