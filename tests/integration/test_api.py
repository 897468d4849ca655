"""The inspector's JSON API (/api/v1) against the real containers: a server, the inspector running `serve`.

Batches come from the agent container; hostile messages go raw over SMTP to the server's
published port. One lab serves the whole module: each test sends to its own domains and looks
only at them, and the tests that restart the inspector or rebuild its catalogue come last.
What the API answers is checked against what was sent: the agent's manifest, and the records
in the server's forward files (maillab_common.forward).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from maillab_common import manifest
from maillab_common.forward import Record, parse_records
from tests.hostile import CONTROL_PAYLOADS, ENCODED_WORD, MARKUP_PAYLOADS, multipart
from tests.integration.conftest import Lab, started_lab

pytestmark = pytest.mark.integration

SMTP_PORT = 2525
# Hostile lines longer than RFC 5321's 1,000 bytes reach the store only when the server allows them.
LONG_LINES = 4 * 1024 * 1024
WAIT = 60.0  # seconds a test waits for messages to be catalogued


# -- the lab ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_lab(images: dict[str, str]) -> Iterator[Lab]:
    """A lab as conftest's `lab`, shared by the module: its server published on a loopback port
    (for raw SMTP) and taking long lines, its inspector serving with the manifest of /verify/latest."""
    yield from started_lab(
        images,
        ("serve",),
        server_env={"MAILLAB_MAX_LINE_LENGTH": str(LONG_LINES)},
        server_ports=(SMTP_PORT,),
        inspector_env={"MAILLAB_MANIFEST": "/manifests/latest.json"},
    )


@pytest.fixture
def api(api_lab: Lab) -> Iterator[httpx.Client]:
    """An HTTP client for the lab's API: paths are relative to /api/v1."""
    with client_of(api_lab) as client:
        yield client


def client_of(lab: Lab) -> httpx.Client:
    """A client for the API where it is now: a restarted container is published on another host port."""
    return httpx.Client(base_url=lab.api_url, timeout=WAIT + 30)


def send_batch(lab: Lab, name: str, *arguments: str) -> manifest.Manifest:
    """Run the agent's batch with `arguments`, its manifest at /manifests/<name>.json; returns the manifest."""
    path = f"/manifests/{name}.json"
    code, output = lab.run_agent("batch", "--manifest", path, *arguments)
    assert code == 0, output
    sent = manifest.loads(lab.read_manifest(path))
    assert all(message.accepted for message in sent.messages), output
    return sent


def send_one(lab: Lab, *arguments: str) -> None:
    code, output = lab.run_agent("send", *arguments)
    assert code == 0, output


def wait_for(api: httpx.Client, count: int, **selection: str) -> list[dict[str, Any]]:
    """The first `count` messages of the selection (domain=, query=), once catalogued; fails after WAIT seconds."""
    response = api.get("/wait", params={**selection, "count": count, "timeout": WAIT})
    assert response.status_code == 200, f"{selection}: {response.status_code} {response.text[:2000]}"
    found: list[dict[str, Any]] = response.json()["messages"]
    return found


def listed(api: httpx.Client, **params: str | int) -> dict[str, Any]:
    response = api.get("/messages", params=params)
    assert response.status_code == 200, f"{params}: {response.status_code} {response.text[:2000]}"
    page: dict[str, Any] = response.json()
    return page


def every_message(api: httpx.Client, limit: int = 1000, **params: str) -> list[dict[str, Any]]:
    """Every message of the selection, newest first, page by page through the cursor."""
    messages: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = listed(api, **params, limit=limit, cursor=cursor)
        messages += page["messages"]
        if page["next_cursor"] is None:
            return messages
        cursor = page["next_cursor"]


def forward_messages(lab: Lab, into: Path, domain: str) -> dict[str, bytes]:
    """The messages stored in `domain`'s forward file, by Message-ID (without <>), as the server stored them."""
    content = lab.forward_files(into)[domain].read_bytes()
    items, leftover = parse_records(content)
    assert leftover == b""
    stored = {}
    for item in items:
        assert isinstance(item, Record), item
        parsed = email.message_from_bytes(item.delivery.message, policy=email.policy.default)
        stored[str(parsed["Message-ID"]).strip("<>")] = item.delivery.message
    return stored


