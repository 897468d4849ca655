"""The server container under failures: a full disk, kill -9 under load."""

from __future__ import annotations

import smtplib
import threading
import time
import uuid
from collections.abc import Iterator

import docker
import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from maillab_common.esmtp import ONCE
from maillab_common.forward import Record, parse_records
from tests.integration.conftest import read_forward
from tests.unit.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk_server(images: dict[str, str]) -> Iterator[DockerContainer]:
    """The server with /forward on a 400 KiB tmpfs, published on a loopback port."""
    server = (
        DockerContainer(images["server"])
        .with_exposed_ports(2525)
        .with_tmpfs_mount("/forward", "size=400k,uid=10001,gid=10001,mode=0755")  # docker's tmpfs options
        .waiting_for(HealthcheckWaitStrategy())
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stored_records(server: DockerContainer) -> dict[str, list[str]]:
    """Subject lines per domain file; asserts every file is whole: records only, no torn tail.

    Read with exec: `docker cp` does not see into a tmpfs mount.
    """
    found = {}
    for name, content in read_forward(server).items():
        items, leftover = parse_records(content)
        assert leftover == b"" and all(isinstance(item, Record) for item in items), name
        found[name] = [item.delivery.message.split(b"\n", 1)[0].decode() for item in items if isinstance(item, Record)]
    return found


def test_a_full_disk_gets_452_leaves_nothing_half_written_and_recovers(small_disk_server: DockerContainer) -> None:
    host, port = small_disk_server.get_container_host_ip(), int(small_disk_server.get_exposed_port(2525))
    accepted, refusal = [], None
    with smtplib.SMTP(host, port, timeout=30) as client:
        for number in range(200):  # 400 KiB fills after about 13 messages to two domains
            body = f"Subject: m{number}\r\n\r\n".encode() + (b"y" * 76 + b"\r\n") * 200
            try:
                client.sendmail("a@sender.test", ["b@one.test", "c@two.test"], body)
            except smtplib.SMTPDataError as exc:
                error = exc.smtp_error
                refusal = (exc.smtp_code, error.decode() if isinstance(error, bytes) else error)
                break
            accepted.append(f"Subject: m{number}")
        assert client.noop()[0] == 250, "the server stays up"
    assert refusal is not None and refusal[0] == 452 and refusal[1].startswith("4.3.1"), refusal
    assert accepted, "some messages fit before the disk filled"
    assert stored_records(small_disk_server) == {"one.test": accepted, "two.test": accepted}

    result = small_disk_server.exec(["rm", "/forward/one.test", "/forward/two.test"])
    assert result.exit_code == 0, result.output
    with smtplib.SMTP(host, port, timeout=30) as client:
        for number in range(5):
            client.sendmail("a@sender.test", ["b@one.test"], f"Subject: after {number}\r\n\r\nok\r\n".encode())
    assert stored_records(small_disk_server) == {"one.test": [f"Subject: after {number}" for number in range(5)]}


def test_kill_9_under_load_loses_no_acknowledged_message(images: dict[str, str]) -> None:
    """Three kill -9s during a stream: every 250 is on disk, once, and no file keeps a torn tail."""
    port = free_port()
    client = docker.from_env()
    volume = client.volumes.create(name=f"maillab-test-kill-{uuid.uuid4().hex[:8]}")
    server = (
        DockerContainer(images["server"])
        .with_bind_ports(2525, port)
        .with_volume_mapping(volume.name, "/forward", "rw")
        .waiting_for(HealthcheckWaitStrategy())
    )
    server.start()
    acknowledged: dict[str, int] = {}  # Message-ID -> the attempt that got 250
    already_stored: list[str] = []  # Message-IDs whose 250 said an earlier attempt had stored them
    progress = threading.Condition()  # notified at each 250
    stop = threading.Event()

    def send(worker: int) -> None:
        number = 0
        while not stop.is_set():
            message_id = f"<k{worker}-{number}@kill.test>"
            body = f"Message-ID: {message_id}\r\nSubject: k\r\n\r\n".encode() + (b"z" * 98 + b"\r\n") * 20
            for attempt in range(1, 200):
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                        # A retry may follow a first attempt that was stored before its 250 was
                        # lost: it says so, as the agent does, and the server stores it only once.
                        reply = deliver(smtp, body, f"b{worker % 3}@d{worker % 3}.test", once=attempt > 1)
                    with progress:
                        acknowledged[message_id] = attempt
                        if b"already stored" in reply:
                            already_stored.append(message_id)
                        progress.notify_all()
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)  # the server is down: the pause a real client makes before it retries
            number += 1

    def acknowledged_past(count: int) -> None:
        """Wait until `count` more messages than now have their 250: the server is taking mail."""
        with progress:
            target = len(acknowledged) + count
            assert progress.wait_for(lambda: len(acknowledged) >= target, timeout=60), "the stream stalled"

    workers = [threading.Thread(target=send, args=(worker,)) for worker in range(6)]
    try:
        for worker in workers:
            worker.start()
        for _ in range(3):
            acknowledged_past(100)  # the kill comes mid-stream, with sessions open
            server.get_wrapped_container().kill(signal="SIGKILL")
            server.get_wrapped_container().start()
            HealthcheckWaitStrategy().wait_until_ready(server)
        acknowledged_past(100)  # and the stream goes on after the last restart
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        counts: dict[str, int] = {}
        for name, content in read_forward(server).items():
            items, leftover = parse_records(content)
            assert leftover == b"", f"{name} ends in a torn record"
            assert all(isinstance(item, Record) for item in items), f"{name} holds damage"
            for item in items:
                assert isinstance(item, Record)
                message_id = item.delivery.message.split(b"\n", 1)[0].removeprefix(b"Message-ID: ").decode()
                counts[message_id] = counts.get(message_id, 0) + 1
    finally:
        stop.set()
        server.stop()
        volume.remove(force=True)
        client.close()
    assert len(acknowledged) > 400, "the stream ran"
    missing = [message_id for message_id in acknowledged if message_id not in counts]
    assert missing == [], "a message acknowledged with 250 is on disk"
    retried = [message_id for message_id, attempt in acknowledged.items() if attempt > 1]
    assert retried, "the kills cut sessions off, so the retry path ran"
    stored_twice = [message_id for message_id in acknowledged if counts[message_id] > 1]
    assert stored_twice == [], "a message is stored once, retried or not"
    unacknowledged = sorted(set(counts) - set(acknowledged))
    assert unacknowledged == [], "nothing is stored that no client sent to the end"
    # A 250 "already stored" only answers a retry, and only one whose copy is on disk.
    assert set(already_stored) <= set(retried)
    print(
        f"acknowledged {len(acknowledged)}, retried {len(retried)}, "
        f"found stored by an earlier attempt {len(already_stored)}"
    )


