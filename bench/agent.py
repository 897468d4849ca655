"""Agent benchmark: `batch` against Postfix's smtp-source, both sending to Postfix's smtp-sink.

Same sink, same number of sessions (20, each reused for many messages), same message size,
runs interleaved, medians reported. The agent's figure is its sending phase, the msgs/s its
own summary table shows: it builds every message before it starts the clock. Also measured,
as the reason for the agent's design: the same messages sent by smtplib in 20 threads.
Needs smtp-source and smtp-sink (Debian: the postfix package; its daemon is never started).

    python -m bench.agent [--sessions 20] [--small 5000] [--large 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import threading
import time
from collections.abc import Sequence

from bench.common import free_port, smtp_source, start_process, stop_process, wait_for_port
from maillab_agent.batch import send_batch
from maillab_agent.message import Outgoing, batch_messages


def sized_batch(count: int, target: int) -> list[Outgoing]:
    """Messages of about `target` bytes: one attachment, sized so that the whole comes out right."""
    overhead = len(batch_messages(seed=1, count=1, attachments=1, attachment_size=(1, 1))[0].data)
    raw = max(1, (target - overhead) * 3 // 4)  # base64 makes 4 bytes of 3
    return batch_messages(seed=1, count=count, attachments=1, attachment_size=(raw, raw))


def agent_batch(port: int, sessions: int, messages: Sequence[Outgoing]) -> float:
    # Built before the clock starts, as the CLI does; the DATA encoding is part of sending.
    report = send_batch(messages, host="127.0.0.1", port=port, concurrency=sessions, timeout=30)
    assert report.accepted == len(messages), report.outcomes[0]
    return len(messages) / report.elapsed


def smtplib_threads(port: int, sessions: int, messages: Sequence[Outgoing]) -> float:
    todo = iter(range(len(messages)))
    lock = threading.Lock()

    def work() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            while True:
                with lock:
                    index = next(todo, None)
                if index is None:
                    return
                message = messages[index]
                client.sendmail(message.mail_from, list(message.rcpt_tos), message.data)

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(messages) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--small", type=int, default=5000, help="how many 1 KiB messages")
    parser.add_argument("--large", type=int, default=1000, help="how many 100 KiB messages")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the medians are reported")
    args = parser.parse_args()
    if not (shutil.which("smtp-source") and shutil.which("smtp-sink")):
        print(
            "| agent measure | result |\n| --- | --- |\n| batch vs smtp-source | not run: smtp-source and smtp-sink "
            "are missing (Debian: apt-get install postfix) |"
        )
        return
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = start_process(["smtp-sink", *user, f"127.0.0.1:{port}", "256"], os.environ)
    rows = []
    try:
        wait_for_port(port)
        for label, size, count in (("1 KiB", 1024, args.small), ("100 KiB", 100 * 1024, args.large)):
            messages = sized_batch(count, size)
            average = sum(len(m.data) for m in messages) / len(messages)
            runs = []
            for _ in range(args.rounds):  # interleaved, so that a noisy moment hits all three alike
                runs.append(
                    (
                        smtp_source(port, args.sessions, count, size),
                        agent_batch(port, args.sessions, messages),
                        smtplib_threads(port, args.sessions, messages),
                    )
                )
            source, agent, threads = (statistics.median(column) for column in zip(*runs, strict=True))
            rows.append((label, average, count, source, agent, threads))
    finally:
        stop_process(sink)
    print(
        f"| {args.sessions} sessions to smtp-sink, median of {args.rounds} runs | smtp-source msgs/s "
        "| agent batch msgs/s | batch / source | smtplib in threads msgs/s | batch / threads |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label, average, count, source, agent, threads in rows:
        print(
            f"| {label} ({count} messages, {average / 1024:.1f} KiB each) | {source:.0f} | {agent:.0f} "
            f"| {agent / source:.2f} | {threads:.0f} | {agent / threads:.2f} |"
        )


if __name__ == "__main__":
    main()
