"""How a batch shows on the terminal: a progress bar while it sends, then its summary.

The summary is a table of counts, rates and latencies on stdout, and one line on stderr
for each message that was not wholly accepted. Message ids and replies go through `say`,
so that a server's reply text cannot act on the terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from maillab_agent.batch import BatchReport, Outcome
from maillab_agent.message import Outgoing
from maillab_common.cli import err, out, say


@contextmanager
def progress_bar(count: int) -> Iterator[Callable[[Outcome], None]]:
    """A bar on stderr for `count` messages; yields the callback that moves it on by one outcome."""
    columns = (
        TextColumn("sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("sending", total=count, rate="")
        started = progress.get_time()

        def advance(_outcome: Outcome) -> None:
            done = progress.tasks[task].completed + 1
            progress.update(task, advance=1, rate=f"{done / max(progress.get_time() - started, 1e-6):.0f} msg/s")

        yield advance


def show_summary(seed: int, report: BatchReport, messages: Sequence[Outgoing]) -> None:
    table = Table(title=Text(f"batch {seed}"))
    for column in ("sent", "accepted", "rejected", "retried", "msgs/s", "MB/s", "p50 ms", "p99 ms"):
        table.add_column(Text(column), justify="right")
    elapsed = max(report.elapsed, 1e-6)
    cells = (
        str(len(report.outcomes)),
        str(report.accepted),
        str(report.rejected),
        str(report.retried),
        f"{len(report.outcomes) / elapsed:.1f}",
        f"{report.bytes_sent / elapsed / 1e6:.2f}",
        f"{report.latency_percentile(50) * 1000:.1f}",
        f"{report.latency_percentile(99) * 1000:.1f}",
    )
    table.add_row(*(Text(cell) for cell in cells))
    out.print(table)
    for outcome in report.outcomes:
        if not outcome.accepted or outcome.refused:
            what = "not accepted" if not outcome.accepted else "partly refused"
            say(f"{what}: {messages[outcome.index].message_id}: {outcome.reply}", error=True)
