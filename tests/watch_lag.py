"""How far `inspector watch` runs behind the server: one measure for the pace drill and bench.lab.

The start of each message's lag is its `250`: the agent's manifest keeps, per Message-ID,
`accepted_at`, the Unix time the final `250` arrived. The end is the moment the inspector
printed it: each line of `docker logs --timestamps` of a `watch` in JSON mode starts with
the RFC 3339 time (nanoseconds, UTC) at which the engine read that line from the
container, and then the inspector's JSON object, with its `message_id`. Lines that are not
JSON objects (log lines, progress) are skipped. Both clocks are the host's: the agent, the
engine and the inspector share one kernel.

Also here: a probe of the peak memory (VmHWM) of a container's main process and its
children, run inside the container with `docker exec`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

# `2026-11-29T05:20:44.123456789Z`: the fraction has up to nine digits, more than datetime takes.
STAMP = re.compile(r"(?P<second>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)")


def log_time(stamp: str) -> float:
    """The Unix time of one of the engine's RFC 3339 timestamps, to the nanosecond it gives."""
    match = STAMP.fullmatch(stamp)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {stamp!r}")
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    whole = datetime.fromisoformat(match["second"] + zone).timestamp()
    return whole + float(f"0.{match['fraction'] or 0}")


def stamped(lines: Iterable[str]) -> Iterator[tuple[float, str]]:
    """(time, text) for each line of `docker logs --timestamps`; a line without a stamp is skipped."""
    for line in lines:
        stamp, _, text = line.partition(" ")
        try:
            yield log_time(stamp), text
        except ValueError:
            continue


def printed_ids(lines: Iterable[str]) -> Iterator[tuple[float, str]]:
    """(time printed, Message-ID) for each JSON line of a `watch --json`'s stamped output."""
    for at, text in stamped(lines):
        if not text.startswith("{"):
            continue  # a log line, not a message
        try:
            message_id = json.loads(text)["message_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(message_id, str):
            yield at, message_id


def percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile of `values` (sorted here); NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(percent / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class Lag:
    """How a watch kept up with a batch: what it printed, and how long after each `250`."""

    expected: int  # messages in the manifest
    printed: int  # of those, printed at least once
    missing: int  # of those, never printed
    duplicated: int  # of those, printed more than once
    unknown: int  # lines for a Message-ID the manifest does not have
    timed: int  # messages whose lag is counted: printed, and with a known accepted_at
    p50: float  # seconds from the 250 to the first print (NaN when none was timed)
    p99: float
    max: float
    first_printed: float  # Unix times of the first and last message lines (NaN when none)
    last_printed: float

    def row(self) -> str:
        """The figures, for a test's log or a bench's table cell."""
        return (
            f"printed {self.printed} of {self.expected} (missing {self.missing}, duplicated {self.duplicated}, "
            f"unknown {self.unknown}); lag p50 {self.p50:.3f} s, p99 {self.p99:.3f} s, max {self.max:.3f} s"
        )


def measure(accepted: Mapping[str, float], lines: Iterable[str]) -> Lag:
    """The watch's lag behind `accepted` (Message-ID -> Unix time of its 250; 0.0 when unknown).

    `lines` is `docker logs --timestamps` of the inspector's stdout in JSON mode. A
    message's lag is from its 250 to its first print; a second print counts as duplicated.
    """
    first: dict[str, float] = {}
    copies: Counter[str] = Counter()
    unknown = 0
    times: list[float] = []
    for at, message_id in printed_ids(lines):
        if message_id not in accepted:
            unknown += 1
            continue
        copies[message_id] += 1
        first.setdefault(message_id, at)
        times.append(at)
    lags = [at - accepted[message_id] for message_id, at in first.items() if accepted[message_id] > 0]
    return Lag(
        expected=len(accepted),
        printed=len(first),
        missing=len(accepted) - len(first),
        duplicated=sum(count > 1 for count in copies.values()),
        unknown=unknown,
        timed=len(lags),
        p50=percentile(lags, 50),
        p99=percentile(lags, 99),
        max=max(lags, default=math.nan),
        first_printed=min(times, default=math.nan),
        last_printed=max(times, default=math.nan),
    )


def copies_printed(lines: Iterable[str]) -> Counter[str]:
    """How many times each Message-ID was printed, in JSON lines with or without timestamps."""
    copies: Counter[str] = Counter()
    for line in lines:
        _, _, text = line.partition(" ") if STAMP.match(line) else ("", "", line)
        if text.startswith("{"):
            try:
                copies[json.loads(text)["message_id"]] += 1
            except (ValueError, KeyError, TypeError):
                continue
    return copies


# Run in the inspector's container (`python3 -c`): VmHWM of PID 1 (the watch) and of every
# process descended from it, one `pid kB` line each. Processes started by `docker exec`
# (this probe, the health check) have parent 0, not 1, so they are left out.
PEAK_RSS_PROBE = """
import os
parents, peaks = {}, {}
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    try:
        with open(f"/proc/{name}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        continue
    parents[int(name)] = int(fields["PPid"])
    peaks[int(name)] = int(fields.get("VmHWM", "0 kB").split()[0])
def ours(pid):
    while pid > 1:
        pid = parents.get(pid, 0)
    return pid == 1
for pid in sorted(peaks):
    if ours(pid):
        print(pid, peaks[pid])
"""


def peak_rss(probe_output: str) -> int:
    """Bytes: the sum of the VmHWM figures PEAK_RSS_PROBE printed (the watch and its children)."""
    rows = [line.split() for line in probe_output.splitlines() if line.strip()]
    if not any(pid == "1" for pid, _ in rows):
        raise ValueError(f"the probe found no PID 1: {probe_output!r}")
    return sum(int(kib) for _, kib in rows) * 1024
