"""Inspector benchmarks: delivery-to-print latency, per-record cost by file size, memory,
the cost of many domain files, and of hostile messages.

Runs the real server and inspector as processes on loopback and real files in a temporary
folder. Prints a markdown table; docs/benchmarks.md keeps the latest results.

    python -m bench.inspector [--rate 500] [--seconds 5] [--big-gib 1] [--domains 20000]
                              [--messages 100000] [--only latency,cost,memory,domains,list,render,hostile]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from rich.console import Console

from bench.common import free_port, percentile, start_process, stop_process, wait_for_port
from maillab_common.forward import Delivery, Record, render_record
from maillab_inspector.model import headers_shown, headline, parse_headers, summarize
from maillab_inspector.render import as_json, as_line, as_panel
from maillab_inspector.tail import ForwardTail
from tests import hostile

ONE_KIB_BODY = (b"x" * 98 + b"\r\n") * 10


def latency(rate: float, seconds: float, work: Path) -> dict[str, float]:
    """Send at `rate` msgs/s; time from each 250 reply to the inspector printing that message."""
    forward, port = work / "latency-forward", free_port()
    forward.mkdir()
    env = {
        **os.environ,
        "MAILLAB_FORWARD_DIR": str(forward),
        "MAILLAB_SMTP_PORT": str(port),
        "MAILLAB_LOG_LEVEL": "warning",
        "MAILLAB_STATE_FILE": str(work / "state.json"),
        "MAILLAB_READY_FILE": str(work / "ready"),
    }
    server = start_process([sys.executable, "-m", "maillab_server"], env)
    inspector = start_process(
        [sys.executable, "-m", "maillab_inspector", "watch", "--json"], env, stdout=subprocess.PIPE
    )
    printed: dict[str, float] = {}
    acked: dict[str, float] = {}
    try:
        wait_for_port(port)
        while not (work / "ready").exists():
            time.sleep(0.05)

        def read() -> None:
            assert inspector.stdout is not None
            for line in inspector.stdout:
                printed[json.loads(line)["message_id"]] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        count = int(rate * seconds)
        senders = 4
        start = time.monotonic() + 0.2

        def send(worker: int) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for index in range(worker, count, senders):
                    delay = start + index / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    message_id = f"<lat-{index}@bench.test>"
                    data = b"Subject: latency\r\nMessage-ID: " + message_id.encode() + b"\r\n\r\n" + ONE_KIB_BODY
                    client.sendmail("bench@bench.test", [f"r{index % 3}@d{index % 3}.test"], data)
                    acked[message_id] = time.monotonic()

        threads = [threading.Thread(target=send, args=(worker,)) for worker in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent_rate = count / (max(acked.values()) - start)
        deadline = time.monotonic() + 30
        while len(printed) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        delays = [printed[key] - acked[key] for key in acked if key in printed]
        return {
            "messages": count,
            "rate": sent_rate,
            "printed": len(delays),
            "p50_ms": percentile(delays, 50) * 1000,
            "p99_ms": percentile(delays, 99) * 1000,
            "max_ms": max(delays) * 1000,
        }
    finally:
        stop_process(inspector)
        stop_process(server)


def synthetic(message: bytes) -> Delivery:
    return Delivery(
        mail_from="a@bench.test",
        rcpt_tos=("b@bench.test",),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        transaction_id="BENCH",
        helo="bench",
        peer="127.0.0.1",
        server_name="bench",
        tls=False,
        message=message,
    )


def per_record_cost(big_bytes: int, work: Path, records: int = 300) -> dict[str, float]:
    """Median time to read one appended record, from a huge forward file and from an empty one."""
    template = synthetic(b"Subject: cost\n\n" + b"y" * 100_000 + b"\n")
    filler = render_record(template)
    folder = work / "cost-forward"
    folder.mkdir()
    with open(folder / "big.test", "wb") as file:
        written = 0
        block = filler * 100
        while written < big_bytes:
            file.write(block)
            written += len(block)
    (folder / "empty.test").touch()
    tail = ForwardTail(folder)
    tail.skip_existing()
    costs: dict[str, list[float]] = {"big.test": [], "empty.test": []}
    for number in range(records):
        record = render_record(replace(template, transaction_id=f"R{number}", message=b"Subject: r\n\nsmall\n"))
        for name in costs:  # interleaved, so that noise falls on both alike
            with open(folder / name, "ab") as file:
                file.write(record)
            started = time.perf_counter()
            items = list(tail.poll(name))
            costs[name].append(time.perf_counter() - started)
            assert len(items) == 1
    big, empty = statistics.median(costs["big.test"]), statistics.median(costs["empty.test"])
    return {
        "big_bytes": os.path.getsize(folder / "big.test"),
        "big_us": big * 1e6,
        "empty_us": empty * 1e6,
        "ratio": big / empty,
    }


def memory_reading(work: Path, total_bytes: int, message_bytes: int) -> float:
    """Peak RSS (MiB) of `inspector list` over a forward file of `total_bytes` in messages of `message_bytes`."""
    folder = work / f"memory-{message_bytes}"
    folder.mkdir()
    record = render_record(synthetic(b"Subject: memory\n\n" + (b"z" * 999 + b"\n") * (message_bytes // 1000)))
    with open(folder / "mem.test", "wb") as file:
        for _ in range(max(1, total_bytes // len(record))):
            file.write(record)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "maillab_inspector", "list", "--forward-dir", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(peak, before) / 1024


def many_domains(work: Path, files: int, sweeps: int = 20) -> dict[str, float]:
    """An idle sweep (nothing new) and `inspector list` over `files` domain files of one message each."""
    folder = work / "domains-forward"
    folder.mkdir()
    for number in range(files):
        message = f"Subject: m{number}\nMessage-ID: <{number}@bench.test>\n\nbody {number}\n".encode()
        delivery = replace(synthetic(message), rcpt_tos=(f"b@d{number}.test",))
        (folder / f"d{number}.test").write_bytes(render_record(delivery))
    tail = ForwardTail(folder)
    started = time.perf_counter()
    first = sum(1 for _ in tail.poll_all())
    first_seconds = time.perf_counter() - started
    idle = []
    for _ in range(sweeps):
        started = time.perf_counter()
        assert next(iter(tail.poll_all()), None) is None
        idle.append(time.perf_counter() - started)
    started = time.perf_counter()
    listing = subprocess.run(
        [sys.executable, "-m", "maillab_inspector", "list", "--forward-dir", str(folder)],
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    list_seconds = time.perf_counter() - started
    assert first == files and listing.stdout.count(b"\n") == files
    return {"first_s": first_seconds, "idle_ms": statistics.median(idle) * 1000, "list_s": list_seconds}


def agent_like(number: int) -> bytes:
    """A message as the agent's batch sends it and the server stores it (LF line ends): a text
    body and a 1 KiB attachment, about 2 KiB in all; its own Subject, Message-ID and boundary."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "sender@bench.test"
    message["To"] = f"r{number}@d{number % 4}.test"
    message["Subject"] = f"batch message {number}"
    message["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    message["Message-ID"] = f"<{number}.batch@bench.test>"
    message.set_content(f"Hello,\n\nthis is message {number} of the batch.\n")
    attachment = bytes((number * 7 + n) % 256 for n in range(1024))
    message.add_attachment(
        attachment, maintype="application", subtype="octet-stream", filename=f"a{number % 3 + 1}.bin"
    )
    message.set_boundary(f"===============bench{number:012d}==")
    return message.as_bytes().replace(b"\r\n", b"\n")


def listing(work: Path, messages: int, files: int = 4) -> dict[str, float]:
    """`inspector list` and `list --json` over `messages` agent-like messages in `files` domain files:
    seconds in all (output to /dev/null) and of CPU, and to the first line (output to a pipe)."""
    folder = work / "list-forward"
    folder.mkdir()
    # One message rendered whole; the others from it, numbers swapped in (as fast as a copy).
    template = agent_like(0)
    for domain in range(files):
        with open(folder / f"d{domain}.test", "wb") as file:
            for number in range(domain, messages, files):
                message = template.replace(b"message 0", b"message %d" % number).replace(b"<0.", b"<%d." % number)
                message = message.replace(b"bench000000000000", b"bench%012d" % number)
                delivery = replace(
                    synthetic(message), rcpt_tos=(f"r{number}@d{domain}.test",), transaction_id=f"L{number}"
                )
                file.write(render_record(delivery))
    size = sum(path.stat().st_size for path in folder.iterdir())
    result: dict[str, float] = {"messages": messages, "files": files, "mib": size / 1024**2}
    for name, extra in (("list", []), ("json", ["--json"])):
        argv = [sys.executable, "-m", "maillab_inspector", "list", "--forward-dir", str(folder), *extra]
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        result[f"{name}_s"] = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result[f"{name}_cpu_s"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        started = time.perf_counter()
        with subprocess.Popen(argv, stdout=subprocess.PIPE) as process:
            output = process.stdout
            assert output is not None
            lines = len(output.readline()) and 1
            result[f"{name}_first_s"] = time.perf_counter() - started
            while chunk := output.read(1 << 16):
                lines += chunk.count(b"\n")
        assert process.returncode == 0 and lines == messages, (name, lines)
    return result


def show_costs(messages: int = 3_000) -> dict[str, float]:
    """What `watch` spends to show one agent-like message at each level (panel, line, JSON), in
    µs; and JSON summaries a second in this thread against a pool of two processes."""
    records = [Record(offset=0, length=0, delivery=synthetic(agent_like(number))) for number in range(messages)]
    console = Console(file=io.StringIO(), width=100)
    shows: dict[str, Callable[[Record], object]] = {
        "panel": lambda record: console.print(as_panel(summarize("d0.test", record))),
        "line": lambda record: as_line(headline("d0.test", record)),
        "json": lambda record: as_json(summarize("d0.test", record)),
    }
    costs = {}
    for name, show in shows.items():
        started = time.perf_counter()
        for record in records:
            show(record)
        costs[f"{name}_us"] = (time.perf_counter() - started) / messages * 1e6
    started = time.perf_counter()
    for record in records:
        as_json(summarize("d0.test", record))
    costs["inline_per_s"] = messages / (time.perf_counter() - started)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_json_of, records[:10]))  # the workers started and warm
        started = time.perf_counter()
        for line in pool.map(_json_of, records, chunksize=64):
            assert line
        costs["pool_per_s"] = messages / (time.perf_counter() - started)
    return costs


