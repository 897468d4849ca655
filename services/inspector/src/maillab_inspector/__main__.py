"""The inspector's command line: options in, the modules called, their results printed.

Reading is the tail's (tail.py), taking a record apart the model's (model.py), presenting
it render.py's, following the folder the watcher's (watcher.py), checking a batch
verify.py's, and waiting on the running inspector's API waiting.py's (which asks through
`http_get`, here with every other socket). Nothing from a message is ever taken for an
instruction: it reaches the terminal as rich `Text`, after `visible` has shown its control
characters as escapes; log lines go through `visible` too.
"""

from __future__ import annotations

import http.client
import logging
import math
import signal
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from maillab_common import manifest
from maillab_common.addresses import InvalidAddress, normalise_domain
from maillab_common.cli import env_help, err, fail, out, run_app, say
from maillab_common.settings import ConfigError
from maillab_common.text import visible
from maillab_inspector import query as search
from maillab_inspector import render, stored, waiting
from maillab_inspector.attachments import CannotSave, save
from maillab_inspector.catalogue import Catalogue, SchemaMismatch
from maillab_inspector.cataloguing import (
    CatalogueInUse,
    FeedingProcess,
    catch_up,
    open_catalogue,
    remove_catalogue,
    serving_lock,
    writer_lock,
)
from maillab_inspector.config import InspectorConfig, api_url
from maillab_inspector.logs import log_visibly
from maillab_inspector.model import read_contents, thorough_budget
from maillab_inspector.tail import ForwardTail
from maillab_inspector.terminal import JsonOutput, TerminalOutput
from maillab_inspector.verify import check, collect, expected_deliveries
from maillab_inspector.watcher import Watcher, open_tail
from maillab_inspector.web.api_v1 import PAGE_MAX
from maillab_inspector.web.app import create_app, stop_streams

app = typer.Typer(add_completion=False, no_args_is_help=True, help="See what the maillab lab received.")
ForwardDir = Annotated[Path | None, typer.Option(help=env_help("The forward folder", "MAILLAB_FORWARD_DIR"))]
Domain = Annotated[str | None, typer.Option(help="Only this domain's forward file")]
CatalogueFile = Annotated[
    Path | None, typer.Option("--catalogue", help=env_help("The catalogue database", "MAILLAB_CATALOGUE"))
]


def setup(forward_dir: Path | None) -> tuple[InspectorConfig, Path]:
    log_visibly()
    try:
        config = InspectorConfig.from_env()
    except ConfigError as exc:
        fail(str(exc))
    root = forward_dir or config.forward_dir
    if not root.is_dir():
        fail(f"the forward folder {root} does not exist")
    return config, root


# The names a browser on the lab's host reaches it by; others come from MAILLAB_HTTP_HOSTS.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class HttpServer:
    """uvicorn serving `app` in a thread of its own, on a socket bound before it starts (so that a
    port in use is an error at once); `ready_file` holds the address while it serves, for the health check."""

    STOP_WITHIN = 2.0  # seconds open requests (an event stream, a wait) get to end at a stop

    def __init__(self, app: FastAPI, address: tuple[str, int], ready_file: Path) -> None:
        self.app, self.address, self.ready_file = app, address, ready_file
        config = uvicorn.Config(
            app, log_config=None, access_log=False, timeout_graceful_shutdown=int(self.STOP_WITHIN), lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, reuse_port=False)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise OSError(f"the HTTP server stopped while starting on {host}:{port}")
            time.sleep(0.02)
        self.ready_file.write_text(f"{host} {port}\n")

    def stop(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        stop_streams(self.app)  # uvicorn waits for open responses: event streams and waits end now
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.STOP_WITHIN + 3)


def http_health(ready_file: Path) -> str:
    """What is wrong with `serve`'s HTTP side ('' when it answers, or when there is none: `watch`)."""
    try:
        host, port = ready_file.read_text().split()
    except FileNotFoundError:
        return ""
    except (OSError, ValueError):
        return f"{ready_file} does not name the HTTP address"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            if response.status == 200:
                return ""
            return f"{url} answered {response.status}"
    except (OSError, urllib.error.URLError) as exc:
        return f"{url} does not answer: {exc}"


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


