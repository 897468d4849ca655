"""The forward store: the only code that writes forward files.

A delivery is all or nothing. The record is appended to every domain's file under an
exclusive flock (readers take a shared one), every file is fsynced, and so is the folder
when a file was created; only then is the future `submit` returned done and does the handler
answer 250. On any failure each file is cut back to the size it had, so nothing
half-written is left. `submit` is the one way in: the server and the tests both write
through it (tests/store_helpers.py waits for its future).

XMAILLAB-ONCE's lookup (once.py) runs here, on the commit thread, before each round's
append; a copy it finds is fsynced before the retry is told so.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path

from maillab_common.forward import Delivery, parse_records
from maillab_server.errors import StorageError, StorageFull
from maillab_server.once import CopyIndex, Key, Wanted, record_key, wanted
from maillab_server.spool import Spool

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_READ_CHUNK = 1024 * 1024
_COPY_CHUNK = 1024 * 1024  # a spooled body goes into a record this much at a time


# How far back from the end of a forward file XMAILLAB-ONCE looks for an earlier copy:
# a retry comes seconds after the attempt it repeats, so its copy is among the last records.
RECENT_WINDOW = 64 * 1024 * 1024

Part = bytes | Spool  # a body too large to hold is a spool, copied in a chunk at a time
Parts = Mapping[str, Sequence[Part]]  # domain -> its record in parts: trace, body, end
Waiting = tuple[Parts, Mapping[str, Delivery] | None, Future[tuple[str, ...]]]


class ForwardStore:
    def __init__(self, root: Path, recent_window: int = RECENT_WINDOW) -> None:
        self.root = root
        self.recent_window = recent_window
        self._waiting: list[Waiting] = []
        self._wake = threading.Condition()
        self._committer: threading.Thread | None = None
        self._copies = CopyIndex()  # the XMAILLAB-ONCE lookup, and its index of each file's recent records
        # domain -> (device, inode, size): the file is on disk up to that size, fsynced by this process.
        self._durable: dict[str, tuple[int, int, int]] = {}

    def submit(self, records: Parts, once: Mapping[str, Delivery] | None = None) -> Future[tuple[str, ...]]:
        """Append each domain's record, durably, or none of them: by group commit, with what waits alongside.

        Each domain's record comes in parts (trace, body, end), so that one body can serve
        every domain of a message without being copied.

        With `once` (each domain's delivery, for XMAILLAB-ONCE), a domain whose file already
        holds the same delivery among its recent records is left out. The future's result
        names those domains.

        One thread takes every delivery waiting when it comes round and writes them all with
        one fsync per file. The future is done once this delivery is durable, or failed with
        its StorageError; a failed group is undone and tried again one delivery at a time, so
        a delivery fails only for its own reasons.
        """
        future: Future[tuple[str, ...]] = Future()
        with self._wake:
            self._waiting.append((records, once, future))
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_forever, name="group-commit", daemon=True)
                self._committer.start()
            self._wake.notify()
        return future

    def _commit_forever(self) -> None:
        while True:
            with self._wake:
                while not self._waiting:
                    self._wake.wait()
                waiting, self._waiting = self._waiting, []
            # A delivery whose client went away before it was written is dropped; one that is
            # written can no longer be cancelled, so it always gets its result.
            group = [item for item in waiting if item[2].set_running_or_notify_cancel()]
            try:
                rounds = _rounds(group)
            except Exception:  # a bug: one delivery at a time is always right
                log.exception("grouping deliveries failed")
                rounds = [[item] for item in group]
            for deliveries in rounds:
                try:
                    self._commit(deliveries)
                except Exception as exc:  # the thread must live on: every later delivery needs it
                    log.exception("group commit failed")
                    for _, _, future in deliveries:
                        if not future.done():
                            future.set_exception(StorageError(f"internal error: {exc!r}"))

    def _commit(self, group: list[Waiting]) -> None:
        """Look up every XMAILLAB-ONCE delivery of the round, then append what is left with one fsync per file.

        A lookup that fails fails only its own delivery. A failed append is undone and tried
        again one delivery at a time, so a delivery fails only for its own reasons.
        """
        ready: list[tuple[Parts, Future[tuple[str, ...]], tuple[str, ...]]] = []
        for records, once, future in group:
            try:
                stored = tuple(
                    sorted(
                        domain
                        for domain, delivery in (once or {}).items()
                        if self._holds(domain, wanted(delivery, records[domain]))
                    )
                )
            except StorageError as exc:
                future.set_exception(exc)
                continue
            except Exception as exc:  # a bug in one lookup fails its delivery, not the round
                log.exception("XMAILLAB-ONCE lookup failed")
                future.set_exception(StorageError(f"internal error: {exc!r}"))
                continue
            ready.append(({domain: parts for domain, parts in records.items() if domain not in stored}, future, stored))
        if len(ready) > 1:
            merged: dict[str, list[Part]] = {}
            for records, _, _ in ready:
                for domain, parts in records.items():
                    merged.setdefault(domain, []).extend(parts)
            try:
                self._append(merged)
            except StorageError:
                pass  # undone: now one by one
            else:
                for _, future, stored in ready:
                    future.set_result(stored)
                return
        for records, future, stored in ready:
            try:
                self._append(records)
            except StorageError as exc:
                future.set_exception(exc)
            else:
                future.set_result(stored)

    def _holds(self, domain: str, delivery: Delivery | Wanted) -> bool:
        """Whether the domain's file holds the same delivery among its last `recent_window` bytes.

        A copy found is fsynced before this says yes: the process that wrote it may have died
        between its write and its fsync, and the retry's 250 must mean "on disk" all the same.
        """
        try:
            fd = os.open(self.root / domain, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(str(exc)) from exc
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise StorageError(f"{self.root / domain} is not a regular file")
            floor = max(0, status.st_size - self.recent_window)
            looked_for = delivery if isinstance(delivery, Wanted) else Wanted.of(delivery)  # Wanted: a spooled body
            if not self._copies.find(domain, fd, status, floor, looked_for):
                return False
            # A file this process has fsynced whole (and its folder entry) needs no fsync again:
            # a retry flood of copies found must not cost everyone a file and a folder fsync each.
            known = self._durable.get(domain)
            if known is None or known[:2] != _extent(status)[:2] or known[2] < status.st_size:
                os.fsync(fd)
                _fsync_dir(self.root)
                self._durable[domain] = _extent(status)
            return True
        except OSError as exc:
            raise StorageError(str(exc)) from exc
        finally:
            os.close(fd)

    def check_writable(self) -> None:
        """Raise StorageError unless new forward files can be created in the folder."""
        if not self.root.is_dir():
            raise StorageError(f"the forward folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"the forward folder {self.root} is not writable by uid {os.getuid()}")

    def _append(self, records: Mapping[str, Sequence[Part]]) -> None:
        domains = sorted(records)  # one lock order for everyone: no deadlock
        opened: list[int] = []
        sizes_before: list[int] = []
        try:
            created = False
            for domain in domains:
                fd, was_created = self._open_for_append(domain)
                opened.append(fd)
                created |= was_created
                fcntl.flock(fd, fcntl.LOCK_EX)
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    raise StorageError(f"{self.root / domain} is not a regular file")
                sizes_before.append(status.st_size)
            for fd, domain in zip(opened, domains, strict=True):
                _write_all(fd, records[domain])
            for fd in opened:
                os.fsync(fd)
            if created:
                _fsync_dir(self.root)
            for fd, domain in zip(opened, domains, strict=True):
                self._durable[domain] = _extent(os.fstat(fd))
        except OSError as exc:
            for domain in domains:
                self._durable.pop(domain, None)
            self._cut_back(opened, sizes_before)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(exc)) from exc
            raise StorageError(str(exc)) from exc
        except StorageError:
            for domain in domains:
                self._durable.pop(domain, None)
            self._cut_back(opened, sizes_before)
            raise
        finally:
            for fd in opened:
                os.close(fd)  # closing also releases the flock

    def repair(self) -> dict[str, int]:
        """Cut off the torn last record a crash may have left; returns bytes cut per file."""
        cut: dict[str, int] = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                complete, tail_is_record = _complete_length(fd)
                if tail_is_record and complete < size:
                    os.ftruncate(fd, complete)
                    os.fsync(fd)
                    cut[entry.name] = size - complete
                    log.warning(
                        "repaired %s: cut a torn record of %d bytes at offset %d", entry.path, size - complete, complete
                    )
            finally:
                os.close(fd)
        # A file created by a process that died before fsyncing the folder: its entry made durable
        # now, so that whatever this process finds or appends there later is durable with it.
        _fsync_dir(self.root)
        return cut

    def _open_for_append(self, domain: str) -> tuple[int, bool]:
        path = self.root / domain
        while True:
            try:
                return os.open(path, _WRITE_FLAGS), False
            except FileNotFoundError:
                pass
            try:
                return os.open(path, _WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                continue  # another delivery created it first

    @staticmethod
    def _cut_back(opened: list[int], sizes_before: list[int]) -> None:
        for fd, size in zip(opened, sizes_before, strict=False):
            try:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
            except OSError:
                log.exception("could not cut a forward file back to %d bytes", size)


def _rounds(group: list[Waiting]) -> list[list[Waiting]]:
    """The group in rounds, each looked up and then appended together, in the order they came.

    An XMAILLAB-ONCE delivery looks only at what was written before its round: one whose
    record may be the copy of an earlier delivery's in the same group (the same domain and
    key) goes into a later round, so that it sees that one stored, as it would one at a time.
    """
    rounds: list[list[Waiting]] = []
    written: set[tuple[str, Key | None]] = set()  # (domain, key) of the current round's records
    for item in group:
        records, once, _ = item
        keys = {domain: record_key(parts) for domain, parts in records.items()}  # from each trace: no body read
        conflict = any(
            keys.get(domain) is None or {(domain, keys[domain]), (domain, None)} & written for domain in once or {}
        )
        if not rounds or conflict:
            rounds.append([])
            written = set()
        rounds[-1].append(item)
        written |= set(keys.items())
    return rounds


def _write_all(fd: int, parts: Sequence[Part]) -> None:
    """Write every part, in order: bytes with as few system calls as the kernel allows (writev), spools copied."""
    pending: list[bytes] = []
    for part in parts:
        if isinstance(part, Spool):
            _writev_all(fd, pending)
            pending = []
            _copy_spool(fd, part)
        else:
            pending.append(part)
    _writev_all(fd, pending)


def _writev_all(fd: int, parts: Sequence[bytes]) -> None:
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _copy_spool(fd: int, spool: Spool) -> None:
    """Copy the spooled body through one buffer: copy_file_range and sendfile refuse an O_APPEND file."""
    spool.check()
    buffer = bytearray(min(_COPY_CHUNK, spool.length))
    offset = 0
    while offset < spool.length:
        read = os.preadv(spool.fd, [buffer], offset)
        if read == 0:
            raise StorageError(f"the spooled message ends at {offset} of its {spool.length} bytes")
        view = memoryview(buffer)[:read]
        while view:
            view = view[os.write(fd, view) :]
        offset += read


def _extent(status: os.stat_result) -> tuple[int, int, int]:
    """A file's identity and size: what `_durable` keeps of a file known to be on disk up to that size."""
    return status.st_dev, status.st_ino, status.st_size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete_length(fd: int) -> tuple[int, bool]:
    """Where the last complete record ends, and whether what follows starts like a record."""
    start = 0  # the file offset of `pending`
    pending = b""
    while chunk := os.read(fd, _READ_CHUNK):
        pending += chunk
        _, rest = parse_records(pending, start)
        start += len(pending) - len(rest)
        pending = rest
    starts_like_a_record = pending.startswith(b"From ") or (pending and b"From ".startswith(pending))
    return start, bool(starts_like_a_record)
