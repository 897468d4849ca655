"""Filling the catalogue: the backlog in bulk, `serve` as a process (catalogue, printer and HTTP
in one), a kill -9 in the middle of a backlog, the lock between `serve` and `reindex`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from maillab_common.forward import Record, render_record
from maillab_inspector import cataloguing, model
from maillab_inspector import tail as tail_module
from maillab_inspector.catalogue import Catalogue, Entry
from maillab_inspector.cataloguing import CatalogueFeed, CatalogueInUse, catch_up, serving_lock, writer_lock
from maillab_inspector.tail import ForwardTail
from tests.helpers import BASE, MULTIPART, inspector, record, wait_until
from tests.unit.conftest import free_port


@pytest.fixture
def forward(tmp_path: Path) -> Path:
    """An empty forward folder."""
    (tmp_path / "forward").mkdir()
    return tmp_path / "forward"


def write(path: Path, numbers: range) -> None:
    with open(path, "ab") as file:
        file.write(b"".join(record(number) for number in numbers))


def every_subject(catalogue: Catalogue) -> Counter[str]:
    """Each catalogued message's subject, counted, read page by page."""
    subjects: Counter[str] = Counter()
    cursor = None
    while True:
        page = catalogue.messages(limit=1000, cursor=cursor)
        subjects.update(message.subject for message in page.messages)
        cursor = page.next_cursor
        if cursor is None:
            return subjects


def test_the_backlog_is_catalogued_once_and_then_only_what_is_new(tmp_path: Path, forward: Path) -> None:
    write(forward / "a.test", range(1, 301))
    write(forward / "b.test", range(301, 351))
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    reported: list[tuple[int, int]] = []
    assert catch_up(catalogue, ForwardTail(forward), lambda done, total: reported.append((done, total))) == 350
    sizes = {name: (os.stat(forward / name).st_ino, os.stat(forward / name).st_size) for name in ("a.test", "b.test")}
    assert catalogue.positions() == sizes
    assert reported[-1] == (sum(size for _, size in sizes.values()),) * 2, "the progress ends at the whole backlog"

    write(forward / "a.test", range(351, 361))
    tail = ForwardTail(forward)
    tail.restore(catalogue.positions())
    assert catch_up(catalogue, tail) == 10, "only what was appended since"
    assert every_subject(catalogue) == Counter({f"n{number}": 1 for number in range(1, 361)})
    catalogue.close()


def received_at(numbers: range, seconds: Callable[[int], int]) -> bytes:
    """Records of `numbers`, each received `seconds(number)` after BASE's time."""
    return b"".join(
        render_record(
            replace(
                BASE,
                transaction_id=f"{n:04X}",
                received_at=BASE.received_at + timedelta(seconds=seconds(n)),
                message=f"Subject: n{n}\nMessage-ID: <{n}@x.test>\n\nbody {n}\n".encode(),
            )
        )
        for n in numbers
    )


@pytest.mark.parametrize(("merged_files", "chunk"), [(256, 1 << 20), (256, 100), (2, 1 << 20)])
def test_the_backlog_is_catalogued_in_the_order_received_across_files(
    tmp_path: Path, forward: Path, monkeypatch: pytest.MonkeyPatch, merged_files: int, chunk: int
) -> None:
    # Three files whose messages interleave in time: newest first is the order received, not file by file.
    for index, name in enumerate(("a.test", "b.test", "c.test")):
        (forward / name).write_bytes(received_at(range(index, 90, 3), lambda n: n))
    monkeypatch.setattr(cataloguing, "MERGED_FILES", merged_files)
    # 100 bytes: each file is read in chunks smaller than one record, which then spans several.
    monkeypatch.setattr(cataloguing, "MERGED_BYTES", 3 * chunk)
    monkeypatch.setattr(tail_module, "MIN_MERGED_CHUNK", chunk)
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    assert catch_up(catalogue, ForwardTail(forward)) == 90
    subjects = [message.subject for message in catalogue.messages(limit=100).messages]
    if merged_files >= 3:
        assert subjects == [f"n{n}" for n in reversed(range(90))]
    else:  # a.test and b.test merged, then c.test: each group in order
        merged = [f"n{n}" for n in reversed(range(90)) if n % 3 != 2]
        assert subjects == [f"n{n}" for n in reversed(range(2, 90, 3))] + merged
    catalogue.close()


