"""The web view (/) in a real headless browser: Debian's chromium and chromedriver, driven by Selenium.

One lab serves the module, and each test gets a fresh browser. The browser runs here, beside
pytest, and reaches the inspector where its port is published; the agent container sends the
mail. The hostile HTML test runs a listener here that the message points at (127.0.0.1, as
the browser sees it): the listener must see no request, and the browser's own performance log
must show none sent anywhere but the lab. With MAILLAB_SCREENSHOTS=1, the list and an open
message are saved to docs/screenshots/ (inbox.png, message.png, at 1280x800) on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from maillab_common import manifest
from tests.integration.conftest import ROOT, Lab, retry_until, started_lab

pytestmark = pytest.mark.integration

WIDE = (1280, 800)
NARROW = (480, 800)
WAIT = 30.0  # seconds the page gets to show what it should
SCREENSHOTS = ROOT / "docs" / "screenshots"
# Enough time for what a hostile page would do at once (a refresh after 0 s, an image, a script):
# the listener and the logs are read after it. A request that was never made announces nothing.
QUIET = 3.0
VISIT = 10.0  # seconds a visit may take to load the page and show a message (it takes one or two)


# -- the browser ------------------------------------------------------------------------


def browser_paths() -> tuple[str, str] | str:
    """Debian's chromium and chromedriver, or the one line that says which is missing."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and chromedriver:
        return chromium, chromedriver
    missing = " and ".join(name for name, path in (("chromium", chromium), ("chromedriver", chromedriver)) if not path)
    return f"{missing} not found: the browser tests need Debian's chromium and chromium-driver (apt-get install)"


# Without a browser the module is skipped before any lab starts; in CI (CI=true) each test fails instead.
if isinstance(browser_paths(), str) and os.environ.get("CI") != "true":
    pytest.skip(str(browser_paths()), allow_module_level=True)


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def browser(downloads: Path) -> Iterator[WebDriver]:
    """A fresh headless chromium for each test (a second or so): no test sees another's tabs, cache or connections."""
    paths = browser_paths()
    if isinstance(paths, str):
        pytest.fail(paths)
    chromium, chromedriver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDE[0]},{WIDE[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.set_capability("unhandledPromptBehavior", "ignore")  # an alert stays open, for the test to find
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()


# -- the lab ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_lab(images: dict[str, str]) -> Iterator[Lab]:
    yield from started_lab(images, ("serve",))


@pytest.fixture(scope="module")
def batch(web_lab: Lab) -> manifest.Manifest:
    """Five friendly messages to web.test, each with an HTML body and an attachment, sent before the page opens."""
    return send_batch(web_lab, "web", "--count", "5", "--seed", "301", "--html", "--domains", "web.test")


def send_batch(lab: Lab, name: str, *arguments: str) -> manifest.Manifest:
    path = f"/manifests/{name}.json"
    code, output = lab.run_agent("batch", "--manifest", path, *arguments)
    assert code == 0, output
    return manifest.loads(lab.read_manifest(path))


def site(lab: Lab) -> str:
    """The web view's root as the browser reaches it, e.g. http://127.0.0.1:32768."""
    return lab.api_url.removesuffix("/api/v1")


def catalogued(lab: Lab, count: int, **selection: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=lab.api_url, timeout=WAIT + 30) as api:
        response = api.get("/wait", params={**selection, "count": count, "timeout": WAIT})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["messages"]
        return found


def api_get(lab: Lab, path: str) -> Any:
    with httpx.Client(base_url=lab.api_url, timeout=30) as api:
        response = api.get(path)
        assert response.status_code == 200, response.text
        return response.json()


# -- the page ---------------------------------------------------------------------------


def until(browser: WebDriver, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT) -> Any:
    try:
        # The live list replaces its items: an item read as it goes is read again at the next poll.
        waiting = WebDriverWait(
            browser, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        )
        return waiting.until(condition)
    except TimeoutException:
        raise AssertionError(f"after {timeout:.0f}s the page still did not show {what}") from None


def open_page(
    browser: WebDriver, lab: Lab, path: str = "/", size: tuple[int, int] = WIDE, timeout: float = WAIT
) -> None:
    """Load the page at `size` and wait until its event stream is live."""
    browser.get(site(lab) + path)
    viewport(browser, size)
    live = browser.find_element(By.ID, "live-status")
    until(browser, lambda b: live.get_attribute("data-state") == "live", "it live", timeout)


def viewport(browser: WebDriver, size: tuple[int, int]) -> None:
    """Make the page's viewport `size` (the window is that much larger: its frame and bars)."""
    browser.set_window_size(*size)
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight];")
    browser.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])
    until(
        browser,
        lambda b: b.execute_script("return [window.innerWidth, window.innerHeight];") == list(size),
        f"a viewport of {size[0]}x{size[1]}",
    )


