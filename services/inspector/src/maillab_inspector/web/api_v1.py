"""The JSON API under /api/v1: thin routes over the catalogue, and the documents they answer.

Each route reads its parameters, asks the catalogue (catalogue.py) or, for one message's
contents, the record at its place in the forward file (stored.record_at, model.message_detail),
and answers one of the documents below; their pydantic models are what the OpenAPI document
(/api/v1/openapi.json) says. Every error is `{"error": ...}` with its status (ApiError), and no
message content, however hostile, may make a route fail: a message is taken apart by the
model, which never raises, and its text reaches JSON as valid Unicode.

The catalogue's calls block (SQLite), so they run in the thread pool: sync routes are run
there by FastAPI, and the two that wait (`wait`, `events`) are async and await the
catalogue's commit notification between looks (Commits.wait; web/wakeups.py for `wait`),
never a timer. A wait's look for one Message-ID that reads no other table is the exception:
a lookup of a row or two, made on the event loop.

What a message says is served so that no browser takes it for the lab's own content:
raw bytes as message/rfc822 to download, attachments as downloads (and as
application/octet-stream where a browser could run them), the HTML body under a
Content-Security-Policy that allows no script and no remote load, in a sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Request
from fastapi import Query as Param
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from maillab_common import manifest as manifest_format
from maillab_common.addresses import InvalidAddress, normalise_domain
from maillab_common.forward import Delivery, to_smtp_line_endings
from maillab_inspector import query as search
from maillab_inspector import render, stored
from maillab_inspector.catalogue import BadCursor, Catalogue, Found, Located, Summary
from maillab_inspector.model import Detail, entry_id, message_detail, thorough_budget, web_budget
from maillab_inspector.verify import Delivered, check, expected_deliveries
from maillab_inspector.web.wakeups import Wakeups

log = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_DEFAULT = 50
PAGE_MAX = 1000  # the most messages one page, wait or event batch holds
WAIT_MAX_SECONDS = 300.0
MANIFEST_BYTES = 256 * 1024 * 1024  # a posted manifest: about 800,000 messages
KEEPALIVE_SECONDS = 15.0  # a comment on an idle event stream, so that proxies and clients keep it open
RETRY_MILLISECONDS = 2000  # what an EventSource waits before it reconnects
# Details read lately, for the page's tabs (the detail, then the HTML, the raw source, an
# attachment) without taking the message apart each time: at most this many, holding
# messages of at most this many bytes in all.
DETAIL_CACHE_ENTRIES = 16
DETAIL_CACHE_BYTES = 32 * 1024 * 1024
# What a cached detail holds for each byte of its record: the record, and its attachments,
# text and HTML decoded (measured: three 28 MiB messages took 260 MiB).
DETAIL_BYTES_PER_RECORD_BYTE = 3

PREVIEW_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)
# Attachment types a browser shows without running anything; every other type is served
# as application/octet-stream (and always as a download).
INERT_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/pdf",
        "application/zip",
        "application/gzip",
        "application/json",
        "text/plain",
        "text/csv",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "audio/mpeg",
        "audio/ogg",
        "video/mp4",
        "video/webm",
    }
)


# -- the documents ---------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the parameter (and for a query, the position)")
    position: int | None = Field(default=None, description="For a malformed query: the 0-based offending character")


class Envelope(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sender: str = Field(alias="from", description="The envelope sender; '' for the null sender <>")
    to: list[str] = Field(description="The envelope recipients in this domain")


class MessageSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="The message's stable id (the same after a reindex)")
    domain: str = Field(description="The domain whose forward file holds it")
    received: str = Field(description="When the server accepted it: ISO 8601, UTC")
    envelope: Envelope
    sender: str = Field(alias="from", description="The header From, decoded")
    to: str = Field(description="The header To, decoded")
    cc: str = Field(description="The header Cc, decoded")
    subject: str
    date: str = Field(description="The header Date as written")
    message_id: str = Field(description="The Message-ID without <>")
    size: int = Field(description="Bytes of the message")
    snippet: str = Field(description="The start of the text body")
    attachments: int = Field(description="How many attachments")
    problem: str = Field(description="What could not be read; '' when all could")


class MessagePage(BaseModel):
    total: int = Field(description="Every message that matches, not only this page's")
    messages: list[MessageSummary] = Field(description="Newest first")
    next_cursor: str | None = Field(description="`cursor` for the next page; null on the last")


class DetailEnvelope(Envelope):
    helo: str
    peer: str
    tls: bool
    transaction_id: str


class Attachment(BaseModel):
    index: int = Field(description="`n` in /messages/{id}/attachments/{n}")
    filename: str
    content_type: str
    size: int
    sha256: str


class MessageDetail(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    domain: str
    received: str
    envelope: DetailEnvelope
    sender: str = Field(alias="from")
    to: str
    cc: str
    subject: str
    date: str
    message_id: str
    size: int
    snippet: str
    problem: str = Field(description="What of the message could not be read; '' when all could")
    headers: list[tuple[str, str]] = Field(description="Every header field in order: [name, decoded value]")
    text: str = Field(description="The text/plain body")
    html: str = Field(description="The text/html body; '' when there is none")
    attachments: list[Attachment]


class DomainCount(BaseModel):
    domain: str
    count: int
    last_received: str = Field(description="When its last message arrived: ISO 8601, UTC")


class WaitResult(BaseModel):
    matched: int = Field(description="How many messages are in `messages`")
    messages: list[MessageSummary] = Field(description="The first matches, oldest first")


class Deleted(BaseModel):
    deleted: int


class Health(BaseModel):
    status: str
    messages: int = Field(description="Visible messages in the catalogue")
    latest: int = Field(description="The last catalogued sequence number (an event id)")


class Finding(BaseModel):
    problem: str = Field(description="missing, corrupted or duplicated")
    message_id: str
    domain: str
    detail: str | None = None
    copies: int | None = None


class VerifyReport(BaseModel):
    manifest: str
    ok: bool
    expected: int
    delivered: int
    missing: int
    corrupted: int
    duplicated: int
    unsent: int
    damaged: int
    findings: list[Finding]


# The manifest as the agent writes it (maillab_common.manifest.dumps), for the OpenAPI
# document and a first, strict look at the types: `manifest.loads` then reads it exactly as
# `inspector verify` reads the file, and is more forgiving of the fields it only reports.


class SentAttachmentBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    filename: str
    sha256: str
    content_type: str = ""
    size: int = 0


class SentMessageBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    message_id: str
    rcpt_tos: list[str]
    subject: str
    attachments: list[SentAttachmentBody]
    mail_from: str = ""
    size: int = 0
    accepted: bool = True
    refused: list[str] = []
    reply: str = ""
    attempts: int = 1
    accepted_at: float = 0.0


class ManifestBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    version: Literal[1] = 1
    seed: int = 0
    server: str = ""
    count: int = 0
    messages: list[SentMessageBody]


def validation_problems(exc: ValidationError | RequestValidationError) -> str:
    """Each problem pydantic found, as `where: what`, where is a parameter's name or a path in the body."""
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # FastAPI places it at ("body", 0): no field of the body
            problems.append(f"the body is not JSON: {error.get('ctx', {}).get('error', 'invalid')}")
            continue
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "header", "body")]
        problems.append(f"{'.'.join(location) or 'the body'}: {error.get('msg', 'invalid')}")
    return "; ".join(problems[:5]) or "invalid"


