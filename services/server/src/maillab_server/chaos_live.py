"""Rules changed while the server runs: `ChaosKeeper` watches `<chaos dir>/rules.json` and reports in `state.json`.

The files are maillab_common.chaos_files'. While rules.json exists its rules win over
MAILLAB_CHAOS, at start too (they survive a restart until cleared, which writes no rules);
removed, MAILLAB_CHAOS applies again. The keeper looks at the file four times a second,
on the event loop (a stat; the file is read only when it changed), so that a change
applies to the next command within a second. A file that does not parse is refused: an
error in the log, the rules applied stay, and state.json names its generation with the
`problem`, so that whoever set it learns it was refused.

state.json is written at start, at each change, when the counts changed (at most every
half second), and at shutdown, in a thread: its fsync never holds up a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from maillab_common.chaos import ChaosSyntaxError, Rule, parse_rules
from maillab_common.chaos_files import (
    FROM_ENVIRONMENT,
    FROM_FILE,
    RULES_FILE,
    ChaosFileError,
    read_rules,
    write_state,
)
from maillab_server.chaos import Chaos

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25  # seconds between looks at rules.json
STATE_INTERVAL = 0.5  # the least time between two writes of state.json for counts alone

_FileKey = tuple[int, int, int, int] | None  # what stat says of rules.json; None: there is none


class ChaosKeeper:
    """Keeps `chaos` on the rules of `directory`/rules.json, or `environment` (MAILLAB_CHAOS) without one."""

    def __init__(self, chaos: Chaos, directory: Path, environment: tuple[Rule, ...]) -> None:
        self.chaos = chaos
        self.directory = directory
        self._environment = environment
        self._seen: _FileKey = None
        self._written = -1  # chaos.changes when state.json was last written
        self._written_at = 0.0
        self._unwritable = False  # said once; said again only after a write succeeded
        self._writing: asyncio.Task[None] | None = None  # the write of state.json under way, if any
        # While loading: the log lines (level, message, arguments) to write once the server listens.
        self._notes: list[tuple[int, str, tuple[object, ...]]] | None = None

    def load(self) -> None:
        """At start, before the server listens: the rules file's rules if there is one (logged later, by run:
        the server's first line says where it listens)."""
        self._notes = []
        writable = os.access(self.directory, os.W_OK | os.X_OK)
        self._seen = self._stat()
        if self._seen is not None:
            self._reload()  # a rules.json that can be read applies, even from a folder that cannot be written
        if not writable:
            self._unwritable = True
            self._log(
                logging.WARNING,
                "chaos: the folder %s is missing or not writable: rules cannot be changed while the server"
                " runs, and their counts are not reported; %s applies",
                self.directory,
                RULES_FILE if self.chaos.source == FROM_FILE else "MAILLAB_CHAOS",
            )

    async def run(self) -> None:
        """Report the rules, then watch the file until cancelled (then `save`)."""
        notes, self._notes = self._notes or [], None
        for level, message, args in notes:
            log.log(level, message, *args)
        await self.save()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                if (key := self._stat()) != self._seen:
                    self._seen = key
                    self._reload()
                    await self.save()
                elif self.chaos.changes != self._written and time.monotonic() - self._written_at >= STATE_INTERVAL:
                    await self.save()
            except Exception:  # a bug: the rules stay as they are, the server goes on
                log.exception("chaos: watching %s failed", self.directory / RULES_FILE)

    async def save(self) -> None:
        """Write state.json with the rules applied and their counts now.

        One write at a time, in the order asked: a write whose caller was cancelled (the watcher,
        at shutdown) goes on in its thread, and the next waits for it, so that the older state
        never lands last.
        """
        while self._writing is not None and not self._writing.done():
            with contextlib.suppress(Exception):  # its own caller, if any, heard of it
                await asyncio.shield(self._writing)
        self._writing = asyncio.create_task(self._write())
        await asyncio.shield(self._writing)

    async def _write(self) -> None:
        changes, state = self.chaos.changes, self.chaos.state()
        self._written, self._written_at = changes, time.monotonic()
        try:
            await asyncio.to_thread(write_state, self.directory, state)
        except ChaosFileError as exc:
            if not self._unwritable:
                log.warning("chaos: counts not reported: %s", exc)
            self._unwritable = True
        else:
            self._unwritable = False

    def _stat(self) -> _FileKey:
        try:
            found = os.stat(self.directory / RULES_FILE)
        except OSError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_ctime_ns, found.st_size)

    def _reload(self) -> None:
        """Apply what rules.json holds now (or MAILLAB_CHAOS, if it went), or say why not."""
        chaos = self.chaos
        try:
            rules_file = read_rules(self.directory)
        except ChaosFileError as exc:
            self._refuse(chaos.generation, str(exc))
            return
        if rules_file is None:
            if chaos.source == FROM_FILE or chaos.problem:
                chaos.apply(self._environment, source=FROM_ENVIRONMENT)
                self._log(logging.INFO, "chaos: %s is gone: %s", RULES_FILE, _described(chaos.rules, "MAILLAB_CHAOS"))
            return
        if rules_file.generation == chaos.generation and not chaos.problem:
            return  # touched, not changed
        try:
            rules = parse_rules(rules_file.text)
        except ChaosSyntaxError as exc:
            self._refuse(rules_file.generation, f"{RULES_FILE}: {exc}")
            return
        chaos.apply(rules, source=FROM_FILE, generation=rules_file.generation)
        self._log(
            logging.INFO,
            "chaos: %s (generation %s, set by %s)",
            _described(rules, RULES_FILE),
            rules_file.generation,
            rules_file.set_by,
        )

    def _refuse(self, generation: str, problem: str) -> None:
        self._log(logging.ERROR, "chaos: not applied, the rules applied stay: %s", problem)
        self.chaos.refuse(generation, problem)

    def _log(self, level: int, message: str, *args: object) -> None:
        if self._notes is not None:
            self._notes.append((level, message, args))
        else:
            log.log(level, message, *args)


def _described(rules: tuple[Rule, ...], source: str) -> str:
    if not rules:
        return f"no rules from {source}"
    return f"{len(rules)} rule{'s' if len(rules) > 1 else ''} from {source}: " + "; ".join(map(str, rules))
