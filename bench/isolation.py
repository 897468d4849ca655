"""Isolation benchmark: one hostile XMAILLAB-ONCE client must not slow down everyone else.

A real server (a subprocess, storing durably) first stores a 32 MiB record in hostile.test.
Then an unrelated client sends small messages to victim.test, one at a time over one
session, three times: on the idle server; while a control client (another process) sends
the hostile bodies below without XMAILLAB-ONCE, as fast as the server answers (what any
client at full speed costs the others on this machine); and while a hostile client sends
them as XMAILLAB-ONCE retries to hostile.test in a loop, the bodies that cost the lookup most:
an empty body, one character that is in every line of the large record, one whole line of
it, a prefix of it, and a body of the same length each time but never the same bytes, so
that each is stored and every later one has one more candidate to compare. The goal: the
unrelated client's p99 delivery latency under attack is at most twice its idle p99.

Also timed, in this process: one lookup of those bodies in a file holding one large record,
by the lookup before issue 10 (copied below) and by the store's own; and the conversion of a
hostile message's line endings (runs of CRs), before and now.

    python -m bench.isolation [--messages 1000] [--rounds 3] [--size 32]
"""

from __future__ import annotations

import argparse
import re
import select
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.common import free_port, percentile, stop_process, wait_for_port
from bench.server import maillab_server
from maillab_common.esmtp import ONCE
from maillab_common.forward import (
    RECORD_END,
    Delivery,
    Record,
    parse_records,
    render_body,
    render_record,
    same_delivery,
    to_mbox_line_endings,
)
from maillab_server.store import ForwardStore
from tests.helpers import BASE

HOSTILE_SENDER = "hostile@attack.test"
HOSTILE_RCPT = "x@hostile.test"
LINE = b"z" * 998 + b"\r\n"
MiB = 1024 * 1024


def large_message(size: int) -> bytes:
    head = b"Subject: large\r\n\r\n"
    return head + LINE * ((size - len(head)) // len(LINE))


def adversarial_bodies(count: int) -> list[tuple[str, Callable[[int], bytes]]]:
    """Each kind of retry the hostile client sends, by the number of the retry."""
    prefix = large_message(64 * 1024)
    return [
        ("empty body", lambda _: b""),
        ("one character in every line", lambda _: b"z"),
        ("one whole line of the large record", lambda _: LINE),
        ("a 64 KiB prefix of the large record", lambda _: prefix),
        ("same length each time, other bytes", lambda number: b"n%09d\r\n" % number),
    ][:count]


def victim_latencies(port: int, count: int) -> list[float]:
    """Milliseconds from MAIL to the 250 after the dot, for each of `count` small messages."""
    body = b"Subject: small\r\n\r\n" + (b"v" * 76 + b"\r\n") * 13  # about 1 KiB
    latencies = []
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        for _ in range(count):
            started = time.perf_counter()
            client.sendmail("victim@victim.test", ["y@victim.test"], body)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def hostile(port: int, seconds: float, *, once: bool) -> None:
    """The hostile client's loop (its own process): retries to hostile.test, as fast as the
    server answers, until its standard input closes (or time is up); XMAILLAB-ONCE ones, or
    (the control) the same without it."""
    kinds = adversarial_bodies(5)
    options = [ONCE] if once else []
    deadline = time.monotonic() + seconds
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
        while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0)[0]:
            _, body = kinds[sent % len(kinds)]
            client.sendmail(HOSTILE_SENDER, [HOSTILE_RCPT], body(sent), mail_options=options)
            sent += 1
    print(sent)