def deliver(smtp: smtplib.SMTP, body: bytes, rcpt: str, *, once: bool) -> bytes:
    """One transaction, MAIL to the end of DATA; returns the text of the final 250."""
    smtp.ehlo_or_helo_if_needed()
    code, reply = smtp.mail("a@kill.test", [ONCE] if once else [])
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, "a@kill.test")
    code, reply = smtp.rcpt(rcpt)
    if code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({rcpt: (code, reply)})
    code, reply = smtp.data(body)
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return reply


def test_fifty_concurrent_sessions_to_one_domain_never_interleave(small_disk_server: DockerContainer) -> None:
    """50 clients at once, all to one domain file, in the container: every record whole."""
    host, port = small_disk_server.get_container_host_ip(), int(small_disk_server.get_exposed_port(2525))

    def session(number: int) -> None:
        with smtplib.SMTP(host, port, timeout=60) as client:
            body = f"Subject: s{number}\r\n\r\n".encode() + (b"%02d" % number + b"-" * 60 + b"\r\n") * 30
            client.sendmail(f"s{number}@sender.test", ["one@shared.test"], body)

    threads = [threading.Thread(target=session, args=(number,)) for number in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    [content] = read_forward(small_disk_server).values()
    items, leftover = parse_records(content)
    assert leftover == b"" and len(items) == 50
    for item in items:
        assert isinstance(item, Record)
        number = item.delivery.mail_from.removeprefix("s").removesuffix("@sender.test")
        lines = item.delivery.message.split(b"\n\n", 1)[1].splitlines()
        assert lines == [b"%02d" % int(number) + b"-" * 60] * 30, "one message per record, whole"