def test_the_pool_catalogues_what_this_process_would(
    tmp_path: Path, forward: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(forward / "a.test", range(1, 700))
    with open(forward / "b.test", "wb") as file:
        file.write(record(0, MULTIPART) + b"From damaged bytes\n" + record(700))
    inline = Catalogue(tmp_path / "inline.sqlite3")
    catch_up(inline, ForwardTail(forward))
    monkeypatch.setattr(cataloguing, "POOL_FROM_BYTES", 0)
    pooled = Catalogue(tmp_path / "pooled.sqlite3")
    catch_up(pooled, ForwardTail(forward))
    assert pooled.messages(limit=1000) == inline.messages(limit=1000)
    assert pooled.positions() == inline.positions()
    assert pooled.messages(limit=1000).total == 701
    inline.close()
    pooled.close()


def test_a_feed_writes_at_once_when_nothing_waits_and_in_batches_when_records_do(tmp_path: Path, forward: Path) -> None:
    write(forward / "a.test", range(1, 4))
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    waiting = [5]
    feed = CatalogueFeed(catalogue, waiting=lambda: waiting[0])
    tail = ForwardTail(forward)
    items = list(tail.poll("a.test"))
    feed.message("a.test", items[0][1], 0.0)  # type: ignore[arg-type]
    assert not feed.settled, "more records wait: the batch goes on"
    waiting[0] = 0
    assert feed.settled, "nothing waits behind it: written now"
    inode = os.stat(forward / "a.test").st_ino
    first = items[0][1]
    feed.advance({"a.test": (inode, first.offset + first.length)})
    written = catalogue.messages()
    assert [message.subject for message in written.messages] == ["n1"]
    assert catalogue.positions() == {"a.test": (inode, first.offset + first.length)}
    catalogue.close()


def test_only_one_process_holds_a_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.sqlite3"
    held = serving_lock(path)
    with pytest.raises(CatalogueInUse, match="in use by a running inspector"):
        serving_lock(path)
    held.close()
    serving_lock(path).close()


def test_one_writer_at_a_time_the_next_waits_for_the_last(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.sqlite3"
    held = writer_lock(path)
    with pytest.raises(CatalogueInUse, match="still written by another process after 0 s"):
        writer_lock(path, timeout=0.2)
    threading.Timer(0.3, held.close).start()
    writer_lock(path, timeout=10).close()  # waits for the one before to close


class Serve:
    """`maillab-inspector serve --json` in a child process on a free port, its JSON lines counted."""

    def __init__(self, forward: Path, state: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "MAILLAB_FORWARD_DIR": str(forward),
            "MAILLAB_STATE_FILE": str(state / "positions.sqlite3"),
            "MAILLAB_CATALOGUE": str(state / "catalogue.sqlite3"),
            "MAILLAB_READY_FILE": str(state / "ready"),
            "MAILLAB_HTTP_READY_FILE": str(state / "http"),
            "MAILLAB_HTTP_PORT": str(self.port),
            "MAILLAB_SWEEP_INTERVAL": "0.2",
        }
        self.stdout = state / "stdout"
        with open(self.stdout, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "maillab_inspector", "serve", "--json"],
                env=self.env,
                stdout=output,
                stderr=subprocess.PIPE,
            )
        wait_until(lambda: self.answers() or self.process.poll() is not None, "serve to answer HTTP", 30)
        assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1{path}", timeout=timeout) as response:
            return json.load(response)

    def answers(self) -> bool:
        try:
            self.get("/health", timeout=1)
        except (OSError, urllib.error.URLError):
            return False
        return True

    def printed(self) -> Counter[str]:
        subjects: Counter[str] = Counter()
        for line in self.stdout.read_text().splitlines():
            try:
                subjects[json.loads(line)["subject"]] += 1
            except ValueError:  # a line cut by a kill -9
                continue
        return subjects

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stop it with `signum`; its exit code, and what it wrote on stderr in `logged`."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=30)
        if self.process.stderr is not None:
            with self.process.stderr as stderr:
                self.logged = stderr.read().decode(errors="replace")
        return code

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """`maillab-inspector healthcheck` with serve's settings."""
        command = [sys.executable, "-m", "maillab_inspector", "healthcheck"]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.process.poll() is None:
            serve.stop(signal.SIGKILL)


def catalogue_processes(pid: int) -> list[int]:
    """The processes `pid` spawned to run code of its own (multiprocessing's resource tracker is not one)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    spawned = [int(child) for task in tasks for child in (task / "children").read_text().split()]
    return [child for child in spawned if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def started_catalogue_process(serve: Serve) -> int:
    """serve's catalogue process, once it is there: serve starts it after its HTTP side answers."""
    wait_until(lambda: len(catalogue_processes(serve.process.pid)) == 1, "serve's catalogue process")
    (catalogue_process,) = catalogue_processes(serve.process.pid)
    return catalogue_process


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_serve_stops_with_an_error_when_its_catalogue_process_ends(tmp_path: Path, serving: list[Serve]) -> None:
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    serving.append(serve := Serve(forward, state))
    catalogue_process = started_catalogue_process(serve)
    os.kill(catalogue_process, signal.SIGKILL)
    assert serve.process.wait(timeout=30) == 2
    assert serve.process.stderr is not None
    with serve.process.stderr as stderr:
        assert "cataloguing stopped: the catalogue process ended (exit code -9)" in stderr.read().decode()


def test_the_catalogue_process_ends_with_serve_even_a_killed_one(tmp_path: Path, serving: list[Serve]) -> None:
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    serving.append(serve := Serve(forward, state))
    catalogue_process = started_catalogue_process(serve)
    serve.stop(signal.SIGKILL)
    wait_until(lambda: not alive(catalogue_process), "the catalogue process to see serve gone and stop")


def test_serve_catalogues_prints_and_answers_a_wait_for_what_lands(tmp_path: Path, serving: list[Serve]) -> None:
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    write(forward / "a.test", range(1, 6))  # before the start: the catalogue is new, and takes them in
    serving.append(serve := Serve(forward, state))
    wait_until(lambda: serve.get("/messages")["total"] == 5, "the five stored before the start")
    write(forward / "b.test", range(6, 8))
    found = serve.get("/wait?query=domain:b.test&count=2&timeout=10")
    assert sorted(message["subject"] for message in found["messages"]) == ["n6", "n7"]
    wait_until(lambda: serve.printed() == Counter({"n6": 1, "n7": 1}), "the printer to show the two new ones")
    healthy = serve.healthcheck()
    assert healthy.returncode == 0, healthy.stderr
    assert serve.stop() == 0
    assert serve.healthcheck().returncode == 1


@pytest.mark.parametrize("http", ["nobody listens", "a listener never answers"])
def test_the_healthcheck_fails_when_the_http_side_alone_does_not_answer(
    tmp_path: Path, serving: list[Serve], http: str
) -> None:
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    serving.append(serve := Serve(forward, state))
    healthy = serve.healthcheck()
    assert healthy.returncode == 0, healthy.stderr
    http_ready = Path(serve.env["MAILLAB_HTTP_READY_FILE"])
    address = http_ready.read_text()
    # A socket that listens takes connections into its backlog, and answers none of them.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1] if http == "a listener never answers" else free_port()
        http_ready.write_text(f"127.0.0.1 {port}\n")
        unhealthy = serve.healthcheck()
    assert unhealthy.returncode == 1
    (line,) = unhealthy.stderr.splitlines()
    assert line.startswith(f"error: unhealthy: http://127.0.0.1:{port}/api/v1/health does not answer"), line
    assert serve.process.poll() is None
    http_ready.write_text(address)  # the same serve, its sweep never stopped: healthy again
    healthy = serve.healthcheck()
    assert healthy.returncode == 0, healthy.stderr


def spoil_the_schema_version(path: Path) -> None:
    """Mark the catalogue as of another schema version, with answers a rebuild would not give."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        db.execute("UPDATE messages SET subject = 'of the old schema'")


def replace_with_what_is_not_a_catalogue(path: Path) -> None:
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    path.write_bytes(b"not a catalogue\n" * 512)


def sixty_served(tmp_path: Path, serving: list[Serve]) -> tuple[Path, Path, Serve, Any]:
    """Sixty messages in two domain files (a.test 1-40, b.test 41-60), served until all are catalogued:
    the forward and state folders, the serve, and its list of the sixty."""
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    write(forward / "a.test", range(1, 41))
    write(forward / "b.test", range(41, 61))
    serving.append(serve := Serve(forward, state))
    wait_until(lambda: serve.get("/messages")["total"] == 60, "the sixty messages")
    return forward, state, serve, serve.get("/messages?limit=1000")


@pytest.mark.parametrize("spoil", [spoil_the_schema_version, replace_with_what_is_not_a_catalogue])
def test_serve_rebuilds_a_catalogue_of_another_schema_version_with_the_same_answers(
    tmp_path: Path, serving: list[Serve], spoil: Callable[[Path], None]
) -> None:
    forward, state, first, before = sixty_served(tmp_path, serving)
    assert first.stop() == 0
    path = state / "catalogue.sqlite3"
    spoil(path)
    serving.append(second := Serve(forward, state))
    wait_until(lambda: second.get("/messages")["total"] == 60, "the sixty messages, catalogued again")
    assert second.get("/messages?limit=1000") == before
    assert second.stop() == 0
    assert f"rebuilding the catalogue {path} from the forward files" in second.logged
    Catalogue(path).close()  # of this schema version now


def test_a_kill_9_mid_backlog_catalogues_every_message_once(tmp_path: Path, serving: list[Serve]) -> None:
    forward, state = tmp_path / "forward", tmp_path / "state"
    forward.mkdir()
    state.mkdir()
    backlog = 6_000
    write(forward / "a.test", range(1, backlog + 1))
    serving.append(first := Serve(forward, state))
    wait_until(lambda: first.get("/messages?limit=1")["total"] > 0, "the first batch to be catalogued")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    catalogue = Catalogue(state / "catalogue.sqlite3")
    at_the_kill = catalogue.messages(limit=1).total
    catalogue.close()
    assert at_the_kill < backlog, "killed in the middle of the backlog"
    serving.append(second := Serve(forward, state))
    wait_until(lambda: second.get("/messages?limit=1")["total"] == backlog, "the rest of the backlog", 60)
    second.stop()
    catalogue = Catalogue(state / "catalogue.sqlite3")
    assert every_subject(catalogue) == Counter({f"n{number}": 1 for number in range(1, backlog + 1)})
    catalogue.close()


def test_reindex_refuses_a_served_catalogue_and_rebuilds_the_same_answers(tmp_path: Path, serving: list[Serve]) -> None:
    forward, state, serve, before = sixty_served(tmp_path, serving)
    env = {key: value for key, value in serve.env.items() if key in ("MAILLAB_CATALOGUE",)}
    refused = inspector(forward, "reindex", "--catalogue", env["MAILLAB_CATALOGUE"])
    assert refused.returncode == 1 and "in use by a running inspector" in refused.stderr, refused.stderr
    serve.stop()
    started = time.monotonic()
    rebuilt = inspector(forward, "reindex", "--catalogue", env["MAILLAB_CATALOGUE"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "catalogued 60 messages" in rebuilt.stdout
    assert time.monotonic() - started < 30
    serving.append(again := Serve(forward, state))
    assert again.get("/messages?limit=1000") == before


def test_list_takes_a_query_over_the_catalogue(tmp_path: Path, forward: Path) -> None:
    write(forward / "a.test", range(1, 31))
    path = str(tmp_path / "catalogue.sqlite3")
    missing = inspector(forward, "list", "--query", "n7", "--catalogue", path)
    assert missing.returncode == 1 and "no catalogue" in missing.stderr, missing.stderr
    assert inspector(forward, "reindex", "--catalogue", path).returncode == 0
    found = inspector(forward, "list", "--query", "subject:n7 -n8", "--catalogue", path, "--json")
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["subject"] for line in found.stdout.splitlines()] == ["n7"]
    lines = inspector(forward, "list", "--query", "domain:a.test", "--catalogue", path).stdout.splitlines()
    assert len(lines) == 30 and "n30" in lines[0], "newest first"
    malformed = inspector(forward, "list", "--query", "n7 larger:ten", "--catalogue", path)
    assert malformed.returncode == 2 and "at character 11" in malformed.stderr, malformed.stderr


def test_list_query_json_escapes_what_a_terminal_would_obey(tmp_path: Path, forward: Path) -> None:
    # C1 controls and bidi overrides pass json.dumps raw; the JSON lines escape them, as `watch --json` does.
    subject = "pay \u202eexe.txt \x9b31m red \x1b[2J"
    message = f"Subject: {subject}\nMessage-ID: <h@x.test>\n\nbody\n".encode()
    (forward / "a.test").write_bytes(record(1, message))
    path = str(tmp_path / "catalogue.sqlite3")
    assert inspector(forward, "reindex", "--catalogue", path).returncode == 0
    found = inspector(forward, "list", "--query", "body", "--catalogue", path, "--json")
    assert found.returncode == 0, found.stderr
    assert not any(character in found.stdout for character in "\u202e\x9b\x1b"), found.stdout
    assert json.loads(found.stdout)["subject"] == subject


def test_a_file_replaced_or_cut_hides_what_was_catalogued_from_it_before(tmp_path: Path, forward: Path) -> None:
    write(forward / "a.test", range(1, 6))
    write(forward / "b.test", range(6, 8))
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    tail = ForwardTail(forward)
    catch_up(catalogue, tail)
    write(tmp_path / "replacement", range(100, 103))
    os.replace(tmp_path / "replacement", forward / "a.test")  # another inode
    catch_up(catalogue, tail)
    assert every_subject(catalogue) == Counter({"n100": 1, "n101": 1, "n102": 1, "n6": 1, "n7": 1})
    with open(forward / "a.test", "wb") as file:  # cut in place (the same inode), then one record
        file.write(record(200))
    catch_up(catalogue, tail)
    assert every_subject(catalogue) == Counter({"n200": 1, "n6": 1, "n7": 1})
    catalogue.close()


def test_a_message_that_cannot_be_catalogued_is_logged_and_the_rest_go_on(
    tmp_path: Path, forward: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write(forward / "a.test", range(1, 6))
    entry = model.catalogue_entry

    def failing_on_the_third(name: str, item: Record, inode: int) -> Entry:
        if b"Subject: n3\n" in item.delivery.message:
            raise RecursionError("a bug in taking it apart")
        return entry(name, item, inode)

    monkeypatch.setattr(cataloguing, "catalogue_entry", failing_on_the_third)
    catalogue = Catalogue(tmp_path / "catalogue.sqlite3")
    assert catch_up(catalogue, ForwardTail(forward)) == 4
    assert every_subject(catalogue) == Counter({"n1": 1, "n2": 1, "n4": 1, "n5": 1})
    assert "cannot be catalogued" in caplog.text
    catalogue.close()
