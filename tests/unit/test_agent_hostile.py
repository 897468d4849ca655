"""The agent against hostile input and a hostile server, through a real pty.

Bad input is refused with exit code 2 and one line, before anything is sent; nothing a user
typed or a server answered reaches the terminal as a control sequence or as rich markup.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maillab_agent.__main__ import EXIT_CONNECT, EXIT_NOT_ALL_ACCEPTED, EXIT_SENDER_REJECTED, app
from maillab_agent.config import memory_budget
from maillab_agent.message import MAX_BATCH_MEMORY, BadInput, batch_memory, batch_messages, build_message, parse_size
from maillab_common.cli import EXIT_USAGE
from tests.hostile import CONTROL_PAYLOADS, MARKUP_PAYLOADS, assert_inert, run_in_pty

AGENT = shutil.which("maillab-agent", path=str(Path(sys.executable).parent)) or "maillab-agent"
HOSTILE = " ".join((*CONTROL_PAYLOADS, *MARKUP_PAYLOADS))
ARGV_PAYLOADS = tuple(payload.replace("\x00", "") for payload in CONTROL_PAYLOADS)  # argv cannot hold a NUL
runner = CliRunner()


class HostileSmtpServer:
    """A real SMTP server on 127.0.0.1 whose every reply text is full of controls and markup.

    With `refuse_sender` it refuses MAIL; otherwise it takes the message, but refuses every
    recipient in a domain starting with 'refused.', so that the agent shows a reply text.
    """

    def __init__(self, *, refuse_sender: bool, greeting: str = f"220 {HOSTILE}") -> None:
        self.refuse_sender = refuse_sender
        self.greeting = greeting
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # to see `_stopped` soon: closing does not wake accept()
        self._stopped = threading.Event()
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(30)
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as lines:

            def reply(text: str) -> None:
                connection.sendall(text.encode() + b"\r\n")

            reply(self.greeting)
            in_data = False
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if in_data:
                    if line == ".":
                        in_data = False
                        reply(f"250 2.0.0 {HOSTILE}")
                    continue
                verb = line[:4].upper()
                if verb == "EHLO":
                    reply(f"250-lab {HOSTILE}\r\n250 8BITMIME")
                elif verb == "MAIL":
                    reply(f"550 5.7.1 {HOSTILE}" if self.refuse_sender else f"250 {HOSTILE}")
                elif verb == "RCPT":
                    reply(f"550 5.1.1 {HOSTILE}" if "@refused." in line else f"250 {HOSTILE}")
                elif verb == "DATA":
                    in_data = True
                    reply(f"354 {HOSTILE}")
                elif verb == "QUIT":
                    reply(f"221 {HOSTILE}")
                    return
                else:
                    reply(f"250 {HOSTILE}")

    def stop(self) -> None:
        self._stopped.set()
        self._accepting.join(5)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture(params=[True, False], ids=["refusing", "accepting"])
def hostile_server(request: pytest.FixtureRequest) -> Iterator[HostileSmtpServer]:
    server = HostileSmtpServer(refuse_sender=request.param)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def refusing_server() -> Iterator[HostileSmtpServer]:
    server = HostileSmtpServer(refuse_sender=True)
    try:
        yield server
    finally:
        server.stop()


def lines_of(output: bytes) -> list[bytes]:
    return [line for line in output.replace(b"\r\n", b"\n").split(b"\n") if line.strip()]


def assert_refused_in_one_line(code: int, output: bytes, markup: tuple[str, ...] = ()) -> None:
    assert code == EXIT_USAGE, output
    assert len(lines_of(output)) == 1, output
    assert b"Traceback" not in output and b"error:" in output, output
    assert_inert(output, markup=markup)


SEND = [AGENT, "send", "--from", "a@x.test", "--to", "b@y.test"]


# ---- bad input: exit 2, one line, before connecting -------------------------------------


@pytest.mark.parametrize("payload", ARGV_PAYLOADS)
def test_a_hostile_subject_is_refused_in_one_inert_line(payload: str, refusing_server: HostileSmtpServer) -> None:
    code, output = run_in_pty([*SEND, "--subject", f"hi {payload}", "--server", f"127.0.0.1:{refusing_server.port}"])
    assert_refused_in_one_line(code, output)
    assert refusing_server.connections == 0  # refused before connecting


@pytest.mark.parametrize(
    "flags",
    [
        ["--from", "".join(ARGV_PAYLOADS[:4]) + "@x.test"],
        ["--to", "b@" + "".join(ARGV_PAYLOADS[4:])],
        ["--header", "X-Test: " + "".join(ARGV_PAYLOADS)],
        ["--header", "X A: v"],
        ["--header", "".join(ARGV_PAYLOADS) + ": v"],
        ["--subject", "a\u2028b", "--body", "fine"],
        ["--server", "\x1b]0;PWNED\x07:25"],
    ],
    ids=["from", "to", "header value", "header name with a space", "header name", "subject U+2028", "server"],
)
def test_hostile_addresses_headers_and_servers_are_refused_in_one_inert_line(flags: list[str]) -> None:
    code, output = run_in_pty([*SEND, *flags])
    assert_refused_in_one_line(code, output)


@pytest.mark.parametrize("payload", MARKUP_PAYLOADS)
def test_markup_in_a_refused_address_is_printed_literally(payload: str) -> None:
    code, output = run_in_pty([AGENT, "send", "--from", "a@x.test", "--to", payload])
    assert_refused_in_one_line(code, output, markup=(payload,))


def test_the_bold_example_of_the_issue_keeps_its_bracket() -> None:
    code, output = run_in_pty([AGENT, "send", "--from", "a@x.test", "--to", "[bold]x"])
    assert code == EXIT_USAGE
    assert b"'[bold]x' is not a valid mailbox" in output


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "--count", "0"],
        ["batch", "--count", "\x1b]0;PWNED\x07[bold]"],
        ["interactive", "localhost", "99999"],
        ["send", "--from", "a@x.test"],
    ],
    ids=["count 0", "count hostile", "port out of range", "missing --to"],
)
def test_usage_errors_are_one_inert_line_too(argv: list[str]) -> None:
    code, output = run_in_pty([AGENT, *argv])
    assert_refused_in_one_line(code, output)
    assert b"--help" in output


SENDER = ["send", "--from", "a@x.test", "--to", "b@y.test", "--server", "127.0.0.1:9"]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--subject", "a\x0bb"], "control character (U+000B"),
        (["--subject", "a\x0cb"], "control character (U+000C"),
        (["--subject", "a\x1cb"], "control character (U+001C"),
        (["--subject", "a\x85b"], "control character (U+0085"),
        (["--subject", "a\u2028b"], "control character (U+2028"),
        (["--subject", "a\udcffb"], "not valid UTF-8"),
        (["--subject", "x" * 20000], "too long"),
        (["--body", "a\udcffb"], "body is not valid UTF-8"),
        (["--html-body", "a\udcffb"], "HTML body is not valid UTF-8"),
        (["--header", "X A: v"], "not an RFC 5322 field name"),
        (["--header", "X\x7fA: v"], "control character (U+007F"),
        (["--header", "Xé: v"], "not an RFC 5322 field name"),
        (["--header", "X-A: a\x1bb"], "control character (U+001B"),
        (["--header", "X-A: a\x00b"], "control character (U+0000"),
        (["--header", "Subject: twice"], "set by the agent itself"),
        (["--header", "Content-Type: multipart/mixed"], "set by the agent itself"),
        (["--header", "Reply-To: <"], "not valid there"),
        (["--header", "Reply-To: " + "(" * 500], "not valid there"),
        (["--header", 'Sender: "'], "not valid there"),
        (["--header", "Reply-To: a@x.test", "--header", "Reply-To: b@x.test"], "at most 1"),
        (["--header", "no colon"], "not of the form"),
        (["--to", "c\x85d@y.test"], "control character (U+0085"),
        (["--to", "Name <c@y.test>"], "not a valid mailbox"),
        (["--to", "c@" + "y" * 400], "at most 64 bytes before the @ and 255 after"),
        (["--cc", "a\udcff@y.test"], "not valid UTF-8"),
        (["--auth", "u\udcff:p"], "not valid UTF-8"),
        (["--attach", "/nonexistent/file"], "cannot read"),
        (["--attach", "/"], "cannot"),
        (["--attach", "/dev/zero"], "not a regular file"),
        (["--body-file", "/"], "cannot read"),
        (["--server", "127.0.0.1:" + "9" * 5000], "the port must be a number"),
        (["--server", "127.0.0.1:\u00b2"], "the port must be a number"),
        (["--server", "a" * 70 + ":25"], "not a host name"),
        (["--server", "a b:25"], "not a host name"),
    ],
)
def test_bad_input_is_exit_2_in_one_line(flags: list[str], says: str) -> None:
    result = runner.invoke(app, [*SENDER, *flags])
    assert result.exit_code == EXIT_USAGE, result.output
    assert says in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output


def test_an_attachment_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    sparse = tmp_path / "big.bin"
    with open(sparse, "wb") as file:
        file.truncate(2 * 1024**3)  # a hole: no disk used, and not read
    result = runner.invoke(app, [*SENDER, "--attach", str(sparse)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "over 1GiB" in result.output


def test_an_attachment_whose_name_holds_a_control_is_refused(tmp_path: Path) -> None:
    hostile = tmp_path / "a\x1b]0;PWNED\x07.txt"
    hostile.write_bytes(b"x")
    result = runner.invoke(app, [*SENDER, "--attach", str(hostile)])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "file name must not contain a control character" in result.output


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--attachment-size", "20KiB-1KiB"], "the smaller size comes first"),
        (["--attachment-size", "9" * 5000], "not a size"),
        (["--attachment-size", "2GiB"], "too large"),
        (["--attachment-size", "1" + " " * 100_000 + "x"], "not a size"),
        (["--count", "100000", "--attachments", "10", "--attachment-size", "1MiB"], "MiB of memory"),
        (["--count", "2000000", "--attachments", "0"], "at most 1,000,000"),
        (["--recipients-per-message", "5000"], "at most 1000"),
        (["--domains", "a\x85b.test"], "control character"),
        (["--domains", "[bold]"], "not a valid mailbox"),
        (["--rate", "nan"], "above 0"),
        (["--manifest", "/"], "is a directory"),
    ],
)
def test_bad_batch_input_is_exit_2_in_one_line(flags: list[str], says: str) -> None:
    result = runner.invoke(app, ["batch", "--server", "127.0.0.1:9", *flags])
    assert result.exit_code == EXIT_USAGE, result.output
    assert says in result.output
    assert result.output.count("\n") == 1, result.output


def test_sizes_are_parsed_in_linear_time() -> None:
    # the old pattern backtracked over every split of the spaces: minutes for 100 000
    with pytest.raises(BadInput):
        parse_size("1" + " " * 200_000 + "x")
    assert parse_size("  1 GiB ") == 1024**3


def test_a_structured_header_the_email_package_cannot_parse_is_bad_input() -> None:
    for value in ('"', "<", "(" * 500):
        with pytest.raises(BadInput):
            build_message(
                mail_from="a@x.test",
                to=["b@y.test"],
                subject="s",
                body="b",
                headers=[("Reply-To", value)],
                message_id="<1@x.test>",
            )


def test_a_batch_too_big_for_memory_is_refused_before_it_is_built() -> None:
    with pytest.raises(BadInput, match="MiB of memory"):
        batch_messages(seed=1, count=1_000_000, attachments=5, attachment_size=(1024**2, 1024**2))


# ---- interactive input -------------------------------------------------------------------


def test_interactive_reprompts_on_hostile_and_broken_answers(refusing_server: HostileSmtpServer) -> None:
    answers = [
        "a\x1b]0;PWNED-TITLE\x07@x.test",  # From: a control
        "a@x.test",
        "[bold]x",  # To: markup
        "b@y.test",
        "s\x0bx \x1b[2J\x1b[HPWNED-CLEAR",  # Subject: VT and a clear screen
        "fine",
        "body",
        ".",
        "~nobody-such-user/x",  # Attachment: no such home
        "x" * 5000,  # too long a name
        "/",  # a directory
    ]
    # A pty's line discipline would eat the controls in the answers (Ctrl-[ and Ctrl-K are
    # fine, but \x7f is an erase): the pipe is the hostile path; the pty shows the output.
    code, output = run_in_pty(
        ["sh", "-c", 'printf "%s" "$ANSWERS" | "$AGENT" interactive 127.0.0.1 "$PORT"'],
        env={"ANSWERS": "\n".join(answers) + "\n", "AGENT": AGENT, "PORT": str(refusing_server.port)},
    )
    assert code == 0, output  # end of input at the Attachment prompt: nothing sent
    assert refusing_server.connections == 0
    assert output.count(b"From: ") == 2 and output.count(b"To: ") == 2 and output.count(b"Subject: ") == 2
    assert output.count(b"Attachment: ") == 4
    assert output.count(b"error: ") == 6
    assert_inert(output, markup=("[bold]x",))


def test_interactive_with_bytes_that_are_not_utf8_reprompts(refusing_server: HostileSmtpServer) -> None:
    code, output = run_in_pty(
        ["sh", "-c", 'printf \'a\\377@x.test\\n\' | "$AGENT" interactive 127.0.0.1 "$PORT"'],
        env={"AGENT": AGENT, "PORT": str(refusing_server.port)},
    )
    assert code == 0, output
    assert b"not valid UTF-8" in output and b"Traceback" not in output


@pytest.mark.parametrize(
    "typed",
    [
        "\x04",
        "a@x.test\n\x04",
        "a@x.test\nb@y.test\n\x04",
        "a@x.test\nb@y.test\ns\nbody\n\x04",
        "a@x.test\nb@y.test\ns\n.\n\x04",
    ],
    ids=["at From", "at To", "at Subject", "inside Message", "at Attachment"],
)
def test_ctrl_d_on_a_terminal_at_any_prompt_sends_nothing(typed: str, refusing_server: HostileSmtpServer) -> None:
    code, output = run_in_pty([AGENT, "interactive", "127.0.0.1", str(refusing_server.port)], input_text=typed)
    assert code == 0, output
    assert b"Traceback" not in output and b"error" not in output
    assert refusing_server.connections == 0


# ---- a hostile server: every reply shown inert -------------------------------------------


def test_send_shows_a_hostile_servers_replies_inert(hostile_server: HostileSmtpServer) -> None:
    code, output = run_in_pty(
        [*SEND, "--to", "c@refused.test", "--server", f"127.0.0.1:{hostile_server.port}"], timeout=30
    )
    assert hostile_server.connections == 1
    if hostile_server.refuse_sender:
        assert code == EXIT_SENDER_REJECTED, output
        assert b"sender refused: 550 5.7.1 " in output
        assert len(lines_of(output)) == 1, output
    else:
        assert code == 0, output
        assert b"refused c@refused.test: 550 5.1.1 " in output and b"sent <send-" in output
    assert_inert(output, markup=MARKUP_PAYLOADS)


def test_batch_shows_a_hostile_servers_replies_inert(hostile_server: HostileSmtpServer, tmp_path: Path) -> None:
    argv = [AGENT, "batch", "--count", "2", "--attachments", "0", "--seed", "1", "--retry-for", "0"]
    argv += ["--domains", "refused.test,ok.test", "--recipients-per-message", "2", "--concurrency", "1"]
    argv += ["--server", f"127.0.0.1:{hostile_server.port}", "--manifest", str(tmp_path / "[bold]m.json")]
    code, output = run_in_pty(argv, timeout=30)
    assert code == EXIT_NOT_ALL_ACCEPTED, output
    what = b"not accepted: " if hostile_server.refuse_sender else b"partly refused: "
    assert output.count(what) == 2, output
    assert b"manifest: " + str(tmp_path / "[bold]m.json").encode() in output
    assert_inert(output, markup=MARKUP_PAYLOADS)


def test_interactive_shows_a_hostile_servers_dialog_inert(hostile_server: HostileSmtpServer) -> None:
    answers = "a@x.test\nb@ok.test, c@refused.test\nsubject\nbody\n.\n\n"
    code, output = run_in_pty([AGENT, "interactive", "127.0.0.1", str(hostile_server.port)], input_text=answers)
    assert code == (EXIT_SENDER_REJECTED if hostile_server.refuse_sender else 0), output
    assert b"S: 220 " in output and b"C: MAIL FROM:<a@x.test>" in output and b"S: 221 " in output
    assert_inert(output, markup=MARKUP_PAYLOADS)


@pytest.mark.parametrize("greeting", ["\u00b2\u00b2\u00b2 " + HOSTILE, HOSTILE, "22" + "x" * 100_000])
def test_a_reply_that_is_not_smtp_is_a_connection_error_shown_inert(greeting: str) -> None:
    server = HostileSmtpServer(refuse_sender=True, greeting=greeting)
    try:
        code, output = run_in_pty([*SEND, "--server", f"127.0.0.1:{server.port}"], timeout=30)
    finally:
        server.stop()
    assert code == EXIT_CONNECT, output
    assert len(lines_of(output)) == 1 and len(output) < 1000, output
    assert_inert(output)


def test_a_container_memory_limit_sets_the_batch_budget(tmp_path: Path) -> None:
    limited, unlimited, v1 = tmp_path / "memory.max", tmp_path / "v2.max", tmp_path / "limit_in_bytes"
    limited.write_text("1073741824\n")
    unlimited.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert memory_budget((limited,)) == 512 * 1024**2
    assert memory_budget((unlimited, tmp_path / "absent")) == MAX_BATCH_MEMORY
    assert memory_budget((v1,)) == MAX_BATCH_MEMORY
    assert memory_budget((tmp_path / "absent", limited)) == 512 * 1024**2
    # A batch of about 700 MiB: allowed without a limit, refused (exit 2's BadInput) under 1 GiB.
    assert 512 * 1024**2 < batch_memory(20, 1, 16 * 1024**2, 1) < MAX_BATCH_MEMORY
    with pytest.raises(BadInput, match="at most 512 MiB is allowed"):
        batch_messages(
            seed=1,
            count=20,
            attachments=1,
            attachment_size=(16 * 1024**2,) * 2,
            memory_budget=memory_budget((limited,)),
        )
