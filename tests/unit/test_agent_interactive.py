"""The interactive course client through a real pipe, and STARTTLS and AUTH against a real server."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from typer.testing import CliRunner

from maillab_agent.__main__ import EXIT_SESSION_REFUSED, app
from maillab_common.forward import Record, parse_records
from maillab_inspector.model import attachment_payloads, parse_message, text_body
from tests.helpers import run_cli
from tests.unit.conftest import ServerController, free_port


def interactive(server: ServerController, stdin: str) -> subprocess.CompletedProcess[str]:
    return run_cli("maillab_agent", "interactive", server.hostname, str(server.port), stdin=stdin)


def test_a_piped_session_reprompts_on_bad_input_and_prints_the_dialog(server: ServerController, tmp_path: Path) -> None:
    attachment = tmp_path / "notes.txt"
    attachment.write_bytes(b"attached\n")
    stdin = (
        "\n".join(
            [
                "not-an-address",
                "alice@sender.test",
                "bob@one.test, not valid",
                "bob@one.test, carol@two.test",
                "Hello from the course client",
                "first line",
                "From the middle",
                "..two dots",
                ".",
                str(tmp_path / "missing.pdf"),
                str(attachment),
            ]
        )
        + "\n"
    )
    result = interactive(server, stdin)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    prompts = ["From: ", "From: ", "To: ", "To: ", "Subject: ", "Message: ", "Attachment: ", "Attachment: "]
    start = 0
    for prompt in prompts:  # in this order, each after the last
        start = output.index(prompt, start) + len(prompt)
    assert output.count("From: ") == 2 and output.count("To: ") == 2 and output.count("Attachment: ") == 2
    assert "error: 'not-an-address' is not a valid mailbox" in output
    assert "error: 'not valid' is not a valid mailbox" in output
    assert "missing.pdf: no such file" in output
    for line in (
        "S: 220 ",
        "C: MAIL FROM:<alice@sender.test>",
        "C: RCPT TO:<carol@two.test>",
        "S: 354 ",
        "S: 250 2.0.0 OK: stored as ",
        "C: QUIT",
        "S: 221 ",
    ):
        assert line in output, line
    items, _ = parse_records((server.config.forward_dir / "one.test").read_bytes())
    [record] = [item for item in items if isinstance(item, Record)]
    message = parse_message(record)
    assert message["Subject"] == "Hello from the course client"
    assert text_body(message) == "first line\nFrom the middle\n..two dots\n"
    assert attachment_payloads(message) == [("notes.txt", "text/plain", b"attached\n")]
    assert (server.config.forward_dir / "two.test").exists()


@pytest.mark.parametrize(
    "stdin",
    [
        "",
        "a@x.test\n",
        "a@x.test\nb@y.test\n",
        "a@x.test\nb@y.test\nsubject\n",
        "a@x.test\nb@y.test\ns\nbody\n",
        "a@x.test\nb@y.test\ns\nbody\n.\n",
    ],
    ids=["at From", "at To", "at Subject", "at Message", "inside Message", "at Attachment"],
)
def test_end_of_input_at_any_prompt_sends_nothing(server: ServerController, stdin: str) -> None:
    result = interactive(server, stdin)
    assert result.returncode == 0, result.stderr
    assert "C: " not in result.stdout and "Traceback" not in result.stderr
    assert list(server.config.forward_dir.iterdir()) == []


class Accepting:
    """Stores what it accepted, to see that a session over TLS with AUTH went through."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[bool, bool]] = []

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        self.envelopes.append((session.ssl is not None, bool(session.authenticated)))
        return "250 OK"


def lab_login(server: object, session: Session, envelope: Envelope, mechanism: str, data: object) -> AuthResult:
    valid = isinstance(data, LoginPassword) and (data.login, data.password) == (b"lab", b"secret")
    return AuthResult(success=valid, handled=False)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Controller, Accepting]]:
    certificate = trustme.CA().issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    handler = Accepting()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        authenticator=lab_login,
        auth_require_tls=True,
        require_starttls=True,
    )
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


def test_send_with_starttls_and_auth(tls_server: tuple[Controller, Accepting]) -> None:
    controller, handler = tls_server
    server = f"{controller.hostname}:{controller.port}"
    base = ["send", "--from", "a@x.test", "--to", "b@y.test", "--server", server]
    result = CliRunner().invoke(app, [*base, "--starttls", "--auth", "lab:secret"])
    assert result.exit_code == 0, result.output
    assert handler.envelopes == [(True, True)]
    wrong = CliRunner().invoke(app, [*base, "--starttls", "--auth", "lab:wrong"])
    assert wrong.exit_code == EXIT_SESSION_REFUSED and "535" in wrong.output
    plain = CliRunner().invoke(app, base)
    assert plain.exit_code != 0 and "530" in plain.output  # the server requires STARTTLS