def ids_of(sent: manifest.Manifest) -> set[str]:
    return {message.message_id.strip("<>") for message in sent.messages}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- listing, one message, its parts ---------------------------------------------------


def test_a_batch_is_listed_newest_first_and_paged_through_once(api_lab: Lab, api: httpx.Client, tmp_path: Path) -> None:
    sent = send_batch(api_lab, "list", "--count", "12", "--seed", "101", "--domains", "list.test", "--concurrency", "1")
    wait_for(api, 12, domain="list.test")

    page = listed(api, domain="list.test")
    assert page["total"] == 12 and page["next_cursor"] is None
    assert {message["message_id"] for message in page["messages"]} == ids_of(sent)
    # Newest first: the reverse of the order the server wrote them in (sent one at a time).
    written = list(forward_messages(api_lab, tmp_path, "list.test"))
    assert [message["message_id"] for message in page["messages"]] == written[::-1]
    received = [message["received"] for message in page["messages"]]
    assert received == sorted(received, reverse=True)
    assert all(message["domain"] == "list.test" for message in page["messages"])
    by_id = {message.message_id.strip("<>"): message for message in sent.messages}
    for summary in page["messages"]:
        expected = by_id[summary["message_id"]]
        assert summary["subject"] == expected.subject
        assert summary["envelope"] == {"from": expected.mail_from, "to": list(expected.rcpt_tos)}
        assert summary["attachments"] == len(expected.attachments) == 1
        assert summary["problem"] == ""

    # Pages of 5 through the cursor: each message once, in the same order.
    pages = []
    cursor = ""
    while True:
        part = listed(api, domain="list.test", limit=5, cursor=cursor)
        assert part["total"] == 12
        pages.append([message["message_id"] for message in part["messages"]])
        if part["next_cursor"] is None:
            break
        cursor = part["next_cursor"]
    assert [len(ids) for ids in pages] == [5, 5, 2]
    assert [id for ids in pages for id in ids] == [message["message_id"] for message in page["messages"]]

    # Without a domain, the whole catalogue: these among them, once each.
    everything = every_message(api, limit=7)
    assert len(everything) == listed(api)["total"] >= 12
    assert len({message["id"] for message in everything}) == len(everything)
    assert ids_of(sent) <= {message["message_id"] for message in everything}
    assert api.get("/messages", params={"cursor": "not a cursor"}).status_code == 400


