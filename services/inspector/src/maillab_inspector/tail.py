"""Reading forward files as they grow: the inspector's only reader of them.

Every command (`watch`, `list`, `show`, `verify`) reads the forward folder through a
`ForwardTail` and nothing else; the watcher's file events only say which file to read.

For each domain file the tail remembers how far it has read and the bytes of a record not
yet complete. Each poll reads only what was appended since, under a shared flock (the
server appends under an exclusive one), in bounded chunks, so the cost of a record does
not depend on the size of the file and memory stays bounded by the largest record.

A sweep of the whole folder (`poll_all`) opens only the files that changed since it last
read them: it remembers each file's inode, size and modification time as of that read, and
one `stat` per file (from the directory listing) tells it whether anything changed. An idle
sweep over 20,000 files costs a directory listing and 20,000 `lstat`s, not 20,000 opens,
locks and reads.
"""

from __future__ import annotations

import fcntl
import heapq
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from maillab_common.forward import Damaged, Record, parse_records

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
MIN_MERGED_CHUNK = 64 * 1024  # the least a file read beside others reads at a time (poll_all_as_received)


Stamp = tuple[int, int, int, int]  # inode, size, mtime and ctime (ns): what a change changes


def _stamp(status: os.stat_result) -> Stamp:
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


@dataclass
class _Progress:
    inode: int
    read_to: int  # bytes of the file read so far, `pending` included
    pending: bytes = b""
    # The file as it was when last read to its end, taken before reading (so a write during
    # the read changes it); None when it must be opened at the next sweep.
    read_at: Stamp | None = None

    @property
    def pending_start(self) -> int:
        return self.read_to - len(self.pending)


class ForwardTail:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, _Progress] = {}

    def skip_existing(self) -> None:
        """Start every file that exists now at its end: only new messages will be read."""
        for name in self._domain_files():
            try:
                fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                with _shared_lock(fd):  # not in the middle of an append
                    status = os.fstat(fd)
            finally:
                os.close(fd)
            self._files[name] = _Progress(inode=status.st_ino, read_to=status.st_size, read_at=_stamp(status))

    def inode(self, name: str) -> int:
        """The inode of the file `name` as last read: what a record just read from it belongs to."""
        return self._files[name].inode

    def positions(self) -> dict[str, tuple[int, int]]:
        """For each file: its inode and the offset up to which every record has been read."""
        return {name: (progress.inode, progress.pending_start) for name, progress in self._files.items()}

    def restore(self, positions: dict[str, tuple[int, int]]) -> None:
        """Go on from saved positions; a file replaced or cut short since is read again."""
        for name, (inode, offset) in positions.items():
            self._files[name] = _Progress(inode=inode, read_to=offset)

    def unfinished(self) -> dict[str, int]:
        """For each file read: how many bytes at its end are not yet a whole record."""
        found = {}
        for name, progress in self._files.items():
            try:
                size = os.stat(self.root / name, follow_symlinks=False).st_size
            except OSError:
                continue
            if size > progress.read_to:
                found[name] = size - progress.read_to
        return found

    def poll_all(self) -> Iterator[tuple[str, Record | Damaged]]:
        """The records appended to any file since it was last read; unchanged files are not opened."""
        for name in sorted(self._changed_files()):
            yield from self.poll(name)

    def poll_all_as_received(self, merged_files: int, held_bytes: int) -> Iterator[tuple[str, Record | Damaged]]:
        """As `poll_all`, with the records of up to `merged_files` files at a time merged in the order
        they were received (each file's own are in that order already). Each merged file holds an
        open file and a chunk read from it: `held_bytes` shared among them, at least MIN_MERGED_CHUNK
        each. Damaged bytes come where they lie in their file."""
        names = sorted(self._changed_files())
        group = max(1, merged_files)
        for start in range(0, len(names), group):
            together = names[start : start + group]
            chunk = min(READ_CHUNK, max(MIN_MERGED_CHUNK, held_bytes // len(together)))
            streams = [_received_keyed(self.poll(name, chunk)) for name in together]
            for _, name, item in heapq.merge(*streams, key=itemgetter(0)):
                yield name, item

    def poll(self, name: str, chunk: int = READ_CHUNK) -> Iterator[tuple[str, Record | Damaged]]:
        """The records appended to `name` since the last poll, read `chunk` bytes at a time."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.root / name, exc)
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            with _shared_lock(fd):
                status = os.fstat(fd)  # no append is under way: the size is a record boundary
                progress = self._progress_for(name, status.st_ino, status.st_size)
            progress.read_at = None  # until this read has reached the end of the file
            yield from ((name, item) for item in self._read_new(fd, progress, chunk))
            progress.read_at = _stamp(status)
        finally:
            os.close(fd)

    def _progress_for(self, name: str, inode: int, size: int) -> _Progress:
        progress = self._files.get(name)
        if progress is None:
            progress = self._files[name] = _Progress(inode=inode, read_to=0)
        elif progress.inode != inode:
            log.warning("%s was replaced; reading it from the start", self.root / name)
            progress = self._files[name] = _Progress(inode=inode, read_to=0)
        elif size < progress.read_to:
            log.warning(
                "%s shrank from %d to %d bytes; reading it from the start", self.root / name, progress.read_to, size
            )
            progress = self._files[name] = _Progress(inode=inode, read_to=0)
        return progress

    @staticmethod
    def _read_new(fd: int, progress: _Progress, size: int) -> Iterator[Record | Damaged]:
        # The lock is held for one chunk at a time, never while the caller prints.
        try:
            while chunk := _read_chunk(fd, progress.read_to, size):
                items, progress.pending = parse_records(progress.pending + chunk, progress.pending_start)
                progress.read_to += len(chunk)
                yield from items
        finally:
            # An incomplete record at the end is read again next time rather than kept: the server
            # may cut it off (a torn tail, at its restart) and append a new record in its place.
            progress.read_to, progress.pending = progress.pending_start, b""

    def _domain_files(self) -> list[str]:
        """The name of each regular file in the folder (no dot files), from the listing alone."""
        try:
            with os.scandir(self.root) as entries:
                return sorted(
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
                )
        except FileNotFoundError:
            return []

    def _changed_files(self) -> list[str]:
        """The files new since the last read, or changed since (one lstat each of those already read)."""
        changed = []
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    progress = self._files.get(entry.name)
                    if progress is not None and progress.read_at is not None:
                        try:
                            if _stamp(entry.stat(follow_symlinks=False)) == progress.read_at:
                                continue
                        except FileNotFoundError:  # removed since the listing
                            continue
                    changed.append(entry.name)
        except FileNotFoundError:
            return []
        return changed


def _received_keyed(items: Iterator[tuple[str, Record | Damaged]]) -> Iterator[tuple[float, str, Record | Damaged]]:
    """Each item with the time its record was received; damaged bytes with the time of the record before them."""
    received = 0.0
    for name, item in items:
        if isinstance(item, Record):
            received = item.delivery.received_at.timestamp()
        yield received, name, item


def _read_chunk(fd: int, offset: int, size: int) -> bytes:
    with _shared_lock(fd):
        return os.pread(fd, size, offset)


@contextmanager
def _shared_lock(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
