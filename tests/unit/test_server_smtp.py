"""The server over a real socket: what it stores and the replies it gives."""

from __future__ import annotations

import asyncio
import mailbox
import smtplib
import socket
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session

from maillab_common.forward import Record, parse_records
from maillab_server.config import ServerConfig
from maillab_server.handler import ForwardHandler
from maillab_server.store import ForwardStore
from tests.hostile import CONTROL_PAYLOADS, assert_inert
from tests.unit.conftest import ServerController, StartServer

MESSAGE = b"From: a@sender.test\r\nSubject: three recipients\r\nMessage-ID: <m1@sender.test>\r\n\r\nFrom the body.\r\n"


def stored(forward: Path, domain: str) -> list[Record]:
    items, leftover = parse_records((forward / domain).read_bytes())
    assert leftover == b""
    assert all(isinstance(item, Record) for item in items)
    return [item for item in items if isinstance(item, Record)]


def test_one_record_per_domain_with_that_domains_recipients(server: ServerController, client: smtplib.SMTP) -> None:
    refused = client.sendmail("a@sender.test", ["x@One.test", "y@two.test", "z@one.test"], MESSAGE)
    assert refused == {}
    forward = server.config.forward_dir
    assert sorted(path.name for path in forward.iterdir()) == ["one.test", "two.test"]
    [one] = stored(forward, "one.test")
    [two] = stored(forward, "two.test")
    assert one.delivery.rcpt_tos == ("x@One.test", "z@one.test")
    assert two.delivery.rcpt_tos == ("y@two.test",)
    assert one.delivery.mail_from == "a@sender.test"
    assert one.delivery.message == MESSAGE.replace(b"\r\n", b"\n")
    assert one.delivery.transaction_id == two.delivery.transaction_id
    box = mailbox.mbox(str(forward / "one.test"), create=False)
    try:
        [message] = list(box)
        assert message["Subject"] == "three recipients"
        assert message.get_payload() == ">From the body.\n"
    finally:
        box.close()


def test_the_250_reply_names_the_stored_transaction(server: ServerController, client: smtplib.SMTP) -> None:
    client.ehlo()
    client.mail("a@sender.test")
    client.rcpt("b@one.test")
    code, reply = client.data(MESSAGE)
    assert code == 250
    [record] = stored(server.config.forward_dir, "one.test")
    assert record.delivery.transaction_id in reply.decode()


@pytest.mark.parametrize(
    "address",
    [
        "user@../etc",
        "user@a/b.test",
        "user@.hidden",
        "nodomain",
        "user@-x.test",
        "a\u2028b@one.test",
        "user@[IPv6:fe80::1%..]",
        "user@[IPv6:::1%" + "a" * 290 + "]",
        "user@[x-lab:any.thing]",
    ],
)
def test_a_recipient_whose_domain_cannot_be_a_file_gets_553(client: smtplib.SMTP, address: str) -> None:
    client.ehlo()
    client.mail("a@sender.test", ["SMTPUTF8"])
    code, _ = client.rcpt(address)
    assert code == 553


def test_recipients_over_the_limit_get_452(start_server: StartServer) -> None:
    server = start_server(max_recipients=2)
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@sender.test")
        codes = [client.rcpt(f"user{n}@one.test")[0] for n in range(3)]
    assert codes == [250, 250, 452]


def test_a_message_over_the_size_limit_gets_552_and_is_not_stored(start_server: StartServer) -> None:
    server = start_server(max_message_size=2048)
    big = MESSAGE + (b"x" * 98 + b"\r\n") * 40
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@sender.test", ["SIZE=4200"])[0] == 552  # declared too big: refused at once
        client.mail("a@sender.test")  # undeclared: refused after DATA
        client.rcpt("b@one.test")
        assert client.data(big)[0] == 552
    assert not (server.config.forward_dir / "one.test").exists()


