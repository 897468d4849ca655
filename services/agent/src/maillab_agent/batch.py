"""Sending many messages over a few reused SMTP connections, with bounded retries.

Each of `concurrency` workers on one event loop keeps one connection open and sends
message after message on it, pipelined where the server offers PIPELINING. A 4xx reply or
a dropped connection is retried with a growing pause; a 5xx reply is final. An asyncio
client was chosen over smtplib in threads by measuring: docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maillab_agent.message import Outgoing
from maillab_agent.smtp import Reply, SmtpClient, SmtpConnectionError, SmtpError

MAX_ATTEMPTS = 4
FIRST_PAUSE = 0.2
MAX_PAUSE = 2.0


@dataclass(frozen=True)
class Outcome:
    index: int
    accepted: bool
    attempts: int
    reply: str
    refused: tuple[str, ...]
    latency: float  # seconds, from the first attempt to the final reply


@dataclass(frozen=True)
class BatchReport:
    outcomes: tuple[Outcome, ...]
    elapsed: float
    bytes_sent: int

    @property
    def accepted(self) -> int:
        return sum(outcome.accepted for outcome in self.outcomes)

    @property
    def rejected(self) -> int:
        return len(self.outcomes) - self.accepted

    @property
    def retried(self) -> int:
        return sum(outcome.attempts > 1 for outcome in self.outcomes)

    def latency_percentile(self, percent: int) -> float:
        latencies = sorted(outcome.latency for outcome in self.outcomes)
        if len(latencies) < 2:
            return latencies[0] if latencies else 0.0
        return statistics.quantiles(latencies, n=100, method="inclusive")[percent - 1]


class _Session:
    """One worker's connection: opened when first needed, and opened again after a drop."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._client: SmtpClient | None = None

    async def send(self, outgoing: Outgoing) -> dict[str, Reply]:
        if self._client is None:
            self._client = await SmtpClient.connect(*self._address, timeout=self._timeout)
        return await self._client.send(outgoing.mail_from, outgoing.rcpt_tos, outgoing.wire)

    def drop(self) -> None:
        if self._client is not None:
            self._client.abort()
            self._client = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.quit()
            self._client = None


class _Pacer:
    """Spaces message starts `1/rate` seconds apart across all workers."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def send_one(session: _Session, outgoing: Outgoing, index: int) -> Outcome:
    started = time.monotonic()
    reply = ""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            refused = await session.send(outgoing)
        except SmtpError as exc:
            reply = f"{exc.stage}: {exc.reply}"
            if exc.stage == "rcpt":
                reply = "every recipient refused: " + "; ".join(f"{r}: {rep}" for r, rep in exc.refused.items())
            retry = exc.reply.transient and all(rep.transient for rep in exc.refused.values())
            if not retry:
                return Outcome(index, False, attempt, reply, tuple(exc.refused), time.monotonic() - started)
            if exc.reply.code == 421:
                session.drop()
        except SmtpConnectionError as exc:
            reply = f"connection failed: {exc}"
            session.drop()
        else:
            summary = "250 accepted" if not refused else "some recipients refused"
            return Outcome(index, not refused, attempt, summary, tuple(refused), time.monotonic() - started)
        if attempt < MAX_ATTEMPTS:
            await asyncio.sleep(min(MAX_PAUSE, FIRST_PAUSE * 2 ** (attempt - 1)))
    return Outcome(index, False, MAX_ATTEMPTS, reply, (), time.monotonic() - started)


async def send_batch_async(
    messages: Sequence[Outgoing],
    *,
    host: str,
    port: int,
    concurrency: int,
    timeout: float,
    rate: float | None = None,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> BatchReport:
    todo = iter(range(len(messages)))
    outcomes: list[Outcome] = []
    pacer = _Pacer(rate)

    async def work() -> None:
        session = _Session(host, port, timeout)
        try:
            for index in todo:  # one iterator shared by all workers
                await pacer.wait()
                outcome = await send_one(session, messages[index], index)
                outcomes.append(outcome)
                on_outcome(outcome)
        finally:
            await session.close()

    started = time.monotonic()
    await asyncio.gather(*(work() for _ in range(max(1, min(concurrency, len(messages))))))
    outcomes.sort(key=lambda outcome: outcome.index)
    return BatchReport(
        outcomes=tuple(outcomes),
        elapsed=time.monotonic() - started,
        bytes_sent=sum(len(messages[outcome.index].data) for outcome in outcomes if outcome.accepted),
    )


def send_batch(messages: Sequence[Outgoing], **options: Any) -> BatchReport:
    """send_batch_async on an event loop of its own."""
    return asyncio.run(send_batch_async(messages, **options))


def write_manifest(path: Path, *, seed: int, server: str, messages: Sequence[Outgoing], report: BatchReport) -> None:
    """Write the manifest whole or not at all: to a temporary file, then renamed."""
    entries = []
    for outcome in report.outcomes:
        entry = messages[outcome.index].manifest_entry()
        entry["accepted"] = outcome.accepted
        entry["refused"] = list(outcome.refused)
        entry["reply"] = outcome.reply
        entries.append(entry)
    document = {"seed": seed, "server": server, "count": len(messages), "messages": entries}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(document, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
