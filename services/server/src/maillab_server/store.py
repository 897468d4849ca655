"""The forward store: the only code that writes forward files.

A delivery is all or nothing. The record is appended to every domain's file under an
exclusive flock (readers take a shared one), every file is fsynced, and so is the folder
when a file was created; only then does `deliver` return and the handler answer 250. On
any failure each file is cut back to the size it had, so nothing half-written is left.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from maillab_common.forward import (
    MAX_TRACE_BYTES,
    RECORD_END,
    Delivery,
    parse_records,
    parse_trace,
    render_body,
    trace_is_cut,
    trace_pattern,
    trace_prefix,
)
from maillab_server.errors import StorageError, StorageFull
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
        self._copies = _CopyFinder()  # the XMAILLAB-ONCE lookup, and the large records it remembers

    def submit(self, records: Parts, once: Mapping[str, Delivery] | None = None) -> Future[tuple[str, ...]]:
        """`deliver`, by group commit: what waits at the same moment goes to disk together.

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
            # A group with an XMAILLAB-ONCE retry (rare) goes one delivery at a time: each lookup
            # sees what the deliveries before it wrote, and a lookup that fails fails only its own.
            rounds = [[item] for item in group] if any(once is not None for _, once, _ in group) else [group]
            for deliveries in rounds:
                try:
                    self._commit(deliveries)
                except Exception as exc:  # the thread must live on: every later delivery needs it
                    log.exception("group commit failed")
                    for _, _, future in deliveries:
                        if not future.done():
                            future.set_exception(StorageError(f"internal error: {exc!r}"))

    def _commit(self, group: list[Waiting]) -> None:
        if len(group) > 1:
            merged: dict[str, list[Part]] = {}
            for records, _, _ in group:
                for domain, parts in records.items():
                    merged.setdefault(domain, []).extend(parts)
            try:
                self._append(merged)
            except StorageError:
                pass  # undone: now one by one
            else:
                for _, _, future in group:
                    future.set_result(())
                return
        for records, once, future in group:
            try:
                stored = tuple(
                    sorted(
                        domain
                        for domain, delivery in (once or {}).items()
                        if self._holds(domain, _wanted(delivery, records[domain]))
                    )
                )
                self._append({domain: parts for domain, parts in records.items() if domain not in stored})
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
            wanted = delivery if isinstance(delivery, Wanted) else Wanted.of(delivery)  # Wanted: a spooled body
            if not self._copies.find(fd, status, floor, wanted):
                return False
            os.fsync(fd)
            _fsync_dir(self.root)
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

    def deliver(self, records: Mapping[str, bytes]) -> None:
        """Append each domain's record to its forward file, durably, or none of them."""
        self._append({domain: [record] for domain, record in records.items()})

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


BodyReader = Callable[[int, int], bytes | memoryview]  # (offset, size) -> those bytes of a stored body

# XMAILLAB-ONCE's lookup (`_CopyFinder`): how it reads, and what it remembers.
_LOOKUP_CHUNK = 1024 * 1024  # bytes searched at a time, plus MAX_TRACE_BYTES to finish a trace in
_OVERLAP = 4096  # read past a chunk's end, where most traces that start in it end
_COMPARE_CHUNK = 1024 * 1024  # a candidate's body is compared this much at a time
_MAX_CANDIDATES = 1024  # records of the same envelope and body length compared by one lookup, at most
_SPAN_MIN = 256 * 1024  # a record this large that crosses a chunk's edge is remembered, to be skipped
_SPAN_FILES = 64  # files whose large records are remembered, the most recently looked in


