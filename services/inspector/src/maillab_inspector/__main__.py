"""The inspector's command line: options in, the modules called, their results printed.

Reading is the tail's (tail.py), taking a record apart the model's (model.py), presenting
it render.py's, following the folder the watcher's (watcher.py) and checking a batch
verify.py's. Nothing from a message is ever taken for an instruction: it reaches the
terminal as rich `Text`, after `visible` has shown its control characters as escapes; log
lines go through `visible` too.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from maillab_common import manifest
from maillab_common.addresses import InvalidAddress, normalise_domain
from maillab_common.cli import env_help, err, fail, out, run_app
from maillab_common.settings import ConfigError
from maillab_common.text import visible
from maillab_inspector import render, stored
from maillab_inspector.attachments import CannotSave, save
from maillab_inspector.config import InspectorConfig
from maillab_inspector.model import read_contents, thorough_budget
from maillab_inspector.tail import ForwardTail
from maillab_inspector.terminal import JsonOutput, TerminalOutput
from maillab_inspector.verify import check, collect, expected_deliveries
from maillab_inspector.watcher import Watcher, open_tail

app = typer.Typer(add_completion=False, no_args_is_help=True, help="See what the maillab lab received.")
ForwardDir = Annotated[Path | None, typer.Option(help=env_help("The forward folder", "MAILLAB_FORWARD_DIR"))]
Domain = Annotated[str | None, typer.Option(help="Only this domain's forward file")]


class VisibleFormatter(logging.Formatter):
    """Log lines with their control characters shown as escapes: one line each, never obeyed."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))


def setup(forward_dir: Path | None) -> tuple[InspectorConfig, Path]:
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        config = InspectorConfig.from_env()
    except ConfigError as exc:
        fail(str(exc))
    root = forward_dir or config.forward_dir
    if not root.is_dir():
        fail(f"the forward folder {root} does not exist")
    return config, root


def domain_file(domain: str | None) -> str | None:
    if domain is None:
        return None
    try:
        return normalise_domain(domain)
    except InvalidAddress as exc:
        fail(str(exc))


@app.command()
def watch(
    from_start: Annotated[bool, typer.Option(help="Print every stored message first, then new ones")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per message")] = False,
    domain: Domain = None,
    state: Annotated[Path | None, typer.Option(help="Where to keep positions across restarts")] = None,
    forward_dir: ForwardDir = None,
) -> None:
    """Print each message once, as it lands in a forward file.

    When messages land faster than panels can be printed, one line each, then a count per
    second, until they slow down; it says when it switches. --json never switches.
    """
    config, root = setup(forward_dir)
    only = domain_file(domain)
    state_file = state or config.state_file
    try:
        tail, positions = open_tail(root, state_file, from_start)
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot start watching (forward folder {root}, state file {state_file}): {exc}")
    watcher = Watcher(
        tail, only=only, sweep_interval=config.sweep_interval, positions=positions, ready_file=config.ready_file
    )
    watcher.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    try:
        watcher.run(JsonOutput() if json_lines or config.output == "json" else TerminalOutput(out))
    finally:
        positions.close()


@app.command("list")
def list_messages(
    domain: Domain = None,
    forward_dir: ForwardDir = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per message, as `watch --json`")] = False,
) -> None:
    """One line per stored message."""
    _, root = setup(forward_dir)
    tail = ForwardTail(root)
    items = stored.poll(tail, domain_file(domain))
    # A line needs the headers only; JSON says everything (attachments and their hashes).
    # Printed as read: line-buffered on a terminal; a flush a line costs more than the line to a pipe.
    lines = map(render.as_json, stored.summaries(items)) if json_lines else map(render.as_line, stored.headlines(items))
    for line in lines:
        print(line)
    stored.warn_unfinished(tail)


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(help="The Message-ID, with or without <>")],
    save_attachments: Annotated[Path | None, typer.Option(help="Save the attachments into this folder")] = None,
    forward_dir: ForwardDir = None,
) -> None:
    """Headers and body of one stored message."""
    _, root = setup(forward_dir)
    found = stored.find(ForwardTail(root), message_id)
    if found is None:
        fail(f"no stored message has the Message-ID <{message_id.strip().strip('<>')}>", 1)
    name, record = found
    for line in render.message_head(name, record):
        out.print(line)
    out.print()
    contents = read_contents(record, thorough_budget())
    if contents.problem:
        fail(f"the body and attachments cannot be shown: {contents.problem}", 1)
    for line in render.message_body(contents):
        out.print(line)
    if save_attachments is not None:
        try:
            saved = save(save_attachments, contents.attachments)
        except CannotSave as exc:
            fail(str(exc))
        for path in saved:
            out.print(Text(f"saved {visible(str(path))}"))


@app.command()
def verify(
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", help=env_help("The agent's manifest", "MAILLAB_MANIFEST"))
    ] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for missing messages")] = 30.0,
    forward_dir: ForwardDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object, for scripts")] = False,
) -> None:
    """Check that every message in a batch's manifest arrived, once and intact."""
    config, root = setup(forward_dir)
    path = manifest_path or config.manifest
    if path is None:
        fail("give --manifest PATH (or set MAILLAB_MANIFEST)")
    try:
        expected, not_accepted = expected_deliveries(manifest.read(path))
    except OSError as exc:
        fail(f"cannot read the manifest {path}: {exc.strerror}")
    except ValueError as exc:  # manifest.ManifestError, or text that is not UTF-8
        fail(f"{path}: {exc}")
    wanted = {item.key for item in expected}
    tail = ForwardTail(root)
    columns = (TextColumn("waiting for deliveries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("verify", total=len(wanted))
        collected = collect(tail, wanted, timeout, lambda found: progress.update(task, completed=found))
    stored.warn_unfinished(tail)
    report = check(expected, collected.found, not_accepted)
    counts = render.verify_counts(report, collected.damaged)
    if as_json:
        print(render.verify_json(path.name, report, counts), flush=True)
    else:
        out.print(render.verify_table(path.name, counts))
        print(render.verify_line(counts), flush=True)
        for line in render.verify_findings(report):
            out.print(line)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def healthcheck() -> None:
    """Exit 0 while `watch` is running and sweeping the forward folder."""
    try:
        config = InspectorConfig.from_env()
    except ConfigError as exc:
        fail(str(exc))
    try:
        age = time.time() - config.ready_file.stat().st_mtime
    except FileNotFoundError:
        fail("unhealthy: not watching yet", 1)
    if age > max(10 * config.sweep_interval, 10.0):
        fail(f"unhealthy: no sweep for {age:.0f}s", 1)


def main() -> None:
    run_app(app, "maillab-inspector")


if __name__ == "__main__":
    main()