def list_items(browser: WebDriver) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "#message-list li[data-id]")


def subjects_listed(browser: WebDriver) -> list[str]:
    """The subjects in the list, top to bottom, read at one moment (the live list replaces its items)."""
    subjects: list[str] = browser.execute_script(
        "return Array.from(document.querySelectorAll('#message-list li[data-id] .subject'), s => s.textContent);"
    )
    return subjects


def search_for(browser: WebDriver, query: str) -> None:
    field = browser.find_element(By.ID, "search")
    field.clear()
    field.send_keys(query, Keys.ENTER)


def opened(browser: WebDriver, id: str, timeout: float = WAIT) -> None:
    """Wait until message `id` is open in the message view."""
    view = browser.find_element(By.ID, "message-view")
    try:
        until(
            browser,
            lambda b: view.is_displayed() and view.get_attribute("data-id") == id,
            f"message {id} open",
            timeout,
        )
    except AssertionError as exc:
        problem = browser.find_element(By.ID, "message-problem").text
        shown = view.get_attribute("data-id")
        console = [entry["message"] for entry in browser.get_log("browser")][-10:]  # type: ignore[no-untyped-call]
        raise AssertionError(
            f"{exc}; the view shows {shown!r} (displayed: {view.is_displayed()}), problem {problem!r};"
            f" console: {console}"
        ) from None


