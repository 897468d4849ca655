"""The inspector's command line: the only place that touches the event source, signals and stdout."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from maillab_common.forward import Damaged, Record
from maillab_common.settings import ConfigError
from maillab_inspector.config import InspectorConfig
from maillab_inspector.render import MessageSummary, as_json, as_text, summarize
from maillab_inspector.tail import ForwardTail

log = logging.getLogger("maillab_inspector")
app = typer.Typer(add_completion=False, no_args_is_help=True, help="See what the maillab lab received.")


class _ChangedFiles(FileSystemEventHandler):
    """Queues the name of each forward file that an event says has changed."""

    def __init__(self, changed: queue.SimpleQueue[str]) -> None:
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    self._changed.put(os.path.basename(os.fsdecode(path)))


def load_config() -> InspectorConfig:
    try:
        return InspectorConfig.from_env()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def watch(
    from_start: Annotated[bool, typer.Option(help="Also print the messages already stored")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per message")] = False,
    forward_dir: Annotated[Path | None, typer.Option(help="The forward folder [env MAILLAB_FORWARD_DIR]")] = None,
) -> None:
    """Print each message once, as it lands in a forward file."""
    config = load_config()
    root = forward_dir or config.forward_dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not root.is_dir():
        typer.echo(f"error: the forward folder {root} does not exist", err=True)
        raise typer.Exit(2)
    tail = ForwardTail(root)
    changed: queue.SimpleQueue[str] = queue.SimpleQueue()
    observer = _start_observer(root, _ChangedFiles(changed))
    if not from_start:
        tail.skip_existing()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    emit = as_json if json_lines or config.output == "json" else as_text
    log.info("watching %s", root)
    next_sweep = 0.0
    try:
        while not stopping:
            now = time.monotonic()
            if now >= next_sweep:
                items = list(tail.poll_all())
                config.ready_file.touch()
                next_sweep = now + config.sweep_interval
            else:
                try:
                    name = changed.get(timeout=next_sweep - now)
                except queue.Empty:
                    continue
                items = list(tail.poll(name))
            for domain, item in items:
                _print(domain, item, emit)
    finally:
        observer.stop()
        config.ready_file.unlink(missing_ok=True)


@app.command()
def healthcheck() -> None:
    """Exit 0 while `watch` is running and sweeping the forward folder."""
    config = load_config()
    try:
        age = time.time() - config.ready_file.stat().st_mtime
    except FileNotFoundError:
        typer.echo("unhealthy: not watching yet", err=True)
        raise typer.Exit(1) from None
    if age > max(10 * config.sweep_interval, 10.0):
        typer.echo(f"unhealthy: no sweep for {age:.0f}s", err=True)
        raise typer.Exit(1)


def _start_observer(root: Path, handler: FileSystemEventHandler) -> BaseObserver:
    observer: BaseObserver = Observer()
    try:
        observer.schedule(handler, str(root), recursive=False)
        observer.start()
        log.info("file events from %s", type(observer).__name__)
        return observer
    except OSError as exc:
        log.warning("native file events unavailable (%s); polling instead", exc)
    observer = PollingObserver()
    observer.schedule(handler, str(root), recursive=False)
    observer.start()
    log.info("file events from %s", type(observer).__name__)
    return observer


def _print(domain: str, item: Record | Damaged, emit: Callable[[MessageSummary], str]) -> None:
    if isinstance(item, Damaged):
        log.warning("%s: %d damaged bytes at offset %d: %s", domain, item.length, item.offset, item.reason)
        return
    try:
        summary = summarize(domain, item)
    except Exception as exc:  # a message the email package cannot take apart must not stop the watch
        log.warning("%s: the message at offset %d cannot be summarised: %s", domain, item.offset, exc)
        return
    print(emit(summary), flush=True)


def main() -> None:
    app(prog_name="maillab-inspector")


if __name__ == "__main__":
    main()
