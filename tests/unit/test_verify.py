"""verify's arithmetic: what a manifest expects, and how what was found is counted."""

from __future__ import annotations

import pytest

from maillab_inspector.render import AttachmentSummary, MessageSummary
from maillab_inspector.verify import Expected, ManifestError, check, expected_deliveries

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
    expected, unsent = expected_deliveries(MANIFEST)
    assert [item.key for item in expected] == [("<1@x>", "one.test"), ("<1@x>", "two.test"), ("<2@x>", "two.test")]
    assert expected[0] == Expected("<1@x>", "one.test", "first", (("a.txt", "aa"),))
    assert unsent == 1


@pytest.mark.parametrize("manifest", [{}, {"messages": [{"message_id": "x"}]}, [], {"messages": 3}])
def test_a_manifest_of_another_shape_is_refused(manifest: object) -> None:
    with pytest.raises(ManifestError):
        expected_deliveries(manifest)


def test_everything_delivered_once_and_intact_is_ok() -> None:
    expected, unsent = expected_deliveries(MANIFEST)
    found = {
        ("<1@x>", "one.test"): [summary("<1@x>", "one.test", "first", ("a.txt", "aa"))],
        ("<1@x>", "two.test"): [summary("<1@x>", "two.test", "first", ("a.txt", "aa"))],
        ("<2@x>", "two.test"): [summary("<2@x>", "two.test", "second")],
    }
    report = check(expected, found, unsent)
    assert (report.expected, report.delivered, report.not_accepted) == (3, 3, 1)
    assert report.ok


def test_missing_corrupted_and_duplicated_are_each_counted() -> None:
    expected, _ = expected_deliveries(MANIFEST)
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
    expected, _ = expected_deliveries({"messages": [MANIFEST["messages"][1]]})
    report = check(expected, {("<2@x>", "two.test"): [summary("<2@x>", "two.test", "SECOND")]})
    assert report.corrupted and "subject" in report.corrupted[0][1]
