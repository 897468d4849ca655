"""The server container under failures: a full disk."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from maillab_common.forward import Record, parse_records

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
    listing = server.exec(["ls", "/forward"])
    assert listing.exit_code == 0, listing.output
    found = {}
    for name in listing.output.decode().split():
        content = server.exec(["cat", f"/forward/{name}"])
        assert content.exit_code == 0, content.output
        items, leftover = parse_records(content.output)
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