def test_storage_failure_answers_451_and_the_server_goes_on(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    (server.config.forward_dir / "broken.test").mkdir()  # a folder where the file should be
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@sender.test", ["b@broken.test", "c@fine.test"], MESSAGE)
        assert refused.value.smtp_code == 451
        assert (
            not (server.config.forward_dir / "fine.test").exists()
            or stored(server.config.forward_dir, "fine.test") == []
        )
        assert client.sendmail("a@sender.test", ["c@fine.test"], MESSAGE) == {}
    assert len(stored(server.config.forward_dir, "fine.test")) == 1


def test_handler_hooks_called_directly(tmp_path: Path) -> None:
    config = ServerConfig(forward_dir=tmp_path, max_recipients=1)
    handler = ForwardHandler(ForwardStore(tmp_path), config)
    envelope, session = Envelope(), Session(loop=asyncio.new_event_loop())
    server: Any = None

    def call(hook: Coroutine[Any, Any, str]) -> str:
        return session.loop.run_until_complete(hook)

    try:
        reply = call(handler.handle_MAIL(server, session, envelope, "bad\nsender@x.test", []))
        assert reply == "553 5.1.7 The sender address holds characters not allowed in an address"
        assert call(handler.handle_RCPT(server, session, envelope, "in\rjected@x.test", [])).startswith("553 ")
        assert call(handler.handle_RCPT(server, session, envelope, "ok@x.test", [])) == "250 2.1.5 OK"
        assert call(handler.handle_RCPT(server, session, envelope, "two@x.test", [])).startswith("452 4.5.3")
        assert envelope.rcpt_tos == ["ok@x.test"]
    finally:
        session.loop.close()


def test_ehlo_advertises_pipelining_and_pipelined_commands_are_answered_in_order(server: ServerController) -> None:
    with socket.create_connection((server.hostname, server.port), timeout=10) as connection:
        replies = connection.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        connection.sendall(b"EHLO client.test\r\n")
        ehlo = [replies.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(replies.readline())
        assert b"250-PIPELINING\r\n" in ehlo
        envelope = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@one.test>\r\nRCPT TO:<c@../x>\r\nDATA\r\n"
        connection.sendall(envelope)
        codes = [replies.readline()[:3] for _ in range(4)]
        assert codes == [b"250", b"250", b"553", b"354"]
        # The content, its end, and the next transaction's commands in one write.
        connection.sendall(b"Subject: one\r\n\r\nfirst\r\n.\r\n" + envelope.replace(b"b@one", b"d@one"))
        codes = [replies.readline()[:3] for _ in range(5)]
        assert codes == [b"250", b"250", b"250", b"553", b"354"]
        connection.sendall(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        assert replies.readline()[:3] == b"250"
        assert replies.readline()[:3] == b"221"
    records = stored(server.config.forward_dir, "one.test")
    assert [record.delivery.rcpt_tos for record in records] == [("b@one.test",), ("d@one.test",)]


def test_lines_up_to_the_limit_pass_and_longer_ones_get_500(start_server: StartServer) -> None:
    server = start_server(max_line_length=200)
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert client.sendmail("a@sender.test", ["b@one.test"], b"Subject: ok\r\n\r\n" + b"x" * 197 + b"\r\n") == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@sender.test", ["b@one.test"], b"Subject: long\r\n\r\n" + b"x" * 260 + b"\r\n")
        assert refused.value.smtp_code == 500
    assert len(stored(server.config.forward_dir, "one.test")) == 1


def test_fifty_concurrent_sessions_to_one_domain_never_interleave(server: ServerController) -> None:
    def session(number: int) -> None:
        with smtplib.SMTP(server.hostname, server.port, timeout=30) as client:
            for message in range(4):
                body = f"Subject: s{number} m{message}\r\n\r\n".encode() + (b"%d\r\n" % number) * 2000
                client.sendmail(f"s{number}@sender.test", ["one@shared.test"], body)

    with ThreadPoolExecutor(max_workers=50) as pool:
        list(pool.map(session, range(50)))
    records = stored(server.config.forward_dir, "shared.test")
    assert len(records) == 200
    for record in records:
        number = record.delivery.mail_from.removeprefix("s").removesuffix("@sender.test")
        body = record.delivery.message.split(b"\n\n", 1)[1]
        assert body == (number.encode() + b"\n") * 2000, "a record holds one message, whole"


def raw_session(server: ServerController, payload: bytes) -> list[bytes]:
    """Send `payload` after EHLO in one write; the reply lines that come back until the server goes quiet."""
    with socket.create_connection((server.hostname, server.port), timeout=3) as connection:
        replies = connection.makefile("rb")
        replies.readline()
        connection.sendall(b"EHLO client.test\r\n")
        while replies.readline()[3:4] == b"-":
            pass
        connection.sendall(payload)
        lines = []
        try:
            while line := replies.readline():
                lines.append(line)
        except TimeoutError:
            pass
        return lines


def test_smuggled_commands_stay_inside_the_message(server: ServerController) -> None:
    envelope = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@one.test>\r\nDATA\r\n"
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@two.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n"
    payload = envelope + b"Subject: real\r\n\r\nbody\n.\n" + smuggled + b".\r\nQUIT\r\n"
    replies = raw_session(server, payload)
    assert [line[:3] for line in replies] == [b"250", b"250", b"354", b"250", b"221"]
    [record] = stored(server.config.forward_dir, "one.test")
    assert b"MAIL FROM:<evil@x.test>" in record.delivery.message
    assert not (server.config.forward_dir / "two.test").exists()


def test_lenient_mode_takes_a_course_style_client(start_server: StartServer) -> None:
    server = start_server(lenient_line_endings=True)
    payload = b"MAIL FROM:<a@sender.test>\nRCPT TO:<b@one.test>\nDATA\nSubject: lf\n\nhello\n..dot\n.\nQUIT\n"
    replies = raw_session(server, payload)
    assert [line[:3] for line in replies] == [b"250", b"250", b"354", b"250", b"221"]
    [record] = stored(server.config.forward_dir, "one.test")
    assert record.delivery.message == b"Subject: lf\n\nhello\n.dot\n"


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [("", "b@one.test"), ('"quoted local"@sender.test', '"x y"@one.test'), ("a@[192.0.2.1]", "b@[192.0.2.2]")],
)
def test_addresses_beyond_the_fast_path_still_parse(server: ServerController, sender: str, recipient: str) -> None:
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert client.sendmail(sender, [recipient], MESSAGE) == {}
    domain = recipient.rpartition("@")[2].lower()
    [record] = stored(server.config.forward_dir, domain)
    assert record.delivery.mail_from == sender and record.delivery.rcpt_tos == (recipient,)


def test_invalid_utf8_in_an_address_is_refused_not_an_internal_error(server: ServerController) -> None:
    payload = b"MAIL FROM:<a\x89b@sender.test>\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<c\x89@one.test>\r\n"
    replies = raw_session(server, payload + b"VRFY >\x80\r\nQUIT\r\n")
    assert [line[:3] for line in replies] == [b"553", b"250", b"553", b"502", b"221"], replies
    assert all(b"Error: (" not in line for line in replies), "no exception leaks into a reply"


def test_replies_that_quote_the_client_carry_no_control_from_it(server: ServerController) -> None:
    replies = b"".join(
        line
        for text in (*CONTROL_PAYLOADS, "\u2028\u202ePWNED-BIDI")
        # "VRFY (..." is no address: the 502 quotes it
        for line in raw_session(server, b"%s\r\nMAIL FROM:%s\r\nVRFY (%s\r\nQUIT\r\n" % ((text.encode(),) * 3))
    )
    assert_inert(replies)
    assert "\u2028".encode() not in replies and "\u202e".encode() not in replies
    assert b"PWNED-C1CSI" in replies, "the client's text is quoted, made inert"
