"""The server's entry point: the only place that touches sockets, signals and the event loop.

`maillab-server` alone serves, as `maillab-server serve` does; `maillab-server healthcheck`
is the container's health check. Each setting's `--flag VALUE` on `serve` (config.FLAGS)
overrides its MAILLAB_* variable and goes through the same checks.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
import os
import signal
import smtplib
import ssl
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from maillab_common.cli import EXIT_USAGE, fail, run_app, say
from maillab_common.loop import run
from maillab_common.settings import ConfigError
from maillab_common.text import visible
from maillab_server.classroom import ClassroomSMTP, classroom_factory
from maillab_server.config import FLAGS, ServerConfig
from maillab_server.errors import StorageError
from maillab_server.handler import ForwardHandler
from maillab_server.protocol import LabSMTP, Sessions, protocol_factory
from maillab_server.store import RECENT_WINDOW, ForwardStore

log = logging.getLogger("maillab_server")


app = typer.Typer(add_completion=False, help="maillab's ESMTP server.")


@app.callback(invoke_without_command=True)
def _default(context: typer.Context) -> None:
    """maillab's ESMTP server: serves when no command is given."""
    if context.invoked_subcommand is None:
        raise typer.Exit(serve(configured({})))


# serve's options, one a setting, from FLAGS: parameter name -> (flag, variable).
_FLAG_OPTIONS = {flag.removeprefix("--").replace("-", "_"): (flag, variable) for flag, variable in FLAGS.items()}


def _serve_command(**values: str | None) -> None:
    # A flag's value is applied as its variable's, so that both go through the same checks.
    overrides = {_FLAG_OPTIONS[name][1]: value for name, value in values.items() if value}
    raise typer.Exit(serve(configured(overrides)))


_options = [
    inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[str | None, typer.Option(flag, metavar="VALUE", help=f"Overrides ${variable}.")],
    )
    for name, (flag, variable) in _FLAG_OPTIONS.items()
]
# typer reads a command's options from its signature: this one's is built from the table above.
setattr(_serve_command, "__signature__", inspect.Signature(_options))  # noqa: B010
_serve_command.__annotations__ = {option.name: option.annotation for option in _options}
app.command("serve", help="Run the SMTP server in the foreground (the default).")(_serve_command)


@app.command("healthcheck")
def _healthcheck_command() -> None:
    """Exit 0 when the forward folder is writable and the server answers SMTP on its ports."""
    raise typer.Exit(healthcheck(configured({})))


def main(argv: list[str] | None = None) -> NoReturn:
    run_app(app, "maillab-server", args=argv)


def configured(overrides: dict[str, str]) -> ServerConfig:
    """The settings from the environment and `overrides` (variable -> a flag's value).

    A wrong one stops the command with one line that names it as it was given, flag or variable.
    """
    try:
        return ServerConfig.from_env({**os.environ, **overrides})
    except ConfigError as exc:
        message = str(exc)
        for flag, variable in FLAGS.items():
            if variable in overrides:
                message = message.replace(variable, flag)
        fail(message, EXIT_USAGE)


def healthcheck(config: ServerConfig) -> int:
    try:
        ForwardStore(config.forward_dir).check_writable()
    except StorageError as exc:
        say(f"unhealthy: {exc}", error=True)
        return 1
    if (problem := _noop_problem(config.port)) is not None:
        say(f"unhealthy: {problem}", error=True)
        return 1
    if config.classroom_port and (problem := _noop_problem(config.classroom_port)) is not None:
        say(f"unhealthy: the classroom port {config.classroom_port}: {problem}", error=True)
        return 1
    return 0


def _noop_problem(port: int) -> str | None:
    """What is wrong with the SMTP server on `port` when it does not answer NOOP with 250."""
    try:
        # A fixed local name: smtplib would otherwise look its own up, a DNS query per check.
        with smtplib.SMTP("127.0.0.1", port, local_hostname="localhost", timeout=5) as client:
            code, reply = client.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return str(exc)
    return None if code == 250 else f"NOOP answered {code} {reply.decode(errors='replace')}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line. json.dumps escapes every control character and, with
    ensure_ascii, every non-ASCII one (C1, U+2028 ...): the line is plain ASCII."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """Log lines for a terminal: client text in them (unknown commands, which aiosmtpd logs
    as they came, addresses, HELO names) has its control characters shown as escapes, so
    it never acts on the terminal and a line feed in it never starts a line of its own.

    A traceback keeps its lines, each escaped and indented: only a record's first line
    starts at the left margin.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join(f"    {visible(line)}" for line in text.split("\n"))


def setup_logging(config: ServerConfig) -> None:
    # Client bytes that are not UTF-8 reach some log lines: written escaped, never an error.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(sys.stdout)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    # aiosmtpd logs every command at INFO; our own line per transaction is enough.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if config.log_level == "debug" else logging.WARNING)


def serve(config: ServerConfig) -> int:
    setup_logging(config)
    # XMAILLAB-ONCE must see back past the largest message a retry may repeat.
    store = ForwardStore(config.forward_dir, recent_window=max(RECENT_WINDOW, 2 * config.max_message_size))
    try:
        store.check_writable()
        store.repair()
    except (OSError, StorageError) as exc:
        log.error("cannot use the forward folder %s: %s", config.forward_dir, exc)
        return 1
    # One Sessions for both ports: one connection limit, one shutdown.
    sessions = Sessions(config.max_connections)
    handler = ForwardHandler(store, config)
    try:
        factory = protocol_factory(handler, config, sessions)
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.error("cannot set up TLS: %s", exc)
        return 1
    classroom = classroom_factory(handler, config, sessions) if config.classroom_port else None
    return run(_serve(config, factory, classroom, sessions))


async def _serve(
    config: ServerConfig,
    factory: Callable[[], LabSMTP],
    classroom: Callable[[], ClassroomSMTP] | None,
    sessions: Sessions,
) -> int:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    listeners: list[tuple[Callable[[], asyncio.BaseProtocol], int]] = [(factory, config.port)]
    if classroom is not None:
        listeners.append((classroom, config.classroom_port))
    for protocol, port in listeners:
        try:
            servers.append(await loop.create_server(protocol, host=config.listen_host, port=port))
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.listen_host, port, exc)
            for server in servers:
                server.close()
            return 1
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, storing in %s", config.listen_host, config.port, config.forward_dir)
    if classroom is not None:
        log.info("listening on %s:%d (classroom dialect)", config.listen_host, config.classroom_port)
    await stop.wait()
    log.info("stopping: no new connections; messages being received get %.0fs to finish", config.shutdown_grace)
    for server in servers:
        server.close()
    await sessions.shut_down(config.shutdown_grace)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    main()