def attack(port: int, messages: int, *, once: bool) -> tuple[list[float], int, float]:
    """The victim's latencies while the hostile client runs, its messages and their rate."""
    seconds = 600.0  # a bound only: the client stops when the victim is done
    command = [sys.executable, "-m", "bench.isolation", "--hostile", str(port), "--seconds", str(seconds)]
    command += [] if once else ["--plain"]
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # under way
        latencies = victim_latencies(port, messages)
        stdout, _ = process.communicate(input="stop\n", timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    retries = int(stdout.strip())
    return latencies, retries, retries / (time.monotonic() - started)


def old_holds_delivery(recent: bytes, delivery: Delivery) -> bool:
    """The lookup before issue 10, as it was (store.py at 4a1f817): for comparison only."""
    body = render_body(delivery.message)
    end = len(recent)
    while (at := recent.rfind(body, 0, end)) != -1:
        record_start = recent.rfind(b"\nFrom ", 0, at) + 1
        items, _ = parse_records(recent[record_start : at + len(body) + len(RECORD_END)])
        if items and isinstance(items[0], Record) and same_delivery(items[0].delivery, delivery):
            return True
        end = at + len(body) - 1
    return False


def line_ending_times() -> list[tuple[str, float, float]]:
    """A message's CRLF to LF, before issue 10 (one regular expression, quadratic in a run of CRs) and now."""
    old_crs = re.compile(rb"\r+\n")
    rows = []
    for name, message in (
        ("1000 lines of 990 CRs and an x (1 MB)", (b"\r" * 990 + b"x\r\n") * 1000 + b"\r\r\n"),
        ("one run of 40000 CRs", b"\r" * 40_000 + b"x\r\r\n"),
    ):
        started = time.perf_counter()
        old_crs.sub(b"\n", message.replace(b"\r\n", b"\n"))
        old = time.perf_counter() - started
        started = time.perf_counter()
        to_mbox_line_endings(message)
        rows.append((name, old * 1000, (time.perf_counter() - started) * 1000))
    return rows


def lookup_times(work: Path, size: int, old_budget: float) -> list[tuple[str, str, str]]:
    """One lookup of each adversarial body in a file holding one large record: old and new, in ms."""
    template = replace(BASE, mail_from=HOSTILE_SENDER, rcpt_tos=(HOSTILE_RCPT,), message=b"")
    folder = Path(tempfile.mkdtemp(prefix=f"lookup-{size}-", dir=work))
    record = render_record(replace(template, message=to_mbox_line_endings(large_message(size))))
    (folder / "hostile.test").write_bytes(record)
    rows = []
    for name, body in adversarial_bodies(4):
        delivery = replace(template, message=to_mbox_line_endings(body(0)))
        store = ForwardStore(folder)
        started = time.perf_counter()
        assert not store._holds("hostile.test", delivery)  # the lookup alone: nothing is appended
        new = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        assert not store._holds("hostile.test", delivery)
        again = (time.perf_counter() - started) * 1000
        old = "not run"
        if old_budget > 0:
            started = time.perf_counter()
            assert not old_holds_delivery(record, delivery)
            elapsed = time.perf_counter() - started
            old_budget -= elapsed
            old = f"{elapsed * 1000:.1f}"
        rows.append((f"{name}, {size // MiB} MiB record", old, f"{new:.1f} (then {again:.2f})"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000, help="small messages the victim sends per phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three phases")
    parser.add_argument("--size", type=int, default=32, help="MiB of the large record")
    parser.add_argument("--hostile", type=int, help=argparse.SUPPRESS)  # the hostile client's own process
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile is not None:
        hostile(args.hostile, args.seconds, once=not args.plain)
        return
    with tempfile.TemporaryDirectory(prefix="maillab-bench-") as folder:
        work = Path(folder)
        forward = work / "forward"
        forward.mkdir()
        port = free_port()
        process = maillab_server(port, forward, "--max-message-size", str(40 * MiB))
        try:
            wait_for_port(port)
            with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
                client.sendmail(HOSTILE_SENDER, [HOSTILE_RCPT], large_message(args.size * MiB))
            victim_latencies(port, 50)  # warm-up
            # Rounds of the three phases, interleaved, so that the machine's drift falls on each
            # alike; a phase's latencies are pooled over the rounds.
            idle: list[float] = []
            flooded: list[float] = []
            attacked: list[float] = []
            plain_sent = retries = 0
            plain_seconds = attack_seconds = 0.0
            for _ in range(args.rounds):
                idle += victim_latencies(port, args.messages)
                latencies, sent, rate = attack(port, args.messages, once=False)
                flooded, plain_sent, plain_seconds = flooded + latencies, plain_sent + sent, plain_seconds + sent / rate
                latencies, sent, rate = attack(port, args.messages, once=True)
                attacked, retries, attack_seconds = attacked + latencies, retries + sent, attack_seconds + sent / rate
            plain_rate, rate = plain_sent / plain_seconds, retries / attack_seconds
        finally:
            stop_process(process)
        hostile_file = (forward / "hostile.test").stat().st_size
        # The old lookup is quadratic: timed on 1 and 2 MiB records (32 MiB would take hours).
        old_rows = lookup_times(work, 1 * MiB, old_budget=60.0) + lookup_times(work, 2 * MiB, old_budget=60.0)
        new_rows = lookup_times(work, args.size * MiB, old_budget=0.0)
    line_endings = line_ending_times()
    idle_p99, flooded_p99, attacked_p99 = percentile(idle, 99), percentile(flooded, 99), percentile(attacked, 99)
    ratio, control = attacked_p99 / idle_p99, flooded_p99 / idle_p99
    print(
        f"| unrelated client, {args.rounds} x {args.messages} small messages per phase | p50 ms | p99 ms "
        "| p99 / idle p99 "
        "| p99 / control p99 | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| idle server | {percentile(idle, 50):.2f} | {idle_p99:.2f} | 1.00 | | |")
    print(
        f"| control: the same bodies without XMAILLAB-ONCE, {plain_sent} at full speed ({plain_rate:.0f}/s) | "
        f"{percentile(flooded, 50):.2f} | {flooded_p99:.2f} | {control:.2f} | 1.00 | (any client at full speed) |"
    )
    print(
        f"| during {retries} XMAILLAB-ONCE retries ({rate:.0f}/s) against a {args.size} MiB record "
        f"(hostile file at the end: {hostile_file / MiB:.0f} MiB) | {percentile(attacked, 50):.2f} | "
        f"{attacked_p99:.2f} | {ratio:.2f} | {attacked_p99 / flooded_p99:.2f} | "
        f"<= 2x idle: {'met' if ratio <= 2 else 'NOT met'} |"
    )
    print()
    print("| one XMAILLAB-ONCE lookup, not found | before issue 10, ms | now, ms (then again) |")
    print("| --- | --- | --- |")
    for name, old, new in old_rows + new_rows:
        print(f"| {name} | {old} | {new} |")
    print()
    print("| a hostile message's line endings (CRLF to LF) | before issue 10, ms | now, ms |")
    print("| --- | --- | --- |")
    for name, old_ms, new_ms in line_endings:
        print(f"| {name} | {old_ms:.1f} | {new_ms:.1f} |")


if __name__ == "__main__":
    main()
