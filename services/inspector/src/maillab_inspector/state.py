"""The watch's saved positions: how far each forward file has been printed.

An SQLite database (WAL) outside /forward (the inspector only reads that volume), one row
a forward file. `watch` saves a file's position after each message it prints, in one
small transaction, so that a restart (a kill -9 included) prints again at most the one
message that was being printed at that instant, and misses none. A state file of the
earlier JSON format (at the configured path, or under its old default name beside it) is
read once, and the database takes its place.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

Positions = dict[str, tuple[int, int]]  # file name -> (inode, offset)

# Where inspectors before the database kept their JSON state, beside where it is now
# (compose's and a host's default names).
EARLIER_NAMES = ("offsets.json", "inspector.json")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS positions (file TEXT PRIMARY KEY, inode INTEGER NOT NULL, offset INTEGER NOT NULL)"
)


class PositionStore:
    """The positions database, open for `watch`'s saves; used from the thread that opened it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        try:
            # Without fsync at each commit, a commit survives a crash of the process (kill -9),
            # which is what the positions promise; a crash of the machine may lose the last ones.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def replace_all(self, positions: Mapping[str, tuple[int, int]]) -> None:
        """Make `positions` the saved ones, whole."""
        with self._transaction():
            self._db.execute("DELETE FROM positions")
            self._upsert(positions)

    def advance(self, positions: Mapping[str, tuple[int, int]]) -> None:
        """Save the positions of the files in `positions`; the other files keep theirs."""
        with self._transaction():
            self._upsert(positions)

    def close(self) -> None:
        self._db.close()

    def _upsert(self, positions: Mapping[str, tuple[int, int]]) -> None:
        self._db.executemany(
            "INSERT INTO positions (file, inode, offset) VALUES (?, ?, ?) "
            "ON CONFLICT (file) DO UPDATE SET inode = excluded.inode, offset = excluded.offset",
            [(name, inode, offset) for name, (inode, offset) in positions.items()],
        )

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db  # its context manager commits, or rolls back on an exception


def load_positions(path: Path) -> Positions | None:
    """The saved positions, or None when there are none (first start, or unreadable).

    Where there is no database yet, a state file of the JSON format that an earlier
    inspector kept beside it under its default name is read instead: an upgrade goes on
    from where the earlier watch stopped.
    """
    if not path.exists():
        earlier = next((path.with_name(name) for name in EARLIER_NAMES if path.with_name(name).is_file()), None)
        if earlier is None:
            return None
        log.info("reading the positions of an earlier inspector from %s", earlier)
        return _legacy_positions(earlier)
    legacy = _legacy_positions(path)
    if legacy is not None:
        return legacy
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT file, inode, offset FROM positions").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.warning("ignoring the state file %s, which cannot be read: %s", path, exc)
        return None
    return {str(name): (int(inode), int(offset)) for name, inode, offset in rows}


def open_positions(path: Path, positions: Positions) -> PositionStore:
    """A store holding `positions` whole, at `path`. A file there that is not a database, or a
    damaged one, is replaced; any other error (permissions, a full disk, a lock) is raised."""
    try:
        return _store_holding(path, positions)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", None)  # None: raised by the module, not by SQLite
        if code is None or code & 0xFF not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise
        log.warning("replacing the state file %s, which is not a positions database: %s", path, exc)
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    return _store_holding(path, positions)


def _store_holding(path: Path, positions: Positions) -> PositionStore:
    store = PositionStore(path)
    try:
        store.replace_all(positions)
    except BaseException:
        store.close()
        raise
    for name in EARLIER_NAMES:  # read once: a database deleted later must not bring them back
        earlier = path.with_name(name)
        if earlier != path and earlier.is_file():
            earlier.replace(earlier.with_name(name + ".migrated"))
    return store


def _legacy_positions(path: Path) -> Positions | None:
    """The positions in a state file of the JSON format (before SQLite), or None if it is not one."""
    try:
        with open(path, "rb") as file:
            if file.read(1) != b"{":
                return None
            document = json.loads(b"{" + file.read())
        return {str(name): (int(entry["inode"]), int(entry["offset"])) for name, entry in document["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring the state file %s, which cannot be read: %s", path, exc)
        return None
