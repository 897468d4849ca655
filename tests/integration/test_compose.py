"""Smoke test of the real compose.yaml: `up`, `run --rm agent`, the inspector's log, `down`."""

from __future__ import annotations

import os
import subprocess

import pytest
from testcontainers.compose import DockerCompose

from tests.integration.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration


def test_compose_lab_receives_a_batch_from_the_agent(compose: DockerCompose) -> None:
    server = compose.get_container("server")
    published = server.get_publisher(by_port=2525)
    assert published.URL in ("127.0.0.1", "localhost"), "SMTP must be published on loopback only"
    assert published.PublishedPort == int(os.environ["MAILLAB_SMTP_PORT"])

    result = subprocess.run(
        ["docker", "compose", "run", "--rm", "agent", "batch", "--count", "5", "--attachments", "1", "--seed", "9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def inspector_lines() -> str:
        stdout, _ = compose.get_logs("inspector")
        return stdout

    wait_until(
        lambda: all(f"<batch-9-{n}@maillab-agent.test>" in inspector_lines() for n in range(1, 6)),
        30,
        "the inspector to print the batch",
    )
