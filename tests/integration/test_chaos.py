"""Issue 14, fault injection (docs/chaos.md) against the real containers.

- The drill: a batch of 500 through a server that refuses, drops, loses replies and
  stalls at random, and not one message lost, doubled or damaged.
- Rules changed while the lab runs, by `maillab-server chaos` in the server's container
  and by PUT /api/v1/chaos on the inspector: the next SMTP command sees them, and they
  outlive a restart until cleared.
- A rule that does not parse stops the server at start.
"""

from __future__ import annotations

import json
import smtplib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from maillab_common import manifest
from maillab_common.forward import Record, parse_records
from tests.integration.conftest import Lab, retry_until, started_lab

pytestmark = pytest.mark.integration

SMTP_PORT = 2525
MANIFEST = "/manifests/latest.json"
BATCH = 500
# The drill, a seed each, with the stage and action its log events name. The
# stages never compete: at each, one rule can fire.
DRILL = (
    ("rcpt reply=451 p=0.2 seed=141", "rcpt", "reply=451"),
    ("data disconnect p=0.05 seed=142", "data", "disconnect"),
    ("data-end after-store-disconnect p=0.05 seed=143", "data-end", "after-store-disconnect"),
    ("mail delay=200 p=0.1 seed=144", "mail", "delay=200"),
)
# Set from the command line: the next two messages to flaky.test fail, and one sender is refused.
FLAKY = "rcpt reply=451 to=*@flaky.test times=2"
BLOCKED = 'mail reply="550:5.7.1 sender blocked" from=*@blocked.test'
# Set over HTTP: one mailbox is full.
FULL = 'rcpt reply="452:4.2.2 mailbox full" to=full@*'
# Rule 2's reply is no fault: at character 45 (counted from 1), its code.
BAD = "rcpt reply=451 p=0.2 seed=1; data-end reply=250"
BAD_AT = "rule 2, at character 45: reply= takes a 4xx or 5xx code (a fault), not '250'"


# -- the drill -------------------------------------------------------------------------


@pytest.fixture
def drill_lab(images: dict[str, str]) -> Iterator[Lab]:
    """A lab whose server starts with the drill's rules (MAILLAB_CHAOS) and logs JSON."""
    rules = "; ".join(rule for rule, _, _ in DRILL)
    yield from started_lab(images, ("serve",), server_env={"MAILLAB_CHAOS": rules, "MAILLAB_LOG_FORMAT": "json"})