@app.command()
def serve(
    json_lines: Annotated[bool, typer.Option("--json", help="Print one JSON object per message")] = False,
    state: Annotated[Path | None, typer.Option(help="Where to keep the printed positions across restarts")] = None,
    catalogue_file: CatalogueFile = None,
    host: Annotated[
        str | None, typer.Option(help=env_help("The address to serve HTTP on", "MAILLAB_HTTP_HOST"))
    ] = None,
    port: Annotated[
        int | None, typer.Option(help=env_help("The HTTP port", "MAILLAB_HTTP_PORT"), min=1, max=65535)
    ] = None,
    forward_dir: ForwardDir = None,
) -> None:
    """Watch, catalogue, print and serve: `watch`'s output, plus the web view and the JSON API.

    What the lab's inspector runs. A catalogue that is missing, or of another version, is
    rebuilt from the forward files first (the web view fills meanwhile).
    """
    config, root = setup(forward_dir)
    catalogue_path = catalogue_file or config.catalogue_file
    state_file = state or config.state_file
    address = (host or config.http_host, port or config.http_port)
    try:
        lock = serving_lock(catalogue_path)
        writer_lock(catalogue_path).close()  # a catalogue process of a serve killed before has finished
        catalogue, _ = open_catalogue(catalogue_path)
        tail, positions = open_tail(root, state_file, from_start=False)
    except CatalogueInUse as exc:
        fail(str(exc), 1)
    except (OSError, sqlite3.Error, SchemaMismatch) as exc:
        fail(f"cannot start (forward folder {root}, state {state_file}, catalogue {catalogue_path}): {exc}")
    hosts = (*LOOPBACK_NAMES, *config.http_hosts)
    web = create_app(catalogue, root, config.manifest, hosts=hosts, chaos_dir=config.chaos_dir)
    http = HttpServer(web, address, config.http_ready_file)
    feeding = FeedingProcess(catalogue, root, config.sweep_interval)
    printer = Watcher(tail, sweep_interval=config.sweep_interval, positions=positions, ready_file=config.ready_file)
    printer.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    try:
        try:
            http.start()
        except OSError as exc:
            fail(f"cannot serve HTTP on {address[0]}:{address[1]}: {exc.strerror or exc}")
        logging.getLogger("maillab_inspector").info("the web view and API: http://%s:%d/", *address)
        feeding.start(on_failure=printer.stop)
        printer.run(JsonOutput() if json_lines or config.output == "json" else TerminalOutput(out))
    finally:
        feeding.stop()
        http.stop()
        positions.close()
        catalogue.close()
        lock.close()
    if feeding.failure is not None:
        fail(f"cataloguing stopped: {feeding.failure}")


