"""The agent in the classroom dialect (issue 15): `send` and `interactive --dialect classroom`,
and `conform`, against the course-style server of tests/course_server.py and its broken variants."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maillab_agent.__main__ import (
    EXIT_CONNECT,
    EXIT_NONCONFORMING,
    EXIT_RECIPIENTS_REJECTED,
    EXIT_SENDER_REJECTED,
    app,
)
from maillab_agent.classroom import helo_domain, reply_problem, wire_message
from maillab_agent.conform import CASES, GREETING, QUIT, Columns
from maillab_common.classroom import is_domain
from maillab_common.cli import EXIT_USAGE
from tests.course_server import CourseServer, Faults
from tests.helpers import run_cli
from tests.hostile import CONTROL_PAYLOADS, assert_inert, run_in_pty
from tests.unit.conftest import free_port

AGENT = [sys.executable, "-m", "maillab_agent"]
ATTACHED = bytes(range(256)) * 40  # 10 KiB, every byte value: base64 in many 76-character lines
BODY = "first line\n.a line starting with a dot\n..two dots\n.\nlast line\n"
runner = CliRunner()


@pytest.fixture
def course() -> Iterator[CourseServer]:
    with CourseServer() as server:
        yield server


def agent(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("maillab_agent", *arguments, stdin=stdin)


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attachments(message: EmailMessage) -> list[tuple[str | None, bytes]]:
    found = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append((part.get_filename(), payload))
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


def test_send_delivers_a_message_with_an_attachment_in_lf_only(course: CourseServer, tmp_path: Path) -> None:
    file = tmp_path / "data.bin"
    file.write_bytes(ATTACHED)
    result = agent(
        "send", "--dialect", "classroom", "--server", course.address, "--from", "alice@sender.test",
        "--to", "bob@one.test", "--to", "carol@two.test", "--subject", "course", "--body", BODY, "--attach", str(file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sent <send-" in result.stdout
    [received] = course.messages
    assert (received.mail_from, received.rcpt_tos) == ("alice@sender.test", ("bob@one.test", "carol@two.test"))
    assert received.helo == helo_domain(socket.gethostname())
    message = parsed(received.data)
    assert message["Subject"] == "course"
    assert text_of(message) == BODY  # the dot lines arrive intact: stuffed by the agent, unstuffed by the server
    assert attachments(message) == [("data.bin", ATTACHED)]
    assert b"\r" not in course.wire  # the course server would have refused a CR with 500
    assert b"EHLO" not in course.wire and b"MAIL FROM: <alice@sender.test>\n" in course.wire


def test_interactive_prints_the_whole_dialogue(course: CourseServer, tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_bytes(b"attached\n")
    stdin = "alice@sender.test\nbob@one.test, carol@two.test\nHello\nfirst\n..stuffed by hand\n.\n" + f"{file}\n"
    result = agent("interactive", "--dialect", "classroom", course.host, str(course.port), stdin=stdin)
    assert result.returncode == 0, result.stderr
    start = 0
    for line in (
        "S: 220 course.server ready",
        f"C: HELO {helo_domain(socket.gethostname())}",
        "S: 250 OK",
        "C: MAIL FROM: <alice@sender.test>",
        "S: 250 OK",
        "C: RCPT TO: <bob@one.test>",
        "S: 250 OK",
        "C: RCPT TO: <carol@two.test>",
        "S: 250 OK",
        "C: DATA",
        "S: 354 Start mail input",
        "C: <message, ",
        "C: .\n",
        "S: 250 OK",
        "C: QUIT",
        "S: 221 course.server closing",
    ):  # in this order, each after the last
        start = result.stdout.index(line, start) + len(line)
    [received] = course.messages
    message = parsed(received.data)
    assert text_of(message) == "first\n..stuffed by hand\n"
    assert attachments(message) == [("notes.txt", b"attached\n")]
    assert b"\r" not in course.wire


def test_the_rfc_dialect_is_refused_by_a_course_server(course: CourseServer) -> None:
    """What issue 15 found: EHLO, then `HELO maillab-agent`, both with CRLF: the CR alone earns a 500."""
    result = runner.invoke(app, ["send", "--from", "a@x.test", "--to", "b@y.test", "--server", course.address])
    assert result.exit_code == EXIT_CONNECT, result.output
    assert "helo refused: 500" in result.output
    assert course.messages == []
    assert course.wire.startswith(b"EHLO maillab-agent\r\nHELO maillab-agent\r\n")


@pytest.mark.parametrize(
    "faults", [Faults(line_end=b"\r\n"), Faults(multiline_helo=True)], ids=["CRLF replies", "multi-line replies"]
)
def test_the_client_reads_leniently_what_conform_refuses(faults: Faults) -> None:
    with CourseServer(faults) as server:
        argv = ["send", "--dialect", "classroom", "--from", "a@x.test", "--to", "b@y.test", "--server", server.address]
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        assert len(server.messages) == 1


@pytest.mark.parametrize(
    ("mail_from", "to", "code"),
    [
        ("alice@send-er.test", "bob@one.test", EXIT_SENDER_REJECTED),
        ("alice@sender.test", "bob@1one.test", EXIT_RECIPIENTS_REJECTED),
    ],
    ids=["sender with a hyphen", "recipient domain starting with a digit"],
)
def test_a_refused_stage_has_the_exit_code_of_the_rfc_mode(
    course: CourseServer, mail_from: str, to: str, code: int
) -> None:
    argv = ["send", "--dialect", "classroom", "--from", mail_from, "--to", to, "--server", course.address]
    result = runner.invoke(app, argv)
    assert result.exit_code == code, result.output
    assert "501 Syntax error in parameters or arguments" in result.output
    assert course.messages == []
    assert course.wire.endswith(b"QUIT\n")


@pytest.mark.parametrize("flags", [["--starttls"], ["--auth", "lab:secret"]], ids=["starttls", "auth"])
@pytest.mark.parametrize("command", ["send", "interactive"])
def test_starttls_and_auth_are_refused_before_connecting(course: CourseServer, flags: list[str], command: str) -> None:
    where = ["--server", course.address] if command == "send" else [course.host, str(course.port)]
    message = ["--from", "a@x.test", "--to", "b@y.test"] if command == "send" else []
    result = agent(command, "--dialect", "classroom", *flags, *where, *message, stdin="a@x.test\n")
    assert result.returncode == EXIT_USAGE
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert f"{flags[0]} cannot be used with --dialect classroom" in result.stderr
    assert course.connections == 0


@pytest.mark.parametrize(
    ("hostname", "domain"),
    [
        ("maillab-agent", "maillabagent"),
        ("3f2a9c7d1e0b", "f2a9c7d1e0b"),
        ("my_host.local", "myhost.local"),
        ("lab..example.", "lab.example"),
        ("caf\u00e9.1x.test", "caf.x.test"),
        ("123", "maillab"),
        ("-.-", "maillab"),
        ("", "maillab"),
    ],
)
def test_the_helo_domain_is_the_hostname_made_grammar_valid(hostname: str, domain: str) -> None:
    assert helo_domain(hostname) == domain
    assert is_domain(domain)


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (b"a\r\n.b\r\n\r\n..c\r\n", b"a\n..b\n\n...c\n.\n"),
        (b"no end", b"no end\n.\n"),
        (b".\n", b"..\n.\n"),
        (b"cr\r\r\nlf\n", b"cr\nlf\n.\n"),
    ],
)
def test_the_message_goes_with_lf_endings_and_dot_stuffed(message: bytes, wire: bytes) -> None:
    assert wire_message(message) == wire


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"250 OK\n", None),
        (b"220 \n", None),
        (b"250 OK\r\n", "ends in CR LF, not LF"),
        (b"250-OK\n", "a multi-line reply"),
        (b"250 OK", "no line end"),
        (b"250 " + b"x" * 1019 + b"\n", None),
        (b"250 " + b"x" * 1020 + b"\n", "1025 bytes: a course client reads 1024"),
        (b"252 OK\n", "252 is not a classroom code"),
        (b"250 caf\xc3\xa9\n", "not '<code> <printable ASCII text>'"),
        (b"250 a\x1b[2Jb\n", "not '<code> <printable ASCII text>'"),
        (b"250\n", "not '<code> <printable ASCII text>'"),
    ],
)
def test_the_form_of_a_reply(raw: bytes, problem: str | None) -> None:
    assert reply_problem(raw) == problem


def test_every_case_is_a_whole_session() -> None:
    assert len({case.name for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.steps[0] == GREETING and case.steps[-1] == QUIT, case.name
        assert 0 <= case.probe < len(case.steps), case.name
    expected = {step.expect for case in CASES for step in case.steps}
    assert {500, 501, 503} <= expected


def conform(server: CourseServer, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run conform against `server`; the result, and each case's row by case name."""
    result = agent("conform", "--dialect", "classroom", *extra, server.host, str(server.port))
    width = Columns.of(CASES).name
    rows = {line[:width].rstrip(): line for line in result.stdout.splitlines()[1 : 1 + len(CASES)]}
    return result, rows


