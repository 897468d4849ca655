"""Filling the catalogue from the forward files: the backlog first, in bulk, then each record as it lands.

The catalogue (catalogue.py) is fed by a tail of its own, whose positions it keeps in its
own database, committed with the rows they cover: a kill -9 between two commits loses
nothing and catalogues nothing twice. `catch_up` reads the backlog (everything after the
saved positions, every file from its start for a new catalogue) in batches, taking records
apart in a pool of processes when there are enough of them to pay for it. `CatalogueFeed`
then follows the folder through a `Watcher` (watcher.py), as `watch` does: it is both that
watcher's output and its position store, so that each batch of entries is written with the
positions it reaches in one transaction. A batch is written as soon as no record waits
behind it, and at the latest after BATCH_RECORDS records or BATCH_SECONDS: one message alone
is catalogued at once, a burst in few transactions.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import suppress
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import BinaryIO

from maillab_common.forward import Damaged, Record
from maillab_inspector.catalogue import Catalogue, Commits, Entry, SchemaMismatch
from maillab_inspector.logs import log_visibly
from maillab_inspector.model import catalogue_entry
from maillab_inspector.tail import ForwardTail
from maillab_inspector.watcher import Watcher

log = logging.getLogger(__name__)

BATCH_RECORDS = 500  # the most entries written in one transaction
BATCH_SECONDS = 0.05  # and the longest the first of them waits for the others
# Below this many bytes of backlog, the records are taken apart in this process: starting
# the pool's interpreters costs more than it saves.
POOL_FROM_BYTES = 8 * 1024 * 1024
POOL_BATCH = 256  # records a worker takes apart at a time
POOL_WORKERS = 2
# Forward files read side by side by the backlog, so that it catalogues their records in the
# order received (a group of files after another beyond that: file descriptors), and the bytes
# their chunks hold together (each at least tail.MIN_MERGED_CHUNK).
MERGED_FILES = 256
MERGED_BYTES = 16 * 1024 * 1024

Progress = Callable[[int, int], object]  # (bytes done, bytes in all)
Positions = dict[str, tuple[int, int]]


def open_catalogue(path: Path) -> tuple[Catalogue, bool]:
    """The catalogue at `path`, and whether it is new (to be filled from the start of every file).

    One of another schema version, or a file that is not a catalogue, is deleted and made
    anew: the forward files are the source of truth, and it is rebuilt from them.
    """
    existed = path.exists()
    try:
        return Catalogue(path), not existed
    except SchemaMismatch as exc:
        log.warning("rebuilding the catalogue %s from the forward files: %s", path, exc)
    remove_catalogue(path)
    return Catalogue(path), True


def remove_catalogue(path: Path) -> None:
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)


def backlog_bytes(tail: ForwardTail) -> int:
    """How many bytes of the forward files the tail has not read yet."""
    positions = tail.positions()
    total = 0
    for entry in os.scandir(tail.root):
        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        status = entry.stat(follow_symlinks=False)
        inode, offset = positions.get(entry.name, (status.st_ino, 0))
        total += status.st_size - (offset if inode == status.st_ino and offset <= status.st_size else 0)
    return total


def catch_up(
    catalogue: Catalogue,
    tail: ForwardTail,
    progress: Progress = lambda done, total: None,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Catalogue every record after the tail's positions up to the end of the files as they are
    now, or until `stopping()`; the number of messages catalogued."""
    total = backlog_bytes(tail)
    progress(0, total)
    batches = _batches(tail.poll_all_as_received(MERGED_FILES, MERGED_BYTES), tail, stopping)
    if total >= POOL_FROM_BYTES and POOL_WORKERS > 1:
        entries_of = _in_pool(batches)
    else:
        entries_of = ((positions, done, _entries(records)) for positions, done, records in batches)
    catalogued = done_bytes = 0
    for positions, done, entries in entries_of:
        catalogue.ingest(entries, positions)
        catalogued += len(entries)
        done_bytes += done
        progress(done_bytes, max(total, done_bytes))
    return catalogued


Pending = tuple[str, int, Record]  # a forward file's name, its inode, and a record read from it


def _batches(
    items: Iterable[tuple[str, Record | Damaged]], tail: ForwardTail, stopping: Callable[[], bool]
) -> Iterator[tuple[Positions, int, list[Pending]]]:
    """The records in batches of POOL_BATCH, each with the positions it reaches and the bytes it covers."""
    positions: Positions = {}
    records: list[Pending] = []
    covered = 0
    for name, item in items:
        if stopping():
            return
        inode = tail.inode(name)
        positions[name] = (inode, item.offset + item.length)
        covered += item.length
        if isinstance(item, Damaged):
            log.warning("%s: %d damaged bytes at offset %d: %s", name, item.length, item.offset, item.reason)
        else:
            records.append((name, inode, item))
        if len(records) >= POOL_BATCH:
            yield positions, covered, records
            positions, records, covered = {}, [], 0
    if positions:
        yield positions, covered, records


