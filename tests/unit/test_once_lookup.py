"""XMAILLAB-ONCE's lookup: what it finds, and that its work never depends on what a body holds.

Speed belongs in a benchmark (bench/isolation.py); these tests count work instead: traces
parsed and bytes read, which do not depend on the machine.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maillab_common.forward import (
    Delivery,
    Record,
    parse_records,
    parse_trace,
    render_body,
    render_record,
    same_delivery,
    to_mbox_line_endings,
)
from maillab_server import once as once_module
from maillab_server.once import Wanted
from maillab_server.store import ForwardStore
from tests.helpers import BASE

DOMAIN = "a.test"


def holds(store: ForwardStore, delivery: Delivery) -> bool:
    """Whether an XMAILLAB-ONCE retry of `delivery` finds its copy (and so stores nothing)."""
    path = store.root / DOMAIN
    before = path.read_bytes() if path.exists() else b""
    found = store.submit({DOMAIN: [render_record(delivery)]}, once={DOMAIN: delivery}).result(30) == (DOMAIN,)
    if path.exists():  # back as it was, so that a test can ask again about the same bytes
        path.write_bytes(before)
    return found


def message(subject: str, body: bytes = b"body\n") -> Delivery:
    return replace(BASE, message=f"Subject: {subject}\n\n".encode() + body)


def write(tmp_path: Path, *chunks: bytes) -> None:
    (tmp_path / DOMAIN).write_bytes(b"".join(chunks))


@contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts, while it lasts, the traces the store parses and the bytes it reads with pread."""
    counts: Counter[str] = Counter()

    def counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            counts[name] += len(result) if name == "bytes read" else 1
            return result

        return wrapper

    monkeypatch.setattr(once_module, "parse_trace", counting("traces parsed", parse_trace))
    monkeypatch.setattr(os, "pread", counting("bytes read", os.pread))
    yield counts
    monkeypatch.undo()


def test_an_empty_body_parses_no_trace_of_a_large_record_it_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty body is in every line: a search for the body's bytes stops at each of them."""
    large = message("large", b"\n" * 20_000)
    write(tmp_path, render_record(large))
    store = ForwardStore(tmp_path)
    with counted(monkeypatch) as counts:
        assert not holds(store, replace(BASE, message=b""))
    assert counts["traces parsed"] <= 2, counts


def test_a_retry_skips_the_body_of_a_large_record_it_has_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup indexes each record once, by its trace: a large record's body is never read but to compare."""
    large = message("large", (b"x" * 999 + b"\n") * 2048)
    write(tmp_path, render_record(large), render_record(message("after")))
    store = ForwardStore(tmp_path)
    tiny = replace(BASE, message=b"")
    assert not holds(store, tiny)
    with counted(monkeypatch) as counts:
        for _ in range(10):
            assert not holds(store, tiny)
    assert counts["bytes read"] < 2 * 1024 * 1024 // 10, counts  # ten lookups read less than a tenth of it
    with counted(monkeypatch) as counts:
        assert holds(store, large)  # an indexed record is still a copy: its body is read once, to compare
    assert counts["bytes read"] < 2 * 1024 * 1024 + 64 * 1024, counts


def test_the_copy_found_is_the_last_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = message("copy", b"x" * 5_000_000 + b"\n")
    write(tmp_path, render_record(message("before")), render_record(copy))
    with counted(monkeypatch) as counts:
        assert holds(ForwardStore(tmp_path), copy)
    # its body read once to compare, and its file once to find it: no more
    assert counts["bytes read"] < 2 * len(render_record(copy)) + 64 * 1024, counts


def test_the_copy_is_found_a_few_records_back(tmp_path: Path) -> None:
    copy = message("copy", b"the body\n")
    same_length_other_bytes = message("copy", b"the bodY\n")
    write(
        tmp_path,
        render_record(message("first")),
        render_record(copy),
        render_record(same_length_other_bytes),
        render_record(replace(copy, mail_from="other@example.test")),
        render_record(replace(copy, rcpt_tos=("carol@example.test",))),
        render_record(message("last")),
    )
    assert holds(ForwardStore(tmp_path), copy)


