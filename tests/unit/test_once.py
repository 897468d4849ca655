"""XMAILLAB-ONCE: a retry after a lost reply stores the message once, and only then."""

from __future__ import annotations

import os
import smtplib
from collections import Counter
from dataclasses import replace
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from maillab_agent.batch import send_batch
from maillab_agent.message import batch_messages
from maillab_common.esmtp import ONCE
from maillab_common.forward import Record, parse_records, render_record
from maillab_server.config import ServerConfig
from maillab_server.errors import StorageError
from maillab_server.handler import ForwardHandler
from maillab_server.store import ForwardStore
from tests.helpers import BASE
from tests.store_helpers import deliver
from tests.unit.conftest import StartServer, counting_fsyncs

ONE = "one.test"
MESSAGE = b"From: a@sender.test\r\nSubject: once\r\nMessage-ID: <once@sender.test>\r\n\r\nBody.\r\n"


def records(forward: Path, domain: str) -> list[Record]:
    path = forward / domain
    if not path.exists():
        return []
    items, leftover = parse_records(path.read_bytes())
    assert leftover == b""
    return [item for item in items if isinstance(item, Record)]


def test_once_stores_only_where_the_same_delivery_is_missing(start_server: StartServer) -> None:
    server = start_server()
    forward = server.config.forward_dir
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:
        assert ONCE.lower() in client.ehlo()[1].decode().lower()
        # As a crash between two domains' fsyncs leaves it: one domain has the message, one has not.
        client.sendmail("a@sender.test", ["x@one.test"], MESSAGE)
        client.ehlo()
        client.mail("a@sender.test", [ONCE])
        client.rcpt("x@one.test")
        client.rcpt("y@two.test")
        assert client.data(MESSAGE)[0] == 250
        assert (len(records(forward, ONE)), len(records(forward, "two.test"))) == (1, 1)

        client.mail("a@sender.test", [ONCE])
        client.rcpt("x@one.test")
        client.rcpt("y@two.test")
        code, reply = client.data(MESSAGE)
        assert (code, reply) == (250, b"2.0.0 OK: already stored by an earlier attempt")
        assert (len(records(forward, ONE)), len(records(forward, "two.test"))) == (1, 1)

        # Not the same delivery: other bytes, another sender, other recipients of the domain.
        client.sendmail("a@sender.test", ["x@one.test"], MESSAGE + b"more\r\n", mail_options=[ONCE])
        client.sendmail("b@sender.test", ["x@one.test"], MESSAGE, mail_options=[ONCE])
        client.sendmail("a@sender.test", ["x@one.test", "z@one.test"], MESSAGE, mail_options=[ONCE])
        # Without the parameter, SMTP's rule stands: a message sent twice is stored twice.
        client.sendmail("a@sender.test", ["x@one.test"], MESSAGE)
    stored = [(r.delivery.mail_from, r.delivery.rcpt_tos, len(r.delivery.message)) for r in records(forward, ONE)]
    plain = len(MESSAGE) - MESSAGE.count(b"\r")
    assert stored == [
        ("a@sender.test", ("x@one.test",), plain),
        ("a@sender.test", ("x@one.test",), plain + 5),
        ("b@sender.test", ("x@one.test",), plain),
        ("a@sender.test", ("x@one.test", "z@one.test"), plain),
        ("a@sender.test", ("x@one.test",), plain),
    ]


def test_once_looks_back_over_the_recent_window_only(tmp_path: Path) -> None:
    delivery = replace(BASE, message=b"Subject: early\n\nearly\n")
    filler = render_record(replace(BASE, message=b"Subject: filler\n\n" + b"f" * 5000 + b"\n"))
    record = render_record(delivery)
    narrow = ForwardStore(tmp_path, recent_window=4096)
    deliver(narrow, {"a.test": record})
    assert narrow.submit({"a.test": [record]}, once={"a.test": delivery}).result(10) == ("a.test",)
    deliver(narrow, {"a.test": filler})  # now more than the window lies after it
    assert narrow.submit({"a.test": [record]}, once={"a.test": delivery}).result(10) == ()
    wide = ForwardStore(tmp_path)
    assert wide.submit({"a.test": [record]}, once={"a.test": delivery}).result(10) == ("a.test",)
    subjects = [r.delivery.message.split(b"\n", 1)[0] for r in records(tmp_path, "a.test")]
    assert subjects == [b"Subject: early", b"Subject: filler", b"Subject: early"]