def entry_of(name: str, record: Record, inode: int) -> Entry | None:
    """The record's catalogue entry; None (logged) should taking it apart raise, which it is meant
    never to do: one message must not stop the catalogue."""
    try:
        return catalogue_entry(name, record, inode)
    except Exception:
        log.exception("%s: the message at offset %d cannot be catalogued", name, record.offset)
        return None


def _entries(records: list[Pending]) -> list[Entry]:
    return [entry for name, inode, record in records if (entry := entry_of(name, record, inode)) is not None]


def _in_pool(
    batches: Iterator[tuple[Positions, int, list[Pending]]],
) -> Iterator[tuple[Positions, int, list[Entry]]]:
    """The batches' entries, taken apart in worker processes, in order, with few batches in flight
    (the backlog stays in its files). Spawned, not forked: the process that asks has threads."""
    context = multiprocessing.get_context("spawn")
    in_flight: deque[tuple[Positions, int, Future[list[Entry]]]] = deque()
    with ProcessPoolExecutor(POOL_WORKERS, mp_context=context) as pool:
        for positions, covered, records in batches:
            in_flight.append((positions, covered, pool.submit(_entries, records)))
            if len(in_flight) >= 2 * POOL_WORKERS:
                positions, covered, future = in_flight.popleft()
                yield positions, covered, future.result()
        while in_flight:
            positions, covered, future = in_flight.popleft()
            yield positions, covered, future.result()


class CatalogueFeed:
    """The catalogue's side of a `Watcher`: its output (each record made an entry) and its
    position store (the entries written with the positions they reach, in one transaction).

    `waiting` says how many records the watcher holds behind the last one handed on.
    """

    def __init__(self, catalogue: Catalogue, waiting: Callable[[], int] = lambda: 0) -> None:
        self.catalogue, self.waiting = catalogue, waiting
        self._pending: list[Entry] = []
        self._first_at = 0.0

    def message(self, name: str, record: Record, waited: float) -> None:
        if not self._pending:
            self._first_at = time.monotonic()
        entry = entry_of(name, record, 0)  # its inode comes with the positions
        if entry is not None:
            self._pending.append(entry)

    def tick(self, now: float) -> None:
        pass

    def finish(self) -> None:
        pass

    @property
    def settled(self) -> bool:
        """Whether the pending entries are to be written now: none wait behind them, or the batch is full or old."""
        return (
            not self._pending
            or not self.waiting()
            or len(self._pending) >= BATCH_RECORDS
            or time.monotonic() - self._first_at >= BATCH_SECONDS
        )

    def advance(self, positions: Mapping[str, tuple[int, int]]) -> None:
        """Write the pending entries and `positions` in one transaction."""
        entries = [replace(entry, inode=positions[entry.domain][0]) for entry in self._pending]
        self.catalogue.ingest(entries, positions)
        self._pending.clear()


class CatalogueInUse(Exception):
    """Another process (`serve`, `reindex`) has the catalogue open for writing."""


def serving_lock(path: Path) -> LockFile:
    """Hold the catalogue at `path` for this process alone, until the lock is closed; raises
    CatalogueInUse when another has it, OSError when the lock cannot be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 (held open until the caller closes it)
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise CatalogueInUse(
            f"the catalogue {path} is in use by a running inspector (serve or reindex): stop it first "
            "(docker compose stop inspector), or delete the catalogue and restart it, which rebuilds it"
        ) from None
    return lock


LockFile = BinaryIO

WRITER_WAIT = 60.0  # seconds to wait for a writer of an earlier `serve` (killed) to finish its batch


def writer_lock(path: Path, timeout: float = WRITER_WAIT) -> LockFile:
    """Hold the right to write the catalogue at `path`, waiting up to `timeout` s for whoever has it.

    `serving_lock` keeps a second `serve` or `reindex` out, but a catalogue process outlives a
    `serve` killed with -9 by its last batch: this lock, held by whoever writes (the catalogue
    process, `reindex`), keeps the next one from writing beside it. CatalogueInUse on the timeout.
    """
    lock = open(path.with_name(path.name + ".writer.lock"), "a+b")  # noqa: SIM115 (held open until closed)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                raise CatalogueInUse(
                    f"the catalogue {path} is still written by another process after {timeout:.0f} s "
                    "(the catalogue process of an inspector that was killed?)"
                ) from None
            time.sleep(0.05)


class Feeding:
    """The catalogue's thread: the backlog first (`catch_up`), then each record as it lands,
    through a `Watcher` and a `CatalogueFeed`, until `stop`."""

    PROGRESS_EVERY = 5.0  # seconds between two log lines while the backlog is read

    def __init__(self, catalogue: Catalogue, root: Path, sweep_interval: float) -> None:
        self.catalogue = catalogue
        self.tail = ForwardTail(root)
        self.tail.restore(catalogue.positions())
        feed = CatalogueFeed(catalogue)
        self.watcher = Watcher(self.tail, sweep_interval=sweep_interval, positions=feed)
        feed.waiting = lambda: len(self.watcher.window)
        self.feed = feed
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged_at = 0.0

    def start(self, on_failure: Callable[[], object]) -> None:
        def run() -> None:
            try:
                self._catch_up()
                if not self._stopping.is_set():
                    self.watcher.run(self.feed)
            except BaseException as exc:  # the process stops: told to the caller through `failure`
                log.exception("cataloguing stopped")
                self.failure = exc
                on_failure()

        self._thread = threading.Thread(target=run, name="catalogue-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.watcher.stop()
        if self._thread is not None:
            self._thread.join()

    def _catch_up(self) -> None:
        started = time.monotonic()
        count = catch_up(self.catalogue, self.tail, self._log_progress, self._stopping.is_set)
        if count:
            log.info("catalogued %d messages from the forward files in %.1fs", count, time.monotonic() - started)

    def _log_progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total and now - self._logged_at >= self.PROGRESS_EVERY:
            self._logged_at = now
            log.info("cataloguing the forward files: %.1f of %.1f MiB", done / 2**20, total / 2**20)


class PipedCommits(Commits):
    """The commits of a catalogue written in another process: each published seq is also sent to
    the process that serves the catalogue (FeedingProcess), whose waits and streams it wakes."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection

    def publish(self, seq: int) -> None:
        super().publish(seq)
        self.connection.send(seq)