# -- errors ----------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than the one asked for: its status and `{"error": ...}` (app.py turns it into JSON)."""

    def __init__(self, status: int, error: str, position: int | None = None, *, rule: int | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.position, self.rule = status, error, position, rule

    def body(self) -> dict[str, object]:
        located = {"position": self.position, "rule": self.rule}
        return {"error": self.error} | {name: value for name, value in located.items() if value is not None}


def described(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


Responses = dict[int | str, dict[str, Any]]  # the other answers of a route, for the OpenAPI document
BAD_PARAMETER: Responses = {400: described("A bad parameter: `error` names it")}
UNKNOWN: Responses = {404: described("No such message (or it was deleted)")}
GONE: Responses = {410: described("Its forward file changed since it was catalogued: run `inspector reindex`")}


# -- the web application's state ------------------------------------------------------


class Streams:
    """The open event streams and waits, ended when the server stops.

    uvicorn waits for every open response to end before it shuts the application down, and
    an event stream ends only when its client leaves: `close` (from any thread, e.g. the
    server's signal handler) makes each stream end at once, and any later one end at its start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.closed = False

    @contextmanager
    def opened(self) -> Iterator[asyncio.Event]:
        """An event set when the streams are closed, for as long as one stream is open."""
        closing = asyncio.Event()
        entry = (asyncio.get_running_loop(), closing)
        with self._lock:
            if self.closed:
                closing.set()
            self._open.add(entry)
        try:
            yield closing
        finally:
            with self._lock:
                self._open.discard(entry)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            entries = list(self._open)
        for loop, closing in entries:
            with suppress(RuntimeError):  # that loop is closed: its stream is gone
                loop.call_soon_threadsafe(closing.set)


@dataclass
class WebState:
    """What every route reads: the catalogue, the forward folder its records are in, the latest manifest,
    and the folder of the fault-injection rules the server watches."""

    catalogue: Catalogue
    forward_root: Path
    manifest: Path | None
    chaos_dir: Path
    keepalive: float = KEEPALIVE_SECONDS
    streams: Streams = field(default_factory=Streams)
    details: DetailCache = field(default_factory=lambda: DetailCache())
    wakeups: Wakeups = field(init=False)

    def __post_init__(self) -> None:
        self.wakeups = Wakeups(self.catalogue)


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


State = Annotated[WebState, Depends(web_state)]


# -- reading parameters ----------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which messages a request is about: those matching `query` in `domain` (None: any)."""

    query: search.Query | None
    domain: str | None


def parse_query(text: str) -> search.Query | None:
    """The query text as a Query (None when empty); ApiError 400 naming the position when malformed."""
    if not text.strip():
        return None
    try:
        return search.parse(text)
    except search.QuerySyntaxError as exc:
        raise ApiError(400, f"query: {exc}", exc.position) from None


def parse_domain(text: str) -> str | None:
    if not text:
        return None
    try:
        return normalise_domain(text)
    except InvalidAddress as exc:
        raise ApiError(400, f"domain: {exc}") from None


async def selection(
    query: Annotated[str, Param(description="Search text in the query syntax (docs/api.md); empty: all")] = "",
    domain: Annotated[str, Param(description="Only this domain's messages; empty: every domain")] = "",
) -> Selection:
    return Selection(parse_query(query), parse_domain(domain))


Selected = Annotated[Selection, Depends(selection)]


# -- summaries and details -------------------------------------------------------------


def summary_document(summary: Summary) -> dict[str, object]:
    """A summary as the API, the events and the page show it."""
    return summary.as_json()


@dataclass(frozen=True)
class Opened:
    """A message as its own routes read it: where it is in the catalogue, and its contents taken apart."""

    located: Located
    delivery: Delivery
    detail: Detail


class DetailCache:
    """The details of the last few messages read, by id and place: a page reads one message several times."""

    def __init__(self, entries: int = DETAIL_CACHE_ENTRIES, size: int = DETAIL_CACHE_BYTES) -> None:
        self._lock = threading.Lock()
        self._limits = (entries, size)
        self._entries: OrderedDict[tuple[str, int, int], Opened] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, int, int]) -> Opened | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: tuple[str, int, int], opened: Opened) -> None:
        entries, size = self._limits
        held = _held(opened)
        if held > size // 2:  # a large message is read again rather than crowding out the rest
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = opened
            self._bytes += held
            while len(self._entries) > entries or self._bytes > size:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= _held(dropped)


