"""Fault injection on the wire: each stage and action against a real server, on both ports.

The server runs in-process on a loopback port (tests.unit.conftest) with its rules from
config (MAILLAB_CHAOS), or from rules.json in a tmp chaos folder watched as `serve` watches
it; a few tests run the real `maillab-server` process. What was stored is read back from
the forward files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from maillab_common.chaos import parse_rules
from maillab_common.chaos_files import (
    FROM_ENVIRONMENT,
    FROM_FILE,
    RULES_FILE,
    ChaosState,
    read_state,
    wait_applied,
    write_rules,
)
from maillab_common.esmtp import ONCE
from maillab_server import chaos_live
from maillab_server.chaos import Chaos
from maillab_server.chaos_live import ChaosKeeper
from maillab_server.handler import ForwardHandler
from tests.helpers import run_cli, wait_until
from tests.unit.conftest import ServerController, StartServer, free_port
from tests.unit.test_server_lifecycle import Dialog
from tests.unit.test_server_smtp import MESSAGE, stored

SENDER = "a@sender.test"


def count(server: ServerController, domain: str) -> int:
    """How many messages the forward file of `domain` holds."""
    path = server.config.forward_dir / domain
    return len(stored(server.config.forward_dir, domain)) if path.exists() else 0


def with_rules(start_server: StartServer, rules: str, **settings: object) -> ServerController:
    """A server whose MAILLAB_CHAOS is `rules`."""
    return start_server(chaos=parse_rules(rules), **settings)


def chaos_of(server: ServerController) -> Chaos:
    assert isinstance(server.handler, ForwardHandler)
    return server.handler.chaos


Dial = Callable[[int], Dialog]


@pytest.fixture
def dial() -> Iterator[Dial]:
    """A raw SMTP connection (test_server_lifecycle's Dialog) to a port, greeted with 220; closed at the end."""
    opened: list[Dialog] = []

    def connect(port: int) -> Dialog:
        opened.append(dialog := Dialog(port))
        return dialog

    yield connect
    for dialog in opened:
        dialog.replies.close()
        dialog.socket.close()


def closed(dialog: Dialog) -> bool:
    """Whether the server closed the connection with nothing more said."""
    return dialog.reply() == b""


def greeting(port: int) -> tuple[bytes, bytes]:
    """The first line the server says on a new connection, and everything after it up to its close (or 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as connection, connection.makefile("rb") as replies:
        first = replies.readline()
        try:
            rest = replies.read()
        except TimeoutError:
            rest = b"(still open)"
        return first, rest


def send_raw(dialog: Dialog, recipients: list[str], *, once: bool = False) -> bytes:
    """A whole transaction on `dialog`, EHLO included; the reply to the final dot (b"" if the server closed)."""
    assert dialog.command("EHLO client.test").startswith(b"250")
    assert dialog.command(f"MAIL FROM:<{SENDER}>{' ' + ONCE if once else ''}").startswith(b"250")
    for recipient in recipients:
        assert dialog.command(f"RCPT TO:<{recipient}>").startswith(b"250")
    assert dialog.command("DATA").startswith(b"354")
    dialog.send(MESSAGE + b".\r\n")
    return dialog.reply()


# --- connect and HELO -----------------------------------------------------------------------------


# aiosmtpd's Controller connects once as it starts, to see the server up: a connect rule's first command.
def test_connect_reply_is_the_greeting_and_the_connection_closes(start_server: StartServer) -> None:
    server = with_rules(start_server, "connect reply=554 times=2")
    assert greeting(server.port) == (b"554 5.0.0 maillab chaos: rule 1\r\n", b"")
    assert greeting(server.port)[0].startswith(b"220 "), "times=2: the next connection is greeted"
    wait_until(lambda: not server.sessions.open, "the refused connections to leave no session")


def test_connect_disconnect_closes_without_a_greeting(start_server: StartServer) -> None:
    server = with_rules(start_server, "connect disconnect")
    assert greeting(server.port) == (b"", b"")


def test_connect_delay_greets_late(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "connect delay=400")
    started = time.monotonic()
    dialog = dial(server.port)
    assert time.monotonic() - started >= 0.4
    assert dialog.command("EHLO client.test").startswith(b"250")


def test_helo_reply_instead_of_250_and_the_session_goes_on(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, 'helo reply="451:4.3.0 come back" times=1')
    dialog = dial(server.port)
    assert dialog.command("EHLO client.test") == b"451 4.3.0 come back\r\n"
    assert dialog.command("HELO client.test").startswith(b"250 ")


def test_a_421_reply_closes_the_connection(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "helo reply=421")
    dialog = dial(server.port)
    dialog.send(b"EHLO client.test\r\nNOOP\r\n")  # pipelined: the NOOP is never answered
    assert dialog.reply() == b"421 4.0.0 maillab chaos: rule 1\r\n"
    assert closed(dialog)


# --- MAIL and RCPT --------------------------------------------------------------------------------


def test_mail_reply_refuses_a_matching_sender_only(start_server: StartServer) -> None:
    server = with_rules(start_server, "mail reply=550 from=*@spam.test")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        assert client.mail("x@SPAM.test") == (550, b"5.0.0 maillab chaos: rule 1")
        assert client.rcpt("b@one.test")[0] == 503, "the sender was not taken"
        assert client.mail(SENDER)[0] == 250


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_disconnect_closes_without_a_reply_and_nothing_is_stored(
    start_server: StartServer, dial: Dial, stage: str
) -> None:
    server = with_rules(start_server, f"{stage} disconnect")
    dialog = dial(server.port)
    assert dialog.command("EHLO client.test").startswith(b"250")
    commands = [f"MAIL FROM:<{SENDER}>", "RCPT TO:<b@one.test>", "DATA"]
    faulted = ["mail", "rcpt", "data"].index(stage)
    for command in commands[:faulted]:
        assert dialog.command(command).startswith(b"250")
    # The rest of the transaction pipelined after the faulted command, the message included:
    # a server that went on after the disconnect would store it.
    rest = "".join(f"{command}\r\n" for command in commands[faulted:]).encode()
    dialog.send(rest + MESSAGE + b".\r\n")
    assert closed(dialog)
    time.sleep(0.2)
    assert count(server, "one.test") == 0


def test_commands_pipelined_after_a_disconnect_are_not_acted_on(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "rcpt disconnect to=gone@*")
    dialog = dial(server.port)
    assert dialog.command("EHLO client.test").startswith(b"250")
    envelope = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<b@one.test>\r\nRCPT TO:<gone@one.test>\r\nDATA\r\n"
    dialog.send(envelope.encode() + MESSAGE + b".\r\nQUIT\r\n")
    assert [dialog.reply(), dialog.reply()] == [b"250 2.1.0 OK\r\n", b"250 2.1.5 OK\r\n"]
    assert closed(dialog)
    assert count(server, "one.test") == 0


def test_rcpt_reply_for_the_first_two_to_an_address_then_accepted(start_server: StartServer) -> None:
    """The recipe "make the next two messages to X fail": the refused recipient is not taken, the others are."""
    server = with_rules(start_server, "rcpt reply=451 to=*@flaky.test times=2")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        for _ in range(2):
            refused = client.sendmail(SENDER, ["x@flaky.test", "y@steady.test"], MESSAGE)
            assert refused == {"x@flaky.test": (451, b"4.0.0 maillab chaos: rule 1")}
        assert client.sendmail(SENDER, ["x@flaky.test", "y@steady.test"], MESSAGE) == {}
    assert (count(server, "flaky.test"), count(server, "steady.test")) == (1, 3)
    [rule] = chaos_of(server).state().rules
    assert (rule.matched, rule.fired) == (3, 2), "only RCPTs to flaky.test match"


def test_rcpt_delay_answers_late_then_as_normal(start_server: StartServer) -> None:
    server = with_rules(start_server, "rcpt delay=300 to=slow@*")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.mail(SENDER)
        started = time.monotonic()
        assert client.rcpt("slow@one.test")[0] == 250
        assert time.monotonic() - started >= 0.3
        assert client.data(MESSAGE)[0] == 250
    assert count(server, "one.test") == 1


def test_a_delay_in_one_session_holds_up_no_other(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "rcpt delay=3000 to=slow@*")
    slow = dial(server.port)
    for command in ("EHLO client.test", f"MAIL FROM:<{SENDER}>"):
        assert slow.command(command).startswith(b"250")
    slow.send(b"RCPT TO:<slow@one.test>\r\n")  # its reply comes in 3 s
    time.sleep(0.1)
    started = time.monotonic()
    assert send_raw(dial(server.port), ["b@two.test"]).startswith(b"250 2.0.0 OK: stored as ")
    assert time.monotonic() - started < 1.5, "the other session went on meanwhile"
    assert count(server, "two.test") == 1
    assert slow.reply() == b"250 2.1.5 OK\r\n"
    assert time.monotonic() - started >= 2.5


def test_a_reserved_recipient_gets_its_reply_with_no_rules(start_server: StartServer) -> None:
    server = start_server()
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        refused = client.sendmail(SENDER, ["rcpt-451@one.test", "rcpt-550@one.test", "b@one.test"], MESSAGE)
        assert refused == {
            "rcpt-451@one.test": (451, b"4.0.0 maillab chaos: reserved address"),
            "rcpt-550@one.test": (550, b"5.0.0 maillab chaos: reserved address"),
        }
        with pytest.raises(smtplib.SMTPDataError) as raised:
            client.sendmail(SENDER, ["data-452@two.test", "b@two.test"], MESSAGE)
        assert (raised.value.smtp_code, raised.value.smtp_error) == (452, b"4.0.0 maillab chaos: reserved address")
    [record] = stored(server.config.forward_dir, "one.test")
    assert record.delivery.rcpt_tos == ("b@one.test",)
    assert count(server, "two.test") == 0, "refused at the end of DATA: not stored"
    assert chaos_of(server).state().reserved_fired == 3


def test_reserved_addresses_are_answered_before_the_rules(start_server: StartServer) -> None:
    server = with_rules(start_server, "rcpt reply=452")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt("rcpt-554@one.test")[0] == 554
        assert client.rcpt("b@one.test")[0] == 452
    [rule] = chaos_of(server).state().rules
    assert rule.matched == 1, "the reserved address's RCPT was not asked of the rules"


# --- DATA and its end -----------------------------------------------------------------------------


def test_data_reply_instead_of_354(start_server: StartServer) -> None:
    server = with_rules(start_server, "data reply=554 every=2")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert client.sendmail(SENDER, ["b@one.test"], MESSAGE) == {}
        with pytest.raises(smtplib.SMTPDataError) as raised:
            client.sendmail(SENDER, ["b@one.test"], MESSAGE)
        assert raised.value.smtp_code == 554
        assert client.sendmail(SENDER, ["b@one.test"], MESSAGE) == {}
    assert count(server, "one.test") == 2


def test_data_delay_sends_354_late(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "data delay=300")
    dialog = dial(server.port)
    for command in ("EHLO client.test", f"MAIL FROM:<{SENDER}>", "RCPT TO:<b@one.test>"):
        assert dialog.command(command).startswith(b"250")
    started = time.monotonic()
    assert dialog.command("DATA").startswith(b"354")
    assert time.monotonic() - started >= 0.3


def test_data_end_reply_stores_nothing(start_server: StartServer) -> None:
    server = with_rules(start_server, "data-end reply=452:4.3.1 to=*@full.test")
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as raised:
            client.sendmail(SENDER, ["a@fine.test", "b@full.test"], MESSAGE)
        assert (raised.value.smtp_code, raised.value.smtp_error) == (452, b"4.3.1")
        assert client.sendmail(SENDER, ["a@fine.test"], MESSAGE) == {}
    assert (count(server, "fine.test"), count(server, "full.test")) == (1, 0)


def test_data_end_disconnect_closes_before_storing(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "data-end disconnect")
    dialog = dial(server.port)
    assert send_raw(dialog, ["b@one.test"]) == b""
    assert count(server, "one.test") == 0


def test_data_end_delay_answers_late_and_stores(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "data-end delay=300")
    dialog = dial(server.port)
    started = time.monotonic()
    assert send_raw(dialog, ["b@one.test"]).startswith(b"250 2.0.0 OK: stored as ")
    assert time.monotonic() - started >= 0.3
    assert count(server, "one.test") == 1


def test_after_store_disconnect_stores_once_and_a_retry_with_once_is_not_stored_again(
    start_server: StartServer,
    dial: Dial,
) -> None:
    """The lost-reply case: stored, the connection dropped before the 250; the retry finds it."""
    server = with_rules(start_server, "data-end after-store-disconnect times=1")
    dialog = dial(server.port)
    dialog.send(b"NOOP\r\n")  # what came before the fault is answered
    assert dialog.reply().startswith(b"250")
    assert send_raw(dialog, ["b@one.test", "c@two.test"]) == b"", "no reply: the connection closed"
    assert count(server, "one.test") == count(server, "two.test") == 1, "stored, durably, before the close"
    retry = dial(server.port)
    assert send_raw(retry, ["b@one.test", "c@two.test"], once=True) == (
        b"250 2.0.0 OK: already stored by an earlier attempt\r\n"
    )
    assert count(server, "one.test") == count(server, "two.test") == 1
    assert send_raw(retry, ["b@one.test", "c@two.test"]).startswith(b"250 2.0.0 OK: stored as "), "without ONCE"
    assert count(server, "one.test") == 2


def test_a_message_that_gets_250_is_stored_once_under_random_faults(start_server: StartServer, dial: Dial) -> None:
    """Many transactions under every kind of fault: each 250 is one stored copy, nothing else is stored."""
    rules = (
        "rcpt reply=451 p=0.2 seed=1; data disconnect p=0.1 seed=2; data-end reply=452 p=0.2 seed=3;"
        " data-end disconnect p=0.1 seed=4"
    )
    server = with_rules(start_server, rules)
    accepted = 0
    for number in range(60):
        dialog = dial(server.port)
        try:
            body = MESSAGE.replace(b"m1@", f"m{number}@".encode())
            dialog.command("EHLO client.test")
            dialog.command(f"MAIL FROM:<{SENDER}>")
            if not dialog.command("RCPT TO:<b@one.test>").startswith(b"250"):
                continue
            if not dialog.command("DATA").startswith(b"354"):
                continue
            dialog.send(body + b".\r\n")
            accepted += dialog.reply().startswith(b"250")
        finally:
            dialog.socket.close()
    fired = [rule.fired for rule in chaos_of(server).state().rules]
    assert all(fired), f"every rule fired at least once: {fired}"
    assert 0 < accepted == count(server, "one.test")


# --- AUTH -----------------------------------------------------------------------------------------


def test_auth_reply_refuses_the_login(start_server: StartServer) -> None:
    server = with_rules(start_server, "auth reply=454:4.7.0 times=1", auth_users=(("lab", "secret"),))
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.user, client.password = "lab", "secret"
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            client.auth("PLAIN", client.auth_plain)
        assert raised.value.smtp_code == 454
        assert client.login("lab", "secret")[0] == 235


@pytest.mark.parametrize("rules", ["", "auth reply=535 times=3"])
def test_a_faults_535_is_no_failed_login(start_server: StartServer, rules: str) -> None:
    """A 535 that a rule or a reserved address gives is no wrong password: not delayed, not counted."""
    server = with_rules(start_server, rules, auth_users=(("lab", "secret"),))
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.mail(SENDER)
        client.user, client.password = "lab", "secret"
        started = time.monotonic()
        for _ in range(3):
            if rules:
                with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
                    client.auth("PLAIN", client.auth_plain)
                assert raised.value.smtp_code == 535
            else:
                assert client.rcpt("rcpt-535@x.test")[0] == 535
        assert time.monotonic() - started < 1.5, "answered at once"
        client.rset()
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            client.login("lab", "wrong")
        assert raised.value.smtp_code == 535, "the connection's first wrong password: a plain 535, not a 421"
        assert client.login("lab", "secret")[0] == 235


# --- the idle timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["connect", "helo", "mail", "rcpt", "data", "data-end"])
def test_a_delay_longer_than_the_idle_timeout_is_answered_late_not_dropped(
    start_server: StartServer, stage: str
) -> None:
    server = with_rules(start_server, f"{stage} delay=1500", idle_timeout=1.0)
    started = time.monotonic()
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert client.sendmail(SENDER, ["b@one.test"], MESSAGE) == {}
        assert time.monotonic() - started >= 1.5
    assert count(server, "one.test") == 1


def test_the_idle_timeout_still_closes_after_a_delay(start_server: StartServer, dial: Dial) -> None:
    server = with_rules(start_server, "helo delay=1500", idle_timeout=1.0)
    dialog = dial(server.port)
    assert dialog.command("EHLO client.test").startswith(b"250")
    started = time.monotonic()
    assert dialog.reply() == b"", "idle: closed"
    assert 0.5 < time.monotonic() - started < 3.0


# --- the classroom port ---------------------------------------------------------------------------


def classroom_lines(server: ServerController, commands: list[bytes]) -> list[bytes]:
    """The greeting on the classroom port, then each command and its one reply line; b"" last when the server closed."""
    with socket.create_connection(("127.0.0.1", server.config.classroom_port), timeout=5) as connection:
        replies = connection.makefile("rb")
        lines = [replies.readline()]
        for command in commands:
            if not lines[-1]:
                break
            connection.sendall(command + b"\n")
            lines.append(replies.readline())
        return lines


def test_the_classroom_port_gets_faults_in_its_dialect(start_server: StartServer) -> None:
    server = with_rules(
        start_server, "rcpt reply=451 to=*@flaky.test; data-end reply=452 to=*@full.test", classroom=True
    )
    lines = classroom_lines(
        server,
        [
            b"HELO student.example",
            b"MAIL FROM: <a@sender.example>",
            b"RCPT TO: <x@flaky.test>",
            b"RCPT TO: <y@full.test>",
            b"DATA",
            b"Subject: hi\n\nhello\n.",
            b"QUIT",
        ],
    )
    assert lines[3] == b"500 maillab chaos: rule 1\n"
    assert lines[6] == b"500 maillab chaos: rule 2\n"
    assert lines[7].startswith(b"221 ")
    assert count(server, "full.test") == 0


def test_the_classroom_port_connect_and_helo_faults(start_server: StartServer) -> None:
    server = with_rules(start_server, "connect reply=554 times=2; helo reply=421", classroom=True)
    assert greeting(server.config.classroom_port) == (b"500 maillab chaos: rule 1\n", b"")
    assert classroom_lines(server, [b"HELO student.example", b"NOOP"]) == [
        b"220 maillab.test maillab classroom SMTP ready\n",
        b"500 maillab chaos: rule 2\n",
        b"",
    ]


def test_the_classroom_port_after_store_disconnect_stores_once(start_server: StartServer) -> None:
    server = with_rules(start_server, "data-end after-store-disconnect", classroom=True)
    commands = [b"HELO student.example", b"MAIL FROM: <a@sender.example>", b"RCPT TO: <b@one.test>", b"DATA"]
    lines = classroom_lines(server, [*commands, b"Subject: hi\n\nhello\n.", b"NOOP"])
    assert [line[:3] for line in lines] == [b"220", b"250", b"250", b"250", b"354", b""]
    assert count(server, "one.test") == 1


def test_the_classroom_port_stores_nothing_for_a_client_gone_during_a_delay(start_server: StartServer) -> None:
    """A course client that times out and sends again would get the message stored twice: no ONCE here."""
    server = with_rules(start_server, "data-end delay=1500", classroom=True)
    with socket.create_connection(("127.0.0.1", server.config.classroom_port), timeout=5) as connection:
        replies = connection.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        for command in (b"HELO student.example", b"MAIL FROM: <a@sender.example>", b"RCPT TO: <b@one.test>"):
            connection.sendall(command + b"\n")
            assert replies.readline().startswith(b"250 ")
        connection.sendall(b"DATA\n")
        assert replies.readline().startswith(b"354 ")
        connection.sendall(b"Subject: hi\n\nhello\n.\n")
        time.sleep(0.2)
        replies.close()
    time.sleep(2.0)
    assert count(server, "one.test") == 0
    assert not server.sessions.open


def test_the_classroom_port_delay_answers_late_and_stores(start_server: StartServer) -> None:
    """Past the idle timeout too: the classroom port's runs only while it waits for the client."""
    server = with_rules(start_server, "data-end delay=1500", classroom=True, idle_timeout=1.0)
    commands = [b"HELO student.example", b"MAIL FROM: <a@sender.example>", b"RCPT TO: <b@one.test>", b"DATA"]
    lines = classroom_lines(server, [*commands, b"Subject: hi\n\nhello\n.", b"QUIT"])
    assert [line[:3] for line in lines] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    assert count(server, "one.test") == 1


# --- determinism and order ------------------------------------------------------------------------


def rcpt_codes(port: int, commands: int) -> list[int]:
    """The replies to `commands` RCPTs in one transaction."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail(SENDER)
        return [client.rcpt(f"r{n}@one.test")[0] for n in range(commands)]


def test_with_seeds_the_same_commands_get_the_same_faults(start_server: StartServer) -> None:
    rules = "rcpt reply=451 p=0.5 seed=7 to=r1*; rcpt reply=452 p=0.3 seed=9"
    first = rcpt_codes(with_rules(start_server, rules).port, 40)
    second = rcpt_codes(with_rules(start_server, rules).port, 40)
    other = rcpt_codes(with_rules(start_server, rules.replace("seed=9", "seed=10")).port, 40)
    assert first == second
    assert {250, 451, 452} <= set(first)
    assert other != first


def test_the_first_rule_that_fires_acts_and_later_rules_are_not_asked(start_server: StartServer) -> None:
    server = with_rules(start_server, "rcpt reply=451 every=2; rcpt reply=452 times=1; rcpt reply=453 p=0 seed=1")
    assert rcpt_codes(server.port, 4) == [452, 451, 250, 451]
    counts = [(rule.matched, rule.fired) for rule in chaos_of(server).state().rules]
    assert counts == [(4, 2), (2, 1), (1, 0)]


# --- rules changed while the server runs ----------------------------------------------------------

WatchRules = Callable[..., ChaosKeeper]


@pytest.fixture
def watch_rules(tmp_path: Path) -> Iterator[WatchRules]:
    """Watch a chaos folder for a running in-process server, as `serve` does (ChaosKeeper on its loop)."""
    running: list[tuple[ServerController, asyncio.Task[None]]] = []

    def watch(server: ServerController, directory: Path | None = None) -> ChaosKeeper:
        directory = directory or tmp_path / "chaos"
        directory.mkdir(exist_ok=True)
        keeper = ChaosKeeper(chaos_of(server), directory, server.config.chaos)

        async def start() -> asyncio.Task[None]:
            keeper.load()
            return asyncio.create_task(keeper.run())

        running.append((server, asyncio.run_coroutine_threadsafe(start(), server.loop).result(10)))
        return keeper

    yield watch
    for server, task in running:
        server.loop.call_soon_threadsafe(task.cancel)


def test_a_change_to_rules_json_applies_within_a_second(
    start_server: StartServer, watch_rules: WatchRules, tmp_path: Path
) -> None:
    server = start_server()
    directory = watch_rules(server).directory
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt("b@one.test")[0] == 250
        written = write_rules(directory, "rcpt reply=451 to=*@one.test", "test")
        changed = time.monotonic()
        while client.rcpt("b@one.test")[0] != 451:
            assert time.monotonic() - changed < 1.0, "not applied within a second"
            time.sleep(0.02)
    state = wait_applied(directory, written.generation, 2.0)
    assert state is not None and state.source == FROM_FILE and not state.problem
    assert [rule.rule for rule in state.rules] == ["rcpt reply=451 to=*@one.test"]
    wait_until(lambda: (read_state(directory) or state).rules[0].fired >= 1, "state.json to report the counts")


def test_a_rules_file_that_does_not_parse_is_refused_and_the_rules_applied_stay(
    start_server: StartServer, watch_rules: WatchRules
) -> None:
    server = start_server()
    directory = watch_rules(server).directory
    applied = write_rules(directory, "rcpt reply=451", "test")
    assert wait_applied(directory, applied.generation, 2.0) is not None
    broken = json.loads((directory / RULES_FILE).read_text())
    broken.update(text="rcpt reply=451; rcpt bogus", generation="hand-edited")
    (directory / RULES_FILE).write_text(json.dumps(broken))
    state = wait_applied(directory, "hand-edited", 2.0)
    assert state is not None and "rule 2, at character 22" in state.problem
    assert rcpt_codes(server.port, 1) == [451], "the rules applied before stay"
    cleared = write_rules(directory, "", "test")
    state = wait_applied(directory, cleared.generation, 2.0)
    assert state is not None and state.rules == () and not state.problem
    assert rcpt_codes(server.port, 1) == [250]


def test_rules_json_wins_over_maillab_chaos_and_its_removal_gives_it_back(
    start_server: StartServer, watch_rules: WatchRules, tmp_path: Path
) -> None:
    directory = tmp_path / "chaos"
    directory.mkdir()
    written = write_rules(directory, "rcpt reply=452", "test")
    server = with_rules(start_server, "rcpt reply=451")
    watch_rules(server, directory)
    state = wait_applied(directory, written.generation, 2.0)
    assert state is not None and state.source == FROM_FILE
    assert rcpt_codes(server.port, 1) == [452]
    (directory / RULES_FILE).unlink()
    wait_until(lambda: (read_state(directory) or state).source == FROM_ENVIRONMENT, "MAILLAB_CHAOS to apply again")
    assert rcpt_codes(server.port, 1) == [451]


# --- the command line -----------------------------------------------------------------------------


def test_a_folder_that_cannot_be_written_says_which_rules_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """rules.json still read (a read-only volume): the warning names it, not MAILLAB_CHAOS."""
    write_rules(tmp_path, "rcpt reply=452", "cli")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and access(path, mode))
    chaos = Chaos(parse_rules("rcpt reply=451"))
    keeper = ChaosKeeper(chaos, tmp_path, parse_rules("rcpt reply=451"))
    keeper.load()
    assert [str(rule) for rule in chaos.rules] == ["rcpt reply=452"]

    async def report() -> None:
        watching = asyncio.create_task(keeper.run())
        await asyncio.sleep(0.1)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching

    with caplog.at_level(logging.INFO, logger="maillab_server.chaos_live"):
        asyncio.run(report())
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.endswith(f"; {RULES_FILE} applies"), warning


def test_a_save_waits_for_the_write_its_cancelled_caller_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher cancelled during a write of state.json (shutdown): the last save lands last."""
    first_begun, release = threading.Event(), threading.Event()
    written: list[int] = []

    def write_state(directory: Path, state: ChaosState) -> None:
        if not first_begun.is_set():
            first_begun.set()
            release.wait(5)
        written.append(len(state.rules))

    monkeypatch.setattr(chaos_live, "write_state", write_state)

    async def shutdown() -> None:
        chaos = Chaos()
        keeper = ChaosKeeper(chaos, tmp_path, ())
        watching = asyncio.create_task(keeper.save())
        await asyncio.to_thread(first_begun.wait, 5)
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        chaos.apply(parse_rules("rcpt reply=451"), source=FROM_FILE)
        last = asyncio.create_task(keeper.save())
        await asyncio.sleep(0.1)
        assert written == [], "the last save waits for the write under way"
        release.set()
        await last

    asyncio.run(shutdown())
    assert written == [0, 1]


def chaos_cli(directory: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return run_cli("maillab_server", "chaos", *arguments, env={**os.environ, "MAILLAB_CHAOS_DIR": str(directory)})


def test_chaos_set_refuses_a_bad_rule_with_its_position(tmp_path: Path) -> None:
    result = chaos_cli(tmp_path, "set", "rcpt reply=451; data-end reply=4x\x1b")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: rule 2, at character 32: reply= takes a 4xx or 5xx code (a fault), not '4x\\x1b'",
        "  rcpt reply=451; data-end reply=4x\\x1b",
        "                                 ^",
    ]
    assert not (tmp_path / RULES_FILE).exists(), "nothing was written"


def test_chaos_set_without_a_server_says_it_was_not_applied(tmp_path: Path) -> None:
    result = chaos_cli(tmp_path, "set", "rcpt reply=451")
    assert result.returncode == 1
    assert "the server has not applied it" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_chaos_set_show_and_clear_against_a_running_server(
    start_server: StartServer, watch_rules: WatchRules, tmp_path: Path
) -> None:
    server = start_server()
    directory = watch_rules(server).directory
    result = chaos_cli(directory, "set", "rcpt", "reply=451", "to=*@flaky.test", "times=2;", "data", "delay=10")
    assert result.returncode == 0, result.stderr
    assert "  1. rcpt reply=451 to=*@flaky.test times=2    fired 0 of 0 matched" in result.stdout
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert client.sendmail(SENDER, ["x@flaky.test", "y@steady.test"], MESSAGE) == {
            "x@flaky.test": (451, b"4.0.0 maillab chaos: rule 1")
        }
    wait_until(lambda: "fired 1 of 1 matched" in chaos_cli(directory, "show").stdout, "show to report the count")
    shown = json.loads(chaos_cli(directory, "show", "--json").stdout)
    assert [(rule["rule"], rule["fired"]) for rule in shown["rules"]] == [
        ("rcpt reply=451 to=*@flaky.test times=2", 1),
        ("data delay=10", 1),
    ]
    cleared = chaos_cli(directory, "clear")
    assert cleared.returncode == 0 and "no rules" in cleared.stdout
    assert rcpt_codes(server.port, 1) == [250]


def test_chaos_show_without_a_report_is_one_line(tmp_path: Path) -> None:
    result = chaos_cli(tmp_path / "missing", "show")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "is it running" in result.stderr


# --- the server process: MAILLAB_CHAOS at start, the JSON log event -------------------------------


def test_a_bad_maillab_chaos_stops_the_server_with_one_line() -> None:
    result = run_cli(
        "maillab_server", "serve", env={**os.environ, "MAILLAB_CHAOS": "rcpt reply=451; mail reply=550 to=*@x"}
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: MAILLAB_CHAOS: rule 2, at character 32: to= cannot match at mail: there a rule can match from=\n"
    )


class ServerProcess:
    """`maillab-server serve` with JSON logs on a free port; its log lines are read as they come."""

    def __init__(self, tmp_path: Path, *arguments: str) -> None:
        self.port = free_port()
        self.forward = forward = tmp_path / "forward"
        forward.mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "maillab_server", "serve", "--log-format", "json", "--classroom-port", "0"),
                *("--port", str(self.port), "--listen-host", "127.0.0.1", "--forward-dir", str(forward), *arguments),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.entries: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until(lambda: any("listening on" in str(entry["message"]) for entry in self.entries), "the server")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.entries.append(json.loads(line))  # every line is one JSON entry

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def test_the_server_process_applies_changes_and_logs_each_fault_as_a_json_event(tmp_path: Path) -> None:
    directory = tmp_path / "chaos"
    directory.mkdir()
    server = ServerProcess(tmp_path, "--chaos", "mail reply=451 from=*@x.test", "--chaos-dir", str(directory))
    try:
        wait_until(lambda: read_state(directory) is not None, "state.json at start")
        assert (read_state(directory) or pytest.fail()).source == FROM_ENVIRONMENT
        result = chaos_cli(directory, "set", "rcpt reply=451 to=*@flaky.test")
        assert result.returncode == 0, result.stderr
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo()
            client.mail("me@sender.test", ["SMTPUTF8"])
            assert client.rcpt("\u00e9@flaky.test")[0] == 451
    finally:
        assert server.stop() == 0
    [event] = [entry["event"] for entry in server.entries if "event" in entry]
    assert event == {
        "type": "chaos",
        "rule": 1,
        "stage": "rcpt",
        "action": "reply=451",
        "peer": event["peer"],
        "from": "me@sender.test",
        "to": ["\u00e9@flaky.test"],
    }
    assert str(event["peer"]).startswith("127.0.0.1:")
    state = read_state(directory)
    assert state is not None and state.rules[0].fired == 1, "the last counts, written at shutdown"


