"""The watcher in this process, over real forward files written by the store.

`watch_until` runs the watcher in the test's own thread: each message it hands on is
recorded, an action may deliver the next one, and the watcher is stopped once enough have
arrived (or after TIMEOUT, and the test fails on what it got). What must not be handed on is
never shown by waiting: a marker message is delivered, and whatever came before it is seen.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent, FileOpenedEvent
from watchdog.observers.api import BaseObserver, EventEmitter
from watchdog.observers.polling import PollingObserver

from maillab_common.forward import Damaged, Record
from maillab_inspector import stored
from maillab_inspector.model import MessageSummary
from maillab_inspector.state import PositionStore, load_positions
from maillab_inspector.tail import READ_CHUNK, ForwardTail
from maillab_inspector.watcher import (
    MISSED_EVENTS_BEFORE_POLLING,
    RECORD_OVERHEAD,
    Arrival,
    Watcher,
    Window,
    _ChangedFiles,
    open_tail,
)
from maillab_server.store import ForwardStore
from tests.helpers import BASE, TIMEOUT, record, wait_until
from tests.store_helpers import deliver

NO_SWEEPS = 2 * TIMEOUT  # seconds: only the first sweep, at the start, runs within a test


def watch_until(
    watcher: Watcher, count: int, act: Callable[[MessageSummary], object] = lambda summary: None
) -> list[str]:
    """The subjects the watcher hands on until it has handed on `count` (the rest of that batch too)."""
    handed: list[str] = []

    def show(summary: MessageSummary) -> None:
        handed.append(summary.subject)
        act(summary)
        if len(handed) >= count:
            watcher.stop()

    run_stopped_in_time(watcher, Summaries(show))
    return handed


def run_stopped_in_time(watcher: Watcher, output: Summaries) -> None:
    """`watcher.run(output)`, stopped after TIMEOUT if the test has not stopped it (and fails on what it got)."""
    failsafe = threading.Timer(TIMEOUT, watcher.stop)
    failsafe.start()
    try:
        watcher.run(output)
    finally:
        failsafe.cancel()


class Summaries:
    """An output that hands each message's summary to `show` (terminal.Output)."""

    settled = True

    def __init__(self, show: Callable[[MessageSummary], object]) -> None:
        self.show = show

    def message(self, name: str, record: Record, waited: float) -> None:
        summary = stored.summary(name, record)
        assert summary is not None
        self.show(summary)

    def tick(self, now: float) -> None:
        pass

    def finish(self) -> None:
        pass


class NoEvents(EventEmitter):
    """An emitter that never emits: it waits until it is stopped."""

    def queue_events(self, timeout: float) -> None:
        self.stopped_event.wait(timeout)


class DeafObserver(BaseObserver):
    """An observer on a file system that sends no file events (some network and FUSE mounts)."""

    def __init__(self) -> None:
        super().__init__(emitter_class=NoEvents)


class UnstartableObserver(BaseObserver):
    """An observer the kernel refuses, as inotify does past its watch limit."""

    def __init__(self) -> None:
        super().__init__(emitter_class=NoEvents)

    def start(self) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


@pytest.fixture
def tail_of(tmp_path: Path) -> Iterator[Callable[[Path, bool], ForwardTail]]:
    """open_tail with a state file of its own; the position stores are closed at the end."""
    opened: list[PositionStore] = []

    def open_one(root: Path, from_start: bool) -> ForwardTail:
        tail, positions = open_tail(root, tmp_path / f"positions-{len(opened)}.sqlite3", from_start)
        opened.append(positions)
        return tail

    yield open_one
    for positions in opened:
        positions.close()


@pytest.fixture
def store(tmp_path: Path) -> ForwardStore:
    (tmp_path / "forward").mkdir()
    return ForwardStore(tmp_path / "forward")


def test_new_messages_arrive_by_file_event_once_and_their_positions_are_saved(
    store: ForwardStore, tmp_path: Path
) -> None:
    deliver(store, {"a.test": record(1)})  # stored before the start: not handed on
    state, ready = tmp_path / "state" / "positions.sqlite3", tmp_path / "ready"
    tail, positions = open_tail(store.root, state, from_start=False)
    watcher = Watcher(tail, sweep_interval=NO_SWEEPS, positions=positions, ready_file=ready)
    ready_while_watching = []

    def next_one(summary: MessageSummary) -> None:
        ready_while_watching.append(ready.exists())
        following = {"n2": {"b.test": record(3)}, "n3": {"a.test": record(4)}}.get(summary.subject)
        if following:
            deliver(store, following)

    deliver(store, {"a.test": record(2)})
    # Past the first sweep, only a file event can say that n3 and n4 have landed.
    assert watch_until(watcher, 3, next_one) == ["n2", "n3", "n4"]
    positions.close()
    assert all(ready_while_watching) and not ready.exists(), "ready while watching, and only then"
    sizes = {name: (store.root / name).stat() for name in ("a.test", "b.test")}
    assert load_positions(state) == {name: (status.st_ino, status.st_size) for name, status in sizes.items()}