def test_a_body_that_differs_only_in_its_last_byte_is_not_a_copy(tmp_path: Path) -> None:
    stored = message("copy", b"x" * 3_000_000 + b"a\n")
    write(tmp_path, render_record(stored))
    assert not holds(ForwardStore(tmp_path), replace(stored, message=stored.message[:-2] + b"b\n"))
    assert holds(ForwardStore(tmp_path), stored)


@pytest.mark.parametrize(
    "other",
    [
        {"mail_from": "other@example.test"},
        {"mail_from": ""},
        {"rcpt_tos": ("bob@example.test", "carol@example.test")},
        {"rcpt_tos": ("carol@example.test",)},
    ],
    ids=["sender", "null sender", "one recipient more", "another recipient"],
)
def test_another_envelope_is_not_a_copy(tmp_path: Path, other: dict[str, Any]) -> None:
    stored = message("copy")
    write(tmp_path, render_record(stored))
    assert not holds(ForwardStore(tmp_path), replace(stored, **other))


def test_a_copy_cut_by_the_edge_of_the_window_is_not_found(tmp_path: Path) -> None:
    copy = message("copy", b"y" * 300_000 + b"\n")
    record = render_record(copy)
    write(tmp_path, render_record(message("before", b"z" * 300_000 + b"\n")), record)
    assert holds(ForwardStore(tmp_path, recent_window=len(record)), copy)
    assert not holds(ForwardStore(tmp_path, recent_window=len(record) - 1), copy)
    # Indexed by one lookup, it is still looked at within the window only.
    store = ForwardStore(tmp_path)
    assert holds(store, copy)
    store.recent_window = len(record) - 1
    assert not holds(store, copy)


def test_damage_before_the_copy_does_not_hide_it(tmp_path: Path) -> None:
    copy = message("copy", b"From here\n>From there\n")
    write(
        tmp_path,
        b"hand-written notes\nFrom nobody, no trace\n",
        render_record(copy)[:-40],  # a torn record, as a crash leaves it (before the repair)
        b"\n",
        render_record(copy),
        b"\nmore notes, no blank line at the end",
    )
    assert holds(ForwardStore(tmp_path), copy)


def test_a_torn_copy_is_not_a_copy(tmp_path: Path) -> None:
    copy = message("copy")
    write(tmp_path, render_record(copy)[:-1])
    assert not holds(ForwardStore(tmp_path), copy)


def test_a_body_that_holds_a_trace_is_not_taken_for_one(tmp_path: Path) -> None:
    """A body may quote a whole record, trace and all: stored escaped, its From line starts no record."""
    copy = message("copy")
    write(tmp_path, render_record(message("quote", render_record(copy))))
    assert not holds(ForwardStore(tmp_path), copy)


def test_a_changed_file_is_looked_at_again_not_remembered(tmp_path: Path) -> None:
    copy = message("copy", b"c" * 400_000 + b"\n")
    large = render_record(message("large", b"l" * 400_000 + b"\n"))
    write(tmp_path, large, render_record(copy))
    store = ForwardStore(tmp_path)
    assert holds(store, copy)
    # The same file (the same inode), cut and written again: the large record is elsewhere now.
    with (tmp_path / DOMAIN).open("r+b") as file:
        file.truncate(0)
        file.write(render_record(copy) + large)
    assert holds(store, copy)
    with (tmp_path / DOMAIN).open("r+b") as file:
        file.truncate(0)
        file.write(large[:-10] + b"xxxxxxxxx\n" + render_record(message("other")))
    assert not holds(store, copy)