def test_a_message_its_raw_bytes_and_attachments_are_what_was_sent(
    api_lab: Lab, api: httpx.Client, tmp_path: Path
) -> None:
    sent = send_batch(
        api_lab, "detail", "--count", "3", "--seed", "102", "--attachments", "2", "--html", "--domains", "detail.test"
    )
    wait_for(api, 3, domain="detail.test")
    stored = forward_messages(api_lab, tmp_path, "detail.test")
    page = listed(api, domain="detail.test")
    assert page["total"] == 3

    for summary in page["messages"]:
        expected = next(message for message in sent.messages if message.message_id == f"<{summary['message_id']}>")
        response = api.get(f"/messages/{summary['id']}")
        assert response.status_code == 200, response.text
        detail = response.json()
        assert detail["id"] == summary["id"] and detail["message_id"] == summary["message_id"]
        assert detail["subject"] == expected.subject
        assert detail["envelope"]["from"] == expected.mail_from and detail["envelope"]["to"] == list(expected.rcpt_tos)
        assert [
            (attachment["index"], attachment["filename"], attachment["sha256"]) for attachment in detail["attachments"]
        ] == [(index, attachment.filename, attachment.sha256) for index, attachment in enumerate(expected.attachments)]
        assert [attachment["size"] for attachment in detail["attachments"]] == [a.size for a in expected.attachments]
        # The bodies, as Python's email package reads them from the stored message.
        parsed = email.message_from_bytes(stored[summary["message_id"]], policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
        assert plain is not None and html is not None
        assert detail["text"].strip() == plain.get_content().strip() != ""
        assert detail["html"].strip() == html.get_content().strip() != ""
        assert ("Subject", expected.subject) in [tuple(header) for header in detail["headers"]]

        raw = api.get(f"/messages/{summary['id']}/raw")
        assert raw.status_code == 200
        assert raw.headers["content-type"].startswith("message/rfc822")
        # As the agent sent it: the forward file's LF line endings back to SMTP's CRLF.
        assert raw.content == stored[summary["message_id"]].replace(b"\n", b"\r\n")

        for index, attachment in enumerate(expected.attachments):
            download = api.get(f"/messages/{summary['id']}/attachments/{index}")
            assert download.status_code == 200
            assert sha256(download.content) == attachment.sha256
            assert len(download.content) == attachment.size
            assert download.headers["content-disposition"].startswith("attachment")
        beyond = api.get(f"/messages/{summary['id']}/attachments/{len(expected.attachments)}")
        assert beyond.status_code == 404 and "error" in beyond.json()

        preview = api.get(f"/messages/{summary['id']}/html")
        assert preview.status_code == 200 and preview.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in preview.headers["content-security-policy"]
        assert "sandbox" in preview.headers["content-security-policy"]


def test_domains_count_their_messages(api_lab: Lab, api: httpx.Client) -> None:
    send_batch(api_lab, "domains", "--count", "5", "--seed", "103", "--domains", "one.test,two.test,three.test")
    for domain, count in (("one.test", 2), ("two.test", 2), ("three.test", 1)):
        wait_for(api, count, domain=domain)
    response = api.get("/domains")
    assert response.status_code == 200
    domains = {entry["domain"]: entry for entry in response.json()}
    assert [entry["domain"] for entry in response.json()] == sorted(domains)
    assert {name: domains[name]["count"] for name in ("one.test", "two.test", "three.test")} == {
        "one.test": 2,
        "two.test": 2,
        "three.test": 1,
    }
    for name in ("one.test", "two.test", "three.test"):
        newest = listed(api, domain=name, limit=1)["messages"][0]
        assert domains[name]["last_received"] == newest["received"]
    for name, entry in domains.items():  # every domain's count is what its listing says
        assert entry["count"] == listed(api, domain=name, limit=1)["total"], name


# -- wait and events -------------------------------------------------------------------


@dataclass
class Answer:
    response: httpx.Response | None = None
    at: float = 0.0


def test_wait_answers_as_soon_as_the_batch_lands_and_408_with_what_it_has(api_lab: Lab, api: httpx.Client) -> None:
    answer = Answer()

    def waiting() -> None:
        answer.response = api.get("/wait", params={"domain": "wait.test", "count": 5, "timeout": 120})
        answer.at = time.monotonic()

    waiter = threading.Thread(target=waiting)
    started = time.monotonic()
    waiter.start()
    try:
        sent = send_batch(api_lab, "wait", "--count", "5", "--seed", "104", "--domains", "wait.test")
        sent_at = time.monotonic()
    finally:
        waiter.join(timeout=150)
    assert answer.response is not None, "the wait did not answer"
    assert answer.response.status_code == 200, answer.response.text
    document = answer.response.json()
    assert document["matched"] == 5
    assert {message["message_id"] for message in document["messages"]} == ids_of(sent)
    # As soon as the batch landed, not at the timeout: within seconds of the agent's last 250.
    assert answer.at - sent_at < 10, f"the wait answered {answer.at - sent_at:.1f}s after the batch was sent"
    assert answer.at - started < 110

    # Messages that arrived before the call count: an immediate answer.
    before = time.monotonic()
    again = api.get("/wait", params={"domain": "wait.test", "count": 5, "timeout": 30})
    assert again.status_code == 200 and again.json()["matched"] == 5
    assert time.monotonic() - before < 10

    # More than there are: 408 after the timeout, with the five it has.
    before = time.monotonic()
    timed_out = api.get("/wait", params={"domain": "wait.test", "count": 6, "timeout": 1})
    assert timed_out.status_code == 408
    assert time.monotonic() - before >= 1
    assert timed_out.json()["matched"] == 5
    assert {message["message_id"] for message in timed_out.json()["messages"]} == ids_of(sent)


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    data: dict[str, Any]


def read_events(lines: Iterator[str], wanted: int) -> list[Event]:
    """The first `wanted` message events of an SSE stream (comments and the retry field skipped)."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                events.append(Event(fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])))
                if len(events) == wanted:
                    return events
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    raise AssertionError(f"the stream ended after {len(events)} of {wanted} events")


def test_events_stream_new_messages_and_resume_after_last_event_id(api_lab: Lab, api: httpx.Client) -> None:
    timeout = httpx.Timeout(10, read=WAIT)
    with api.stream("GET", "/events", params={"domain": "events.test"}, timeout=timeout) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:"), "the stream opens with its retry field"
        # The events of messages sent while the stream is open wait in the socket.
        sent = send_batch(
            api_lab, "events", "--count", "3", "--seed", "105", "--domains", "events.test", "--concurrency", "1"
        )
        events = read_events(lines, 3)
    assert [event.kind for event in events] == ["message"] * 3
    assert {event.data["message_id"] for event in events} == ids_of(sent)
    assert all(event.data["domain"] == "events.test" for event in events)
    numbers = [int(event.id) for event in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    # A client that saw the first event reconnects: it gets the two after it, in order.
    with api.stream(
        "GET", "/events", params={"domain": "events.test"}, headers={"Last-Event-ID": events[0].id}, timeout=timeout
    ) as resumed:
        assert resumed.status_code == 200
        again = read_events(resumed.iter_lines(), 2)
    assert [(event.id, event.data) for event in again] == [(event.id, event.data) for event in events[1:]]

    # `since=0`: the whole history of the selection.
    with api.stream("GET", "/events", params={"domain": "events.test", "since": 0}, timeout=timeout) as history:
        assert [event.id for event in read_events(history.iter_lines(), 3)] == [event.id for event in events]
    assert api.get("/events", headers={"Last-Event-ID": "not a number"}).status_code == 400


# -- verify and delete -----------------------------------------------------------------


def test_verify_reports_a_delivered_batch_and_a_missing_message(api_lab: Lab, api: httpx.Client) -> None:
    sent = send_batch(
        api_lab, "latest", "--count", "4", "--seed", "106", "--attachments", "2", "--domains", "verify.test"
    )
    wait_for(api, 4, domain="verify.test")
    text = api_lab.read_manifest("/manifests/latest.json")

    posted = api.post("/verify", content=text, headers={"Content-Type": "application/json"})
    assert posted.status_code == 200, posted.text
    report = posted.json()
    assert report["ok"] is True, report
    assert (report["expected"], report["delivered"], report["missing"], report["corrupted"]) == (4, 4, 0, 0)
    assert report["duplicated"] == 0 and report["findings"] == []

    latest = api.get("/verify/latest")
    assert latest.status_code == 200, latest.text
    assert {key: value for key, value in latest.json().items() if key != "manifest"} == {
        key: value for key, value in report.items() if key != "manifest"
    }
    assert latest.json()["manifest"] == "latest.json"

    # One message more than was sent: missing, and named.
    document = json.loads(text)
    ghost = dict(document["messages"][0], message_id="<never-sent@maillab-agent.test>")
    document["messages"].append(ghost)
    worse = api.post("/verify", json=document)
    assert worse.status_code == 200, worse.text
    assert worse.json()["ok"] is False and worse.json()["missing"] == 1
    domain = sent.messages[0].domains()[0]
    assert worse.json()["findings"] == [
        {"problem": "missing", "message_id": "<never-sent@maillab-agent.test>", "domain": domain}
    ]

    refused = api.post("/verify", content=b"{not json", headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and isinstance(refused.json()["error"], str)


def test_delete_hides_messages_from_every_view_but_touches_no_other(api_lab: Lab, api: httpx.Client) -> None:
    send_batch(api_lab, "delete", "--count", "8", "--seed", "107", "--domains", "gone.test,keep.test")
    gone = wait_for(api, 4, domain="gone.test")
    wait_for(api, 4, domain="keep.test")

    deleted = api.delete("/messages", params={"domain": "gone.test"})
    assert deleted.status_code == 200 and deleted.json() == {"deleted": 4}
    assert listed(api, domain="gone.test") == {"total": 0, "messages": [], "next_cursor": None}
    assert not [entry for entry in api.get("/domains").json() if entry["domain"] == "gone.test"]
    assert all(message["domain"] != "gone.test" for message in every_message(api))
    hidden = api.get("/wait", params={"domain": "gone.test", "count": 1, "timeout": 1})
    assert hidden.status_code == 408 and hidden.json() == {"matched": 0, "messages": []}
    for message in gone:
        for path in ("", "/raw", "/attachments/0"):
            response = api.get(f"/messages/{message['id']}{path}")
            assert response.status_code == 404 and "error" in response.json(), path
    assert api.delete("/messages", params={"domain": "gone.test"}).json() == {"deleted": 0}

    # By query: one message of keep.test, the rest stay.
    assert listed(api, domain="keep.test")["total"] == 4
    by_query = api.delete("/messages", params={"domain": "keep.test", "query": 'subject:"message 2 of 8"'})
    assert by_query.status_code == 200 and by_query.json() == {"deleted": 1}
    kept = listed(api, domain="keep.test")
    assert kept["total"] == 3
    assert not [message for message in kept["messages"] if message["subject"].endswith("message 2 of 8")]
    assert {entry["domain"]: entry["count"] for entry in api.get("/domains").json()}["keep.test"] == 3


# -- the query syntax and errors -------------------------------------------------------


def test_the_query_syntax_narrows_the_list(api_lab: Lab, api: httpx.Client) -> None:
    send_one(api_lab, "--from", "alice@sender.test", "--to", "bob@query.test", "--subject", "quarterly report")
    send_one(api_lab, "--from", "carol@sender.test", "--to", "xbob@query.test", "--subject", "weekly notes")
    send_batch(api_lab, "query", "--count", "2", "--seed", "108", "--domains", "query.test", "--attachments", "1")
    wait_for(api, 4, domain="query.test")

    def subjects(query: str) -> list[str]:
        page = listed(api, query=query, domain="query.test")
        assert page["total"] == len(page["messages"])
        return sorted(message["subject"] for message in page["messages"])

    batch = ["maillab batch 108 message 1 of 2", "maillab batch 108 message 2 of 2"]
    assert subjects("") == sorted(["quarterly report", "weekly notes", *batch])
    assert subjects("domain:query.test") == subjects("")
    assert subjects("domain:list.test") == []
    # Whole addresses, never a part of one; the domain in any case.
    assert subjects("to:bob@query.test") == ["quarterly report"]
    assert subjects("to:bob@QUERY.Test") == ["quarterly report"]
    assert subjects("to:xbob@query.test") == ["weekly notes"]
    assert subjects("to:ob@query.test") == []
    assert subjects("from:alice@sender.test") == ["quarterly report"]
    assert subjects("from:sender.test") == ["quarterly report", "weekly notes"]
    assert subjects("-from:sender.test") == batch
    assert subjects("subject:quarterly") == ["quarterly report"]
    assert subjects('subject:"quarterly report"') == ["quarterly report"]
    assert subjects('subject:"report quarterly"') == []
    assert subjects("quarterly") == ["quarterly report"]
    assert subjects("has:attachment") == batch
    assert subjects("-has:attachment") == ["quarterly report", "weekly notes"]
    assert subjects("larger:5KiB") == batch
    assert subjects("smaller:5KiB") == ["quarterly report", "weekly notes"]
    assert subjects("has:attachment subject:1") == batch[:1]
    # The same syntax in the wait and without a domain.
    assert [message["subject"] for message in wait_for(api, 1, query="to:bob@query.test")] == ["quarterly report"]
    assert listed(api, query="from:alice@sender.test")["total"] == 1


def test_a_malformed_query_is_a_400_naming_the_position(api: httpx.Client) -> None:
    for path, method in (("/messages", "GET"), ("/wait", "GET"), ("/messages", "DELETE")):
        response = api.request(method, path, params={"query": "hello nosuchfield:x", "timeout": 0})
        assert response.status_code == 400, (method, path, response.text)
        body = response.json()
        assert body["position"] == 6, body
        assert "7" in body["error"] and "nosuchfield" in body["error"], body
    unterminated = api.get("/messages", params={"query": 'subject:"never closed'})
    assert unterminated.status_code == 400
    assert 0 <= unterminated.json()["position"] <= len('subject:"never closed')
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "many"}, {"domain": "not a domain!"}):
        response = api.get("/messages", params=bad)
        assert response.status_code == 400 and isinstance(response.json()["error"], str), (bad, response.text)


def test_an_unknown_id_is_a_404_with_an_error(api: httpx.Client) -> None:
    for path in ("", "/raw", "/html", "/attachments/0"):
        response = api.get(f"/messages/0123456789abcdef{path}")
        assert response.status_code == 404, (path, response.text)
        assert isinstance(response.json()["error"], str) and response.json()["error"]


# -- hostile content -------------------------------------------------------------------


def hostile_messages() -> dict[str, bytes]:
    """Messages to take apart: broken MIME, huge headers, bad charsets, 8-bit junk, markup and controls."""
    controls = "".join(CONTROL_PAYLOADS).replace("\x00", "")
    return {
        "controls and markup in every header": (
            f"From: {controls} <x@hostile.test>\nTo: {''.join(MARKUP_PAYLOADS)} <y@hostile.test>\n"
            f"Subject: {controls}{''.join(MARKUP_PAYLOADS)}\nMessage-ID: <{controls}>\nDate: {controls}\n\n{controls}\n"
        ).encode(),
        "8-bit junk everywhere": b"From: \xff\xfe@\x80.test\nSubject: \xc3\x28\xa0\xa1 \xf0\x28\x8c\x28\n"
        b"Content-Type: text/plain\n\n\xff\xfe\xfd junk \xc0\xaf\n",
        "charsets that do not exist": b"Subject: =?x-no-such?q?abc?= =?utf-8?b?!!!?= =?utf-8?q?=ZZ?=\n"
        b"From: =?unknown-8bit?b?/w==?= <a@hostile.test>\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\nContent-Transfer-Encoding: 8bit\n\n\xe9t\xe9\n",
        "multipart without a boundary": b"Subject: no boundary\nContent-Type: multipart/mixed\n\n--\nx\n",
        "multipart never closed, bad base64": (
            b"Subject: unclosed\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
            b'Content-Type: application/pdf; name="../../etc/passwd"\n'
            b'Content-Disposition: attachment; filename="../../../etc/passwd\x1b[31m.pdf"\n'
            b"Content-Transfer-Encoding: base64\n\n!!!not base64 at all===\n--b\n"
            b"Content-Type: text/html; charset=utf-8\n"
            b"Content-Disposition: attachment; filename*=utf-8''%ff%fe%00.html\n\n"
            b"<script>alert(1)</script>\n"
        ),
        "a subject of 20,000 encoded words on one line": (
            f"Subject: {' '.join([ENCODED_WORD] * 20_000)}\n\nx\n".encode()
        ),
        "a header line of a megabyte": b"X-Long: " + b"a" * 1024 * 1024 + b"\nSubject: long\n\nx\n",
        "a To of 20,000 addresses": (
            f"Subject: s\nTo: {', '.join(f'u{n}@x.test' for n in range(20_000))}\n\nx\n".encode()
        ),
        "2,000 attachments": multipart(["Content-Disposition: attachment; filename=a\n\nx"] * 2000),
        "MIME nested 1,000 deep": b"Subject: nested\n"
        + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (n, n) for n in range(1000)),
        "no header at all": b"\njust a body, no header\n",
        "NUL bytes": b"Subject: nul\x00byte\nFrom: a\x00@hostile.test\n\nbody\x00\x00\n",
        "HTML that acts": b"Subject: html\nContent-Type: text/html\n\n<meta http-equiv=refresh content=0;url=http://evil.test/>"
        b"<img src=http://evil.test/x onerror=alert(1)><script>document.title='PWNED'</script>\n",
        "mbox From lines in the body": b"Subject: from lines\n\nFrom here\n>From there\n>>From everywhere\n.\n..\n",
    }


def as_stored(message: bytes) -> bytes:
    """What the server stores of a message sent with `crlf`: LF line ends."""
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def crlf(message: bytes) -> bytes:
    """The message with SMTP's line ends: smtplib sends bytes as they are (it only stuffs dots)."""
    return as_stored(message).replace(b"\n", b"\r\n")


def test_hostile_content_never_makes_an_endpoint_fail(api_lab: Lab, api: httpx.Client) -> None:
    messages = hostile_messages()
    host, port = api_lab.server.get_container_host_ip(), int(api_lab.server.get_exposed_port(SMTP_PORT))
    with smtplib.SMTP(host, port, timeout=60) as smtp:
        for number, body in enumerate(messages.values()):
            sender = "" if number % 3 == 0 else f"sender{number}@hostile.test"  # the null sender too
            refused = smtp.sendmail(sender, [f"h{number}@hostile.test"], crlf(body))
            assert refused == {}
    wait_for(api, len(messages), domain="hostile.test")

    stored = {as_stored(body) for body in messages.values()}
    found = every_message(api, domain="hostile.test")
    assert len(found) == len(messages)
    statuses: list[tuple[str, int]] = []

    def get(path: str, **params: str | int) -> httpx.Response:
        response = api.get(path, params=params)
        statuses.append((path, response.status_code))
        assert response.status_code < 500, f"{path} {params}: {response.status_code} {response.text[:500]}"
        return response

    for summary in found:
        detail = get(f"/messages/{summary['id']}")
        assert detail.status_code == 200, detail.text[:500]
        raw = get(f"/messages/{summary['id']}/raw")
        assert raw.status_code == 200 and raw.content.replace(b"\r\n", b"\n") in stored
        get(f"/messages/{summary['id']}/html")
        attachments = detail.json()["attachments"]
        for index in sorted({0, 1, len(attachments) - 1, len(attachments), len(attachments) + 1}):
            if index >= 0:
                get(f"/messages/{summary['id']}/attachments/{index}")
        get("/messages", query=f"message-id:{summary['message_id'][:200]}" if summary["message_id"] else "x")
    for query in ("PWNED", '"<script>"', "subject:PWNED", "from:hostile.test", "filename:passwd", "has:attachment"):
        get("/messages", domain="hostile.test", query=query)
    get("/domains")
    get("/health")
    get("/wait", domain="hostile.test", count=len(messages), timeout=0)
    with api.stream("GET", "/events", params={"domain": "hostile.test", "since": 0}) as stream:
        assert stream.status_code == 200
        events = read_events(stream.iter_lines(), len(messages))
    assert {event.data["id"] for event in events} == {summary["id"] for summary in found}
    assert api.post("/verify", json={"messages": []}).status_code < 500
    assert len(statuses) > 4 * len(messages)


# -- restarts and rebuilds: last, as they change the inspector -------------------------


def snapshot(api: httpx.Client, domain: str) -> list[dict[str, Any]]:
    return every_message(api, domain=domain)


def test_the_catalogue_survives_a_restart_and_is_rebuilt_when_deleted(api_lab: Lab, api: httpx.Client) -> None:
    send_batch(api_lab, "restart", "--count", "6", "--seed", "109", "--domains", "restart.test,again.test")
    wait_for(api, 3, domain="restart.test")
    wait_for(api, 3, domain="again.test")
    before = {domain: snapshot(api, domain) for domain in ("restart.test", "again.test")}
    shown = {message["id"]: message for message in every_message(api)}
    details = {message["id"]: api.get(f"/messages/{message['id']}").json() for message in before["restart.test"]}

    inspector = api_lab.start_inspector()  # the same container, restarted: its catalogue stays
    with client_of(api_lab) as restarted:
        assert {domain: snapshot(restarted, domain) for domain in before} == before
        assert {message["id"]: message for message in every_message(restarted)} == shown
        # What lands after the restart is catalogued once, after what was there.
        send_batch(api_lab, "restart-more", "--count", "2", "--seed", "110", "--domains", "restart.test")
        wait_for(restarted, 5, domain="restart.test")
        after_restart = snapshot(restarted, "restart.test")
    assert len(after_restart) == 5 and after_restart[2:] == before["restart.test"]

    removed = inspector.exec(["sh", "-c", "rm /state/catalogue.sqlite3*"])
    assert removed.exit_code == 0, removed.output
    api_lab.start_inspector()  # no catalogue: rebuilt from the forward files
    with client_of(api_lab) as rebuilt:
        wait_for(rebuilt, 5, domain="restart.test")
        wait_for(rebuilt, 3, domain="again.test")
        assert snapshot(rebuilt, "restart.test") == after_restart
        assert snapshot(rebuilt, "again.test") == before["again.test"]
        for id, detail in details.items():
            assert rebuilt.get(f"/messages/{id}").json() == detail
        everything = {message["id"]: message for message in every_message(rebuilt)}
    # Every message shown before is shown again, the same (deleted ones come back: a tombstone lived in the catalogue).
    assert all(everything.get(id) == message for id, message in shown.items())
