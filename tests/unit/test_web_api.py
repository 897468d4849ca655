"""The JSON API (/api/v1) over a real catalogue, filled from real forward files as `serve` fills it.

`Lab` writes records through the server's store (tests/store_helpers.py), reads them back
through the inspector's tail, and catalogues them with model.catalogue_entry: the routes then
read a real SQLite catalogue and seek into real forward files. Most tests use Starlette's
TestClient; the event stream and the wait's wake-up run under a real uvicorn server in a
thread (`Served`), since a TestClient answers only once the app has finished its response.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from maillab_common import manifest
from maillab_common.forward import Record, render_record
from maillab_inspector import query as search
from maillab_inspector.catalogue import Catalogue
from maillab_inspector.model import MAX_PARTS, catalogue_entry
from maillab_inspector.tail import ForwardTail
from maillab_inspector.web import wakeups as wakeups_module
from maillab_inspector.web.api_v1 import PREVIEW_POLICY, content_disposition, inert_html, served_type
from maillab_inspector.web.app import create_app, stop_streams
from maillab_inspector.web.quick_wait import read_wait
from maillab_inspector.web.wakeups import Wakeups
from maillab_server.store import ForwardStore
from tests.helpers import BASE, MULTIPART, TIMEOUT
from tests.hostile import hostile_messages
from tests.store_helpers import deliver

with warnings.catch_warnings():
    # Starlette 1.x would rather have the httpx2 package; httpx works the same for these tests.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

__all__ = ["HTML_AND_ATTACHMENTS", "Lab", "TestClient", "sent"]  # what test_web_pages.py shares

START = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)

HTML_AND_ATTACHMENTS = (
    b"From: Alice <alice@x.test>\nTo: Bob <bob@x.test>, ba@x.test\nCc: carol@y.test\n"
    b"Subject: =?utf-8?q?r=C3=A9sum=C3=A9?=\nMessage-ID: <rich@x.test>\nDate: Sat, 28 Nov 2026 09:00:00 +0000\n"
    b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="outer"\n\n'
    b'--outer\nContent-Type: multipart/alternative; boundary="alt"\n\n'
    b"--alt\nContent-Type: text/plain; charset=utf-8\n\nPlain words.\nFrom the start of a line.\n"
    b'--alt\nContent-Type: text/html; charset=utf-8\n\n<meta http-equiv="refresh" content="0;url=http://evil.test/">'
    b"<p>Rich <b>words</b><script>alert(1)</script><img src=http://evil.test/pixel.png></p>\n"
    b"--alt--\n"
    b'--outer\nContent-Type: text/html\nContent-Disposition: attachment; filename="../../etc/evil\\".html"\n'
    b"Content-Transfer-Encoding: base64\n\nPHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\n"
    b"--outer\nContent-Type: image/png\nContent-Disposition: attachment; filename*=utf-8''%C3%A9t%C3%A9.png\n"
    b"Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n"
    b"--outer--\n"
)


class Lab:
    """A forward folder written by the server's store, and a catalogue filled from it by the tail, as in `serve`."""

    def __init__(self, root: Path) -> None:
        self.forward = root / "forward"
        self.forward.mkdir()
        self.store = ForwardStore(self.forward)
        self.catalogue = Catalogue(root / "catalogue.sqlite3")
        self.tail = ForwardTail(self.forward)
        self.sent = 0

    def deliver(
        self,
        message: bytes,
        *,
        domain: str = "x.test",
        mail_from: str = "alice@x.test",
        recipients: tuple[str, ...] = (),
        received: datetime | None = None,
        catalogue: bool = True,
    ) -> None:
        """Store `message` for `domain` (to bob@ that domain unless `recipients`); catalogue it unless told not."""
        self.sent += 1
        delivery = replace(
            BASE,
            mail_from=mail_from,
            rcpt_tos=recipients or (f"bob@{domain}",),
            received_at=received or START + timedelta(seconds=self.sent),
            transaction_id=f"{self.sent:08X}",
            message=message,
        )
        deliver(self.store, {domain: render_record(delivery)})
        if catalogue:
            self.catch_up()

    def numbered(self, number: int, domain: str = "x.test", subject: str | None = None) -> None:
        message = f"Subject: {subject or f'n{number}'}\nMessage-ID: <{number}@x.test>\n\nbody {number}\n"
        self.deliver(message.encode(), domain=domain)

    def catch_up(self) -> None:
        """Catalogue what the tail has not read yet, with the positions it reaches, in one transaction."""
        entries = [
            catalogue_entry(name, item, self.tail.inode(name))
            for name, item in self.tail.poll_all()
            if isinstance(item, Record)
        ]
        self.catalogue.ingest(entries, self.tail.positions())

    def app(self, manifest_path: Path | None = None, keepalive: float = 15.0) -> FastAPI:
        return create_app(self.catalogue, self.forward, manifest_path, keepalive=keepalive)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    yield made
    made.catalogue.close()