def test_a_restart_goes_on_from_the_saved_positions(store: ForwardStore, tmp_path: Path) -> None:
    state = tmp_path / "positions.sqlite3"
    deliver(store, {"a.test": record(1), "b.test": record(1)})
    tail, positions = open_tail(store.root, state, from_start=True)
    assert watch_until(Watcher(tail, sweep_interval=NO_SWEEPS, positions=positions), 2) == ["n1", "n1"]
    positions.close()
    deliver(store, {"a.test": record(2)})  # while the watcher is down
    tail, positions = open_tail(store.root, state, from_start=False)
    watcher = Watcher(tail, sweep_interval=NO_SWEEPS, positions=positions)

    def marker(summary: MessageSummary) -> None:
        if summary.subject == "n2":
            deliver(store, {"b.test": record(3)})

    assert watch_until(watcher, 2, marker) == ["n2", "n3"], "nothing before n2 again"
    positions.close()


def test_only_one_domain_file_is_followed(
    store: ForwardStore, tmp_path: Path, tail_of: Callable[[Path, bool], ForwardTail]
) -> None:
    deliver(store, {"a.test": record(1), "b.test": record(2)})
    tail = tail_of(store.root, True)
    watcher = Watcher(tail, only="b.test", sweep_interval=NO_SWEEPS)

    def marker(summary: MessageSummary) -> None:
        if summary.subject == "n2":
            deliver(store, {"a.test": record(3)})
            deliver(store, {"b.test": record(4)})

    assert watch_until(watcher, 2, marker) == ["n2", "n4"]


def test_polling_takes_over_when_file_events_do_not_arrive(
    store: ForwardStore, tmp_path: Path, tail_of: Callable[[Path, bool], ForwardTail], caplog: pytest.LogCaptureFixture
) -> None:
    deliver(store, {"a.test": record(1)})
    tail = tail_of(store.root, True)
    watcher = Watcher(tail, sweep_interval=0.05, observer=DeafObserver())
    polling = []

    def next_one(summary: MessageSummary) -> None:
        polling.append(isinstance(watcher.observer, PollingObserver))
        number = int(summary.subject[1:])
        deliver(store, {"a.test": record(number + 1)})  # found by the next sweep: no event says so

    handed = watch_until(watcher, MISSED_EVENTS_BEFORE_POLLING + 1, next_one)
    assert handed == [f"n{number}" for number in range(1, MISSED_EVENTS_BEFORE_POLLING + 2)]
    # The sweep that switches puts its message in the window first: it may be shown either side of the switch.
    assert polling[: MISSED_EVENTS_BEFORE_POLLING - 1] == [False] * (MISSED_EVENTS_BEFORE_POLLING - 1)
    assert polling[-1], "polling after the third sweep that found what no event announced"
    assert "file events from DeafObserver are not arriving; polling instead" in caplog.text


def test_an_observer_that_cannot_start_gives_way_to_polling(
    store: ForwardStore, tmp_path: Path, tail_of: Callable[[Path, bool], ForwardTail], caplog: pytest.LogCaptureFixture
) -> None:
    tail = tail_of(store.root, False)
    watcher = Watcher(tail, sweep_interval=NO_SWEEPS, observer=UnstartableObserver())
    deliver(store, {"a.test": record(1)})

    def next_one(summary: MessageSummary) -> None:
        if summary.subject == "n1":
            deliver(store, {"a.test": record(2)})

    # Past the first sweep, only the polling observer's events can bring n2 (it polls every second).
    assert watch_until(watcher, 2, next_one) == ["n1", "n2"]
    assert isinstance(watcher.observer, PollingObserver)
    assert "file events from UnstartableObserver are unavailable" in caplog.text


def test_a_signal_stops_the_watcher_at_once(
    store: ForwardStore, tmp_path: Path, tail_of: Callable[[Path, bool], ForwardTail]
) -> None:
    """The handler's `stop` wakes the wait for the next file event: no waiting for the next sweep."""
    tail = tail_of(store.root, False)
    watcher = Watcher(tail, sweep_interval=NO_SWEEPS)
    previous = signal.getsignal(signal.SIGUSR1)
    watcher.stop_on_signals(signal.SIGUSR1)
    timed_out = threading.Event()

    def give_up() -> None:
        timed_out.set()
        watcher.stop()

    failsafe = threading.Timer(TIMEOUT, give_up)
    failsafe.start()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()  # most likely while it waits
    try:
        watcher.run(Summaries(lambda summary: None))
    finally:
        failsafe.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert not timed_out.is_set(), "the watcher went on waiting after the signal"


