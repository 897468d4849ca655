"""The Python client (clients/python, maillab_client) against a real lab on the host.

One lab for the module (tests.helpers.HostLab): `maillab_server serve` and `maillab_inspector
serve` as child processes on free ports, over a temporary folder; mail goes in through smtplib.
A `250` means the message is on disk, not yet catalogued: a test that wants a wait to time out
with mail already there first waits until the catalogue has it.
Each test owns a domain of its own (isolation without deleting anything), as the pytest
plugin's inbox does. The pure helpers (links, codes, printable text, URLs) have tables.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import ClassVar

import pytest

from maillab_client import (
    ApiError,
    Lab,
    LabUnavailable,
    MailLabError,
    Message,
    MessageTimeout,
    UnexpectedMessage,
)
from maillab_client.content import first_match, html_links, html_text, links, printable, text_links
from maillab_client.lab import base_url, smtp_address
from tests.helpers import HostLab, free_port

SENDER = HostLab.SENDER


@pytest.fixture(scope="module")
def host_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostLab]:
    with HostLab(tmp_path_factory.mktemp("client-lab")) as running:  # stopped whatever happens, start included
        yield running


@pytest.fixture
def lab(host_lab: HostLab) -> Iterator[Lab]:
    with Lab(host_lab.api_url, ("127.0.0.1", host_lab.smtp_port), timeout=10) as client:
        yield client


@pytest.fixture
def domain() -> str:
    return f"t{uuid.uuid4().hex[:12]}.test"


def mail(
    to: str | Sequence[str],
    subject: str,
    text: str = "hello",
    html: str | None = None,
    cc: Sequence[str] = (),
    attachments: Sequence[tuple[str, str, bytes]] = (),
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"App <{SENDER}>"
    message["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@sender.test>"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, kind, data in attachments:
        maintype, subtype = kind.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    """`action()` in a thread after `seconds`: mail that lands while the test is already waiting."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- health and addresses ----------------------------------------------------------------------