def _held(opened: Opened) -> int:
    return opened.located.length * DETAIL_BYTES_PER_RECORD_BYTE


def open_message(state: WebState, id: str) -> Opened:
    """The visible message `id`, read again from its forward file; ApiError 404 or 410 when it cannot be."""
    located = state.catalogue.message(id)
    if located is None:
        raise ApiError(404, f"no message {id[:80]!r} (unknown, or deleted)")
    key = (id, located.inode, located.offset)
    cached = state.details.get(key)
    if cached is not None:
        return cached
    record = stored.record_at(state.forward_root, located.summary.domain, located.inode, located.offset, located.length)
    if record is not None and entry_id(located.summary.domain, record.offset, record.delivery.transaction_id) != id:
        record = None  # another message where this one was: the file was cut and written again
    if record is None:
        raise ApiError(
            410,
            f"message {id!r}: its forward file {located.summary.domain!r} changed since it was catalogued "
            "(replaced, cut or removed): run `inspector reindex`",
        )
    try:
        detail = message_detail(record, web_budget())  # a person's request: bounded to a few seconds
    except Exception as exc:  # message_detail is meant never to raise; a message must not make a 500
        log.warning("message %s cannot be taken apart: %r", id, exc)
        detail = Detail(headers=[], text="", html="", attachments=[], problem=f"unreadable ({type(exc).__name__})")
    opened = Opened(located, record.delivery, detail)
    state.details.put(key, opened)
    return opened


