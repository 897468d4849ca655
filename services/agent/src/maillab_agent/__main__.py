"""The agent's command line: the only place that opens sockets, runs event loops and talks to the terminal.

Everything it prints goes through `say` (or, in the interactive mode, `write`): text from a
user, a message or a server's replies may hold terminal controls or rich markup, and is
shown with its controls escaped (maillab_common.text.visible) and its brackets as they are.
Bad input ends the program with one line and exit code 2 before anything is sent, usage
errors included (see `main`).
"""

from __future__ import annotations

import io
import mimetypes
import os
import random
import ssl
import stat
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from maillab_agent.batch import RETRY_FOR, Outcome, send_batch, write_manifest
from maillab_agent.config import AgentConfig, memory_budget
from maillab_agent.config import server_address as parse_server
from maillab_agent.interactive import compose
from maillab_agent.message import (
    DEFAULT_DOMAINS,
    MAX_ATTACHMENT_SIZE,
    Attachment,
    BadInput,
    Outgoing,
    batch_messages,
    build_message,
    check_mailbox,
    parse_size_range,
    require_single_line,
    require_text,
)
from maillab_agent.smtp import Observer, Reply, SmtpClient, SmtpConnectionError, SmtpError
from maillab_common.loop import run
from maillab_common.settings import ConfigError
from maillab_common.text import visible

# Exit codes of `send` and `interactive`, so that scripts can tell failures apart.
EXIT_OK = 0
EXIT_NOT_ALL_ACCEPTED = 1  # batch: some message was not accepted
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_SENDER_REJECTED = 4
EXIT_RECIPIENTS_REJECTED = 5
EXIT_DATA_REJECTED = 6
EXIT_SESSION_REFUSED = 7  # STARTTLS or AUTH refused
_EXIT_FOR_STAGE = {
    "connect": EXIT_CONNECT,
    "helo": EXIT_CONNECT,
    "starttls": EXIT_SESSION_REFUSED,
    "auth": EXIT_SESSION_REFUSED,
    "mail": EXIT_SENDER_REJECTED,
    "rcpt": EXIT_RECIPIENTS_REJECTED,
    "data": EXIT_DATA_REJECTED,
}

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Put mail into the maillab lab.")
out = Console()
err = Console(stderr=True)

ServerOption = Annotated[str | None, typer.Option(help="HOST:PORT of the SMTP server [env MAILLAB_SERVER]")]
StartTlsOption = Annotated[bool, typer.Option(help="Upgrade the connection with STARTTLS (certificate not checked)")]
AuthOption = Annotated[str | None, typer.Option(help="AUTH PLAIN as USER:PASS")]


def say(text: str, *, error: bool = False, label: str = "") -> None:
    """Print one line: its controls escaped, its markup literal, never wrapped."""
    line = Text(visible(text))
    if label:
        line = Text.assemble((label, "bold red"), " ", line)
    (err if error else out).print(line, soft_wrap=True, highlight=False)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    say(message, error=True, label="error:")
    raise typer.Exit(code)


def load_config() -> AgentConfig:
    try:
        return AgentConfig.from_env()
    except ConfigError as exc:
        fail(str(exc))


def server_address(config: AgentConfig, override: str | None) -> tuple[str, int]:
    try:
        return config.server_address(override)
    except ConfigError as exc:
        fail(str(exc))


