"""The forward store against real files: all-or-nothing appends, roll-back and repair."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records, render_record
from maillab_server.errors import StorageError
from maillab_server.store import ForwardStore
from tests.helpers import BASE
from tests.store_helpers import deliver
from tests.unit.conftest import counting_fsyncs


def record(number: int) -> bytes:
    return render_record(replace(BASE, transaction_id=f"{number:04X}"))


def parsed_ids(path: Path) -> list[str]:
    items, leftover = parse_records(path.read_bytes())
    assert leftover == b""
    return [item.delivery.transaction_id for item in items if isinstance(item, Record)]


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A real write failure: past RLIMIT_FSIZE the kernel refuses with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_delivery_appends_one_record_per_domain(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1), "b.test": record(1)})
    deliver(store, {"a.test": record(2)})
    assert parsed_ids(tmp_path / "a.test") == ["0001", "0002"]
    assert parsed_ids(tmp_path / "b.test") == ["0001"]


def test_a_failed_write_leaves_no_domain_file_changed(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1), "b.test": record(1)})
    before = {name: (tmp_path / name).read_bytes() for name in ("a.test", "b.test")}
    big = render_record(replace(BASE, message=b"x" * 100_000 + b"\n"))
    # a.test (written first) fits under the limit; b.test does not, half-way through.
    limit = len(before["a.test"]) + len(big) + 10
    with file_size_limit(limit), pytest.raises(StorageError) as failure:
        deliver(store, {"a.test": record(2), "b.test": big + big})
    assert failure.value.smtp_reply.startswith("451 ")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_symlink_planted_in_the_folder_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    root = tmp_path / "forward"
    root.mkdir()
    (root / "evil.test").symlink_to(outside)
    with pytest.raises(StorageError):
        deliver(ForwardStore(root), {"evil.test": record(1)})
    assert outside.read_bytes() == b"precious\n"


def test_a_missing_folder_is_a_storage_error_not_a_crash(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path / "missing")
    with pytest.raises(StorageError):
        store.check_writable()
    with pytest.raises(StorageError):
        deliver(store, {"a.test": record(1)})


def test_repair_cuts_a_torn_last_record_and_keeps_the_rest(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1)})
    good_size = os.path.getsize(tmp_path / "a.test")
    with open(tmp_path / "a.test", "ab") as file:
        file.write(record(2)[:-40])  # what a kill -9 mid-append leaves
    (tmp_path / "b.test").write_bytes(record(3))
    assert store.repair() == {"a.test": len(record(2)) - 40}
    assert os.path.getsize(tmp_path / "a.test") == good_size
    deliver(store, {"a.test": record(4)})
    assert parsed_ids(tmp_path / "a.test") == ["0001", "0004"]
    assert parsed_ids(tmp_path / "b.test") == ["0003"]


def test_repair_leaves_hand_written_text_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.test").write_bytes(record(1) + b"some notes, not a record")
    assert ForwardStore(tmp_path).repair() == {}
    assert (tmp_path / "notes.test").read_bytes().endswith(b"not a record")


@pytest.mark.parametrize("torn_at", [1, 3, 5, 40])
def test_repair_cuts_even_a_tear_of_a_few_bytes(tmp_path: Path, torn_at: int) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1)})
    with open(tmp_path / "a.test", "ab") as file:
        file.write(record(2)[:torn_at])
    assert store.repair() == {"a.test": torn_at}
    deliver(store, {"a.test": record(3)})
    assert parsed_ids(tmp_path / "a.test") == ["0001", "0003"]


def test_group_commit_stores_every_delivery_and_fails_only_the_bad_one(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    (tmp_path / "broken.test").mkdir()  # a folder where a file should be: that delivery must fail
    futures = [store.submit({"a.test": [record(number)], "b.test": [record(number)]}) for number in range(50)]
    futures.append(store.submit({"a.test": [record(99)], "broken.test": [record(99)]}))
    futures += [store.submit({"a.test": [record(number)]}) for number in range(100, 120)]
    errors = [future.exception(timeout=30) for future in futures]
    assert [index for index, error in enumerate(errors) if error is not None] == [50]
    assert isinstance(errors[50], StorageError)
    assert parsed_ids(tmp_path / "a.test") == [f"{n:04X}" for n in (*range(50), *range(100, 120))]
    assert parsed_ids(tmp_path / "b.test") == [f"{n:04X}" for n in range(50)]


def test_repair_makes_the_folder_entries_of_earlier_files_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file created by a server that died before it fsynced the folder: what this process
    # later finds or appends there must not depend on an entry that may not be on disk.
    (tmp_path / "a.test").write_bytes(render_record(BASE))
    synced = counting_fsyncs(monkeypatch)
    ForwardStore(tmp_path).repair()
    assert synced[tmp_path.name] == 1