def detail_document(opened: Opened) -> dict[str, object]:
    summary, delivery, detail = opened.located.summary, opened.delivery, opened.detail
    document = summary_document(summary)
    document["envelope"] = {
        "from": summary.mail_from,
        "to": list(summary.rcpt_to),
        "helo": delivery.helo,
        "peer": delivery.peer,
        "tls": delivery.tls,
        "transaction_id": delivery.transaction_id,
    }
    document["problem"] = detail.problem
    document["headers"] = [list(pair) for pair in detail.headers]
    document["text"] = detail.text
    document["html"] = detail.html
    document["attachments"] = [
        {"index": index, "filename": name, "content_type": kind, "size": len(data), "sha256": _sha256(data)}
        for index, (name, kind, data) in enumerate(detail.attachments)
    ]
    return document


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- serving what a message holds -----------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\"'\\/:*?<>|;%`\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
# <meta> (a refresh navigates the frame), <link> (Chromium opens rel=preconnect and
# dns-prefetch whatever the Content-Security-Policy says: a read receipt), <base>, and
# <iframe>/<frame> (Chromium opens a connection to a frame's host before the policy refuses
# the frame: a read receipt too, seen with a listener that counts connections).
_ACTIVE_TAG = re.compile(r"<(meta|link|base|iframe|frame)(?=[\t\n\f\r />])", re.IGNORECASE)
FILENAME_CHARACTERS = 200


def served_type(content_type: str) -> str:
    """The Content-Type an attachment is served with: its own where a browser shows it inertly."""
    kind = content_type.strip().lower()
    return kind if _TOKEN.fullmatch(kind) and kind in INERT_TYPES else "application/octet-stream"


def safe_filename(name: str, fallback: str) -> str:
    """`name` without path separators, controls, quotes or characters a shell or file manager treats specially."""
    name = unicodedata.normalize("NFC", name)
    cleaned = _UNSAFE_NAME.sub("_", name).strip(" ._")[:FILENAME_CHARACTERS].strip(" ._")
    return cleaned or fallback


