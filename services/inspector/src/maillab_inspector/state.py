"""The watch's saved positions: how far each forward file has been printed.

An SQLite database (WAL) outside /forward (the inspector only reads that volume), one row
a forward file. `watch` saves a file's position after each message it prints, in one
small transaction, so that a restart (a kill -9 included) prints again at most the one
message that was being printed at that instant, and misses none. A state file of the
earlier JSON format is read once and replaced.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

Positions = dict[str, tuple[int, int]]  # file name -> (inode, offset)

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
    """The saved positions, or None when there are none (first start, or unreadable)."""
    if not path.exists():
        return None
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
    """A store holding `positions` whole, at `path`; a file there that is not one is replaced."""
    try:
        store = PositionStore(path)
    except sqlite3.DatabaseError as exc:
        log.warning("replacing the state file %s, which is not a positions database: %s", path, exc)
        for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        store = PositionStore(path)
    store.replace_all(positions)
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