def screenshot(browser: WebDriver, name: str) -> None:
    """Save the window as docs/screenshots/<name>.png, only when MAILLAB_SCREENSHOTS=1 (for the docs)."""
    if os.environ.get("MAILLAB_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


# -- the tests --------------------------------------------------------------------------


def test_a_batch_sent_by_the_agent_appears_in_the_open_page_without_a_reload(
    web_lab: Lab, browser: WebDriver, batch: manifest.Manifest
) -> None:
    catalogued(web_lab, 5, domain="web.test")
    open_page(browser, web_lab)
    browser.execute_script("window.maillabNotReloaded = true;")
    sent = send_batch(web_lab, "live", "--count", "3", "--seed", "302", "--attachments", "0", "--domains", "live.test")
    wanted = {message.subject for message in sent.messages}
    until(browser, lambda b: wanted <= set(subjects_listed(b)), f"the new subjects {sorted(wanted)}")
    assert browser.execute_script("return window.maillabNotReloaded === true;"), "the page was reloaded"
    listed = subjects_listed(browser)
    assert set(listed[:3]) == wanted, "the newest come first"
    assert {message.subject for message in batch.messages} <= set(listed)
    until(
        browser,
        lambda b: (
            b.find_element(By.CSS_SELECTOR, '#domains li[data-domain="live.test"]').get_attribute("data-count") == "3"
        ),
        "live.test with 3 messages in the sidebar",
    )
    assert browser.find_element(By.ID, "message-total").text == str(len(listed))
    screenshot(browser, "inbox")


def test_search_narrows_the_list(web_lab: Lab, browser: WebDriver, batch: manifest.Manifest) -> None:
    catalogued(web_lab, 5, domain="web.test")
    open_page(browser, web_lab)
    everything = len(list_items(browser))
    second = batch.messages[1].subject
    search_for(browser, f'subject:"{second.removeprefix("maillab ")}"')
    until(browser, lambda b: subjects_listed(b) == [second], f"only {second!r}")
    assert browser.find_element(By.ID, "message-total").text == "1"
    search_for(browser, "domain:web.test")
    until(browser, lambda b: len(list_items(b)) == 5, "the five messages of web.test")
    assert set(subjects_listed(browser)) == {message.subject for message in batch.messages}
    search_for(browser, "nosuchfield:x")
    until(browser, lambda b: b.find_element(By.ID, "search-error").is_displayed(), "the query's error")
    assert "nosuchfield" in browser.find_element(By.ID, "search-error").text
    assert list_items(browser) == []
    search_for(browser, "")
    until(browser, lambda b: len(list_items(b)) == everything, "the whole list again")


def test_opening_a_message_shows_its_text(web_lab: Lab, browser: WebDriver, batch: manifest.Manifest) -> None:
    summary = catalogued(web_lab, 5, domain="web.test")[2]
    detail = api_get(web_lab, f"/messages/{summary['id']}")
    open_page(browser, web_lab, "/?domain=web.test")
    browser.find_element(By.CSS_SELECTOR, f'#message-list li[data-id="{summary["id"]}"]').click()
    opened(browser, summary["id"])
    assert browser.find_element(By.ID, "message-subject").text == summary["subject"]
    screenshot(browser, "message")
    browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="text"]').click()
    text = browser.find_element(By.ID, "message-text")
    until(browser, lambda b: text.is_displayed(), "the text tab")
    assert text.text.split() == detail["text"].split() != []
    # The HTML body shows in the preview frame.
    browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="preview"]').click()
    frame = browser.find_element(By.ID, "preview-frame")
    until(browser, lambda b: frame.is_displayed(), "the preview")
    browser.switch_to.frame(frame)
    try:
        until(browser, lambda b: b.find_element(By.TAG_NAME, "body").text.split() == detail["text"].split(), "the HTML")
    finally:
        browser.switch_to.default_content()


def test_an_attachment_downloaded_through_the_page_has_the_manifest_sha256(
    web_lab: Lab, browser: WebDriver, batch: manifest.Manifest, downloads: Path
) -> None:
    summary = catalogued(web_lab, 5, domain="web.test")[0]
    expected = next(message for message in batch.messages if message.message_id == f"<{summary['message_id']}>")
    attachment = expected.attachments[0]
    open_page(browser, web_lab, "/?domain=web.test")
    browser.find_element(By.CSS_SELECTOR, f'#message-list li[data-id="{summary["id"]}"]').click()
    opened(browser, summary["id"])
    browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="attachments"]').click()
    link = browser.find_element(By.CSS_SELECTOR, '#attachments a[data-index="0"]')
    until(browser, lambda b: link.is_displayed(), "the attachments")
    assert link.text == attachment.filename
    assert attachment.sha256 in browser.find_element(By.ID, "attachments").text, "the page shows the SHA-256"
    before = set(downloads.iterdir())
    link.click()

    def downloaded() -> bool:
        new = [path for path in set(downloads.iterdir()) - before if not path.name.endswith(".crdownload")]
        return bool(new) and all(path.stat().st_size == attachment.size for path in new)

    retry_until(downloaded, WAIT, "the download to finish")
    (saved,) = set(downloads.iterdir()) - before
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == attachment.sha256


