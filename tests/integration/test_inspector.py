"""The inspector container against a server container writing: restarts, file events, verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from maillab_common import manifest
from tests.integration.conftest import Lab

pytestmark = pytest.mark.integration


def test_a_restart_mid_stream_misses_nothing_and_repeats_nothing(lab: Lab) -> None:
    code, output = lab.run_agent("batch", "--count", "30", "--attachments", "1", "--seed", "1")
    assert code == 0, output
    lab.wait_for_printed(lambda printed: len(printed) >= 30, "the first batch to be printed")
    agent = lab.start_agent("batch", "--count", "60", "--attachments", "1", "--seed", "2", "--concurrency", "2")
    try:
        lab.wait_for_printed(lambda printed: len(printed) > 35, "the second batch to start landing", 60)
        lab.start_inspector()  # docker restart: SIGTERM, then start again, mid-stream
    finally:
        assert agent.get_wrapped_container().wait(timeout=180)["StatusCode"] == 0
        agent.stop()
    wanted = {
        f"<batch-{seed}-{n}@maillab-agent.test>" for seed, count in ((1, 30), (2, 60)) for n in range(1, count + 1)
    }
    lab.wait_for_printed(lambda printed: len(printed) >= 90, "all 90 messages to be printed")
    printed = [line["message_id"] for line in lab.inspector_lines()]
    assert sorted(printed) == sorted(wanted), "each message printed exactly once across the restart"


def test_file_events_arrive_on_a_named_volume(lab: Lab) -> None:
    """With the safety-net sweep set to a minute, only inotify events can print the message quickly."""
    lab.start_inspector(MAILLAB_SWEEP_INTERVAL="60")
    _, logs = lab.inspector.get_logs() if lab.inspector else (b"", b"")
    assert b"file events from InotifyObserver" in logs
    code, output = lab.run_agent("send", "--from", "a@x.test", "--to", "b@events.test", "--subject", "event")
    assert code == 0, output
    lab.wait_for_printed(
        lambda printed: any(line["subject"] == "event" for line in printed), "the event-driven print", 10
    )


def test_verify_passes_for_a_real_batch_and_fails_for_a_corrupted_record(lab: Lab, tmp_path: Path) -> None:
    code, output = lab.run_agent(
        "batch", "--count", "10", "--attachments", "2", "--seed", "77", "--manifest", "/manifests/latest.json"
    )
    assert code == 0, output
    code, output = lab.run_inspector("verify", "--manifest", "/manifests/latest.json", "--timeout", "30")
    assert code == 0, output
    assert "verify: expected 10, delivered 10, missing 0, corrupted 0, duplicated 0" in output

    victim = manifest.loads(lab.read_manifest("/manifests/latest.json")).messages[3]
    domain = victim.domains()[0]
    # Flip one byte of the victim's stored message, inside its record, as a bad disk would.
    lab.corrupt(domain, victim.message_id)
    code, output = lab.run_inspector("verify", "--manifest", "/manifests/latest.json", "--timeout", "2")
    assert code == 1, output
    assert f"corrupted: {victim.message_id} in {domain}" in output