def content_disposition(name: str, fallback: str) -> str:
    """`attachment` with an ASCII filename and the UTF-8 one (RFC 6266, 5987): a download, never shown in place."""
    cleaned = safe_filename(name, fallback)
    ascii_name = unicodedata.normalize("NFKD", cleaned).encode("ascii", "ignore").decode()
    ascii_name = re.sub(r"[^A-Za-z0-9._ ()+,=@-]", "_", ascii_name).strip(" ._") or fallback
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


def inert_html(html: str) -> str:
    """The HTML body with every <meta>, <link>, <base>, <iframe> and <frame> tag made an unknown element.

    A sandboxed frame may still navigate itself, which no Content-Security-Policy forbids,
    and `<meta http-equiv=refresh>` would do so without a click; Chromium opens a
    `<link rel=preconnect>` (and resolves a dns-prefetch) to the sender's server despite the
    policy, and opens a connection for a frame before the policy refuses it. Tag names are
    matched as an HTML tokenizer does (ASCII case-insensitively, ended by whitespace, / or >);
    a match in text or a comment only changes text.
    """
    return _ACTIVE_TAG.sub(lambda tag: f"<x-{tag[1]}", html)


class RawMessage(Response):
    media_type = "message/rfc822"


class HtmlPreview(Response):
    media_type = "text/html"


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def answers(*groups: Responses) -> Responses:
    merged: Responses = {}
    for group in groups:
        merged.update(group)
    return merged


def _binary(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}


# -- the routes ------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1", tags=["messages"], generate_unique_id_function=lambda route: route.name)
# How a client (and schemathesis) goes from a list of summaries to each message's own routes.
MESSAGE_LINKS = {
    "get_message": {"operationId": "get_message", "parameters": {"id": "$response.body#/messages/0/id"}},
    "get_raw": {"operationId": "get_raw", "parameters": {"id": "$response.body#/messages/0/id"}},
    "get_html": {"operationId": "get_html", "parameters": {"id": "$response.body#/messages/0/id"}},
    "get_attachment": {
        "operationId": "get_attachment",
        "parameters": {"id": "$response.body#/messages/0/id", "n": 0},
    },
}


@router.get(
    "/messages",
    response_model=MessagePage,
    responses=answers({200: {"description": "A page of summaries", "links": MESSAGE_LINKS}}, BAD_PARAMETER),
)
def list_messages(
    state: State,
    chosen: Selected,
    limit: Annotated[int, Param(ge=1, le=PAGE_MAX, description="Messages on the page")] = PAGE_DEFAULT,
    cursor: Annotated[str, Param(description="`next_cursor` of the page before; empty: the first page")] = "",
) -> dict[str, object]:
    """The messages that match, newest first, a page at a time."""
    try:
        page = state.catalogue.messages(chosen.query, chosen.domain, limit, cursor or None)
    except BadCursor as exc:
        raise ApiError(400, f"cursor: {exc}") from None
    return {
        "total": page.total,
        "messages": [summary_document(summary) for summary in page.messages],
        "next_cursor": page.next_cursor,
    }


@router.delete("/messages", response_model=Deleted, responses=BAD_PARAMETER)
def delete_messages(state: State, chosen: Selected) -> dict[str, object]:
    """Hide the messages that match (all of them without `query` and `domain`) from every view, wait and event.

    A tombstone in the catalogue: the forward files are never touched.
    """
    return {"deleted": state.catalogue.delete(chosen.query, chosen.domain)}


@router.get("/messages/{id}", response_model=MessageDetail, responses=answers(UNKNOWN, GONE))
def get_message(state: State, id: str) -> dict[str, object]:
    """One message: its envelope, every header, the text and HTML bodies, the attachments."""
    return detail_document(open_message(state, id))