def test_the_keyboard_moves_opens_closes_and_searches(
    web_lab: Lab, browser: WebDriver, batch: manifest.Manifest
) -> None:
    catalogued(web_lab, 5, domain="web.test")
    open_page(browser, web_lab, "/?domain=web.test")
    items = list_items(browser)
    assert len(items) == 5
    body = browser.find_element(By.TAG_NAME, "body")

    def selected() -> list[int]:
        flags: list[str] = browser.execute_script(
            "return Array.from(document.querySelectorAll('#message-list li[data-id]'), i => i.ariaSelected);"
        )
        return [n for n, flag in enumerate(flags) if flag == "true"]

    body.send_keys("j")
    until(browser, lambda b: selected() == [0], "the first message selected")
    body.send_keys("j", "j")
    until(browser, lambda b: selected() == [2], "the third message selected")
    body.send_keys("k")
    until(browser, lambda b: selected() == [1], "the second message selected")
    body.send_keys(Keys.ARROW_DOWN)
    until(browser, lambda b: selected() == [2], "the third message selected by the down arrow")
    body.send_keys(Keys.ARROW_UP, Keys.ARROW_UP)
    until(browser, lambda b: selected() == [0], "the first message selected by the up arrow")
    body.send_keys(Keys.ARROW_DOWN)
    until(browser, lambda b: selected() == [1], "the second message selected again")
    second = list_items(browser)[1]
    id, subject = second.get_attribute("data-id"), second.find_element(By.CLASS_NAME, "subject").text
    assert id is not None
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    opened(browser, id)
    assert browser.find_element(By.ID, "message-subject").text == subject
    assert f"id={id}" in browser.current_url

    def focused() -> str | None:
        return browser.switch_to.active_element.get_attribute("id")

    # Escape closes the message, and leaves the list focused with the same message selected.
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    view = browser.find_element(By.ID, "message-view")
    until(browser, lambda b: not view.is_displayed(), "the message closed")
    assert "id=" not in browser.current_url
    assert focused() == "message-list" and selected() == [1]
    browser.switch_to.active_element.send_keys("/")
    until(browser, lambda b: focused() == "search", "the search box focused")
    # In the search box, Escape leaves it for the list, where the keys move the selection again.
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(browser, lambda b: focused() == "message-list", "the list focused again")
    browser.switch_to.active_element.send_keys("j")
    until(browser, lambda b: selected() == [2], "the third message selected from the list")


def test_a_narrow_window_shows_the_list_and_a_message(
    web_lab: Lab, browser: WebDriver, batch: manifest.Manifest
) -> None:
    catalogued(web_lab, 5, domain="web.test")
    try:
        open_page(browser, web_lab, "/?domain=web.test", size=NARROW)
        width = browser.execute_script("return document.documentElement.clientWidth;")
        assert width <= NARROW[0]
        items = list_items(browser)
        assert len(items) == 5 and all(item.is_displayed() for item in items)
        assert all(item.rect["x"] >= 0 and item.rect["x"] + item.rect["width"] <= width + 1 for item in items)
        id = items[0].get_attribute("data-id")
        assert id is not None
        items[0].click()
        opened(browser, id)
        browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="text"]').click()
        text = browser.find_element(By.ID, "message-text")
        until(browser, lambda b: text.is_displayed() and text.text.strip() != "", "the message's text")
        assert text.rect["x"] >= 0 and text.rect["x"] < width
        assert browser.execute_script("return document.documentElement.scrollWidth;") <= width + 1, "no sideways scroll"
        browser.find_element(By.ID, "close-message").click()
        until(browser, lambda b: all(item.is_displayed() for item in list_items(b)), "the list again")
    finally:
        viewport(browser, WIDE)


def test_the_page_keeps_working_after_many_visits_in_one_tab(
    web_lab: Lab, browser: WebDriver, batch: manifest.Manifest
) -> None:
    """Opening messages by their links (/?id=...), one after another in one tab: each opens.

    A browser keeps a page it left for another address in its back/forward cache, and with it
    any connection the page did not close, such as its event stream; it opens only 6
    connections to one host. A page that leaves its stream open when it is left finds, after
    a few visits, no connection for its own requests.
    """
    ids = [message["id"] for message in catalogued(web_lab, 5, domain="web.test")]
    visits = [(f"/?id={id}", id) for id in ids] + [(f"/?domain=web.test&id={id}", id) for id in ids]
    took = []
    for path, id in visits[:8]:
        started = time.monotonic()
        open_page(browser, web_lab, path, timeout=VISIT)  # the load itself waits for a connection, if it must
        opened(browser, id, timeout=VISIT)
        took.append(round(time.monotonic() - started, 1))
    assert max(took) < VISIT, f"seconds each visit took to show its message: {took}"


