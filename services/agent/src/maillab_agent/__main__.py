"""The agent's command line: the only place that opens sockets and talks to the terminal."""

from __future__ import annotations

import random
import smtplib
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from maillab_agent.batch import SmtpConnection, refused_text, reply_text, send_batch, write_manifest
from maillab_agent.config import AgentConfig
from maillab_agent.message import (
    DEFAULT_DOMAINS,
    Attachment,
    UnsafeInput,
    batch_messages,
    build_message,
    parse_size,
)
from maillab_common.settings import ConfigError

# Exit codes of `send`, so that scripts can tell failures apart.
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_SENDER_REJECTED = 4
EXIT_RECIPIENTS_REJECTED = 5
EXIT_DATA_REJECTED = 6
EXIT_NOT_ALL_ACCEPTED = 1

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Put mail into the maillab lab.")
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
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
    server: Annotated[str | None, typer.Option(help="HOST:PORT of the SMTP server [env MAILLAB_SERVER]")] = None,
) -> None:
    """Send one message built from flags."""
    config = load_config()
    host, port = server_address(config, server)
    if body is not None and body_file is not None:
        fail("give --body or --body-file, not both")
    text = body if body is not None else "This is a maillab test message.\n"
    if body_file is not None:
        text = _read_file(body_file).decode("utf-8", errors="replace")
    headers = []
    for item in header or []:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            fail(f"--header {item!r} is not of the form 'Name: value'")
        headers.append((name.strip(), value.strip()))
    attachments = [
        Attachment(filename=path.name, content_type="application/octet-stream", data=_read_file(path))
        for path in attach or []
    ]
    try:
        outgoing = build_message(
            mail_from=mail_from,
            to=to,
            cc=cc or [],
            bcc=bcc or [],
            subject=subject,
            body=text,
            html_body=html_body,
            attachments=attachments,
            headers=headers,
            message_id=f"<send-{random.getrandbits(64):016x}@maillab-agent.test>",
        )
    except UnsafeInput as exc:
        fail(str(exc))
    try:
        with smtplib.SMTP(host, port, timeout=config.timeout) as client:
            refused = client.sendmail(outgoing.mail_from, list(outgoing.rcpt_tos), outgoing.data)
    except smtplib.SMTPSenderRefused as exc:
        fail(f"sender refused: {reply_text(exc.smtp_code, exc.smtp_error)}", EXIT_SENDER_REJECTED)
    except smtplib.SMTPRecipientsRefused as exc:
        fail(f"every recipient refused: {refused_text(exc.recipients)}", EXIT_RECIPIENTS_REJECTED)
    except smtplib.SMTPDataError as exc:
        fail(f"message refused: {reply_text(exc.smtp_code, exc.smtp_error)}", EXIT_DATA_REJECTED)
    except (OSError, smtplib.SMTPException) as exc:
        fail(f"cannot talk to {host}:{port}: {exc}", EXIT_CONNECT)
    for rcpt, (code, reply) in refused.items():
        err.print(f"refused {rcpt}: {reply_text(code, reply)}", highlight=False)
    out.print(f"sent {outgoing.message_id} to {len(outgoing.rcpt_tos) - len(refused)} recipient(s)", highlight=False)


@app.command()
def batch(
    count: Annotated[int, typer.Option(min=1, help="How many messages")] = 10,
    attachments: Annotated[int, typer.Option(min=0, help="Attachments per message")] = 1,
    attachment_size: Annotated[str, typer.Option(help="Size of each attachment, e.g. 100KiB")] = "8KiB",
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent SMTP connections")] = 4,
    domains: Annotated[str, typer.Option(help="Comma-separated recipient domains")] = ",".join(DEFAULT_DOMAINS),
    recipients_per_message: Annotated[int, typer.Option(min=1, help="Recipients per message")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed gives the same messages")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Write a JSON manifest of what was sent here [env MAILLAB_MANIFEST]")
    ] = None,
    server: Annotated[str | None, typer.Option(help="HOST:PORT of the SMTP server [env MAILLAB_SERVER]")] = None,
) -> None:
    """Send COUNT generated test messages with attachments, concurrently."""
    config = load_config()
    host, port = server_address(config, server)
    manifest = manifest or config.manifest
    try:
        size = parse_size(attachment_size)
    except ValueError as exc:
        fail(f"--attachment-size: {exc}")
    domain_list = tuple(domain.strip() for domain in domains.split(",") if domain.strip())
    if not domain_list:
        fail("--domains names no domain")
    if seed is None:
        seed = random.randrange(1_000_000)
    try:
        messages = batch_messages(
            seed=seed,
            count=count,
            attachments=attachments,
            attachment_size=size,
            domains=domain_list,
            recipients_per_message=recipients_per_message,
        )
    except UnsafeInput as exc:
        fail(str(exc))
    _check_reachable(host, port, config.timeout)
    err.print(
        f"sending {count} messages (seed {seed}) to {host}:{port} over {concurrency} connection(s)", highlight=False
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("sending", total=count, rate="")
        started = progress.get_time()

        def advance(_outcome: object) -> None:
            done = progress.tasks[task].completed + 1
            elapsed = max(progress.get_time() - started, 1e-6)
            progress.update(task, advance=1, rate=f"{done / elapsed:.0f} msg/s")

        report = send_batch(
            messages, host=host, port=port, concurrency=concurrency, timeout=config.timeout, on_outcome=advance
        )
    if manifest is not None:
        try:
            write_manifest(manifest, seed=seed, server=f"{host}:{port}", messages=messages, report=report)
        except OSError as exc:
            fail(f"cannot write the manifest {manifest}: {exc.strerror}", EXIT_NOT_ALL_ACCEPTED)
    table = Table(title=f"batch {seed}")
    for column in ("sent", "accepted", "rejected", "retried", "msgs/s", "MB/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    elapsed = max(report.elapsed, 1e-6)
    table.add_row(
        str(len(report.outcomes)),
        str(report.accepted),
        str(report.rejected),
        str(report.retried),
        f"{len(report.outcomes) / elapsed:.1f}",
        f"{report.bytes_sent / elapsed / 1e6:.2f}",
        f"{report.latency_percentile(50) * 1000:.1f}",
        f"{report.latency_percentile(99) * 1000:.1f}",
    )
    out.print(table)
    for outcome in report.outcomes:
        if not outcome.accepted:
            err.print(f"not accepted: {messages[outcome.index].message_id}: {outcome.reply}", highlight=False)
    if manifest is not None:
        out.print(f"manifest: {manifest}", highlight=False)
    if report.rejected:
        raise typer.Exit(EXIT_NOT_ALL_ACCEPTED)


def _check_reachable(host: str, port: int, timeout: float) -> None:
    connection = SmtpConnection(host, port, timeout)
    try:
        connection.open()
    except (OSError, smtplib.SMTPException) as exc:
        fail(f"cannot talk to {host}:{port}: {exc}", EXIT_CONNECT)
    finally:
        connection.close()


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def main() -> None:
    app(prog_name="maillab-agent")


if __name__ == "__main__":
    main()
