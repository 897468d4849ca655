"""Which waiting requests a catalogue commit wakes: only those it brought a message for that could match.

A `GET /wait` looks at the catalogue, and when too few messages match it sleeps until a commit
may have brought more. Woken by every commit, each of 500 waits a second would look again
at each of the commits that come meanwhile (hundreds a second at the server's full rate):
most of the time went into looks that could not find anything, and the waits fell seconds behind.

So each commit is read once, here, for the wake keys of what it brought (their Message-IDs,
domains and addresses: `Catalogue.arrivals`, query.arrival_keys), and it wakes the waits whose
`query.wake_key` is among them, and every wait whose query names no key (free text, sizes).
A wake is a reason to look again, never an answer: the wait's own look decides.

A wait that registers has looked at everything up to seq `after`. What the commits after
`after` brought may already have been read here before it registered; `recent` remembers,
for each key read lately, the last seq that brought it, so such a wait looks again at once
instead of sleeping past its message. Below `floor` nothing is remembered, and a wait from
before it looks again at once: the history's bound, commits that came while no one waited
(never read), and a commit of more than MOST_READ messages (a backlog caught up, never read:
its keys would be held in memory and remembered on the event loop, every request waiting).

One `Wakeups` per event loop (uvicorn's): its reader is a task on that loop, started by the
first wait and ended by `close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from starlette.concurrency import run_in_threadpool

from maillab_inspector.catalogue import Catalogue
from maillab_inspector.query import WakeKey

log = logging.getLogger(__name__)

HISTORY = 50_000  # keys remembered with the last seq that brought them (about 11 MiB): 20 s at 500 msgs/s
ON_LOOP_ROWS = 100  # commits of up to this many messages are read on the event loop itself
MOST_READ = 10_000  # commits of more messages (a backlog caught up) are not read: every wait looks again
IDLE_SECONDS = 5.0  # how long the reader waits for a commit before it looks whether it is still needed


class Wakeups:
    """The waits of one event loop, by the key each sleeps on, and the keys that the commits lately brought."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.read = catalogue.commits.latest  # every commit up to this seq has been read for its keys
        self.floor = self.read  # what commits after this seq brought is in `recent`
        self.recent: OrderedDict[WakeKey, int] = OrderedDict()  # the least lately brought first
        self._waiting: dict[WakeKey | None, dict[asyncio.Future[None], int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.failed = False  # reading a commit failed: every commit wakes every wait from then on

    async def next_arrival(self, key: WakeKey | None, after: int, timeout: float) -> bool:
        """Wait until a message after seq `after` with `key` (any message when None) may have been catalogued,
        for `timeout` seconds at most; whether one may have been."""
        if self._brought_since(key, after):
            return True
        if timeout <= 0 or self._closed:
            return False
        if self.failed:  # woken by every commit, as if no wait had a key
            return await self.catalogue.commits.wait(after=after, timeout=timeout) > after
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, {})[future] = after
        if self._reader is None or self._reader.done():
            # No wait was registered since the reader stopped: the commits since `read` are before this
            # wait's look, which saw them, and a later wait from before that look looks again (the floor).
            self.read = self.floor = max(self.read, after)
            self._reader = asyncio.ensure_future(self._read_commits())
        try:
            async with asyncio.timeout(timeout):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.pop(future, None)
                if not waiters:
                    del self._waiting[key]

    def close(self) -> None:
        """Stop reading commits, from the reader's loop (the application stops; Streams.close has ended the waits)."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()

    def _brought_since(self, key: WakeKey | None, after: int) -> bool:
        if after < self.floor:
            return True  # the commits up to `floor` came after it; what they brought is not remembered
        if key is None:
            return self.read > after
        return self.recent.get(key, 0) > after

    async def _read_commits(self) -> None:
        try:
            await self._read_each_commit()
        except Exception:
            # A catalogue that cannot be read here cannot be by the waits' looks either, which say so
            # to their clients; until then, no wait sleeps past its message for want of a wake.
            log.exception("reading the catalogue's commits for the waits failed: each commit now wakes every wait")
            self.failed = True
            self._wake_all()

    async def _read_each_commit(self) -> None:
        commits = self.catalogue.commits
        while self._waiting and not self._closed:
            latest = await commits.wait(after=self.read, timeout=IDLE_SECONDS)
            if latest <= self.read:
                continue
            if not self._waiting:
                # No one to wake: what this commit brought is not read, and a later wait from before it looks again.
                self.read = self.floor = latest
                break
            self._wake_keyless(latest)  # any message may match them: they need not wait for the keys
            if latest - self.read > MOST_READ:
                self.read = self.floor = latest
                self._wake_all()
                continue
            if latest - self.read <= ON_LOOP_ROWS:  # a few rows by seq: cheaper than a hop to a thread
                brought = self.catalogue.arrivals(self.read, latest)
            else:
                brought = await run_in_threadpool(self.catalogue.arrivals, self.read, latest)
            self.read = latest
            self._remember(brought)
            self._wake_keyed(brought)

    def _remember(self, brought: dict[WakeKey, int]) -> None:
        for key, seq in brought.items():
            self.recent[key] = seq
            self.recent.move_to_end(key)
        while len(self.recent) > HISTORY:
            _, seq = self.recent.popitem(last=False)
            self.floor = max(self.floor, seq)

    def _wake_keyed(self, brought: dict[WakeKey, int]) -> None:
        for key, waiters in self._waiting.items():
            last = brought.get(key) if key is not None else None
            if last is not None:
                _wake(waiters, last)

    def _wake_keyless(self, latest: int) -> None:
        _wake(self._waiting.get(None, {}), latest)

    def _wake_all(self) -> None:
        everything = self.catalogue.commits.latest + 1  # past what any wait has looked at
        for waiters in self._waiting.values():
            _wake(waiters, everything)


def _wake(waiters: dict[asyncio.Future[None], int], last: int) -> None:
    """Wake each of `waiters` that looked before the seq `last`."""
    for future, after in waiters.items():
        if last > after and not future.done():
            future.set_result(None)
