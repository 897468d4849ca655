"""Benchmarks of the inspector's catalogue, JSON API and event stream (issue 12's performance goals).

Everything runs on the host as real processes (`python -m maillab_server serve`,
`python -m maillab_inspector serve` and `reindex`) on loopback and real files in a
temporary folder, and prints one markdown table, each measure beside its goal:

- reindex: `inspector reindex` over 100,000 agent-like messages in 4 domain files, with its
  pool of processes and with POOL_WORKERS forced to 1 (the same command, run in-process);
- with those 100,000 catalogued: the first page of GET /api/v1/messages and full-text and
  address searches, over one keep-alive connection, and `serve`'s peak RSS;
- wait: /api/v1/wait?query=message-id:<id> started before each message is sent, paced at 500
  msgs/s (for each message, then for one in 25) and at 100; latency from the server's `250` to
  the wait's answer, beside the same messages' event lag (the catalogue's share); measured over
  10 s after a 2 s warm-up at the same rate, whose waits are reported apart;
- ingest: senders as fast as the server takes them for 60 s, an /api/v1/events client
  timing each message's event; lag from `250` to the event, early and late in the run.

    python -m bench.web [--messages 100000] [--rates 500,100] [--wait-seconds 10] [--wait-warmup 2]
                        [--ingest-seconds 60] [--only reindex,queries,wait,ingest]

The load average is printed first and last: the figures move with what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, MutableSequence, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

from bench.common import (
    free_port,
    percentile,
    print_load_at_end,
    print_load_at_start,
    start_process,
    stop_process,
    wait_for_port,
)
from bench.inspector import agent_like, synthetic
from bench.server import memory_kib
from maillab_common.forward import render_record

DOMAINS = 4
COLOURS = ("red", "orange", "yellow", "green", "blue", "indigo", "violet", "black", "white", "grey")
TOPICS = 1000  # ref000x .. ref999x: one topic word a message, each in 1 message of TOPICS
READY_TIMEOUT = 120.0


# --- messages -----------------------------------------------------------------------------------------


class Shaper:
    """Agent-like messages (a text body, a 1 KiB base64 attachment, a boundary of their own) made
    from one rendered template by byte replacement: as fast as a copy, 100,000 in seconds."""

    def __init__(self) -> None:
        self.template = agent_like(0)
        for part in (b"To: r0@d0.test\n", b"batch message 0\n", b"message 0 of the batch.", b"<0.batch@", b"bench0"):
            assert self.template.count(part) >= 1, part

    def message(self, number: int, message_id: str | None = None) -> bytes:
        colour, topic = COLOURS[number % len(COLOURS)], number % TOPICS
        message = self.template.replace(b"To: r0@d0.test\n", b"To: r%d@d%d.test\n" % (number, number % DOMAINS))
        message = message.replace(b"batch message 0\n", b"batch message %d %s\n" % (number, colour.encode()))
        message = message.replace(
            b"message 0 of the batch.", b"message %d of the batch, on topic ref%03dx." % (number, topic)
        )
        if message_id is None:
            message = message.replace(b"<0.batch@", b"<%d.batch@" % number)
        else:
            message = message.replace(b"<0.batch@bench.test>", f"<{message_id}>".encode())
        return message.replace(b"bench000000000000", b"bench%012d" % number)


def build_forward(folder: Path, messages: int) -> int:
    """`messages` agent-like messages in DOMAINS forward files, received one second apart; bytes in all."""
    folder.mkdir()
    shaper = Shaper()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for domain in range(DOMAINS):
        with open(folder / f"d{domain}.test", "wb") as file:
            for number in range(domain, messages, DOMAINS):
                delivery = replace(
                    synthetic(shaper.message(number)),
                    rcpt_tos=(f"r{number}@d{domain}.test",),
                    transaction_id=f"W{number}",
                    received_at=base + timedelta(seconds=number),
                )
                file.write(render_record(delivery))
    return sum(path.stat().st_size for path in folder.iterdir())


# --- reindex ------------------------------------------------------------------------------------------

# `inspector reindex` itself, with the pool of processes turned off (cataloguing reads the
# setting when it runs): the same command and code path, one process.
SINGLE_PROCESS_REINDEX = (
    "import sys; import maillab_inspector.cataloguing as c; c.POOL_WORKERS = 1; "
    "from maillab_inspector.__main__ import main; sys.argv = ['maillab-inspector', *sys.argv[1:]]; main()"
)


def reindex(forward: Path, catalogue: Path, single_process: bool) -> tuple[float, float]:
    """Seconds of `inspector reindex` over `forward` into `catalogue`, and its CPU seconds (its workers' included)."""
    head = ["-c", SINGLE_PROCESS_REINDEX] if single_process else ["-m", "maillab_inspector"]
    argv = [sys.executable, *head, "reindex", "--catalogue", str(catalogue), "--forward-dir", str(forward)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


# --- processes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inspector:
    process: subprocess.Popen[str]
    port: int


@contextmanager
def inspector_serving(work: Path, name: str, forward: Path, catalogue: Path) -> Iterator[Inspector]:
    """`inspector serve` on `forward` and `catalogue` (text output, to /dev/null, as in compose), once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "MAILLAB_FORWARD_DIR": str(forward),
        "MAILLAB_CATALOGUE": str(catalogue),
        "MAILLAB_STATE_FILE": str(work / f"{name}-positions.sqlite3"),
        "MAILLAB_READY_FILE": str(work / f"{name}.ready"),
        "MAILLAB_HTTP_READY_FILE": str(work / f"{name}.http"),
        "MAILLAB_HTTP_PORT": str(port),
        "MAILLAB_OUTPUT": "text",
    }
    process = start_process([sys.executable, "-m", "maillab_inspector", "serve"], env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (work / f"{name}.http").exists() or not (work / f"{name}.ready").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inspector serve did not start (exit {process.poll()})")
            time.sleep(0.05)
        yield Inspector(process, port)
    finally:
        stop_process(process)


@contextmanager
def server_running(forward: Path) -> Iterator[int]:
    """The real server on a free port, storing into `forward`; its port once it listens."""
    port = free_port()
    forward.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MAILLAB_LOG_LEVEL": "warning",
        "MAILLAB_TLS_DIR": str(forward.with_name(forward.name + "-tls")),
    }
    argv = ["serve", "--listen-host", "127.0.0.1", "--port", str(port), "--forward-dir", str(forward)]
    server = start_process([sys.executable, "-m", "maillab_server", *argv], env)
    try:
        wait_for_port(port, timeout=60)
        yield port
    finally:
        stop_process(server)


def spawned_by(pid: int) -> list[int]:
    """The processes that `pid` spawned to run its own code (serve's catalogue process), not
    multiprocessing's resource tracker, from /proc; those that end meanwhile are left out."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in map(int, (task / "children").read_text().split()):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
    except FileNotFoundError:
        pass
    return found


def peak_rss_mib(pid: int) -> float:
    """The peak RSS (VmHWM) of `pid` and of the processes it spawned, added up: serve and its catalogue process."""
    total = 0
    for process in [pid, *spawned_by(pid)]:
        with contextlib.suppress(FileNotFoundError):
            total += memory_kib(process, "VmHWM")
    return total / 1024


def get_json(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, object]]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def health(port: int) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return get_json(connection, "/api/v1/health")[1]
    finally:
        connection.close()


# --- queries with 100,000 stored ----------------------------------------------------------------------


def search_queries(messages: int) -> list[tuple[str, str]]:
    """(what it is, query): free words matching few, some and many messages, a phrase, addresses."""
    one = messages // 2 + 1
    return [
        ("a word in 1 message", str(one)),
        ("a word in 0.1 %", "ref042x"),
        ("a word in 10 %", "indigo"),
        ("a word in every message", "hello"),
        ("two words: 10 % and 0.1 %", "indigo ref045x"),
        ("a phrase", f'"this is message {one}"'),
        ("subject: a word in 10 %", "subject:violet"),
        ("to: one address", f"to:r{one}@d{one % DOMAINS}.test"),
        ("to: a whole domain (25 %)", "to:d1.test"),
    ]


def timed_gets(connection: http.client.HTTPConnection, paths: Sequence[str], rounds: int) -> dict[str, list[float]]:
    """Each path `rounds` times, the paths in turn (noise falls on all alike); seconds per request."""
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            times[path].append(time.perf_counter() - started)
            assert response.status == 200, (path, response.status)
    return times


@dataclass(frozen=True)
class QueryTimes:
    page: list[float]  # seconds per first-page request
    searches: dict[str, list[float]]  # seconds per request, by search
    texts: dict[str, str]  # each search's query
    totals: dict[str, int]  # how many messages each search matches
    rss_mib: float  # serve's peak RSS

    @property
    def every_search(self) -> list[float]:
        return [seconds for values in self.searches.values() for seconds in values]


def queries(work: Path, forward: Path, catalogue: Path, messages: int, requests: int) -> QueryTimes:
    """With `messages` catalogued: the first page and the searches, timed, and serve's peak RSS."""
    with inspector_serving(work, "queries", forward, catalogue) as inspector:
        stored = health(inspector.port)
        assert stored["messages"] == messages, stored
        connection = http.client.HTTPConnection("127.0.0.1", inspector.port, timeout=30)
        try:
            first_page = "/api/v1/messages?limit=50"
            timed_gets(connection, [first_page], 20)  # warm: the page cache, the interpreter's
            page = timed_gets(connection, [first_page], requests)[first_page]
            texts = dict(search_queries(messages))
            paths = {
                name: "/api/v1/messages?" + urllib.parse.urlencode({"query": text, "limit": 50})
                for name, text in texts.items()
            }
            totals = {name: int(str(get_json(connection, path)[1]["total"])) for name, path in paths.items()}
            times = timed_gets(connection, list(paths.values()), max(1, requests // len(paths)))
        finally:
            connection.close()
        rss = peak_rss_mib(inspector.process.pid)
    searches = {name: times[path] for name, path in paths.items()}
    return QueryTimes(page=page, searches=searches, texts=texts, totals=totals, rss_mib=rss)


# --- senders (in processes of their own) -----------------------------------------------------------


def wait_id(index: int) -> str:
    return f"wait-{index}@bench.test"


def send_paced(
    port: int, start: float, rate: float, connections: int, acked: MutableSequence[float], done: Synchronized[int]
) -> float:
    """Message i (Message-ID wait_id(i)) sent at `start` + i / `rate` over `connections` sessions; when
    each 250 came into `acked[i]`, and how many came into `done`; returns this process's CPU seconds."""
    shaper = Shaper()

    def send(worker: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            for index in range(worker, len(acked), connections):
                data = shaper.message(index, wait_id(index))
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                client.sendmail("sender@bench.test", [f"r{index}@d{index % DOMAINS}.test"], data)
                acked[index] = time.monotonic()
                with done.get_lock():
                    done.value += 1

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.process_time()


def send_flat_out(port: int, prefix: str, start: float, seconds: float, connections: int) -> dict[str, float]:
    """As many messages as the server takes from `start` for `seconds`, over `connections` sessions."""
    shaper = Shaper()
    acked: dict[str, float] = {}

    def send(worker: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            delay = start - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            number = 0
            while time.monotonic() < start + seconds:
                message_id = f"{prefix}-{worker}-{number}@bench.test"
                client.sendmail(
                    "sender@bench.test", [f"r{number}@d{number % DOMAINS}.test"], shaper.message(number, message_id)
                )
                acked[message_id] = time.monotonic()
                number += 1

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acked


def spawned(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


# --- wait latency -------------------------------------------------------------------------------------


class WaitClient:
    """Waits on /api/v1/wait over keep-alive connections of a pool, in plain asyncio streams
    (a hand-made HTTP/1.1 GET: a fraction of an HTTP library's cost a request)."""

    def __init__(self, port: int, keep_alive: bool = True) -> None:
        self.port, self.keep_alive = port, keep_alive
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(await asyncio.open_connection("127.0.0.1", self.port))

    async def get(self, path: str) -> int:
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            status = await self._exchange(reader, writer, path)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            if not reused:
                raise
            # The server closed it while it sat idle (uvicorn's keep-alive timeout): a new one, as
            # any HTTP client does.
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            status = await self._exchange(reader, writer, path)
        if self.keep_alive:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status

    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


@dataclass(frozen=True)
class Waited:
    began: dict[int, float]  # when each wait's request was sent, by message index
    answered: dict[int, float]  # when each wait's 200 came, by message index
    failed: int  # waits that timed out or failed
    overshoot: list[float]  # how late the client's scheduler woke each time (its own delay), seconds
    cpu: float  # the client's CPU seconds


async def wait_for_each(
    port: int,
    count: int,
    start: float,
    rate: float,
    lead: float,
    done: Synchronized[int],
    keep_alive: bool = True,
    every: int = 1,
) -> Waited:
    """A wait for message i (each `every`-th) started `lead` s before it is due, and never more than `lead` s
    of messages ahead of the sender: a sender that falls behind its pace does not pile waits up in the server."""
    client = WaitClient(port, keep_alive)
    ahead = max(4, int(rate * lead))
    await client.open(2 * ahead if keep_alive else 0)
    began: dict[int, float] = {}
    answered: dict[int, float] = {}
    failed = 0
    overshoot: list[float] = []

    async def one(index: int) -> None:
        nonlocal failed
        query = urllib.parse.urlencode({"query": f"message-id:{wait_id(index)}", "timeout": 10})
        began[index] = time.monotonic()
        status = await client.get(f"/api/v1/wait?{query}")
        if status == 200:
            answered[index] = time.monotonic()
        else:
            failed += 1

    cpu = time.process_time()
    tasks = []
    index = 0
    while index < count:
        now = time.monotonic()
        while index < count and now >= start + index / rate - lead and index < done.value + ahead:
            if index % every == 0:
                tasks.append(asyncio.create_task(one(index)))
            index += 1
        await asyncio.sleep(0.001)
        overshoot.append(time.monotonic() - now - 0.001)
    await asyncio.gather(*tasks)
    client.close()
    return Waited(began, answered, failed, overshoot, time.process_time() - cpu)


def wait_latency(
    work: Path, rate: float, seconds: float, lead: float, connections: int, every: int = 1, warmup: float = 0.0
) -> dict[str, float]:
    """Wait latency at `rate` msgs/s, a wait for each `every`-th message; beside it the same messages'
    /api/v1/events lag, which tells the catalogue's share (the record read, catalogued and committed)
    from the wait's own.

    The run is `warmup` seconds longer than `seconds`, and the messages of those first seconds are
    reported apart (`warmup_*`): the lab's first messages at full rate meet cold processes (16
    sessions opened at once, first imports and statements), which is not the pace kept after."""
    forward = work / f"wait-{rate:g}-{every}-forward"
    count = int(rate * (warmup + seconds))
    warm = int(rate * warmup)  # the messages of the warm-up: sent at `rate` from the start
    context = multiprocessing.get_context("spawn")
    acked = context.Array("d", count, lock=False)
    done = context.Value("i", 0)
    with (
        server_running(forward) as smtp_port,
        inspector_serving(
            work, f"wait-{rate:g}-{every}", forward, work / f"wait-{rate:g}-{every}-catalogue.sqlite3"
        ) as inspector,
    ):
        events = EventReader(inspector.port)
        start = time.monotonic() + 2.0  # the sender's interpreter starts meanwhile
        sender = context.Process(target=send_paced, args=(smtp_port, start, rate, connections, acked, done))
        sender.start()
        try:
            waited = asyncio.run(wait_for_each(inspector.port, count, start, rate, lead, done, every=every))
        finally:
            sender.join()
        events.close()
    latencies = [waited.answered[index] - acked[index] for index in range(warm, count) if index in waited.answered]
    cold = [waited.answered[index] - acked[index] for index in range(warm) if index in waited.answered]
    lags = [
        events.arrived[wait_id(index)] - acked[index]
        for index in range(0, count, every)
        if index >= warm and wait_id(index) in events.arrived
    ]
    measured = [index for index in range(0, count, every) if index >= warm]  # the waits after the warm-up
    leads = [acked[index] - waited.began[index] for index in measured if index in waited.began]
    elapsed = max(acked) - start
    return {
        "rate": count / elapsed,
        "answered": len(latencies),
        "measured": len(measured),
        "warmup_answered": len(cold),
        "warmup_p99_ms": percentile(cold, 99) * 1000 if cold else float("nan"),
        "warmup_max_ms": max(cold, default=float("nan")) * 1000,
        "failed": sum(1 for index in measured if index not in waited.answered),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "event_p50_ms": percentile(lags, 50) * 1000,
        "event_p99_ms": percentile(lags, 99) * 1000,
        "events": len(lags),
        "began_p50_ms": percentile(leads, 50) * 1000,
        "overshoot_p99_ms": percentile(waited.overshoot, 99) * 1000,
        "client_cpu": waited.cpu / elapsed,
        "lead_ms": lead * 1000,
    }


# --- ingest at the server's full rate -----------------------------------------------------------------


class EventReader:
    """An /api/v1/events client in a thread of this process: when each message's event arrived, by Message-ID."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /api/v1/events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        self.buffer = b""
        while b"retry:" not in self.buffer:  # the stream is open: new messages from here on
            self.buffer += self.sock.recv(65536)
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        buffer = self.buffer
        while chunk := self.sock.recv(1 << 20):
            now = time.monotonic()
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    # HTTP/1.0: no chunked framing, the stream is the body as is.
                    if line.startswith(b"data: "):
                        self.arrived[json.loads(line[6:])["message_id"]] = now

    def close(self) -> None:
        """End the stream: the reading thread sees its end first (a socket closed under its recv fails it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


@dataclass(frozen=True)
class IngestRun:
    sent: int
    rate: float  # msgs/s the server took
    arrived: int  # messages whose event came
    slices: list[tuple[float, float, int]]  # each 10 s of the run: lag p50 ms, p99 ms, messages
    lags: list[float]  # seconds, each message's
    drained_s: float  # the last event after the last 250
    rss_mib: float  # serve's peak RSS


def warm(_: int) -> float:
    return time.monotonic()


def ingest(work: Path, seconds: float, senders: int, connections: int, drain: float = 60.0) -> IngestRun:
    forward = work / "ingest-forward"
    with (
        server_running(forward) as smtp_port,
        inspector_serving(work, "ingest", forward, work / "ingest-catalogue.sqlite3") as inspector,
        spawned(senders) as pool,
    ):
        list(pool.map(warm, range(4 * senders)))  # the senders' interpreters started
        events = EventReader(inspector.port)
        start = time.monotonic() + 1.0
        runs = [
            pool.submit(send_flat_out, smtp_port, f"ingest{sender}", start, seconds, connections)
            for sender in range(senders)
        ]
        acked: dict[str, float] = {}
        for run in runs:
            acked.update(run.result())
        last_ack = max(acked.values())
        deadline = time.monotonic() + drain
        while len(events.arrived.keys() & acked.keys()) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.1)
        arrived = dict(events.arrived)
        events.close()
        rss = peak_rss_mib(inspector.process.pid)
    lags = {key: arrived[key] - at for key, at in acked.items() if key in arrived}
    slices = []
    for begin in range(0, int(seconds), 10):
        window = [lag for key, lag in lags.items() if start + begin <= acked[key] < start + begin + 10]
        slices.append((percentile(window, 50) * 1000, percentile(window, 99) * 1000, len(window)))
    return IngestRun(
        sent=len(acked),
        rate=len(acked) / (last_ack - start),
        arrived=len(lags),
        slices=slices,
        lags=list(lags.values()),
        drained_s=max(arrived.values(), default=last_ack) - last_ack,
        rss_mib=rss,
    )


# --- the table ----------------------------------------------------------------------------------------


def ms(values: Sequence[float]) -> str:
    return f"p50 {percentile(values, 50) * 1000:.1f} ms, p99 {percentile(values, 99) * 1000:.1f} ms"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="stored messages for reindex and queries")
    parser.add_argument("--requests", type=int, default=500, help="requests for the first page, and for the searches")
    parser.add_argument("--rates", default="500,100", help="msgs/s for the wait case: the goal's, and a lower one")
    parser.add_argument("--wait-seconds", type=float, default=10.0, help="the wait case's measured seconds")
    parser.add_argument(
        "--wait-warmup", type=float, default=2.0, help="seconds at the same rate before them, reported apart"
    )
    parser.add_argument("--wait-lead", type=float, default=0.05, help="seconds a wait starts before its message")
    parser.add_argument("--wait-connections", type=int, default=16, help="SMTP sessions for the wait case")
    parser.add_argument(
        "--wait-every",
        type=int,
        default=25,
        help="also wait for one message in this many at the first rate: a suite's few waits among others' mail",
    )
    parser.add_argument("--ingest-seconds", type=float, default=60.0)
    parser.add_argument("--senders", type=int, default=2, help="sender processes for the ingest case")
    parser.add_argument("--connections", type=int, default=8, help="SMTP sessions per sender process")
    parser.add_argument("--only", default="reindex,queries,wait,ingest", help="comma-separated cases")
    args = parser.parse_args()
    only = set(args.only.split(","))
    began = print_load_at_start()
    print()
    print("| web measure | result | goal |")
    print("| --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="maillab-bench-web-") as folder:
        work = Path(folder)
        forward, catalogue = work / "stored-forward", work / "stored-catalogue.sqlite3"
        if only & {"reindex", "queries"}:
            started = time.perf_counter()
            size = build_forward(forward, args.messages)
            built = time.perf_counter() - started
            what = f"{args.messages:,} agent-like messages in {DOMAINS} files ({size / 1024**2:.0f} MiB)"
            print(f"| writing the forward files: {what} | {built:.1f} s | |")
            pooled, pooled_cpu = reindex(forward, catalogue, single_process=False)
            db = catalogue.stat().st_size / 1024**2
            print(
                f"| `inspector reindex` over them (pool of processes) | {pooled:.1f} s "
                f"({args.messages / pooled:,.0f} msgs/s, {pooled_cpu:.0f} s CPU; catalogue {db:.0f} MiB) "
                f"| <= 60 s: {verdict(pooled <= 60)} |"
            )
        if "reindex" in only:
            single, single_cpu = reindex(forward, work / "single-catalogue.sqlite3", single_process=True)
            print(
                f"| the same with POOL_WORKERS = 1 (one process) | {single:.1f} s "
                f"({args.messages / single:,.0f} msgs/s, {single_cpu:.0f} s CPU); the pool is {single / pooled:.2f}x "
                f"as fast | |"
            )
            for stale in work.glob("single-catalogue.sqlite3*"):
                stale.unlink()
        if "queries" in only:
            found = queries(work, forward, catalogue, args.messages, args.requests)
            met = percentile(found.page, 99) <= 0.010
            print(
                f"| first page of GET /api/v1/messages (limit 50), {len(found.page)} requests, keep-alive "
                f"| {ms(found.page)} | p99 <= 10 ms: {verdict(met)} |"
            )
            for name, times in found.searches.items():
                print(f"| search, {name}: `{found.texts[name]}` ({found.totals[name]:,} match) | {ms(times)} | |")
            every = found.every_search
            met = percentile(every, 50) <= 0.020 and percentile(every, 99) <= 0.100
            print(
                f"| every search above ({len(every)} requests, in turn) | {ms(every)} "
                f"| p50 <= 20 ms, p99 <= 100 ms: {verdict(met)} |"
            )
            print(
                "| peak RSS of `inspector serve` and its catalogue process (VmHWM, added) after the above "
                f"| {found.rss_mib:.0f} MiB "
                f"| <= 150 MiB: {verdict(found.rss_mib <= 150)} |"
            )
        shutil.rmtree(forward, ignore_errors=True)  # 200+ MiB less on the disk for the cases below
        for stale in work.glob("stored-catalogue.sqlite3*"):
            stale.unlink()
        cases = [(float(text), 1) for text in args.rates.split(",") if "wait" in only]
        if cases and args.wait_every > 1:
            cases.insert(1, (cases[0][0], args.wait_every))
        for rate, sampled in cases:
            lat = wait_latency(
                work, rate, args.wait_seconds, args.wait_lead, args.wait_connections, sampled, args.wait_warmup
            )
            waits = "each message" if sampled == 1 else f"one message in {sampled} ({rate / sampled:.0f} waits/s)"
            print(
                f"| `250` to the answer of /api/v1/wait?query=message-id:..., for {waits}, paced at {rate:.0f} msgs/s, "
                f"the {args.wait_seconds:g} s after a warm-up of {args.wait_warmup:g} s: {lat['rate']:.0f} msgs/s "
                f"({lat['answered']:.0f} of {lat['measured']:.0f} answered, {lat['failed']:.0f} failed) "
                f"| p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms "
                f"| p99 <= 100 ms at 500 msgs/s: {verdict(lat['p99_ms'] <= 100) if rate >= 500 else 'n/a'} |"
            )
            print(
                f"| the same messages' /api/v1/events events, in the same run ({lat['events']:.0f}): the "
                f"catalogue's share | p50 {lat['event_p50_ms']:.1f} ms, p99 {lat['event_p99_ms']:.1f} ms | |"
            )
            print(
                f"| the warm-up's {lat['warmup_answered']:.0f} waits, not counted above: the lab's first "
                f"{args.wait_warmup:g} s at that rate | p99 {lat['warmup_p99_ms']:.1f} ms, "
                f"max {lat['warmup_max_ms']:.1f} ms | |"
            )
            print(
                f"| the wait client itself: a wait sent (p50) before its `250`; its scheduler late by (p99, whole "
                f"run); its CPU (whole run) | {lat['began_p50_ms']:.0f} ms; {lat['overshoot_p99_ms']:.1f} ms; "
                f"{lat['client_cpu']:.0%} of a core | |"
            )
        if "ingest" in only:
            run = ingest(work, args.ingest_seconds, args.senders, args.connections)
            first, last = run.slices[0], run.slices[-1]
            grows = last[1] > 2 * max(first[1], 50.0)
            print(
                f"| ingest for {args.ingest_seconds:.0f} s, {args.senders} x {args.connections} SMTP sessions "
                f"flat out: server rate, events received | {run.rate:.0f} msgs/s, {run.arrived:,} of "
                f"{run.sent:,} (the last event {run.drained_s * 1000:.0f} ms after the last `250`) "
                f"| every message: {verdict(run.arrived == run.sent)} |"
            )
            print(
                f"| `250` to its /api/v1/events event: the first 10 s, the last 10 s "
                f"| p50 {first[0]:.0f} ms, p99 {first[1]:.0f} ms; p50 {last[0]:.0f} ms, p99 {last[1]:.0f} ms "
                f"| does not grow: {verdict(not grows)} |"
            )
            every_slice = ", ".join(f"{p99:.0f}" for _, p99, _ in run.slices)
            print(
                f"| the same, whole run: p50, p99, max; p99 of each 10 s | {ms(run.lags)}, "
                f"max {max(run.lags, default=float('nan')) * 1000:.0f} ms; {every_slice} ms | |"
            )
            print(
                "| peak RSS of `inspector serve` and its catalogue process (VmHWM, added) after the ingest "
                f"| {run.rss_mib:.0f} MiB | |"
            )
    print_load_at_end(began)


if __name__ == "__main__":
    main()
