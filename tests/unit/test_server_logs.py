"""The server's log: client text in it never acts on a terminal, in either log format.

A real `maillab-server serve` process gets hostile commands, HELO names, addresses and AUTH
lines, each carrying terminal controls; its whole output is then checked for any of them.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maillab_server.__main__ import JsonFormatter, TextFormatter
from tests.hostile import CONTROL_PAYLOADS, assert_inert
from tests.unit.conftest import free_port

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def hostile_session(payload: str) -> bytes:
    """Commands that put `payload` where the server logs it, or may."""
    text = payload.encode()
    return b"".join(
        line + b"\r\n"
        for line in (
            text,  # an unknown command: aiosmtpd logs it at WARNING as it came
            b"X" + text,
            b"EHLO " + text,
            b"MAIL FROM:<" + text + b"@sender.test>",  # refused, and logged
            b"MAIL FROM:<a@sender.test>",
            b"RCPT TO:<" + text + b"@one.test>",
            b"RCPT TO:<b@[IPv6:fe80::1%" + text + b"]>",
            b"VRFY " + text,
            b"HELP " + text,
            b"AUTH " + text,
            b"AUTH PLAIN " + text,
            b"RSET",
        )
    )


def run_server(tmp_path: Path, log_format: str, log_level: str, sessions: list[bytes]) -> bytes:
    """Start the server, play each session on its own connection, stop it; all it wrote."""
    port, forward = free_port(), tmp_path / "forward"
    forward.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "maillab_server", "serve"),
            *("--port", str(port), "--listen-host", "127.0.0.1", "--forward-dir", str(forward)),
            *("--log-format", log_format, "--log-level", log_level, "--auth-users", "lab:secret"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    # Read as it comes: a full pipe would stop the server in the middle of a log line.
    with ThreadPoolExecutor(1) as reader:
        rest = reader.submit(process.stdout.read)
        try:
            play(port, sessions)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        output = first + rest.result(timeout=30)
    process.stdout.close()
    assert b"listening on" in first, output
    return output


def play(port: int, sessions: list[bytes]) -> None:
    """Each session on its own connection, read to the server's close."""
    for session in sessions:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
            connection.makefile("rb") as replies,
        ):
            replies.readline()
            connection.sendall(session + b"QUIT\r\n")
            while replies.readline():  # to the close: every command was handled
                pass


@pytest.mark.parametrize("log_level", ["info", "debug"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_control_from_a_client_reaches_the_log_raw(tmp_path: Path, log_format: str, log_level: str) -> None:
    sessions = [hostile_session(payload) for payload in CONTROL_PAYLOADS]
    sessions.append(b"\x9bPWNED-RAW-C1 \xff\xfe\r\n" + b"\x1b]0;PWNED-TITLE\x07 x\r\n" * 3)  # not UTF-8
    output = run_server(tmp_path, log_format, log_level, sessions)
    assert_inert(output)
    assert "\u2028".encode() not in output
    assert b"PWNED-TITLE" in output and b"PWNED-C1OSC" in output, "the hostile text was logged"
    lines = output.decode("ascii" if log_format == "json" else "utf-8").splitlines()
    if log_format == "json":
        entries = [json.loads(line) for line in lines]  # every line is one whole entry
        assert any("\x1b]0;PWNED-TITLE\x07" in entry["message"] for entry in entries), "escaped, not lost"
    else:
        assert any("\\x1b]0;PWNED-TITLE\\x07" in line for line in lines), "shown as escapes"
        assert any("refused sender <\\x9b31mPWNED-C1CSI@sender.test>" in line for line in lines), lines


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    info = sys.exc_info() if exc_info else None
    return logging.LogRecord("mail.log", logging.WARNING, __file__, 1, message, args, info)


def test_a_line_feed_from_a_client_never_starts_a_log_line() -> None:
    fake = "x\n2026-01-01 00:00:00,000 INFO maillab_server: stored as FAKE\r\u2028\u0085\u202e"
    formatted = TextFormatter(FORMAT).format(record("%r unrecognised: %s", ("127.0.0.1", 1), fake))
    assert "\n" not in formatted and "\r" not in formatted
    assert formatted.endswith(
        r"unrecognised: x\x0a2026-01-01 00:00:00,000 INFO maillab_server: stored as FAKE\x0d\u2028\x85\u202e"
    )


def test_a_traceback_keeps_its_lines_indented_and_escaped() -> None:
    try:
        raise ValueError("bad \x1b]0;PWNED\x07\nINFO fake line")
    except ValueError:
        formatted = TextFormatter(FORMAT).format(record("session failed", exc_info=True))
    first, *rest = formatted.split("\n")
    assert first.endswith("session failed") and rest
    assert all(line.startswith("    ") for line in rest), rest
    assert "\x1b" not in formatted and "\x07" not in formatted and r"\x1b]0;PWNED\x07" in formatted


def test_a_json_line_is_ascii_and_escapes_the_exception_too() -> None:
    try:
        raise ValueError("bad \x1b]0;PWNED\x07\n\u009b\u2028")
    except ValueError:
        line = JsonFormatter().format(record("%s", "\x1b[2J\u009d\n", exc_info=True))
    assert line.isascii() and "\n" not in line and "\x1b" not in line
    entry = json.loads(line)
    assert entry["message"] == "\x1b[2J\u009d\n" and "\x1b]0;PWNED\x07\n\u009b\u2028" in entry["exception"]
