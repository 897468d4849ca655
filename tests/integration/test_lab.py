"""The lab end to end: agent container -> server container -> forward volume -> inspector container."""

from __future__ import annotations

import hashlib
import mailbox
from email.message import Message
from pathlib import Path

import pytest

from maillab_agent.message import batch_messages
from maillab_inspector.model import attachment_payloads
from tests.integration.conftest import Lab

pytestmark = pytest.mark.integration
SEED = 4242


def test_a_batch_lands_whole_in_the_forward_files_and_in_the_inspector(lab: Lab, tmp_path: Path) -> None:
    code, output = lab.run_agent("batch", "--count", "20", "--attachments", "2", "--seed", str(SEED))
    assert code == 0, output
    sent = {m.message_id: m for m in batch_messages(seed=SEED, count=20, attachments=2)}

    stored: dict[str, tuple[str, Message]] = {}
    for domain, path in lab.forward_files(tmp_path).items():
        box = mailbox.mbox(str(path), create=False)
        try:
            for kept in box:
                assert kept["Message-ID"] not in stored, "a message stored twice"
                stored[kept["Message-ID"]] = (domain, kept)
        finally:
            box.close()
    assert set(stored) == set(sent)
    for message_id, (domain, message) in stored.items():
        outgoing = sent[message_id]
        assert [rcpt.rpartition("@")[2] for rcpt in outgoing.rcpt_tos] == [domain]
        assert message["Subject"] == outgoing.subject
        assert message["Delivered-To"] == outgoing.rcpt_tos[0]
        stored_files = [(name, data) for name, _, data in attachment_payloads(message)]
        assert stored_files == [(a.filename, a.data) for a in outgoing.attachments]

    lab.wait_for_printed(lambda printed: len(printed) >= 20, "the inspector to print all 20 messages")
    printed = {line["message_id"]: line for line in lab.inspector_lines()}
    assert len(lab.inspector_lines()) == 20, "each message printed exactly once"
    assert set(printed) == set(sent)
    for message_id, outgoing in sent.items():
        assert printed[message_id]["attachments"] == [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": len(a.data),
                "sha256": hashlib.sha256(a.data).hexdigest(),
            }
            for a in outgoing.attachments
        ]


def test_send_from_flags_reaches_the_recipients_domains(lab: Lab, tmp_path: Path) -> None:
    code, output = lab.run_agent(
        "send", "--from", "me@sender.test", "--to", "you@one.test", "--to", "them@Two.test", "--subject", "flags"
    )
    assert code == 0, output
    files = lab.forward_files(tmp_path)
    assert set(files) == {"one.test", "two.test"}
    lab.wait_for_printed(lambda printed: len(printed) >= 2, "the inspector to print both")
    assert sorted(line["domain"] for line in lab.inspector_lines()) == ["one.test", "two.test"]


def test_a_bad_recipient_is_refused_and_nothing_leaves_the_volume(lab: Lab, tmp_path: Path) -> None:
    # The agent checks an address as the server does (a 64-character label), so it refuses
    # this one itself, before it connects: exit 2, one line.
    code, output = lab.run_agent("send", "--from", "me@sender.test", "--to", f"x@{'x' * 64}.test")
    assert code == 2, output
    assert "is not a valid mailbox" in output and "at most 63" in output, output
    assert lab.forward_files(tmp_path) == {}