def test_a_flood_of_stored_retries_is_indexed_once_not_searched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile client's pattern: its own domain full of its stored retries, every one of them a
    candidate by its sender. After the first lookup, each reads only what was appended since the
    one before, and its candidates: never the flood again."""

    def retry(number: int) -> Delivery:
        body = b"n%09d\n" % number if number % 2 else b"x" * (number % 97) + b"\n"  # same length, and others
        return replace(BASE, mail_from="hostile@attack.test", message=body)

    write(tmp_path, *(render_record(retry(number)) for number in range(4000)))
    store = ForwardStore(tmp_path)
    path = tmp_path / DOMAIN
    assert store.submit({DOMAIN: [render_record(retry(3999))]}, once={DOMAIN: retry(3999)}).result(30)  # indexed
    size_before = path.stat().st_size
    largest = max(len(render_record(retry(number))) for number in range(4100))
    for number in [*range(4000, 4060), *range(3990, 4000), *range(4000, 4010)]:  # new ones, then repeats
        with counted(monkeypatch) as counts:
            store.submit({DOMAIN: [render_record(retry(number))]}, once={DOMAIN: retry(number)}).result(30)
        appended = path.stat().st_size - size_before
        size_before = path.stat().st_size
        bound = 4096 + once_module.MAX_CANDIDATES * largest + (len(render_record(retry(number))) - appended)
        assert counts["bytes read"] <= bound, (number, counts, bound)
    assert counts["traces parsed"] <= once_module.MAX_CANDIDATES + 2, counts


def test_a_file_cut_back_or_replaced_is_indexed_anew(tmp_path: Path) -> None:
    """The index is of one file as it grows: a shorter one, or another one, is indexed from scratch."""
    copy = message("copy", b"c" * 1000 + b"\n")
    before = render_record(message("before", b"b" * 3000 + b"\n"))
    last = render_record(message("last"))
    store = ForwardStore(tmp_path)
    write(tmp_path, before, render_record(copy), last)
    assert holds(store, copy)
    # The same file, cut back and written again: shorter, with the same last bytes.
    with (tmp_path / DOMAIN).open("r+b") as file:
        file.truncate(0)
        file.write(render_record(copy) + last)
    assert holds(store, copy)
    # Another file in its place, of the same size and the same last bytes, the records elsewhere.
    write(tmp_path, before, render_record(copy), last)
    assert holds(store, copy)
    replacement = tmp_path / "replacement"
    replacement.write_bytes(render_record(copy) + before + last)
    os.replace(replacement, tmp_path / DOMAIN)
    assert holds(store, copy)


def test_the_index_holds_a_bounded_number_of_records_and_never_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_ENTRIES, the oldest records of the file looked in least recently are forgotten,
    but no file is indexed again from its floor: a client alternating domains costs no re-reading."""
    monkeypatch.setattr(once_module, "MAX_ENTRIES", 50)
    store = ForwardStore(tmp_path)
    copies = {domain: message(f"copy {domain}") for domain in ("a.test", "b.test")}
    for domain, copy in copies.items():
        others = (render_record(message(f"{domain} {number}")) for number in range(40))
        (tmp_path / domain).write_bytes(b"".join(others) + render_record(copy))
        assert store.submit({domain: [render_record(copy)]}, once={domain: copy}).result(30) == (domain,)
    index = store._copies
    assert list(index._files) == ["a.test", "b.test"] and index._entries == 50  # a.test's oldest forgotten
    parsed: list[int] = []

    def counting_parse_trace(head: bytes) -> object:
        parsed.append(len(head))
        return parse_trace(head)

    monkeypatch.setattr(once_module, "parse_trace", counting_parse_trace)
    for _ in range(5):
        for domain, copy in copies.items():
            assert store.submit({domain: [render_record(copy)]}, once={domain: copy}).result(30) == (domain,)
    # Two at most a lookup (the candidate's, the end of the file's); 41 or more when a file is indexed again.
    assert len(parsed) <= 20, f"{len(parsed)} traces parsed for 10 lookups: an index was built again"
    assert index._entries <= 50


