"""The classroom listener (classroom.py) against course-style and RFC clients, on a real in-process server."""

from __future__ import annotations

import email
import email.policy
import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records
from maillab_server.classroom import in_dialect, mailbox_argument
from maillab_server.config import ServerConfig
from tests.course_client import CourseClient, DialectError, course_message
from tests.helpers import wait_until
from tests.unit.conftest import ServerController, StartServer, free_port

ATTACHED = bytes(range(256)) * 7 + b"tail"  # 1796 bytes: 24 full base64 lines and a partial one
MESSAGE = course_message(ATTACHED, text="Hello,\n.a line that starts with a dot\n.\nFrom here, mbox quotes this.\nBye")


def stored(server: ServerController, domain: str) -> list[bytes]:
    path = server.config.forward_dir / domain
    if not path.exists():
        return []
    items, leftover = parse_records(path.read_bytes())
    assert leftover == b""
    return [item.delivery.message for item in items if isinstance(item, Record)]


def classroom(server: ServerController) -> CourseClient:
    return CourseClient("127.0.0.1", server.config.classroom_port)


@pytest.fixture
def server(start_server: StartServer) -> ServerController:
    return start_server(classroom=True)


def test_a_course_clients_message_lands_byte_identical_in_every_domain(server: ServerController) -> None:
    with classroom(server) as client:
        reply = client.send("student.example", "alice@sender.test", ["bob@one.test", "carol@two.test"], MESSAGE)
        assert reply.startswith(b"250 OK: stored as ")
        client.quit()
    assert stored(server, "one.test") == stored(server, "two.test") == [MESSAGE]
    parsed = email.message_from_bytes(MESSAGE, policy=email.policy.default)
    [attachment] = parsed.iter_attachments()
    assert attachment.get_filename() == "notes.pdf" and attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == ATTACHED
    assert b"\r" not in MESSAGE and max(map(len, MESSAGE.split(b"\n"))) == 76


def test_every_reply_is_one_lf_line_with_a_dialect_code(server: ServerController) -> None:
    with classroom(server) as client:  # the client checks each reply: one recv, one line, LF, no CR
        client.command("NOOP", 250)
        client.command("HELO student", 250)
        client.command("MAIL FROM: <alice@sender.test>", 250)
        client.command("RCPT TO:   <carol@two.test>   ", 250)
        client.command("DATA", 354)
        client.socket.sendall(b"Subject: two\n\nhi\n.\n")
        client.reply(250)
        client.command("RSET", 250)
        client.quit()
        assert client.replies[0].startswith(b"220 maillab.test ")
        assert client.replies[-1] == b"221 maillab.test closing connection\n"


@pytest.mark.parametrize(
    ("setup", "probe", "code"),
    [
        # Out of order: 503.
        ([], "MAIL FROM: <alice@sender.test>", 503),
        ([], "RCPT TO: <bob@one.test>", 503),
        (["HELO student"], "RCPT TO: <bob@one.test>", 503),
        (["HELO student"], "DATA", 503),
        (["HELO student", "MAIL FROM: <alice@sender.test>"], "DATA", 503),
        (["HELO student", "MAIL FROM: <alice@sender.test>"], "MAIL FROM: <alice@sender.test>", 503),
        # Malformed paths and domains: 501.
        (["HELO student"], "MAIL FROM: alice@sender.test", 501),
        (["HELO student"], "MAIL FROM: <alice>", 501),
        (["HELO student"], "MAIL FROM: <>", 501),
        (["HELO student"], "MAIL FROM: <alice@sender.test> SIZE=10", 501),
        (["HELO student"], "MAIL TO: <alice@sender.test>", 501),
        (["HELO student", "MAIL FROM: <alice@sender.test>"], "RCPT TO: <a@@b>", 501),
        (["HELO student", "MAIL FROM: <alice@sender.test>"], "RCPT TO: <bob@1one.test>", 501),
        (["HELO student", "MAIL FROM: <alice@sender.test>"], "RCPT TO: <bob@one-two.test>", 501),
        (["HELO student", "MAIL FROM: <alice@sender.test>", "RCPT TO: <bob@one.test>"], "DATA now", 501),
        ([], "HELO", 501),
        ([], "HELO maillab-agent", 501),
        ([], "HELO 1lab.test", 501),
        ([], "HELO lab..test", 501),
        ([], "HELO [127.0.0.1]", 501),
        # Unknown commands: 500.
        ([], "EHLO student", 500),
        (["HELO student"], "VRFY alice", 500),
        (["HELO student"], "STARTTLS", 500),
        ([], "", 500),
        ([], "HELO student\x00", 501),
    ],
)
def test_bad_commands_get_the_dialects_code_and_the_session_goes_on(
    server: ServerController, setup: list[str], probe: str, code: int
) -> None:
    with classroom(server) as client:
        for line in setup:
            client.command(line, 250)
        client.command(probe, code)
        client.command("RSET", 250)
        client.quit()


