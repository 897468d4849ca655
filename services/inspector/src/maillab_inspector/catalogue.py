"""The catalogue: every stored message as a row of an SQLite database, for the web view and API to list and search.

The forward files stay the record of what arrived; the catalogue is an index over them,
which `serve` keeps up to date as they grow and rebuilds from them whenever it is lost or
of another schema (SchemaMismatch). Each row says where its record is (file, inode, offset,
length), so a reader seeks to it for the raw bytes, the HTML body or an attachment.

The rows of a batch of records and the tail positions they bring the reading to are
written in one transaction: after a crash, what was catalogued and how far the files were
read agree, so no message is catalogued twice or missed. Each commit is then published
(Commits), which wakes the web's waiters on their own event loops without polling.

A deleted message is a tombstone (deleted = 1): hidden from every view, yet kept, so that
its record is not catalogued again; `found` (verify) still sees it. No row is ever removed,
so the seqs run from 1 without a gap, which makes the number of messages the last seq.

One SQLite connection per thread; the writer takes the write lock at the start of its
transaction (BEGIN IMMEDIATE), and readers (WAL) never wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maillab_inspector.model import AttachmentSummary, Entry
from maillab_inspector.query import WakeKey, arrival_keys

if TYPE_CHECKING:
    from maillab_inspector.query import Query

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "AttachmentSummary",
    "BadCursor",
    "Catalogue",
    "Commits",
    "DomainCount",
    "Entry",
    "Found",
    "Located",
    "Page",
    "SchemaMismatch",
    "Summary",
    "normal_address",
]

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000
HIDE_AT_ONCE = 1000  # messages a DELETE hides in one transaction

# The deleted messages alone, to count the visible ones from indexes (Catalogue._total).
_DELETED_INDEX = "CREATE INDEX messages_deleted ON messages (deleted, domain, received) WHERE deleted = 1"
SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE positions (file TEXT PRIMARY KEY, inode INTEGER NOT NULL, offset INTEGER NOT NULL);
CREATE TABLE messages (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  domain TEXT NOT NULL,
  inode INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
  received INTEGER NOT NULL,
  mail_from TEXT NOT NULL,
  rcpt_to TEXT NOT NULL,
  header_from TEXT NOT NULL, header_to TEXT NOT NULL, header_cc TEXT NOT NULL,
  subject TEXT NOT NULL, date TEXT NOT NULL, message_id TEXT NOT NULL,
  size INTEGER NOT NULL,
  snippet TEXT NOT NULL,
  attachment_count INTEGER NOT NULL,
  problem TEXT NOT NULL,
  deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_domain ON messages (domain);
CREATE INDEX messages_domain_received ON messages (domain, received);
CREATE INDEX messages_received ON messages (received);
CREATE INDEX messages_message_id ON messages (message_id);
{_DELETED_INDEX};
CREATE TABLE addresses (seq INTEGER NOT NULL, role TEXT NOT NULL, address TEXT NOT NULL, domain TEXT NOT NULL);
CREATE INDEX addresses_lookup ON addresses (role, address, seq);
CREATE INDEX addresses_domain ON addresses (role, domain, seq);
CREATE INDEX addresses_seq ON addresses (seq);
CREATE TABLE attachments (seq INTEGER NOT NULL, idx INTEGER NOT NULL, filename TEXT NOT NULL,
  content_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (seq, idx));
CREATE INDEX attachments_filename ON attachments (filename COLLATE NOCASE);
CREATE VIRTUAL TABLE message_text USING fts5(subject, body, addresses, tokenize = 'unicode61 remove_diacritics 2');
"""

# What a Summary is made of, in this order, from `messages AS m`.
_SUMMARY_COLUMNS = (
    "m.seq, m.id, m.domain, m.received, m.mail_from, m.rcpt_to, m.header_from, m.header_to, m.header_cc, "
    "m.subject, m.date, m.message_id, m.size, m.snippet, m.attachment_count, m.problem"
)
# Newest first is last catalogued first: the feed catalogues messages as they land, and the
# backlog is read in the order received, all files merged (cataloguing.catch_up); the seq is
# also the one key that the full-text index and the address index hand back in order.
_NEWEST_FIRST = "ORDER BY m.seq DESC"