# The lookup against the definition, on random files: a copy is a complete record, as
# parse_records reads the file, that starts within the window, has the From line the
# server writes for its sender, and is the same delivery; and is among the newest
# MAX_CANDIDATES such records of its envelope and body length.
BODIES = [b"", b"\n", b"x\n", b"x", b"From me\n", b">From me\n", b"body\n", b"bodY\n", b"a\nb\nc\n" * 40]
POOL = [
    replace(BASE, message=body, mail_from=sender, rcpt_tos=rcpts)
    for body in BODIES
    for sender in ("alice@example.test", "")
    for rcpts in (("bob@example.test",), ("bob@example.test", "carol@example.test"))
]
pieces = st.one_of(
    st.sampled_from(POOL).map(render_record),
    st.sampled_from(POOL).map(lambda delivery: render_record(delivery)[:-3]),  # torn, then damage
    st.sampled_from([b"\n", b"From x\n", b"notes\n", b"\nFrom ", b"X-Maillab-Length: 1\n"]),
)


def defined_holds(data: bytes, floor: int, delivery: Delivery, candidates: int) -> bool:
    delivery = replace(delivery, message=to_mbox_line_endings(delivery.message))  # as the handler gives it
    # The From line the server writes, up to its date: a hand-made one is damage.
    from_line = render_record(delivery).split(b"\n", 1)[0][: -len("Sat Nov 28 09:05:07 2026")]
    body_length = len(render_body(delivery.message))
    items, _ = parse_records(data)
    same_key = [
        item
        for item in items
        if isinstance(item, Record)
        and item.offset >= floor
        and data.startswith(from_line, item.offset)
        and (item.delivery.mail_from, item.delivery.rcpt_tos) == (delivery.mail_from, delivery.rcpt_tos)
        and item.length - trace_length(data, item.offset) - 1 == body_length
    ]
    return any(same_delivery(item.delivery, delivery) for item in same_key[-candidates:])


def trace_length(data: bytes, offset: int) -> int:
    trace = parse_trace(data, offset)
    assert trace is not None
    return trace.length


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    st.lists(st.tuples(st.booleans(), st.lists(pieces, max_size=12)), min_size=1, max_size=3),
    st.sampled_from(POOL),
    st.integers(min_value=100, max_value=5000),
    st.sampled_from([8, 64, 4096]),
    st.sampled_from([1, 2, 8]),
)
def test_the_lookup_finds_what_the_definition_does(
    growth: list[tuple[bool, list[bytes]]], wanted: Delivery, window: int, trace_read: int, candidates: int
) -> None:
    """Small reads, so that every edge is crossed; the file grows between lookups, or is written anew."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(once_module, "_TRACE_READ", trace_read)
        patch.setattr(once_module, "_SEARCH_CHUNK", 16)
        patch.setattr(once_module, "_COMPARE_CHUNK", 7)
        patch.setattr(once_module, "MAX_CANDIDATES", candidates)
        store = ForwardStore(Path(folder), recent_window=window)
        data = b""
        for anew, pieces_added in growth:
            data = (b"" if anew else data) + b"".join(pieces_added)
            (Path(folder) / DOMAIN).write_bytes(data)
            floor = max(0, len(data) - window)
            assert holds(store, wanted) == defined_holds(data, floor, wanted, candidates)


def test_a_record_quoted_in_the_middle_of_a_line_is_never_a_copy(tmp_path: Path) -> None:
    # "From " is escaped at a line start only: a body may hold a whole record after other text.
    victim = message("victim")
    quoted = render_record(victim)
    host = render_record(replace(BASE, mail_from="attacker@x.test", message=b"Subject: q\n\nxx" + quoted))
    (tmp_path / "a.test").write_bytes(host)
    offset = host.index(quoted)
    head = parse_trace(quoted)
    assert head is not None
    fd = os.open(tmp_path / "a.test", os.O_RDONLY)
    try:
        assert not once_module._is_copy(fd, len(host), offset, head.length, Wanted.of(victim))
        (tmp_path / "b.test").write_bytes(quoted)  # the same record at a line start is one
        with open(tmp_path / "b.test", "rb") as alone:
            assert once_module._is_copy(alone.fileno(), len(quoted), 0, head.length, Wanted.of(victim))
    finally:
        os.close(fd)


def test_an_index_key_is_small_however_long_the_addresses() -> None:
    many = tuple(f"{'r' * 60}{number}@{'d' * 60}.test" for number in range(100))
    assert len(Wanted.of(replace(BASE, rcpt_tos=many, mail_from="s" * 60 + "@x.test")).key) == 16