@pytest.fixture
def client(lab: Lab) -> Iterator[TestClient]:
    with TestClient(lab.app()) as made:
        yield made


def only_id(client: TestClient, query: str) -> str:
    found = client.get("/api/v1/messages", params={"query": query}).json()["messages"]
    assert len(found) == 1, found
    return str(found[0]["id"])


# -- the list ----------------------------------------------------------------------------


def test_the_list_is_newest_first_with_the_total_and_pages_through_every_message(lab: Lab, client: TestClient) -> None:
    for number in range(7):
        lab.numbered(number, domain="x.test" if number % 2 else "y.test")
    first = client.get("/api/v1/messages", params={"limit": 3})
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.json()["total"] == 7
    subjects = [message["subject"] for message in first.json()["messages"]]
    assert subjects == ["n6", "n5", "n4"]
    cursor = first.json()["next_cursor"]
    while cursor:
        page = client.get("/api/v1/messages", params={"limit": 3, "cursor": cursor}).json()
        subjects += [message["subject"] for message in page["messages"]]
        cursor = page["next_cursor"]
    assert subjects == [f"n{number}" for number in reversed(range(7))]


def test_a_summary_has_the_envelope_and_the_headers(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS, recipients=("bob@x.test", "dan@x.test"))
    (summary,) = client.get("/api/v1/messages").json()["messages"]
    assert summary["envelope"] == {"from": "alice@x.test", "to": ["bob@x.test", "dan@x.test"]}
    assert summary["subject"] == "résumé"
    assert summary["from"] == "Alice <alice@x.test>"
    assert summary["cc"] == "carol@y.test"
    assert summary["message_id"] == "rich@x.test"
    assert summary["attachments"] == 2
    assert summary["domain"] == "x.test"
    assert summary["received"] == "2026-11-28T09:00:01Z"