class SchemaMismatch(Exception):
    """The file holds another schema version, or is not a catalogue: it is to be rebuilt from the forward files."""


class BadCursor(ValueError):
    """A page cursor that this catalogue did not make."""


def normal_address(address: str) -> str:
    """An address as the catalogue stores and looks it up: the local part as is, the domain lowercased.

    'Bob@X.Test' -> 'Bob@x.test'. The split is at the last '@' (a quoted local part may hold one).
    """
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else address.strip()


def address_domain(address: str) -> str:
    """The domain of a normal address ('' where it has none), as `to:x.test` looks it up."""
    local, at, domain = address.rpartition("@")
    return domain if at and local else ""


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class Summary:
    """A message as lists, waits and events show it."""

    seq: int
    id: str
    domain: str
    received: str  # ISO 8601, UTC: 'YYYY-MM-DDTHH:MM:SSZ'
    mail_from: str
    rcpt_to: tuple[str, ...]
    header_from: str
    header_to: str
    header_cc: str
    subject: str
    date: str
    message_id: str
    size: int
    snippet: str
    attachment_count: int
    problem: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "domain": self.domain,
            "received": self.received,
            "envelope": {"from": self.mail_from, "to": list(self.rcpt_to)},
            "from": self.header_from,
            "to": self.header_to,
            "cc": self.header_cc,
            "subject": self.subject,
            "date": self.date,
            "message_id": self.message_id,
            "size": self.size,
            "snippet": self.snippet,
            "attachments": self.attachment_count,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Located:
    """A message and where its record is, to read it again from its forward file."""

    summary: Summary
    inode: int
    offset: int
    length: int
    attachments: tuple[AttachmentSummary, ...]


@dataclass(frozen=True)
class Page:
    total: int  # every visible message that matches, not only this page's
    messages: list[Summary]
    next_cursor: str | None  # None: this is the last page


@dataclass(frozen=True)
class DomainCount:
    domain: str
    count: int
    last_received: str  # ISO 8601, UTC


@dataclass(frozen=True, kw_only=True)
class Found:
    """One copy of a delivery `verify` looks for (deleted ones included); what verify.check reads."""

    seq: int
    id: str
    domain: str
    message_id: str
    inode: int
    offset: int
    length: int
    subject: str
    problem: str
    attachments: tuple[AttachmentSummary, ...]
    deleted: bool


