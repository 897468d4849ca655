"""Fixtures for tests that talk SMTP to a real maillab server on a loopback socket."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from maillab_server.classroom import ClassroomSMTP, classroom_factory
from maillab_server.config import ServerConfig
from maillab_server.handler import ForwardHandler
from maillab_server.protocol import Sessions, protocol_factory
from maillab_server.store import ForwardStore
from tests.helpers import Watch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerController(Controller):
    """aiosmtpd's Controller, building the SMTP protocol the way maillab's __main__ does.

    With a `classroom_port` in its config, the classroom listener runs too, on the same loop
    and the same Sessions, on that port (start_server gives it a free one).
    """

    def __init__(self, handler: object, config: ServerConfig) -> None:
        self.config = config
        self.sessions = Sessions(config.max_connections)
        self.classroom: asyncio.Server | None = None
        self.classroom_connections: list[ClassroomSMTP] = []
        super().__init__(handler, hostname="127.0.0.1", port=free_port(), server_hostname=config.hostname)

    def factory(self) -> SMTP:
        return protocol_factory(self.handler, self.config, self.sessions)()

    def start(self) -> None:
        super().start()
        if self.config.classroom_port:
            assert isinstance(self.handler, ForwardHandler), "the classroom listener stores through ForwardHandler"
            factory = classroom_factory(self.handler, self.config, self.sessions)

            def connection() -> ClassroomSMTP:
                self.classroom_connections.append(made := factory())
                return made

            listening = self.loop.create_server(connection, "127.0.0.1", self.config.classroom_port)
            self.classroom = asyncio.run_coroutine_threadsafe(listening, self.loop).result(timeout=10)

    def stop(self, no_assert: bool = False) -> None:
        if self.classroom is not None:
            asyncio.run_coroutine_threadsafe(self._close_classroom(), self.loop).result(timeout=10)
        super().stop(no_assert)

    async def _close_classroom(self) -> None:
        """Close the classroom listener and its connections, and let their conversations end with the loop up."""
        assert self.classroom is not None
        self.classroom.close()
        self.classroom = None
        talking = [connection for connection in self.classroom_connections if not connection.refused]
        for connection in talking:
            connection.abort()
        await asyncio.gather(*(connection.ended.wait() for connection in talking))

    def shut_down(self) -> None:
        """What SIGTERM does in __main__: no new connections; a message being received may finish."""
        asyncio.run_coroutine_threadsafe(self.sessions.shut_down(self.config.shutdown_grace), self.loop).result(30)


StartServer = Callable[..., ServerController]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start a real maillab server (store on tmp_path/forward unless told otherwise)."""
    started: list[ServerController] = []

    def start(handler: object | None = None, *, classroom: bool = False, **settings: object) -> ServerController:
        """With `classroom`, the classroom listener too, on a free port (`config.classroom_port`)."""
        forward = tmp_path / "forward"
        forward.mkdir(exist_ok=True)
        settings = {"forward_dir": forward, "classroom_port": free_port() if classroom else 0, **settings}
        config = ServerConfig(**settings)  # type: ignore[arg-type]
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


@pytest.fixture
def watched_forward(tmp_path: Path) -> Iterator[Path]:
    """An empty forward folder; every `watch` a test started on it (tests.helpers.Watch) is killed at the end."""
    (tmp_path / "forward").mkdir()
    yield tmp_path / "forward"
    for watch in Watch.started:
        watch.stop(signal.SIGKILL)
    Watch.started.clear()