# -- hostile HTML -----------------------------------------------------------------------


class Listener:
    """An HTTP server on every interface of this machine that records each request it gets, and
    counts each connection: a browser may connect (a preconnect, a frame's host) and send nothing,
    which still tells the sender that the message was opened."""

    def __init__(self) -> None:
        hits: list[str] = []
        connections: list[str] = []

        class Record(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"PWNED")

            do_POST = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Counting(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                connections.append(str(client_address))
                return True

        self.hits, self.connections = hits, connections
        self.server = Counting(("0.0.0.0", 0), Record)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def hostile_html(port: int) -> str:
    """HTML that tries every way a message has to run code or phone home, all of them aimed at the listener."""
    here = f"http://127.0.0.1:{port}"
    return (
        "<html><head>"
        f'<meta http-equiv="refresh" content="0;url={here}/meta-refresh">'
        f'<base href="{here}/base/">'
        f'<link rel="stylesheet" href="{here}/link-stylesheet.css">'
        f'<link rel="prefetch" href="{here}/link-prefetch">'
        f'<link rel="preconnect" href="{here}/preconnect"><link rel="dns-prefetch" href="{here}/dns-prefetch">'
        f"<style>@import url({here}/css-import.css); body {{ background: url({here}/css-url.png); }}"
        f" @font-face {{ font-family: x; src: url({here}/font.woff); }} p {{ font-family: x; }}</style>"
        f'<script src="{here}/script-src.js"></script>'
        "<script>document.title = 'PWNED'; try { window.parent.document.title = 'PWNED'; } catch (e) {}"
        f" alert('PWNED'); fetch('{here}/fetch'); new Image().src = '{here}/js-image';"
        " console.log('PWNED-SCRIPT');</script>"
        "</head><body onload=\"document.title='PWNED'\">"
        '<p id="hostile-marker">HOSTILE-MARKER</p>'
        f"<img src=\"{here}/img.png\" onerror=\"alert('PWNED'); fetch('{here}/onerror')\">"
        '<img src="relative.png" onerror="document.title=\'PWNED\'">'
        "<a id=\"javascript-link\" href=\"javascript:alert('PWNED');document.title='PWNED'\">click me</a>"
        f'<iframe src="{here}/iframe"></iframe>'
        f'<object data="{here}/object"></object><embed src="{here}/embed">'
        f'<video poster="{here}/video-poster"></video><audio src="{here}/audio"></audio>'
        f'<svg onload="alert(1)"><image href="{here}/svg-image"/></svg>'
        f'<form action="{here}/form" method="post"><input type="image" src="{here}/input-image"></form>'
        f'<div style="background-image: url({here}/inline-style.png)">styled</div>'
        "</body></html>"
    )


def requests_made(performance_log: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each request in the browser's performance log: its URL, whether a response came, why it was blocked."""
    requests: dict[str, dict[str, Any]] = {}
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        key = params.get("requestId", "")
        if message["method"] == "Network.requestWillBeSent":
            requests.setdefault(key, {"url": params["request"]["url"], "response": False, "blocked": "", "sent": False})
            requests[key]["url"] = params["request"]["url"]
        elif message["method"] == "Network.requestWillBeSentExtraInfo" and key in requests:
            requests[key]["sent"] = True  # the headers that went on the wire
        elif message["method"] == "Network.responseReceived" and key in requests:
            requests[key]["response"] = True
        elif message["method"] == "Network.loadingFailed" and key in requests:
            requests[key]["blocked"] = params.get("blockedReason") or params.get("errorText", "")
    return requests


def test_hostile_html_runs_nothing_and_makes_no_request_outside_the_lab(web_lab: Lab, browser: WebDriver) -> None:
    with Listener() as listener:
        # The listener answers on this machine's loopback: a request from the browser would reach it.
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
            pass
        retry_until(lambda: len(listener.connections) == 1, 5, "the listener to count this test's own connection")
        here = f"http://127.0.0.1:{listener.port}"
        # Markup in the subject and a header too: the list, the message's head and its headers show it as text.
        subject = f'hostile <img src="{here}/subject.png" onerror="document.title=\'PWNED\'"><b>html</b>'
        header = f"<script>document.title='PWNED'</script><img src={here}/header.png>"
        code, output = web_lab.run_agent(
            "send",
            "--from",
            "attacker@hostile.test",
            "--to",
            "victim@html.test",
            "--subject",
            subject,
            "--header",
            f"X-Hostile: {header}",
            "--html-body",
            hostile_html(listener.port),
        )
        assert code == 0, output
        (summary,) = catalogued(web_lab, 1, domain="html.test")
        open_page(browser, web_lab, "/?domain=html.test")
        title = browser.title
        assert subjects_listed(browser) == [subject]
        browser.find_element(By.CSS_SELECTOR, f'#message-list li[data-id="{summary["id"]}"]').click()
        opened(browser, summary["id"])
        assert browser.find_element(By.ID, "message-subject").text == subject
        browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="headers"]').click()
        headers = browser.find_element(By.ID, "message-headers")
        until(browser, lambda b: headers.is_displayed() and header in headers.text, "the header as text")
        browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="raw"]').click()
        raw = browser.find_element(By.ID, "message-raw")
        until(browser, lambda b: raw.is_displayed() and "HOSTILE-MARKER" in raw.text, "the raw source as text")
        browser.find_element(By.CSS_SELECTOR, '#tabs [data-tab="preview"]').click()
        frame = browser.find_element(By.ID, "preview-frame")
        until(browser, lambda b: frame.is_displayed(), "the preview")
        browser.switch_to.frame(frame)
        try:
            until(browser, lambda b: "HOSTILE-MARKER" in b.find_element(By.TAG_NAME, "body").text, "the message")
            browser.find_element(By.ID, "javascript-link").click()
        finally:
            browser.switch_to.default_content()
        time.sleep(QUIET)
        assert listener.hits == [], f"the message made the browser call out: {listener.hits}"
        # Not even a connection without a request (a read receipt all the same): only the test's own.
        assert len(listener.connections) == 1, f"the browser connected to the sender: {listener.connections[1:]}"

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 -- reading it is what finds an open alert
    assert browser.title == title != "PWNED"
    assert "PWNED" not in browser.execute_script("return document.title;")
    # The frame still shows the message: the refresh did not navigate it.
    assert (frame.get_attribute("src") or "").endswith(f"/messages/{summary['id']}/html")
    browser.switch_to.frame(frame)
    try:
        assert browser.find_element(By.ID, "hostile-marker").text == "HOSTILE-MARKER"
    finally:
        browser.switch_to.default_content()

    console: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    assert not [entry for entry in console if "PWNED-SCRIPT" in entry["message"]], console
    lab_host = urlsplit(site(web_lab)).netloc
    made = requests_made(browser.get_log("performance"))  # type: ignore[no-untyped-call]
    assert any(urlsplit(request["url"]).netloc == lab_host for request in made.values()), "the log shows requests"
    outside = {
        key: request
        for key, request in made.items()
        if urlsplit(request["url"]).scheme not in ("data", "about", "blob")
        and urlsplit(request["url"]).netloc != lab_host
    }
    went_out = [
        request for request in outside.values() if request["sent"] or request["response"] or not request["blocked"]
    ]
    assert went_out == [], f"requests outside the lab ({lab_host}): {went_out}"
