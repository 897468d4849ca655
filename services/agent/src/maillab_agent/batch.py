"""Sending many messages over a few reused SMTP connections, with bounded retries.

Each of `concurrency` workers on one event loop keeps one connection open and sends
message after message on it, pipelined where the server offers PIPELINING. A 4xx reply or
a dropped connection is retried with a growing pause for up to `retry_for` seconds (long
enough to ride out a server restart); a 5xx reply is final. A message whose content went
out without a reply coming back is retried with XMAILLAB-ONCE, so that a copy the server
stored before it crashed is not stored twice. An asyncio client was chosen over smtplib
in threads by measuring: docs/benchmarks.md has the figures. What was sent, and how each
message ended, is written as a maillab_common.manifest document.
"""

from __future__ import annotations

import asyncio
import heapq
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maillab_agent.message import Outgoing
from maillab_agent.smtp import Accepted, Envelope, Refused, SmtpClient, SmtpConnectionError, SmtpError, wire_data
from maillab_common import manifest
from maillab_common.loop import run

RETRY_FOR = 30.0
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
    accepted_at: float = 0.0  # Unix time (time.time()) the final 250 arrived; 0.0 when not accepted


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
    def partly_refused(self) -> int:
        """Accepted messages that some recipient refused."""
        return sum(outcome.accepted and bool(outcome.refused) for outcome in self.outcomes)

    @property
    def retried(self) -> int:
        return sum(outcome.attempts > 1 for outcome in self.outcomes)

    def latency_percentile(self, percent: int) -> float:
        latencies = sorted(outcome.latency for outcome in self.outcomes)
        if len(latencies) < 2:
            return latencies[0] if latencies else 0.0
        return statistics.quantiles(latencies, n=100, method="inclusive")[percent - 1]


@dataclass
class _Job:
    index: int
    started: float
    attempt: int = 1
    maybe_stored: bool = False  # an attempt's content went out and no reply came back


class _Jobs:
    """The messages still to send, fresh ones and retries due later, shared by all workers."""

    def __init__(self, count: int, rate: float | None) -> None:
        self._fresh = iter(range(count))
        self._fresh_left = count
        self._retries: list[tuple[float, int, _Job]] = []  # a heap by due time
        self._interval = 1 / rate if rate else 0.0
        self._next_start = 0.0

    def take(self) -> _Job | None:
        """A job due now, or None when none is (see `wait`)."""
        now = time.monotonic()
        if self._retries and self._retries[0][0] <= now:
            return heapq.heappop(self._retries)[2]
        if not self._fresh_left or now < self._next_start:
            return None
        self._fresh_left -= 1
        self._next_start = max(self._next_start, now) + self._interval
        return _Job(index=next(self._fresh), started=now)

    def retry(self, job: _Job) -> None:
        pause = min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(job.attempt - 1, 16))  # retries are bounded by time
        job.attempt += 1
        heapq.heappush(self._retries, (time.monotonic() + pause, job.index, job))

    def wait(self) -> float | None:
        """Seconds until a job is due (0: now); None when nothing is left to take."""
        due = [self._retries[0][0]] if self._retries else []
        if self._fresh_left:
            due.append(self._next_start)
        return max(0.0, min(due) - time.monotonic()) if due else None


