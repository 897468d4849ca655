"""XMAILLAB-ONCE's lookup: whether a forward file already holds a delivery among its recent records.

This module owns what a retry looks for (`Wanted`) and how it is looked for (`CopyIndex`).
The store owns the rest: it opens the file, asks the index, and fsyncs a copy found.

The lookup runs on the store's one group-commit thread, so its cost must not depend on what
a client sends. It never searches for a body's bytes (an empty body is in every line), and
it does not scan the window again for each retry either: a hostile client's own stored
retries would make each lookup cost more than the one before. Instead, each forward file
that has had a lookup gets an index of its recent records, kept up to date incrementally:

- the key of each complete record (sender, recipients, stored body length), from its trace
  block alone (`parse_trace`): the body is skipped by its length, never read, and only the
  blank line that ends the record is checked. Each record's trace is parsed once; a lookup
  indexes only what was appended since the one before.
- damage (hand edits, a torn record left before a repair) is passed over as parse_records
  passes over it: from there, the next line that starts "From " is tried. Each byte is
  searched at most once per index.
- the index is dropped, and built again from the window's floor, when the file is another
  one (device and inode), is shorter than it was, or no longer ends with the bytes it ended
  with; and when the window reaches further back than the index does.

A lookup then compares only the newest `MAX_CANDIDATES` records of the same key within the
window, each checked by its trace block again and its body compared a chunk at a time up to
the first difference: at most MAX_CANDIDATES times the message's own length.

What it gives up, knowingly: a record whose length header was edited by hand to cover whole
later records hides those from the lookup (a retry of one of them is stored again); a copy
found is always a record as parse_records reads it, at the start of a line. Past MAX_ENTRIES
records indexed over all files, the oldest records of the files looked in least recently are
forgotten (a retry of one of those is stored again), but every index keeps where it goes on
from, so no file is indexed again from its floor; past MAX_FILES indexes, the least recently
used goes whole. Keys are 16-byte digests, so an index's memory is bounded by its records.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from maillab_common.forward import (
    MAX_TRACE_BYTES,
    RECORD_END,
    Delivery,
    Trace,
    parse_trace,
    render_body,
    trace_is_cut,
    trace_prefix,
)
from maillab_server.spool import Spool

MAX_CANDIDATES = 8  # records of the same key compared by one lookup, the newest first
MAX_ENTRIES = 200_000  # records indexed over all files, at most
MAX_FILES = 10_000  # files with an index, at most: past it, the least recently used index goes whole
_TRACE_READ = 64 * 1024  # bytes read at a record's start: its trace, and often the records after it
_SEARCH_CHUNK = 1024 * 1024  # bytes searched at a time for the next record start, past damage
_COMPARE_CHUNK = 1024 * 1024  # a candidate's body is compared this much at a time
_TAIL = 32  # the last bytes indexed, checked at each lookup: a file rewritten in place is indexed again
_RECORD_START = b"\nFrom "

BodyReader = Callable[[int, int], bytes | memoryview]  # (offset, size) -> those bytes of a stored body
# A digest of the sender, the recipients and the stored body's length: 16 bytes however long the
# addresses, so the index's memory is bounded by its number of records. A candidate's own trace
# is compared field by field before it counts, so a collision costs a compare, never a wrong find.
Key = bytes


def _digest_key(mail_from: str, rcpt_tos: tuple[str, ...], body_length: int) -> Key:
    canonical = json.dumps([mail_from, list(rcpt_tos), body_length])  # ASCII: surrogates escaped too
    return hashlib.blake2b(canonical.encode("ascii"), digest_size=16).digest()


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

    @property
    def key(self) -> Key:
        return _digest_key(self.mail_from, self.rcpt_tos, self.body_length)


def wanted(delivery: Delivery, parts: Sequence[bytes | Spool]) -> Wanted:
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


def record_key(parts: Sequence[bytes | Spool]) -> Key | None:
    """The key of a record to be appended (its trace comes first), or None when it has no valid trace."""
    first = parts[0] if parts else b""
    trace = parse_trace(first) if isinstance(first, bytes) else None
    return None if trace is None else _key(trace)


def _key(trace: Trace) -> Key:
    return _digest_key(trace.mail_from, trace.rcpt_tos, trace.body_length)


class _Slot:
    """The records of one key in one file: (offset, trace length), the newest first, MAX_CANDIDATES at most."""

    __slots__ = ("key", "records")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.records: list[tuple[int, int]] = []


class _FileIndex:
    """One forward file's recent records by key, and where indexing goes on from."""

    def __init__(self, identity: tuple[int, int], floor: int) -> None:
        self.identity = identity
        self.base = floor  # indexed from here: a window reaching lower needs a new index
        self.pos = floor  # the next record start (or, searching, where the search goes on)
        self.searching = floor > 0  # from the floor, the first record start is searched for
        # A record whose end is past the file's: its start, trace length and end.
        self.pending: tuple[int, int, int] | None = None
        self.size = 0  # the file's size at the last lookup
        self.tail = b""  # and its last bytes then
        self.slots: dict[Key, _Slot] = {}
        self.order: deque[tuple[int, _Slot]] = deque()  # every record indexed, by offset: to forget the oldest

    def add(self, offset: int, trace_length: int, key: Key) -> None:
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot(key)
        slot.records.insert(0, (offset, trace_length))
        del slot.records[MAX_CANDIDATES:]
        self.order.append((offset, slot))

    def forget_oldest(self) -> None:
        offset, slot = self.order.popleft()
        if slot.records and slot.records[-1][0] == offset:
            slot.records.pop()
            if not slot.records and self.slots.get(slot.key) is slot:
                del self.slots[slot.key]

    def forget_below(self, floor: int) -> None:
        while self.order and self.order[0][0] < floor:
            self.forget_oldest()


