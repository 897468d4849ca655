"""The server process: connection limit, shutdown on SIGTERM, flags and log format."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records
from tests.helpers import run_cli, wait_until
from tests.unit.conftest import StartServer, free_port


def greeting_of(address: tuple[str, int]) -> tuple[socket.socket, bytes]:
    connection = socket.create_connection(address, timeout=10)
    return connection, connection.makefile("rb").readline()


def test_connections_over_the_limit_get_421(start_server: StartServer) -> None:
    server = start_server(max_connections=2)
    address = (server.hostname, server.port)
    first, second = greeting_of(address), greeting_of(address)
    third = greeting_of(address)
    try:
        assert first[1].startswith(b"220 ") and second[1].startswith(b"220 ")
        assert third[1].startswith(b"421 4.3.2 ") and b"too many connections" in third[1]
    finally:
        for connection, _ in (first, second, third):
            connection.close()
    wait_until(lambda: not server.sessions.open, "the server to see the three connections close")
    fourth = greeting_of(address)
    fourth[0].close()
    assert fourth[1].startswith(b"220 "), "room again once connections close"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


class Dialog:
    """A raw SMTP connection that reads one reply line at a time."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.replies = self.socket.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        return self.replies.readline()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def command(self, line: str) -> bytes:
        self.send(line.encode() + b"\r\n")
        reply = self.reply()
        while reply[3:4] == b"-":
            reply = self.reply()
        return reply


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    port, forward = free_port(), tmp_path / "forward"
    forward.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maillab_server",
            "serve",
            "--port",
            str(port),
            "--forward-dir",
            str(forward),
            "--listen-host",
            "127.0.0.1",
            "--shutdown-grace",
            "10",
            "--log-format",
            "json",
            "--classroom-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["message"].startswith(f"listening on 127.0.0.1:{port}"), first
        yield process, port, forward
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        Path(f"/tmp/maillab-server-{port}.sock").unlink(missing_ok=True)  # a killed server's health socket
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_sigterm_lets_a_message_finish_and_answers_421_to_the_rest(
    server_process: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, port, forward = server_process
    idle, busy = Dialog(port), Dialog(port)
    assert idle.command("EHLO idle.test").startswith(b"250")
    for line in ("EHLO busy.test", "MAIL FROM:<a@sender.test>", "RCPT TO:<b@one.test>"):
        assert busy.command(line).startswith(b"250")
    assert busy.command("DATA").startswith(b"354")
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    process.send_signal(signal.SIGTERM)
    assert idle.reply().startswith(b"421 4.3.2 "), "an idle connection is told and closed"
    assert idle.reply() == b""
    wait_until(lambda: refused(port), "the listening socket to close")
    busy.send(b"second half\r\n.\r\n")
    assert busy.reply().startswith(b"250 2.0.0 "), "the message being received is stored"
    assert busy.command("MAIL FROM:<c@sender.test>").startswith(b"421 4.3.2 ")
    assert process.wait(timeout=15) == 0
    items, _ = parse_records((forward / "one.test").read_bytes())
    assert [item.delivery.message for item in items if isinstance(item, Record)] == [
        b"Subject: in flight\n\nfirst half\nsecond half\n"
    ]
    for dialog in (idle, busy):
        dialog.socket.close()


def test_connections_closed_before_their_greeting_give_their_place_back(
    server_process: tuple[subprocess.Popen[str], int, Path],
) -> None:
    # A port probe or a scan connects and closes at once. Each must give its place back, or more
    # of them than the limit (100) lock every client out until the idle timeout (found by a probe).
    _, port, _ = server_process
    for _ in range(150):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()

    def greeted() -> bool:
        connection, greeting = greeting_of(("127.0.0.1", port))
        connection.close()
        return greeting.startswith(b"220 ")

    # Within seconds (the server may still be taking the probes in), where the idle timeout is 5 minutes.
    wait_until(greeted, "a greeting after the probes")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "abc"], "--port='abc' is not a whole number"),
        (["--max-connections", "0"], "--max-connections='0' must be at least 1"),
        (["--log-format", "xml"], "--log-format='xml' must be one of: text, json"),
    ],
)
def test_a_bad_flag_stops_start_up_with_a_clear_message(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maillab_server", "serve", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_usage_error_is_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maillab_server", "serve", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--no-such-flag" in result.stderr, result.stderr


def test_maillab_server_alone_serves_as_serve_does(tmp_path: Path) -> None:
    """The image's ENTRYPOINT is `maillab-server`: without a command it serves, settings from the environment."""
    port = free_port()
    environment = {
        **os.environ,
        "MAILLAB_SMTP_PORT": str(port),
        "MAILLAB_LISTEN_HOST": "127.0.0.1",
        "MAILLAB_FORWARD_DIR": str(tmp_path),
        "MAILLAB_LOG_FORMAT": "json",
        "MAILLAB_CLASSROOM_PORT": str(free_port()),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "maillab_server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["message"].startswith(f"listening on 127.0.0.1:{port}")
        healthcheck = [sys.executable, "-m", "maillab_server", "healthcheck"]
        assert subprocess.run(healthcheck, env=environment, timeout=30, check=False).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_a_bad_variable_stops_start_up_with_a_clear_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "maillab_server", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "MAILLAB_IDLE_TIMEOUT": "soon"},
    )
    assert result.returncode == 2 and "MAILLAB_IDLE_TIMEOUT='soon' is not a number" in result.stderr


