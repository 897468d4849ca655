"""The agent's one-message session (session.py) and its pipelining client's named results
(smtp.send_stream), against real servers on loopback sockets."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import given
from hypothesis import strategies as st

from maillab_agent import smtp
from maillab_agent.message import Outgoing, build_message
from maillab_agent.session import Credentials, SessionFailed
from maillab_agent.session import Session as AgentSession
from maillab_agent.smtp import Accepted, Refused, SmtpClient, SmtpConnectionError, wire_data
from maillab_common.loop import run
from tests.unit.conftest import ServerController, StartServer, free_port
from tests.unit.test_agent import Pipelining, SomeRecipientsRefused


class Choosy(SomeRecipientsRefused):
    """Refuses a sender starting with 'refused', a recipient starting with 'bad' and content
    holding 'refuse me'; takes the rest. No PIPELINING unless mixed in."""

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("refused"):
            return "550 5.7.1 Not you"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if b"refuse me" in (envelope.original_content or b""):
            return "554 5.6.0 Not this"
        return await super().handle_DATA(server, session, envelope)


class PipeliningChoosy(Pipelining, Choosy):
    pass


class Dropping(PipeliningChoosy):
    """Drops the connection instead of answering the second DATA."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if len(self.delivered) == 1:
            assert server.transport is not None
            server.transport.close()
            return "421 4.3.0 gone"  # never reaches the client
        return await super().handle_DATA(server, session, envelope)


def message(*, mail_from: str = "a@x.test", to: tuple[str, ...] = ("b@one.test",), body: str = "hello\n") -> Outgoing:
    return build_message(mail_from=mail_from, to=to, subject="session", body=body, message_id="<s@x.test>")


def session_for(server: ServerController, **options: object) -> AgentSession:
    return AgentSession(host=server.hostname, port=server.port, timeout=10, **options)  # type: ignore[arg-type]


def test_a_session_delivers_and_shows_every_command_and_reply(start_server: StartServer) -> None:
    server = start_server()
    outgoing = message()
    dialog: list[tuple[str, str]] = []
    refused = session_for(server, observer=lambda side, line: dialog.append((side, line))).deliver(outgoing)
    assert refused == {}
    assert (server.config.forward_dir / "one.test").exists()
    assert dialog[0][0] == "S" and dialog[0][1].startswith("220 ")
    assert dialog[1] == ("C", "EHLO maillab-agent")
    assert ("C", f"<message, {len(wire_data(outgoing.data))} bytes>") in dialog
    assert any(side == "C" and line.startswith("MAIL FROM:<a@x.test>") for side, line in dialog)
    assert dialog[-2] == ("C", "QUIT") and dialog[-1][1].startswith("221")


@pytest.mark.parametrize("handler_class", [Choosy, PipeliningChoosy])
@pytest.mark.parametrize(
    ("outgoing", "stage", "says"),
    [
        (message(mail_from="refused@x.test"), "mail", "sender refused: 550 5.7.1 Not you"),
        (message(to=("bad@one.test",)), "rcpt", "every recipient refused: bad@one.test: 550 5.1.1 No such user"),
        (message(body="refuse me\n"), "data", "message refused: 554 5.6.0 Not this"),
    ],
)
def test_a_refused_session_names_its_stage(
    start_server: StartServer, handler_class: type[Choosy], outgoing: Outgoing, stage: str, says: str
) -> None:
    handler = handler_class()
    server = start_server(handler)
    with pytest.raises(SessionFailed) as failed:
        session_for(server).deliver(outgoing)
    assert failed.value.stage == stage
    assert str(failed.value) == says
    assert handler.delivered == []


@pytest.mark.parametrize("handler_class", [Choosy, PipeliningChoosy])
def test_a_partly_refused_message_returns_the_refusals(start_server: StartServer, handler_class: type[Choosy]) -> None:
    handler = handler_class()
    server = start_server(handler)
    refused = session_for(server).deliver(message(to=("bad@one.test", "good@two.test")))
    assert {rcpt: reply.code for rcpt, reply in refused.items()} == {"bad@one.test": 550}
    assert handler.delivered == [["good@two.test"]]


@pytest.mark.parametrize(
    ("options", "stage"),
    [({"starttls": True}, "starttls"), ({"credentials": Credentials(user="u", password="p")}, "auth")],
)
def test_tls_or_auth_the_server_does_not_offer_fails_at_that_stage(
    start_server: StartServer, options: dict[str, object], stage: str
) -> None:
    server = start_server()
    with pytest.raises(SessionFailed) as failed:
        session_for(server, **options).deliver(message())
    assert failed.value.stage == stage
    assert not (server.config.forward_dir / "one.test").exists()