def test_domain_and_query_narrow_the_list_and_to_never_matches_a_substring(lab: Lab, client: TestClient) -> None:
    lab.deliver(b"To: a@x.test\nSubject: for a\n\nhi\n")
    lab.deliver(b"To: ba@x.test\nSubject: for ba\n\nhi\n")
    lab.deliver(b"To: a@x.test\nSubject: for a elsewhere\n\nhi\n", domain="y.test")

    def subjects(**params: str) -> list[str]:
        response = client.get("/api/v1/messages", params=params)
        assert response.status_code == 200, response.text
        return sorted(message["subject"] for message in response.json()["messages"])

    assert subjects(query="to:a@x.test") == ["for a", "for a elsewhere"]
    assert subjects(query="to:A@X.TEST", domain="y.test") == []  # the local part is matched as written
    assert subjects(query="to:a@X.Test", domain="Y.test") == ["for a elsewhere"]
    assert subjects(query='subject:"for ba"') == ["for ba"]
    assert subjects(domain="x.test") == ["for a", "for ba"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"query": 'subject:"unterminated'}, "query"),
        ({"query": "colour:red"}, "query"),
        ({"domain": "not a domain"}, "domain"),
    ],
)
def test_a_bad_parameter_is_a_400_that_names_it(client: TestClient, params: dict[str, str], named: str) -> None:
    response = client.get("/api/v1/messages", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(f"{named}:"), response.json()


def test_a_malformed_query_names_its_position(client: TestClient) -> None:
    response = client.get("/api/v1/messages", params={"query": "hello larger:ten"})
    assert response.status_code == 400
    assert response.json()["position"] >= 6
    assert "at character" in response.json()["error"]


def test_an_unknown_route_and_method_answer_json(client: TestClient) -> None:
    missing = client.get("/api/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("not found")
    wrong = client.put("/api/v1/messages")
    assert wrong.status_code == 405
    assert "error" in wrong.json()
    assert wrong.headers["allow"] == "DELETE, GET"  # every route's on the path, not the first's


def test_without_a_limit_a_page_holds_50_messages_and_a_cursor_to_the_rest(lab: Lab, client: TestClient) -> None:
    for number in range(60):
        lab.deliver(f"Subject: n{number}\n\nbody {number}\n".encode(), catalogue=False)
    lab.catch_up()
    first = client.get("/api/v1/messages").json()
    assert first["total"] == 60
    assert [message["subject"] for message in first["messages"]] == [f"n{number}" for number in range(59, 9, -1)]
    assert first["next_cursor"]
    rest = client.get("/api/v1/messages", params={"cursor": first["next_cursor"]}).json()
    assert [message["subject"] for message in rest["messages"]] == [f"n{number}" for number in range(9, -1, -1)]
    assert rest["next_cursor"] is None


# -- one message ---------------------------------------------------------------------------


def test_a_message_in_full_envelope_headers_bodies_and_attachments(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS)
    id = only_id(client, "")
    response = client.get(f"/api/v1/messages/{id}")
    assert response.status_code == 200
    message = response.json()
    assert message["id"] == id
    assert message["envelope"]["helo"] == "client.example"
    assert message["envelope"]["from"] == "alice@x.test"
    assert ["Subject", "résumé"] in message["headers"]
    assert message["headers"][0] == ["From", "Alice <alice@x.test>"]
    assert message["text"] == "Plain words.\nFrom the start of a line."  # the last line end is the boundary's
    assert "<b>words</b>" in message["html"]
    assert [(a["index"], a["filename"], a["content_type"]) for a in message["attachments"]] == [
        (0, '../../etc/evil".html', "text/html"),
        (1, "été.png", "image/png"),
    ]
    assert message["attachments"][1]["sha256"] == hashlib.sha256(b"\x89PNG\r\n\x1a\n").hexdigest()
    assert message["attachments"][1]["size"] == 8


def test_an_unknown_message_is_a_404_for_each_of_its_routes(client: TestClient) -> None:
    for path in ("", "/raw", "/html", "/attachments/0"):
        response = client.get(f"/api/v1/messages/0123456789abcdef{path}")
        assert response.status_code == 404, path
        assert "no message" in response.json()["error"]


def test_raw_is_the_exact_bytes_the_client_sent_as_a_download(lab: Lab, client: TestClient) -> None:
    message = b"Subject: mbox\r\n\r\nFrom here on\r\n>From there\r\n\r\n.\r\nend\r\n"
    lab.deliver(message)
    assert b"\r" not in (lab.forward / "x.test").read_bytes()  # stored with LF, and From lines escaped
    id = only_id(client, "subject:mbox")
    response = client.get(f"/api/v1/messages/{id}/raw")
    assert response.status_code == 200
    assert response.content == message
    assert response.headers["content-type"] == "message/rfc822"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_an_attachment_is_its_decoded_bytes_served_safely(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS)
    id = only_id(client, "")
    html = client.get(f"/api/v1/messages/{id}/attachments/0")
    assert html.content == b"<script>alert(1)</script>"
    assert html.headers["content-type"] == "application/octet-stream"  # never run as a page
    disposition = html.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "/" not in disposition.split("filename*=")[0] and "\\" not in disposition
    png = client.get(f"/api/v1/messages/{id}/attachments/1")
    assert png.headers["content-type"] == "image/png"
    assert png.headers["content-disposition"] == "attachment; filename=\"ete.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png"
    assert hashlib.sha256(png.content).hexdigest() == hashlib.sha256(b"\x89PNG\r\n\x1a\n").hexdigest()
    assert client.get(f"/api/v1/messages/{id}/attachments/2").status_code == 404
    assert client.get(f"/api/v1/messages/{id}/attachments/-1").status_code == 404
    assert client.get(f"/api/v1/messages/{id}/attachments/first").status_code == 400


@pytest.mark.parametrize(
    ("given", "served"),
    [
        ("image/png", "image/png"),
        ("text/plain", "text/plain"),
        ("text/html", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("text/xml", "application/octet-stream"),
        ("IMAGE/PNG", "image/png"),
        ("image/png\r\nX-Evil: 1", "application/octet-stream"),
    ],
)
def test_only_types_a_browser_shows_inertly_keep_their_type(given: str, served: str) -> None:
    assert served_type(given) == served


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        'a"b.txt',
        "a\r\nX-Evil: 1.txt",
        "\u202egnp.exe",
        "C:\\boot.ini",
        "",
        "...",
        "résumé 2026.pdf",
    ],
)
def test_a_file_name_is_never_a_path_a_header_or_a_control(name: str) -> None:
    disposition = content_disposition(name, "attachment-0")
    assert disposition.isascii() and disposition.isprintable()
    ascii_name = disposition.split('filename="')[1].split('"')[0]
    assert ascii_name and not ascii_name.startswith(".")
    assert not set(ascii_name) & set("/\\\"'\r\n:")
    encoded = disposition.split("filename*=UTF-8''")[1]
    assert not set(encoded) & set("/\\\"' ;\r\n")


def test_the_html_body_is_served_under_a_policy_that_runs_and_loads_nothing(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS)
    id = only_id(client, "")
    response = client.get(f"/api/v1/messages/{id}/html")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == PREVIEW_POLICY
    for directive in ("default-src 'none'", "sandbox", "img-src data: cid:", "base-uri 'none'"):
        assert directive in policy
    assert "script-src" not in policy  # default-src 'none' covers it
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<meta" not in response.text.lower()  # a refresh would navigate the frame elsewhere
    assert "<b>words</b>" in response.text


def test_a_message_without_html_has_no_preview(lab: Lab, client: TestClient) -> None:
    lab.numbered(1)
    response = client.get(f"/api/v1/messages/{only_id(client, '')}/html")
    assert response.status_code == 404
    assert "no HTML body" in response.json()["error"]


@pytest.mark.parametrize(
    "html",
    ["<META http-equiv=refresh content=0;url=http://e/>", "<meta\nhttp-equiv=refresh>", "<meta/http-equiv=refresh>"],
)
def test_every_meta_tag_is_made_inert(html: str) -> None:
    assert "<meta" not in inert_html(html).lower()
    assert "<metadata>" in inert_html("<metadata>")  # another tag that starts alike is left alone


def test_a_forward_file_replaced_since_it_was_catalogued_is_a_410(lab: Lab, client: TestClient) -> None:
    lab.numbered(1)
    id = only_id(client, "")
    path = lab.forward / "x.test"
    copy = path.with_name("copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # the same bytes, another file (inode)
    response = client.get(f"/api/v1/messages/{id}")
    assert response.status_code == 410
    assert "reindex" in response.json()["error"]


# -- domains, health, delete ---------------------------------------------------------------


def test_domains_have_their_counts_and_last_message(lab: Lab, client: TestClient) -> None:
    lab.numbered(1, "y.test")
    lab.numbered(2, "x.test")
    lab.numbered(3, "y.test")
    assert client.get("/api/v1/domains").json() == [
        {"domain": "x.test", "count": 1, "last_received": "2026-11-28T09:00:02Z"},
        {"domain": "y.test", "count": 2, "last_received": "2026-11-28T09:00:03Z"},
    ]


def test_health_counts_the_visible_messages(lab: Lab, client: TestClient) -> None:
    assert client.get("/api/v1/health").json() == {"status": "ok", "messages": 0, "latest": 0}
    lab.numbered(1)
    lab.numbered(2)
    assert client.get("/api/v1/health").json() == {"status": "ok", "messages": 2, "latest": 2}


def test_delete_hides_messages_everywhere_and_leaves_the_forward_files(lab: Lab, client: TestClient) -> None:
    for number in range(4):
        lab.numbered(number, domain="x.test" if number < 3 else "y.test")
    before = (lab.forward / "x.test").read_bytes()
    gone = only_id(client, "subject:n1")
    response = client.delete("/api/v1/messages", params={"query": "subject:n1"})
    assert response.json() == {"deleted": 1}
    assert client.get(f"/api/v1/messages/{gone}").status_code == 404
    assert client.get("/api/v1/messages").json()["total"] == 3
    assert client.delete("/api/v1/messages", params={"domain": "x.test"}).json() == {"deleted": 2}
    assert client.get("/api/v1/domains").json()[0]["domain"] == "y.test"
    assert client.get("/api/v1/wait", params={"query": "subject:n1", "timeout": 0}).status_code == 408
    assert client.delete("/api/v1/messages").json() == {"deleted": 1}
    assert client.get("/api/v1/health").json()["messages"] == 0
    assert (lab.forward / "x.test").read_bytes() == before


# -- wait ------------------------------------------------------------------------------------


def test_wait_answers_at_once_when_enough_messages_already_match(lab: Lab, client: TestClient) -> None:
    for number in range(3):
        lab.numbered(number, subject="ready")
    started = time.monotonic()
    response = client.get("/api/v1/wait", params={"query": "subject:ready", "count": 2, "timeout": 30})
    assert time.monotonic() - started < TIMEOUT / 2
    assert response.status_code == 200
    assert response.json()["matched"] == 2
    assert [message["message_id"] for message in response.json()["messages"]] == ["0@x.test", "1@x.test"]


def test_wait_times_out_with_a_408_and_what_it_has(lab: Lab, client: TestClient) -> None:
    lab.numbered(1, subject="some")
    response = client.get("/api/v1/wait", params={"query": "subject:some", "count": 2, "timeout": 0.2})
    assert response.status_code == 408
    assert response.json()["matched"] == 1
    assert response.json()["messages"][0]["subject"] == "some"


@pytest.mark.parametrize("params", [{"count": "0"}, {"count": "1001"}, {"timeout": "-1"}, {"timeout": "301"}])
def test_wait_refuses_bad_bounds(client: TestClient, params: dict[str, str]) -> None:
    response = client.get("/api/v1/wait", params=params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(next(iter(params)))


def test_a_wait_that_nothing_wakes_looks_once(tmp_path: Path) -> None:
    catalogue = CountingCatalogue(tmp_path / "catalogue.sqlite3")
    try:
        with TestClient(create_app(catalogue, tmp_path, None)) as client:
            assert client.get("/api/v1/wait", params={"timeout": 0.5}).status_code == 408
        assert catalogue.looks == 1  # no polling: without a commit, nothing is looked at again
    finally:
        catalogue.close()


class Served:
    """The app under a real uvicorn server, in a thread, on a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            threading.Event().wait(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        stop_streams(self.app)
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def test_wait_wakes_when_the_message_is_catalogued(lab: Lab) -> None:
    lab.numbered(1, subject="early")
    answers: list[httpx.Response] = []
    with Served(lab.app()) as url:
        waiting = threading.Thread(
            target=lambda: answers.append(
                httpx.get(f"{url}/api/v1/wait", params={"query": "subject:late", "timeout": 30}, timeout=60)
            )
        )
        started = time.monotonic()
        waiting.start()
        threading.Event().wait(0.3)  # the wait is under way (were it not, the answer would be the same)
        lab.numbered(2, subject="late")
        waiting.join(TIMEOUT)
    assert answers and answers[0].status_code == 200
    assert time.monotonic() - started < TIMEOUT
    assert [message["subject"] for message in answers[0].json()["messages"]] == ["late"]


def test_a_wait_ends_with_a_408_when_the_server_stops(lab: Lab) -> None:
    app = lab.app()
    answers: list[httpx.Response] = []
    with Served(app) as url:
        params = {"query": "subject:never", "timeout": "60"}
        waiting = threading.Thread(target=lambda: answers.append(httpx.get(f"{url}/api/v1/wait", params=params)))
        waiting.start()
        threading.Event().wait(0.3)
        started = time.monotonic()
        stop_streams(app)
        waiting.join(TIMEOUT)
    assert answers and answers[0].status_code == 408
    assert time.monotonic() - started < TIMEOUT


# -- which commits wake a wait (web/wakeups.py), and the wait's fast path (web/quick_wait.py) --


KEYED_QUERIES = [
    ("message-id:<k1@x.test>", None),
    ("message-id:k2@x.test", None),
    ("to:Bob@X.TEST", None),
    ("to:<carol@y.test> subject:keyed", None),
    ("from:alice@X.test", None),
    ("from:x.test", None),
    ("to:Y.TEST", None),
    ("domain:Y.test keyed", None),
    ("keyed", "y.test"),
    ("message-id:k3@x.test", "y.test"),
]


def test_a_wait_s_key_is_among_the_arrival_keys_of_every_message_its_query_matches(lab: Lab) -> None:
    """A wait sleeps until a commit brings its key: a key missing from a match's arrivals would sleep past it."""
    lab.deliver(b"Subject: keyed\nMessage-ID: <k1@x.test>\nTo: Bob@x.test\n\n1\n", recipients=("Bob@X.test",))
    lab.deliver(b"Subject: keyed\nMessage-ID: k2@x.test\n\n2\n", domain="y.test", recipients=("carol@Y.TEST",))
    lab.deliver(
        b"Subject: keyed\nMessage-ID: <k3@x.test>\nFrom: Alice <alice@X.TEST>\n\n3\n",
        domain="y.test",
        mail_from="<>",
        recipients=("dave@y.test", "erin@y.test"),
    )
    for text, domain in KEYED_QUERIES:
        query = search.parse(text)
        key = search.wake_key(query, domain)
        assert key is not None, text
        matched = lab.catalogue.matching(query, domain)
        assert matched, f"{text!r} matches none of the messages: the check below would hold for nothing"
        for summary in matched:
            assert key in lab.catalogue.arrivals(summary.seq - 1, summary.seq), (text, key)


class CountingCatalogue(Catalogue):
    """A real catalogue that counts the looks a wait or an event stream takes."""

    looks = 0

    def matching(self, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        self.looks += 1
        return super().matching(*args, **kwargs)  # type: ignore[arg-type]


def test_a_wait_for_one_message_id_looks_again_only_when_a_commit_brings_it(lab: Lab) -> None:
    lab.catalogue.close()
    lab.catalogue = CountingCatalogue(lab.catalogue.path)
    answers: list[httpx.Response] = []
    with Served(lab.app()) as url:
        params = {"query": "message-id:<9@x.test>", "timeout": "30"}
        waiting = threading.Thread(target=lambda: answers.append(httpx.get(f"{url}/api/v1/wait", params=params)))
        waiting.start()
        deadline = time.monotonic() + TIMEOUT
        while lab.catalogue.looks < 1 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        for number in range(1, 9):  # eight commits that bring other messages
            lab.numbered(number)
        threading.Event().wait(0.3)
        assert lab.catalogue.looks == 1 and not answers
        lab.numbered(9)
        waiting.join(TIMEOUT)
    assert answers and answers[0].status_code == 200
    assert [message["message_id"] for message in answers[0].json()["messages"]] == ["9@x.test"]
    assert lab.catalogue.looks == 2


def test_wakeups_remember_what_came_before_a_wait_registered_and_forget_below_their_floor(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        wakeups = Wakeups(lab.catalogue)
        first = ("message-id", "1@x.test")
        pending = asyncio.ensure_future(wakeups.next_arrival(first, after=0, timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        lab.numbered(2)  # another message: no wake
        await asyncio.sleep(0.2)
        assert not pending.done()
        lab.numbered(1)
        assert await asyncio.wait_for(pending, TIMEOUT) is True
        # A wait that looked before message 1 (seq 2) came, and registers after it was read: at once.
        assert await wakeups.next_arrival(first, after=1, timeout=TIMEOUT) is True
        # One that looked after it: nothing new for it.
        assert await wakeups.next_arrival(first, after=2, timeout=0.2) is False
        monkeypatch.setattr(wakeups_module, "HISTORY", 1)  # remember one key: the others are forgotten
        other = asyncio.ensure_future(wakeups.next_arrival(("message-id", "9@x.test"), after=2, timeout=TIMEOUT))
        await asyncio.sleep(0.05)
        lab.numbered(3)
        await asyncio.sleep(0.2)
        assert not other.done()
        assert wakeups.floor > 2
        # A wait from before the floor cannot be told what came for it: it looks again at once.
        assert await wakeups.next_arrival(first, after=2, timeout=TIMEOUT) is True
        other.cancel()
        wakeups.close()

    asyncio.run(scenario())


def test_a_plain_wait_takes_the_fast_path_and_answers_as_the_route_does(lab: Lab, client: TestClient) -> None:
    for number in range(3):
        lab.numbered(number, subject="alike")
    # `1e1` and a repeated `count` are for the route: the fast path reads plain digits given once.
    assert read_wait(b"query=subject%3Aalike&count=2&timeout=0") is not None
    assert read_wait(b"query=subject%3Aalike&count=2&timeout=1e1") is None
    assert read_wait(b"count=2&count=3") is None
    for count in ("2", "5"):
        quick = client.get("/api/v1/wait", params={"query": "subject:alike", "count": count, "timeout": "0"})
        routed = client.get("/api/v1/wait", params={"query": "subject:alike", "count": count, "timeout": "0e0"})
        assert quick.status_code == routed.status_code == (200 if count == "2" else 408)
        assert quick.content == routed.content
        assert quick.headers["content-type"] == routed.headers["content-type"]
        assert quick.headers["content-security-policy"] == routed.headers["content-security-policy"]


@pytest.mark.parametrize(
    "query_string",
    [
        b"count=0",
        b"count=1001",
        b"timeout=301",
        b"timeout=-1",
        b"count=01x",
        b"query=to%3A",
        b"domain=a..b",
        b"count=1&count=2",
    ],
)
def test_the_fast_path_leaves_what_it_does_not_read_plainly_to_the_route(query_string: bytes) -> None:
    assert read_wait(query_string) is None


# -- events ----------------------------------------------------------------------------------


class EventReader:
    """The events of one /events stream, as (id, event, data) or ("", "comment", text) for a comment."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self) -> tuple[str, str, str]:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line.startswith(":"):
                return ("", "comment", line[1:].strip())
            if not line:
                if fields.get("event") or fields.get("data"):
                    return (fields.get("id", ""), fields.get("event", "message"), fields.get("data", ""))
                fields.clear()
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise AssertionError("the event stream ended")

    def message(self) -> tuple[int, dict[str, object]]:
        while True:
            id, event, data = self.next()
            if event == "message":
                return int(id), json.loads(data)


def test_events_stream_each_new_message_and_resume_after_the_last_event_id(lab: Lab) -> None:
    lab.numbered(1, subject="before")
    with Served(lab.app(keepalive=0.2)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        with http.stream("GET", "/api/v1/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = EventReader(response)
            assert reader.next() == ("", "comment", "keepalive")  # nothing new yet: only what keeps it open
            lab.numbered(2, subject="second")
            lab.numbered(3, subject="third")
            first_id, first = reader.message()
            second_id, second = reader.message()
        assert (first["subject"], second["subject"]) == ("second", "third")
        assert second_id > first_id
        lab.numbered(4, subject="fourth")
        with http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(first_id)}) as response:
            reader = EventReader(response)
            assert [reader.message()[1]["subject"] for _ in range(2)] == ["third", "fourth"]
        with http.stream("GET", "/api/v1/events", params={"since": 0, "query": "subject:before"}) as response:
            assert reader.__class__(response).message()[1]["subject"] == "before"
        assert http.get("/api/v1/events", headers={"Last-Event-ID": "yesterday"}).status_code == 400


def test_deleted_messages_are_not_sent_and_stop_streams_ends_every_stream(lab: Lab) -> None:
    lab.numbered(1, subject="gone")
    lab.numbered(2, subject="kept")
    app = lab.app()
    with Served(app) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        assert http.delete("/api/v1/messages", params={"query": "subject:gone"}).json() == {"deleted": 1}
        with http.stream("GET", "/api/v1/events", params={"since": 0}) as response:
            reader = EventReader(response)
            assert reader.message()[1]["subject"] == "kept"
            stop_streams(app)
            with pytest.raises(AssertionError, match="ended"):
                reader.next()


# -- verify ----------------------------------------------------------------------------------


def sent(message_id: str, subject: str, *recipients: str, attachments: tuple[tuple[str, bytes], ...] = ()) -> dict:  # type: ignore[type-arg]
    return {
        "message_id": message_id,
        "rcpt_tos": list(recipients),
        "subject": subject,
        "attachments": [
            {"filename": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in attachments
        ],
    }


def test_verify_reports_as_the_cli_does_from_the_catalogue(lab: Lab, client: TestClient) -> None:
    lab.deliver(MULTIPART)  # Message-ID <m@x.test>, subject café, p.png
    lab.numbered(2)
    lab.numbered(2)  # the same message twice: duplicated
    document = {
        "version": 1,
        "messages": [
            sent("<m@x.test>", "café", "bob@x.test", attachments=(("p.png", b"hello"),)),
            sent("<2@x.test>", "n2", "bob@x.test"),
            sent("<3@x.test>", "n3", "bob@x.test"),
        ],
    }
    response = client.post(  # what `curl -d @latest.json` sends
        "/api/v1/verify", content=json.dumps(document), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200
    report = response.json()
    assert report == {
        "manifest": "request",
        "ok": False,
        "expected": 3,
        "delivered": 2,
        "missing": 1,
        "corrupted": 0,
        "duplicated": 1,
        "unsent": 0,
        "damaged": 0,
        "findings": [
            {"problem": "missing", "message_id": "<3@x.test>", "domain": "x.test"},
            {"problem": "duplicated", "message_id": "<2@x.test>", "domain": "x.test", "copies": 2},
        ],
    }


def test_verify_reads_a_batch_message_past_a_summarys_bounds_whole(lab: Lab, client: TestClient) -> None:
    parts = MAX_PARTS + 200
    attachment = b'--b\nContent-Disposition: attachment; filename="a.txt"\n\nx\n'
    message = b"Subject: many\nMessage-ID: <many@x.test>\nContent-Type: multipart/mixed; boundary=b\n\n"
    lab.deliver(message + attachment * parts + b"--b--\n")
    assert client.get("/api/v1/messages").json()["messages"][0]["problem"]  # the catalogue's summary gave up
    document = {"messages": [sent("<many@x.test>", "many", "bob@x.test", attachments=(("a.txt", b"x"),) * parts)]}
    report = client.post("/api/v1/verify", content=json.dumps(document)).json()
    assert (report["ok"], report["delivered"], report["findings"]) == (True, 1, [])


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"version": 2, "messages": []}', b'{"messages": [{}]}', b'{"messages": ""}', b"\xff"],
)
def test_verify_refuses_what_is_not_a_manifest(client: TestClient, body: bytes) -> None:
    response = client.post("/api/v1/verify", content=body)
    assert response.status_code == 400
    assert "manifest" in response.json()["error"]


def test_verify_latest_reads_the_configured_manifest(lab: Lab, tmp_path: Path) -> None:
    lab.numbered(1)
    path = tmp_path / "manifests" / "latest.json"
    with TestClient(lab.app(None)) as client:
        assert client.get("/api/v1/verify/latest").status_code == 404
    with TestClient(lab.app(path)) as client:
        assert "no manifest at" in client.get("/api/v1/verify/latest").json()["error"]
        path.parent.mkdir()
        path.write_text("{")
        assert client.get("/api/v1/verify/latest").status_code == 400
        manifest.write(path, manifest.loads(json.dumps({"messages": [sent("<1@x.test>", "n1", "bob@x.test")]})))
        report = client.get("/api/v1/verify/latest").json()
    assert (report["manifest"], report["ok"], report["delivered"], report["findings"]) == ("latest.json", True, 1, [])


# -- the OpenAPI document, and security headers ---------------------------------------------


def test_the_openapi_document_describes_every_route_and_its_errors(client: TestClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    paths = document["paths"]
    assert set(paths) == {
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/messages/{id}/raw",
        "/api/v1/messages/{id}/attachments/{n}",
        "/api/v1/messages/{id}/html",
        "/api/v1/domains",
        "/api/v1/wait",
        "/api/v1/events",
        "/api/v1/verify",
        "/api/v1/verify/latest",
        "/api/v1/health",
        "/api/v1/chaos",
    }
    assert "422" not in json.dumps(document)
    assert set(paths["/api/v1/messages"]["get"]["responses"]) == {"200", "400"}
    assert set(paths["/api/v1/wait"]["get"]["responses"]) == {"200", "400", "408"}
    assert {"200", "404", "410"} <= set(paths["/api/v1/messages/{id}"]["get"]["responses"])
    body = paths["/api/v1/verify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["required"] == ["messages"]
    for path in ("/api/v1/messages/{id}/raw", "/api/v1/messages/{id}/html", "/api/v1/messages/{id}/attachments/{n}"):
        assert set(paths[path]["get"]["responses"]["404"]["content"]) == {"application/json"}, path
    assert client.get("/docs").status_code == 404  # its UI would load from a CDN
    assert client.get("/redoc").status_code == 404


def test_every_response_says_nosniff_and_json_may_not_be_framed(client: TestClient) -> None:
    for path in ("/api/v1/messages", "/api/v1/messages/unknown", "/api/v1/openapi.json", "/", "/static/app.js"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "content-security-policy" in response.headers, path
    assert "frame-ancestors 'none'" in client.get("/api/v1/health").headers["content-security-policy"]


# -- hostile content ---------------------------------------------------------------------------

ODD_MESSAGES = {
    "8-bit junk in headers and body": (
        b"Subject: \xff\xfe caf\xe9 \x00\x1b[2J\nFrom: \xc3(\nTo: <\xff@x.test>\n\n\xff\xfe\x00 body\n"
    ),
    "an unknown charset": b"Subject: =?x-unknown?q?abc?=\nContent-Type: text/plain; charset=x-unknown\n\nbody\n",
    "a bad base64 attachment": (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: attachment; filename=\xff\xfe.bin\n"
        b"Content-Transfer-Encoding: base64\n\n!!!not base64===\n--b--\n"
    ),
    "an HTML body in a bad charset": (
        b"Content-Type: text/html; charset=utf-7\n\n+ADw-script+AD4-alert(1)+ADw-/script+AD4-\n"
    ),
    "a lone surrogate's bytes": (
        b"Subject: \xed\xa0\x80\nContent-Type: text/html; charset=utf-8\n\n<p>\xed\xa0\x80</p>\n"
    ),
    "no header block": b"\n\n\n",
    "a header of a megabyte": b"X-Long: " + b"a" * 1_000_000 + b"\nSubject: long\n\nx\n",
}


def every_route(client: TestClient, id: str) -> list[httpx.Response]:
    return [
        client.get(f"/api/v1/messages/{id}"),
        client.get(f"/api/v1/messages/{id}/raw"),
        client.get(f"/api/v1/messages/{id}/html"),
        client.get(f"/api/v1/messages/{id}/attachments/0"),
        client.get("/", params={"id": id}),
    ]


def test_no_odd_message_makes_a_500(lab: Lab, client: TestClient) -> None:
    for message in ODD_MESSAGES.values():
        lab.deliver(message)
    listed = client.get("/api/v1/messages")
    assert listed.status_code == 200
    assert listed.json()["total"] == len(ODD_MESSAGES)
    for summary in listed.json()["messages"]:
        for response in every_route(client, summary["id"]):
            assert response.status_code in (200, 404), (summary, response.text[:300])
    for path in ("/api/v1/domains", "/", "/api/v1/health"):
        assert client.get(path).status_code == 200


def test_no_message_of_the_hostile_corpus_makes_a_500(lab: Lab, client: TestClient) -> None:
    for name, message in hostile_messages().items():
        lab.deliver(message)
        id = only_id(client, "")
        for response in every_route(client, id):
            assert response.status_code in (200, 404), (name, response.status_code, response.text[:300])
        assert client.get("/api/v1/messages").status_code == 200
        client.delete("/api/v1/messages")  # one at a time: the forward file keeps them, the catalogue hides them
