"""Checking a batch against the agent's manifest: what it promises, what arrived, and the count.

A manifest entry the server accepted is expected once in the forward file of each domain
among its recipients (less any it refused), with the same subject and the same attachments
(filename and SHA-256, in order). `expected_deliveries` and `check` are pure arithmetic;
`collect` reads the forward folder (through the tail) until what is expected is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from maillab_common.forward import Damaged
from maillab_common.manifest import Manifest
from maillab_inspector.model import AttachmentSummary, MessageSummary, thorough_budget
from maillab_inspector.stored import summary as read_summary
from maillab_inspector.tail import ForwardTail

Key = tuple[str, str]  # (Message-ID, domain)
POLL_INTERVAL = 0.2  # seconds between two reads of the folder while deliveries are missing


@dataclass(frozen=True)
class Expected:
    message_id: str
    domain: str
    subject: str
    attachments: tuple[tuple[str, str], ...]  # (filename, sha256)

    @property
    def key(self) -> Key:
        return (self.message_id, self.domain)


class Delivered(Protocol):
    """What `check` reads of a delivery found: a summary read from the forward file, or the catalogue's row."""

    @property
    def subject(self) -> str: ...

    @property
    def problem(self) -> str: ...

    @property
    def attachments(self) -> tuple[AttachmentSummary, ...]: ...


@dataclass
class VerifyReport:
    expected: int = 0
    delivered: int = 0
    missing: list[Key] = field(default_factory=list)
    corrupted: list[tuple[Key, str]] = field(default_factory=list)
    duplicated: list[tuple[Key, int]] = field(default_factory=list)
    not_accepted: int = 0  # manifest entries the server did not accept: not expected

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupted or self.duplicated)


def expected_deliveries(manifest: Manifest) -> tuple[list[Expected], int]:
    """What the manifest promises, and how many of its messages were never accepted."""
    expected: list[Expected] = []
    not_accepted = 0
    for message in manifest.messages:
        if not message.accepted:
            not_accepted += 1
            continue
        attachments = tuple((attachment.filename, attachment.sha256) for attachment in message.attachments)
        expected += [Expected(message.message_id, domain, message.subject, attachments) for domain in message.domains()]
    return expected, not_accepted


@dataclass
class Collected:
    found: dict[Key, list[MessageSummary]] = field(default_factory=dict)  # every copy of each wanted delivery
    damaged: int = 0  # stretches of damaged bytes passed on the way


def collect(
    tail: ForwardTail,
    wanted: set[Key],
    timeout: float,
    progress: Callable[[int], object] = lambda found: None,
    poll_interval: float = POLL_INTERVAL,
) -> Collected:
    """Read the forward folder until every wanted delivery is found or `timeout` seconds have passed.

    Reads at least once. After each read of the folder, `progress` is given how many of
    `wanted` have been found so far.
    """
    collected = Collected()
    deadline = time.monotonic() + timeout
    while True:
        for name, item in tail.poll_all():
            if isinstance(item, Damaged):
                collected.damaged += 1
                continue
            found = read_summary(name, item)
            if found is not None and (found.message_id, name) in wanted:
                if found.problem:  # past a summary's budget, perhaps: a batch's own message is read whole
                    found = read_summary(name, item, thorough_budget()) or found
                collected.found.setdefault((found.message_id, name), []).append(found)
        progress(len(collected.found))
        if len(collected.found) == len(wanted) or time.monotonic() >= deadline:
            return collected
        time.sleep(poll_interval)


def check(
    expected: Iterable[Expected], found: Mapping[Key, Sequence[Delivered]], not_accepted: int = 0
) -> VerifyReport:
    report = VerifyReport(not_accepted=not_accepted)
    for item in expected:
        report.expected += 1
        copies = found.get(item.key, [])
        if not copies:
            report.missing.append(item.key)
            continue
        if len(copies) > 1:
            report.duplicated.append((item.key, len(copies)))
        problem = _difference(item, copies[0])
        if problem:
            report.corrupted.append((item.key, problem))
        else:
            report.delivered += 1
    return report


def _difference(item: Expected, summary: Delivered) -> str:
    if summary.problem:
        return summary.problem
    if summary.subject != item.subject:
        return f"subject {summary.subject!r}, expected {item.subject!r}"
    delivered = tuple((a.filename, a.sha256) for a in summary.attachments)
    if delivered != item.attachments:
        return f"attachments {_names(delivered)} differ from {_names(item.attachments)}"
    return ""


def _names(attachments: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name}:{digest[:12]}" for name, digest in attachments) or "none"
