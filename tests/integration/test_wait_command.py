"""`inspector wait` in the real compose.yaml: a one-shot `docker compose run --rm inspector wait` asks the running
inspector over the lab's network (MAILLAB_API_URL, and the name `serve` answers to), and the host's CLI asks the
published port."""

from __future__ import annotations

import os
import re
import sys

import pytest
from testcontainers.compose import DockerCompose

from tests.integration.conftest import run_command

pytestmark = pytest.mark.integration

LINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  one\.test  from <app@shop\.test>  to <alice@one\.test>  reset code 123456"


def test_wait_in_compose_and_on_the_host(compose: DockerCompose) -> None:
    sent = run_command(
        *("docker", "compose", "run", "--rm", "agent", "send", "--from", "app@shop.test"),
        *("--to", "alice@one.test", "--subject", "reset code 123456", "--body", "your code"),
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    found = run_command("docker", "compose", "run", "--rm", "inspector", "wait", "to:alice@one.test subject:reset")
    assert found.returncode == 0, found.stdout + found.stderr
    assert re.search(rf"^{LINE}$", found.stdout, re.MULTILINE), found.stdout + found.stderr

    missing = run_command(
        *("docker", "compose", "run", "--rm", "inspector", "wait", "to:alice@one.test", "--count", "2"),
        *("--timeout", "1"),
    )
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "wait: timed out after 1s waiting for 2 messages matching 'to:alice@one.test': 1 of 2 arrived" in (
        missing.stderr
    )
    assert re.search(rf"^{LINE}$", missing.stdout, re.MULTILINE), missing.stdout + missing.stderr

    malformed = run_command("docker", "compose", "run", "--rm", "inspector", "wait", "subjet:x")
    assert malformed.returncode == 2, malformed.stdout + malformed.stderr
    assert "error: query: at character 1: unknown field 'subjet'" in malformed.stderr, malformed.stderr

    # The host's own CLI, on the port compose publishes on loopback.
    api = f"http://127.0.0.1:{os.environ['MAILLAB_HTTP_PORT']}"
    host = run_command(sys.executable, "-m", "maillab_inspector", "wait", "subject:reset", "--api-url", api)
    assert host.returncode == 0, host.stdout + host.stderr
    assert re.fullmatch(rf"{LINE}\n", host.stdout), host.stdout