def test_no_server_is_the_connect_stage() -> None:
    nowhere = AgentSession(host="127.0.0.1", port=free_port(), timeout=5)
    with pytest.raises(SessionFailed) as failed:
        nowhere.deliver(message())
    assert failed.value.stage == "connect" and "cannot talk to 127.0.0.1:" in str(failed.value)
    with pytest.raises(SessionFailed) as probed:
        nowhere.probe()
    assert probed.value.stage == "connect"


def stream(server: ServerController, envelopes: list[smtp.Envelope]) -> tuple[list[object], SmtpConnectionError | None]:
    """send_stream's results for `envelopes` (jobs are their indexes), and the error that ended it, if one did."""

    async def send() -> tuple[list[object], SmtpConnectionError | None]:
        client = await SmtpClient.connect(server.hostname, server.port, timeout=10)
        queue = list(range(len(envelopes)))
        results: list[object] = []
        try:
            async for result in client.send_stream(lambda: queue.pop(0) if queue else None, envelopes.__getitem__):
                results.append(result)
        except SmtpConnectionError as exc:
            return results, exc
        finally:
            await client.quit()
        return results, None

    return run(send())


def envelope(
    mail_from: str = "a@x.test", rcpt_tos: tuple[str, ...] = ("b@one.test",), body: bytes = b"hi"
) -> smtp.Envelope:
    return smtp.Envelope(mail_from=mail_from, rcpt_tos=rcpt_tos, data=wire_data(b"Subject: s\r\n\r\n" + body + b"\r\n"))


@pytest.mark.parametrize("handler_class", [Choosy, PipeliningChoosy])
def test_send_stream_yields_one_named_result_per_message_in_order(
    start_server: StartServer, handler_class: type[Choosy]
) -> None:
    handler = handler_class()
    server = start_server(handler)
    results, error = stream(
        server,
        [
            envelope(),
            envelope(mail_from="refused@x.test"),
            envelope(rcpt_tos=("bad@one.test", "bad@two.test")),
            envelope(rcpt_tos=("bad@one.test", "good@two.test")),
            envelope(body=b"refuse me"),
            envelope(rcpt_tos=("last@one.test",)),
        ],
    )
    assert error is None
    assert [(type(result).__name__, result.job) for result in results] == [  # type: ignore[attr-defined]
        ("Accepted", 0),
        ("Refused", 1),
        ("Refused", 2),
        ("Accepted", 3),
        ("Refused", 4),
        ("Accepted", 5),
    ]
    stages = [result.error.stage for result in results if isinstance(result, Refused)]
    assert stages == ["mail", "rcpt", "data"]
    partly = results[3]
    assert isinstance(partly, Accepted) and list(partly.refused) == ["bad@one.test"]
    assert handler.delivered == [["b@one.test"], ["good@two.test"], ["last@one.test"]]


def test_a_lost_connection_names_the_message_left_unanswered(start_server: StartServer) -> None:
    handler = Dropping()
    server = start_server(handler)
    results, error = stream(server, [envelope(), envelope(), envelope()])
    assert [(type(result).__name__, result.job) for result in results] == [("Accepted", 0)]  # type: ignore[attr-defined]
    assert error is not None and error.unanswered == 1


@pytest.mark.parametrize(
    ("message_bytes", "wire"),
    [
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".hidden\r\n..two\r\nmid.dle\r\n", b"..hidden\r\n...two\r\nmid.dle\r\n.\r\n"),
    ],
)
def test_wire_data_dot_stuffs_and_ends_the_message(message_bytes: bytes, wire: bytes) -> None:
    assert wire_data(message_bytes) == wire


@given(
    st.binary(max_size=64) | st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n"]), max_size=24).map(b"".join)
)
def test_dot_stuffing_adds_a_dot_before_every_line_that_starts_with_one(message: bytes) -> None:
    # The definition, as a regular expression: slower, and plainly right.
    assert smtp.dot_stuffed(message) == re.sub(rb"^\.", b"..", message, flags=re.MULTILINE)
    # What the server undoes: one dot off each line that starts with one, and nothing else.
    lines = smtp.dot_stuffed(message).split(b"\n")
    assert b"\n".join(line[1:] if line.startswith(b".") else line for line in lines) == message


def test_building_a_message_does_not_load_the_wire_protocol() -> None:
    code = "import sys, maillab_agent.message; print(sorted(m for m in sys.modules if m.startswith('maillab_agent')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "maillab_agent.smtp" not in loaded and "maillab_agent.message" in loaded
