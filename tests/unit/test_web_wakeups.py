"""Which commits wake a wait (web/wakeups.py) when they cannot be read, or are too many to read; and which
waits the fast path answers (web/quick_wait.py).

The keyed wake-ups themselves are tested beside the wait route, in test_web_api.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from maillab_inspector.catalogue import Catalogue
from maillab_inspector.query import WakeKey
from maillab_inspector.web import quick_wait
from maillab_inspector.web import wakeups as wakeups_module
from maillab_inspector.web.api_v1 import wait_for_matches
from maillab_inspector.web.wakeups import Wakeups
from tests.helpers import TIMEOUT
from tests.unit.test_web_api import Lab, TestClient


class UnreadableCatalogue(Catalogue):
    """A real catalogue whose commits cannot be read for their keys (say, a disk error)."""

    def arrivals(self, after: int, upto: int) -> dict[WakeKey, int]:
        raise sqlite3.OperationalError("disk I/O error")


def test_when_a_commit_cannot_be_read_every_wait_is_woken_and_then_every_commit_wakes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalogue = UnreadableCatalogue(tmp_path / "catalogue.sqlite3")
    key = ("message-id", "1@x.test")

    async def scenario() -> None:
        wakeups = Wakeups(catalogue)
        waiting = asyncio.ensure_future(wakeups.next_arrival(key, after=0, timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        catalogue.commits.publish(1)  # a commit of some message: it cannot be read
        assert await asyncio.wait_for(waiting, TIMEOUT) is True
        assert wakeups.failed
        # From then on a wait sleeps until the next commit, whatever it brought.
        later = asyncio.ensure_future(wakeups.next_arrival(key, after=1, timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        assert not later.done()
        catalogue.commits.publish(2)
        assert await asyncio.wait_for(later, TIMEOUT) is True
        assert await wakeups.next_arrival(key, after=2, timeout=0.1) is False
        wakeups.close()

    try:
        asyncio.run(scenario())
    finally:
        catalogue.close()
    assert "each commit now wakes every wait" in caplog.text


class ReadCountingCatalogue(Catalogue):
    """A real catalogue that notes each span of commits read for its keys."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.spans: list[tuple[int, int]] = []

    def arrivals(self, after: int, upto: int) -> dict[WakeKey, int]:
        self.spans.append((after, upto))
        return super().arrivals(after, upto)


def test_a_reader_that_starts_late_reads_neither_the_backlog_nor_a_commit_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog read for its keys would be held in memory and remembered on the event loop: every request
    would stall meanwhile (a 150,000-message backlog took 25 s before this was so)."""
    lab = Lab(tmp_path)
    lab.catalogue.close()
    catalogue = lab.catalogue = ReadCountingCatalogue(lab.catalogue.path)
    monkeypatch.setattr(wakeups_module, "MOST_READ", 3)

    async def scenario() -> None:
        wakeups = Wakeups(catalogue)
        for number in range(1, 6):  # committed while no wait is registered: the reader never ran
            lab.numbered(number)
        key = ("message-id", "9@x.test")
        waiting = asyncio.ensure_future(wakeups.next_arrival(key, after=5, timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        lab.numbered(6)
        await asyncio.sleep(0.2)
        assert catalogue.spans == [(5, 6)], "only what came after the wait's look is read"
        assert not waiting.done()
        for number in range(7, 12):
            lab.deliver(f"Message-ID: <{number}@x.test>\n\n{number}\n".encode(), catalogue=False)
        lab.catch_up()  # five messages in one commit: more than MOST_READ
        assert await asyncio.wait_for(waiting, TIMEOUT) is True, "not read, so every wait looks again"
        assert catalogue.spans == [(5, 6)]
        assert wakeups.read == wakeups.floor == 11
        wakeups.close()

    try:
        asyncio.run(scenario())
    finally:
        catalogue.close()


def test_a_plain_wait_is_answered_by_the_fast_path_and_an_unusual_one_by_the_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path)
    lab.numbered(1)
    answered: list[int] = []

    async def counted(*args: Any) -> tuple[int, dict[str, Any]]:
        answered.append(1)
        return await wait_for_matches(*args)

    monkeypatch.setattr(quick_wait, "wait_for_matches", counted)
    try:
        with TestClient(lab.app()) as client:
            assert client.get("/api/v1/wait", params={"timeout": "0"}).json()["matched"] == 1
            assert answered == [1]
            assert client.get("/api/v1/wait", params={"timeout": "0e0"}).json()["matched"] == 1
            assert answered == [1], "1e1-style numbers are the route's"
    finally:
        lab.catalogue.close()
