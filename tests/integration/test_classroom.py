"""The classroom listener in the real server container, as a student's course client meets it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from maillab_common.forward import Record, parse_records
from tests.course_client import CourseClient, course_message
from tests.integration.conftest import read_forward

pytestmark = pytest.mark.integration


@pytest.fixture
def server(images: dict[str, str]) -> Iterator[DockerContainer]:
    """The server container as compose runs it, with both ports published on loopback."""
    server = (
        DockerContainer(images["server"])
        .with_exposed_ports(2525, 2526)
        .with_env("MAILLAB_CLASSROOM_PUBLISHED_PORT", "2526")
        .waiting_for(HealthcheckWaitStrategy())  # the health check tries both ports
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_course_clients_message_with_an_attachment_lands_byte_identical(server: DockerContainer) -> None:
    attached = bytes(range(256)) * 40 + b"the end"  # base64: lines of 76 characters and a final partial one
    message = course_message(attached, "report.pdf", sender="alice@student.test")
    host, port = server.get_container_host_ip(), int(server.get_exposed_port(2526))
    with CourseClient(host, port, timeout=30) as client:
        reply = client.send("student.lab", "alice@student.test", ["bob@one.test", "carol@two.test"], message)
        assert reply.startswith(b"250 OK: stored as ")
        client.quit()
    files = read_forward(server)
    assert set(files) == {"one.test", "two.test"}
    for domain, content in files.items():
        items, leftover = parse_records(content)
        assert leftover == b""
        [record] = items
        assert isinstance(record, Record)
        assert record.delivery.message == message, domain
        assert record.delivery.mail_from == "alice@student.test"
        assert record.delivery.helo == "student.lab"
    logs, _ = server.get_logs()
    assert b"listening on 0.0.0.0:2526 (classroom dialect)" in logs


def test_the_classroom_listener_is_off_when_compose_is_told_0(images: dict[str, str]) -> None:
    server = (
        DockerContainer(images["server"])
        .with_env("MAILLAB_CLASSROOM_PUBLISHED_PORT", "0")
        .waiting_for(HealthcheckWaitStrategy())
    )
    server.start()
    try:
        probe = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 2526), timeout=5)\nexcept OSError:\n"
        probe += "    print('refused')\n"
        result = server.exec(["python3", "-c", probe])
        assert result.exit_code == 0 and result.output.strip() == b"refused", result.output
        logs, _ = server.get_logs()
        assert b"classroom" not in logs
    finally:
        server.stop()
