"""`watch`'s loop: file events and sweeps drive the tail; each new message is handed on once.

A file event says which forward file changed, and only that file is read; a sweep of the
whole folder every `sweep_interval` catches whatever events missed. Where events do not
arrive at all (some network and FUSE mounts), polling takes over. After each batch the
positions are saved (state.py), so that a restart neither misses a message nor hands one on
twice; each sweep touches the ready file that the health check reads.

The watcher knows nothing of terminals: the caller says what to do with each summary.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from maillab_common.forward import Record
from maillab_inspector.model import MessageSummary
from maillab_inspector.state import load_positions, save_positions
from maillab_inspector.stored import Item, poll, summaries
from maillab_inspector.tail import ForwardTail

log = logging.getLogger(__name__)

# After this many sweeps in a row that find data no file event announced, events are
# taken not to arrive on this file system (some network and FUSE mounts) and polling
# takes over.
MISSED_EVENTS_BEFORE_POLLING = 3
_WAKE = ""  # put in the queue of changed files by `stop`: no forward file has an empty name


def open_tail(root: Path, state_file: Path, from_start: bool) -> ForwardTail:
    """A tail of `root` that goes on from the saved positions, or starts at the end of every
    file (at the start with `from_start`); its positions are saved at once.

    Raises OSError when the forward folder cannot be read or the state file written.
    """
    tail = ForwardTail(root)
    saved = None if from_start else load_positions(state_file)
    if saved is not None:
        tail.restore(saved)
        log.info("going on from the positions in %s", state_file)
    elif not from_start:
        tail.skip_existing()
    state_file.parent.mkdir(parents=True, exist_ok=True)
    save_positions(state_file, tail.positions())
    return tail


class _ChangedFiles(FileSystemEventHandler):
    """Queues the name of each forward file that an event says has changed."""

    def __init__(self, changed: queue.SimpleQueue[str]) -> None:
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self._changed.put(os.path.basename(os.fsdecode(path)))


class Watcher:
    """Follows a forward folder through `tail`, until `stop`."""

    def __init__(
        self,
        tail: ForwardTail,
        *,
        only: str | None = None,
        sweep_interval: float = 1.0,
        state_file: Path | None = None,
        ready_file: Path | None = None,
        observer: BaseObserver | None = None,
    ) -> None:
        self.tail, self.only, self.sweep_interval = tail, only, sweep_interval
        self.state_file, self.ready_file = state_file, ready_file
        self.observer = observer if observer is not None else Observer()
        self._changed: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stopping = False
        self._announced: set[str] = set()  # files an event named since the last sweep
        self._missed_sweeps = 0  # sweeps in a row that found data no event announced

    def stop(self) -> None:
        """End `run` soon; safe from a signal handler and from another thread."""
        self._stopping = True
        self._changed.put(_WAKE)  # SimpleQueue.put is reentrant: a signal handler may call it

    def stop_on_signals(self, *signums: signal.Signals) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        for signum in signums:
            signal.signal(signum, handler)

    def run(self, show: Callable[[MessageSummary], object]) -> None:
        """Hand each message to `show` once, as it lands, in the order of each file, until `stop`."""
        handler = _ChangedFiles(self._changed)
        self.observer = self._start_observer(handler, self.observer)
        log.info("watching %s%s", self.tail.root, f" (only {self.only})" if self.only else "")
        next_sweep = 0.0
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= next_sweep:
                    items = self._sweep(handler)
                    next_sweep = now + self.sweep_interval
                else:
                    try:
                        name = self._changed.get(timeout=next_sweep - now)
                    except queue.Empty:
                        continue
                    if name == _WAKE:
                        continue
                    self._announced.add(name)
                    items = list(poll(self.tail, self.only, name))
                for summary in summaries(items):
                    show(summary)
                    if time.monotonic() >= next_sweep:  # a long batch: still alive, says the health check
                        self._ready()
                if items and self.state_file is not None:
                    save_positions(self.state_file, self.tail.positions())
        finally:
            self.observer.stop()
            if self.ready_file is not None:
                self.ready_file.unlink(missing_ok=True)

    def _sweep(self, handler: FileSystemEventHandler) -> list[Item]:
        """Read every file; switch to polling once sweeps keep finding what no event announced."""
        while not self._changed.empty():
            self._announced.add(self._changed.get_nowait())
        items = list(poll(self.tail, self.only))
        unannounced = {name for name, item in items if isinstance(item, Record)} - self._announced
        self._missed_sweeps = self._missed_sweeps + 1 if unannounced else 0
        if self._missed_sweeps >= MISSED_EVENTS_BEFORE_POLLING and not isinstance(self.observer, PollingObserver):
            log.warning("file events from %s are not arriving; polling instead", type(self.observer).__name__)
            self.observer.stop()
            self.observer = self._start_observer(handler, PollingObserver())
        self._announced.clear()
        self._ready()
        return items

    def _ready(self) -> None:
        if self.ready_file is not None:
            self.ready_file.touch()

    def _start_observer(self, handler: FileSystemEventHandler, observer: BaseObserver) -> BaseObserver:
        root = str(self.tail.root)
        try:
            observer.schedule(handler, root, recursive=False)
            observer.start()
        except OSError as exc:
            log.warning("file events from %s are unavailable (%s); polling instead", type(observer).__name__, exc)
            observer = PollingObserver()
            observer.schedule(handler, root, recursive=False)
            observer.start()
        log.info("file events from %s", type(observer).__name__)
        return observer