class LosesFirstReply(ForwardHandler):
    """The real handler, but the connection drops after a message is stored the first time,
    before its 250 goes out: what a server killed at that moment does to its client."""

    def __init__(self, store: ForwardStore, config: ServerConfig, offer_once: bool = True) -> None:
        super().__init__(store, config)
        self.offer_once = offer_once
        self.cut: set[bytes] = set()
        self.mail_options: list[list[str]] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        offered = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return offered if self.offer_once else [line for line in offered if ONCE not in line]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.mail_options.append(list(envelope.mail_options))
        status = await super().handle_DATA(server, session, envelope)
        if content not in self.cut:
            self.cut.add(content)
            transport: Any = server.transport
            transport.abort()
        return status


def message_ids(forward: Path) -> Counter[str]:
    return Counter(
        message_from_bytes(record.delivery.message, policy=default)["Message-ID"]
        for path in forward.iterdir()
        for record in records(forward, path.name)
    )


def test_the_agent_retries_a_lost_reply_with_once_and_nothing_is_stored_twice(start_server: StartServer) -> None:
    config = ServerConfig(forward_dir=start_server().config.forward_dir)
    handler = LosesFirstReply(ForwardStore(config.forward_dir), config)
    server = start_server(handler)
    messages = batch_messages(seed=3, count=8, attachments=1, attachment_size=(2000, 2000))
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=2, timeout=10)
    assert report.accepted == 8 and report.retried == 8
    assert message_ids(config.forward_dir) == Counter({message.message_id: 1 for message in messages})
    assert sum(ONCE in options for options in handler.mail_options) == 8, "every retry, and only retries"


def test_without_once_the_same_retry_stores_twice(start_server: StartServer) -> None:
    """The control: where the server does not offer XMAILLAB-ONCE, SMTP's duplicate happens."""
    config = ServerConfig(forward_dir=start_server().config.forward_dir)
    server = start_server(LosesFirstReply(ForwardStore(config.forward_dir), config, offer_once=False))
    messages = batch_messages(seed=3, count=4, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=2, timeout=10)
    assert report.accepted == 4
    assert message_ids(config.forward_dir) == Counter({message.message_id: 2 for message in messages})


class DropsAtSecondMail(ForwardHandler):
    """The real handler, offering no XMAILLAB-ONCE, that hangs up when a connection's second
    MAIL arrives: right after the 250 for the message before it has gone out."""

    def __init__(self, store: ForwardStore, config: ServerConfig) -> None:
        super().__init__(store, config)
        self.mails: dict[int, int] = {}

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        offered = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [line for line in offered if ONCE not in line]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        self.mails[id(session)] = self.mails.get(id(session), 0) + 1
        if self.mails[id(session)] == 2:
            transport: Any = server.transport
            transport.close()
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


def test_a_250_read_just_before_the_connection_drops_counts(start_server: StartServer) -> None:
    """The reply to a message comes, then the connection goes while the next envelope's replies
    are read: the message is accepted, not sent again (which would store it twice)."""
    config = ServerConfig(forward_dir=start_server().config.forward_dir)
    server = start_server(DropsAtSecondMail(ForwardStore(config.forward_dir), config))
    messages = batch_messages(seed=4, count=4, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=1, timeout=10)
    assert report.accepted == 4
    assert report.outcomes[0].attempts == 1, "the first message's 250 came before the hang-up"
    assert message_ids(config.forward_dir) == Counter({message.message_id: 1 for message in messages})


def test_a_lookup_that_fails_fails_only_its_own_delivery(tmp_path: Path) -> None:
    """A FIFO where a forward file should be: the XMAILLAB-ONCE lookup refuses it at once
    (it never blocks the one thread that writes), and the next delivery goes through."""
    os.mkfifo(tmp_path / "fifo.test")
    store = ForwardStore(tmp_path)
    delivery = replace(BASE, message=b"Subject: once\n\nx\n")
    failed = store.submit({"fifo.test": [render_record(delivery)]}, once={"fifo.test": delivery})
    later = store.submit({"b.test": [render_record(delivery)]})
    assert later.result(10) == ()
    with pytest.raises(StorageError, match="not a regular file"):
        failed.result(10)