@router.get(
    "/messages/{id}/raw",
    response_class=RawMessage,
    responses=answers({200: _binary("message/rfc822", "The message's bytes as the client sent them")}, UNKNOWN, GONE),
)
def get_raw(state: State, id: str) -> Response:
    """The exact bytes of the message, as the client sent them: the forward file's mbox escaping undone, and
    its lines ended with CRLF again, as SMTP sent them (the file keeps LF)."""
    opened = open_message(state, id)
    return RawMessage(
        to_smtp_line_endings(opened.delivery.message),
        headers={"Content-Disposition": content_disposition(f"{id}.eml", "message.eml")},
    )


@router.get(
    "/messages/{id}/attachments/{n}",
    response_class=Response,
    responses=answers({200: _binary("*/*", "The decoded attachment, as a download")}, BAD_PARAMETER, UNKNOWN, GONE),
)
def get_attachment(state: State, id: str, n: int) -> Response:
    """Attachment `n` (its `index`), decoded, with its type and a safe file name."""
    attachments = open_message(state, id).detail.attachments
    if not 0 <= n < len(attachments):
        raise ApiError(404, f"message {id!r} has no attachment {n} (it has {len(attachments)})")
    name, kind, data = attachments[n]
    return Response(
        data,
        media_type=served_type(kind),
        headers={"Content-Disposition": content_disposition(name, f"attachment-{n}")},
    )


@router.get(
    "/messages/{id}/html",
    response_class=HtmlPreview,
    responses=answers(
        {
            200: {"description": "The HTML body, under a policy that runs nothing and loads nothing remote"},
            404: described("No such message, or it has no HTML body"),
        },
        GONE,
    ),
)
def get_html(state: State, id: str) -> Response:
    """The HTML body, for the preview: no script runs and nothing remote loads (Content-Security-Policy, sandbox)."""
    html = open_message(state, id).detail.html
    if not html:
        raise ApiError(404, f"message {id!r} has no HTML body")
    return HtmlPreview(
        inert_html(html),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": PREVIEW_POLICY,
            "Referrer-Policy": "no-referrer",
            "X-DNS-Prefetch-Control": "off",
            "Cache-Control": "no-store",
        },
    )


@router.get("/domains", response_model=list[DomainCount])
def get_domains(state: State) -> list[dict[str, object]]:
    """Each domain with messages: how many, and when its last one arrived."""
    return [
        {"domain": found.domain, "count": found.count, "last_received": found.last_received}
        for found in state.catalogue.domains()
    ]


@router.get(
    "/wait",
    response_model=WaitResult,
    responses=answers(
        {
            200: {"description": "Enough messages match", "links": MESSAGE_LINKS},
            408: {"model": WaitResult, "description": "The timeout passed first: what matched by then"},
        },
        BAD_PARAMETER,
    ),
)
async def wait(
    state: State,
    chosen: Selected,
    count: Annotated[int, Param(ge=1, le=PAGE_MAX, description="How many matches to wait for")] = 1,
    timeout: Annotated[float, Param(ge=0, le=WAIT_MAX_SECONDS, description="Seconds to wait at most")] = 10.0,
) -> Any:
    """Answer as soon as `count` messages match, those that arrived before the call included.

    Wakes on a catalogue commit that brought a message it could match (never a timer: web/wakeups.py),
    and looks only at what came since its last look.
    """
    status, document = await wait_for_matches(state, chosen, count, timeout)
    return _json_response(status, document)