class Commits:
    """The last committed seq, and the waiters for a later one.

    Thread-safe: the writer publishes from its thread, and each waiter is woken on its own event loop.
    """

    def __init__(self, latest: int = 0) -> None:
        self._lock = threading.Lock()
        self._latest = latest
        self._waiters: dict[asyncio.Future[None], tuple[asyncio.AbstractEventLoop, int]] = {}

    @property
    def latest(self) -> int:
        return self._latest

    def publish(self, seq: int) -> None:
        """A commit up to `seq`; from any thread. Wakes every waiter for something after what it had."""
        with self._lock:
            self._latest = max(self._latest, seq)
            ready = [(future, loop) for future, (loop, after) in self._waiters.items() if self._latest > after]
            for future, _ in ready:
                del self._waiters[future]
        for future, loop in ready:
            with suppress(RuntimeError):  # its loop is closed: no one is waiting any more
                loop.call_soon_threadsafe(_wake, future)

    async def wait(self, after: int, timeout: float) -> int:
        """`latest` as soon as it is past `after`, or when `timeout` seconds have passed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._latest > after or timeout <= 0:
                return self._latest
            self._waiters[future] = (loop, after)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.pop(future, None)
        return self._latest


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile (a timeout, a closed connection)
        future.set_result(None)


def encode_cursor(seq: int) -> str:
    """The cursor of the page after the message `seq`: opaque to clients, so that what it holds may change."""
    text = json.dumps(["after", seq], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, seq = json.loads(text)
    except (ValueError, TypeError, binascii.Error) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadCursor(f"not a page cursor: {cursor[:80]!r}") from exc
    if kind != "after" or not _is_int(seq):
        raise BadCursor(f"not a page cursor: {cursor[:80]!r}")
    return int(seq)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


class Catalogue:
    """The catalogue database at `path`: created when new; SchemaMismatch when it holds something else."""

    def __init__(self, path: Path, commits: Commits | None = None) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connection()
            db.execute("PRAGMA journal_mode=WAL")
            self._create_or_check(db)
            latest = db.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self.close()
            if isinstance(exc, sqlite3.OperationalError) and not _not_a_database(exc):
                raise  # locked, read-only, a full disk: not a question of schema
            raise SchemaMismatch(f"{path} is not a catalogue: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.commits = commits if commits is not None else Commits(latest)
        if commits is not None:
            commits.publish(latest)

    # -- connections ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            return db
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the catalogue is closed")
            # check_same_thread=False only so that close() may close it from another thread:
            # each thread uses its own.
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._connections.append(db)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA synchronous=NORMAL")
        self._local.db = db
        return db

    def close(self) -> None:
        """Close every connection this catalogue opened (from any thread)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            with suppress(sqlite3.Error):
                db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (a full disk)
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One snapshot for several reads (a page and its total agree)."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _create_or_check(self, db: sqlite3.Connection) -> None:
        with self._write():
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            row = (
                db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if "meta" in tables
                else None
            )
            if row is not None and row[0] == str(SCHEMA_VERSION):
                db.execute(_DELETED_INDEX.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))  # one made before it
        if row is None or row[0] != str(SCHEMA_VERSION):
            found = "no schema version" if row is None else f"schema version {row[0]}"
            raise SchemaMismatch(f"{self.path} holds {found}, not {SCHEMA_VERSION}")

    # -- writing (the ingest thread) ------------------------------------------------------

    def positions(self) -> dict[str, tuple[int, int]]:
        """For each forward file: its inode and the offset up to which its records are catalogued."""
        rows = self._connection().execute("SELECT file, inode, offset FROM positions").fetchall()
        return {str(name): (int(inode), int(offset)) for name, inode, offset in rows}

    def ingest(self, entries: Sequence[Entry], positions: Mapping[str, tuple[int, int]]) -> None:
        """Catalogue `entries` (any already there are left as they are) and save `positions`, in one transaction."""
        last = 0
        with self._write() as db:
            _hide_restarted(db, positions)
            for entry in entries:
                last = max(last, _insert(db, entry))
            db.executemany(
                "INSERT INTO positions (file, inode, offset) VALUES (?, ?, ?) "
                "ON CONFLICT (file) DO UPDATE SET inode = excluded.inode, offset = excluded.offset",
                [(name, inode, offset) for name, (inode, offset) in positions.items()],
            )
        if last:
            self.commits.publish(last)

    def delete(self, query: Query | None = None, domain: str | None = None) -> int:
        """Hide every visible message that matches; how many. Published, so that waiters look again."""
        condition, params = _condition(query, domain)
        deleted = 0
        while True:
            # In transactions of HIDE_AT_ONCE messages: taking thousands out of the full-text index
            # at once would hold the write lock for seconds, longer than the catalogue process
            # waits for it (BUSY_TIMEOUT_MS).
            with self._write() as db:
                hidden = _hide(db, condition, params, HIDE_AT_ONCE)
            deleted += hidden
            if hidden < HIDE_AT_ONCE:
                break
        self.commits.publish(self.commits.latest)
        return deleted

    # -- reading (any thread) -------------------------------------------------------------

    def messages(
        self, query: Query | None = None, domain: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """A page of the matching messages, newest first, after `cursor` (a page's `next_cursor`)."""
        before = decode_cursor(cursor) if cursor is not None else 2**63 - 1
        limit = max(1, limit)
        with self._read() as db:
            total = self._total(query, domain)
            rows = db.execute(*_page(query, domain, before, limit + 1)).fetchall()
        page = [_summary(row) for row in rows[:limit]]
        next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
        return Page(total=total, messages=page, next_cursor=next_cursor)

    def count(self, query: Query | None = None, domain: str | None = None, after: int = 0) -> int:
        """How many visible messages match, of those catalogued after seq `after`."""
        if after:
            condition, params = _condition(query, domain)
            return self._count(f"{condition} AND m.seq > ?", [*params, after])
        return self._total(query, domain)

    def matching(
        self, query: Query | None = None, domain: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[Summary]:
        """The matching messages catalogued after seq `after`, oldest first (a wait's or an event stream's)."""
        condition, params = _condition(query, domain)
        rows = (
            self._connection()
            .execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM messages AS m WHERE {condition} AND m.seq > ? ORDER BY m.seq LIMIT ?",
                [*params, after, max(1, limit)],
            )
            .fetchall()
        )
        return [_summary(row) for row in rows]

    def arrivals(self, after: int, upto: int) -> dict[WakeKey, int]:
        """The wake keys (query.arrival_keys) of the messages catalogued after seq `after` up to `upto`, each with
        the last seq that brought it: what a commit can wake (web/wakeups.py)."""
        with self._read() as db:
            messages = db.execute(
                "SELECT seq, message_id, domain FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upto)
            ).fetchall()
            rows: dict[int, list[tuple[str, str, str]]] = {}
            for seq, role, address, domain in db.execute(
                "SELECT seq, role, address, domain FROM addresses WHERE seq > ? AND seq <= ?", (after, upto)
            ):
                rows.setdefault(seq, []).append((role, address, domain))
        last: dict[WakeKey, int] = {}
        for seq, message_id, domain in messages:
            for key in arrival_keys(message_id, domain, rows.get(seq, ())):
                last[key] = seq
        return last

    def message(self, id: str) -> Located | None:
        """The message `id` and where its record is; None when there is none, or it was deleted."""
        db = self._connection()
        row = db.execute(
            f"SELECT {_SUMMARY_COLUMNS}, m.inode, m.offset, m.length FROM messages AS m "
            "WHERE m.id = ? AND m.deleted = 0",
            (id,),
        ).fetchone()
        if row is None:
            return None
        summary = _summary(row[:-3])
        return Located(summary, row[-3], row[-2], row[-1], _attachments(db, summary.seq))

    def domains(self) -> list[DomainCount]:
        """Each domain with visible messages, by name: how many, and when the last arrived."""
        with self._read() as db:
            # Every message, and apart the deleted ones: both from an index alone (the deleted
            # column is in no index but the deleted ones'), where the visible ones would each be
            # looked up in the table.
            every = db.execute(
                "SELECT domain, count(*), max(received) FROM messages INDEXED BY messages_domain_received "
                "GROUP BY domain ORDER BY domain"
            ).fetchall()
            deleted = dict(
                db.execute(
                    "SELECT domain, count(*) FROM messages INDEXED BY messages_deleted "
                    "WHERE deleted = 1 GROUP BY domain"
                ).fetchall()
            )
            found = []
            for domain, count, received in every:
                visible = count - deleted.get(domain, 0)
                if visible <= 0:
                    continue
                if domain in deleted:  # the last one may be deleted
                    received = db.execute(
                        "SELECT received FROM messages WHERE domain = ? AND deleted = 0 ORDER BY received DESC LIMIT 1",
                        (domain,),
                    ).fetchone()[0]
                found.append(DomainCount(domain, visible, iso_time(received)))
        return found

    def found(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], list[Found]]:
        """For verify: every copy (deleted ones included) of each (Message-ID, domain) in `keys`, in ingest order.

        A Message-ID matches with or without its <>; the result is keyed as asked.
        """
        db = self._connection()
        result: dict[tuple[str, str], list[Found]] = {}
        for message_id, domain in keys:
            rows = db.execute(
                "SELECT m.seq, m.id, m.domain, m.message_id, m.inode, m.offset, m.length, m.subject, m.problem, "
                "m.deleted FROM messages AS m WHERE m.message_id = ? AND m.domain = ? ORDER BY m.seq",
                (message_id.strip().strip("<>"), domain),
            ).fetchall()
            if rows:
                result[message_id, domain] = [
                    Found(
                        seq=seq,
                        id=id,
                        domain=domain,
                        message_id=found_id,
                        inode=inode,
                        offset=offset,
                        length=length,
                        subject=subject,
                        problem=problem,
                        attachments=_attachments(db, seq),
                        deleted=bool(deleted),
                    )
                    for seq, id, domain, found_id, inode, offset, length, subject, problem, deleted in rows
                ]
        return result

    def _total(self, query: Query | None, domain: str | None) -> int:
        """How many visible messages match. Without a query: every message less the deleted
        ones, each counted from an index alone (a count of the visible ones would look each up)."""
        if query is not None and query.terms:
            from maillab_inspector import query as query_syntax  # query.py imports nothing of this module

            visible = query_syntax.to_seq_set(query) if domain is None else None
            if visible is not None:  # only visible messages are in the tables it reads (_hide)
                counted = "DISTINCT seq" if visible.repeats else "*"
                sql = f"SELECT count({counted}) FROM ({visible.sql})"
                return int(self._connection().execute(sql, visible.parameters).fetchone()[0])
            return self._count(*_condition(query, domain))
        db = self._connection()
        if domain is None:
            # Rows are never removed (a delete leaves a tombstone) and each takes the next seq, so
            # the seqs run from 1 without a gap: the last is the count, found without a scan.
            params: list[object] = []
            every = db.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        else:
            params = [domain]
            every = db.execute("SELECT count(*) FROM messages WHERE domain = ?", params).fetchone()[0]
        deleted_where = "WHERE deleted = 1" + (" AND domain = ?" if domain is not None else "")
        deleted = db.execute(f"SELECT count(*) FROM messages INDEXED BY messages_deleted {deleted_where}", params)
        return int(every - deleted.fetchone()[0])

    def _count(self, condition: str, params: Sequence[object]) -> int:
        row = self._connection().execute(f"SELECT count(*) FROM messages AS m WHERE {condition}", params).fetchone()
        return int(row[0])


