"""The forward store: the only code that writes forward files.

A delivery is all or nothing. The record is appended to every domain's file under an
exclusive flock (readers take a shared one), every file is fsynced, and so is the folder
when a file was created; only then does `deliver` return and the handler answer 250. On
any failure each file is cut back to the size it had, so nothing half-written is left.
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

from maillab_common.forward import parse_records
from maillab_server.errors import StorageError, StorageFull

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_READ_CHUNK = 1024 * 1024


class ForwardStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._waiting: list[tuple[Mapping[str, Sequence[bytes]], Future[None]]] = []
        self._wake = threading.Condition()
        self._committer: threading.Thread | None = None

    def submit(self, records: Mapping[str, Sequence[bytes]]) -> Future[None]:
        """`deliver`, by group commit: what waits at the same moment goes to disk together.

        Each domain's record comes in parts (trace, body, end), so that one body can serve
        every domain of a message without being copied.

        One thread takes every delivery waiting when it comes round and writes them all with
        one fsync per file. The future is done once this delivery is durable, or failed with
        its StorageError; a failed group is undone and tried again one delivery at a time, so
        a delivery fails only for its own reasons.
        """
        future: Future[None] = Future()
        with self._wake:
            self._waiting.append((records, future))
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
            group = [(records, future) for records, future in waiting if future.set_running_or_notify_cancel()]
            try:
                self._commit(group)
            except Exception as exc:  # the thread must live on: every later delivery needs it
                log.exception("group commit failed")
                for _, future in group:
                    if not future.done():
                        future.set_exception(StorageError(f"internal error: {exc!r}"))

    def _commit(self, group: list[tuple[Mapping[str, Sequence[bytes]], Future[None]]]) -> None:
        if len(group) > 1:
            merged: dict[str, list[bytes]] = {}
            for records, _ in group:
                for domain, parts in records.items():
                    merged.setdefault(domain, []).extend(parts)
            try:
                self._append(merged)
            except StorageError:
                pass  # undone: now one by one
            else:
                for _, future in group:
                    future.set_result(None)
                return
        for records, future in group:
            try:
                self._append(records)
            except StorageError as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)

    def check_writable(self) -> None:
        """Raise StorageError unless new forward files can be created in the folder."""
        if not self.root.is_dir():
            raise StorageError(f"the forward folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"the forward folder {self.root} is not writable by uid {os.getuid()}")

    def deliver(self, records: Mapping[str, bytes]) -> None:
        """Append each domain's record to its forward file, durably, or none of them."""
        self._append({domain: [record] for domain, record in records.items()})

    def _append(self, records: Mapping[str, Sequence[bytes]]) -> None:
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
        except OSError as exc:
            self._cut_back(opened, sizes_before)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(exc)) from exc
            raise StorageError(str(exc)) from exc
        except StorageError:
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


def _write_all(fd: int, parts: Sequence[bytes]) -> None:
    """Write every part, in order, with as few system calls as the kernel allows (writev)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views[:1024])  # IOV_MAX
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


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
