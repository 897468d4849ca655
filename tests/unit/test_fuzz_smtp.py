"""A battery of hostile SMTP sessions against a real server over a real socket.

Each case is a session drawn by hypothesis: commands, mutated and random lines, over-long
lines, NUL and 8-bit bytes, bare CR and LF, SMTP smuggling payloads, data over the size
limit, pipelined bursts cut at random, and early disconnects. After every case:

- the server still answers a new connection;
- every reply line it sent is a valid reply (three digits, then a space or a dash);
- every forward file is whole: records only, no partial record, no damage;
- nothing exists outside the forward folder, and every file in it is named by a valid domain.

`make test` runs a few thousand cases; `make fuzz` runs MAILLAB_FUZZ_EXAMPLES of them
(100,000 by default there).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maillab_common.addresses import normalise_domain
from maillab_common.forward import Record, parse_records
from tests.unit.conftest import ServerController, StartServer

EXAMPLES = int(os.environ.get("MAILLAB_FUZZ_EXAMPLES", "2000"))
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")

COMMANDS = [
    b"HELO fuzz.test",
    b"EHLO fuzz.test",
    b"MAIL FROM:<a@sender.test>",
    b"MAIL FROM:<>",
    b"MAIL FROM:a@b",
    b"MAIL FROM:<a@sender.test> SIZE=99999999999",
    b"MAIL FROM:<a@sender.test> BODY=8BITMIME SMTPUTF8",
    b"RCPT TO:<b@one.test>",
    b"RCPT TO:<c@two.test>",
    b"RCPT TO:<x@../etc>",
    b"RCPT TO:<y@.hidden>",
    b"RCPT TO:<z@[127.0.0.1]>",
    b'RCPT TO:<"q q"@one.test>',
    b"RCPT TO:<\xc3\xa9@b\xc3\xbccher.test>",
    b"DATA",
    b"DATA x",
    b"RSET",
    b"NOOP",
    b"VRFY b@one.test",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"STARTTLS",
    b"AUTH PLAIN AGxhYgBzZWNyZXQ=",
    b"AUTH LOGIN",
    b"BDAT 10 LAST",
    b"TURN",
    b"",
    b" ",
    b"QUIT",
]
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r\n", b"\r\n..\r\n", b".\r\n"]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]

lines = st.one_of(
    st.sampled_from(COMMANDS),
    st.binary(max_size=60),
    st.builds(lambda n: b"A" * n, st.integers(900, 3000)),  # around and over the line limit
    st.builds(lambda c, n: c + b"\x00" * n, st.sampled_from(COMMANDS), st.integers(1, 3)),
    st.builds(lambda c, b: c + b, st.sampled_from(COMMANDS), st.binary(min_size=1, max_size=8)),
    st.sampled_from(SMUGGLING),
    st.builds(lambda n: b"x" * 98 * n, st.integers(1, 80)),  # DATA content, over 4 KiB at times
)
# A whole transaction now and then, with hostile content, so that stores happen too.
transactions = st.builds(
    lambda rcpts, body: b"MAIL FROM:<a@sender.test>\r\n" + b"".join(rcpts) + b"DATA\r\n" + body + b"\r\n.\r\n",
    st.lists(
        st.sampled_from([b"RCPT TO:<b@one.test>\r\n", b"RCPT TO:<c@two.test>\r\n", b"RCPT TO:<x@../e>\r\n"]),
        min_size=1,
        max_size=4,
    ),
    st.lists(
        st.one_of(st.sampled_from(SMUGGLING), st.binary(max_size=200), st.just(b"From the start")), max_size=8
    ).map(b"".join),
)
sessions = st.tuples(
    st.lists(st.tuples(st.one_of(lines, transactions), st.sampled_from(ENDINGS)), max_size=25),
    st.lists(st.integers(0, 4000), max_size=3),  # where the bytes are cut into writes
    st.booleans(),  # hang up at once instead of ending politely
)


def play(server: ServerController, payload: bytes, cuts: list[int], hang_up: bool) -> bytes:
    """Send the session; the bytes the server sent back, up to its close."""
    received = b""
    with socket.create_connection((server.hostname, server.port), timeout=10) as connection:
        try:
            for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(payload)], strict=True):
                if start < end:
                    connection.sendall(payload[start:end])
            if hang_up:
                return b""
            # Whatever state it left: end any DATA, then QUIT, and read to the close.
            connection.sendall(b"\r\n.\r\nQUIT\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up first (QUIT in the session, 421, too many bad commands)
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # it closed with our bytes unread
    return received


def check_invariants(server: ServerController, replies: bytes) -> None:
    assert (
        replies == b""
        or REPLY_LINE.fullmatch(replies)
        or all(REPLY_LINE.fullmatch(line + b"\n") for line in replies.split(b"\n")[:-1])
    ), replies[-300:]
    assert b"Error: (" not in replies, "an exception inside the server leaked into a reply"
    with socket.create_connection((server.hostname, server.port), timeout=10) as probe:
        replies_file = probe.makefile("rb")
        assert replies_file.readline().startswith(b"220 "), "the server still answers"
        probe.sendall(b"NOOP\r\n")
        assert replies_file.readline().startswith(b"250 ")
    forward = server.config.forward_dir
    assert sorted(path.name for path in forward.parent.iterdir()) == ["forward"], "nothing outside /forward"
    for path in forward.iterdir():
        assert path.is_file() and not path.is_symlink()
        assert normalise_domain(path.name) == path.name
        items, leftover = parse_records(path.read_bytes())
        assert leftover == b"", f"{path.name} holds a partial record"
        assert all(isinstance(item, Record) for item in items), f"{path.name} holds damage"


def test_hostile_sessions(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(max_message_size=4096, max_recipients=3, idle_timeout=5.0)
    stored = 0

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(sessions)
    def case(session: tuple[list[tuple[bytes, bytes]], list[int], bool]) -> None:
        parts, cuts, hang_up = session
        payload = b"".join(line + ending for line, ending in parts)
        replies = play(server, payload, cuts, hang_up)
        check_invariants(server, replies)
        nonlocal stored
        for path in server.config.forward_dir.iterdir():  # keep each case's check small
            stored += 1
            path.unlink()

    case()
    assert stored > 0, "some sessions stored a message: the battery reaches DATA"
    shutil.rmtree(server.config.forward_dir)
    server.config.forward_dir.mkdir()
