"""Which commits wake a wait (web/wakeups.py): when reading a commit fails, no wait is left asleep.

The keyed wake-ups themselves are tested beside the wait route, in test_web_api.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from maillab_inspector.catalogue import Catalogue
from maillab_inspector.query import WakeKey
from maillab_inspector.web.wakeups import Wakeups
from tests.helpers import TIMEOUT


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
