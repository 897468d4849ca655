"""tests/watch_lag.py: the lag measure the pace drill and bench.lab share, on made-up log lines."""

from __future__ import annotations

import json
import math

import pytest

from tests.watch_lag import copies_printed, log_time, measure, peak_rss


def line(stamp: str, message_id: str) -> str:
    return f"{stamp} " + json.dumps({"message_id": message_id, "subject": "s"})


def test_timestamps_keep_their_nanoseconds_and_zone() -> None:
    assert log_time("2026-11-29T05:20:44Z") == 1_795_929_644.0
    assert log_time("2026-11-29T05:20:44.250000000Z") == 1_795_929_644.25
    assert log_time("2026-11-29T06:20:44.5+01:00") == 1_795_929_644.5
    with pytest.raises(ValueError):
        log_time("yesterday")


def test_lag_is_from_the_250_to_the_first_print_and_log_lines_are_skipped() -> None:
    base = log_time("2026-11-29T05:20:44Z")
    accepted = {"<a>": base - 0.5, "<b>": base - 0.1, "<c>": base, "<d>": 0.0, "<never>": base}
    lines = [
        "2026-11-29T05:20:43.900000000Z watching /forward: file events from InotifyObserver",
        line("2026-11-29T05:20:44.000000000Z", "<a>"),  # 0.5 s
        line("2026-11-29T05:20:44.100000000Z", "<b>"),  # 0.2 s
        line("2026-11-29T05:20:44.300000000Z", "<b>"),  # a second copy: no new lag
        line("2026-11-29T05:20:46.000000000Z", "<c>"),  # 2.0 s
        line("2026-11-29T05:20:46.100000000Z", "<d>"),  # printed, but its 250 time is unknown
        line("2026-11-29T05:20:46.200000000Z", "<stranger>"),
        "2026-11-29T05:20:46.300000000Z {not json",
        "no timestamp at all",
    ]
    lag = measure(accepted, lines)
    assert (lag.expected, lag.printed, lag.missing, lag.duplicated, lag.unknown, lag.timed) == (5, 4, 1, 1, 1, 3)
    assert (lag.p50, lag.p99, lag.max) == pytest.approx((0.5, 2.0, 2.0))
    assert lag.first_printed == pytest.approx(base) and lag.last_printed == pytest.approx(base + 2.1)


def test_nothing_printed_gives_no_figures_rather_than_zero() -> None:
    lag = measure({"<a>": 1.0}, ["2026-11-29T05:20:44Z a log line"])
    assert (lag.printed, lag.missing) == (0, 1) and math.isnan(lag.p99) and math.isnan(lag.last_printed)


def test_copies_are_counted_with_or_without_timestamps() -> None:
    lines = [line("2026-11-29T05:20:44Z", "<a>"), json.dumps({"message_id": "<a>"}), '{"message_id": "<b>"}', "log"]
    assert copies_printed(lines) == {"<a>": 2, "<b>": 1}


def test_peak_rss_sums_the_watch_and_its_children() -> None:
    assert peak_rss("1 51200\n7 1024\n") == 52224 * 1024
    with pytest.raises(ValueError):
        peak_rss("7 1024\n")
