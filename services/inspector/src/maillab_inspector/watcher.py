"""`watch`'s loop: file events and sweeps drive the tail; each new message is handed on once.

Two threads meet at a bounded window of records. The reader (a thread of its own) follows
the folder: a file event says which forward file changed, and only that file is read; a
sweep of the whole folder every `sweep_interval` catches whatever events missed; where
events do not arrive at all (some network and FUSE mounts), polling takes over. Each record
read goes into the window, which holds at most WINDOW_BYTES of them (or half of that and
one record however large): past that the reader waits, and the backlog stays in the
files, not in memory. The caller's thread takes each record out and hands it to the output (terminal.py)
with the time it waited; once the output has shown it, that file's position is saved
(state.py), so that a restart, a kill -9 included, neither misses a message nor shows one
twice, but for the one being shown at that instant. The reader touches the ready file that
the health check reads at each sweep, and while it waits on a full window.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from watchdog.events import (
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from maillab_common.forward import Damaged, Record
from maillab_inspector.state import PositionStore, load_positions, open_positions
from maillab_inspector.stored import poll
from maillab_inspector.tail import ForwardTail
from maillab_inspector.terminal import Output

log = logging.getLogger(__name__)

# After this many sweeps in a row that find data no file event announced, events are
# taken not to arrive on this file system (some network and FUSE mounts) and polling
# takes over.
MISSED_EVENTS_BEFORE_POLLING = 3
_WAKE = ""  # put in the queue of changed files by `stop`: no forward file has an empty name
# The records read and not yet shown that are held in memory; the rest of a backlog waits in its file.
WINDOW_BYTES = 4 * 1024 * 1024
WINDOW_RECORDS = 10_000  # and at most this many, however small
RECORD_OVERHEAD = 600  # bytes a record takes in memory besides its message (objects, the envelope)
# Past this long without the printing thread coming back for the next record (stdout
# blocked, say), the reader stops touching the ready file: the health check then fails.
STUCK_AFTER = 5.0
TICK = 0.2  # seconds: how often the output hears the time when no message comes


def open_tail(root: Path, state_file: Path, from_start: bool) -> tuple[ForwardTail, PositionStore]:
    """A tail of `root` that goes on from the saved positions, or starts at the end of every
    file (at the start with `from_start`), and the store its positions are saved in (saved at once).

    Raises OSError (sqlite3.Error) when the forward folder cannot be read or the state file written.
    """
    tail = ForwardTail(root)
    saved = None if from_start else load_positions(state_file)
    if saved is not None:
        tail.restore(saved)
        log.info("going on from the positions in %s", state_file)
    elif not from_start:
        tail.skip_existing()
    return tail, open_positions(state_file, tail.positions())


@dataclass(frozen=True)
class Arrival:
    """A record read from the forward file `name` (its inode then `inode`) at `read_at` (monotonic)."""

    name: str
    inode: int
    item: Record | Damaged
    read_at: float

    @property
    def end(self) -> int:
        """The position just past it: where to go on from once it has been shown."""
        return self.item.offset + self.item.length

    @property
    def size(self) -> int:
        """About what it takes in memory."""
        return self.item.length + RECORD_OVERHEAD


class Window:
    """The records read and not yet handed on: at most `limit_bytes` of them (or half of that and
    one record, however large).

    A reader that finds the window full waits until it is half empty, then fills it again
    in one go: waking it for every record taken out would hand the interpreter's lock
    back and forth between the two threads twice a record, which cost more than the
    parsing (25,000 messages printed as JSON took 18.1 s of CPU that way, 14.7 s this way).
    """

    def __init__(self, limit_bytes: int = WINDOW_BYTES, limit_records: int = WINDOW_RECORDS) -> None:
        self.limit_bytes, self.limit_records = limit_bytes, limit_records
        self._held: deque[Arrival] = deque()
        self._bytes = 0
        self._changed = threading.Condition()
        self._reader_waits = False

    def put(self, arrival: Arrival, timeout: float) -> bool:
        """Add `arrival` once there is room; False if there was none within `timeout` seconds."""
        with self._changed:
            if not self._has_room(arrival.size):
                self._reader_waits = True
                if not self._changed.wait_for(self._half_empty, timeout):
                    return False
            self._held.append(arrival)
            self._bytes += arrival.size
            if len(self._held) == 1:  # the printing thread may be waiting for it
                self._changed.notify_all()
            return True

    def get(self, timeout: float) -> Arrival | None:
        """The oldest record held, or None if none came within `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._held, timeout):
                return None
            arrival = self._held.popleft()
            self._bytes -= arrival.size
            if self._reader_waits and self._half_empty():
                self._reader_waits = False
                self._changed.notify_all()
            return arrival

    def __len__(self) -> int:
        """How many records are held."""
        return len(self._held)

    def _has_room(self, size: int) -> bool:
        if not self._held:
            return True
        return self._bytes + size <= self.limit_bytes and len(self._held) < self.limit_records

    def _half_empty(self) -> bool:
        return self._bytes <= self.limit_bytes // 2 and len(self._held) <= self.limit_records // 2


# The events that say a forward file has new bytes: appended to, created, or renamed into
# place. Opening and closing are left out, above all the inspector's own: each read would
# otherwise announce a change that starts the next read, in a loop (3.5 s of CPU in 8 s idle).
CHANGES: list[type[FileSystemEvent]] = [FileModifiedEvent, FileCreatedEvent, FileMovedEvent]


class _ChangedFiles(FileSystemEventHandler):
    """Queues the name of each forward file that an event says has changed, once until it is read:
    while the reader waits (a full window, a blocked stdout), the queue grows with the files, not the events."""

    def __init__(self, changed: queue.SimpleQueue[str]) -> None:
        self._changed = changed
        self._queued: set[str] = set()
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and isinstance(event, tuple(CHANGES)):
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    name = os.path.basename(os.fsdecode(path))
                    with self._lock:
                        if name in self._queued:
                            continue
                        self._queued.add(name)
                    self._changed.put(name)

    def taken(self, names: set[str]) -> None:
        """`names` are about to be read: an event from now on queues them again."""
        with self._lock:
            self._queued -= names


class PositionSaver(Protocol):
    def advance(self, positions: dict[str, tuple[int, int]]) -> None:
        """Save how far each file in `positions` has been handed on: (inode, offset)."""


class Watcher:
    """Follows a forward folder through `tail`, until `stop`."""

    def __init__(
        self,
        tail: ForwardTail,
        *,
        only: str | None = None,
        sweep_interval: float = 1.0,
        positions: PositionSaver | None = None,
        ready_file: Path | None = None,
        observer: BaseObserver | None = None,
        window: Window | None = None,
        stuck_after: float = STUCK_AFTER,
    ) -> None:
        self.tail, self.only, self.sweep_interval = tail, only, sweep_interval
        self.positions, self.ready_file = positions, ready_file
        self.observer = observer if observer is not None else Observer()
        self.window = window if window is not None else Window()
        self.stuck_after = stuck_after
        self._changed: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._announced: set[str] = set()  # files an event named since the last sweep
        self._missed_sweeps = 0  # sweeps in a row that found data no event announced
        self._failure: BaseException | None = None  # what ended the reader, if not `stop`
        self._printing_since = time.monotonic()  # when the printing thread last came for a record

    def stop(self) -> None:
        """End `run` soon; safe from a signal handler and from another thread."""
        self._stopping.set()
        self._changed.put(_WAKE)  # SimpleQueue.put is reentrant: a signal handler may call it

    def stop_on_signals(self, *signums: signal.Signals) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        for signum in signums:
            signal.signal(signum, handler)

    def run(self, output: Output) -> None:
        """Hand each message to `output` once, as it lands, in the order of each file, until `stop`."""
        handler = _ChangedFiles(self._changed)
        self.observer = self._start_observer(handler, self.observer)
        log.info("watching %s%s", self.tail.root, f" (only {self.only})" if self.only else "")
        reader = threading.Thread(target=self._read, args=(handler,), name="forward-reader", daemon=True)
        reader.start()
        unsaved: dict[str, tuple[int, int]] = {}
        try:
            while not self._stopping.is_set():
                self._printing_since = time.monotonic()
                arrival = self.window.get(TICK)
                if arrival is not None:
                    self._hand_on(arrival, output)
                    unsaved[arrival.name] = (arrival.inode, arrival.end)
                output.tick(time.monotonic())
                if unsaved and output.settled:
                    if self.positions is not None:
                        self.positions.advance(unsaved)
                    unsaved.clear()
            output.finish()  # a count not yet printed, before its positions are saved
            if unsaved and self.positions is not None:
                self.positions.advance(unsaved)
        finally:
            self.stop()
            reader.join()
            self.observer.stop()
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)
        if self._failure is not None:
            raise self._failure

    @staticmethod
    def _hand_on(arrival: Arrival, output: Output) -> None:
        if isinstance(arrival.item, Damaged):
            item = arrival.item
            log.warning("%s: %d damaged bytes at offset %d: %s", arrival.name, item.length, item.offset, item.reason)
        else:
            output.message(arrival.name, arrival.item, time.monotonic() - arrival.read_at)

    def _read(self, handler: _ChangedFiles) -> None:
        """The reader thread: every record of every change into the window, until `stop`."""
        try:
            next_sweep = 0.0
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(handler)
                    next_sweep = time.monotonic() + self.sweep_interval
                    continue
                try:
                    named = {self._changed.get(timeout=next_sweep - now)}
                except queue.Empty:
                    continue
                named |= self._queued()  # an append can raise several events: one read serves them all
                named.discard(_WAKE)
                handler.taken(named)
                self._announced |= named
                for name in sorted(named):
                    if self._stopping.is_set():
                        break
                    self._into_window(name)
        except BaseException as exc:  # told to the caller's thread, which re-raises it
            self._failure = exc
            self.stop()

    def _sweep(self, handler: _ChangedFiles) -> None:
        """Read every file; switch to polling once sweeps keep finding what no event announced."""
        self._ready()
        named = self._queued() - {_WAKE}
        handler.taken(named)
        self._announced |= named
        found = self._into_window(None)
        unannounced = found - self._announced
        self._missed_sweeps = self._missed_sweeps + 1 if unannounced else 0
        if self._missed_sweeps >= MISSED_EVENTS_BEFORE_POLLING and not isinstance(self.observer, PollingObserver):
            log.warning("file events from %s are not arriving; polling instead", type(self.observer).__name__)
            self.observer.stop()
            self.observer = self._start_observer(handler, PollingObserver())
        self._announced.clear()

    def _queued(self) -> set[str]:
        """The names queued by events now, taken out of the queue."""
        named = set()
        while True:
            try:
                named.add(self._changed.get_nowait())
            except queue.Empty:
                return named

    def _into_window(self, name: str | None) -> set[str]:
        """Put what is new in `name` (every file when None) into the window; the files that had records."""
        found: set[str] = set()
        for file, item in poll(self.tail, self.only, name):
            arrival = Arrival(file, self.tail.inode(file), item, time.monotonic())
            while not self.window.put(arrival, TICK):  # full: the backlog waits in its file
                self._ready()  # busy, not stuck
                if self._stopping.is_set():
                    return found
            if isinstance(item, Record):
                found.add(file)
        return found

    def _ready(self) -> None:
        """Touch the ready file, unless the printing thread is stuck (the window then fills, and stays full)."""
        if self.ready_file is not None and time.monotonic() - self._printing_since < self.stuck_after:
            self.ready_file.touch()

    def _start_observer(self, handler: _ChangedFiles, observer: BaseObserver) -> BaseObserver:
        root = str(self.tail.root)
        try:
            observer.schedule(handler, root, recursive=False, event_filter=CHANGES)
            observer.start()
        except OSError as exc:
            log.warning("file events from %s are unavailable (%s); polling instead", type(observer).__name__, exc)
            observer = PollingObserver()
            observer.schedule(handler, root, recursive=False, event_filter=CHANGES)
            observer.start()
        log.info("file events from %s", type(observer).__name__)
        return observer