async def send_batch_async(
    messages: Sequence[Outgoing],
    *,
    host: str,
    port: int,
    concurrency: int,
    timeout: float,
    rate: float | None = None,
    retry_for: float = RETRY_FOR,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> BatchReport:
    jobs = _Jobs(len(messages), rate)
    outcomes: list[Outcome] = []
    # Each message's DATA payload, made at its first attempt and sent on every retry; let go
    # once the message has its outcome, so that at most the messages in play hold two copies.
    wires: dict[int, bytes] = {}

    def envelope(job: _Job) -> Envelope:
        message = messages[job.index]
        data = wires.get(job.index)
        if data is None:
            data = wires[job.index] = wire_data(message.data)
        return Envelope(mail_from=message.mail_from, rcpt_tos=message.rcpt_tos, data=data, once=job.maybe_stored)

    def settle(job: _Job, result: Accepted[_Job] | Refused[_Job] | SmtpConnectionError) -> None:
        if isinstance(result, Accepted):
            # Accepted, if only for some recipients: sending again would repeat it to the others.
            reply = (
                "250 accepted"
                if not result.refused
                else "accepted; refused " + "; ".join(f"{rcpt}: {rep}" for rcpt, rep in result.refused.items())
            )
            finish(job, True, reply, tuple(result.refused))
            return
        refused: tuple[str, ...] = ()
        if isinstance(result, SmtpConnectionError):
            reply, transient = f"connection failed: {result}", True
        else:
            error = result.error
            reply, refused = f"{error.stage}: {error.reply}", tuple(error.refused)
            if error.stage == "rcpt":
                reply = "every recipient refused: " + "; ".join(f"{r}: {rep}" for r, rep in error.refused.items())
            transient = error.reply.transient and all(rep.transient for rep in error.refused.values())
        if transient and time.monotonic() - job.started < retry_for:
            jobs.retry(job)
        else:
            finish(job, False, reply, refused)

    def finish(job: _Job, accepted: bool, reply: str, refused: tuple[str, ...]) -> None:
        wires.pop(job.index, None)
        accepted_at = time.time() if accepted else 0.0
        outcome = Outcome(job.index, accepted, job.attempt, reply, refused, time.monotonic() - job.started, accepted_at)
        outcomes.append(outcome)
        on_outcome(outcome)

    async def work() -> None:
        client: SmtpClient | None = None
        try:
            while (wait := jobs.wait()) is not None:
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                in_flight: list[_Job] = []

                def take(in_flight: list[_Job] = in_flight) -> _Job | None:
                    job = jobs.take()
                    if job is not None:
                        in_flight.append(job)
                    return job

                try:
                    if client is None:
                        try:
                            client = await SmtpClient.connect(host, port, timeout=timeout)
                        except SmtpError as exc:  # a 421 greeting (too many connections), say
                            raise SmtpConnectionError(f"{exc.stage}: {exc.reply}") from exc
                    async for result in client.send_stream(take, envelope):
                        in_flight.remove(result.job)
                        settle(result.job, result)
                        if isinstance(result, Refused) and result.error.reply.code == 421:
                            raise SmtpConnectionError(f"the server is closing the connection: {result.error.reply}")
                except SmtpConnectionError as exc:
                    if client is not None:
                        client.abort()
                        client = None
                    if not in_flight:
                        take()  # no connection: the next job is charged, so a server that stays down ends the batch
                    for job in in_flight:
                        job.maybe_stored |= job is exc.unanswered
                        settle(job, exc)
        finally:
            if client is not None:
                await client.quit()

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
    return run(send_batch_async(messages, **options))


def write_manifest(path: Path, *, seed: int, server: str, messages: Sequence[Outgoing], report: BatchReport) -> None:
    """Write the manifest of a batch whole or not at all (see maillab_common.manifest.write)."""
    sent = tuple(sent_message(messages[outcome.index], outcome) for outcome in report.outcomes)
    manifest.write(path, manifest.Manifest(seed=seed, server=server, messages=sent))


def sent_message(message: Outgoing, outcome: Outcome) -> manifest.SentMessage:
    """The manifest's entry for `message`, which ended as `outcome` says."""
    return manifest.SentMessage(
        message_id=message.message_id,
        mail_from=message.mail_from,
        rcpt_tos=message.rcpt_tos,
        subject=message.subject,
        size=len(message.data),
        attachments=tuple(
            manifest.SentAttachment(
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=len(attachment.data),
                sha256=attachment.sha256,
            )
            for attachment in message.attachments
        ),
        accepted=outcome.accepted,
        refused=outcome.refused,
        reply=outcome.reply,
        attempts=outcome.attempts,
        accepted_at=outcome.accepted_at,
    )
