"""The server's entry point: the only place that touches sockets, signals and the event loop.

`maillab-server` alone serves, as `maillab-server serve` does; `maillab-server healthcheck`
is the container's health check; `maillab-server chaos set|show|clear` changes the running
server's fault-injection rules (chaos_cli.py). Each setting's `--flag VALUE` on `serve`
(config.FLAGS) overrides its MAILLAB_* variable and goes through the same checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import io
import json
import logging
import os
import signal
import smtplib
import socket
import ssl
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from maillab_common.cli import EXIT_USAGE, fail, run_app, say
from maillab_common.loop import run
from maillab_common.settings import ConfigError, env_str
from maillab_common.text import visible
from maillab_server.chaos import Chaos
from maillab_server.chaos_cli import clear_rules, set_rules, show_rules
from maillab_server.chaos_live import ChaosKeeper
from maillab_server.classroom import ClassroomSMTP, classroom_factory
from maillab_server.config import FLAGS, ServerConfig
from maillab_server.errors import StorageError
from maillab_server.handler import ForwardHandler
from maillab_server.protocol import LabSMTP, Sessions, protocol_factory
from maillab_server.store import RECENT_WINDOW, ForwardStore

log = logging.getLogger("maillab_server")
# Connections the health listener takes at once: the health check makes one every 5 s.
HEALTH_CONNECTIONS = 8


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
    """Exit 0 when the forward folder is writable and the server answers NOOP on its health socket."""
    raise typer.Exit(healthcheck(configured({})))


chaos_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fault injection: the rules of the running server (docs/chaos.md); the folder is $MAILLAB_CHAOS_DIR.",
)
app.add_typer(chaos_app, name="chaos")


def _chaos_dir() -> Path:
    return Path(env_str(os.environ, "MAILLAB_CHAOS_DIR", str(ServerConfig.chaos_dir)))


@chaos_app.command("set")
def _chaos_set_command(
    rules: Annotated[list[str], typer.Argument(help="The rules, separated by ';' (words are joined by spaces).")],
) -> None:
    """Check the rules, make them the server's, and print them once it applies them (within 2 s)."""
    set_rules(_chaos_dir(), " ".join(rules))


@chaos_app.command("show")
def _chaos_show_command(
    as_json: Annotated[bool, typer.Option("--json", help="The server's report as JSON.")] = False,
) -> None:
    """The rules the server applies, how often each has matched and fired, and a change not yet applied."""
    show_rules(_chaos_dir(), as_json=as_json)


@chaos_app.command("clear")
def _chaos_clear_command() -> None:
    """No rules (until set again); reserved addresses such as rcpt-451@... still answer."""
    clear_rules(_chaos_dir())


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
    # The health listener is served by the loop that serves the TCP ports, all bound at start
    # (a port that cannot be is the end of the server): its answer says the server is serving.
    if (problem := _noop_problem(config.health_socket_path)) is not None:
        say(f"unhealthy: {problem}", error=True)
        return 1
    return 0


def _noop_problem(path: Path) -> str | None:
    """What is wrong when the server's health listener (a unix socket at `path`) does not answer NOOP with 250.

    The connection is never asked about faults (`serve` gives that listener no rules), so
    the health check neither meets a rule nor counts for one.
    """
    try:
        # LMTP, for a client that connects to a unix socket: NOOP needs no LHLO. A fixed local
        # name: smtplib would otherwise look its own up, a DNS query per check.
        with smtplib.LMTP(str(path), local_hostname="localhost", timeout=5) as client:
            code, reply = client.noop()
    except (OSError, smtplib.SMTPException) as exc:
        return f"the health socket {path}: {exc}"
    return None if code == 250 else f"the health socket {path}: NOOP answered {code} {reply.decode(errors='replace')}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line. json.dumps escapes every control character and, with
    ensure_ascii, every non-ASCII one (C1, U+2028 ...): the line is plain ASCII."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # Structured fields, given as `extra={"event": {...}}` (a fault: chaos.py), as an object of their own.
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            entry["event"] = event
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
    chaos = Chaos(config.chaos)
    keeper = ChaosKeeper(chaos, config.chaos_dir, config.chaos)
    keeper.load()  # rules.json, which wins over MAILLAB_CHAOS, applies from the first connection
    handler = ForwardHandler(store, config, chaos)
    # The health check's listener: the lab's protocol with rules of its own, none, and a count of
    # its own, so that the health check never meets a fault, never counts for a rule, never takes a
    # client's place. It sends only NOOP: MAIL, RCPT and the end of DATA there would be the shared
    # handler's, and meet the shared rules.
    health_sessions = Sessions(HEALTH_CONNECTIONS)
    try:
        factory = protocol_factory(handler, config, sessions)
        health = protocol_factory(handler, config, health_sessions, chaos=Chaos())
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.error("cannot set up TLS: %s", exc)
        return 1
    classroom = classroom_factory(handler, config, sessions) if config.classroom_port else None
    return run(_serve(config, factory, classroom, health, (sessions, health_sessions), keeper))


async def _serve(
    config: ServerConfig,
    factory: Callable[[], LabSMTP],
    classroom: Callable[[], ClassroomSMTP] | None,
    health: Callable[[], LabSMTP],
    sessions: tuple[Sessions, ...],  # the lab's, and the health listener's
    keeper: ChaosKeeper,
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
    path = config.health_socket_path
    try:
        _clear_stale_socket(path)
        servers.append(await loop.create_unix_server(health, path=str(path)))
        bound = path.lstat()
    except OSError as exc:
        log.error("cannot listen on the health socket %s: %s", path, exc)
        for server in servers:
            server.close()
        return 1
    try:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("listening on %s:%d, storing in %s", config.listen_host, config.port, config.forward_dir)
        if classroom is not None:
            log.info("listening on %s:%d (classroom dialect)", config.listen_host, config.classroom_port)
        log.info("listening on %s for the health check, out of fault injection's reach", path)
        watching = asyncio.create_task(keeper.run())
        await stop.wait()
        log.info("stopping: no new connections; messages being received get %.0fs to finish", config.shutdown_grace)
        for server in servers:
            server.close()
        await asyncio.gather(*(each.shut_down(config.shutdown_grace) for each in sessions))
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await keeper.save()  # the last counts
        log.info("stopped")
        return 0
    finally:
        _remove_socket(path, bound)


def _clear_stale_socket(path: Path) -> None:
    """Remove the socket a server that is gone left at `path`; OSError when a server still listens there.

    Anything at `path` that is not a socket stays: the bind then fails on it.
    """
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()
            return
    raise OSError(errno.EADDRINUSE, "another server listens on it")


def _remove_socket(path: Path, bound: os.stat_result) -> None:
    """Remove the socket this server bound at `path`, unless another has taken its place since."""
    with contextlib.suppress(OSError):
        now = path.lstat()
        if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
            path.unlink()


if __name__ == "__main__":
    main()