def test_a_record_right_at_the_edge_of_the_window_is_found(tmp_path: Path) -> None:
    delivery = replace(BASE, message=b"Subject: edge\n\nedge\n")
    record = render_record(delivery)
    filler = render_record(replace(BASE, message=b"Subject: filler\n\n" + b"f" * 5000 + b"\n"))
    (tmp_path / "a.test").write_bytes(filler + record)
    exact = ForwardStore(tmp_path, recent_window=len(record))
    assert exact.submit({"a.test": [record]}, once={"a.test": delivery}).result(10) == ("a.test",)
    short = ForwardStore(tmp_path, recent_window=len(record) - 1)
    assert short.submit({"a.test": [record]}, once={"a.test": delivery}).result(10) == ()


def test_a_group_with_once_deliveries_commits_with_one_fsync_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An XMAILLAB-ONCE retry does not make the deliveries waiting with it go one at a time."""
    for domain in ("victim.test", "hostile.test"):
        (tmp_path / domain).touch()  # no file created: no fsync of the folder
    store = ForwardStore(tmp_path)
    victims = [replace(BASE, message=b"Subject: victim %d\n\nv\n" % number) for number in range(2)]
    retries = [replace(BASE, mail_from="h@attack.test", message=body) for body in (b"n\n", b"nn\n")]
    synced = counting_fsyncs(monkeypatch)
    with store._wake:  # the committer takes them when all are waiting: one group
        futures = [
            store.submit({"victim.test": [render_record(victims[0])]}),
            store.submit({"hostile.test": [render_record(retries[0])]}, once={"hostile.test": retries[0]}),
            store.submit({"victim.test": [render_record(victims[1])]}),
            store.submit({"hostile.test": [render_record(retries[1])]}, once={"hostile.test": retries[1]}),
        ]
    assert [future.result(10) for future in futures] == [(), (), (), ()]
    assert synced == Counter({"victim.test": 1, "hostile.test": 1})
    assert len(records(tmp_path, "victim.test")) == len(records(tmp_path, "hostile.test")) == 2


def test_a_retry_in_the_same_group_as_its_first_attempt_finds_it(tmp_path: Path) -> None:
    """Two attempts of one message in one group: the second sees the first stored, as one at a time."""
    store = ForwardStore(tmp_path)
    delivery = replace(BASE, message=b"Subject: twice\n\nx\n")
    other = replace(BASE, message=b"Subject: twice\n\ny\n")  # the same envelope and length, other bytes
    record = render_record(delivery)
    with store._wake:
        futures = [
            store.submit({"a.test": [record]}),
            store.submit({"a.test": [render_record(other)]}, once={"a.test": other}),
            store.submit({"a.test": [record]}, once={"a.test": delivery}),
            store.submit({"a.test": [record]}, once={"a.test": delivery}),
        ]
    assert [future.result(10) for future in futures] == [(), (), ("a.test",), ("a.test",)]
    assert [r.delivery.message for r in records(tmp_path, "a.test")] == [delivery.message, other.message]


def test_a_copy_another_process_wrote_is_fsynced_before_it_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a server killed between its write and its fsync leaves it: on disk for this process,
    # perhaps not for the disk. The retry's 250 must mean "on disk" all the same.
    delivery = replace(BASE, message=b"Subject: written\n\nbefore the crash\n")
    (tmp_path / "a.test").write_bytes(render_record(delivery))
    synced = counting_fsyncs(monkeypatch)
    store = ForwardStore(tmp_path)
    assert store.submit({"a.test": [render_record(delivery)]}, once={"a.test": delivery}).result(10) == ("a.test",)
    assert synced == Counter({"a.test": 1, tmp_path.name: 1})


def test_copies_this_store_has_fsynced_are_found_without_another_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ForwardStore(tmp_path)
    delivery = replace(BASE, message=b"Subject: stored\n\nonce\n")
    assert store.submit({"a.test": [render_record(delivery)]}, once={"a.test": delivery}).result(10) == ()
    synced = counting_fsyncs(monkeypatch)
    for _ in range(20):  # a flood of retries of a message stored and synced here
        assert store.submit({"a.test": [render_record(delivery)]}, once={"a.test": delivery}).result(10) == ("a.test",)
    assert synced == Counter(), "the file was fsynced whole already"
    with open(tmp_path / "a.test", "ab") as file:  # bytes this process did not sync
        file.write(render_record(replace(BASE, message=b"Subject: other\n\nx\n")))
    assert store.submit({"a.test": [render_record(delivery)]}, once={"a.test": delivery}).result(10) == ("a.test",)
    assert synced == Counter({"a.test": 1, tmp_path.name: 1})
    assert len(records(tmp_path, "a.test")) == 2
