"""A course-style SMTP client, written from the classroom dialect (issue 15), not from maillab's code.

It is what a student's client in a networking course does, and as strict as one: every line
ends with one LF; each reply is read with one recv(1024) and must be exactly one line,
`<code> <printable ASCII text>` LF (a CR before the LF is an error), with the code the step
expects. The greeting must be `220 <text>` LF, or it stops with "Unexpected server greeting"
before it sends anything. It sends `HELO <domain>`, `MAIL FROM: <local@domain>`,
`RCPT TO: <local@domain>` per recipient, `DATA`, the message with LF line ends (dot-stuffed),
a line holding only `.`, and `QUIT`. Its messages are the classic ones: multipart/mixed with a
fixed boundary, a text part and one base64 attachment whose type comes from the file name,
in lines of 76 characters with a final partial line.
"""

from __future__ import annotations

import base64
import mimetypes
import re
import socket

BOUNDARY = "98766789"  # fixed, as course clients have it
_REPLY = re.compile(rb"([0-9]{3}) [\x20-\x7e]+\n")
_DOMAIN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*")


class DialectError(Exception):
    """The server said something a course client cannot take."""


def course_message(
    content: bytes,
    filename: str = "notes.pdf",
    *,
    text: str = "Hello,\n.a line that starts with a dot\nFrom here on, mbox would quote this line.\nBye",
    sender: str = "alice@sender.test",
    recipients: tuple[str, ...] = ("bob@one.test", "carol@two.test"),
    subject: str = "homework 3",
) -> bytes:
    """The classic course client's message: LF line ends, a text part and one base64 attachment."""
    kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    encoded = base64.encodebytes(content).decode("ascii")  # lines of 76 characters, the last partial
    lines = [
        f"From: {sender}",
        f"To: {', '.join(recipients)}",
        f"Subject: {subject}",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}",
        "",
        f"--{BOUNDARY}",
        "Content-Type: text/plain",
        "",
        text,
        f"--{BOUNDARY}",
        f"Content-Type: {kind}",
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment; filename="{filename}"',
        "",
        encoded.rstrip("\n"),
        f"--{BOUNDARY}--",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


class CourseClient:
    def __init__(self, host: str, port: int, *, timeout: float = 10) -> None:
        self.socket = socket.create_connection((host, port), timeout=timeout)
        self.replies: list[bytes] = []
        greeting = self.socket.recv(1024)
        self.replies.append(greeting)
        if not _REPLY.fullmatch(greeting) or not greeting.startswith(b"220 "):
            self.socket.close()
            raise DialectError(f"Unexpected server greeting: {greeting!r}")

    def reply(self, expected: int) -> bytes:
        """One reply, read with one recv(1024): exactly one LF-terminated line with the expected code."""
        reply = self.socket.recv(1024)
        self.replies.append(reply)
        if not _REPLY.fullmatch(reply):
            raise DialectError(f"not one dialect reply line: {reply!r}")
        if int(reply[:3]) != expected:
            raise DialectError(f"expected {expected}, got {reply!r}")
        return reply

    def command(self, line: str, expected: int) -> bytes:
        self.socket.sendall(line.encode() + b"\n")
        return self.reply(expected)

    def begin(self, domain: str, sender: str, recipients: list[str]) -> None:
        """HELO, MAIL FROM, a RCPT TO per recipient and DATA: the message comes next."""
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"{domain!r} is not a HELO domain of the grammar")
        self.command(f"HELO {domain}", 250)
        self.command(f"MAIL FROM: <{sender}>", 250)
        for recipient in recipients:
            self.command(f"RCPT TO: <{recipient}>", 250)
        self.command("DATA", 354)

    def send(self, domain: str, sender: str, recipients: list[str], message: bytes) -> bytes:
        """A whole transaction, HELO first; the reply to the final dot."""
        self.begin(domain, sender, recipients)
        stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in message.splitlines(True))
        self.socket.sendall(stuffed + b".\n")
        return self.reply(250)

    def quit(self) -> None:
        try:
            self.command("QUIT", 221)
        finally:
            self.socket.close()

    def __enter__(self) -> CourseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
