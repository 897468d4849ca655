"""The manifest schema (maillab_common.manifest): what the agent writes is what the inspector reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maillab_common import manifest

SENT = manifest.SentMessage(
    message_id="<1@x.test>",
    mail_from="agent@maillab.test",
    rcpt_tos=("a@one.test", "b@Two.Test", "c@one.test"),
    subject="s",
    size=120,
    attachments=(manifest.SentAttachment("a.csv", "text/csv", 10, "0" * 64),),
    refused=("c@one.test",),
    attempts=2,
    accepted_at=1_796_000_000.123456,
)


def test_a_written_manifest_reads_back_equal(tmp_path: Path) -> None:
    written = manifest.Manifest(seed=7, server="server:2525", messages=(SENT,))
    manifest.write(tmp_path / "m.json", written)
    assert manifest.read(tmp_path / "m.json") == written
    document = json.loads((tmp_path / "m.json").read_text())
    assert (document["version"], document["count"]) == (1, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"], "no temporary file is left behind"


def test_the_acceptance_time_reads_back_exactly_and_defaults_to_unknown() -> None:
    written = manifest.Manifest(seed=7, server="server:2525", messages=(SENT,))
    document = json.loads(manifest.dumps(written))
    assert document["messages"][0]["accepted_at"] == 1_796_000_000.123456
    assert manifest.loads(manifest.dumps(written)).messages[0].accepted_at == 1_796_000_000.123456
    assert manifest.loads(json.dumps({"messages": [entry()]})).messages[0].accepted_at == 0.0, "an older agent's"
    assert manifest.loads(json.dumps({"messages": [entry(accepted_at=12)]})).messages[0].accepted_at == 12.0


@pytest.mark.parametrize("value", [None, "1796000000.5", True, [1.0], {"t": 1}, -1.5, 1e999, float("nan"), 10**400])
def test_an_acceptance_time_of_the_wrong_kind_is_read_as_unknown(value: object) -> None:
    read = manifest.loads(json.dumps({"messages": [entry(accepted_at=value)]}))
    assert read.messages[0].accepted_at == 0.0 and read.messages[0].message_id == "<1@x.test>"


def test_domains_are_the_accepted_recipients_forward_files_in_order() -> None:
    assert SENT.domains() == ("one.test", "two.test")


def entry(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"message_id": "<1@x.test>", "rcpt_tos": ["a@x.test"], "subject": "s", "attachments": []}
    return {**base, **changes}


@pytest.mark.parametrize(
    "document",
    [
        {"seed": 1e999, "messages": [entry(size=float("inf"), attempts=None)]},
        {"seed": None, "server": 3, "messages": [entry(mail_from=None, reply=[1])]},
        # An old agent accepted addresses the server refuses; a batch to them was never sent.
        {"messages": [entry(rcpt_tos=["u@[tag:x]"], accepted=False)]},
    ],
)
def test_information_of_the_wrong_kind_is_read_as_unknown(document: dict[str, object]) -> None:
    read = manifest.loads(json.dumps(document))
    assert len(read.messages) == 1 and read.messages[0].message_id == "<1@x.test>"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[" * 100_000, "not JSON"),
        ("{not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 2, "messages": []}', "version 2"),
        ('{"version": true, "messages": []}', "version True"),
        ('{"version": 1.0, "messages": []}', "version 1.0"),
        ('{"messages": [{"message_id": 1}]}', "not an agent manifest"),
        (json.dumps({"messages": [entry(rcpt_tos=["u@[tag:x]"])]}), "general address literal"),
        (json.dumps({"messages": [entry(attachments=[{"filename": "a"}])]}), "sha256"),
    ],
)
def test_what_verify_relies_on_must_be_right(text: str, error: str) -> None:
    with pytest.raises(manifest.ManifestError, match=error):
        manifest.loads(text)
