"""The batch manifest: what the agent sent, as the agent writes it and the inspector reads it.

One typed, versioned schema for both sides. The document is JSON:
`{"version": 1, "seed": ..., "server": ..., "count": ..., "messages": [...]}`, one entry a
message, each with its attachments. A document without a version is read as version 1 (the
agent wrote none before the schema had a number); any other version is refused by name.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maillab_common.addresses import InvalidAddress, domain_of

VERSION = 1


class ManifestError(ValueError):
    """The document is not a manifest this version reads."""


@dataclass(frozen=True)
class SentAttachment:
    filename: str
    content_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SentMessage:
    message_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    size: int
    attachments: tuple[SentAttachment, ...]
    accepted: bool = True
    refused: tuple[str, ...] = ()  # recipients the server refused
    reply: str = ""  # the server's last reply to this message
    attempts: int = 1
    accepted_at: float = 0.0  # Unix time (s) the final 250 arrived; 0.0 when unknown or not accepted

    def domains(self) -> tuple[str, ...]:
        """The forward files this message is expected in: its accepted recipients' domains, in order."""
        refused = set(self.refused)
        return tuple(dict.fromkeys(domain_of(rcpt) for rcpt in self.rcpt_tos if rcpt not in refused))


@dataclass(frozen=True)
class Manifest:
    seed: int
    server: str
    messages: tuple[SentMessage, ...]
    version: int = VERSION

    @property
    def count(self) -> int:
        return len(self.messages)


def dumps(manifest: Manifest) -> str:
    document = asdict(manifest)
    document["count"] = manifest.count
    return json.dumps(document, indent=1)


def loads(text: str) -> Manifest:
    """The manifest in `text`, or ManifestError saying what is wrong with it.

    Only what `verify` relies on must be right: each message's id, subject, recipients and
    attachments, and the domains of those accepted. The rest (seed, sizes, attempts) is
    information, and a value of the wrong kind there is read as unknown (0, 0.0 or "").
    """
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError("not an agent manifest: the document is not a JSON object")
    version = document.get("version", VERSION)
    if type(version) is not int or version != VERSION:
        raise ManifestError(f"manifest version {version!r}: this inspector reads version {VERSION}")
    try:
        messages = tuple(_message(entry) for entry in document["messages"])
        for message in messages:
            if message.accepted:  # an address refused before sending never named a file
                message.domains()
    except (KeyError, TypeError, ValueError, AttributeError, InvalidAddress) as exc:
        raise ManifestError(f"not an agent manifest: {exc!r}") from None
    return Manifest(seed=_count(document.get("seed")), server=_info(document.get("server")), messages=messages)


def _message(entry: dict[str, Any]) -> SentMessage:
    return SentMessage(
        message_id=_text(entry["message_id"]),
        mail_from=_info(entry.get("mail_from")),
        rcpt_tos=tuple(_text(rcpt) for rcpt in entry["rcpt_tos"]),
        subject=_text(entry["subject"]),
        size=_count(entry.get("size")),
        attachments=tuple(
            SentAttachment(
                filename=_text(item["filename"]),
                content_type=_info(item.get("content_type")),
                size=_count(item.get("size")),
                sha256=_text(item["sha256"]),
            )
            for item in entry["attachments"]
        ),
        accepted=bool(entry.get("accepted", True)),
        refused=tuple(_text(rcpt) for rcpt in entry.get("refused", ())),
        reply=_info(entry.get("reply")),
        attempts=_count(entry.get("attempts"), 1),
        accepted_at=_instant(entry.get("accepted_at")),
    )


def _count(value: object, unknown: int = 0) -> int:
    """A count given as information: a JSON integer, or `unknown` for anything else."""
    return value if type(value) is int and value >= 0 else unknown


def _instant(value: object) -> float:
    """A Unix time given as information: a finite JSON number not below 0, or 0.0 (unknown) for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    try:
        instant = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return 0.0
    return instant if math.isfinite(instant) and instant >= 0.0 else 0.0


def _info(value: object) -> str:
    """A text given as information: a JSON string, or "" for anything else."""
    return value if isinstance(value, str) else ""


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {type(value).__name__}")
    return value


def read(path: Path) -> Manifest:
    """The manifest at `path`: OSError if it cannot be read, ManifestError if it is not one."""
    return loads(path.read_text(encoding="utf-8"))


def write(path: Path, manifest: Manifest) -> None:
    """Write the manifest whole or not at all: to a temporary file, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(dumps(manifest))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
