"""The inspector's command line: the only place that touches file events, signals and the terminal.

Nothing from a message is ever taken for an instruction here: text reaches the terminal as
rich `Text` or through consoles with markup, emoji codes and highlighting off, after
`visible` has shown its control characters as escapes; log lines go through the same.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from maillab_common.domains import InvalidAddress, normalise_domain
from maillab_common.forward import Damaged, Record
from maillab_common.settings import ConfigError
from maillab_common.text import visible
from maillab_inspector.config import InspectorConfig
from maillab_inspector.render import (
    Budget,
    MessageSummary,
    as_json,
    as_line,
    as_panel,
    header_text,
    headers_shown,
    parse_headers,
    read_contents,
    shown,
    summarize,
    thorough_budget,
)
from maillab_inspector.state import load_positions, save_positions
from maillab_inspector.tail import ForwardTail
from maillab_inspector.verify import Key, ManifestError, check, expected_deliveries

log = logging.getLogger("maillab_inspector")
app = typer.Typer(add_completion=False, no_args_is_help=True, help="See what the maillab lab received.")
# Markup, emoji codes (":smile:") and highlighting would each change or act on a message's text.
out = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, markup=False, emoji=False, highlight=False)
# After this many sweeps in a row that find data no file event announced, events are
# taken not to arrive on this file system (some network and FUSE mounts) and polling
# takes over.
MISSED_EVENTS_BEFORE_POLLING = 3

Item = tuple[str, Record | Damaged]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(Text.assemble(("error:", "bold red"), " ", visible(message)))
    raise typer.Exit(code)


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


class _ChangedFiles(FileSystemEventHandler):
    """Queues the name of each forward file that an event says has changed."""

    def __init__(self, changed: queue.SimpleQueue[str]) -> None:
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self._changed.put(os.path.basename(os.fsdecode(path)))


@app.command()
def watch(
    from_start: Annotated[bool, typer.Option(help="Print every stored message first, then new ones")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per message")] = False,
    domain: Annotated[str | None, typer.Option(help="Only this domain's forward file")] = None,
    state: Annotated[Path | None, typer.Option(help="Where to keep positions across restarts")] = None,
    forward_dir: Annotated[Path | None, typer.Option(help="The forward folder [env MAILLAB_FORWARD_DIR]")] = None,
) -> None:
    """Print each message once, as it lands in a forward file."""
    config, root = setup(forward_dir)
    only = domain_file(domain)
    state_file = state or config.state_file
    tail = ForwardTail(root)
    saved = None if from_start else load_positions(state_file)
    if saved is not None:
        tail.restore(saved)
        log.info("going on from the positions in %s", state_file)
    elif not from_start:
        tail.skip_existing()
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        save_positions(state_file, tail.positions())
    except OSError as exc:
        fail(f"cannot write the state file {state_file}: {exc}")

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    emit: Callable[[MessageSummary], RenderableType] = as_json if json_lines or config.output == "json" else as_panel
    changed: queue.SimpleQueue[str] = queue.SimpleQueue()
    handler = _ChangedFiles(changed)
    observer = _start_observer(root, handler, Observer())
    log.info("watching %s%s", root, f" (only {only})" if only else "")
    announced: set[str] = set()
    missed_sweeps = 0
    next_sweep = 0.0
    try:
        while not stopping:
            now = time.monotonic()
            if now >= next_sweep:
                while not changed.empty():
                    announced.add(changed.get_nowait())
                items = list(_poll(tail, only))
                unannounced = {name for name, item in items if isinstance(item, Record)} - announced
                missed_sweeps = missed_sweeps + 1 if unannounced else 0
                if missed_sweeps >= MISSED_EVENTS_BEFORE_POLLING and not isinstance(observer, PollingObserver):
                    log.warning("file events from %s are not arriving; polling instead", type(observer).__name__)
                    observer.stop()
                    observer = _start_observer(root, handler, PollingObserver())
                announced.clear()
                config.ready_file.touch()
                next_sweep = now + config.sweep_interval
            else:
                try:
                    name = changed.get(timeout=next_sweep - now)
                except queue.Empty:
                    continue
                announced.add(name)
                items = list(_poll(tail, only, name))
            for name, item in items:
                _print(name, item, emit)
                if time.monotonic() >= next_sweep:  # a long batch: still alive, says the health check
                    config.ready_file.touch()
            if items:
                save_positions(state_file, tail.positions())
    finally:
        observer.stop()
        config.ready_file.unlink(missing_ok=True)


@app.command("list")
def list_messages(
    domain: Annotated[str | None, typer.Option(help="Only this domain's forward file")] = None,
    forward_dir: Annotated[Path | None, typer.Option(help="The forward folder [env MAILLAB_FORWARD_DIR]")] = None,
) -> None:
    """One line per stored message."""
    _, root = setup(forward_dir)
    tail = ForwardTail(root)
    for summary in _stored(tail, domain_file(domain)):
        print(as_line(summary))  # line-buffered on a terminal; a flush a line costs more than the line to a pipe
    _warn_unfinished(tail)


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(help="The Message-ID, with or without <>")],
    save_attachments: Annotated[Path | None, typer.Option(help="Save the attachments into this folder")] = None,
    forward_dir: Annotated[Path | None, typer.Option(help="The forward folder [env MAILLAB_FORWARD_DIR]")] = None,
) -> None:
    """Headers and body of one stored message."""
    _, root = setup(forward_dir)
    wanted = message_id.strip().strip("<>")
    for name, item in ForwardTail(root).poll_all():
        if not isinstance(item, Record):
            continue
        headers = parse_headers(item)  # cheap: most messages are not the one
        if header_text(headers, "Message-ID").strip("<>") != wanted:
            continue
        delivery = item.delivery
        recipients = ", ".join(f"<{rcpt}>" for rcpt in delivery.rcpt_tos)
        envelope = f" @{item.offset}: from <{visible(delivery.mail_from)}> to {visible(recipients)}"
        out.print(Text.assemble((visible(name), "bold"), envelope))
        for header, value in headers_shown(headers):
            out.print(Text(f"{visible(header)}: {visible(value)}"))
        out.print()
        contents = read_contents(item, thorough_budget())
        if contents.problem:
            fail(f"the body and attachments cannot be shown: {contents.problem}", 1)
        # Line by line, so that line ends stay line ends and every other control (NEL and
        # U+2028 included, which splitlines() would take for line ends) is shown.
        lines = _LINE_END.split(contents.text.removesuffix("\n"))
        out.print(Text("\n".join(visible(line.expandtabs()) for line in lines)))
        payloads = contents.attachments
        for filename, content_type, data in payloads:
            out.print(Text(f"attachment: {visible(filename)} ({visible(content_type)}, {len(data)} bytes)"))
        if save_attachments is not None:
            for path in _save(save_attachments, payloads):
                out.print(Text(f"saved {visible(str(path))}"))
        return
    fail(f"no stored message has the Message-ID <{wanted}>", 1)


@app.command()
def verify(
    manifest: Annotated[Path | None, typer.Option(help="The agent's manifest [env MAILLAB_MANIFEST]")] = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for missing messages")] = 30.0,
    forward_dir: Annotated[Path | None, typer.Option(help="The forward folder [env MAILLAB_FORWARD_DIR]")] = None,
) -> None:
    """Check that every message in a batch's manifest arrived, once and intact."""
    config, root = setup(forward_dir)
    path = manifest or config.manifest
    if path is None:
        fail("give --manifest PATH (or set MAILLAB_MANIFEST)")
    try:
        expected, not_accepted = expected_deliveries(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        fail(f"cannot read the manifest {path}: {exc.strerror}")
    except (ValueError, ManifestError) as exc:
        fail(f"{path}: {exc}")
    wanted = {item.key for item in expected}
    found: dict[Key, list[MessageSummary]] = {}
    damaged = 0
    tail = ForwardTail(root)
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("waiting for deliveries"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("verify", total=len(wanted))
        while True:
            for name, item in tail.poll_all():
                if isinstance(item, Damaged):
                    damaged += 1
                    continue
                summary = _summary(name, item)
                if summary is not None and (summary.message_id, name) in wanted:
                    if summary.problem:  # past a summary's budget, perhaps: a batch's own message is read whole
                        summary = _summary(name, item, thorough_budget()) or summary
                    found.setdefault((summary.message_id, name), []).append(summary)
            progress.update(task, completed=len(found))
            if len(found) == len(wanted) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    _warn_unfinished(tail)
    report = check(expected, found, not_accepted)
    table = Table(title=Text(f"verify {visible(path.name)}"))
    for column in ("expected", "delivered", "missing", "corrupted", "duplicated", "unsent", "damaged"):
        table.add_column(column, justify="right")
    counts = (
        report.expected,
        report.delivered,
        len(report.missing),
        len(report.corrupted),
        len(report.duplicated),
        report.not_accepted,
        damaged,
    )
    table.add_row(*(str(count) for count in counts))
    out.print(table)
    names = ("expected", "delivered", "missing", "corrupted", "duplicated", "unsent", "damaged")
    print("verify: " + ", ".join(f"{name} {count}" for name, count in zip(names, counts, strict=True)), flush=True)
    for message_id, domain in report.missing:
        out.print(Text(f"missing: {shown(message_id)} in {visible(domain)}"))
    for (message_id, domain), problem in report.corrupted:
        out.print(Text(f"corrupted: {shown(message_id)} in {visible(domain)}: {shown(problem)}"))
    for (message_id, domain), copies in report.duplicated:
        out.print(Text(f"duplicated: {shown(message_id)} in {visible(domain)}: {copies} copies"))
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


def _poll(tail: ForwardTail, only: str | None, name: str | None = None) -> Iterator[Item]:
    if only is not None:
        return tail.poll(only) if name in (None, only) else iter(())
    return tail.poll(name) if name is not None else tail.poll_all()


def _start_observer(root: Path, handler: FileSystemEventHandler, observer: BaseObserver) -> BaseObserver:
    try:
        observer.schedule(handler, str(root), recursive=False)
        observer.start()
    except OSError as exc:
        log.warning("file events from %s are unavailable (%s); polling instead", type(observer).__name__, exc)
        observer = PollingObserver()
        observer.schedule(handler, str(root), recursive=False)
        observer.start()
    log.info("file events from %s", type(observer).__name__)
    return observer


def _summary(domain: str, record: Record, budget: Budget | None = None) -> MessageSummary | None:
    try:
        summary = summarize(domain, record, budget)
    except Exception as exc:  # a message the email package cannot take apart must not stop the inspector
        log.warning("%s: the message at offset %d cannot be summarised: %s", domain, record.offset, exc)
        return None
    if summary.problem:
        log.warning("%s: the message at offset %d: %s", domain, record.offset, summary.problem)
    return summary


def _warn_unfinished(tail: ForwardTail) -> None:
    for name, length in tail.unfinished().items():
        log.warning(
            "%s: its last %d bytes are not a whole record: one being written, or a torn one that "
            "the server cuts off when it next starts",
            name,
            length,
        )


def _stored(tail: ForwardTail, only: str | None) -> Iterator[MessageSummary]:
    for name, item in _poll(tail, only):
        if isinstance(item, Damaged):
            log.warning("%s: %d damaged bytes at offset %d: %s", name, item.length, item.offset, item.reason)
            continue
        summary = _summary(name, item)
        if summary is not None:
            yield summary


def _print(domain: str, item: Record | Damaged, emit: Callable[[MessageSummary], RenderableType]) -> None:
    if isinstance(item, Damaged):
        log.warning("%s: %d damaged bytes at offset %d: %s", domain, item.length, item.offset, item.reason)
        return
    summary = _summary(domain, item)
    if summary is None:
        return
    rendered = emit(summary)
    if isinstance(rendered, str):
        print(rendered, flush=True)  # JSON lines: never wrapped or styled
    else:
        out.print(rendered)


_LINE_END = re.compile(r"\r\n|\r|\n")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")
NAME_BYTES = 255  # the longest file name Linux file systems take (NAME_MAX)
LONGEST_EXTENSION = 16  # past this, what follows the last dot is not kept whole as an extension


def attachment_name(filename: str, number: int, copy: int = 0) -> str:
    """A file name for an attachment that is safe in any folder, and never too long.

    The last part of `filename` (so `../../x` is `x`), every character but letters, digits,
    `.`, `_`, ` ` and `-` as `_` (controls and path separators included), no leading dot;
    `attachment-NUMBER` where nothing is left. Cut to NAME_BYTES, keeping the extension;
    copy N > 0 of a name gets `-N` before its extension.
    """
    base = Path(filename.replace("\\", "/")).name
    name = _UNSAFE_NAME.sub("_", base).lstrip(". ").rstrip() or f"attachment-{number}"
    dot = name.rfind(".")
    extension = name[dot:] if dot > 0 and len(name) - dot <= LONGEST_EXTENSION else ""
    stem = name[: len(name) - len(extension)]
    tail = (f"-{copy}" if copy else "") + extension
    return stem[: NAME_BYTES - len(tail)] + tail  # ASCII by now: one byte per character


def _save(folder: Path, payloads: list[tuple[str, str, bytes]]) -> list[Path]:
    """Write attachments under `folder`, each under `attachment_name`, never overwriting a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create {folder}: {exc.strerror}")
    saved = []
    for number, (filename, _, data) in enumerate(payloads, start=1):
        copy = 0
        while True:
            path = folder / attachment_name(filename, number, copy)
            try:
                with open(path, "xb") as file:
                    file.write(data)
                break
            except FileExistsError:  # a file, a folder or a symlink: never written through
                copy += 1
            except OSError as exc:
                fail(f"cannot write {path}: {exc.strerror}")
        saved.append(path)
    return saved


def main() -> None:
    app(prog_name="maillab-inspector")


if __name__ == "__main__":
    main()
