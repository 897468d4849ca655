"""`watch` keeps pace: the pacer's decisions on a clock the test turns, the terminal output
they drive, and a real `watch` process that switches down under a burst and back up after it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from maillab_common.forward import Record, parse_records
from maillab_inspector.pace import Level, Pacer
from maillab_inspector.terminal import JsonOutput, TerminalOutput
from tests.helpers import TIMEOUT, Watch, record

COSTS = {Level.PANELS: 0.002, Level.LINES: 0.0001, Level.RATE: 0.000_001}


def pacer() -> Pacer:
    return Pacer(costs=dict(COSTS))


def level(pacer: Pacer) -> Level:
    """The pacer's level now (a call, so that a type checker does not take it for the last one read)."""
    return pacer.level


def run_at(pacer: Pacer, rate: int, seconds: int, start: float, waited: float = 0.0) -> float:
    """`rate` messages a second, each shown `waited` after it was read, for `seconds`; the time after."""
    now = start
    for _ in range(seconds):
        for number in range(rate):
            pacer.arrived(now + number / rate, waited)
            pacer.tick(now + number / rate)
        now += 1.0
        pacer.tick(now)
    return now


def test_a_message_that_waited_too_long_steps_the_output_down_once_per_hold() -> None:
    paced = pacer()
    paced.tick(0.0)
    paced.arrived(0.1, waited=0.2)
    assert level(paced) == Level.PANELS, "within behind_after: no change"
    paced.arrived(0.2, waited=0.6)
    assert level(paced) == Level.LINES
    paced.arrived(0.3, waited=0.9)
    assert level(paced) == Level.LINES, "held: the lines must have time to catch up first"
    paced.arrived(0.2 + paced.behind_after, waited=0.9)
    assert level(paced) == Level.RATE
    paced.arrived(5.0, waited=10.0)
    assert level(paced) == Level.RATE, "nothing below a rate line"


def test_the_output_steps_back_up_one_level_at_a_time_once_the_rate_is_low_for_long_enough() -> None:
    paced = pacer()
    paced.level = Level.RATE
    paced.tick(0.0)
    # 3,000 a second: one line each would take 0.3 s of every second, within the headroom of 0.5 s.
    now = run_at(paced, 3_000, paced.calm_for - 1, 0.0)
    assert level(paced) == Level.RATE, "not before calm_for seconds"
    now = run_at(paced, 3_000, 1, now)
    assert level(paced) == Level.LINES
    # Panels at 3,000 a second would take 6 s of each second: the lines stay.
    now = run_at(paced, 3_000, 10, now)
    assert level(paced) == Level.LINES
    now = run_at(paced, 100, paced.calm_for, now)
    assert level(paced) == Level.PANELS


def test_a_steady_rate_that_panels_cannot_take_does_not_flap() -> None:
    paced = pacer()
    paced.tick(0.0)
    paced.arrived(0.5, waited=1.0)
    assert level(paced) == Level.LINES
    run_at(paced, 400, 30, 1.0)  # panels would take 0.8 s of each second: over the headroom
    assert level(paced) == Level.LINES


def test_the_cost_of_each_level_follows_what_it_measures() -> None:
    paced = pacer()
    for _ in range(200):
        paced.shown(Level.PANELS, 0.010)
    assert paced.costs[Level.PANELS] == pytest.approx(0.010, rel=0.01)
    assert paced.costs[Level.LINES] == COSTS[Level.LINES]


def test_one_stall_does_not_make_a_level_look_too_dear_to_come_back_to() -> None:
    paced = pacer()
    paced.shown(Level.LINES, 2.0)  # a terminal paused for 2 s
    assert paced.costs[Level.LINES] < 1.5 * COSTS[Level.LINES]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def records(count: int) -> list[Record]:
    found, rest = parse_records(b"".join(record(number) for number in range(1, count + 1)))
    assert not rest
    return [item for item in found if isinstance(item, Record)]