def test_a_message_after_a_refusal_still_lands(server: ServerController) -> None:
    with classroom(server) as client:
        client.command("HELO student", 250)
        client.command("MAIL FROM: alice", 501)
        assert client.send("student", "alice@sender.test", ["bob@one.test"], b"Subject: after\n\nok\n").startswith(
            b"250 "
        )
        client.quit()
    assert stored(server, "one.test") == [b"Subject: after\n\nok\n"]


def test_an_rfc_client_falls_back_to_helo_and_sends_with_smtplib(server: ServerController) -> None:
    with smtplib.SMTP("127.0.0.1", server.config.classroom_port, local_hostname="client.test", timeout=10) as client:
        # The dialect has no EHLO: its 500 sends the client to HELO, as RFC 5321 4.1.4 has it.
        assert client.sendmail("alice@sender.test", ["bob@one.test"], b"Subject: rfc\r\n\r\n.dot\r\nend\r\n") == {}
        assert client.helo_resp == b"maillab.test Hello client.test" and not client.does_esmtp
    assert stored(server, "one.test") == [b"Subject: rfc\n\n.dot\nend\n"]


@pytest.mark.parametrize("name", [None, "my-laptop.example", "[127.0.0.1]"])
def test_an_rfc_client_with_its_own_name_and_domains_works_after_ehlo(
    server: ServerController, name: str | None
) -> None:
    # smtplib's own name by default: the host's, or "[127.0.0.1]" when it has no dot.
    with smtplib.SMTP("127.0.0.1", server.config.classroom_port, local_hostname=name, timeout=10) as client:
        assert client.sendmail("a@sender-host.test", ["b@my-domain.test"], b"Subject: rfc\r\n\r\nhi\r\n") == {}
    assert stored(server, "my-domain.test") == [b"Subject: rfc\n\nhi\n"]


def test_without_ehlo_helo_and_paths_keep_the_dialects_grammar(server: ServerController) -> None:
    with classroom(server) as client:
        client.command("HELO my-laptop", 501)
        client.command("HELO student", 250)
        client.command("MAIL FROM: <a@sender-host.test>", 501)


def test_a_client_that_never_reads_its_replies_loses_its_place(start_server: StartServer) -> None:
    server = start_server(classroom=True, idle_timeout=1.0, max_connections=1)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", server.config.classroom_port))
    hog.settimeout(2)
    try:
        try:
            # Until the server stops reading: its replies fill both socket buffers, and its
            # write waits for a reader that never comes.
            for _ in range(100_000):
                hog.sendall(b"NOOP\n" * 1000)
        except TimeoutError:
            pass  # the server stopped reading: it is stuck in a write
        except OSError:
            pass  # or it cut the connection already
        # What it sent is still answered, up to the replies the socket buffers hold (megabytes,
        # a write each); then a write waits, and after the idle timeout the server cuts it off.
        wait_until(lambda: not server.sessions.open, "the server to drop the client that does not read", 90)
    finally:
        hog.close()
    with classroom(server) as client:  # its place is free again
        client.command("HELO student", 250)


def test_a_smuggled_lf_dot_lf_ends_the_message_here_but_not_on_the_main_port(server: ServerController) -> None:
    """What the classroom port accepts: LF "." LF ends DATA, so what follows it is read as commands.

    That is the dialect. The same bytes on the main port stay inside one message.
    """
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@two.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n"
    payload = b"Subject: real\r\n\r\nbody\n.\n" + smuggled + b".\r\n"
    envelope = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@one.test>\r\nDATA\r\n"
    with classroom(server) as client:
        client.command("HELO student", 250)
        for line, code in zip(envelope.splitlines(), (250, 250, 354), strict=True):
            client.command(line.decode(), code)
        client.socket.sendall(payload)
        replies = b""
        while replies.count(b"\n") < 5:
            replies += client.socket.recv(1024)
    assert [line[:3] for line in replies.splitlines()] == [b"250", b"250", b"250", b"354", b"250"]
    assert stored(server, "one.test") == [b"Subject: real\n\nbody\n"]
    assert stored(server, "two.test") == [b"Subject: smuggled\n\nhi\n"]

    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as main:
        main.ehlo()
        main.mail("a@sender.test")
        main.rcpt("b@three.test")
        assert main.data(payload.replace(b".\r\n", b""))[0] == 250  # smtplib ends it with CRLF . CRLF
    [message] = stored(server, "three.test")
    assert b"MAIL FROM:<evil@x.test>" in message, "the main port keeps the smuggling payload inside the message"


