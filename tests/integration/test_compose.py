"""Smoke test of the real compose.yaml: `up`, `run --rm agent`, the inspector's log, `down`."""

from __future__ import annotations

import json
import os
import urllib.request

import docker
import pytest
from testcontainers.compose import DockerCompose

from tests.integration.conftest import follow_logs, run_command

pytestmark = pytest.mark.integration


def test_compose_lab_receives_a_batch_from_the_agent(compose: DockerCompose) -> None:
    server = compose.get_container("server")
    published = server.get_publisher(by_port=2525)
    assert published.URL in ("127.0.0.1", "localhost"), "SMTP must be published on loopback only"
    assert published.PublishedPort == int(os.environ["MAILLAB_SMTP_PORT"])

    result = run_command(
        "docker", "compose", "run", "--rm", "agent", "batch", "--count", "5", "--attachments", "1", "--seed", "9"
    )
    assert result.returncode == 0, result.stdout + result.stderr

    client = docker.from_env()
    try:
        inspector = client.containers.get(compose.get_container("inspector").ID)
        follow_logs(
            inspector,
            lambda lines: all(f"<batch-9-{n}@maillab-agent.test>" in "\n".join(lines) for n in range(1, 6)),
            30,
            "the inspector to print the batch",
        )
    finally:
        client.close()

    web = compose.get_container("inspector").get_publisher(by_port=8025)
    assert web.URL in ("127.0.0.1", "localhost"), "the web view must be published on loopback only"
    assert web.PublishedPort == int(os.environ["MAILLAB_HTTP_PORT"])
    wait = "/api/v1/wait?query=message-id:batch-9-5@maillab-agent.test&timeout=30"
    with urllib.request.urlopen(f"http://127.0.0.1:{web.PublishedPort}{wait}", timeout=40) as response:
        found = json.load(response)["messages"]
    assert {message["message_id"] for message in found} == {"batch-9-5@maillab-agent.test"}, found