def test_the_rate_level_counts_per_domain_and_prints_one_line_a_second(capsys: pytest.CaptureFixture[str]) -> None:
    clock, screen = Clock(), io.StringIO()
    paced = pacer()
    output = TerminalOutput(Console(file=screen, width=100), paced, clock)
    output.tick(0.0)
    paced.level = Level.RATE
    for index, item in enumerate(records(5)):
        clock.now = 0.1 * index
        output.message("a.test" if index % 2 else "b\x1b[2J.test", item, waited=0.0)
        output.tick(clock.now)
    assert not output.settled, "counted, not yet shown: its position must not be saved"
    assert capsys.readouterr().out == ""
    clock.now = 1.0
    output.tick(clock.now)
    assert output.settled
    assert capsys.readouterr().out == "5 messages in the last second: b\\x1b[2J.test 3, a.test 2\n"


def test_each_switch_is_announced_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    clock, screen = Clock(), io.StringIO()
    paced = pacer()
    output = TerminalOutput(Console(file=screen, width=100), paced, clock)
    output.tick(0.0)
    first, second = records(2)
    clock.now = 0.5
    output.message("a.test", first, waited=2.0)
    assert "falling behind (a message waited 2.0 s to be shown): one line per message" in screen.getvalue()
    assert "n1" in capsys.readouterr().out, "shown as a line"
    for second_number in range(1, paced.calm_for + 1):
        clock.now = 0.5 + second_number
        output.tick(clock.now)
    assert "messages in the last second): a panel per message again" in screen.getvalue()
    output.message("a.test", second, waited=0.0)
    assert re.search(r"╭─+ 2026-11-28T09:05:07Z a\.test", screen.getvalue()), "shown as a panel"


def test_a_real_watch_switches_to_lines_under_a_burst_and_back_to_panels_after_it(watched_forward: Path) -> None:
    """3,000 messages land at once, far more than panels show in `behind_after`; then one more, later."""
    watch = Watch(watched_forward, watched_forward.parent / "state" / "positions.sqlite3", json_lines=False)
    burst = 3_000
    with open(watched_forward / "burst.test", "ab") as file:
        file.write(b"".join(record(number) for number in range(1, burst + 1)))
    printed = read_until(watch, "a panel per message again")
    assert any("falling behind" in line and "one line per message" in line for line in printed)
    lines = [line for line in printed if re.match(r"2026-11-28T09:05:07Z  burst\.test  <\d+@x\.test>", line)]
    panels = [line for line in printed if line.startswith("╭") and "burst.test" in line]
    assert panels and lines, "first panels, then lines"
    counted = sum(
        int(match[1].replace(",", ""))
        for line in printed
        if (match := re.match(r"([\d,]+) messages? in the last", line))
    )
    assert len(panels) + len(lines) + counted == burst, "every message shown or counted once"
    with open(watched_forward / "burst.test", "ab") as file:
        file.write(record(burst + 1))
    after = read_until(watch, "offset")
    assert any(line.startswith("╭") and "burst.test" in line for line in after), "a panel again"
    assert watch.stop() == 0


def read_until(watch: Watch, text: str) -> list[str]:
    printed = []
    while True:
        line = watch.lines.get(timeout=TIMEOUT)
        printed.append(line)
        if text in line:
            return printed


def test_a_count_not_yet_printed_is_printed_when_the_watch_stops(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    paced = pacer()
    output = TerminalOutput(Console(file=io.StringIO(), width=100), paced, clock)
    paced.level = Level.RATE
    for item in records(2):
        output.message("a.test", item, waited=0.0)
    assert not output.settled
    output.finish()
    assert output.settled and capsys.readouterr().out == "2 messages in the last second: a.test 2\n"


def test_a_line_is_written_whole_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unbuffered (PYTHONUNBUFFERED, as in the images), print() writes a line and its end apart:
    a kill -9 between the two left a line without its end, glued to the next run's first."""
    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr("sys.stdout", Recording())
    output = TerminalOutput(Console(file=io.StringIO(), width=100), pacer(), Clock())
    output.pacer.level = Level.LINES
    (item,) = records(1)
    output.message("a.test", item, waited=0.0)
    JsonOutput().message("a.test", item, waited=0.0)
    assert len(writes) == 2 and all(text.endswith("\n") and text.count("\n") == 1 for text in writes), writes
