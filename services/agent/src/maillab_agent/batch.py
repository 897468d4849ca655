"""Sending many messages over a few reused SMTP connections, with bounded retries.

Each of `concurrency` worker threads keeps one connection open and sends message after
message on it. A 4xx reply or a dropped connection is retried with a growing pause; a
5xx reply is final. Threads were chosen over an asyncio client because smtplib is in the
standard library and the work is waiting on the server, which releases the GIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import smtplib
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from maillab_agent.message import Outgoing

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


class SmtpConnection:
    """One SMTP connection, opened when first needed and opened again after a drop."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._client: smtplib.SMTP | None = None

    def open(self) -> smtplib.SMTP:
        if self._client is None:
            client = smtplib.SMTP(*self._address, timeout=self._timeout)
            client.ehlo_or_helo_if_needed()
            self._client = client
        return self._client

    def send(self, outgoing: Outgoing) -> dict[str, tuple[int, bytes]]:
        return self.open().sendmail(outgoing.mail_from, list(outgoing.rcpt_tos), outgoing.data)

    def drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._client.quit()
            self.drop()


def reply_text(code: int, text: bytes | str) -> str:
    """An SMTP reply as one line for people, whatever smtplib handed over."""
    message = text.decode(errors="replace") if isinstance(text, bytes) else text
    return f"{code} {' '.join(message.split())}"


def refused_text(recipients: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {reply_text(code, text)}" for rcpt, (code, text) in recipients.items())


def send_one(connection: SmtpConnection, outgoing: Outgoing, index: int) -> Outcome:
    started = time.monotonic()
    reply = ""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            refused = connection.send(outgoing)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            reply = "every recipient refused: " + refused_text(exc.recipients)
            if not all(400 <= code < 500 for code in codes):
                return Outcome(index, False, attempt, reply, tuple(exc.recipients), time.monotonic() - started)
        except smtplib.SMTPResponseException as exc:
            reply = reply_text(exc.smtp_code, exc.smtp_error)
            if not 400 <= exc.smtp_code < 500:
                return Outcome(index, False, attempt, reply, (), time.monotonic() - started)
            if exc.smtp_code == 421:
                connection.drop()
        except (OSError, smtplib.SMTPException) as exc:
            reply = f"connection failed: {exc}"
            connection.drop()
        else:
            return Outcome(
                index,
                not refused,
                attempt,
                "250 accepted" if not refused else "some recipients refused",
                tuple(refused),
                time.monotonic() - started,
            )
        if attempt < MAX_ATTEMPTS:
            time.sleep(min(MAX_PAUSE, FIRST_PAUSE * 2 ** (attempt - 1)))
    return Outcome(index, False, MAX_ATTEMPTS, reply, (), time.monotonic() - started)


def send_batch(
    messages: Sequence[Outgoing],
    *,
    host: str,
    port: int,
    concurrency: int,
    timeout: float,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> BatchReport:
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(messages)):
        todo.put(index)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def work() -> None:
        connection = SmtpConnection(host, port, timeout)
        try:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                outcome = send_one(connection, messages[index], index)
                with lock:
                    outcomes.append(outcome)
                on_outcome(outcome)
        finally:
            connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(concurrency, len(messages))))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    outcomes.sort(key=lambda outcome: outcome.index)
    return BatchReport(
        outcomes=tuple(outcomes),
        elapsed=time.monotonic() - started,
        bytes_sent=sum(len(messages[outcome.index].data) for outcome in outcomes if outcome.accepted),
    )


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
