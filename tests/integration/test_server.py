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

from maillab_common.forward import Record, parse_records
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
    stop = threading.Event()

    def send(worker: int) -> None:
        number = 0
        while not stop.is_set():
            message_id = f"<k{worker}-{number}@kill.test>"
            body = f"Message-ID: {message_id}\r\nSubject: k\r\n\r\n".encode() + (b"z" * 98 + b"\r\n") * 20
            for attempt in range(1, 200):
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                        smtp.sendmail("a@kill.test", [f"b{worker % 3}@d{worker % 3}.test"], body)
                    acknowledged[message_id] = attempt
                    break
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.1)  # the server is down: the retry a real client makes
            number += 1

    workers = [threading.Thread(target=send, args=(worker,)) for worker in range(6)]
    try:
        for worker in workers:
            worker.start()
        for _ in range(3):
            time.sleep(2)
            server.get_wrapped_container().kill(signal="SIGKILL")
            server.get_wrapped_container().start()
            HealthcheckWaitStrategy().wait_until_ready(server)
        time.sleep(1)
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
    assert len(acknowledged) > 100, "the stream ran"
    missing = [message_id for message_id in acknowledged if message_id not in counts]
    assert missing == [], "a message acknowledged with 250 is on disk"
    first_try_twice = [m for m, attempt in acknowledged.items() if attempt == 1 and counts[m] != 1]
    assert first_try_twice == [], "a message sent once is stored once"
    # A message whose first attempt was cut by the kill after it was stored but before its
    # 250 arrived is stored again by the retry: SMTP cannot tell the two apart.
    retried_twice = [m for m, attempt in acknowledged.items() if attempt > 1 and counts[m] > 1]
    print(
        f"acknowledged {len(acknowledged)}, retried {sum(a > 1 for a in acknowledged.values())}, "
        f"stored twice after a retry {len(retried_twice)}"
    )


def read_forward(server: DockerContainer) -> dict[str, bytes]:
    listing = server.exec(["ls", "/forward"])
    assert listing.exit_code == 0, listing.output
    files = {}
    for name in listing.output.decode().split():
        content = server.exec(["cat", f"/forward/{name}"])
        assert content.exit_code == 0, content.output
        files[name] = content.output
    return files


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
