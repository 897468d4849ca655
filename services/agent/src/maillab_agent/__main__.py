"""The agent's command line: typer commands that turn flags into calls, and results into output and exit codes.

Building messages is message.py's, checking the other flags inputs.py's, one message's SMTP
session session.py's (in the classroom dialect, classroom.py's), a batch batch.py's and its
terminal output summary.py's, the conformance run and its table conform.py's. Everything
printed goes through maillab_common.cli's `say` (or, in the interactive mode, `write`): text
from a user, a message or a server's replies may hold terminal controls or rich markup, and
is shown with its controls escaped and its brackets as they are. Bad input ends the program
with one line and exit code 2 before anything is sent, usage errors included (see
maillab_common.cli.run_app).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from maillab_agent import conform as conformance
from maillab_agent.batch import RETRY_FOR, send_batch, write_manifest
from maillab_agent.config import AgentConfig, memory_budget
from maillab_agent.config import server_address as parse_server
from maillab_agent.inputs import parse_credentials, parse_domains, parse_header, parse_rate, read_attachments, read_body
from maillab_agent.interactive import compose_on_stdio, show_dialog
from maillab_agent.message import DEFAULT_DOMAINS, BadInput, batch_messages, build_message, parse_size_range
from maillab_agent.session import Dialect, Session, SessionFailed
from maillab_agent.summary import progress_bar, show_summary
from maillab_common.cli import env_help, fail, run_app, say
from maillab_common.settings import ConfigError

# Exit codes, so that scripts can tell failures apart. Bad input and usage errors are
# maillab_common.cli.EXIT_USAGE (2), as in every maillab command.
EXIT_NOT_ALL_ACCEPTED = 1  # batch: some message was not accepted
EXIT_NONCONFORMING = 1  # conform: some case failed
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

ServerOption = Annotated[str | None, typer.Option(help=env_help("HOST:PORT of the SMTP server", "MAILLAB_SERVER"))]
StartTlsOption = Annotated[bool, typer.Option(help="Upgrade the connection with STARTTLS (certificate not checked)")]
AuthOption = Annotated[str | None, typer.Option(help="AUTH PLAIN as USER:PASS")]
DialectOption = Annotated[
    Dialect, typer.Option(help="The server's SMTP: RFC 5321, or the classroom dialect of course programs (LF, HELO)")
]


def check_dialect(dialect: Dialect, *, starttls: bool, auth: str | None) -> None:
    """BadInput for the flags the classroom dialect has no command for."""
    if dialect is Dialect.CLASSROOM and (starttls or auth is not None):
        flag = "--starttls" if starttls else "--auth"
        raise BadInput(f"{flag} cannot be used with --dialect classroom: the classroom dialect has no STARTTLS or AUTH")


@contextmanager
def refusing_bad_input() -> Iterator[None]:
    """Bad input or settings end the command with their one line and exit code 2."""
    try:
        yield
    except (BadInput, ConfigError) as exc:
        fail(str(exc))


@contextmanager
def exiting_on_session_failure() -> Iterator[None]:
    """A failed session ends the command with its one line and the exit code of its stage."""
    try:
        yield
    except SessionFailed as exc:
        fail(str(exc), _EXIT_FOR_STAGE[exc.stage])


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
    dialect: DialectOption = Dialect.RFC,
) -> None:
    """Send one message built from flags."""
    with refusing_bad_input():
        check_dialect(dialect, starttls=starttls, auth=auth)
        config = AgentConfig.from_env()
        host, port = config.server_address(server)
        if body is not None and body_file is not None:
            raise BadInput("give --body or --body-file, not both")
        text = body if body is not None else "This is a maillab test message.\n"
        if body_file is not None:
            text = read_body(body_file)
        headers = [parse_header(item) for item in header or []]
        outgoing = build_message(
            mail_from=mail_from,
            to=to,
            cc=cc or [],
            bcc=bcc or [],
            subject=subject,
            body=text,
            html_body=html_body,
            attachments=read_attachments(attach or []),
            headers=headers,
            message_id=f"<send-{random.getrandbits(64):016x}@maillab-agent.test>",
        )
        login = parse_credentials(auth) if auth is not None else None
    session = Session(
        host=host, port=port, timeout=config.timeout, starttls=starttls, credentials=login, dialect=dialect
    )
    with exiting_on_session_failure():
        refused = session.deliver(outgoing)
    for rcpt, reply in refused.items():
        say(f"refused {rcpt}: {reply}", error=True)
    accepted = len(outgoing.rcpt_tos) - len(refused)
    say(f"sent {outgoing.message_id} to {accepted} recipient(s)")


@app.command()
def interactive(
    host: Annotated[str | None, typer.Argument(help=env_help("SMTP server host", "MAILLAB_SERVER"))] = None,
    port: Annotated[int | None, typer.Argument(min=1, max=65535, help="SMTP server port")] = None,
    starttls: StartTlsOption = False,
    auth: AuthOption = None,
    dialect: DialectOption = Dialect.RFC,
) -> None:
    """Ask for From, To, Subject, Message (end with a line holding only '.') and Attachment, then send.

    Each SMTP command (C:) and server reply (S:) is printed as it happens. At end of input
    nothing is sent. Works the same with a pipe on standard input. With --dialect classroom
    it speaks to a course server: HELO, LF line endings, one command at a time.
    """
    with refusing_bad_input():
        check_dialect(dialect, starttls=starttls, auth=auth)
        config = AgentConfig.from_env()
        host, default_port = config.server_address() if host is None else parse_server(host, name="HOST")
        login = parse_credentials(auth) if auth is not None else None
        draft = compose_on_stdio()
        if draft is None:
            return
        outgoing = build_message(
            mail_from=draft.mail_from,
            to=draft.to,
            subject=draft.subject,
            body=draft.body,
            attachments=read_attachments(draft.attachments),
            message_id=f"<interactive-{random.getrandbits(64):016x}@maillab-agent.test>",
        )
    port = port or default_port
    session = Session(
        host=host,
        port=port,
        timeout=config.timeout,
        starttls=starttls,
        credentials=login,
        observer=show_dialog,
        dialect=dialect,
    )
    with exiting_on_session_failure():
        session.deliver(outgoing)


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
        Path | None, typer.Option(help=env_help("Write a JSON manifest of what was sent here", "MAILLAB_MANIFEST"))
    ] = None,
    server: ServerOption = None,
) -> None:
    """Send COUNT generated test messages with attachments, concurrently, and report."""
    with refusing_bad_input():
        config = AgentConfig.from_env()
        host, port = config.server_address(server)
        manifest = manifest or config.manifest
        if manifest is not None and manifest.is_dir():
            raise BadInput(f"--manifest {manifest} is a directory: give the path of the file to write")
        per_second = parse_rate(rate) if rate is not None else None
        domain_list = parse_domains(domains)
        seed = random.randrange(1_000_000) if seed is None else seed
        messages = batch_messages(
            seed=seed,
            count=count,
            attachments=attachments,
            attachment_size=parse_size_range(attachment_size),
            html=html,
            domains=domain_list,
            recipients_per_message=recipients_per_message,
            memory_budget=memory_budget(),
        )
    with exiting_on_session_failure():  # at once, rather than retry every message against nothing
        Session(host=host, port=port, timeout=config.timeout).probe()
    say(f"sending {count} messages (seed {seed}) to {host}:{port} over {concurrency} connection(s)", error=True)
    with progress_bar(count) as advance:
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
    show_summary(seed, report, messages)
    if manifest is not None:
        say(f"manifest: {manifest}")
    if report.rejected or report.partly_refused:
        raise typer.Exit(EXIT_NOT_ALL_ACCEPTED)


@app.command()
def conform(
    host: Annotated[str, typer.Argument(help="The server's host")],
    port: Annotated[int, typer.Argument(min=1, max=65535, help="The server's port")],
    dialect: DialectOption = Dialect.CLASSROOM,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for each reply")] = 5.0,
) -> None:
    """Check a classroom server: good and bad sessions from the grammar, one PASS or FAIL line each.

    Exit code 1 when any case fails, 3 when the server cannot be reached.
    """
    if dialect is not Dialect.CLASSROOM:
        fail("conform checks servers of the classroom dialect only: give --dialect classroom")
    columns = conformance.Columns.of(conformance.CASES)
    shown: list[conformance.Outcome] = []

    def show(outcome: conformance.Outcome) -> None:  # the header once the server is known to be there
        if not shown:
            say(columns.header())
        shown.append(outcome)
        say(columns.row(outcome))

    outcomes = conformance.run(host, port, timeout=timeout, on_outcome=show)
    if not outcomes[0].connected:
        fail(outcomes[0].got, EXIT_CONNECT)
    for line in conformance.summary(outcomes):
        say(line)
    if not all(outcome.passed for outcome in outcomes):
        raise typer.Exit(EXIT_NONCONFORMING)


def main() -> None:
    run_app(app, "maillab-agent", aborted_code=EXIT_NOT_ALL_ACCEPTED)


if __name__ == "__main__":
    main()
