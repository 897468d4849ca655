"""The server's entry point: the only place that touches sockets, signals and the event loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import smtplib
import sys
import time
from functools import partial

from aiosmtpd.smtp import SMTP

from maillab_common.settings import ConfigError
from maillab_server.config import ServerConfig
from maillab_server.errors import StorageError
from maillab_server.handler import ForwardHandler
from maillab_server.store import ForwardStore

log = logging.getLogger("maillab_server")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maillab-server", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the SMTP server in the foreground (the default)")
    commands.add_parser("healthcheck", help="exit 0 when the server answers SMTP on its port")
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_env()
    except ConfigError as exc:
        print(f"maillab-server: {exc}", file=sys.stderr)
        return 2
    if args.command == "healthcheck":
        return healthcheck(config)
    return serve(config)


def healthcheck(config: ServerConfig) -> int:
    try:
        ForwardStore(config.forward_dir).check_writable()
    except StorageError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    try:
        with smtplib.SMTP("127.0.0.1", config.port, timeout=5) as client:
            code, reply = client.noop()
    except (OSError, smtplib.SMTPException) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if code != 250:
        print(f"unhealthy: NOOP answered {code} {reply.decode(errors='replace')}", file=sys.stderr)
        return 1
    return 0


def serve(config: ServerConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    # aiosmtpd logs every command at INFO; our own line per transaction is enough.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if config.log_level == "debug" else logging.WARNING)
    store = ForwardStore(config.forward_dir)
    try:
        store.check_writable()
        store.repair()
    except (OSError, StorageError) as exc:
        log.error("cannot use the forward folder %s: %s", config.forward_dir, exc)
        return 1
    handler = ForwardHandler(store, config)
    factory = partial(
        SMTP,
        handler,
        hostname=config.hostname,
        ident="maillab ESMTP",
        data_size_limit=config.max_message_size,
        enable_SMTPUTF8=True,
        timeout=config.idle_timeout,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        server = loop.run_until_complete(loop.create_server(factory, host=config.listen_host, port=config.port))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.listen_host, config.port, exc)
        return 1
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("listening on %s:%d, storing in %s", config.listen_host, config.port, config.forward_dir)
    loop.run_until_complete(stop.wait())
    log.info("stopping: no new connections; waiting up to %.0fs for deliveries in flight", config.shutdown_grace)
    server.close()
    loop.run_until_complete(_drain(handler, config.shutdown_grace))
    loop.close()
    log.info("stopped")
    return 0


async def _drain(handler: ForwardHandler, grace: float) -> None:
    deadline = time.monotonic() + grace
    while handler.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
