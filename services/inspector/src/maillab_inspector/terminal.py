"""What `watch` prints: JSON lines, or for a person panels that give way to lines and rates.

The watcher (watcher.py) hands each record on with how long it waited since it was read;
an output here shows it and says when everything handed on so far has been shown, which is
when its position may be saved. JSON output shows every message in full, always: scripts
read it. The terminal output asks the pacer (pace.py) how much of each message to show,
says so on a line of its own when that changes, and costs no more than what it shows: a
panel parses the whole message, a line its headers (model.headline), a rate line nothing.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from rich.console import Console
from rich.text import Text

from maillab_common.forward import Record
from maillab_inspector import render, stored
from maillab_inspector.pace import Level, Pacer

SHOWN_AS = {Level.PANELS: "a panel per message", Level.LINES: "one line per message", Level.RATE: "a count per second"}


class Output(Protocol):
    def message(self, name: str, record: Record, waited: float) -> None:
        """Show (or count) the message `record` of the forward file `name`, read `waited` seconds ago."""

    def tick(self, now: float) -> None:
        """Called a few times a second, messages or not."""

    def finish(self) -> None:
        """Show what is held back (a count of the second under way): the watch is stopping."""

    @property
    def settled(self) -> bool:
        """Whether every message handed on so far has been shown."""


def emit(line: str) -> None:
    """Print `line` with its line end in one write, flushed: a kill -9 (or a reader of the pipe)
    never sees half a line, as with print(), whose text and end are two writes unbuffered
    (PYTHONUNBUFFERED, as in the images)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class JsonOutput:
    """One JSON line per message, each in full and flushed: never less, whatever the rate."""

    settled = True

    def message(self, name: str, record: Record, waited: float) -> None:
        summary = stored.summary(name, record)
        if summary is not None:
            emit(render.as_json(summary))

    def tick(self, now: float) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalOutput:
    """Panels while they keep up; one line per message, then a rate line per second, when they do not."""

    def __init__(
        self, console: Console, pacer: Pacer | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console, self.pacer, self.clock = console, pacer or Pacer(), clock
        self._counted: Counter[str] = Counter()  # messages of the second under way, at the rate level
        self._counting_since = 0.0

    @property
    def settled(self) -> bool:
        return not self._counted

    def message(self, name: str, record: Record, waited: float) -> None:
        before = self.pacer.level
        self.pacer.arrived(self.clock(), waited)
        if self.pacer.level != before:
            self._notice(render.fewer_details_notice(SHOWN_AS[self.pacer.level], waited))
        level = self.pacer.level
        if level == Level.RATE:
            if not self._counted:
                self._counting_since = self.clock()
            self._counted[name] += 1
            return
        started = time.perf_counter()
        if level == Level.PANELS:
            summary = stored.summary(name, record)
            if summary is not None:
                self.console.print(render.as_panel(summary))
        else:
            headline = stored.headline(name, record)
            if headline is not None:
                emit(render.as_line(headline))  # already made safe; rich would parse it as markup
        self.pacer.shown(level, time.perf_counter() - started)

    def tick(self, now: float) -> None:
        before = self.pacer.level
        if not self.pacer.tick(now):
            return
        self._print_count(now)
        if self.pacer.level != before:
            self._notice(render.more_details_notice(SHOWN_AS[self.pacer.level], self.pacer.rate))

    def finish(self) -> None:
        self._print_count(self.clock())

    def _print_count(self, now: float) -> None:
        if self._counted:
            emit(render.rate_line(dict(self._counted), now - self._counting_since))
            self._counted.clear()

    def _notice(self, text: str) -> None:
        self.console.print(Text(text, style="yellow"), soft_wrap=True)  # one line, to be found in a log
