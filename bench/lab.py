"""The whole lab in containers under issue 16's load: the server's rate, the watch's lag and memory.

compose.yaml runs in a project of its own (`maillab-bench-<random>`, a free SMTP port,
the classroom listener off), which is removed with its volumes afterwards; once with the
inspector printing JSON lines (MAILLAB_INSPECTOR_OUTPUT=json), once more so with the
inspector's CPU weight equal to the others', and once with its text output.
Each time the agent's container sends the batch of the issue: `--count` messages with
one 1 KiB attachment over 8 connections to four domains, its manifest keeping the time
of each `250`.

- json: the lag of each message, from its `250` to the engine's timestamp of the line the
  inspector printed for it (tests/watch_lag.py, as the pace drill measures it).
- text: the lines carry no Message-ID, so the catch-up time (the last `250` to the
  inspector's last line) and the notices of the output changing mode (MODE_SWITCH).
- both: the server's rate (messages over the span of their `250`s) and the peak RSS
  (VmHWM) of the watch and its children.

    python -m bench.lab [--count 100000] [--only json,json-equal-cpu,text]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port
from maillab_common import manifest
from tests.watch_lag import PEAK_RSS_PROBE, measure, peak_rss, stamped

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = "one.test,two.test,three.test,four.test"
# What the text output prints when it changes mode under a backlog (panels, one line a
# message, a rate line a second) and back: today "-- watch: falling behind (...): one line
# per message until deliveries slow down --" and "-- watch: 12 messages a second: a panel
# per message again --" (render.py's notices; a long one wraps, so only its start is
# matched), or a line saying "switch". Adjust to the watch's wording.
MODE_SWITCH = re.compile(r"^-- watch: |\bswitch", re.IGNORECASE)
# Each run: the inspector's output, and settings for compose. json-equal-cpu gives the
# inspector the same CPU weight as the other containers (compose gives it four times
# theirs): the side-by-side measure of what that weight is for.
RUNS: dict[str, tuple[str, dict[str, str]]] = {
    "json": ("json", {}),
    "json-equal-cpu": ("json", {"MAILLAB_INSPECTOR_CPU_SHARES": "0"}),  # 0: the engine's default
    "text": ("text", {}),
}
QUIET = 5.0  # seconds without a new line of output after the batch: the watch has caught up
# compose.yaml as it is, but with the inspector's log kept whole: an engine's default may
# rotate it away (3 files of 10 MB here), and the lag is read from every line of it.
WHOLE_LOG = """
services:
  inspector:
    logging:
      driver: json-file
      options: {max-size: 1g, max-file: "1"}
"""


@dataclass(frozen=True)
class Run:
    output: str  # the run's name in RUNS
    count: int
    rate: float  # msgs/s over the span of the 250s
    printed: str  # json: printed of count (missing, duplicated); text: output lines
    lag: str  # json: p50 / p99 / max, seconds; text: not measurable
    caught_up: float  # seconds from the last 250 to the inspector's last line
    switches: int  # lines matching MODE_SWITCH, stdout and log
    rss: int  # bytes


def compose(env: dict[str, str], *arguments: str, timeout: float = 600) -> str:
    """`docker compose ARGUMENTS` in the checkout; its stdout, or an error with its output."""
    done = subprocess.run(
        ["docker", "compose", *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker compose {' '.join(arguments)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


@contextmanager
def project(base_image: str, output: str, extra: dict[str, str]) -> Iterator[dict[str, str]]:
    """A lab of its own, up and healthy, with the inspector's output as given; removed afterwards."""
    name = f"maillab-bench-{uuid.uuid4().hex[:8]}"
    override = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "whole-log.yaml"
    override.write_text(WHOLE_LOG)
    env = {
        **os.environ,
        "COMPOSE_FILE": os.pathsep.join([str(ROOT / "compose.yaml"), str(override)]),
        "COMPOSE_PROJECT_NAME": name,
        "MAILLAB_SMTP_PORT": str(free_port()),
        "MAILLAB_CLASSROOM_PORT": "0",
        "MAILLAB_PYTHON_IMAGE": base_image,
        "MAILLAB_INSPECTOR_OUTPUT": output,
        # The agent builds a batch whole and refuses one estimated past half its limit:
        # 100,000 messages with a 1 KiB attachment come to about 561 MiB (1g allows 512).
        "MAILLAB_AGENT_MEMORY": os.environ.get("MAILLAB_AGENT_MEMORY", "2g"),
        **extra,
    }
    try:
        compose(env, "up", "--detach", "--wait", "server", "inspector")
        yield env
    finally:
        # `down` leaves a one-off `run` container (an agent cut off by ^C) behind: removed first.
        left = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={name}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
        compose(env, "down", "--volumes", "--remove-orphans", "--timeout", "10")
        shutil.rmtree(override.parent)