def _json_of(record: Record) -> str:
    return as_json(summarize("d0.test", record))


def hostile_message_times() -> dict[str, tuple[float, float]]:
    """Seconds to summarise each hostile message (what watch, list and verify do) and to decode its headers (show)."""
    times = {}
    for name, message in hostile.hostile_messages().items():
        record = Record(offset=0, length=len(message), delivery=synthetic(message))
        started = time.perf_counter()
        summarize("bench.test", record)
        summary = time.perf_counter() - started
        started = time.perf_counter()
        headers_shown(parse_headers(record))
        times[name] = (summary, time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument("--domains", type=int, default=20_000, help="domain files for the many-domains case")
    parser.add_argument("--messages", type=int, default=100_000, help="agent-like messages for the list case")
    parser.add_argument(
        "--only", default="latency,cost,memory,domains,list,render,hostile", help="comma-separated cases"
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    print("| inspector measure | result |")
    print("| --- | --- |")
    with tempfile.TemporaryDirectory(prefix="maillab-bench-") as folder:
        work = Path(folder)
        if "latency" in only:
            print_latency(latency(args.rate, args.seconds, work))
        if "cost" in only:
            cost = per_record_cost(int(args.big_gib * 1024**3), work)
            print(
                f"| read one appended record: {cost['big_bytes'] / 1024**3:.2f} GiB file vs empty file | "
                f"{cost['big_us']:.0f} µs vs {cost['empty_us']:.0f} µs (ratio {cost['ratio']:.2f}) |"
            )
        if "memory" in only:
            memory_small = memory_reading(work, int(args.big_gib * 1024**3), 100_000)
            memory_large = memory_reading(work, 200 * 1024**2, 25 * 1024**2)
            big = f"{args.big_gib:g} GiB of 100 KB messages"
            print(f"| peak RSS of `inspector list` over {big} | {memory_small:.0f} MiB |")
            print(f"| peak RSS of `inspector list` over 200 MiB of 25 MiB messages | {memory_large:.0f} MiB |")
        if "domains" in only:
            domains = many_domains(work, args.domains)
            print(
                f"| {args.domains:,} domain files: first sweep, idle sweep (median), `inspector list` | "
                f"{domains['first_s']:.2f} s, {domains['idle_ms']:.0f} ms, {domains['list_s']:.1f} s |"
            )
        if "list" in only:
            listed = listing(work, args.messages)
            over = f"{listed['messages']:,.0f} agent-like messages in {listed['files']:.0f} files"
            over += f" ({listed['mib']:.0f} MiB)"
            print(
                f"| `inspector list` over {over}: in all (CPU), to the first line | "
                f"{listed['list_s']:.1f} s ({listed['list_cpu_s']:.1f} s), {listed['list_first_s']:.2f} s |"
            )
            print(
                f"| `inspector list --json` over {over}: in all (CPU), to the first line | "
                f"{listed['json_s']:.1f} s ({listed['json_cpu_s']:.1f} s), {listed['json_first_s']:.2f} s |"
            )
        if "render" in only:
            costs = show_costs()
            print(
                f"| `watch`: showing one agent-like message as a panel, a line, JSON | "
                f"{costs['panel_us']:.0f} µs, {costs['line_us']:.0f} µs, {costs['json_us']:.0f} µs "
                f"(at most {1e6 / costs['panel_us']:,.0f}, {1e6 / costs['line_us']:,.0f} and "
                f"{1e6 / costs['json_us']:,.0f} a second) |"
            )
            print(
                f"| JSON summaries a second: in the watch's thread vs a pool of 2 processes | "
                f"{costs['inline_per_s']:,.0f} vs {costs['pool_per_s']:,.0f} "
                f"(ratio {costs['pool_per_s'] / costs['inline_per_s']:.2f}) |"
            )
        if "hostile" in only:
            for name, (summary, shown) in hostile_message_times().items():
                measure = f"hostile message, {name}: summary (watch, list), headers (show)"
                print(f"| {measure} | {summary:.2f} s, {shown:.2f} s |")


def print_latency(lat: dict[str, float]) -> None:
    print(
        f"| delivery-to-print latency at {lat['rate']:.0f} msgs/s ({lat['printed']:.0f} of "
        f"{lat['messages']:.0f} printed) | p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
        f"max {lat['max_ms']:.1f} ms |"
    )


if __name__ == "__main__":
    main()