class CountingTail(ForwardTail):
    """A tail that counts its reads of a file."""

    reads = 0

    def poll(self, name: str, chunk: int = READ_CHUNK) -> Iterator[tuple[str, Record | Damaged]]:
        self.reads += 1
        return super().poll(name, chunk)


def test_the_watchers_own_reads_do_not_wake_it(store: ForwardStore) -> None:
    """A read opens and closes the file: inotify reports both, and a watcher that took them for
    changes read again, which reported them again: a loop, 3.5 s of CPU in 8 s of an idle lab."""
    tail = CountingTail(store.root)
    watcher = Watcher(tail, sweep_interval=NO_SWEEPS)
    reads: list[int] = []

    def count_reads() -> None:
        reads.append(tail.reads)
        watcher.stop()

    def shown(summary: MessageSummary) -> None:
        reads.append(tail.reads)
        threading.Timer(0.5, count_reads).start()  # a loop reads hundreds of times in that while

    deliver(store, {"a.test": record(1)})
    run_stopped_in_time(watcher, Summaries(shown))
    assert len(reads) == 2 and reads[1] - reads[0] <= 2, f"reads when shown, then 0.5 s later: {reads}"


def test_the_window_holds_records_up_to_its_limit_and_then_makes_the_reader_wait() -> None:
    first, second, third = (Record(offset, 1000, replace(BASE, message=b"x")) for offset in (0, 1000, 2000))
    window = Window(limit_bytes=2 * (1000 + RECORD_OVERHEAD), limit_records=10)
    assert window.put(Arrival("a.test", 1, first, 0.0), timeout=0)
    assert window.put(Arrival("a.test", 1, second, 0.0), timeout=0)
    assert not window.put(Arrival("a.test", 1, third, 0.0), timeout=0.05), "full"
    taken = window.get(timeout=0)
    assert taken is not None and taken.item is first
    assert window.put(Arrival("a.test", 1, third, 0.0), timeout=0), "room again"
    huge = Window(limit_bytes=10, limit_records=10)
    assert huge.put(Arrival("a.test", 1, first, 0.0), timeout=0), "one record however large"


class FailingTail(ForwardTail):
    def poll(self, name: str, chunk: int = READ_CHUNK) -> Iterator[tuple[str, Record | Damaged]]:
        raise PermissionError(13, "Permission denied", name)


def test_what_stops_the_reader_thread_is_raised_in_the_callers(store: ForwardStore) -> None:
    deliver(store, {"a.test": record(1)})
    watcher = Watcher(FailingTail(store.root), sweep_interval=NO_SWEEPS)
    with pytest.raises(PermissionError):
        run_stopped_in_time(watcher, Summaries(lambda summary: None))


def test_a_stuck_printer_stops_the_ready_file_being_touched(store: ForwardStore, tmp_path: Path) -> None:
    """Stdout blocked: the reader alone must not keep the health check green."""
    ready, release = tmp_path / "ready", threading.Event()
    watcher = Watcher(ForwardTail(store.root), sweep_interval=0.05, ready_file=ready, stuck_after=0.3)
    ages: list[float] = []

    def stuck(summary: MessageSummary) -> None:
        wait_until(lambda: time.time() - ready.stat().st_mtime > 1.0, "the ready file growing old")
        ages.append(time.time() - ready.stat().st_mtime)
        release.set()
        watcher.stop()

    deliver(store, {"a.test": record(1)})
    run_stopped_in_time(watcher, Summaries(stuck))
    assert release.is_set() and ages[0] > 1.0


def test_a_file_is_queued_once_until_it_is_read_however_many_events_name_it() -> None:
    """While the reader waits (a full window, stdout blocked), events must not pile up."""
    changed: queue.SimpleQueue[str] = queue.SimpleQueue()
    handler = _ChangedFiles(changed)
    for _ in range(1_000):
        handler.on_any_event(FileModifiedEvent("/forward/a.test"))
    handler.on_any_event(FileModifiedEvent("/forward/b.test"))
    handler.on_any_event(FileOpenedEvent("/forward/c.test"))  # an open is no change
    assert [changed.get_nowait() for _ in range(changed.qsize())] == ["a.test", "b.test"]
    handler.taken({"a.test"})
    handler.on_any_event(FileModifiedEvent("/forward/a.test"))
    handler.on_any_event(FileModifiedEvent("/forward/b.test"))  # still queued, not yet read
    assert [changed.get_nowait() for _ in range(changed.qsize())] == ["a.test"]
