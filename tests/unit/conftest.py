"""Fixtures for tests that talk SMTP to a real maillab server on a loopback socket."""

from __future__ import annotations

import os
import smtplib
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from maillab_server.config import ServerConfig
from maillab_server.handler import ForwardHandler
from maillab_server.protocol import Sessions, protocol_factory
from maillab_server.store import ForwardStore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerController(Controller):
    """aiosmtpd's Controller, building the SMTP protocol the way maillab's __main__ does."""

    def __init__(self, handler: object, config: ServerConfig) -> None:
        self.config = config
        self.sessions = Sessions(config.max_connections)
        super().__init__(handler, hostname="127.0.0.1", port=free_port(), server_hostname=config.hostname)

    def factory(self) -> SMTP:
        return protocol_factory(self.handler, self.config, self.sessions)()


StartServer = Callable[..., ServerController]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start a real maillab server (store on tmp_path/forward unless told otherwise)."""
    started: list[ServerController] = []

    def start(handler: object | None = None, **settings: object) -> ServerController:
        forward = tmp_path / "forward"
        forward.mkdir(exist_ok=True)
        config = ServerConfig(**{"forward_dir": forward, **settings})  # type: ignore[arg-type]
        controller = ServerController(handler or ForwardHandler(ForwardStore(config.forward_dir), config), config)
        controller.start()
        started.append(controller)
        return controller

    try:
        yield start
    finally:
        for controller in started:
            controller.stop()


@pytest.fixture
def server(start_server: StartServer) -> ServerController:
    return start_server()


@pytest.fixture
def client(server: ServerController) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as connection:
        yield connection


def counting_fsyncs(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """os.fsync, counted by the name of what it synced (a forward file, or the folder)."""
    synced: Counter[str] = Counter()
    fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced[os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))] += 1
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return synced