def test_a_missing_chaos_folder_is_one_warning_and_maillab_chaos_still_applies(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--chaos", "rcpt reply=451", "--chaos-dir", str(tmp_path / "missing"))
    try:
        assert rcpt_codes(server.port, 1) == [451]
        time.sleep(0.8)  # counts changed: a write of state.json was due, and failed quietly
    finally:
        assert server.stop() == 0
    warnings = [entry for entry in server.entries if entry["level"] == "warning"]
    assert len(warnings) == 1 and "missing or not writable" in str(warnings[0]["message"]), warnings


def test_rules_set_before_a_restart_apply_from_the_start_over_maillab_chaos(tmp_path: Path) -> None:
    directory = tmp_path / "chaos"
    directory.mkdir()
    written = write_rules(directory, "rcpt reply=452", "cli")
    server = ServerProcess(tmp_path, "--chaos", "rcpt reply=451", "--chaos-dir", str(directory))
    try:
        assert str(server.entries[0]["message"]).startswith("listening on"), "the first line, as ever"
        assert rcpt_codes(server.port, 1) == [452]
    finally:
        assert server.stop() == 0
    state = read_state(directory)
    assert state is not None and (state.generation, state.source) == (written.generation, FROM_FILE)
    assert any("1 rule from rules.json: rcpt reply=452" in str(entry["message"]) for entry in server.entries)


# --- the health check: its own unix socket, out of the rules' reach --------------------------------


def healthcheck(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    """`maillab-server healthcheck` as the container runs it, with the server's port and forward folder."""
    environment = {**os.environ, "MAILLAB_SMTP_PORT": str(server.port), "MAILLAB_FORWARD_DIR": str(server.forward)}
    return run_cli("maillab_server", "healthcheck", env=environment)


@pytest.mark.parametrize("rules", ["connect reply=421", "connect reply=421 times=1"])
def test_the_health_check_meets_no_connect_rule_and_leaves_it_to_the_clients(tmp_path: Path, rules: str) -> None:
    # A rule that refuses every connection once made the container unhealthy; one with times=1
    # was spent on the health check before the user's client came.
    directory = tmp_path / "chaos"
    directory.mkdir()
    server = ServerProcess(tmp_path, "--chaos", rules, "--chaos-dir", str(directory))
    try:
        for _ in range(2):
            result = healthcheck(server)
            assert (result.returncode, result.stderr) == (0, "")
        assert greeting(server.port) == (b"421 4.0.0 maillab chaos: rule 1\r\n", b""), "the client gets the fault"
    finally:
        assert server.stop() == 0
    state = read_state(directory)
    assert state is not None and state.rules[0].matched == 1 and state.rules[0].fired == 1, state
    [event] = [entry["event"] for entry in server.entries if "event" in entry]
    assert str(event["peer"]).startswith("127.0.0.1:"), "the one fault is the TCP client's"