def catalogue_process(path: Path, root: Path, sweep_interval: float, connection: Connection) -> None:
    """What `serve`'s catalogue process runs (FeedingProcess): `feed_until_told`, logging as `serve` does.

    It is the edge of its own process: a Ctrl-C in a terminal, or a SIGTERM to the process group,
    reaches it and its pool's workers (who inherit the ignoring) too, and would end them midway;
    `serve` stops it through the pipe instead.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_visibly()
    try:
        lock = writer_lock(path)
    except (CatalogueInUse, OSError) as exc:
        log.error("cannot write the catalogue: %s", exc)
        sys.exit(1)
    with lock:
        sys.exit(feed_until_told(path, root, sweep_interval, connection))


def feed_until_told(path: Path, root: Path, sweep_interval: float, connection: Connection) -> int:
    """The catalogue process's work: `Feeding` on the catalogue at `path` until the serving process says
    stop or goes away (its end of `connection` closes); the exit code, 1 when cataloguing failed."""
    catalogue = Catalogue(path, PipedCommits(connection))
    feeding = Feeding(catalogue, root, sweep_interval)
    done = threading.Event()

    def listen() -> None:
        with suppress(EOFError, OSError):
            connection.recv()  # "stop", or EOFError: the serving process is gone
        done.set()

    threading.Thread(target=listen, name="catalogue-control", daemon=True).start()
    feeding.start(on_failure=done.set)
    done.wait()
    feeding.stop()
    catalogue.close()
    return 1 if feeding.failure is not None else 0


class FeedingProcess:
    """`Feeding` in a process of its own, as `serve` runs it: the catalogue's tail, parsing and
    writes get an interpreter of their own, rather than one lock (the GIL) shared with the printer
    and the HTTP side. Each of its commits comes back through a pipe and is published to the
    serving process's catalogue, whose waits and event streams it wakes.
    """

    def __init__(self, catalogue: Catalogue, root: Path, sweep_interval: float) -> None:
        self.catalogue, self.root, self.sweep_interval = catalogue, root, sweep_interval
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self, on_failure: Callable[[], object]) -> None:
        context = multiprocessing.get_context("spawn")  # this process has threads: no fork
        ours, theirs = context.Pipe()
        arguments = (self.catalogue.path, self.root, self.sweep_interval, theirs)
        # Not a daemon: a daemon may not start the pool that a large backlog is read with. `stop`
        # ends it, and so does this process's end (the pipe closes).
        process = context.Process(target=catalogue_process, args=arguments, name="maillab-catalogue")
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._process, self._connection = process, ours

        def relay() -> None:
            connection, process = self._connection, self._process
            assert connection is not None and process is not None
            try:
                while True:
                    self.catalogue.commits.publish(int(connection.recv()))
            except (EOFError, OSError):
                pass
            except BaseException:  # anything else: no one would read the pipe, and the process would block
                log.exception("relaying the catalogue's commits failed")
            if not self._stopping.is_set():
                process.join(timeout=5)
                self.failure = RuntimeError(f"the catalogue process ended (exit code {process.exitcode})")
                log.error("cataloguing stopped: %s", self.failure)
                on_failure()

        self._thread = threading.Thread(target=relay, name="catalogue-commits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._connection is not None:
            with suppress(OSError):
                self._connection.send("stop")
        if self._process is not None:
            self._process.join(timeout=30)
            if self._process.is_alive():
                log.warning("the catalogue process did not stop within 30 s: killed")
                self._process.kill()
                self._process.join()
            if self._process.exitcode and self.failure is None:
                self.failure = RuntimeError(f"the catalogue process ended (exit code {self._process.exitcode})")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._connection is not None:
            self._connection.close()