def last_line_at(container: str) -> float:
    """The engine's time of the inspector's last line on stdout, or NaN before the first."""
    tail = subprocess.run(
        ["docker", "logs", "--tail", "1", "--timestamps", container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return next((at for at, _ in stamped(tail)), math.nan)


def wait_until_quiet(container: str, timeout: float) -> None:
    """Until the inspector has printed nothing new for QUIET seconds, or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if time.time() - last_line_at(container) > QUIET:
            return
        time.sleep(1)
    print(f"bench.lab: the inspector was still printing after {timeout:.0f} s; measuring what it printed")


def log_lines(container: str, stream: str) -> Iterator[str]:
    """The container's stdout or its stderr (the log), each line after the engine's timestamp."""
    with subprocess.Popen(
        ["docker", "logs", "--timestamps", container],
        stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as logs:
        lines = logs.stdout if stream == "stdout" else logs.stderr
        assert lines is not None
        yield from (line.rstrip("\n") for line in lines)


def run(base_image: str, name: str, count: int, catch_up_timeout: float) -> Run:
    output, extra = RUNS[name]
    with project(base_image, output, extra) as env:
        batch = ["--count", str(count), "--attachments", "1", "--attachment-size", "1KiB"]
        batch += ["--concurrency", "8", "--domains", DOMAINS, "--seed", "16"]
        compose(env, "run", "--rm", "-T", "agent", "batch", *batch, timeout=3600)
        text = compose(env, "run", "--rm", "--no-deps", "-T", "--entrypoint", "cat", "agent", "/manifests/latest.json")
        accepted = {message.message_id: message.accepted_at for message in manifest.loads(text).messages}
        times = [at for at in accepted.values() if at > 0]  # 0.0: not accepted
        first_250, last_250 = min(times), max(times)
        inspector = compose(env, "ps", "-q", "inspector").strip()
        wait_until_quiet(inspector, catch_up_timeout)
        probe = subprocess.run(
            ["docker", "exec", inspector, "python3", "-c", PEAK_RSS_PROBE], capture_output=True, text=True, check=True
        )
        switches = sum(bool(MODE_SWITCH.search(line)) for line in log_lines(inspector, "stderr"))
        if output == "json":
            lag = measure(accepted, log_lines(inspector, "stdout"))
            printed = f"{lag.printed} of {count} ({lag.missing} missing, {lag.duplicated} duplicated)"
            spread = f"{lag.p50:.3f} / {lag.p99:.3f} / {lag.max:.3f}"
            last = lag.last_printed
        else:
            lines = 0
            last = math.nan
            for at, line in stamped(log_lines(inspector, "stdout")):
                lines, last = lines + 1, at
                switches += bool(MODE_SWITCH.search(line))
            printed, spread = f"{lines} lines", "(no Message-ID in text)"
        return Run(
            output=name,
            count=count,
            rate=count / (last_250 - first_250) if last_250 > first_250 else math.nan,
            printed=printed,
            lag=spread,
            caught_up=last - last_250,
            switches=switches,
            rss=peak_rss(probe.stdout),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="messages per run (the issue's: 100000)")
    parser.add_argument("--only", default=",".join(RUNS), help=f"which runs, of {', '.join(RUNS)}")
    parser.add_argument("--catch-up-timeout", type=float, default=900.0, help="seconds to wait for the watch")
    options = parser.parse_args()
    base_image = subprocess.run(
        [str(ROOT / "scripts" / "base-image.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    compose({**os.environ, "MAILLAB_PYTHON_IMAGE": base_image}, "--profile", "tools", "build", timeout=1800)
    runs = [run(base_image, output, options.count, options.catch_up_timeout) for output in options.only.split(",")]
    print()
    print(
        f"| lab in containers: {options.count} messages, 1 KiB attachment, 8 connections, 4 domains "
        "| server msgs/s | printed | watch lag p50 / p99 / max, s | caught up after the last 250, s "
        "| mode-switch notices | inspector peak RSS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for result in runs:
        print(
            f"| inspector output {result.output} | {result.rate:.0f} | {result.printed} | {result.lag} "
            f"| {result.caught_up:.2f} | {result.switches} | {result.rss / 2**20:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
