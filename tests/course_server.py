"""A course-style SMTP server, written from the classroom dialect as course programs speak it (issue 15).

Strict the way a student's server is: every command must end with a single LF (a CR before
it gets 500); commands are HELO, MAIL FROM:, RCPT TO:, DATA and QUIT, case-sensitive; a HELO
domain is letters and digits in dot-separated elements, each starting with a letter; a path
is `<local@domain>` with spaces allowed after the colon and before the line end. Replies are
one line each, ended by LF and written in one send, with the dialect's codes only: 220, 221,
250, 354, 500 (unknown command), 501 (bad parameters), 503 (bad sequence). The message ends
at a line holding only '.'; a leading '.' is removed from the other lines. Every message
received is kept in `messages`, and every byte clients sent in `wire`.

`Faults` breaks it on purpose, one way at a time, so that conform's failures can be checked
case by case. `CourseServer` is a context manager: a threaded server on 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

_ELEMENT = r"[A-Za-z][A-Za-z0-9]*"
_DOMAIN = rf"{_ELEMENT}(?:\.{_ELEMENT})*"
_HELO = re.compile(rf"HELO[ \t]+({_DOMAIN})[ \t]*")
_PATH = re.compile(rf"[ \t]*<([^\s<>()\[\]\\,;:@\"]+@{_DOMAIN})>[ \t]*")
_COMMANDS = (
    ("HELO", re.compile(r"HELO(?=[ \t]|$)")),
    ("MAIL", re.compile(r"MAIL[ \t]+FROM:")),
    ("RCPT", re.compile(r"RCPT[ \t]+TO:")),
    ("DATA", re.compile(r"DATA[ \t]*$")),
    ("QUIT", re.compile(r"QUIT[ \t]*$")),
)
_TEXT = {
    220: "course.server ready",
    221: "course.server closing",
    250: "OK",
    354: "Start mail input; end with <LF>.<LF>",
    500: "Syntax error: command unrecognized",
    501: "Syntax error in parameters or arguments",
    503: "Bad sequence of commands",
}


@dataclass(frozen=True)
class Faults:
    """Ways to break the server; the defaults break nothing."""

    out_of_order_ok: bool = False  # 250 to a command out of order, instead of 503
    bad_path_code: int = 501  # the code for a malformed MAIL or RCPT path
    line_end: bytes = b"\n"  # b"\r\n": RFC line ends, which a course client cannot take
    multiline_helo: bool = False  # "250-...\n250 ...\n" to a good HELO
    silent_unknown: bool = False  # no reply at all to an unknown command: a hanging server
    text: str | None = None  # the text of every reply, instead of the usual ones


@dataclass(frozen=True)
class Received:
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received, dot-unstuffed, without the final '.'


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    course: CourseServer


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.course.serve(self.request)


class CourseServer:
    def __init__(self, faults: Faults = Faults()) -> None:
        self.faults = faults
        self.messages: list[Received] = []
        self.wire = bytearray()
        self.connections = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.course = self
        self.host = "127.0.0.1"
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> CourseServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serve(self, connection: socket.socket) -> None:
        connection.settimeout(30)
        with self._lock:
            self.connections += 1
        reader = connection.makefile("rb")
        session = _Session()
        self._reply(connection, 220)
        try:
            while line := self._read(reader):
                if not line.endswith(b"\n"):
                    return  # cut off, or over 4 KiB
                if line.endswith(b"\r\n"):
                    self._reply(connection, 500)  # a CR before the LF: not a command of the dialect
                    continue
                if not self._command(connection, reader, session, line[:-1].decode("ascii", errors="replace")):
                    return
        except OSError:
            return
        finally:
            reader.close()
            connection.close()

    def _command(self, connection: socket.socket, reader: BinaryIO, session: _Session, text: str) -> bool:
        """Answer one command; False when the session is over."""
        verb = next((verb for verb, pattern in _COMMANDS if pattern.match(text)), None)
        if verb is None:
            if not self.faults.silent_unknown:
                self._reply(connection, 500)
            return True
        if verb == "QUIT":
            self._reply(connection, 221)
            return False
        if verb == "HELO":
            match = _HELO.fullmatch(text)
            if match is None:
                self._reply(connection, 501)
            else:
                session.helo, session.mail_from, session.rcpt_tos = match[1], None, []
                self._reply(connection, 250, multiline=self.faults.multiline_helo)
            return True
        if verb in ("MAIL", "RCPT"):
            path = _PATH.fullmatch(text[_after_colon(text) :])
            if path is None:
                self._reply(connection, self.faults.bad_path_code)
            elif session.helo is None or (session.mail_from is None) == (verb == "RCPT"):
                self._out_of_order(connection)
            elif verb == "MAIL":
                session.mail_from = path[1]
                self._reply(connection, 250)
            else:
                session.rcpt_tos.append(path[1])
                self._reply(connection, 250)
            return True
        if not session.rcpt_tos:  # DATA
            self._out_of_order(connection)
            return True
        self._reply(connection, 354)
        lines = []
        while (line := self._read(reader)) != b".\n":
            if not line.endswith(b"\n"):
                return False
            lines.append(line[1:] if line.startswith(b".") else line)
        with self._lock:
            self.messages.append(
                Received(session.helo or "", session.mail_from or "", tuple(session.rcpt_tos), b"".join(lines))
            )
        session.mail_from, session.rcpt_tos = None, []
        self._reply(connection, 250)
        return True

    def _read(self, reader: BinaryIO) -> bytes:
        line = reader.readline(4096)
        with self._lock:
            self.wire += line
        return line

    def _out_of_order(self, connection: socket.socket) -> None:
        self._reply(connection, 250 if self.faults.out_of_order_ok else 503)

    def _reply(self, connection: socket.socket, code: int, *, multiline: bool = False) -> None:
        text = _TEXT[code] if self.faults.text is None else self.faults.text
        end = self.faults.line_end
        reply = f"{code} {text}".encode() + end
        if multiline:
            reply = f"{code}-course.server".encode() + end + reply
        connection.sendall(reply)


def _after_colon(text: str) -> int:
    """Where a MAIL FROM: or RCPT TO: command's path starts: after its colon."""
    return text.index(":") + 1


class _Session:
    def __init__(self) -> None:
        self.helo: str | None = None
        self.mail_from: str | None = None
        self.rcpt_tos: list[str] = []