def test_a_storage_failure_answers_500_not_stored_and_the_session_goes_on(server: ServerController) -> None:
    (server.config.forward_dir / "broken.test").mkdir()  # a folder where the file should be
    with classroom(server) as client:
        with pytest.raises(DialectError) as refused:
            client.send("student", "alice@sender.test", ["bob@broken.test", "carol@fine.test"], b"Subject: x\n\nx\n")
        assert refused.value.args[0] == "expected 250, got b'500 Could not store the message; try again later\\n'"
        assert stored(server, "fine.test") == []
        assert client.send("student", "alice@sender.test", ["carol@fine.test"], b"Subject: y\n\ny\n").startswith(
            b"250 "
        )
        client.quit()
    assert stored(server, "fine.test") == [b"Subject: y\n\ny\n"]


def test_limits_are_the_main_ports_answered_with_500(start_server: StartServer) -> None:
    server = start_server(classroom=True, max_message_size=2048, max_recipients=1, max_line_length=100)
    with classroom(server) as client:
        client.command("HELO student", 250)
        client.command("MAIL FROM: <alice@sender.test>", 250)
        client.command("RCPT TO: <bob@one.test>", 250)
        assert client.command("RCPT TO: <carol@one.test>", 500) == b"500 Too many recipients (at most 1)\n"
        client.command("DATA", 354)
        client.socket.sendall(b"Subject: big\n\n" + (b"y" * 60 + b"\n") * 40 + b".\n")
        assert client.reply(500) == b"500 Message too big for this server\n"
        client.command("MAIL FROM: <alice@sender.test>", 250)
        client.command("RCPT TO: <bob@one.test>", 250)
        client.command("DATA", 354)
        client.socket.sendall(b"Subject: long\n\n" + b"z" * 200 + b"\n.\n")
        assert client.reply(500).startswith(b"500 Line too long")
        assert client.command("NOOP " + "n" * 200, 500).startswith(b"500 Line too long")
        client.quit()
    assert stored(server, "one.test") == []


def test_a_large_message_is_spooled_and_lands_byte_identical(start_server: StartServer) -> None:
    server = start_server(classroom=True, spool_threshold=4096)
    big = course_message(os.urandom(200_000), "data.csv", text=".dotted\n" * 500, recipients=("bob@one.test",))
    with classroom(server) as client:
        assert client.send("student", "alice@sender.test", ["bob@one.test"], big).startswith(b"250 ")
        client.quit()
    assert stored(server, "one.test") == [big]


def test_commands_may_end_in_crlf_and_come_pipelined(server: ServerController) -> None:
    with socket.create_connection(("127.0.0.1", server.config.classroom_port), timeout=10) as connection:
        connection.sendall(
            b"HELO student\r\nMAIL FROM: <a@sender.test>\nRCPT TO: <b@one.test>\r\nDATA\n"
            b"Subject: mixed\r\n\nline\n..\r\n.\nQUIT\r\n"
        )
        replies = b""
        while chunk := connection.recv(4096):
            replies += chunk
    assert [line[:3] for line in replies.split(b"\n")] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221", b""]
    assert b"\r" not in replies
    assert stored(server, "one.test") == [b"Subject: mixed\n\nline\n.\n"]


def test_connections_over_the_shared_limit_get_500_and_a_close(start_server: StartServer) -> None:
    server = start_server(classroom=True, max_connections=2)
    main = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    # Greeted, so counted: a connection the server has not accepted yet takes no place.
    assert main.makefile("rb").readline().startswith(b"220 ")
    first = classroom(server)
    try:
        third = socket.create_connection(("127.0.0.1", server.config.classroom_port), timeout=10)
        with third:
            assert third.recv(1024) == b"500 maillab.test too many connections (at most 2); try again later\n"
            assert third.recv(1024) == b""
    finally:
        first.socket.close()
        main.close()