def test_health_answers_with_or_without_api_v1_in_the_url(host_lab: HostLab) -> None:
    for url in (host_lab.api_url, host_lab.api_url + "/", host_lab.api_url + "/api/v1", host_lab.api_url + "/api/v1/"):
        with Lab(url) as lab:
            assert lab.api_url == host_lab.api_url
            health = lab.health()
            assert health["status"] == "ok"
            assert isinstance(health["messages"], int)


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://127.0.0.1:8025", "http://127.0.0.1:8025"),
        ("http://127.0.0.1:8025/", "http://127.0.0.1:8025"),
        ("http://127.0.0.1:8025/api/v1", "http://127.0.0.1:8025"),
        (" http://localhost:9000/api/v1/ ", "http://localhost:9000"),
        ("https://lab.example/mail/api/v1", "https://lab.example/mail"),
        ("http://x", "http://x"),
    ],
)
def test_the_api_url_is_the_inspectors_without_api_v1(given: str, base: str) -> None:
    assert base_url(given) == base


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("", "not an http"),
        ("127.0.0.1:8025", "not an http"),
        ("ftp://x", "not an http"),
        ("http://", "not an http"),
        ("http:///path", "not an http"),
        ("http://[::1", "not an http"),
        ("http://127.0.0.1:8025/?x=1", "no query or fragment"),
        ("http://127.0.0.1:8025?", "no query or fragment"),
        ("http://127.0.0.1:8025/api/v1#top", "no query or fragment"),
        ("http://user:secret@127.0.0.1:8025", "no user or password"),
        ("http://user@127.0.0.1:8025", "no user or password"),
        ("http://127.0.0.1:0", "port 0"),
        ("http://127.0.0.1:99999", "not an http"),
        ("http://127.0.0.1:port", "not an http"),
        ("http://127.0.0.1:8025/a path", "space"),
        ("http://lab .test:8025", "space"),
        ("http://127.0.0.1:8025/\x00", "not an http"),
        ("http://caf\u00e9.test", "printable ASCII"),
    ],
)
def test_an_api_url_the_inspector_would_refuse_is_refused(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        base_url(given)
    with pytest.raises(ValueError, match=why):
        Lab(given)


@pytest.mark.parametrize(
    ("given", "address"),
    [("127.0.0.1:2525", ("127.0.0.1", 2525)), ("mail.test:25", ("mail.test", 25)), ("[::1]:2526", ("::1", 2526))],
)
def test_smtp_is_host_and_port(given: str, address: tuple[str, int]) -> None:
    assert smtp_address(given) == address


@pytest.mark.parametrize("given", ["127.0.0.1", ":2525", "host:", "host:port", "host:0", "host:70000"])
def test_an_smtp_address_without_a_port_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        smtp_address(given)


def test_from_env_reads_the_api_url_and_smtp_and_defaults_to_make_up() -> None:
    with Lab.from_env({"MAILLAB_API_URL": "http://127.0.0.1:9/api/v1", "MAILLAB_SMTP": "10.0.0.2:26"}) as lab:
        assert (lab.api_url, lab.smtp) == ("http://127.0.0.1:9", ("10.0.0.2", 26))
    with Lab.from_env({}) as lab:
        assert (lab.api_url, lab.smtp) == ("http://127.0.0.1:8025", ("127.0.0.1", 2525))
    with pytest.raises(ValueError, match="MAILLAB_SMTP"):
        Lab.from_env({"MAILLAB_SMTP": "nohost"})
    with pytest.raises(ValueError, match="MAILLAB_API_URL"):
        Lab.from_env({"MAILLAB_API_URL": "http://127.0.0.1:8025/?query"})


@pytest.mark.parametrize(
    ("env", "api_url", "smtp"),
    [
        ({"MAILLAB_HTTP_PORT": "18025"}, "http://127.0.0.1:18025", ("127.0.0.1", 2525)),
        ({"MAILLAB_SMTP_PORT": "12525"}, "http://127.0.0.1:8025", ("127.0.0.1", 12525)),
        (
            {"MAILLAB_HTTP_PORT": " 18025 ", "MAILLAB_SMTP_PORT": "12525"},
            "http://127.0.0.1:18025",
            ("127.0.0.1", 12525),
        ),
        (  # a URL or address given outright wins over the port
            {
                "MAILLAB_API_URL": "http://lab.test:9000",
                "MAILLAB_HTTP_PORT": "18025",
                "MAILLAB_SMTP": "mail.test:26",
                "MAILLAB_SMTP_PORT": "12525",
            },
            "http://lab.test:9000",
            ("mail.test", 26),
        ),
        ({"MAILLAB_HTTP_PORT": "", "MAILLAB_SMTP_PORT": ""}, "http://127.0.0.1:8025", ("127.0.0.1", 2525)),
    ],
)
def test_from_env_defaults_to_the_ports_make_up_publishes_on(
    env: dict[str, str], api_url: str, smtp: tuple[str, int]
) -> None:
    with Lab.from_env(env) as lab:
        assert (lab.api_url, lab.smtp) == (api_url, smtp)


@pytest.mark.parametrize("variable", ["MAILLAB_HTTP_PORT", "MAILLAB_SMTP_PORT"])
@pytest.mark.parametrize("value", ["0", "65536", "http", "-1"])
def test_from_env_refuses_a_port_that_is_not_one(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{variable}: '{value}' is not a port"):
        Lab.from_env({variable: value})


def test_a_closed_port_is_lab_unavailable_naming_the_url_and_make_up() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Lab(url, timeout=2) as lab:
        for call in (lab.health, lambda: lab.wait_for("x", timeout=1), lab.messages):
            with pytest.raises(LabUnavailable) as raised:
                call()
            assert raised.value.url.startswith(url + "/api/v1/")
            assert "make up" in str(raised.value) and url in str(raised.value)
            assert isinstance(raised.value, MailLabError)


def test_a_web_server_that_is_not_maillab_is_lab_unavailable(tmp_path: Path) -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        with Lab(f"http://127.0.0.1:{other.server_address[1]}") as lab, pytest.raises(LabUnavailable) as raised:
            lab.health()
        assert "not maillab's API" in str(raised.value) and "404" in str(raised.value)
    finally:
        other.shutdown()
        other.server_close()


def test_a_get_the_server_drops_unanswered_goes_once_more_on_a_new_connection() -> None:
    """What a keep-alive connection that the server closes just as a request goes out looks like."""
    listener = socket.create_server(("127.0.0.1", 0))
    answered: list[bytes] = []

    def serve() -> None:
        for attempt in range(2):
            connection, _ = listener.accept()
            with connection:
                request = connection.recv(65536)
                if attempt == 1:
                    answered.append(request)
                    body = b'{"status": "ok", "messages": 0, "latest": 0}'
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Lab(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5) as lab:
            assert lab.health() == {"status": "ok", "messages": 0, "latest": 0}
        assert answered[0].startswith(b"GET /api/v1/health ")
    finally:
        thread.join(5)
        listener.close()


class StoppingInspector(http.server.BaseHTTPRequestHandler):
    """An inspector that is stopping: it ends every wait at once with a 408 and what matched so far."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        StoppingInspector.asked.append(self.path)
        body = json.dumps({"messages": [summary("m1", "one so far")]}).encode()
        self.send_response(408)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_408_long_before_the_timeout_says_the_inspector_is_stopping_and_asks_once() -> None:
    StoppingInspector.asked = []
    stopping = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StoppingInspector)
    thread = threading.Thread(target=stopping.serve_forever, daemon=True)
    thread.start()
    try:
        with Lab(f"http://127.0.0.1:{stopping.server_address[1]}", timeout=5) as lab:
            started = time.monotonic()
            with pytest.raises(MailLabError) as raised:
                lab.wait_for("subject:reset", timeout=10)
            assert time.monotonic() - started < 5
            assert not isinstance(raised.value, MessageTimeout)
            assert "the inspector ended the wait early: it is stopping" in str(raised.value)
            assert "1 matched" in str(raised.value)
            with pytest.raises(MailLabError, match="ended the wait early"):
                lab.assert_no_message(within=10)
        assert len(StoppingInspector.asked) == 2  # one request each, no tight loop of them
        assert all(path.startswith("/api/v1/wait?") for path in StoppingInspector.asked)
    finally:
        stopping.shutdown()
        stopping.server_close()


def summary(id: str, subject: str, domain: str = "one.test") -> dict[str, object]:
    """A message summary as the API's lists and waits give it."""
    return {
        "id": id,
        "domain": domain,
        "subject": subject,
        "envelope": {"from": SENDER, "to": [f"a@{domain}"]},
        "message_id": f"{id}@x.test",
        "size": 100,
        "snippet": "hello",
        "problem": "",
        "received": "2026-11-29T09:00:00+00:00",
        "from": SENDER,
        "to": f"a@{domain}",
        "cc": "",
        "attachments": 0,
    }


def test_the_errors_say_what_failed_and_survive_pickling() -> None:
    unavailable = pickle.loads(pickle.dumps(LabUnavailable("http://127.0.0.1:1/api/v1/health", "ConnectError")))
    assert (unavailable.url, unavailable.reason) == ("http://127.0.0.1:1/api/v1/health", "ConnectError")
    refused = pickle.loads(pickle.dumps(ApiError("GET", "http://x/api/v1/wait", 400, "query: \x1b bad")))
    assert (refused.status, refused.error) == (400, "query: \x1b bad")
    assert str(refused) == "GET http://x/api/v1/wait: 400 query: \\x1b bad"


def every_error(lab: Lab) -> list[MailLabError]:
    """One of each exception type the client raises, carrying messages where it can."""
    first, second = Message(lab, summary("m1", "first")), Message(lab, summary("m2", "second"))
    return [
        MailLabError("the inspector ended the wait early: it is stopping"),
        LabUnavailable("http://127.0.0.1:1/api/v1/health", "ConnectError"),
        ApiError("GET", "http://x/api/v1/wait", 400, "query: \x1b bad"),
        MessageTimeout(
            query="subject:reset",
            count=2,
            timeout=0.5,
            domain="one.test",
            matched=[first],
            latest=[second, first],
            latest_problem="",
        ),
        MessageTimeout(query=None, count=1, timeout=3, domain=None, matched=[], latest=[], latest_problem="HTTP 500"),
        UnexpectedMessage(query="subject:x", within=2.0, domain="one.test", found=[first]),
    ]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("how", ["pickle", "copy"])
def test_every_error_survives_pickling_and_copying(index: int, how: str) -> None:
    with Lab("http://127.0.0.1:1") as lab:
        error = every_error(lab)[index]
    again = pickle.loads(pickle.dumps(error)) if how == "pickle" else copy.copy(error)
    assert type(again) is type(error)
    assert str(again) == str(error) and again.args == error.args
    fields = {name: value for name, value in vars(error).items() if not name.startswith("_")}
    assert {name: getattr(again, name) for name in fields} == fields  # messages compare by id
    for name in ("matched", "latest", "found"):
        for message in getattr(again, name, []):
            assert message.subject in ("first", "second")


def test_an_unpickled_message_keeps_what_it_read_but_not_its_lab() -> None:
    with Lab("http://127.0.0.1:1") as lab:
        message = Message(lab, summary("m1", "first"))
    again = pickle.loads(pickle.dumps(message))
    assert (again.id, again.subject, again.recipients, again.attachments) == ("m1", "first", ["a@one.test"], [])
    with pytest.raises(MailLabError, match="without its lab"):
        again.raw()


def test_an_error_status_is_an_api_error_with_the_apis_words(lab: Lab) -> None:
    with pytest.raises(ApiError) as raised:
        lab.wait_for("larger:ten", timeout=0)
    assert raised.value.status == 400 and "query" in raised.value.error
    with pytest.raises(ApiError) as unknown:
        lab.get("no-such-message")
    assert unknown.value.status == 404


def test_a_count_past_the_apis_1000_is_an_api_error_naming_count(lab: Lab, domain: str) -> None:
    # The limit the README documents: a wait returns at most one page of the API's.
    with pytest.raises(ApiError) as raised:
        lab.wait_for(domain=domain, count=1001, timeout=0)
    assert raised.value.status == 400
    assert raised.value.error == "count: Input should be less than or equal to 1000", raised.value.error
    with pytest.raises(MessageTimeout):  # 1000 is still a wait
        lab.wait_for(domain=domain, count=1000, timeout=0)


# -- waiting -------------------------------------------------------------------------------------


def test_wait_for_returns_as_soon_as_mail_arrives_after_the_call(lab: Lab, host_lab: HostLab, domain: str) -> None:
    later(0.3, lambda: host_lab.send(mail(f"alice@{domain}", "your password reset")))
    started = time.monotonic()
    [found] = lab.wait_for('subject:"password reset"', domain=domain, timeout=20)
    assert time.monotonic() - started < 10
    assert isinstance(found, Message)
    assert (found.subject, found.recipients, found.domain) == ("your password reset", [f"alice@{domain}"], domain)


def test_wait_for_counts_mail_already_there_and_returns_count_oldest_first(
    lab: Lab, host_lab: HostLab, domain: str
) -> None:
    for number in range(3):
        host_lab.send(mail(f"bob@{domain}", f"number {number}"))
    later(0.2, lambda: host_lab.send(mail(f"bob@{domain}", "number 3")))
    found = lab.wait_for(f"to:bob@{domain}", count=4, timeout=20)
    assert [message.subject for message in found] == ["number 0", "number 1", "number 2", "number 3"]
    assert [message.subject for message in lab.wait_for(domain=domain, count=2, timeout=0)] == ["number 0", "number 1"]


def test_a_timeout_says_what_was_waited_for_and_lists_what_arrived(lab: Lab, host_lab: HostLab, domain: str) -> None:
    host_lab.send(mail([f"carol@{domain}", f"dave@{domain}"], "welcome aboard"))
    host_lab.send(mail(f"erin@{domain}", "your receipt"))
    lab.wait_for(domain=domain, count=2, timeout=20)  # catalogued, not only on disk
    started = time.monotonic()
    with pytest.raises(MessageTimeout) as raised:
        lab.wait_for('subject:"password reset"', count=2, timeout=0.5, domain=domain)
    assert time.monotonic() - started >= 0.5
    error = raised.value
    assert isinstance(error, AssertionError) and isinstance(error, MailLabError)
    assert (error.query, error.count, error.timeout, error.domain, error.matched) == (
        'subject:"password reset"',
        2,
        0.5,
        domain,
        [],
    )
    assert [message.subject for message in error.latest] == ["your receipt", "welcome aboard"]
    text = str(error)
    assert f"""waited 0.5 s for 2 messages matching 'subject:"password reset"' in domain {domain}: 0 matched""" in text
    assert f"the latest 2 in domain {domain}, newest first:" in text
    assert f"'welcome aboard' from {SENDER} to carol@{domain}, dave@{domain}" in text
    assert text.index("your receipt") < text.index("welcome aboard")


def test_a_timeout_lists_the_matches_it_had(lab: Lab, host_lab: HostLab, domain: str) -> None:
    host_lab.send(mail(f"frank@{domain}", "one of three"))
    lab.wait_for(domain=domain, timeout=20)
    with pytest.raises(MessageTimeout) as raised:
        lab.wait_for(domain=domain, count=3, timeout=0.2)
    assert [message.subject for message in raised.value.matched] == ["one of three"]
    assert "1 matched\nmatched:\n  " in str(raised.value)


def test_a_timeout_with_nothing_in_the_domain_says_so(lab: Lab, domain: str) -> None:
    with pytest.raises(MessageTimeout, match=f"no message at all arrived in domain {domain}"):
        lab.wait_for("anything", timeout=0, domain=domain)


def test_a_hostile_subject_is_escaped_in_the_timeout_message(lab: Lab, host_lab: HostLab, domain: str) -> None:
    subject = "\x1b[2J\x1b]0;owned\x07red\x08fake\u202eevil"  # clear the screen, retitle, bell, backspace, bidi
    hostile = f"From: {SENDER}\r\nTo: mallory@{domain}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    host_lab.send(hostile, [f"mallory@{domain}"])
    lab.wait_for(domain=domain, timeout=20)
    for query, where in (("\x1b[31mnothing", domain), ("nothing", f"\x1b[31m{domain}")):
        with pytest.raises(ApiError) as refused:  # the API refuses controls, and its error is shown escaped
            lab.wait_for(query, timeout=0, domain=where)
        assert refused.value.status == 400 and "\x1b" not in str(refused.value)
    with pytest.raises(MessageTimeout) as raised:
        lab.wait_for("nothing-matches-this", timeout=0, domain=domain)
    text = str(raised.value)
    assert "\\x1b[2J\\x1b]0;owned\\x07red\\x08fake\\u202eevil" in text
    assert not any(char in text for char in "\x1b\x07\x08\u202e")
    assert all(char.isprintable() for line in text.split("\n") for char in line)


def test_a_wait_longer_than_the_servers_cap_is_several_waits_until_the_deadline(
    lab: Lab, host_lab: HostLab, domain: str
) -> None:
    lab.wait_max = 0.2  # the API's cap is 300 s; the same loop, in a time a test can wait
    later(0.7, lambda: host_lab.send(mail(f"grace@{domain}", "after three waits")))
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.subject == "after three waits"
    started = time.monotonic()
    with pytest.raises(MessageTimeout):
        lab.wait_for("nothing-matches-this", domain=domain, timeout=0.7)
    assert 0.7 <= time.monotonic() - started < 5


def test_a_wait_outlasts_the_clients_request_timeout(host_lab: HostLab, domain: str) -> None:
    with Lab(host_lab.api_url, timeout=0.3) as lab:
        later(1.0, lambda: host_lab.send(mail(f"heidi@{domain}", "slow mail")))
        [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.subject == "slow mail"


def test_a_wait_fetches_nothing_but_the_summaries(lab: Lab, host_lab: HostLab, domain: str) -> None:
    host_lab.send(mail(f"ivan@{domain}", "summary only", text="body 123456"))
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found._detail is None and found.snippet.startswith("body 123456")
    assert found.code() == "123456"
    assert found._detail is not None


def test_assert_no_message_returns_after_within_when_none_comes(lab: Lab, domain: str) -> None:
    started = time.monotonic()
    lab.assert_no_message(domain=domain, within=0.4)
    lab.assert_no_message("anything", within=0)
    assert time.monotonic() - started >= 0.4


def test_assert_no_message_fails_at_once_listing_the_one_that_came(lab: Lab, host_lab: HostLab, domain: str) -> None:
    later(0.2, lambda: host_lab.send(mail(f"judy@{domain}", "should not be sent")))
    started = time.monotonic()
    with pytest.raises(UnexpectedMessage) as raised:
        lab.assert_no_message("subject:sent", within=20, domain=domain)
    assert time.monotonic() - started < 10
    assert isinstance(raised.value, AssertionError) and isinstance(raised.value, MailLabError)
    assert [message.subject for message in raised.value.found] == ["should not be sent"]
    assert f"'should not be sent' from {SENDER} to judy@{domain}" in str(raised.value)
    with pytest.raises(UnexpectedMessage):  # one already there counts too
        lab.assert_no_message(domain=domain, within=0)
    lab.assert_no_message("subject:other", within=0, domain=domain)


# -- reading -------------------------------------------------------------------------------------


def test_messages_are_newest_first_through_every_page(lab: Lab, host_lab: HostLab, domain: str) -> None:
    for number in range(5):
        host_lab.send(mail(f"kim@{domain}", f"page {number}"))
    lab.wait_for(domain=domain, count=5, timeout=20)
    newest_first = [f"page {number}" for number in reversed(range(5))]
    assert [message.subject for message in lab.messages(domain=domain)] == newest_first
    lab.page_size = 2  # the API's pages hold up to 1000: smaller ones, so that three are followed
    assert [message.subject for message in lab.messages(domain=domain)] == newest_first
    assert [message.subject for message in lab.messages(domain=domain, limit=3)] == newest_first[:3]
    assert [message.subject for message in lab.messages("subject:3", domain=domain)] == ["page 3"]
    assert lab.messages(domain=domain, limit=0) == []
    assert {message.domain for message in lab.messages(limit=50)} >= {domain}


def test_a_message_has_its_envelope_headers_and_bodies(lab: Lab, host_lab: HostLab, domain: str) -> None:
    message = mail(
        [f"Liam <liam@{domain}>", f"mia@{domain}"], "all the fields", text="plain words", html="<p>rich words</p>"
    )
    message["Cc"] = f"Noah <noah@{domain}>"
    host_lab.send(message, [f"liam@{domain}", f"mia@{domain}", f"noah@{domain}", f"hidden@{domain}"])
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.sender == SENDER
    assert found.recipients == [f"liam@{domain}", f"mia@{domain}", f"noah@{domain}", f"hidden@{domain}"]
    assert found.to == [f"liam@{domain}", f"mia@{domain}"]
    assert found.cc == [f"noah@{domain}"]
    assert found.from_header == f"App <{SENDER}>"
    assert found.received.tzinfo is not None
    assert abs(datetime.now(UTC) - found.received) < timedelta(minutes=5)
    assert found.text == "plain words\n"
    assert found.html == "<p>rich words</p>\n"
    assert ("Subject", "all the fields") in found.headers
    assert found.message_id == message["Message-ID"].strip("<>")
    fetched = lab.get(found.id)
    assert fetched == found and fetched.text == found.text and fetched.attachments == []
    assert "all the fields" in repr(found)


def test_a_message_without_html_has_none(lab: Lab, host_lab: HostLab, domain: str) -> None:
    host_lab.send(mail(f"olivia@{domain}", "text only"))
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.html is None
    assert found.attachments == []


def test_links_and_code_come_from_both_bodies(lab: Lab, host_lab: HostLab, domain: str) -> None:
    text = "Reset it at https://app.test/reset?t=abc&u=1.\nOr see https://app.test/help.\n"
    html = (
        '<p>Reset <a href="https://app.test/reset?t=abc&amp;u=1">here</a>, '
        '<a href="https://app.test/account">account</a>.</p><p>Your code:</p><p>482913</p>'
    )
    host_lab.send(mail(f"pat@{domain}", "reset", text=text, html=html))
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.links() == ["https://app.test/reset?t=abc&u=1", "https://app.test/help", "https://app.test/account"]
    assert found.code() == "482913"  # only in the HTML
    assert found.code(r"t=(\w+)") == "abc"  # a group: its text
    assert found.code(r"\bnothing\b") is None


def test_attachments_have_their_bytes_and_sha256(lab: Lab, host_lab: HostLab, domain: str) -> None:
    pdf, data = b"%PDF-1.4 fake " + bytes(range(256)) * 40, b"a,b\n1,2\n"
    message = mail(
        f"quinn@{domain}",
        "two attachments",
        attachments=[("report.pdf", "application/pdf", pdf), ("data.csv", "text/csv", data)],
    )
    host_lab.send(message)
    [found] = lab.wait_for("has:attachment", domain=domain, timeout=20)
    assert [a.name for a in found.attachments] == ["report.pdf", "data.csv"]  # name is filename
    assert [(a.index, a.filename, a.content_type, a.size) for a in found.attachments] == [
        (0, "report.pdf", "application/pdf", len(pdf)),
        (1, "data.csv", "text/csv", len(data)),
    ]
    for attachment, content in zip(found.attachments, (pdf, data), strict=True):
        assert attachment.bytes() == content
        assert attachment.sha256 == hashlib.sha256(content).hexdigest()
    assert "report.pdf" in repr(found.attachments[0])


def test_raw_is_the_bytes_sent_and_email_parses_them(lab: Lab, host_lab: HostLab, domain: str) -> None:
    message = mail(f"rose@{domain}", "round trip", text="line one\n.dot line\nFrom here\n")
    sent = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    host_lab.send(sent, [f"rose@{domain}"])
    [found] = lab.wait_for(domain=domain, timeout=20)
    assert found.raw() == sent  # dot-stuffing, the mbox file's LF and its escaped From line all undone
    parsed = found.email()
    assert parsed["Subject"] == "round trip"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == "line one\n.dot line\nFrom here\n"


def test_delete_hides_what_matches_and_says_how_many(lab: Lab, host_lab: HostLab, domain: str) -> None:
    for subject in ("keep me", "drop me", "drop me too"):
        host_lab.send(mail(f"sam@{domain}", subject))
    lab.wait_for(domain=domain, count=3, timeout=20)
    assert lab.delete(query="subject:drop", domain=domain) == 2
    assert [message.subject for message in lab.messages(domain=domain)] == ["keep me"]
    assert lab.delete(domain=domain) == 1
    assert lab.messages(domain=domain) == []
    lab.assert_no_message(domain=domain, within=0)  # the wait does not see them either


def test_verify_checks_a_manifest_file(lab: Lab, host_lab: HostLab, domain: str, tmp_path: Path) -> None:
    message = mail(f"tom@{domain}", "in the batch")
    host_lab.send(message)
    lab.wait_for(domain=domain, timeout=20)
    document = {
        "version": 1,
        "messages": [
            {
                "message_id": message["Message-ID"],
                "rcpt_tos": [f"tom@{domain}"],
                "subject": "in the batch",
                "attachments": [],
            },
            {
                "message_id": f"<lost@{domain}>",
                "rcpt_tos": [f"tom@{domain}"],
                "subject": "never sent",
                "attachments": [],
            },
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    report = lab.verify(tmp_path / "manifest.json")
    assert (report["ok"], report["expected"], report["delivered"], report["missing"]) == (False, 2, 1, 1)
    assert report["findings"] == [{"problem": "missing", "message_id": f"<lost@{domain}>", "domain": domain}]
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ApiError) as raised:
        lab.verify(tmp_path / "bad.json")
    assert raised.value.status == 400


# -- the pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("", []),
        ("no links here, www.x.test neither", []),
        ("go to https://a.test/x.", ["https://a.test/x"]),
        ("(see https://a.test/x) and <http://b.test/y>", ["https://a.test/x", "http://b.test/y"]),
        ("https://en.test/wiki/Foo_(bar), then", ["https://en.test/wiki/Foo_(bar)"]),
        ('href "https://a.test/q?a=1&b=2" quoted', ["https://a.test/q?a=1&b=2"]),
        ("HTTPS://A.TEST/UP! and https://a.test/x?", ["HTTPS://A.TEST/UP", "https://a.test/x"]),
        ("ftp://a.test/x mailto:x@y.test", []),
        ("twice https://a.test https://a.test", ["https://a.test", "https://a.test"]),
    ],
)
def test_text_links(text: str, found: list[str]) -> None:
    assert text_links(text) == found


@pytest.mark.parametrize(
    ("html", "found"),
    [
        ("", []),
        ('<a href="https://a.test/?a=1&amp;b=2">x</a>', ["https://a.test/?a=1&b=2"]),
        ("<A HREF=' https://a.test/x '>x</A><area href=/rel>", ["https://a.test/x"]),
        ('<map><area href="http://a.test/map" alt=x></map>', ["http://a.test/map"]),
        (
            '<a href="HTTP://A.TEST/UP">up</a><a href="https://a.test/self"/>',
            ["HTTP://A.TEST/UP", "https://a.test/self"],
        ),
        # A stylesheet, a base, an icon or a script is no link a reader follows.
        ('<a name="top">no href</a><a href="">empty</a><link href="https://css.test/s.css"/>', []),
        ('<head><base href="https://base.test/"><link rel=icon href="https://a.test/i.png"></head>', []),
        ('<script src="https://js.test/x.js"></script><img src="https://img.test/p.png">', []),
        # Neither are a mail address, a fragment, a relative path or another scheme.
        (
            '<a href="mailto:x@a.test">m</a><a href="#top">t</a><a href="/reset?t=1">r</a>'
            '<a href="reset">r</a><a href="//a.test/x">p</a><a href="javascript:alert(1)">j</a>'
            '<a href="ftp://a.test/f">f</a><a href="https://">empty host</a>',
            [],
        ),
        ("<p>https://in.text/only is not an href</p>", []),
    ],
)
def test_html_links(html: str, found: list[str]) -> None:
    assert html_links(html) == found


def test_links_are_the_texts_then_the_htmls_each_once() -> None:
    text = "https://a.test/1 https://a.test/2 https://a.test/1 mailto:x@a.test"
    html = (
        '<link rel=stylesheet href="https://a.test/s.css"><a href="https://a.test/3"></a>'
        '<a href="mailto:x@a.test">m</a><a href="#top">t</a><a href="https://a.test/2"></a>'
        '<area href="https://a.test/4">'
    )
    assert links(text, html) == ["https://a.test/1", "https://a.test/2", "https://a.test/3", "https://a.test/4"]


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Your code</p><p>123456</p>", "\nYour code\n\n123456\n"),
        ("a<br>b<br/>c", "a\nb\nc"),
        ("<style>p{color:red} 999999</style><script>var x=111111</script>shown", "shown"),
        ("caf&eacute; &amp; &#8364;", "café & €"),
        ("<head><title>T 222222</title></head><body>B</body>", "B"),
    ],
)
def test_html_text_is_what_a_reader_sees(html: str, text: str) -> None:
    assert html_text(html) == text


@pytest.mark.parametrize(
    ("pattern", "texts", "found"),
    [
        (r"\b\d{6}\b", ["code 1234567 then 654321", "123456"], "654321"),
        (r"\b\d{6}\b", ["none", "<p>111222</p>"], "111222"),
        (r"\b\d{6}\b", ["none", "neither"], None),
        (r"code: (\w+)", ["your code: XY12"], "XY12"),
    ],
)
def test_first_match(pattern: str, texts: list[str], found: str | None) -> None:
    assert first_match(pattern, texts) == found


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("\u202eevil", "\\u202eevil"),
        ("café ☕", "café ☕"),
        ("x" * 300, "x" * 200 + "..."),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown
