"""The pages (/ and /verify) over a real catalogue: what they show, how they escape it, and what they allow.

The page is read as a browser's parser would tokenise it (html.parser), so that a test sees
elements and attributes, not strings that happen to appear. The live parts (the event
stream, search, the message view) are app.js's and run in a real browser
(tests/integration); here: that the page comes with what app.js and the browser tests
rely on, and that nothing from a message can become markup or script.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from maillab_common import manifest
from maillab_inspector.web.pages import PAGE_POLICY
from tests.unit.test_web_api import HTML_AND_ATTACHMENTS, Lab, TestClient, sent

STATIC = Path(__file__).parents[2] / "services/inspector/src/maillab_inspector/web/static"
HOSTILE_SUBJECT = "<script>alert(1)</script><img src=x onerror=alert(2)>\"' &amp;"


class Element:
    def __init__(self, tag: str, attributes: dict[str, str | None]) -> None:
        self.tag, self.attributes = tag, attributes
        self.text = ""

    def get(self, name: str) -> str | None:
        return self.attributes.get(name)


class Page(HTMLParser):
    """Every element of a page with its attributes, and the text inside each (its descendants' included)."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    VOID = frozenset({"meta", "link", "input", "img", "br", "hr"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def by_id(self, id: str) -> Element:
        found = [element for element in self.elements if element.get("id") == id]
        assert len(found) == 1, f"{len(found)} elements with id {id!r}"
        return found[0]

    def having(self, attribute: str, tag: str | None = None) -> Iterator[Element]:
        return (e for e in self.elements if attribute in e.attributes and (tag is None or e.tag == tag))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    yield made
    made.catalogue.close()


@pytest.fixture
def client(lab: Lab, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(lab.app(tmp_path / "latest.json")) as made:
        yield made


def page(client: TestClient, path: str = "/", **params: str) -> Page:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == PAGE_POLICY
    return Page(response.text)


def test_the_page_lists_the_domains_and_the_newest_messages_first(lab: Lab, client: TestClient) -> None:
    for number, domain in enumerate(("x.test", "y.test", "x.test")):
        lab.numbered(number, domain)
    shown = page(client)
    domains = {e.get("data-domain"): e.text.split() for e in shown.having("data-domain", "li") if not e.get("data-id")}
    assert domains == {"": ["All", "domains", "3"], "x.test": ["x.test", "2"], "y.test": ["y.test", "1"]}
    items = list(shown.having("data-id", "li"))
    assert [item.text.split()[3] for item in items] == ["n2", "n1", "n0"]
    assert shown.by_id("message-total").text == "3"
    assert shown.by_id("mail").get("data-latest") == "3"  # the event stream goes on from there


def test_a_domain_narrows_the_list(lab: Lab, client: TestClient) -> None:
    lab.numbered(1, "x.test")
    lab.numbered(2, "y.test")
    shown = page(client, domain="y.test")
    assert [item.get("data-domain") for item in shown.having("data-id", "li")] == ["y.test"]
    current = [e.get("data-domain") for e in shown.having("aria-current", "li")]  # in the sidebar
    assert current == ["y.test"]


def test_a_malformed_search_shows_the_error_and_its_position(lab: Lab, client: TestClient) -> None:
    lab.numbered(1)
    shown = page(client, query='subject:"open')
    error = shown.by_id("search-error")
    assert "hidden" not in error.attributes
    assert error.text.startswith("query: at character")
    assert shown.by_id("search").get("aria-invalid") == "true"
    assert shown.by_id("search").get("value") == 'subject:"open'
    assert not list(shown.having("data-id", "li"))
    assert "hidden" in page(client).by_id("search-error").attributes


def test_message_text_is_escaped_never_markup(lab: Lab, client: TestClient) -> None:
    subject = HOSTILE_SUBJECT.encode()
    lab.deliver(
        b"Subject: " + subject + b"\nFrom: <b>bold</b> <x@x.test>\n\n<script>alert(3)</script>\n", domain="x.test"
    )
    shown = page(client)
    (item,) = shown.having("data-id", "li")
    assert HOSTILE_SUBJECT in item.text  # shown as text, exactly
    assert [e.tag for e in shown.elements if e.tag in ("script", "img", "b")] == ["script"]  # only app.js
    assert not [e for e in shown.elements for name in e.attributes if name.startswith("on")]


def test_the_page_runs_only_the_labs_own_script_and_style(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS)
    shown = page(client)
    scripts = [e.get("src") for e in shown.elements if e.tag == "script"]
    assert scripts == ["/static/app.js"]
    assert not list(shown.having("style"))  # the policy allows no inline style either
    assert [e for e in shown.elements if e.tag == "style"] == []
    for directive in ("script-src 'self'", "style-src 'self'", "object-src 'none'", "frame-ancestors 'self'"):
        assert directive in PAGE_POLICY
    assert "unsafe-inline" not in PAGE_POLICY


def test_the_page_has_what_the_browser_tests_select(lab: Lab, client: TestClient) -> None:
    lab.deliver(HTML_AND_ATTACHMENTS)
    shown = page(client)
    for id in ("search", "message-list", "domains", "message-text", "attachments", "preview", "blocked-note"):
        shown.by_id(id)
    assert [e.get("data-tab") for e in shown.having("data-tab", "button")] == [
        "preview",
        "text",
        "headers",
        "raw",
        "attachments",
    ]
    frame = shown.by_id("preview-frame")
    assert frame.tag == "iframe"
    assert "sandbox" in frame.attributes, "the preview is sandboxed"
    # No allow-scripts: a message runs no script, nor (with allow-same-origin) lifts its own sandbox.
    assert "allow-scripts" not in (frame.get("sandbox") or "").lower().split()
    assert "remote" in shown.by_id("blocked-note").text


def test_an_id_in_the_address_opens_that_message(lab: Lab, client: TestClient) -> None:
    lab.numbered(1)
    (id,) = [e.get("data-id") for e in page(client).having("data-id", "li")]
    assert id is not None
    assert page(client, id=id).by_id("mail").get("data-open") == id


def test_the_verify_page_shows_the_api_report(lab: Lab, client: TestClient, tmp_path: Path) -> None:
    assert "no manifest at" in page(client, "/verify").by_id("verify-error").text
    lab.numbered(1)
    document = {"messages": [sent("<1@x.test>", "n1", "bob@x.test"), sent("<2@x.test>", "n2", "bob@x.test")]}
    manifest.write(tmp_path / "latest.json", manifest.loads(json.dumps(document)))
    report = client.get("/api/v1/verify/latest").json()
    shown = page(client, "/verify")
    counts = {e.get("data-column"): int(e.text) for e in shown.having("data-column", "td")}
    assert counts == {column: report[column] for column in counts}
    assert counts["missing"] == 1
    assert shown.by_id("verify-verdict").get("data-ok") == "false"
    (finding,) = shown.having("data-problem", "li")
    assert (finding.get("data-problem"), finding.get("data-message-id")) == ("missing", "<2@x.test>")


def test_the_static_files_are_served_and_the_script_never_writes_html() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "http://" not in script and "https://" not in script  # nothing from elsewhere
    style = (STATIC / "app.css").read_text()
    assert "url(" not in style and "@import" not in style


def test_static_files_have_their_types(client: TestClient) -> None:
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../app.py").status_code == 404