def test_a_batch_through_random_faults_is_delivered_once_and_intact(drill_lab: Lab, tmp_path: Path) -> None:
    code, output = drill_lab.run_agent(
        *("batch", "--count", str(BATCH), "--seed", "14", "--concurrency", "4"),
        *("--attachments", "1", "--attachment-size", "1KiB-4KiB", "--manifest", MANIFEST),
        timeout=300,
    )
    assert code == 0, output[-3000:]
    sent = manifest.loads(drill_lab.read_manifest(MANIFEST)).messages
    assert len(sent) == BATCH and all(message.accepted and not message.refused for message in sent), output[-3000:]
    retries = sum(message.attempts - 1 for message in sent)

    code, report = drill_lab.run_inspector("verify", "--json", "--manifest", MANIFEST, "--timeout", "60")
    verified = [json.loads(line) for line in report.splitlines() if line.startswith("{")]
    assert code == 0 and verified, report[-3000:]
    counts = verified[-1]
    assert counts["ok"] and counts["findings"] == [], counts
    assert (counts["expected"], counts["delivered"]) == (BATCH, BATCH), counts
    assert (counts["missing"], counts["duplicated"], counts["corrupted"], counts["damaged"]) == (0, 0, 0, 0), counts

    # The server's log: one chaos event each time a rule fired, with the rule's stage and action;
    # and its count of each rule (state.json, written within a second of a change).
    lines = server_log(drill_lab.server)
    events = [line["event"] for line in lines if isinstance(line.get("event"), dict)]
    chaos = [event for event in events if event.get("type") == "chaos"]
    for event in chaos:
        _, stage, action = DRILL[event["rule"] - 1]
        assert (event["stage"], event["action"]) == (stage, action), event
    logged = Counter(event["rule"] for event in chaos)
    fired = [logged[number] for number in range(1, len(DRILL) + 1)]
    assert all(count >= 1 for count in fired), f"a rule never fired: {fired}"

    def counted() -> bool:
        state = chaos_show(drill_lab.server)
        assert state["source"] == "environment", state
        assert [rule["rule"] for rule in state["rules"]] == [rule for rule, _, _ in DRILL], state
        return [rule["fired"] for rule in state["rules"]] == fired

    retry_until(counted, 5, f"chaos show to count what the log holds, {fired}")

    # Each refusal and each dropped connection cost its message a retry; a disconnect at
    # DATA may cost the messages pipelined behind it one more.
    refused, dropped, lost_replies, _ = fired
    assert retries >= refused + dropped + lost_replies, (retries, fired)
    # Each lost reply was a message stored, then sent again with XMAILLAB-ONCE and found:
    # as many "already stored" as lost replies, and one record per message on disk.
    already = [line["message"] for line in lines if " already-stored=" in str(line.get("message"))]
    assert len(already) == lost_replies, already
    records = []
    for domain, path in drill_lab.forward_files(tmp_path).items():
        items, leftover = parse_records(path.read_bytes())
        assert leftover == b"", domain
        records += [item for item in items if isinstance(item, Record)]
    assert len(records) == BATCH, "one record per message: each has one recipient"
    print(
        f"{BATCH} messages, {retries} retries over {sum(m.attempts > 1 for m in sent)} messages; fired: "
        + ", ".join(f"{rule} x{count}" for (rule, _, _), count in zip(DRILL, fired, strict=True))
    )


# -- rules changed while the lab runs --------------------------------------------------


@pytest.fixture
def chaos_lab(images: dict[str, str]) -> Iterator[Lab]:
    """A lab with no rules, its server published on a loopback port for the test's own SMTP."""
    yield from started_lab(images, ("serve",), server_ports=(SMTP_PORT,))


def test_chaos_set_in_the_server_applies_at_once_and_outlives_a_restart_until_cleared(chaos_lab: Lab) -> None:
    server = chaos_lab.server
    with smtp_to(server) as smtp:  # open before the rules are set: they apply to it too
        maillab_chaos(server, "set", f"{FLAKY}; {BLOCKED}")
        assert smtp.mail("a@sender.test")[0] == 250
        refused = (451, b"4.0.0 maillab chaos: rule 1")  # the lab's own text: the rule gives none
        assert [smtp.rcpt(f"{name}@flaky.test") for name in ("x", "y")] == [refused, refused]
        assert smtp.rcpt("z@flaky.test")[0] == 250
        assert smtp.rcpt("w@other.test")[0] == 250
        smtp.rset()
        assert smtp.mail("someone@blocked.test") == (550, b"5.7.1 sender blocked")
    counted = [(FLAKY, 2, 3), (BLOCKED, 1, 1)]  # (rule, fired, matched)
    retry_until(lambda: counts(chaos_show(server)) == counted, 5, f"chaos show to count {counted}")

    server.get_wrapped_container().restart(timeout=10)
    HealthcheckWaitStrategy().wait_until_ready(server)
    state = chaos_show(server)
    assert (state["source"], [rule["rule"] for rule in state["rules"]]) == ("file", [FLAKY, BLOCKED]), state
    with smtp_to(server) as smtp:  # published on a new host port now
        assert smtp.mail("someone@blocked.test") == (550, b"5.7.1 sender blocked")
    counted = [(FLAKY, 0, 0), (BLOCKED, 1, 1)]  # counted afresh since the restart
    retry_until(lambda: counts(chaos_show(server)) == counted, 5, f"chaos show to count {counted}")

    maillab_chaos(server, "clear")
    with smtp_to(server) as smtp:
        assert smtp.mail("someone@blocked.test")[0] == 250
        assert smtp.rcpt("x@flaky.test")[0] == 250
        # The reserved addresses need no rule.
        assert smtp.rcpt("rcpt-550@flaky.test") == (550, b"5.0.0 maillab chaos: reserved address")
    assert chaos_show(server)["rules"] == []


