"""Checking a batch against the agent's manifest: pure arithmetic over what was found.

A manifest entry the server accepted is expected once in the forward file of each domain
among its recipients (less any it refused), with the same subject and the same attachments
(filename and SHA-256, in order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from maillab_common.domains import InvalidAddress, domain_of
from maillab_inspector.render import MessageSummary

Key = tuple[str, str]  # (Message-ID, domain)


class ManifestError(ValueError):
    """The manifest is not one the agent writes."""


@dataclass(frozen=True)
class Expected:
    message_id: str
    domain: str
    subject: str
    attachments: tuple[tuple[str, str], ...]  # (filename, sha256)

    @property
    def key(self) -> Key:
        return (self.message_id, self.domain)


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


def expected_deliveries(manifest: object) -> tuple[list[Expected], int]:
    """What the manifest promises, and how many of its messages were never accepted."""
    try:
        entries = manifest["messages"]  # type: ignore[index]
        expected: list[Expected] = []
        not_accepted = 0
        for entry in entries:
            if not entry.get("accepted", True):
                not_accepted += 1
                continue
            refused = set(entry.get("refused", []))
            attachments = tuple((a["filename"], a["sha256"]) for a in entry["attachments"])
            domains = dict.fromkeys(domain_of(rcpt) for rcpt in entry["rcpt_tos"] if rcpt not in refused)
            expected += [Expected(entry["message_id"], domain, entry["subject"], attachments) for domain in domains]
    except (KeyError, TypeError, AttributeError, InvalidAddress) as exc:
        raise ManifestError(f"not an agent manifest: {exc!r}") from None
    return expected, not_accepted


def check(
    expected: Iterable[Expected], found: Mapping[Key, list[MessageSummary]], not_accepted: int = 0
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


def _difference(item: Expected, summary: MessageSummary) -> str:
    if summary.problem:
        return summary.problem
    if summary.subject != item.subject:
        return f"subject {summary.subject!r}, expected {item.subject!r}"
    stored = tuple((a.filename, a.sha256) for a in summary.attachments)
    if stored != item.attachments:
        return f"attachments {_names(stored)} differ from {_names(item.attachments)}"
    return ""


def _names(attachments: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{name}:{digest[:12]}" for name, digest in attachments) or "none"
