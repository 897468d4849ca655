"""Benchmark of the Python client's wait (issue 13's goal): what Lab.wait_for adds to the API's own wait.

Everything runs on the host as real processes (`python -m maillab_server serve` and
`python -m maillab_inspector serve`) on loopback, over a temporary folder. Each round sends
one message (its own Message-ID) over one SMTP session and waits for it in a thread that
started `--lead` seconds before, in one of two ways, the two alternating round by round so
that both see the same machine:

- the API's own wait: a raw `http.client` GET /api/v1/wait?query=message-id:<id> on a
  keep-alive connection, its body read as bytes;
- the client's: `Lab.wait_for("message-id:<id>")` on one Lab (one keep-alive httpx client),
  which returns Message objects.

The latency is from smtplib's `250` to the waiting thread having its answer. Then, with
the message there, a wait that answers at once, each way, from request to answer: the
client's cost alone, without the catalogue's share. The goal: the client adds at most
20 ms, p99. What it adds is measured pairwise: each round gives one difference (the
client's time less the API's own, both measured in that round), and the verdict is the
p99 of those differences, not the difference of two p99s taken from independent samples.

    python -m bench.client [--rounds 300] [--lead 0.02]

The load average is printed first and last: the figures move with what else the machine runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import smtplib
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from bench.web import inspector_serving
from maillab_client import Lab

GOAL_SECONDS = 0.020  # the most the client may add to the API's own wait, p99
WAIT_SECONDS = 10.0


@contextmanager
def server_running(forward: Path) -> Iterator[int]:
    """The real server on a free port (the classroom listener off), storing into `forward`."""
    port = free_port()
    forward.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MAILLAB_LOG_LEVEL": "warning", "MAILLAB_TLS_DIR": str(forward.with_name("tls"))}
    argv = ["--listen-host", "127.0.0.1", "--port", str(port), "--classroom-port", "0", "--forward-dir", str(forward)]
    server = start_process([sys.executable, "-m", "maillab_server", "serve", *argv], env)
    try:
        wait_for_port(port, timeout=60)
        yield port
    finally:
        stop_process(server)


def message(message_id: str) -> bytes:
    return (
        f"From: bench@client.test\r\nTo: r@wait.test\r\nSubject: wait {message_id}\r\n"
        f"Message-ID: <{message_id}>\r\n\r\nA message to wait for; code 123456.\r\n"
    ).encode()


class RawWait:
    """The API's own wait, as bare as a client gets: http.client on one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_SECONDS + 30)

    def wait(self, message_id: str) -> None:
        query = urllib.parse.urlencode({"query": f"message-id:{message_id}", "timeout": WAIT_SECONDS})
        self.connection.request("GET", f"/api/v1/wait?{query}")
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"the raw wait for {message_id} answered {response.status}: {body[:200]!r}")

    def close(self) -> None:
        self.connection.close()


class ClientWait:
    """The same wait through the client library."""

    def __init__(self, port: int) -> None:
        self.lab = Lab(f"http://127.0.0.1:{port}")

    def wait(self, message_id: str) -> None:
        [found] = self.lab.wait_for(f"message-id:{message_id}", timeout=WAIT_SECONDS)
        if found.message_id != message_id:
            raise RuntimeError(f"the client's wait for {message_id} found {found.message_id}")

    def close(self) -> None:
        self.lab.close()


def waited(wait: Callable[[str], None], message_id: str, send: Callable[[], None], lead: float) -> float:
    """Seconds from the `250` for the message to `wait` having it, `wait` started `lead` s before the send."""
    done: list[float] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            wait(message_id)
            done.append(time.perf_counter())
        except BaseException as exc:  # reported in the main thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(lead)
    send()
    accepted = time.perf_counter()
    thread.join()
    if failed:
        raise failed[0]
    return done[0] - accepted


def answered(wait: Callable[[str], None], message_id: str) -> float:
    """Seconds of a wait for a message already catalogued: the request, the look, the answer, its reading."""
    started = time.perf_counter()
    wait(message_id)
    return time.perf_counter() - started


def paired(samples: dict[str, list[float]]) -> list[float]:
    """Round by round, the client's time less the API's own in the same round."""
    return [client - raw for client, raw in zip(samples["client"], samples["raw"], strict=True)]


def ms(values: list[float], percent: int) -> str:
    return f"{percentile(values, percent) * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300, help="rounds of each way")
    parser.add_argument("--lead", type=float, default=0.02, help="seconds a wait starts before its message")
    args = parser.parse_args()
    began = print_load_at_start()
    latency: dict[str, list[float]] = {"raw": [], "client": []}
    at_once: dict[str, list[float]] = {"raw": [], "client": []}
    with tempfile.TemporaryDirectory(prefix="maillab-bench-client-") as folder:
        work = Path(folder)
        forward = work / "forward"
        with (
            server_running(forward) as smtp_port,
            inspector_serving(work, "client", forward, work / "catalogue.sqlite3") as inspector,
        ):
            ways: dict[str, RawWait | ClientWait] = {
                "raw": RawWait(inspector.port),
                "client": ClientWait(inspector.port),
            }
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
                try:
                    for round_ in range(args.rounds):
                        # Alternate which way goes first, so that neither always follows the other.
                        order = ("raw", "client") if round_ % 2 == 0 else ("client", "raw")
                        for name in order:
                            message_id = f"{name}-{round_}@bench.test"
                            data = message(message_id)

                            def send(data: bytes = data) -> None:
                                smtp.sendmail("bench@client.test", ["r@wait.test"], data)

                            latency[name].append(waited(ways[name].wait, message_id, send, args.lead))
                        for name in order:
                            at_once[name].append(answered(ways[name].wait, f"{name}-{round_}@bench.test"))
                finally:
                    for way in ways.values():
                        way.close()
    print()
    print(f"| wait, {args.rounds} rounds each way, interleaved | p50 ms | p99 ms |")
    print("| --- | --- | --- |")
    for label, values in (
        ("the API's own: http.client GET /api/v1/wait, `250` to answer", latency["raw"]),
        ("`Lab.wait_for`, `250` to answer", latency["client"]),
        ("the API's own, message already there: request to answer", at_once["raw"]),
        ("`Lab.wait_for`, message already there: request to answer", at_once["client"]),
    ):
        print(f"| {label} | {ms(values, 50)} | {ms(values, 99)} |")
    # Paired: each round measured both ways back to back, so client - raw within a round cancels
    # what the machine was doing then; the p99 of those differences is what the client adds.
    added = paired(latency)
    added_at_once = paired(at_once)
    verdict = "met" if percentile(added, 99) <= GOAL_SECONDS else "NOT met"
    print()
    print("| what the client adds (client - API, paired per round) | p50 ms | p99 ms | goal |")
    print("| --- | --- | --- | --- |")
    print(
        f"| `250` to answer | {percentile(added, 50) * 1000:+.1f} | {percentile(added, 99) * 1000:+.1f}"
        f" | p99 <= {GOAL_SECONDS * 1000:.0f} ms: {verdict} |"
    )
    print(
        f"| message already there | {percentile(added_at_once, 50) * 1000:+.1f}"
        f" | {percentile(added_at_once, 99) * 1000:+.1f} | |"
    )
    print_load_at_end(began)


if __name__ == "__main__":
    main()
