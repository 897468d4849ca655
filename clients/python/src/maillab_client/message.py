"""A message as a test reads it: Message and Attachment, over the API's documents.

A Message is built from a summary (what lists and waits answer), which costs nothing to
read; what only the message's detail holds (its bodies, headers and attachments) is
fetched from the lab the first time it is asked for, once, and kept. Raw bytes and
attachment contents are fetched each time they are asked for, as they may be large.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from maillab_client.content import first_match, html_text, links, printable
from maillab_client.errors import MailLabError

if TYPE_CHECKING:
    from maillab_client.lab import Lab

ONE_TIME_CODE = r"\b\d{6}\b"


class Attachment:
    """One attachment of a message: what the detail says of it, and its decoded bytes on demand."""

    def __init__(self, lab: Lab, message_id: str, document: dict[str, Any]) -> None:
        self._lab = lab
        self.message_id = message_id
        self.index: int = document["index"]
        self.filename: str = document["filename"]
        self.content_type: str = document["content_type"]
        self.size: int = document["size"]
        self.sha256: str = document["sha256"]

    @property
    def name(self) -> str:
        """The attachment's file name (the same as `filename`)."""
        return self.filename

    def bytes(self) -> bytes:
        """The attachment's content, decoded (GET /messages/{id}/attachments/{n})."""
        return self._lab._get_bytes(f"/messages/{quote(self.message_id, safe='')}/attachments/{self.index}")

    def __repr__(self) -> str:
        return (
            f"Attachment(index={self.index}, filename='{printable(self.filename, 80)}',"
            f" content_type='{printable(self.content_type, 80)}', size={self.size})"
        )


class Message:
    """One stored copy of a message (the copy in one recipient domain's forward file)."""

    def __init__(self, lab: Lab, document: dict[str, Any]) -> None:
        self._lab: Lab | None = lab
        self._summary = document
        # A detail document (from get) holds the attachments as a list; a summary, as a count.
        self._detail: dict[str, Any] | None = document if isinstance(document.get("attachments"), list) else None
        self.id: str = document["id"]
        self.domain: str = document["domain"]
        self.subject: str = document["subject"]
        self.sender: str = document["envelope"]["from"]
        self.recipients: list[str] = list(document["envelope"]["to"])
        self.message_id: str = document["message_id"]
        self.size: int = document["size"]
        self.snippet: str = document["snippet"]
        self.problem: str = document["problem"]

    # -- from the summary ------------------------------------------------------------------

    @property
    def received_text(self) -> str:
        """When the server accepted it, as the API says it (ISO 8601, UTC)."""
        received: str = self._summary["received"]
        return received

    @cached_property
    def received(self) -> datetime:
        """When the server accepted it, timezone-aware (UTC)."""
        return datetime.fromisoformat(self.received_text)

    @property
    def from_header(self) -> str:
        """The header From, decoded (the envelope sender is `sender`)."""
        value: str = self._summary["from"]
        return value

    @cached_property
    def to(self) -> list[str]:
        """The addresses of the header To, as `user@domain`."""
        return _addresses(self._summary["to"])

    @cached_property
    def cc(self) -> list[str]:
        """The addresses of the header Cc, as `user@domain`."""
        return _addresses(self._summary["cc"])

    # -- from the detail, fetched once ---------------------------------------------------------

    def detail(self) -> dict[str, Any]:
        """The message's detail document (GET /messages/{id}), fetched the first time it is asked for."""
        if self._detail is None:
            self._detail = self._connected()._get_json(f"/messages/{quote(self.id, safe='')}")
        return self._detail

    @property
    def text(self) -> str:
        """The text/plain body ('' when there is none)."""
        text: str = self.detail()["text"]
        return text

    @property
    def html(self) -> str | None:
        """The text/html body, or None when the message has none."""
        html: str = self.detail()["html"]
        return html or None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header field in order, as (name, decoded value)."""
        return [(name, value) for name, value in self.detail()["headers"]]

    @cached_property
    def attachments(self) -> list[Attachment]:
        """The attachments, in order; a message whose summary counts none costs no request."""
        if self._detail is None and self._summary.get("attachments") == 0:
            return []
        return [Attachment(self._connected(), self.id, document) for document in self.detail()["attachments"]]

    def links(self) -> list[str]:
        """The http(s) URLs in the text body, then the http(s) hrefs of the HTML body's <a> and <area>
        elements (no stylesheet, base, mailto:, #fragment or relative href), each once, in order."""
        return links(self.text, self.html or "")

    def code(self, pattern: str | re.Pattern[str] = ONE_TIME_CODE) -> str | None:
        """The first match of `pattern` (a one-time code: six digits by default) in the text body,
        else in the HTML body's visible text; its group 1 when the pattern has a group."""
        return first_match(pattern, _lazily(self))

    # -- the message's bytes -----------------------------------------------------------------

    def raw(self) -> bytes:
        """The message's bytes as its client sent them (GET /messages/{id}/raw): what the server accepted
        after DATA, dot-stuffing undone, every line ending in CRLF (a bare LF that a client sent
        comes back as CRLF too: the forward file keeps LF alone)."""
        return self._connected()._get_bytes(f"/messages/{quote(self.id, safe='')}/raw")

    def email(self) -> EmailMessage:
        """The raw bytes parsed by the standard library (policy email.policy.default)."""
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.raw())
        assert isinstance(parsed, EmailMessage)  # what policy.default's message factory makes
        return parsed

    def __getstate__(self) -> dict[str, Any]:
        # A pickled or copied message (in a pickled MessageTimeout, say) keeps what it read but not
        # its lab: an HTTP client with open connections is no state to copy.
        # Its attachments (if read) hold the lab too: read again, they say the same.
        return {name: value for name, value in self.__dict__.items() if name != "attachments"} | {"_lab": None}

    def _connected(self) -> Lab:
        """The lab this message came from; MailLabError for a copy that has none (one unpickled)."""
        if self._lab is None:
            raise MailLabError(f"{self!r} is a copy without its lab (unpickled): fetch it again with Lab.get")
        return self._lab

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Message(id='{printable(self.id, 40)}', subject='{printable(self.subject, 80)}')"


def _lazily(message: Message) -> Iterator[str]:
    """The text body, then the HTML body as text, the second only made when the first has no match."""
    yield message.text
    if message.html:
        yield html_text(message.html)


def _addresses(field: str) -> list[str]:
    return [address for _, address in getaddresses([field]) if address] if field else []