def failed(rows: dict[str, str]) -> set[str]:
    return {name for name, row in rows.items() if row.endswith("FAIL")}


def test_conform_passes_a_conforming_server(course: CourseServer) -> None:
    result, rows = conform(course)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(rows) == [case.name for case in CASES]
    assert all(row.endswith("  PASS") for row in rows.values())
    assert f"{len(CASES)} of {len(CASES)} cases passed" in result.stdout
    assert "only the 250 can be checked" in result.stdout  # the dot lines' note


EVERY_CASE = {case.name for case in CASES}
WITHOUT_A_GOOD_HELO = {
    "greeting and QUIT",
    "MAIL before HELO",
    "RCPT before HELO",
    "HELO domain with a hyphen",
    "HELO domain element starting with a digit",
    "HELO domain with an empty element",
    "EHLO",
}


@pytest.mark.parametrize(
    ("faults", "failing"),
    [
        (
            Faults(out_of_order_ok=True),
            {"MAIL before HELO", "RCPT before HELO", "RCPT before MAIL", "DATA before MAIL", "DATA before RCPT"},
        ),
        (
            Faults(bad_path_code=500),
            {
                "MAIL path without brackets",
                "MAIL path without @",
                "RCPT path with two @",
                "RCPT domain element starting with a digit",
                "goes on after a 501",
            },
        ),
        (Faults(line_end=b"\r\n"), EVERY_CASE),
        (Faults(multiline_helo=True), EVERY_CASE - WITHOUT_A_GOOD_HELO),
        (Faults(silent_unknown=True), {"EHLO", "unknown command"}),
    ],
    ids=["250 out of order", "500 for a bad path", "CRLF replies", "multi-line replies", "hangs on unknown commands"],
)
def test_conform_fails_a_broken_server_on_exactly_the_right_cases(faults: Faults, failing: set[str]) -> None:
    with CourseServer(faults) as server:
        result, rows = conform(server, "--timeout", "0.5")
    assert result.returncode == EXIT_NONCONFORMING, result.stdout + result.stderr
    assert list(rows) == [case.name for case in CASES]
    assert failed(rows) == failing
    assert f"{len(CASES) - len(failing)} of {len(CASES)} cases passed" in result.stdout


