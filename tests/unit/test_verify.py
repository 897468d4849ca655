"""verify: what a manifest expects, how what was found is counted, and the wait for it over real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maillab_common import manifest
from maillab_inspector.model import MAX_PARTS, AttachmentSummary, MessageSummary
from maillab_inspector.tail import ForwardTail
from maillab_inspector.verify import Expected, check, collect, expected_deliveries
from maillab_server.store import ForwardStore
from tests.helpers import TIMEOUT, record
from tests.store_helpers import deliver

MANIFEST = {
    "messages": [
        {
            "message_id": "<1@x>",
            "rcpt_tos": ["a@One.test", "b@one.test", "c@two.test"],
            "subject": "first",
            "accepted": True,
            "refused": [],
            "attachments": [{"filename": "a.txt", "sha256": "aa"}],
        },
        {
            "message_id": "<2@x>",
            "rcpt_tos": ["d@two.test", "e@three.test"],
            "subject": "second",
            "accepted": True,
            "refused": ["e@three.test"],
            "attachments": [],
        },
        {"message_id": "<3@x>", "rcpt_tos": ["f@one.test"], "subject": "never", "accepted": False, "attachments": []},
    ]
}


def expected_of(document: object) -> tuple[list[Expected], int]:
    return expected_deliveries(manifest.loads(json.dumps(document)))


def summary(message_id: str, domain: str, subject: str, *attachments: tuple[str, str]) -> MessageSummary:
    return MessageSummary(
        domain=domain,
        offset=0,
        received="",
        mail_from="",
        rcpt_to=(),
        subject=subject,
        message_id=message_id,
        size=0,
        attachments=tuple(AttachmentSummary(name, "", 0, digest) for name, digest in attachments),
        preview=(),
    )


def test_one_expectation_per_accepted_message_and_recipient_domain() -> None:
    expected, unsent = expected_of(MANIFEST)
    assert [item.key for item in expected] == [("<1@x>", "one.test"), ("<1@x>", "two.test"), ("<2@x>", "two.test")]
    assert expected[0] == Expected("<1@x>", "one.test", "first", (("a.txt", "aa"),))
    assert unsent == 1


def test_a_manifest_without_a_version_is_read_as_version_1_and_another_version_is_refused() -> None:
    assert expected_of({**MANIFEST, "version": 1}) == expected_of(MANIFEST)
    with pytest.raises(manifest.ManifestError, match="version 2"):
        expected_of({**MANIFEST, "version": 2})


@pytest.mark.parametrize("document", [{}, {"messages": [{"message_id": "x"}]}, [], {"messages": 3}])
def test_a_manifest_of_another_shape_is_refused(document: object) -> None:
    with pytest.raises(manifest.ManifestError, match="not an agent manifest"):
        expected_of(document)


def test_everything_delivered_once_and_intact_is_ok() -> None:
    expected, unsent = expected_of(MANIFEST)
    found = {
        ("<1@x>", "one.test"): [summary("<1@x>", "one.test", "first", ("a.txt", "aa"))],
        ("<1@x>", "two.test"): [summary("<1@x>", "two.test", "first", ("a.txt", "aa"))],
        ("<2@x>", "two.test"): [summary("<2@x>", "two.test", "second")],
    }
    report = check(expected, found, unsent)
    assert (report.expected, report.delivered, report.not_accepted) == (3, 3, 1)
    assert report.ok


def test_missing_corrupted_and_duplicated_are_each_counted() -> None:
    expected, _ = expected_of(MANIFEST)
    found = {
        ("<1@x>", "one.test"): [summary("<1@x>", "one.test", "first", ("a.txt", "bb"))],
        ("<2@x>", "two.test"): [summary("<2@x>", "two.test", "second")] * 2,
    }
    report = check(expected, found)
    assert report.missing == [("<1@x>", "two.test")]
    assert [key for key, _ in report.corrupted] == [("<1@x>", "one.test")]
    assert "a.txt:bb" in report.corrupted[0][1]
    assert report.duplicated == [(("<2@x>", "two.test"), 2)]
    assert report.delivered == 1
    assert not report.ok


def test_a_changed_subject_is_corruption() -> None:
    expected, _ = expected_of({"messages": [MANIFEST["messages"][1]]})
    report = check(expected, {("<2@x>", "two.test"): [summary("<2@x>", "two.test", "SECOND")]})
    assert report.corrupted and "subject" in report.corrupted[0][1]


def test_collect_waits_for_a_delivery_that_lands_while_it_waits(tmp_path: Path) -> None:
    store = ForwardStore(tmp_path)
    deliver(store, {"a.test": record(1), "b.test": record(9)})
    progress: list[int] = []

    def second_arrives(found: int) -> None:
        progress.append(found)
        if len(progress) == 1:
            deliver(store, {"a.test": record(2)})

    wanted = {("<1@x.test>", "a.test"), ("<2@x.test>", "a.test")}
    collected = collect(ForwardTail(tmp_path), wanted, TIMEOUT, second_arrives, poll_interval=0.01)
    assert progress == [1, 2], "read again after the first read, and stopped once all was found"
    assert set(collected.found) == wanted and collected.damaged == 0
    assert [copy.subject for copy in collected.found["<2@x.test>", "a.test"]] == ["n2"]


def test_collect_reads_once_at_a_timeout_of_0_and_counts_copies_and_damage(tmp_path: Path) -> None:
    (tmp_path / "a.test").write_bytes(b"scribbles\n" + record(1) + record(1))
    progress: list[int] = []
    wanted = {("<1@x.test>", "a.test"), ("<2@x.test>", "a.test")}
    collected = collect(ForwardTail(tmp_path), wanted, 0, progress.append)
    assert progress == [1] and collected.damaged == 1
    assert [copy.offset for copy in collected.found["<1@x.test>", "a.test"]] == [10, 10 + len(record(1))]
    report = check(expected_of({"messages": [_entry(1), _entry(2)]})[0], collected.found)
    assert report.missing == [("<2@x.test>", "a.test")] and report.duplicated == [(("<1@x.test>", "a.test"), 2)]


def _entry(number: int) -> dict[str, object]:
    return {"message_id": f"<{number}@x.test>", "rcpt_tos": ["b@a.test"], "subject": f"n{number}", "attachments": []}


def test_a_batch_message_past_a_summarys_bounds_is_read_whole(tmp_path: Path) -> None:
    """A summary takes apart at most MAX_PARTS parts; a message the manifest names is read whole."""
    parts = MAX_PARTS + 200
    attachment = b'--b\nContent-Disposition: attachment; filename="a.txt"\n\nx\n'
    message = b"Subject: many\nMessage-ID: <many@x.test>\nContent-Type: multipart/mixed; boundary=b\n\n"
    message += attachment * parts + b"--b--\n"
    (tmp_path / "a.test").write_bytes(record(1, message) + record(2, message.replace(b"<many@", b"<other@")))
    collected = collect(ForwardTail(tmp_path), {("<many@x.test>", "a.test")}, 0)
    [found] = collected.found["<many@x.test>", "a.test"]
    assert found.problem == "" and len(found.attachments) == parts
    assert set(collected.found) == {("<many@x.test>", "a.test")}, "only what is wanted is kept"