def test_a_client_that_never_reads_does_not_hold_up_the_shutdown(
    server_process: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, port, _ = server_process
    flood = socket.create_connection(("127.0.0.1", port), timeout=10)
    flood.setblocking(False)
    sent = 0
    try:
        while sent < 16 * 1024 * 1024:  # NOOPs whose replies it never reads, until the socket backs up
            try:
                sent += flood.send(b"NOOP\r\n" * 4096)
            except BlockingIOError:
                break
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 20
    finally:
        flood.close()


def test_a_client_that_hangs_up_without_quit_frees_its_place(start_server: StartServer) -> None:
    # The idle timeout is far longer than the test: only the server closing its side on the
    # client's EOF can free the places.
    server = start_server(max_connections=3, idle_timeout=600.0)
    address = (server.hostname, server.port)
    for _ in range(6):
        connection, greeting = greeting_of(address)
        assert greeting.startswith(b"220 ")
        connection.shutdown(socket.SHUT_WR)  # EOF, as a client that closes without QUIT sends
        assert connection.recv(1) == b"", "the server closes its side once the client has hung up"
        connection.close()
    connections = [greeting_of(address) for _ in range(3)]
    try:
        assert all(greeting.startswith(b"220 ") for _, greeting in connections)
    finally:
        for connection, _ in connections:
            connection.close()


def test_the_health_socket_goes_at_shutdown_and_a_stale_one_does_not_stop_a_start(tmp_path: Path) -> None:
    port = free_port()
    path = Path(f"/tmp/maillab-server-{port}.sock")  # the default: MAILLAB_HEALTH_SOCKET is not set
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # and closed without a listen: what a killed server leaves behind
    environment = {
        **os.environ,
        "MAILLAB_SMTP_PORT": str(port),
        "MAILLAB_LISTEN_HOST": "127.0.0.1",
        "MAILLAB_FORWARD_DIR": str(tmp_path),
        "MAILLAB_LOG_FORMAT": "json",
        "MAILLAB_CLASSROOM_PORT": "0",
    }
    environment.pop("MAILLAB_HEALTH_SOCKET", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "maillab_server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    healthcheck = [sys.executable, "-m", "maillab_server", "healthcheck"]
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["message"].startswith(f"listening on 127.0.0.1:{port}")
        assert subprocess.run(healthcheck, env=environment, timeout=30, check=False).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert not path.exists(), "the socket is removed at shutdown"
        result = subprocess.run(healthcheck, env=environment, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 1 and result.stderr.startswith(f"unhealthy: the health socket {path}: ")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        path.unlink(missing_ok=True)


def test_a_file_that_is_not_a_socket_at_the_health_socket_path_stays_and_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "health"
    path.write_text("not a socket")
    result = run_cli(
        "maillab_server",
        *("serve", "--port", str(free_port()), "--classroom-port", "0", "--listen-host", "127.0.0.1"),
        *("--forward-dir", str(tmp_path), "--health-socket", str(path)),
    )
    assert result.returncode == 1
    assert f"cannot listen on the health socket {path}" in result.stdout, result.stdout
    assert path.read_text() == "not a socket"