class CopyIndex:
    """The XMAILLAB-ONCE lookup, with an index per forward file (see the module's docstring)."""

    def __init__(self) -> None:
        self._files: OrderedDict[str, _FileIndex] = OrderedDict()  # by domain, the most recently looked in last
        self._entries = 0

    def find(self, domain: str, fd: int, status: os.stat_result, floor: int, wanted: Wanted) -> bool:
        """Whether a copy of `wanted` starts at or after `floor` in the domain's file, open at `fd`."""
        size = status.st_size
        index = self._files.pop(domain, None)
        if index is not None:
            self._entries -= len(index.order)
            if not _still_valid(index, fd, status, floor):
                index = None
        if index is None:
            index = _FileIndex((status.st_dev, status.st_ino), floor)
        try:
            _advance(index, fd, size)
            index.size = size
            index.tail = os.pread(fd, min(_TAIL, size), size - min(_TAIL, size))
            index.forget_below(floor)
        finally:
            self._files[domain] = index
            self._entries += len(index.order)
            self._bound()
        slot = index.slots.get(wanted.key)
        for offset, trace_length in list(slot.records) if slot is not None else []:
            if offset < floor:
                break  # the rest are older still
            if _is_copy(fd, size, offset, trace_length, wanted):
                return True
        return False

    def _bound(self) -> None:
        """Keep MAX_ENTRIES records and MAX_FILES indexes at most.

        Past MAX_ENTRIES, the oldest records of the least recently used files are forgotten, but
        their indexes stay, with where indexing goes on from: a file is never indexed again from
        its floor, which would cost a pass over its whole window on the commit thread at every
        lookup of a client that alternates domains. A forgotten copy is only a duplicate.
        """
        while len(self._files) > MAX_FILES:
            _, oldest = self._files.popitem(last=False)
            self._entries -= len(oldest.order)
        for index in self._files.values():  # the least recently used first
            if self._entries <= MAX_ENTRIES:
                break
            while self._entries > MAX_ENTRIES and index.order:
                index.forget_oldest()
                self._entries -= 1


def _still_valid(index: _FileIndex, fd: int, status: os.stat_result, floor: int) -> bool:
    """Whether the file is the one indexed, with only bytes appended since, and the window within the index."""
    if index.identity != (status.st_dev, status.st_ino) or status.st_size < index.size or floor < index.base:
        return False
    return os.pread(fd, len(index.tail), index.size - len(index.tail)) == index.tail


class _Reader:
    """The file's bytes around one offset at a time, read in chunks and kept until another is needed."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.base = 0
        self.buf = b""

    def at(self, offset: int, want: int = 1) -> tuple[bytes, int]:
        """A buffer of the file's bytes that holds `want` bytes from `offset` (or up to the end), and where."""
        if not (self.base <= offset and min(self.size, offset + want) <= self.base + len(self.buf)):
            self.buf = os.pread(self.fd, min(self.size - offset, max(want, _TRACE_READ)), offset)
            self.base = offset
        return self.buf, offset - self.base

    def reaches_end(self) -> bool:
        return self.base + len(self.buf) >= self.size


