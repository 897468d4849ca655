"""Malformed forward files: the inspector warns about what it cannot read and goes on."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from maillab_common.forward import Record, render_record
from maillab_inspector.model import TOO_DEEP, headers_shown, read_contents, summarize
from maillab_inspector.render import SHOWN_CHARACTERS, as_json, as_line, as_panel
from maillab_inspector.tail import ForwardTail
from tests.helpers import BASE, Watch, inspector


def record(message: bytes) -> bytes:
    return render_record(replace(BASE, message=message))


def plain(number: int) -> bytes:
    return record(f"Subject: plain {number}\nMessage-ID: <p{number}@x.test>\n\nfine\n".encode())


def nested(levels: int) -> bytes:
    """A multipart inside a multipart, `levels` deep: past about 1,000 the email package recurses too deep."""
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (n, n) for n in range(levels))
    closing = b"".join(b"--b%d--\n" % n for n in reversed(range(levels)))
    return b"Subject: deep\nMIME-Version: 1.0\n" + opening + b"Content-Type: text/plain\n\nleaf\n" + closing


ATTACHMENT = b'Content-Disposition: attachment; filename="a.pdf"\nContent-Transfer-Encoding: base64\n\n'
# Each: the record's message, and the subject the inspector should print for it.
HOSTILE = {
    "a 4 MiB header line": (b"Subject: " + b"h" * (4 << 20) + b"\n\nbody\n", "h" * (4 << 20)),
    "100,000 header fields": (b"".join(b"X-H%d: v\n" % n for n in range(100_000)) + b"Subject: many\n\nx\n", "many"),
    "MIME nested 3,000 deep": (nested(3000), "deep"),
    "MIME nested 500 deep": (nested(500), "deep"),
    "message/rfc822 nested 2,000 deep": (b"Subject: rfc822\n" + b"Content-Type: message/rfc822\n\n" * 2000, "rfc822"),
    "bad base64": (
        b"Subject: b64\nContent-Type: multipart/mixed; boundary=z\n\n--z\n"
        + ATTACHMENT
        + b"!!not base64\x00\xff=\n--z--\n",
        "b64",
    ),
    "bad quoted-printable": (b"Subject: qp\nContent-Transfer-Encoding: quoted-printable\n\n=ZZ=\n=E2=8\n", "qp"),
    "unknown charsets": (b"Subject: cs\nContent-Type: text/plain; charset=x-bogus\n\n\xff\xfe\n", "cs"),
    "a bad encoded word": (b"Subject: =?x-nonexistent?b?!!!?=\n\nx\n", "=?x-nonexistent?b?!!!?="),
    "binary headers": (b"Subject: \xff\xfe\x00\nFrom: \x80 <\xff@\xfe>\nMessage-ID: <\xff>\n\n\x00\x01\n", None),
    "multipart without a boundary": (b"Subject: nb\nContent-Type: multipart/mixed\n\n--x\n\nhi\n", "nb"),
    "an unterminated multipart": (
        b"Subject: ut\nContent-Type: multipart/mixed; boundary=q\n\n--q\n" + ATTACHMENT + b"AAAA\n",
        "ut",
    ),
    "broken parameters": (
        b"Subject: bp\nContent-Type: text/plain; charset*=''; ;;; =\n"
        b'Content-Disposition: attachment; filename="\n\nx\n',
        "bp",
    ),
    "an address list the header parser trips over": (b"Subject: tf\nFrom: 5=08,c0\t, .78Bf4a\x00,]5\n\nx\n", "tf"),
    "a disposition the MIME walk trips over": (
        b"Subject: cd\nContent-Disposition: ).?;2a\xff2*\n\nx\n",
        "cd",
    ),
    "an empty message": (b"", ""),
    "headers and no body": (b"Subject: only", "only"),
    "a subject of 26,000 encoded words": (
        b"Subject: " + b" ".join([b"=?utf-8?q?=C3=A9?="] * 26_000) + b"\n\nx\n",
        None,
    ),
    "100,000 MIME parts": (
        b"Subject: parts\nContent-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 100_000 + b"--b--\n",
        "parts",
    ),
}

TOO_DEEP_CASES = ("MIME nested 3,000 deep", "message/rfc822 nested 2,000 deep")
UNREADABLE_CASES = ("a disposition the MIME walk trips over",)
# Past the inspector's bounds (tests/unit/test_inspector_bounds.py): read in part, and said so.
BOUNDED_CASES = {
    "a subject of 26,000 encoded words": "Subject over 8 KiB",
    "100,000 MIME parts": "more than 1,000 MIME parts",
}


@pytest.mark.parametrize("case", HOSTILE)
def test_watch_prints_a_hostile_message_and_the_ones_after_it(case: str, tmp_path: Path) -> None:
    message, subject = HOSTILE[case]
    forward = tmp_path / "forward"
    forward.mkdir()
    (forward / "x.test").write_bytes(plain(1) + record(message) + plain(2))
    watch = Watch(forward, tmp_path / "state.json", "--from-start")
    try:
        printed = [json.loads(watch.lines.get(timeout=60)) for _ in range(3)]
        assert [line["subject"] for line in (printed[0], printed[2])] == ["plain 1", "plain 2"]
        if subject is not None:
            assert printed[1]["subject"] == subject
        if case in TOO_DEEP_CASES:
            assert printed[1]["problem"] == TOO_DEEP
            watch.wait_for_log(TOO_DEEP)
        elif case in UNREADABLE_CASES:
            assert printed[1]["problem"].startswith("MIME parts unreadable")
        elif case in BOUNDED_CASES:
            assert printed[1]["problem"].startswith(BOUNDED_CASES[case])
        else:
            assert printed[1]["problem"] == ""
        assert watch.process.poll() is None
    finally:
        assert watch.stop() == 0


@pytest.mark.parametrize(
    ("case", "damage"),
    [
        ("garbage between records", b"GARBAGE\x00\xff" * 100 + b"\n"),
        ("a record cut short", plain(9)[:-40] + b"\n"),
        ("a From line with no trace", b"From nobody\nSubject: x\n\nno trace headers\n\n"),
        ("a length header that lies", re.sub(rb"X-Maillab-Length: (\d+)", rb"X-Maillab-Length: \g<1>00", plain(9))),
    ],
)
def test_damage_is_reported_and_the_next_record_is_read(case: str, damage: bytes, tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    (forward / "x.test").write_bytes(plain(1) + damage + plain(2))
    result = inspector(forward, "list")
    assert result.returncode == 0, result.stderr
    assert [line.rsplit("  ", 1)[1] for line in result.stdout.splitlines()] == ["plain 1", "plain 2"]
    assert "damaged bytes" in result.stderr


def test_a_file_ending_in_part_of_a_record_is_reported(tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    (forward / "x.test").write_bytes(plain(1) + plain(2)[:-30])
    result = inspector(forward, "list")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    assert "x.test: its last" in result.stderr and "not a whole record" in result.stderr


def test_show_of_a_too_deep_message_prints_its_headers_and_says_why_not_the_rest(tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    message = b"Message-ID: <deep@x.test>\n" + nested(3000)
    (forward / "x.test").write_bytes(record(message) + plain(1))
    result = inspector(forward, "show", "deep@x.test")
    assert result.returncode == 1
    assert "Subject: deep" in result.stdout and TOO_DEEP in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr
    assert inspector(forward, "show", "p1@x.test").returncode == 0, "a deep message elsewhere breaks nothing"


@pytest.mark.parametrize(
    "case", ["an address list the header parser trips over", "a disposition the MIME walk trips over"]
)
def test_show_prints_headers_the_email_package_trips_over(case: str, tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    (forward / "x.test").write_bytes(record(b"Message-ID: <trip@x.test>\n" + HOSTILE[case][0]))
    result = inspector(forward, "show", "trip@x.test")
    assert "Traceback" not in result.stderr, result.stderr
    assert f"Subject: {HOSTILE[case][1]}" in result.stdout


def test_long_lines_are_cut_where_a_person_reads_them() -> None:
    long_subject = "s" * 100_000
    delivery = replace(BASE, message=f"Subject: {long_subject}\n\n{'b' * 100_000}\n".encode())
    summary = summarize("x.test", Record(offset=0, length=1, delivery=delivery))
    assert summary.subject == long_subject, "the summary keeps it whole (JSON, verify)"
    line = as_line(summary)
    assert len(line) < SHOWN_CHARACTERS + 200 and "more characters" in line
    shown = io.StringIO()
    Console(width=120, file=shown).print(as_panel(summary))
    assert len(shown.getvalue()) < 10 * SHOWN_CHARACTERS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.floats(min_value=0, max_value=1),
    junk=st.binary(max_size=300),
    cut=st.integers(min_value=0, max_value=200),
)
def test_any_damage_leaves_every_untouched_record_readable(
    position: float, junk: bytes, cut: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Bytes replaced anywhere: every record the damage does not touch is still read, and whole."""
    records = [plain(number) for number in range(6)]
    clean = b"".join(records)
    start = int(position * len(clean))
    damaged = clean[:start] + junk + clean[start + cut :]
    forward = tmp_path_factory.mktemp("forward")
    (forward / "x.test").write_bytes(damaged)
    found = []
    for _, item in ForwardTail(forward).poll_all():
        if isinstance(item, Record):
            summarize("x.test", item)  # never raises
            found.append(item.delivery.message)
    offset = 0
    for number, rendered in enumerate(records):
        end = offset + len(rendered)
        # Untouched: wholly before the damage, or wholly after it with the line end before it intact.
        if end <= start or offset > start + cut:
            expected = f"Subject: plain {number}\n".encode()
            assert any(message.startswith(expected) for message in found), (number, start, cut)
        offset = end


HEADER_NAMES = ["Subject", "From", "To", "Cc", "Message-ID", "Date", "Content-Type", "Content-Disposition"]
HEADER_NAMES += ["Content-Transfer-Encoding", "MIME-Version", "Reply-To", "References", "Received"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(HEADER_NAMES), st.binary(max_size=40).map(lambda value: value.replace(b"\n", b" "))),
        min_size=1,
        max_size=5,
    )
)
def test_no_header_makes_the_inspector_raise(headers: list[tuple[str, bytes]]) -> None:
    """Random header values, bytes and all: summarising and showing a message never raises."""
    message = b"".join(name.encode() + b": " + value + b"\n" for name, value in headers) + b"\nbody\n"
    record = Record(offset=0, length=1, delivery=replace(BASE, message=message))
    summary = summarize("x.test", record)
    as_json(summary).encode("utf-8")  # what watch --json writes: no lone surrogates
    as_line(summary).encode("utf-8")
    shown = headers_shown(read_contents(record).headers)
    assert shown, "at least the first header is shown"
    "".join(value for _, value in shown).encode("utf-8")