def test_shutdown_lets_a_message_finish_and_refuses_the_rest(start_server: StartServer) -> None:
    server = start_server(classroom=True, shutdown_grace=10.0)
    idle, busy = classroom(server), classroom(server)
    idle.command("HELO idle", 250)
    busy.begin("busy", "a@sender.test", ["b@one.test"])
    busy.socket.sendall(b"Subject: in flight\n\nfirst half\n")
    shutting_down = threading.Thread(target=server.shut_down)
    shutting_down.start()
    assert idle.reply(500) == b"500 maillab.test shutting down; try again later\n"
    assert idle.socket.recv(1024) == b""
    wait_until(lambda: server.sessions.closing, "the shutdown to begin")
    busy.socket.sendall(b"second half\n.\n")
    busy.reply(250)
    shutting_down.join(timeout=30)
    assert busy.socket.recv(1024) in (b"", b"500 maillab.test shutting down; try again later\n")
    assert stored(server, "one.test") == [b"Subject: in flight\n\nfirst half\nsecond half\n"]
    for client in (idle, busy):
        client.socket.close()


def test_an_idle_connection_is_told_and_closed(start_server: StartServer) -> None:
    server = start_server(classroom=True, idle_timeout=1.0)
    with classroom(server) as client:
        client.command("HELO student", 250)
        assert client.reply(500) == b"500 maillab.test idle for 1s; try again later\n"
        assert client.socket.recv(1024) == b""


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 2.0.0 OK: stored as 0123", b"250 OK: stored as 0123\n"),
        ("250 2.1.5 OK", b"250 OK\n"),
        ("553 5.1.3 The recipient address holds characters not allowed", b"501 The recipient address holds "),
        ("452 4.3.1 Insufficient system storage", b"500 Insufficient system storage\n"),
        ("451 4.3.0 Could not store the message; try again later", b"500 Could not store the message; "),
        ("552 5.3.4 Message too big for this server", b"500 Message too big for this server\n"),
        ("503 bad sequence \u00e9\r", b"503 bad sequence ??\n"),
    ],
)
def test_rfc_replies_in_the_dialect(reply: str, expected: bytes) -> None:
    assert in_dialect(reply).startswith(expected)


@pytest.mark.parametrize(
    ("arg", "keyword", "address"),
    [
        ("FROM: <a@b.c>", "FROM", "a@b.c"),
        ("from:<a@b.c>", "FROM", "a@b.c"),
        ("FROM:   <a.b@c1.d>  ", "FROM", "a.b@c1.d"),
        ("TO: <a@b>", "TO", "a@b"),
        ("TO: <a@b>", "FROM", None),
        ("FROM: <a@b> x", "FROM", None),
        ("FROM: <a@b.1c>", "FROM", None),
        ("FROM: <a@[192.0.2.1]>", "FROM", None),
    ],
)
def test_mailbox_argument_takes_the_dialects_paths(arg: str, keyword: str, address: str | None) -> None:
    assert mailbox_argument(arg, keyword) == address


@pytest.mark.parametrize(
    ("env", "port"),
    [
        ({}, 2526),
        ({"MAILLAB_CLASSROOM_PORT": "3526"}, 3526),
        ({"MAILLAB_CLASSROOM_PORT": "0"}, 0),
        ({"MAILLAB_CLASSROOM_PUBLISHED_PORT": "0"}, 0),  # compose: the user's MAILLAB_CLASSROOM_PORT=0
        ({"MAILLAB_CLASSROOM_PUBLISHED_PORT": "3526"}, 2526),  # compose: published there, 2526 inside
    ],
)
def test_the_classroom_port_setting(env: dict[str, str], port: int) -> None:
    assert ServerConfig.from_env(env).classroom_port == port


def serve_and_stop(forward: Path, env: dict[str, str] | None = None) -> tuple[list[str], bool]:
    """Start `maillab-server serve`, try the classroom port, stop it; its log lines, and whether it answered."""
    port, classroom_port = free_port(), free_port()
    command = [sys.executable, "-m", "maillab_server", "serve", "--port", str(port), "--listen-host", "127.0.0.1"]
    command += ["--forward-dir", str(forward), "--log-format", "json", "--classroom-port", str(classroom_port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # the main port's line: both listeners are up by then
        try:
            CourseClient("127.0.0.1", classroom_port).quit()
            answered = True
        except OSError:
            answered = False
        process.terminate()
        assert process.wait(timeout=15) == 0
        rest = process.stdout.read()  # not communicate(): it would skip what readline buffered
        return [json.loads(line)["message"] for line in [first, *rest.splitlines()]], answered
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_the_server_process_listens_on_the_classroom_port_unless_it_is_0(tmp_path: Path) -> None:
    lines, answered = serve_and_stop(tmp_path)
    assert lines[1].startswith("listening on 127.0.0.1:") and lines[1].endswith(" (classroom dialect)"), lines
    assert answered
    lines, answered = serve_and_stop(tmp_path, env={"MAILLAB_CLASSROOM_PUBLISHED_PORT": "0"})
    assert not answered and not any("classroom" in line for line in lines)
