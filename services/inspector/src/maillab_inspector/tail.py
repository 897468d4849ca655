"""Reading forward files as they grow: the only code that reads them.

For each domain file the tail remembers how far it has read and the bytes of a record not
yet complete. Each poll reads only what was appended since, under a shared flock (the
server appends under an exclusive one), in bounded chunks, so the cost of a record does
not depend on the size of the file and memory stays bounded by the largest record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from maillab_common.forward import Damaged, Record, parse_records

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


@dataclass
class _Progress:
    inode: int
    read_to: int  # bytes of the file read so far, `pending` included
    pending: bytes = b""

    @property
    def pending_start(self) -> int:
        return self.read_to - len(self.pending)


class ForwardTail:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, _Progress] = {}

    def skip_existing(self) -> None:
        """Start every file that exists now at its end: only new messages will be read."""
        for name, path in self._domain_files():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                with _shared_lock(fd):  # not in the middle of an append
                    status = os.fstat(fd)
            finally:
                os.close(fd)
            self._files[name] = _Progress(inode=status.st_ino, read_to=status.st_size)

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
        for name, _ in self._domain_files():
            yield from self.poll(name)

    def poll(self, name: str) -> Iterator[tuple[str, Record | Damaged]]:
        """The records appended to `name` since the last poll."""
        try:
            fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.root / name, exc)
            return
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                return
            with _shared_lock(fd):
                progress = self._progress_for(name, fd, status.st_ino)
            yield from ((name, item) for item in self._read_new(fd, progress))
        finally:
            os.close(fd)

    def _progress_for(self, name: str, fd: int, inode: int) -> _Progress:
        progress = self._files.get(name)
        size = os.fstat(fd).st_size
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
    def _read_new(fd: int, progress: _Progress) -> Iterator[Record | Damaged]:
        # The lock is held for one chunk at a time, never while the caller prints.
        try:
            while chunk := _read_chunk(fd, progress.read_to):
                items, progress.pending = parse_records(progress.pending + chunk, progress.pending_start)
                progress.read_to += len(chunk)
                yield from items
        finally:
            # An incomplete record at the end is read again next time rather than kept: the server
            # may cut it off (a torn tail, at its restart) and append a new record in its place.
            progress.read_to, progress.pending = progress.pending_start, b""

    def _domain_files(self) -> list[tuple[str, Path]]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda entry: entry.name)
        except FileNotFoundError:
            return []
        return [
            (entry.name, Path(entry.path))
            for entry in entries
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".")
        ]


def _read_chunk(fd: int, offset: int) -> bytes:
    with _shared_lock(fd):
        return os.pread(fd, READ_CHUNK, offset)


@contextmanager
def _shared_lock(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
