"""Lab: the inspector's JSON API (/api/v1) as Python calls, over one keep-alive HTTP client.

Waiting is the server's job: wait_for and assert_no_message are each one GET /wait (a
few, back to back, only when the time asked for is past the server's cap), which answers
the moment the catalogue commits the mail; the client never polls. A wait returns the
summaries it got and fetches nothing more, so that it adds next to nothing to the API's
own latency (bench/client.py measures it); a Message fetches its bodies when a test reads
them.

Every request that gets no answer raises LabUnavailable, naming the URL and how to start
the lab; every error status, ApiError with the API's `error` text.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from maillab_client.errors import ApiError, LabUnavailable, MailLabError, MessageTimeout, UnexpectedMessage
from maillab_client.message import Message

DEFAULT_API_URL = "http://127.0.0.1:8025"
DEFAULT_SMTP = ("127.0.0.1", 2525)
API_PATH = "/api/v1"
PAGE_MAX = 1000  # the most messages the API puts on one page
# The longest wait the API takes (its WAIT_MAX_SECONDS); a longer one is several waits in a row.
WAIT_MAX_SECONDS = 300.0
LATEST_SHOWN = 10  # messages a MessageTimeout lists besides the matches
# A 408 this much sooner than the wait's timeout did not come from the timeout: the inspector
# ends open waits when it stops (`docker compose restart inspector`, say). As the inspector's
# own `wait` command (maillab_inspector.waiting.EARLY) judges it.
EARLY_SECONDS = 0.05
# A manifest of a large batch takes the inspector seconds, up to minutes, to check.
VERIFY_SECONDS = 600.0
# What a URL may hold at all: printable ASCII, no space (as the inspector's config.api_url).
_URL_CHARACTERS = re.compile(r"[!-~]+")


class Lab:
    """A running maillab: its inspector's API at `api_url`, and the SMTP address mail goes to.

    `api_url` is the inspector's URL, with or without its `/api/v1`. `timeout` bounds each
    request (a wait's read is given its own wait time on top). Use it as a context manager,
    or close() it, to close its connections.
    """

    page_size: int = PAGE_MAX  # messages asked for per page while following cursors
    wait_max: float = WAIT_MAX_SECONDS  # the longest single GET /wait

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        smtp: tuple[str, int] | str = DEFAULT_SMTP,
        timeout: float = 30.0,
    ) -> None:
        self.api_url = base_url(api_url)
        self.smtp = smtp_address(smtp) if isinstance(smtp, str) else (smtp[0], int(smtp[1]))
        self.timeout = timeout
        # trust_env=False: a lab is a local service, and an HTTP_PROXY set for the rest of the
        # world must not catch (or slow down) requests to it.
        self._http = httpx.Client(
            base_url=self.api_url + API_PATH,
            timeout=timeout,
            trust_env=False,
            headers={"Accept": "application/json"},
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, timeout: float = 30.0) -> Lab:
        """The lab that MAILLAB_API_URL and MAILLAB_SMTP (`host:port`) name. Unset, each defaults to the
        port `make up` publishes on loopback: MAILLAB_HTTP_PORT and MAILLAB_SMTP_PORT when set (as
        compose.yaml reads them), else 8025 and 2525."""
        env = os.environ if env is None else env
        api_url = env.get("MAILLAB_API_URL", "").strip()
        if not api_url:
            http_port = _port(env, "MAILLAB_HTTP_PORT")
            api_url = f"http://127.0.0.1:{http_port}" if http_port else DEFAULT_API_URL
        try:
            api_url = base_url(api_url)
        except ValueError as exc:
            raise ValueError(f"MAILLAB_API_URL: {exc}") from None
        smtp_text = env.get("MAILLAB_SMTP", "").strip()
        if smtp_text:
            try:
                smtp = smtp_address(smtp_text)
            except ValueError as exc:
                raise ValueError(f"MAILLAB_SMTP: {exc}") from None
        else:
            smtp_port = _port(env, "MAILLAB_SMTP_PORT")
            smtp = ("127.0.0.1", smtp_port) if smtp_port else DEFAULT_SMTP
        return cls(api_url, smtp, timeout)

    # -- the API ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The inspector's health document; LabUnavailable when nothing, or something that is not maillab, answers."""
        try:
            return self._get_json("/health")
        except LabUnavailable:
            raise
        except MailLabError as exc:
            raise LabUnavailable(self.api_url + API_PATH + "/health", f"not maillab's API: {exc}") from None

    def messages(self, query: str | None = None, domain: str | None = None, limit: int | None = None) -> list[Message]:
        """The messages that match, newest first: every one, or the first `limit`, through as many pages as it takes."""
        found: list[Message] = []
        cursor: str | None = None
        while limit is None or len(found) < limit:
            size = self.page_size if limit is None else min(self.page_size, limit - len(found))
            page = self._get_json(
                "/messages", params=_present(query=query, domain=domain, limit=size, cursor=cursor or None)
            )
            found += [Message(self, document) for document in page["messages"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        return found

    def get(self, id: str) -> Message:
        """One message, its detail (bodies, headers, attachments) fetched."""
        return Message(self, self._get_json(f"/messages/{_segment(id)}"))

    def wait_for(
        self, query: str | None = None, count: int = 1, timeout: float = 10.0, domain: str | None = None
    ) -> list[Message]:
        """The first `count` messages that match (those already there count), oldest first, as soon as
        they are catalogued; MessageTimeout, saying what did arrive, when `timeout` seconds pass first."""
        arrived, matched = self._wait(query, count, timeout, domain)
        if arrived:
            return matched
        latest, problem = self._latest(domain)
        raise MessageTimeout(
            query=query,
            count=count,
            timeout=timeout,
            domain=domain,
            matched=matched,
            latest=latest,
            latest_problem=problem,
        )

    def assert_no_message(self, query: str | None = None, within: float = 2.0, domain: str | None = None) -> None:
        """Return once `within` seconds pass with no message that matches; UnexpectedMessage, listing it,
        as soon as one does. A message that was there before the call counts."""
        arrived, found = self._wait(query, 1, within, domain)
        if arrived:
            raise UnexpectedMessage(query=query, within=within, domain=domain, found=found)

    def delete(self, query: str | None = None, domain: str | None = None) -> int:
        """Hide the messages that match (every message without either) from every view and wait; how many."""
        response = self._request("DELETE", "/messages", params=_present(query=query, domain=domain))
        deleted: int = _json(response)["deleted"]
        return deleted

    def verify(self, manifest_path: str | os.PathLike[str]) -> dict[str, Any]:
        """The inspector's report on the agent's manifest at `manifest_path` (POST /verify); check its `ok`."""
        with open(manifest_path, "rb") as file:
            body = file.read()
        response = self._request(
            "POST",
            "/verify",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=httpx.Timeout(self.timeout, read=max(self.timeout, VERIFY_SECONDS)),
        )
        return _json(response)

    # -- the connection ----------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab(api_url={self.api_url!r}, smtp={self.smtp!r})"

    # -- for Message and Attachment ------------------------------------------------------------

    def _get_json(self, path: str, params: dict[str, str | int] | None = None) -> dict[str, Any]:
        return _json(self._request("GET", path, params=params))

    def _get_bytes(self, path: str) -> bytes:
        return self._request("GET", path).content

    # -- inside ----------------------------------------------------------------------------

    def _wait(self, query: str | None, count: int, timeout: float, domain: str | None) -> tuple[bool, list[Message]]:
        """One GET /wait, or several in a row past the server's cap: whether `count` matched, and the matches."""
        if timeout < 0:
            raise ValueError(f"timeout: {timeout} is negative")
        deadline = time.monotonic() + timeout
        while True:
            started = time.monotonic()
            remaining = max(0.0, deadline - started)
            step = min(remaining, self.wait_max)
            response = self._request(
                "GET",
                "/wait",
                params=_present(query=query, domain=domain, count=count, timeout=f"{step:.3f}"),
                # The read must outlast the wait itself, or the client would give up on an answer on its way.
                timeout=httpx.Timeout(self.timeout, read=step + self.timeout),
                ok=(200, 408),
            )
            document = _json(response)
            matched = [Message(self, summary) for summary in document["messages"]]
            if response.status_code == 200:
                return True, matched
            waited = time.monotonic() - started
            if waited < step - EARLY_SECONDS:
                # Not the timeout: asking again at once would get the same early answer, in a tight loop.
                raise MailLabError(
                    f"the inspector ended the wait early: it is stopping (it answered after {waited:.1f} s"
                    f" of {step:g} s, {len(matched)} matched; {self.api_url} is the inspector;"
                    " `docker compose ps inspector` shows whether it is up)"
                )
            if step >= remaining:  # this wait covered the rest of the time
                return False, matched

    def _latest(self, domain: str | None) -> tuple[list[Message], str]:
        """The latest messages (in `domain`, if given) for a MessageTimeout; or why they could not be read."""
        try:
            return self.messages(domain=domain, limit=LATEST_SHOWN), ""
        except MailLabError as exc:
            return [], str(exc)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        def send() -> httpx.Response:
            return self._http.request(
                method, path, params=params, content=content, headers=headers, timeout=timeout or self._http.timeout
            )

        try:
            try:
                response = send()
            except httpx.RemoteProtocolError:
                if method != "GET":
                    raise
                # The server closed the idle keep-alive connection just as the request went out
                # (uvicorn does after 5 s): a GET changes nothing, so it goes once more, on a new one.
                response = send()
        except httpx.TransportError as exc:
            url = self._http.build_request(method, path, params=params).url
            raise LabUnavailable(str(url), f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if response.status_code not in ok:
            raise ApiError(method, str(response.request.url), response.status_code, _error_text(response))
        return response


def base_url(api_url: str) -> str:
    """The inspector's URL without a trailing slash or `/api/v1` (`http://127.0.0.1:8025/api/v1/` gives
    `http://127.0.0.1:8025`): scheme, host, port and path only. ValueError, saying why, for what the
    inspector's own MAILLAB_API_URL refuses too: another scheme, no host, a port that is not 1 to
    65535, a user or password, a query, a fragment, a space or another character outside printable ASCII."""
    value = api_url.strip()
    shown = value if len(value) <= 80 else f"{value[:80]}..."
    example = f"(for example {DEFAULT_API_URL})"
    if not _URL_CHARACTERS.fullmatch(value):
        raise ValueError(
            f"{shown!r} is not an http(s) URL: it is empty, or holds a space or a character"
            f" that is not printable ASCII {example}"
        )
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError itself for one that is not a number up to 65535
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not an http(s) URL: {exc} {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r} is not an http(s) URL with a host {example}")
    if port == 0:
        raise ValueError(f"{shown!r} is not an http(s) URL: port 0 is no port to connect to {example}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{shown!r}: give no user or password, only the scheme, the host, the port and a path {example}"
        )
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            f"{shown!r}: give no query or fragment, only the scheme, the host, the port and a path {example}"
        )
    path = parts.path.rstrip("/").removesuffix(API_PATH).rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _port(env: Mapping[str, str], name: str) -> int | None:
    """The port the variable `name` holds, None when it is unset or empty; ValueError, naming it, otherwise."""
    text = env.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{name}: {text!r} is not a port from 1 to 65535")
    return int(text)


def smtp_address(text: str) -> tuple[str, int]:
    """`host:port` (or `[v6 address]:port`) as (host, port)."""
    host, colon, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (for example 127.0.0.1:2525)")
    return host, int(port)


def _present(**params: str | int | None) -> dict[str, str | int]:
    """The parameters that were given: httpx would send a None as an empty value."""
    return {name: value for name, value in params.items() if value is not None}


def _segment(id: str) -> str:
    """An id as one path segment, whatever it holds."""
    return quote(id, safe="")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise MailLabError(
            f"{response.request.method} {response.request.url}: the answer is not a JSON object;"
            " is this maillab's inspector?"
        )
    return document


def _error_text(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        error: str = document["error"]
        return error
    return response.text[:200] or response.reason_phrase