def credentials(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, colon, password = auth.partition(":")
    if not colon or not user:
        fail("--auth takes USER:PASS")
    try:
        require_text(auth, "--auth")
    except BadInput as exc:
        fail(str(exc))
    return user, password


def load_attachments(paths: list[Path]) -> list[Attachment]:
    attachments = []
    for path in paths:
        try:
            require_single_line(path.name, "an attachment's file name")
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                if not stat.S_ISREG(status.st_mode):  # a directory, a FIFO, /dev/zero
                    fail(f"cannot attach {path}: not a regular file")
                if status.st_size > MAX_ATTACHMENT_SIZE:
                    fail(f"cannot attach {path}: over 1GiB")
                data = file.read()
        except OSError as exc:
            fail(f"cannot read {path}: {exc.strerror}")
        except (BadInput, ValueError) as exc:  # ValueError: a NUL in the path
            fail(f"cannot attach {path}: {exc}")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        attachments.append(Attachment(filename=path.name, content_type=content_type, data=data))
    return attachments


def deliver(
    outgoing: Outgoing,
    host: str,
    port: int,
    *,
    timeout: float,
    starttls: bool = False,
    auth: tuple[str, str] | None = None,
    observer: Observer | None = None,
) -> dict[str, Reply]:
    """Send one message in a session of its own; a failure ends the program with its exit code."""

    async def session() -> dict[str, Reply]:
        client = await SmtpClient.connect(host, port, timeout=timeout, observer=observer)
        try:
            if starttls:
                context = ssl.create_default_context()
                context.check_hostname = False  # a lab's certificate is self-signed
                context.verify_mode = ssl.CERT_NONE
                await client.starttls(context, host, "maillab-agent")
            if auth is not None:
                await client.login(*auth)
            return await client.send(outgoing.mail_from, outgoing.rcpt_tos, outgoing.wire)
        finally:
            await client.quit()

    try:
        return run(session())
    except SmtpConnectionError as exc:
        fail(f"cannot talk to {host}:{port}: {exc}", EXIT_CONNECT)
    except SmtpError as exc:
        detail = "; ".join(f"{rcpt}: {reply}" for rcpt, reply in exc.refused.items()) or str(exc.reply)
        what = {"rcpt": "every recipient refused", "mail": "sender refused", "data": "message refused"}
        fail(f"{what.get(exc.stage, exc.stage + ' refused')}: {detail}", _EXIT_FOR_STAGE[exc.stage])


@app.command()
def send(
    mail_from: Annotated[str, typer.Option("--from", help="Envelope sender and From header")],
    to: Annotated[list[str], typer.Option("--to", help="Recipient (repeatable)")],
    subject: Annotated[str, typer.Option(help="Subject line")] = "maillab test message",
    body: Annotated[str | None, typer.Option(help="Text body")] = None,
    body_file: Annotated[Path | None, typer.Option(help="Read the text body from this file")] = None,
    html_body: Annotated[str | None, typer.Option(help="An HTML alternative to the text body")] = None,
    cc: Annotated[list[str] | None, typer.Option(help="Cc recipient (repeatable)")] = None,
    bcc: Annotated[list[str] | None, typer.Option(help="Bcc recipient, not shown in headers (repeatable)")] = None,
    attach: Annotated[list[Path] | None, typer.Option(help="Attach this file (repeatable)")] = None,
    header: Annotated[list[str] | None, typer.Option(help="Extra header 'Name: value' (repeatable)")] = None,
    server: ServerOption = None,
    starttls: StartTlsOption = False,
    auth: AuthOption = None,
) -> None:
    """Send one message built from flags."""
    config = load_config()
    host, port = server_address(config, server)
    if body is not None and body_file is not None:
        fail("give --body or --body-file, not both")
    text = body if body is not None else "This is a maillab test message.\n"
    if body_file is not None:
        try:
            text = body_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            fail(f"cannot read {body_file}: {exc.strerror}")
    headers = []
    for item in header or []:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            fail(f"--header {item!r} is not of the form 'Name: value'")
        headers.append((name.strip(), value.strip()))
    try:
        outgoing = build_message(
            mail_from=mail_from,
            to=to,
            cc=cc or [],
            bcc=bcc or [],
            subject=subject,
            body=text,
            html_body=html_body,
            attachments=load_attachments(attach or []),
            headers=headers,
            message_id=f"<send-{random.getrandbits(64):016x}@maillab-agent.test>",
        )
    except BadInput as exc:
        fail(str(exc))
    refused = deliver(outgoing, host, port, timeout=config.timeout, starttls=starttls, auth=credentials(auth))
    for rcpt, reply in refused.items():
        say(f"refused {rcpt}: {reply}", error=True)
    accepted = len(outgoing.rcpt_tos) - len(refused)
    say(f"sent {outgoing.message_id} to {accepted} recipient(s)")


@app.command()
def interactive(
    host: Annotated[str | None, typer.Argument(help="SMTP server host [env MAILLAB_SERVER]")] = None,
    port: Annotated[int | None, typer.Argument(min=1, max=65535, help="SMTP server port")] = None,
    starttls: StartTlsOption = False,
    auth: AuthOption = None,
) -> None:
    """Ask for From, To, Subject, Message (end with a line holding only '.') and Attachment, then send.

    Each SMTP command (C:) and server reply (S:) is printed as it happens. At end of input
    nothing is sent. Works the same with a pipe on standard input.
    """
    config = load_config()
    if host is None:
        host, default_port = server_address(config, None)
    else:
        try:
            host, default_port = parse_server(host, name="HOST")
        except ConfigError as exc:
            fail(str(exc))
    login = credentials(auth)

    def write(text: str) -> None:
        """Prompts, errors and the dialog; a final line end is the only control that goes out as it is."""
        line = text.removesuffix("\n")
        sys.stdout.write(visible(line) + text[len(line) :])
        sys.stdout.flush()

    if sys.stdin is None:
        fail("no standard input to read the message from")
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Bytes that are not UTF-8 come through as surrogates, which the checks refuse with
        # a clear message, instead of as a UnicodeDecodeError.
        sys.stdin.reconfigure(errors="surrogateescape")
    draft = compose(sys.stdin.readline, write)
    if draft is None:
        write("\n")
        return
    try:
        outgoing = build_message(
            mail_from=draft.mail_from,
            to=draft.to,
            subject=draft.subject,
            body=draft.body,
            attachments=load_attachments(list(draft.attachments)),
            message_id=f"<interactive-{random.getrandbits(64):016x}@maillab-agent.test>",
        )
    except BadInput as exc:
        fail(str(exc))

    def show(side: str, line: str) -> None:
        write(f"{side}: {line}\n")

    deliver(outgoing, host, port or default_port, timeout=config.timeout, starttls=starttls, auth=login, observer=show)


@app.command()
def batch(
    count: Annotated[int, typer.Option(min=1, help="How many messages")] = 10,
    attachments: Annotated[int, typer.Option(min=0, help="Attachments per message")] = 1,
    attachment_size: Annotated[
        str, typer.Option(help="Size of each attachment: 100KiB, or a range 1KiB-1MiB")
    ] = "8KiB",
    html: Annotated[bool, typer.Option(help="Add an HTML alternative to each text body")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent SMTP connections")] = 4,
    domains: Annotated[str, typer.Option(help="Comma-separated recipient domains")] = ",".join(DEFAULT_DOMAINS),
    recipients_per_message: Annotated[int, typer.Option(min=1, help="Recipients per message")] = 1,
    rate: Annotated[str | None, typer.Option(help="At most this many messages a second, e.g. 50/s")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed gives the same messages")] = None,
    retry_for: Annotated[
        float, typer.Option(min=0, help="Retry a message that got a 4xx reply or was cut off for this many seconds")
    ] = RETRY_FOR,
    manifest: Annotated[
        Path | None, typer.Option(help="Write a JSON manifest of what was sent here [env MAILLAB_MANIFEST]")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Send COUNT generated test messages with attachments, concurrently, and report."""
    config = load_config()
    host, port = server_address(config, server)
    manifest = manifest or config.manifest
    if manifest is not None and manifest.is_dir():
        fail(f"--manifest {manifest} is a directory: give the path of the file to write")
    per_second = _rate(rate)
    domain_list = tuple(domain.strip() for domain in domains.split(",") if domain.strip())
    if not domain_list:
        fail("--domains names no domain")
    if seed is None:
        seed = random.randrange(1_000_000)
    try:
        sizes = parse_size_range(attachment_size)
        for domain in domain_list:
            check_mailbox(f"user@{domain}")
        messages = batch_messages(
            seed=seed,
            count=count,
            attachments=attachments,
            attachment_size=sizes,
            html=html,
            domains=domain_list,
            recipients_per_message=recipients_per_message,
            memory_budget=memory_budget(),
        )
    except BadInput as exc:
        fail(str(exc))
    _check_reachable(host, port, config.timeout)
    say(f"sending {count} messages (seed {seed}) to {host}:{port} over {concurrency} connection(s)", error=True)
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

        report = send_batch(
            messages,
            host=host,
            port=port,
            concurrency=concurrency,
            timeout=config.timeout,
            rate=per_second,
            retry_for=retry_for,
            on_outcome=advance,
        )
    if manifest is not None:
        try:
            write_manifest(manifest, seed=seed, server=f"{host}:{port}", messages=messages, report=report)
        except OSError as exc:
            fail(f"cannot write the manifest {manifest}: {exc.strerror}", EXIT_NOT_ALL_ACCEPTED)
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
    if manifest is not None:
        say(f"manifest: {manifest}")
    if report.rejected or report.partly_refused:
        raise typer.Exit(EXIT_NOT_ALL_ACCEPTED)


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    number = text.strip().removesuffix("/s")
    try:
        value = float(number)
    except ValueError:
        fail(f"--rate {text!r} is not a rate such as 50/s")
    if not value > 0:  # also NaN
        fail("--rate must be above 0")
    return value


def _check_reachable(host: str, port: int, timeout: float) -> None:
    """Fail at once, with the connect exit code, rather than retry every message against nothing."""

    async def probe() -> None:
        client = await SmtpClient.connect(host, port, timeout=timeout)
        await client.quit()

    try:
        run(probe())
    except (SmtpConnectionError, SmtpError) as exc:
        fail(f"cannot talk to {host}:{port}: {exc}", EXIT_CONNECT)


def main() -> None:
    """Run the CLI; a usage error is one line too (typer would draw a panel), and exit code 2."""
    try:
        code = app(prog_name="maillab-agent", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        code = exc.exit_code
    except ClickException as exc:
        context = getattr(exc, "ctx", None)
        hint = f" (see: {context.command_path} --help)" if context is not None else ""
        say(exc.format_message() + hint, error=True, label="error:")
        code = exc.exit_code
    except typer.Abort:
        say("aborted", error=True)
        code = EXIT_NOT_ALL_ACCEPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