def test_conform_names_what_is_wrong_with_a_reply() -> None:
    with CourseServer(Faults(line_end=b"\r\n")) as server:
        _, rows = conform(server)
    assert "(connect)" in rows["HELO"] and "220 course.server ready (ends in CR LF, not LF)" in rows["HELO"]


def test_conform_exits_3_when_nothing_listens() -> None:
    result = agent("conform", "--dialect", "classroom", "127.0.0.1", str(free_port()))
    assert result.returncode == EXIT_CONNECT
    assert result.stdout == "" and result.stderr.startswith("error: cannot connect to 127.0.0.1:")


def test_conform_checks_only_the_classroom_dialect(course: CourseServer) -> None:
    result = agent("conform", "--dialect", "rfc", course.host, str(course.port))
    assert result.returncode == EXIT_USAGE and "classroom dialect only" in result.stderr
    assert course.connections == 0


HOSTILE = "[bold]PWNED-BOLD[/bold] " + "".join(CONTROL_PAYLOADS)


def test_hostile_reply_text_never_reaches_the_terminal(tmp_path: Path) -> None:
    with CourseServer(Faults(text=HOSTILE)) as server:
        stdin = "alice@sender.test\nbob@one.test\nHello\nbody\n.\n\n"
        argv = [*AGENT, "interactive", "--dialect", "classroom", server.host, str(server.port)]
        code, output = run_in_pty(argv, input_text=stdin)
        assert code == 0, output[-2000:]
        assert output.count(b"PWNED-BOLD") >= 7  # every reply, shown
        assert_inert(output, markup=["[bold]PWNED-BOLD[/bold]"])
        code, output = run_in_pty([*AGENT, "conform", "--dialect", "classroom", server.host, str(server.port)])
    assert code == EXIT_NONCONFORMING, output[-2000:]
    assert b"FAIL" in output and b"PASS" not in output  # the text is not printable ASCII
    assert_inert(output, markup=["[bold]PWNED-BOLD[/bold]"])


def test_a_server_that_never_finishes_its_reply_cannot_hold_the_client() -> None:
    # Continuation lines forever, each in good time: only a deadline for the whole reply ends it.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            while not stop.wait(0.2):
                try:
                    connection.sendall(b"220-still greeting\n")
                except OSError:
                    return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        server = f"127.0.0.1:{listener.getsockname()[1]}"
        message = ("--from", "a@x.test", "--to", "b@y.test", "--subject", "s", "--body", "b")
        result = subprocess.run(
            [*AGENT, "send", "--dialect", "classroom", "--server", server, *message],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "MAILLAB_TIMEOUT": "1"},
        )
    finally:
        stop.set()
        listener.close()
        dripper.join(timeout=5)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no whole reply within 1s" in result.stderr