def _page(query: Query | None, domain: str | None, before: int, limit: int) -> tuple[str, list[object]]:
    """The SELECT of the matching messages' summaries with a seq below `before`, newest first, at most `limit`."""
    from maillab_inspector import query as query_syntax  # query.py imports nothing of this module

    visible = query_syntax.to_seq_set(query) if query is not None and domain is None else None
    if visible is not None and visible.ordered:
        # The page's seqs straight from the full-text or address index, read newest first and
        # stopped at the page's end: no list of every match to sort (a word in every message).
        distinct = "DISTINCT " if visible.repeats else ""
        seqs = f"SELECT {distinct}seq FROM ({visible.sql}) WHERE seq < ? ORDER BY seq DESC LIMIT ?"
        return (
            f"SELECT {_SUMMARY_COLUMNS} FROM messages AS m WHERE m.deleted = 0 AND m.seq IN ({seqs}) {_NEWEST_FIRST}",
            [*visible.parameters, before, limit],
        )
    condition, params = _condition(query, domain)
    return (
        f"SELECT {_SUMMARY_COLUMNS} FROM messages AS m WHERE {condition} AND m.seq < ? {_NEWEST_FIRST} LIMIT ?",
        [*params, before, limit],
    )


def _condition(query: Query | None, domain: str | None) -> tuple[str, list[object]]:
    """The WHERE condition over `messages AS m` for the visible messages that match."""
    condition, params = "m.deleted = 0", []
    if query is not None:
        from maillab_inspector import query as query_syntax  # query.py imports nothing of this module

        sql, query_params = query_syntax.to_sql(query)
        condition += f" AND ({sql})"
        params += query_params
    if domain is not None:
        condition += " AND m.domain = ?"
        params.append(domain)
    return condition, params


