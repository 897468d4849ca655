"""Server benchmark: maillab's server (storing durably) beside aiosmtpd's Sink and Postfix's smtp-sink.

The load is Postfix's smtp-source: 20 sessions, each reused for many messages (-d), 1 KiB
and 100 KiB messages, runs of the three servers interleaved, medians reported. Also: the
maillab server's peak RSS under that load, and its peak for one 25 MiB message.

    python -m bench.server [--small 4000] [--large 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import free_port, smtp_source, start_process, stop_process, wait_for_port


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def maillab_server(port: int, forward: Path, *flags: str) -> subprocess.Popen[str]:
    """The real server as a process on 127.0.0.1:`port`, storing in `forward`, with `flags` (serve's) added."""
    forward.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MAILLAB_LOG_LEVEL": "warning"}
    return start_process(
        [
            sys.executable,
            "-m",
            "maillab_server",
            "serve",
            "--listen-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--forward-dir",
            str(forward),
            *flags,
        ],
        env,
    )


def one_large_message(work: Path, megabytes: int) -> tuple[float, float]:
    """Peak RSS growth (MiB) of a fresh server receiving one message of `megabytes` MiB, and its size."""
    port = free_port()
    server = maillab_server(port, work / "large")
    try:
        wait_for_port(port)
        baseline = memory_kib(server.pid, "VmRSS")
        line = b"z" * 998 + b"\r\n"
        body = b"Subject: large\r\n\r\n" + line * (megabytes * 1024 * 1024 // len(line))
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as client:
            client.sendmail("a@bench.test", ["b@large.test"], body)
        return (memory_kib(server.pid, "VmHWM") - baseline) / 1024, len(body) / 1024 / 1024
    finally:
        stop_process(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--small", type=int, default=4000, help="how many 1 KiB messages a run")
    parser.add_argument("--large", type=int, default=1000, help="how many 100 KiB messages a run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("smtp-source"):
        print(
            "| server measure | result |\n| --- | --- |\n| all | not run: smtp-source is missing "
            "(Debian: apt-get install postfix) |"
        )
        return
    with tempfile.TemporaryDirectory(prefix="maillab-bench-") as folder:
        work = Path(folder)
        ports = {"maillab": free_port(), "aiosmtpd Sink": free_port(), "smtp-sink": free_port()}
        processes = {
            "maillab": maillab_server(ports["maillab"], work / "forward"),
            "aiosmtpd Sink": start_process(
                [
                    sys.executable,
                    "-m",
                    "aiosmtpd",
                    "-n",
                    "-l",
                    f"127.0.0.1:{ports['aiosmtpd Sink']}",
                    "-c",
                    "aiosmtpd.handlers.Sink",
                ],
                os.environ,
            ),
        }
        if shutil.which("smtp-sink"):
            user = ["-u", "nobody"] if os.geteuid() == 0 else []
            processes["smtp-sink"] = start_process(
                ["smtp-sink", *user, f"127.0.0.1:{ports['smtp-sink']}", "256"], os.environ
            )
        rows = []
        try:
            for name in processes:
                wait_for_port(ports[name])
            for label, size, count in (("1 KiB", 1024, args.small), ("100 KiB", 100 * 1024, args.large)):
                runs: dict[str, list[float]] = {name: [] for name in processes}
                for _ in range(args.rounds):
                    for name in processes:  # interleaved, so that a noisy moment hits all alike
                        runs[name].append(smtp_source(ports[name], args.sessions, count, size))
                rows.append((label, count, {name: statistics.median(rates) for name, rates in runs.items()}))
            peak = memory_kib(processes["maillab"].pid, "VmHWM") / 1024
        finally:
            for process in processes.values():
                stop_process(process)
        large_peak, large_size = one_large_message(work, 25)
    names = list(processes)
    print(
        f"| smtp-source, {args.sessions} sessions, median of {args.rounds} | "
        + " | ".join(f"{name} msgs/s" for name in names)
        + " | maillab / Sink | maillab / smtp-sink |"
    )
    print("| --- " * (len(names) + 3) + "|")
    for label, count, rates in rows:
        versus_sink = rates["maillab"] / rates["aiosmtpd Sink"]
        versus_smtp_sink = f"{rates['maillab'] / rates['smtp-sink']:.2f}" if "smtp-sink" in rates else "n/a"
        print(
            f"| {label} ({count} messages) | "
            + " | ".join(f"{rates[name]:.0f}" for name in names)
            + f" | {versus_sink:.2f} | {versus_smtp_sink} |"
        )
    print()
    print("| maillab server memory | result |")
    print("| --- | --- |")
    print(f"| peak RSS through the runs above | {peak:.0f} MiB |")
    print(
        f"| one {large_size:.0f} MiB message: peak RSS growth | {large_peak:.0f} MiB "
        f"({large_peak / large_size:.1f}x its size) |"
    )


if __name__ == "__main__":
    main()