@app.command()
def reindex(
    catalogue_file: CatalogueFile = None,
    forward_dir: ForwardDir = None,
) -> None:
    """Rebuild the catalogue from the forward files, which stay untouched (with `serve` stopped)."""
    config, root = setup(forward_dir)
    path = catalogue_file or config.catalogue_file
    try:
        lock = serving_lock(path)
    except CatalogueInUse as exc:
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot open the catalogue {path}: {exc.strerror or exc}")
    try:
        writing = writer_lock(path)
    except CatalogueInUse as exc:
        lock.close()
        fail(str(exc), 1)
    except OSError as exc:
        lock.close()
        fail(f"cannot open the catalogue {path}: {exc.strerror or exc}")
    try:
        remove_catalogue(path)
        catalogue, _ = open_catalogue(path)
    except (OSError, sqlite3.Error, SchemaMismatch) as exc:
        writing.close()
        lock.close()
        fail(f"cannot make the catalogue {path}: {exc}")
    columns = (TextColumn("cataloguing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    started = time.monotonic()
    try:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("reindex")
            count = catch_up(
                catalogue, ForwardTail(root), lambda done, total: progress.update(task, completed=done, total=total)
            )
    finally:
        catalogue.close()
        writing.close()
        lock.close()
    print(f"catalogued {count:,} messages from {root} in {time.monotonic() - started:.1f}s into {path}", flush=True)


@app.command("list")
def list_messages(
    domain: Domain = None,
    forward_dir: ForwardDir = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per message, as `watch --json`")] = False,
    query: Annotated[
        str | None,
        typer.Option(help="Only what this search matches (docs/api.md's syntax), newest first, from the catalogue"),
    ] = None,
    catalogue_file: CatalogueFile = None,
) -> None:
    """One line per stored message (in each file's order), or per message a search matches."""
    config, root = setup(forward_dir)
    if query is not None:
        list_catalogued(catalogue_file or config.catalogue_file, query, domain_file(domain), json_lines)
        return
    tail = ForwardTail(root)
    items = stored.poll(tail, domain_file(domain))
    # A line needs the headers only; JSON says everything (attachments and their hashes).
    # Printed as read: line-buffered on a terminal; a flush a line costs more than the line to a pipe.
    lines = map(render.as_json, stored.summaries(items)) if json_lines else map(render.as_line, stored.headlines(items))
    for line in lines:
        print(line)
    stored.warn_unfinished(tail)


def list_catalogued(path: Path, text: str, domain: str | None, json_lines: bool) -> None:
    try:
        query = search.parse(text)
    except search.QuerySyntaxError as exc:
        fail(f"--query: {exc}")
    if not path.is_file():
        fail(f"no catalogue at {path}: `serve` keeps it (make up), or `reindex` makes it", 1)
    try:
        catalogue = Catalogue(path)
    except (SchemaMismatch, OSError, sqlite3.Error) as exc:
        fail(f"cannot read the catalogue {path}: {exc}; `reindex` rebuilds it", 1)
    try:
        cursor = None
        while True:
            page = catalogue.messages(query, domain, limit=1000, cursor=cursor)
            for summary in page.messages:
                print(render.json_line(summary.as_json()) if json_lines else render.as_line(summary))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    finally:
        catalogue.close()


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


@app.command("wait")
def wait_for_mail(
    query: Annotated[str, typer.Argument(help="What to wait for, in the API's query syntax (docs/api.md); '' for any")],
    count: Annotated[int, typer.Option(min=1, max=PAGE_MAX, help="How many matching messages to wait for")] = 1,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait at most")] = 10.0,
    domain: Annotated[
        str | None, typer.Option(help="Only this domain's mail: for the wait, and for the latest shown on timeout")
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="Each message as a JSON line: the API's summary")] = False,
    api: Annotated[
        str | None, typer.Option("--api-url", help=env_help("The running inspector's address", "MAILLAB_API_URL"))
    ] = None,
) -> None:
    """Wait until COUNT messages match QUERY in the running lab, and print them (exit 0).

    Mail that arrived before the call counts. On timeout it prints what did match (stdout)
    and the latest messages there are, matching or not (stderr), and exits 1; a malformed
    query, or a lab that does not answer, is one error line and exit 2.
    """
    try:
        config = InspectorConfig.from_env()
        base = config.api_url if api is None else api_url(api, name="--api-url")
    except ConfigError as exc:
        fail(str(exc))
    if not math.isfinite(timeout):
        fail(f"--timeout {timeout} is not a number of seconds")
    wanted = waiting.Wanted(query, count, timeout, domain or None)
    show = waiting.as_json if json_lines else waiting.as_line
    try:
        outcome = waiting.wait_for(http_get, base, wanted)
    except waiting.Interrupted as exc:
        for arrived in exc.messages:
            print(show(arrived), flush=True)
        fail(str(exc))
    except waiting.Refused as exc:
        fail(str(exc))
    except (OSError, http.client.HTTPException) as exc:
        fail(waiting.unreachable(base, exc))
    if not outcome.found:
        say(waiting.timed_out(wanted, outcome), error=True)
    for arrived in outcome.messages:
        print(show(arrived), flush=True)
    if not outcome.found:
        # On stderr, as lines for a person, with --json too: stdout stays the matches, one summary a line.
        for line in waiting.latest_lines(waiting.latest(http_get, base, wanted.domain), wanted.domain):
            say(line, error=True)
        raise typer.Exit(1)


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET `url` and read the whole answer, whatever its status; OSError or HTTPException when none comes.

    Never through a proxy (urllib would take one from http_proxy): the lab is on this host or its network.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as answer:  # a status other than 2xx: still an answer, with a body
        try:
            return answer.code, answer.read()
        finally:
            answer.close()


@app.command()
def healthcheck() -> None:
    """Exit 0 while `watch` (or `serve`) is running and sweeping the forward folder, and `serve`'s HTTP side answers."""
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
    problem = http_health(config.http_ready_file)
    if problem:
        fail(f"unhealthy: {problem}", 1)


def main() -> None:
    run_app(app, "maillab-inspector")


if __name__ == "__main__":
    main()