async def wait_for_matches(
    state: WebState, chosen: Selection, count: int, timeout: float
) -> tuple[int, dict[str, Any]]:
    """`/wait`'s answer: 200 and the first `count` matches, or 408 and what matched when `timeout` passed.

    Shared by the route above and its fast path (web/quick_wait.py), so that both answer alike.
    """
    catalogue = state.catalogue
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: list[Summary] = []
    seen = 0  # every catalogued message up to this seq has been looked at
    key = search.wake_key(chosen.query, chosen.domain)
    # A look for one Message-ID, with no term that reads another table, is an index lookup of a row
    # or two: cheaper than a hop to a thread, which at hundreds of waits a second they queued behind.
    on_loop = (
        key is not None and key[0] == "message-id" and chosen.query is not None and search.on_rows_alone(chosen.query)
    )
    status = 408
    with state.streams.opened() as closing:
        while True:
            latest = catalogue.commits.latest  # committed before the look below begins, so the look sees it
            if on_loop:
                new = catalogue.matching(chosen.query, chosen.domain, seen, count - len(found))
            else:
                new = await run_in_threadpool(catalogue.matching, chosen.query, chosen.domain, seen, count - len(found))
            found += new
            if len(found) >= count:
                status = 200
                break
            # Fewer than asked for: the look saw everything committed, `latest` included.
            seen = max([latest, seen] + [summary.seq for summary in new])
            if not await before_closing(state.wakeups.next_arrival(key, seen, deadline - loop.time()), closing):
                break  # the timeout passed, or the server is stopping
    return status, {"matched": len(found), "messages": [summary_document(summary) for summary in found]}


