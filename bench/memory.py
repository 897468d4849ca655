"""Memory benchmark: the server's peak RSS while 50 sessions each send a 32 MiB message at once.

The goal (issue 10): at most 256 MiB, which spooling DATA to disk past
MAILLAB_SPOOL_THRESHOLD makes possible. The clients send the same 1 MB of bytes again and
again over raw sockets, so the benchmark itself holds no message whole. The figure is the
server process's VmHWM from /proc, beside its RSS when idle.

    python -m bench.memory [--sessions 50] [--size 33553000]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench.common import free_port, stop_process, wait_for_port
from bench.server import maillab_server, memory_kib

GOAL_MIB = 256
# A line of every kind the server works on: plain text, and a "From " line that gets escaped.
LINES = b"x" * 998 + b"\r\n", b"From the middle of a long message, a line that mbox escapes\r\n"
CHUNK = (LINES[0] * 99 + LINES[1]) * 10  # about 1 MB, sent again and again


def message_pieces(size: int) -> list[bytes]:
    """The pieces of a message of about `size` bytes (whole lines, at most `size`)."""
    header = b"From: bench@memory.test\r\nSubject: memory\r\n\r\n"
    whole, rest = divmod(size - len(header), len(CHUNK))
    return [header, *[CHUNK] * whole, LINES[0] * (rest // len(LINES[0]))]


def send_one(port: int, pieces: list[bytes], ready: threading.Barrier, replies: list[bytes]) -> None:
    try:
        send_message(port, pieces, ready, replies)
    except (OSError, threading.BrokenBarrierError) as exc:
        ready.abort()  # the others go on at once instead of waiting for this one
        replies.append(f"failed: {exc!r}".encode())


def send_message(port: int, pieces: list[bytes], ready: threading.Barrier, replies: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as connection:
        reader = connection.makefile("rb")
        reader.readline()
        commands = [b"EHLO memory.test", b"MAIL FROM:<bench@memory.test>", b"RCPT TO:<sink@memory.test>", b"DATA"]
        for command in commands:
            connection.sendall(command + b"\r\n")
            while reader.readline()[3:4] == b"-":
                pass
        ready.wait(timeout=60)  # every session in DATA before any sends: all of them at once
        for piece in pieces:
            connection.sendall(piece)
        connection.sendall(b".\r\n")
        replies.append(reader.readline())
        connection.sendall(b"QUIT\r\n")


def measure(sessions: int, size: int) -> tuple[float, float, float, list[bytes]]:
    """Idle RSS (MiB), peak RSS (MiB), seconds taken, and every session's reply."""
    with tempfile.TemporaryDirectory(prefix="maillab-bench-memory-") as folder:
        port = free_port()
        server = maillab_server(port, Path(folder) / "forward")
        try:
            wait_for_port(port)
            time.sleep(0.5)
            idle = memory_kib(server.pid, "VmRSS") / 1024
            pieces = message_pieces(size)
            ready = threading.Barrier(sessions)
            replies: list[bytes] = []
            threads = [threading.Thread(target=send_one, args=(port, pieces, ready, replies)) for _ in range(sessions)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            peak = memory_kib(server.pid, "VmHWM") / 1024
        finally:
            stop_process(server)
    return idle, peak, elapsed, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=33_553_000, help="bytes per message (the limit is 33554432)")
    args = parser.parse_args()
    idle, peak, elapsed, replies = measure(args.sessions, args.size)
    stored = sum(reply.startswith(b"250") for reply in replies)
    size_mib = args.size / 1024 / 1024
    print(f"| server memory, {args.sessions} sessions x {size_mib:.0f} MiB at once | result | goal |")
    print("| --- | --- | --- |")
    print(f"| idle RSS | {idle:.0f} MiB | |")
    verdict = "met" if peak <= GOAL_MIB else "MISSED"
    print(f"| peak RSS (VmHWM) | {peak:.0f} MiB | <= {GOAL_MIB} MiB: {verdict} |")
    print(f"| messages stored (250) | {stored} of {args.sessions} | all |")
    refused = [reply for reply in replies if not reply.startswith(b"250")]
    if refused:
        print(f"| first refusal | {refused[0].decode(errors='replace').strip()} | |")
    print(f"| time for all | {elapsed:.1f} s | |")


if __name__ == "__main__":
    main()
