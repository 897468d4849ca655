"""The inspector's tail over real forward files, and its summaries."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from maillab_common.forward import Damaged, Record, render_record
from maillab_inspector.model import header_text, parse_message, summarize
from maillab_inspector.render import as_json, as_panel
from maillab_inspector.tail import ForwardTail
from maillab_server.store import ForwardStore
from tests.helpers import BASE, MULTIPART, record
from tests.store_helpers import deliver


def ids(items: list[tuple[str, Record | Damaged]]) -> list[tuple[str, str]]:
    return [(domain, item.delivery.transaction_id) for domain, item in items if isinstance(item, Record)]


def test_each_record_is_read_once_as_it_is_appended(tmp_path: Path) -> None:
    store, tail = ForwardStore(tmp_path), ForwardTail(tmp_path)
    deliver(store, {"a.test": record(1), "b.test": record(1)})
    assert ids(list(tail.poll_all())) == [("a.test", "0001"), ("b.test", "0001")]
    assert list(tail.poll_all()) == []
    deliver(store, {"a.test": record(2)})
    assert ids(list(tail.poll("a.test"))) == [("a.test", "0002")]
    assert list(tail.poll("a.test")) == []


def test_skip_existing_reads_only_new_records(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1)})
    tail = ForwardTail(tmp_path)
    tail.skip_existing()
    deliver(store, {"a.test": record(2), "new.test": record(2)})
    assert ids(list(tail.poll_all())) == [("a.test", "0002"), ("new.test", "0002")]


@pytest.mark.parametrize("torn_at", [3, 50, -10], ids=["in the From line", "in the trace", "in the body"])
def test_a_torn_tail_cut_by_the_server_is_neither_lost_nor_doubled(tmp_path: Path, torn_at: int) -> None:
    store, tail = ForwardStore(tmp_path), ForwardTail(tmp_path)
    deliver(store, {"a.test": record(1)})
    with open(tmp_path / "a.test", "ab") as file:
        file.write(record(2)[:torn_at])  # the crash
    assert ids(list(tail.poll_all())) == [("a.test", "0001")]
    store.repair()  # the restart, then a delivery, both before the next poll
    deliver(store, {"a.test": record(3)})
    items = list(tail.poll_all())
    assert ids(items) == [("a.test", "0003")]
    assert isinstance(items[0][1], Record) and items[0][1].delivery.message.startswith(b"Subject: n3\n")


def test_a_replaced_file_is_read_from_its_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store, tail = ForwardStore(tmp_path), ForwardTail(tmp_path)
    deliver(store, {"a.test": record(1)})
    list(tail.poll_all())
    os.replace(tmp_path / "a.test", tmp_path / ".old")
    (tmp_path / "a.test").write_bytes(record(5) + record(6))
    assert ids(list(tail.poll_all())) == [("a.test", "0005"), ("a.test", "0006")]
    assert "replaced" in caplog.text


def test_garbage_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a.test").write_bytes(b"scribbles\n" + record(1))
    items = list(ForwardTail(tmp_path).poll_all())
    assert isinstance(items[0][1], Damaged)
    assert ids(items) == [("a.test", "0001")]


def test_symlinks_and_folders_in_the_volume_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "file").write_bytes(record(1))
    (tmp_path / "link.test").symlink_to(tmp_path / "elsewhere" / "file")
    assert list(ForwardTail(tmp_path).poll_all()) == []


def test_summaries_name_every_attachment_with_its_hash() -> None:
    delivery = replace(BASE, message=MULTIPART)
    summary = summarize("x.test", Record(offset=0, length=1, delivery=delivery))
    assert summary.subject == "caf\u00e9" and summary.message_id == "<m@x.test>"
    [attachment] = summary.attachments
    assert (attachment.filename, attachment.content_type, attachment.size) == ("p.png", "image/png", 5)
    assert attachment.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # "hello"
    console = Console(width=200, record=True)
    console.print(as_panel(summary))
    assert "p.png (image/png, 5 bytes, sha256 2cf24dba5fb0)" in console.export_text()
    line = json.loads(as_json(summary))
    assert line["attachments"][0]["sha256"] == attachment.sha256 and line["rcpt_to"] == ["bob@example.test"]


def test_an_unparseable_message_still_gets_a_summary() -> None:
    delivery = replace(BASE, message=b"\xff\xfe garbage without headers\n")
    summary = summarize("x.test", Record(offset=0, length=1, delivery=delivery))
    assert summary.subject == "" and summary.attachments == ()


class OpenCounter:
    """Counts the files the tail opens (os.open), by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        real_open = os.open

        def counting_open(path: str | bytes | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
            self.opened.append(os.path.basename(os.fsdecode(path)))
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", counting_open)

    def take(self) -> list[str]:
        opened, self.opened = self.opened, []
        return opened


def test_an_idle_sweep_opens_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 domain files, none changed: a sweep reads none of them, whatever their number."""
    for number in range(2000):
        (tmp_path / f"d{number}.test").write_bytes(record(number))
    with open(tmp_path / "torn.test", "wb") as file:
        file.write(record(1) + record(2)[:50])  # a record being written: read once, then left until it grows
    tail = ForwardTail(tmp_path)
    counter = OpenCounter(monkeypatch)
    assert len(list(tail.poll_all())) == 2001
    assert len(counter.take()) == 2001
    assert list(tail.poll_all()) == [] and counter.take() == [], "an idle sweep"
    (tmp_path / "d7.test").write_bytes(record(7) + record(8))  # appended
    (tmp_path / "new.test").write_bytes(record(9))
    with open(tmp_path / "torn.test", "ab") as file:
        file.write(record(2)[50:])
    assert ids(list(tail.poll_all())) == [("d7.test", "0008"), ("new.test", "0009"), ("torn.test", "0002")]
    assert sorted(counter.take()) == ["d7.test", "new.test", "torn.test"]
    assert list(tail.poll_all()) == [] and counter.take() == []


def test_an_idle_sweep_after_a_restart_or_skip_opens_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for number in range(200):
        (tmp_path / f"d{number}.test").write_bytes(record(number))
    skipped = ForwardTail(tmp_path)
    skipped.skip_existing()
    restored = ForwardTail(tmp_path)
    restored.restore(skipped.positions())
    counter = OpenCounter(monkeypatch)
    assert list(skipped.poll_all()) == [] and counter.take() == []
    assert list(restored.poll_all()) == [] and len(counter.take()) == 200, "saved positions are checked once"
    assert list(restored.poll_all()) == [] and counter.take() == []


def test_a_file_cut_and_rewritten_to_the_same_size_is_read_again(tmp_path: Path) -> None:
    """The server cuts a torn tail and appends in its place: the same size, even the same mtime."""
    torn = record(2)[:-5]
    padding = 0
    while len(whole := render_record(replace(BASE, transaction_id="0003", message=b"x" * padding + b"\n"))) < len(torn):
        padding += 1
    assert len(whole) == len(torn)
    path = tmp_path / "a.test"
    path.write_bytes(record(1) + torn)
    tail = ForwardTail(tmp_path)
    assert ids(list(tail.poll_all())) == [("a.test", "0001")]
    before = path.stat()
    os.truncate(path, len(record(1)))
    with open(path, "ab") as file:
        file.write(whole)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # within one clock tick, say
    assert ids(list(tail.poll_all())) == [("a.test", "0003")]


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(alphabet=st.characters(max_codepoint=127), max_size=40),
    local=st.text(alphabet="abcXYZ09!#$%&'*+/=?^_`{|}~.-", min_size=1, max_size=8),
    spaces=st.sampled_from(["", " ", "\t", "\n "]),
)
def test_plain_headers_read_without_the_parser_read_as_with_it(subject: str, local: str, spaces: str) -> None:
    """`header_text` skips the email package's parser for plain values; what it returns is the same."""
    message = BytesParser(policy=default).parsebytes(b"", headersonly=True)
    message._headers = [("Subject", subject), ("Message-ID", f"{spaces}<{local}@x.test>{spaces}")]  # type: ignore[attr-defined]
    for name, raw in message.raw_items():
        try:
            parsed = str(default.header_fetch_parse(name, raw))
        except Exception:
            parsed = ""
        expected = " ".join((parsed if parsed.strip() else raw.strip()).split())
        assert header_text(message, name) == expected


def test_one_header_class_serves_every_message_of_a_kind() -> None:
    """The stdlib makes a class per header parsed, freed only by the cyclic collector: a backlog piled them up."""
    first, second = (Record(0, 0, replace(BASE, message=f"Subject: s{n}\nTo: a@x.test\n\n".encode())) for n in (1, 2))
    summaries = [parse_message(record) for record in (first, second)]
    assert type(summaries[0]["subject"]) is type(summaries[1]["subject"])
    assert type(summaries[0]["to"]) is type(summaries[1]["to"])
    assert type(summaries[0]["subject"]) is not type(summaries[0]["to"])