@router.get(
    "/events",
    response_class=EventStream,
    responses=answers(
        {
            200: {
                "description": "Server-Sent Events: `id: <seq>`, `event: message`, `data: <a message summary as JSON>`",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
        BAD_PARAMETER,
    ),
)
async def events(
    state: State,
    chosen: Selected,
    since: Annotated[
        int | None, Param(ge=0, description="Send the messages after this event id (default: only new ones)")
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="Sent by an EventSource that reconnects; wins over `since`")
    ] = None,
) -> EventStream:
    """One event for each new message that matches, as it is catalogued; resumable with `Last-Event-ID`."""
    after = since if since is not None else state.catalogue.commits.latest
    if last_event_id is not None:
        if not last_event_id.strip().isdigit() or len(last_event_id.strip()) > 18:
            raise ApiError(400, f"Last-Event-ID: {last_event_id[:40]!r} is not an event id")
        after = int(last_event_id.strip())
    return EventStream(
        event_stream(state, chosen, after),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def event_stream(state: WebState, chosen: Selection, after: int) -> AsyncIterator[str]:
    """The events after seq `after`, until the server stops; Starlette ends it when the client leaves."""
    catalogue = state.catalogue
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    seen = after
    with state.streams.opened() as closing:
        while not closing.is_set():
            latest = catalogue.commits.latest
            new = await run_in_threadpool(catalogue.matching, chosen.query, chosen.domain, seen, PAGE_MAX)
            for summary in new:
                data = json.dumps(summary_document(summary), ensure_ascii=False, separators=(",", ":"))
                yield f"id: {summary.seq}\nevent: message\ndata: {data}\n\n"
            if new:
                seen = new[-1].seq
            if len(new) == PAGE_MAX:
                continue  # more are waiting
            seen = max(seen, latest)
            if not await next_commit(catalogue, seen, state.keepalive, closing) and not closing.is_set():
                yield ": keepalive\n\n"


async def next_commit(catalogue: Catalogue, after: int, timeout: float, closing: asyncio.Event) -> bool:
    """Wait for a commit past `after`, for `timeout` seconds at most, or until the streams close; whether one came."""
    if timeout > 0:
        await before_closing(catalogue.commits.wait(after=after, timeout=timeout), closing)
    return catalogue.commits.latest > after and not closing.is_set()


async def before_closing(waiting: Awaitable[T], closing: asyncio.Event) -> T | None:
    """What `waiting` gives, or None when the streams close first (or are closed)."""
    task = asyncio.ensure_future(waiting)
    closed = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, closed):
            pending.cancel()
        await asyncio.gather(task, closed, return_exceptions=True)
    if closing.is_set() or task.cancelled():
        return None
    return task.result()


@router.post(
    "/verify",
    response_model=VerifyReport,
    response_model_exclude_none=True,
    responses=answers(
        {400: described("The body is not an agent manifest"), 413: described("The body is over 256 MiB")}
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ManifestBody"}}},
        }
    },
)
async def verify_posted(state: State, request: Request) -> dict[str, object]:
    """Check a batch's manifest (the agent's format, as the body) against the catalogue: `inspector verify --json`.

    Whatever the Content-Type (`curl -d @latest.json` sends a form's): the body is the manifest.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MANIFEST_BYTES:
            raise ApiError(413, f"the manifest is over {MANIFEST_BYTES // 2**20} MiB")
    return await run_in_threadpool(verify_posted_body, state, bytes(body))


def verify_posted_body(state: WebState, body: bytes) -> dict[str, object]:
    """Read and check a posted manifest: in the thread pool, as a large one takes seconds."""
    try:
        ManifestBody.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(400, f"the manifest: {validation_problems(exc)}") from None
    try:
        manifest = manifest_format.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the manifest is not UTF-8 text") from None
    except manifest_format.ManifestError as exc:
        raise ApiError(400, f"the manifest: {exc}") from None
    return verify_document(state, "request", manifest)


@router.get(
    "/verify/latest",
    response_model=VerifyReport,
    response_model_exclude_none=True,
    responses=answers(
        {
            404: described("No manifest is configured, or there is none at its path yet"),
            400: described("The file at the manifest path is not an agent manifest"),
        }
    ),
)
def verify_latest(state: State) -> dict[str, object]:
    """The same report for the latest manifest (MAILLAB_MANIFEST, /manifests/latest.json in the lab)."""
    path, manifest = latest_manifest(state)
    return verify_document(state, path.name, manifest)


@router.get("/health", response_model=Health)
async def health(state: State) -> dict[str, object]:
    """Whether the catalogue answers: how many messages it shows, and the last event id.

    On the event loop, not in the thread pool, which slow requests may hold: the count is
    one read of an index."""
    return {"status": "ok", "messages": state.catalogue.count(), "latest": state.catalogue.commits.latest}


# -- verify, for the API and the verify page -------------------------------------------


def latest_manifest(state: WebState) -> tuple[Path, manifest_format.Manifest]:
    """The configured manifest, read; ApiError 404 when there is none, 400 when it is not a manifest."""
    if state.manifest is None:
        raise ApiError(404, "no manifest is configured (MAILLAB_MANIFEST)")
    try:
        return state.manifest, manifest_format.read(state.manifest)
    except FileNotFoundError:
        raise ApiError(404, f"no manifest at {state.manifest} yet: send a batch with the agent first") from None
    except OSError as exc:
        raise ApiError(404, f"cannot read the manifest {state.manifest}: {exc.strerror}") from None
    except ValueError as exc:  # ManifestError, or text that is not UTF-8
        raise ApiError(400, f"{state.manifest}: {exc}") from None


def verify_document(state: WebState, name: str, manifest: manifest_format.Manifest) -> dict[str, object]:
    """`inspector verify --json`'s report, from the catalogue instead of a read of every forward file.

    As `verify` does, a copy the catalogue could not read whole (past a summary's budget) is
    read again with the thorough budget: a batch's own message is never called corrupted for its size.
    """
    expected, not_accepted = expected_deliveries(manifest)
    found = state.catalogue.found({item.key for item in expected})
    delivered: dict[tuple[str, str], list[Delivered]] = {
        key: [_reread(state.forward_root, copy) if copy.problem else copy for copy in copies]
        for key, copies in found.items()
    }
    report = check(expected, delivered, not_accepted)
    document: dict[str, object] = json.loads(render.verify_json(name, report, render.verify_counts(report, 0)))
    return document


def _reread(root: Path, copy: Found) -> Delivered:
    record = stored.record_at(root, copy.domain, copy.inode, copy.offset, copy.length)
    if record is None:
        return copy
    return stored.summary(copy.domain, record, thorough_budget()) or copy


def _json_response(status: int, document: dict[str, object]) -> Response:
    return JSONResponse(document, status_code=status)
