"""What the benchmarks share: free ports, child processes, percentiles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_process(
    command: Sequence[str], env: Mapping[str, str], stdout: int | IO[Any] | None = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    return subprocess.Popen(list(command), env=dict(env), stdout=stdout, stderr=subprocess.DEVNULL, text=True)


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def percentile(values: Sequence[float], percent: int) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


def smtp_source(port: int, sessions: int, count: int, size: int) -> float:
    """Postfix's smtp-source: `count` messages of `size` bytes over `sessions` reused sessions; msgs/s."""
    started = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-l",
            str(size),
            "-d",
            "-f",
            "bench@source.test",
            "-t",
            "sink@sink.test",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return count / (time.monotonic() - started)


def print_load_at_start() -> float:
    """Print the load average, which the figures move with; the monotonic time the run began."""
    load = os.getloadavg()
    print(
        f"load average at the start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} (1, 5, 15 min; {os.cpu_count()} CPUs)"
    )
    return time.monotonic()


def print_load_at_end(began: float) -> None:
    load = os.getloadavg()
    print()
    print(
        f"load average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; "
        f"the run took {time.monotonic() - began:.0f} s"
    )