def _advance(index: _FileIndex, fd: int, size: int) -> None:
    """Index the records from `index.pos` up to the file's end: what was appended since the last lookup.

    The same records parse_records reads (but for the caveat in the module's docstring), from
    their trace blocks alone; a record not yet complete at the end is looked at again next time.
    """
    reader = _Reader(fd, size)
    while True:
        if index.pending is not None:
            start, trace_length, end = index.pending  # end: the offset of its RECORD_END
            complete = end + len(RECORD_END) <= size
            # parse_records: a record start inside its body (or after it, while it is cut) makes it damage
            found = _find_start(fd, index.pos, end if complete else size)
            if found is None and not complete:
                index.pos = max(index.pos, size - len(_RECORD_START) + 2)
                return
            index.pending = None
            if found is None:
                buf, at = reader.at(end - 1, 2)
                if buf[at : at + 2] == b"\n" + RECORD_END:
                    _index_record(index, reader, start, trace_length)
                    index.pos, index.searching = end + len(RECORD_END), False
                    continue
                index.pos = max(index.pos, end - len(_RECORD_START) + 2)  # searched up to there already
            # Damage: parse_records goes on at the next record start after its first byte, and
            # one right after its trace block (the LF before it is the trace's) was not searched.
            buf, at = reader.at(start + trace_length - 1, len(_RECORD_START))
            if buf.startswith(_RECORD_START, at):
                index.pos, index.searching = start + trace_length, False
            elif found is not None:
                index.pos, index.searching = found, False
            else:
                index.searching = True
            continue
        if index.searching:
            found = _find_start(fd, index.pos, size)
            if found is None:
                index.pos = max(index.pos, size - len(_RECORD_START) + 2)
                return
            index.pos, index.searching = found, False
            continue
        pos = index.pos
        if pos >= size:
            return
        buf, at = reader.at(pos, len(b"From "))
        if not buf.startswith(b"From ", at):
            if size - pos < len(b"From ") and b"From ".startswith(buf[at:]):
                return  # the start of a record, perhaps: more bytes will tell
            index.pos, index.searching = pos + 1, True
            continue
        trace = parse_trace(buf, at)
        for want in (_TRACE_READ, MAX_TRACE_BYTES):  # a trace cut by the end of what was read: read more
            if trace is None and trace_is_cut(buf, at) and not reader.reaches_end():
                buf, at = reader.at(pos, want)
                trace = parse_trace(buf, at)
        if trace is None:
            if trace_is_cut(buf, at) and reader.reaches_end():
                return  # a trace block being written, or damage that more bytes will show
            index.pos, index.searching = pos + 1, True
            continue
        end = pos + trace.length + trace.body_length
        if end + len(RECORD_END) > size:
            index.pending = (pos, trace.length, end)
            index.pos = pos + trace.length + 1  # parse_records looks for a record start from the trace's end
            continue
        servers_from_line = buf.startswith(trace_prefix(trace.mail_from)[1:], at)  # else never a copy
        ending, at = reader.at(end - 1, 2)
        if ending[at : at + 2] == b"\n" + RECORD_END:
            if servers_from_line:
                index.add(pos, trace.length, _key(trace))
            index.pos = end + len(RECORD_END)
        else:  # the length does not fit: damage
            index.pos, index.searching = pos + 1, True


def _index_record(index: _FileIndex, reader: _Reader, start: int, trace_length: int) -> None:
    """Index a pending record, now complete: its trace is read again (it was parsed when it was cut)."""
    buf, at = reader.at(start, trace_length)
    trace = parse_trace(buf, at)
    if trace is not None and buf.startswith(trace_prefix(trace.mail_from)[1:], at):
        index.add(start, trace.length, _key(trace))


def _find_start(fd: int, lo: int, hi: int) -> int | None:
    """The first record start at or after `lo` whose "\\nFrom " lies before `hi`: a line that starts "From "."""
    at = max(0, lo - 1)
    while hi - at >= len(_RECORD_START):
        chunk = os.pread(fd, min(_SEARCH_CHUNK, hi - at), at)
        found = chunk.find(_RECORD_START)
        if found != -1:
            return at + found + 1
        if len(chunk) < len(_RECORD_START):
            return None  # the file is shorter than it said
        at += len(chunk) - len(_RECORD_START) + 1
    return None


def _is_copy(fd: int, size: int, offset: int, trace_length: int, wanted: Wanted) -> bool:
    """Whether the record indexed at `offset` is still there, of the wanted key, with the wanted body."""
    # A record starts a line: "From " in the middle of a line (a body may quote a whole record
    # there, unescaped) is never one.
    if offset > 0 and os.pread(fd, 1, offset - 1) != b"\n":
        return False
    head = os.pread(fd, trace_length, offset)
    trace = parse_trace(head)
    if trace is None or trace.length != trace_length:
        return False
    if (trace.mail_from, trace.rcpt_tos, trace.body_length) != (wanted.mail_from, wanted.rcpt_tos, wanted.body_length):
        return False
    if not head.startswith(trace_prefix(wanted.mail_from)[1:]):
        return False
    body_start = offset + trace_length
    length = wanted.body_length
    if body_start + length + len(RECORD_END) > size:
        return False
    if os.pread(fd, len(RECORD_END), body_start + length) != RECORD_END:
        return False
    for at in range(0, length, _COMPARE_CHUNK):
        chunk = min(_COMPARE_CHUNK, length - at)
        if os.pread(fd, chunk, body_start + at) != wanted.read_body(at, chunk):
            return False
    return True