def test_put_on_the_inspector_applies_to_the_next_smtp_command_and_get_counts_it(chaos_lab: Lab) -> None:
    with httpx.Client(base_url=chaos_lab.api_url, timeout=30) as api:
        put = api.put("/chaos", json={"rules": FULL})
        assert put.status_code == 200, put.text
        assert (put.json()["source"], counts(put.json()), put.json()["pending"]) == ("file", [(FULL, 0, 0)], None)
        with smtp_to(chaos_lab.server) as smtp:
            assert smtp.mail("a@sender.test")[0] == 250
            assert smtp.rcpt("full@one.test") == (452, b"4.2.2 mailbox full")
            assert smtp.rcpt("empty@one.test")[0] == 250

        def fired_once() -> bool:
            got = api.get("/chaos")
            assert got.status_code == 200, got.text
            return [(rule["rule"], rule["fired"]) for rule in got.json()["rules"]] == [(FULL, 1)]

        retry_until(fired_once, 5, "GET /chaos to count the rule's one fault")

        bad = api.put("/chaos", json={"rules": BAD})
        assert bad.status_code == 400, bad.text
        # As the API's other errors: `position` counts from 0, the message from 1.
        assert bad.json() == {"error": f"rules: {BAD_AT}", "rule": 2, "position": 44}, bad.text

        cleared = api.delete("/chaos")
        assert cleared.status_code == 200, cleared.text
        with smtp_to(chaos_lab.server) as smtp:
            assert smtp.mail("a@sender.test")[0] == 250
            assert smtp.rcpt("full@one.test")[0] == 250
        assert api.get("/chaos").json()["rules"] == []


def test_a_rule_that_does_not_parse_stops_the_server_at_start(images: dict[str, str]) -> None:
    client = docker.from_env()
    writable = "size=1m,uid=10001,gid=10001,mode=0755"
    server = client.containers.run(
        images["server"],
        detach=True,
        environment={"MAILLAB_CHAOS": BAD},
        tmpfs={"/forward": writable, "/chaos": writable},
    )
    try:
        code = server.wait(timeout=60)["StatusCode"]
        output = server.logs().decode(errors="replace")
    finally:
        server.remove(force=True)
        client.close()
    assert code == 2, output
    assert "MAILLAB_CHAOS" in output and BAD_AT in output, output


# -- helpers ---------------------------------------------------------------------------


def maillab_chaos(server: DockerContainer, *arguments: str) -> str:
    """`maillab-server chaos ...` in the server's container, as `docker compose exec` runs it; its output."""
    run = server.exec(["maillab-server", "chaos", *arguments])
    output = run.output.decode(errors="replace")
    assert run.exit_code == 0, output
    return output


def chaos_show(server: DockerContainer) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(maillab_chaos(server, "show", "--json"))
    return shown


def counts(state: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(rule["rule"], rule["fired"], rule["matched"]) for rule in state["rules"]]


def server_log(server: DockerContainer) -> list[dict[str, Any]]:
    """The server's JSON log (MAILLAB_LOG_FORMAT=json), one object a line."""
    stdout, stderr = server.get_logs()
    lines = (stdout + stderr).decode(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def smtp_to(server: DockerContainer) -> smtplib.SMTP:
    """An SMTP session with the server's published port, where it is now (a restart moves it)."""
    smtp = smtplib.SMTP(server.get_container_host_ip(), int(server.get_exposed_port(SMTP_PORT)), timeout=30)
    smtp.ehlo("chaos.test")
    return smtp