def _hide_restarted(db: sqlite3.Connection, positions: Mapping[str, tuple[int, int]]) -> None:
    """Hide what was catalogued from a file that the tail now reads from its start again
    (replaced: another inode; or cut shorter than its saved position): those rows point at
    bytes that are gone or are now other messages'."""
    for name, (inode, offset) in positions.items():
        saved = db.execute("SELECT inode, offset FROM positions WHERE file = ?", (name,)).fetchone()
        if saved is not None and (saved[0] != inode or offset < saved[1]):
            log.warning("%s was replaced or cut: hiding the messages catalogued from it before", name)
            _hide(db, "m.domain = ? AND m.deleted = 0", [name])


def _hide(db: sqlite3.Connection, condition: str, params: Sequence[object], limit: int = -1) -> int:
    """Tombstone the messages `condition` holds for (at most `limit` of them; -1: all), and take
    them out of the full-text and address indexes: those then hold the visible messages alone, so
    that a search of them alone needs no look at a message's row to count (Catalogue._total). How many."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS hiding (seq INTEGER PRIMARY KEY)")
    db.execute("DELETE FROM temp.hiding")
    db.execute(f"INSERT INTO temp.hiding SELECT m.seq FROM messages AS m WHERE {condition} LIMIT ?", [*params, limit])
    db.execute("DELETE FROM message_text WHERE rowid IN (SELECT seq FROM temp.hiding)")
    db.execute("DELETE FROM addresses WHERE seq IN (SELECT seq FROM temp.hiding)")
    hidden = db.execute("UPDATE messages SET deleted = 1 WHERE seq IN (SELECT seq FROM temp.hiding)").rowcount
    db.execute("DELETE FROM temp.hiding")
    return int(hidden)


def _insert(db: sqlite3.Connection, entry: Entry) -> int:
    """Catalogue one entry; its seq, or 0 when an entry of its id is already there."""
    cursor = db.execute(
        "INSERT INTO messages (id, domain, inode, offset, length, received, mail_from, rcpt_to, header_from, "
        "header_to, header_cc, subject, date, message_id, size, snippet, attachment_count, problem) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            entry.id,
            entry.domain,
            entry.inode,
            entry.offset,
            entry.length,
            entry.received,
            entry.mail_from,
            json.dumps(list(entry.rcpt_to), ensure_ascii=False),
            entry.header_from,
            entry.header_to,
            entry.header_cc,
            entry.subject,
            entry.date,
            entry.message_id,
            entry.size,
            entry.snippet,
            len(entry.attachments),
            entry.problem,
        ),
    )
    if cursor.rowcount != 1:
        return 0
    seq = cursor.lastrowid
    assert seq is not None
    senders = [normal_address(entry.mail_from)] if entry.mail_from else []
    senders += [normal_address(address) for address in entry.from_addresses]
    recipients = [normal_address(address) for address in (*entry.rcpt_to, *entry.to_addresses)]
    senders, recipients = list(dict.fromkeys(senders)), list(dict.fromkeys(recipients))
    db.executemany(
        "INSERT INTO addresses (seq, role, address, domain) VALUES (?, ?, ?, ?)",
        [(seq, "from", address, address_domain(address)) for address in senders]
        + [(seq, "to", address, address_domain(address)) for address in recipients],
    )
    db.executemany(
        "INSERT INTO attachments (seq, idx, filename, content_type, size, sha256) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (seq, idx, attachment.filename, attachment.content_type, attachment.size, attachment.sha256)
            for idx, attachment in enumerate(entry.attachments)
        ],
    )
    db.execute(
        "INSERT INTO message_text (rowid, subject, body, addresses) VALUES (?, ?, ?, ?)",
        (seq, entry.subject, entry.text, " ".join(dict.fromkeys(senders + recipients))),
    )
    return seq


def _summary(row: Sequence[Any]) -> Summary:
    """A Summary from the row of _SUMMARY_COLUMNS (further columns after them are ignored)."""
    seq, id, domain, received, mail_from, rcpt_to, header_from, header_to, header_cc = row[:9]
    subject, date, message_id, size, snippet, attachment_count, problem = row[9:16]
    return Summary(
        seq=seq,
        id=id,
        domain=domain,
        received=iso_time(received),
        mail_from=mail_from,
        rcpt_to=tuple(json.loads(rcpt_to)),
        header_from=header_from,
        header_to=header_to,
        header_cc=header_cc,
        subject=subject,
        date=date,
        message_id=message_id,
        size=size,
        snippet=snippet,
        attachment_count=attachment_count,
        problem=problem,
    )


def _attachments(db: sqlite3.Connection, seq: int) -> tuple[AttachmentSummary, ...]:
    rows = db.execute(
        "SELECT filename, content_type, size, sha256 FROM attachments WHERE seq = ? ORDER BY idx", (seq,)
    ).fetchall()
    return tuple(AttachmentSummary(*row) for row in rows)


def _not_a_database(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)