@dataclass(frozen=True)
class Wanted:
    """The delivery an XMAILLAB-ONCE retry looks for: its envelope, and its body as stored.

    `read_body(offset, size)` returns `size` bytes of the stored body (LF line endings,
    mboxrd-escaped: what `render_body` gives) from `offset`, and is called only within
    `body_length`, a chunk of at most _COMPARE_CHUNK bytes at a time, newest candidate first.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    body_length: int
    read_body: BodyReader

    @classmethod
    def of(cls, delivery: Delivery) -> Wanted:
        view = memoryview(render_body(delivery.message))
        return cls(
            mail_from=delivery.mail_from,
            rcpt_tos=delivery.rcpt_tos,
            body_length=len(view),
            read_body=lambda offset, size: view[offset : offset + size],
        )


@dataclass(frozen=True)
class _Span:
    """A large complete record, remembered by where it is and by a digest of its trace block."""

    start: int
    end: int
    head_length: int
    head_digest: bytes


def _digest(head: bytes) -> bytes:
    return hashlib.blake2b(head, digest_size=16).digest()


class _CopyFinder:
    """Finds an earlier copy of a delivery among the last bytes of a forward file.

    A search for the body's bytes would stop wherever they occur (an empty body is in every
    line). This searches instead for the trace blocks of the same envelope and body length:
    one regular expression that starts with the record's From line, a line no body holds,
    so it runs at the speed of a substring search and stops only at real candidates. Each
    candidate's body is compared a chunk at a time, newest first, up to its first difference.

    So a lookup costs one pass over the window's bytes at most, whatever the body, plus the
    bytes of the candidates compared. Large records (_SPAN_MIN) are remembered by their file's
    device and inode, and later lookups skip their bodies instead of reading them again (a
    remembered record is checked by its trace block each time, so a file cut back or
    replaced only costs a pass). Damage (hand edits, a repaired crash) is passed over like
    any body: only a candidate whose trace parses and whose body is byte for byte the same
    is a copy.
    """

    def __init__(self) -> None:
        self._spans: OrderedDict[tuple[int, int], dict[int, _Span]] = OrderedDict()  # by end

    def find(self, fd: int, status: os.stat_result, floor: int, wanted: Wanted) -> bool:
        """Whether a copy of `wanted` starts at or after `floor` in the file open at `fd`."""
        key = (status.st_dev, status.st_ino)
        spans = {
            end: span
            for end, span in self._spans.pop(key, {}).items()
            if span.start >= floor and span.end <= status.st_size
        }
        try:
            return _Lookup(fd, status.st_size, floor, wanted, spans).run()
        finally:
            if spans:
                self._spans[key] = spans
                while len(self._spans) > _SPAN_FILES:
                    self._spans.popitem(last=False)


class _GiveUp(Exception):
    """A lookup has compared as many candidates as it may: what is left counts as not found."""


class _Lookup:
    """One lookup: `run` walks down from the end of the file to `floor`."""

    def __init__(self, fd: int, size: int, floor: int, wanted: Wanted, spans: dict[int, _Span]) -> None:
        self.fd = fd
        self.size = size
        self.floor = floor
        self.wanted = wanted
        self.spans = spans  # updated in place: stale ones dropped, new ones added
        self.pattern = trace_pattern(wanted.mail_from, wanted.rcpt_tos, wanted.body_length)
        self.prefix = trace_prefix(wanted.mail_from)
        self.overlap = len(self.prefix) + _OVERLAP
        self.candidates = 0
        self.lowest_start = size  # the lowest record start seen so far, everything above it looked at

    def run(self) -> bool:
        try:
            top = self.size
            for end in sorted(self.spans, reverse=True):
                span = self.spans[end]
                if end > top:
                    del self.spans[end]  # overlaps one found since: not what it was
                    continue
                if self._scan(end, top):
                    return True
                top = end
                head = os.pread(self.fd, span.head_length, span.start)
                if _digest(head) != span.head_digest:
                    del self.spans[end]  # the file changed under it: its bytes get scanned instead
                    continue
                match = self.pattern.fullmatch(b"\n" + head)  # a candidate, as the scan would find it
                if match is not None and self._is_copy(span.start + len(head), None, 0):
                    return True
                top = self.lowest_start = span.start
            return self._scan(self.floor, top)
        except _GiveUp:
            return False

    def _scan(self, bottom: int, top: int) -> bool:
        """Look at every record that starts in [bottom, top), the newest first."""
        hi = top
        while hi > bottom:
            lo = max(bottom, hi - _LOOKUP_CHUNK)
            # From the LF before a record that starts at `lo` to a little past `hi`, where most
            # traces that start below `hi` end (one that does not is read again, whole).
            data = os.pread(self.fd, min(self.size, hi + self.overlap) - max(0, lo - 1), max(0, lo - 1))
            if lo == 0:
                data = b"\n" + data  # a record at the start of the file gets an LF in front
            base = lo - 1  # the file offset of data[0]
            first, last = lo - 1 - base, hi - 1 - base  # where the LF before a record start in [lo, hi) can be
            candidates: list[tuple[bytes, int, re.Match[bytes]]] = []
            at = first
            while (match := self.pattern.search(data, at)) is not None and match.start() < last:
                candidates.append((data, base, match))
                at = match.end()
            # Only the highest trace of this sender can run past `data`: one below ends before it starts.
            highest = data.rfind(self.prefix, first, last + len(self.prefix) - 1)
            if highest != -1 and (not candidates or candidates[-1][2].start() != highest):
                buf, buf_base, at = self._whole_trace(data, base, highest + 1)
                if buf is not data and (match := self.pattern.match(b"\n" + buf, at)) is not None:
                    candidates.append((b"\n" + buf, buf_base - 1, match))
            for buf, buf_base, match in reversed(candidates):
                if self._is_copy(buf_base + match.end(), buf, buf_base) and self._is_trace(buf, match):
                    return True
            self._remember_large(data, base, first, last)
            hi = lo
        return False

    def _is_trace(self, buf: bytes, match: re.Match[bytes]) -> bool:
        """Whether a match of `pattern` is the whole of a valid trace block, as parse_records reads one."""
        trace = parse_trace(buf, match.start() + 1)
        return trace is not None and trace.length == match.end() - match.start() - 1

    def _whole_trace(self, data: bytes, base: int, at: int) -> tuple[bytes, int, int]:
        """Bytes that hold the whole trace block starting at data[at], if there is one: `data`, or a new read."""
        if base + len(data) >= self.size or not trace_is_cut(data, at):
            return data, base, at
        start = base + at
        return os.pread(self.fd, min(MAX_TRACE_BYTES, self.size - start), start), start, 0

    def _remember_large(self, data: bytes, base: int, first: int, last: int) -> None:
        """Remember the highest record in this stretch when it is large, then move `lowest_start` down."""
        highest = data.rfind(b"\nFrom ", first, last + len(b"\nFrom ") - 1)
        if highest == -1:
            return  # inside a large body (or damage): its start is further down
        start = base + highest + 1
        if self.lowest_start - start >= _SPAN_MIN:
            buf, _, at = self._whole_trace(data, base, highest + 1)
            trace = parse_trace(buf, at)
            if trace is not None:
                end = start + trace.length + trace.body_length + len(RECORD_END)
                if end == self.lowest_start and os.pread(self.fd, 2, end - 2) == b"\n\n":
                    head = buf[at : at + trace.length]
                    self.spans[end] = _Span(start=start, end=end, head_length=len(head), head_digest=_digest(head))
        lowest = data.find(b"\nFrom ", first, last + len(b"\nFrom ") - 1)
        self.lowest_start = base + lowest + 1

    def _is_copy(self, body_start: int, data: bytes | None, base: int) -> bool:
        """Whether the body at `body_start` (after a trace of the wanted envelope and length) is the wanted one.

        `data`, when given, holds the file's bytes from offset `base`: a body inside it is
        compared there, without another read.
        """
        self.candidates += 1
        if self.candidates > _MAX_CANDIDATES:
            raise _GiveUp
        length = self.wanted.body_length
        if body_start + length + len(RECORD_END) > self.size:
            return False  # torn: cut off by a crash, to be repaired
        if data is not None and length <= _COMPARE_CHUNK and body_start + length + len(RECORD_END) - base <= len(data):
            at = body_start - base
            stored = memoryview(data)[at : at + length + len(RECORD_END)]
            return stored[-1:] == RECORD_END and stored[:length] == self.wanted.read_body(0, length)
        if os.pread(self.fd, len(RECORD_END), body_start + length) != RECORD_END:
            return False
        for offset in range(0, length, _COMPARE_CHUNK):
            size = min(_COMPARE_CHUNK, length - offset)
            if os.pread(self.fd, size, body_start + offset) != self.wanted.read_body(offset, size):
                return False
        return True


def _wanted(delivery: Delivery, parts: Sequence[Part]) -> Wanted:
    """What XMAILLAB-ONCE looks for: the delivery, with its body part (trace, body, end) as stored.

    A spooled body is compared a chunk at a time from its spool, never read whole; a body in
    memory is the delivery's message.
    """
    spool = next((part for part in parts if isinstance(part, Spool)), None)
    if spool is None:
        return Wanted.of(delivery)
    return Wanted(
        mail_from=delivery.mail_from, rcpt_tos=delivery.rcpt_tos, body_length=spool.length, read_body=spool.read_at
    )


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
