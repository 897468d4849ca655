"""The watch's saved positions: the database, the file it replaces, and a kill -9 in a backlog."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from maillab_inspector.state import load_positions, open_positions
from tests.helpers import Watch, record


def test_positions_are_saved_per_file_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "positions.sqlite3"
    store = open_positions(path, {"a.test": (1, 10), "b.test": (2, 20)})
    store.advance({"a.test": (1, 99)})
    assert load_positions(path) == {"a.test": (1, 99), "b.test": (2, 20)}, "read while the store is open"
    store.replace_all({"c.test": (3, 0)})
    store.close()
    assert load_positions(path) == {"c.test": (3, 0)}


def test_a_state_file_of_the_json_format_is_read_once_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "positions"
    path.write_text(json.dumps({"files": {"a.test": {"inode": 7, "offset": 120}}}))
    saved = load_positions(path)
    assert saved == {"a.test": (7, 120)}
    open_positions(path, saved).close()
    assert path.read_bytes().startswith(b"SQLite format 3\x00")
    assert load_positions(path) == {"a.test": (7, 120)}


@pytest.mark.parametrize("content", [b"", b"\x00garbage", b"{not json", b'{"files": 3}'])
def test_a_state_file_that_cannot_be_read_is_ignored_with_a_warning_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "positions"
    path.write_bytes(content)
    assert load_positions(path) in (None, {})  # an empty file is an empty database to SQLite
    open_positions(path, {"a.test": (1, 2)}).close()
    assert load_positions(path) == {"a.test": (1, 2)}
    if content:
        assert "cannot be read" in caplog.text or "not a positions database" in caplog.text


def test_a_kill_in_the_middle_of_a_backlog_repeats_at_most_the_message_being_printed(watched_forward: Path) -> None:
    backlog = 4_000
    with open(watched_forward / "a.test", "wb") as file:
        file.write(b"".join(record(number) for number in range(1, backlog + 1)))
    state = watched_forward.parent / "state" / "positions.sqlite3"
    watch = Watch(watched_forward, state, "--from-start")
    printed = Counter(watch.subjects(backlog // 3))
    assert watch.stop(signal.SIGKILL) == -signal.SIGKILL
    while not watch.lines.empty():  # printed before the kill, not yet read
        printed[json.loads(watch.lines.get())["subject"]] += 1
    assert sum(printed.values()) < backlog, "killed in the middle of the backlog"
    watch = Watch(watched_forward, state)
    with open(watched_forward / "a.test", "ab") as file:
        file.write(record(backlog + 1))  # the marker: whatever is printed again comes before it
    printed.update(watch.printed_until(f"n{backlog + 1}"))
    assert watch.stop() == 0
    assert set(printed) == {f"n{number}" for number in range(1, backlog + 2)}, "none missed"
    repeated = {subject: count for subject, count in printed.items() if count > 1}
    assert len(repeated) <= 1 and set(repeated.values()) <= {2}, f"printed more than once: {repeated}"


@pytest.mark.parametrize("earlier", ["offsets.json", "inspector.json"])
def test_an_upgrade_goes_on_from_the_earlier_inspectors_json_state_under_its_default_name(
    tmp_path: Path, earlier: str
) -> None:
    """compose kept /state/offsets.json and a host …/maillab/inspector.json; the database sits beside them."""
    (tmp_path / earlier).write_text(json.dumps({"files": {"a.test": {"inode": 7, "offset": 120}}}))
    path = tmp_path / "positions.sqlite3"
    saved = load_positions(path)
    assert saved == {"a.test": (7, 120)}
    open_positions(path, saved).close()
    assert not (tmp_path / earlier).exists() and (tmp_path / f"{earlier}.migrated").is_file(), "read once"
    path.unlink()
    assert load_positions(path) is None, "a database deleted later does not bring the earlier positions back"


def test_a_damaged_database_is_replaced_and_any_other_error_is_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "positions.sqlite3"
    open_positions(path, {f"d{number}.test": (number, number) for number in range(2_000)}).close()
    with open(path, "r+b") as file:  # every page after the first made garbage
        file.seek(4096)
        file.write(b"\xa5" * (path.stat().st_size - 4096))
    assert load_positions(path) is None
    open_positions(path, {"a.test": (1, 2)}).close()
    assert load_positions(path) == {"a.test": (1, 2)}
    assert "not a positions database" in caplog.text
    not_a_file = tmp_path / "a-folder"  # cannot be opened: an error to report, not a file to replace
    not_a_file.mkdir()
    with pytest.raises(sqlite3.OperationalError):
        open_positions(not_a_file, {})
    assert not_a_file.is_dir()
