"""The stored messages as every command sees them: the tail's records, made summaries or headlines.

The tail (tail.py) reads the forward files and the model (model.py) takes each record
apart (a summary) or reads its header block (a headline, for one line); this is where the
two meet, for `watch`, `list`, `show` and `verify` alike. What cannot be read (damaged
bytes, a message the email package trips over) is logged here, once, and skipped: it never
stops a command.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from maillab_common.forward import Damaged, Record, parse_records
from maillab_inspector import model
from maillab_inspector.model import Budget, Headline, MessageSummary, summarize
from maillab_inspector.tail import ForwardTail

log = logging.getLogger(__name__)

Item = tuple[str, Record | Damaged]  # a forward file's name, and what the tail read from it
Read = TypeVar("Read", bound=Headline)  # a summary or a headline


def poll(tail: ForwardTail, only: str | None = None, name: str | None = None) -> Iterator[Item]:
    """What is new in the file `name` (every file when None), if it is `only` (when given)."""
    if only is not None:
        return tail.poll(only) if name in (None, only) else iter(())
    return tail.poll(name) if name is not None else tail.poll_all()


def summary(domain: str, record: Record, budget: Budget | None = None) -> MessageSummary | None:
    """The record's summary, its problem logged; None (logged) where the email package gives up."""
    return _logged(domain, record, lambda: summarize(domain, record, budget))


def headline(domain: str, record: Record) -> Headline | None:
    """The record's headline (its header block alone), its problem logged; None (logged) where reading it raises."""
    return _logged(domain, record, lambda: model.headline(domain, record))


def summaries(items: Iterable[Item]) -> Iterator[MessageSummary]:
    """A summary of each record among `items`; damaged bytes are logged and skipped."""
    return _each(items, summary)


def headlines(items: Iterable[Item]) -> Iterator[Headline]:
    """A headline of each record among `items`; damaged bytes are logged and skipped."""
    return _each(items, headline)


def _logged(domain: str, record: Record, read: Callable[[], Read]) -> Read | None:
    try:
        found = read()
    except Exception as exc:  # a message the email package cannot take apart must not stop the inspector
        log.warning("%s: the message at offset %d cannot be summarised: %s", domain, record.offset, exc)
        return None
    if found.problem:
        log.warning("%s: the message at offset %d: %s", domain, record.offset, found.problem)
    return found


def _each(items: Iterable[Item], read: Callable[[str, Record], Read | None]) -> Iterator[Read]:
    for name, item in items:
        if isinstance(item, Damaged):
            log.warning("%s: %d damaged bytes at offset %d: %s", name, item.length, item.offset, item.reason)
            continue
        found = read(name, item)
        if found is not None:
            yield found


def find(tail: ForwardTail, message_id: str) -> tuple[str, Record] | None:
    """The first stored record whose Message-ID is `message_id` (with or without <>), and its file."""
    wanted = message_id.strip().strip("<>")
    for name, item in tail.poll_all():
        # Only the header block: cheap, and most messages are not the one.
        if isinstance(item, Record) and model.headline(name, item).message_id.strip("<>") == wanted:
            return name, item
    return None


def record_at(root: Path, domain: str, inode: int, offset: int, length: int) -> Record | None:
    """The record the catalogue found at `offset` (`length` bytes) in the file `domain` of `root`,
    if that file is still the one it read (`inode`) and that record is still there; else None.

    The bytes of a whole record never change once written (the server cuts off only a torn
    tail), so they are read without the lock the tail takes.
    """
    if not domain or domain.startswith(".") or "/" in domain or "\0" in domain or offset < 0 or length <= 0:
        return None
    try:
        fd = os.open(root / domain, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_ino != inode or status.st_size < offset + length:
            return None
        data = bytearray()
        while len(data) < length:
            chunk = os.pread(fd, length - len(data), offset + len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    items, rest = parse_records(bytes(data), offset)
    if rest or len(items) != 1:
        return None
    found = items[0]
    if not isinstance(found, Record) or found.offset != offset or found.length != length:
        return None
    return found


def warn_unfinished(tail: ForwardTail) -> None:
    """Log each file the tail read that ends in part of a record."""
    for name, length in tail.unfinished().items():
        log.warning(
            "%s: its last %d bytes are not a whole record: one being written, or a torn one that "
            "the server cuts off when it next starts",
            name,
            length,
        )
