"""The forward-file format: round trips, incremental parsing, damage, and mbox compatibility."""

from __future__ import annotations

import mailbox
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maillab_common.forward import (
    Damaged,
    Delivery,
    Record,
    parse_records,
    render_record,
    to_mbox_line_endings,
)
from tests.helpers import BASE

CASES = {
    "plain": BASE,
    "null sender": replace(BASE, mail_from=""),
    "several recipients": replace(BASE, rcpt_tos=("a@example.test", "b@example.test", "c@example.test")),
    "From lines in the body": replace(BASE, message=b"Subject: x\n\nFrom here\n>From there\n>>From afar\nFrom \n"),
    "message starts with From": replace(BASE, message=b"From the top\n"),
    "tls": replace(BASE, tls=True),
    "utf-8 addresses": replace(BASE, mail_from="jos\u00e9@ex\u00e4mple.test", rcpt_tos=("\u00fc@example.test",)),
    "unicode line separators in an address": replace(BASE, rcpt_tos=("a\u2028b\u0085c@example.test", "d@example.test")),
    "empty body": replace(BASE, message=b"Subject: nothing\n\n"),
}


@pytest.mark.parametrize("delivery", CASES.values(), ids=CASES.keys())
def test_render_then_parse_gives_the_delivery_back(delivery: Delivery) -> None:
    rendered = render_record(delivery)
    items, leftover = parse_records(rendered)
    assert items == [Record(offset=0, length=len(rendered), delivery=delivery)]
    assert leftover == b""


messages = st.binary(max_size=400).map(to_mbox_line_endings)
tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=20)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", tokens, tokens)
deliveries = st.builds(
    Delivery,
    mail_from=st.one_of(st.just(""), addresses),
    rcpt_tos=st.lists(addresses, min_size=1, max_size=4).map(tuple),
    received_at=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ).map(lambda moment: moment.replace(microsecond=0)),
    transaction_id=st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=16),
    helo=tokens,
    peer=tokens,
    server_name=tokens,
    tls=st.booleans(),
    message=messages,
)


@given(st.lists(deliveries, min_size=1, max_size=5), st.data())
def test_records_round_trip_whatever_the_chunking(batch: list[Delivery], data: st.DataObject) -> None:
    stream = b"".join(render_record(delivery) for delivery in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parsed: list[Record | Damaged] = []
    pending, start = b"", 0
    for chunk in (stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)):
        items, pending = parse_records(pending + chunk, start)
        parsed += items
        start = sum(item.length for item in parsed)
    assert [item.delivery for item in parsed if isinstance(item, Record)] == batch
    assert pending == b""
    offsets = [item.offset for item in parsed]
    assert offsets == [sum(len(render_record(d)) for d in batch[:i]) for i in range(len(batch))]


def test_every_prefix_of_a_record_is_left_over_not_parsed() -> None:
    rendered = render_record(CASES["From lines in the body"])
    for cut in range(1, len(rendered)):
        items, leftover = parse_records(rendered[:cut])
        assert (items, leftover) == ([], rendered[:cut]), cut


def test_the_offset_argument_places_records_in_their_file() -> None:
    items, _ = parse_records(render_record(BASE), offset=1000)
    assert isinstance(items[0], Record) and items[0].offset == 1000


DAMAGE = {
    "garbage before a record": (b"hand-written notes\n", 1),
    "garbage after a record": (None, 1),
    "length header too long": ("too-long", 2),
    "length header too short": ("too-short", 2),
    "malformed trace headers": (b"From x Sat Nov 28 09:05:07 2026\nBogus: 1\nX-Maillab-Length: 3\nab\n\n", 1),
}


@pytest.mark.parametrize("case", DAMAGE.keys())
def test_damage_is_reported_and_the_next_record_still_parses(case: str) -> None:
    good = render_record(BASE)
    damage, _ = DAMAGE[case]
    if case == "garbage after a record":
        stream = good + b"garbage garbage garbage\n" + good
    elif case == "length header too long":
        stream = good.replace(b"X-Maillab-Length: ", b"X-Maillab-Length: 9") + good
    elif case == "length header too short":
        length = len(to_mbox_line_endings(BASE.message))
        stream = good.replace(f"X-Maillab-Length: {length}".encode(), f"X-Maillab-Length: {length - 3}".encode())
        stream += good
    else:
        assert isinstance(damage, bytes)
        stream = damage + good
    items, leftover = parse_records(stream)
    kinds = [type(item).__name__ for item in items]
    assert "Damaged" in kinds, kinds
    assert isinstance(items[-1], Record) and items[-1].delivery == BASE
    assert leftover == b""
    covered = sum(item.length for item in items)
    assert covered == len(stream), "damage and records together cover every byte"


def test_garbage_with_no_record_after_it_is_reported_without_waiting_forever() -> None:
    items, leftover = parse_records(b"x" * 10_000)
    assert len(items) == 1 and isinstance(items[0], Damaged)
    assert len(leftover) < len(b"\nFrom ")


def test_python_mailbox_reads_a_forward_file(tmp_path: Path) -> None:
    path = tmp_path / "example.test"
    path.write_bytes(b"".join(render_record(delivery) for delivery in CASES.values()))
    box = mailbox.mbox(str(path), create=False)
    try:
        read = list(box)
    finally:
        box.close()
    assert len(read) == len(CASES)
    assert read[0]["Subject"] == "hello"
    assert read[0]["Return-Path"] == "<alice@example.test>"
    assert read[0]["Delivered-To"] == "bob@example.test"
    assert read[0].get_payload() == "Hello, world.\n"
    # mbox readers that do not unescape show the mboxrd escape: a leading '>' more.
    assert read[3].get_payload() == ">From here\n>>From there\n>>>From afar\n>From \n"


def test_runs_of_crs_before_a_line_end_go_in_one_pass() -> None:
    line = b"a" + b"\r" * 997 + b"\r\n"
    assert to_mbox_line_endings(line * 3 + b"b\r\r\nc\rd\r\n") == b"a\na\na\nb\nc\rd\n"
