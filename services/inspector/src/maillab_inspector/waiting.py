"""`inspector wait`: asking the running inspector's API for mail until it is there or the time is up, and what
the command prints of it.

This module owns the conversation with `GET /api/v1/wait` (web/api_v1.py): the URL of each
request, reading each answer (200: enough matched; 408: the time was up, with what matched
by then; anything else: one line saying what went wrong), and the rounds. The API waits at
most `WAIT_MAX_SECONDS` a request, so a longer `--timeout` is asked for in rounds until its
own deadline; each round counts the mail that arrived before it, so nothing is lost between
rounds.

It is pure but for the `Ask` it is handed: the socket is `__main__.py`'s (`http_get`), as
every socket, signal and event loop of the inspector is. So the rounds are tested with a
clock and answers made up, and the command against a real lab
(tests/unit/test_inspector_wait.py).

The query is parsed by the inspector that answers, not here: one parser decides, whichever
version of the CLI asks, and its 400 names the position. What a message says is hostile:
a line shows it through `render.shown` (controls as escapes, cut at 300 characters), and
JSON lines escape what `json.dumps` would leave raw, as `watch --json` does.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from maillab_inspector import render
from maillab_inspector.web.api_v1 import WAIT_MAX_SECONDS

# (url, seconds to wait for the answer) -> (status, body), whatever the status. Raises OSError
# (or http.client.HTTPException) when nothing answers.
Ask = Callable[[str, float], tuple[int, bytes]]

# The API answers a round when its timeout is up, plus the time its last look at the
# catalogue takes: the socket waits this much longer before it gives up on the answer.
ANSWER_GRACE = 30.0
# A 408 this much sooner than the round's timeout did not come from the timeout: the
# inspector ends open waits when it stops (docker compose restart inspector, say).
EARLY = 0.05
# The latest messages a timeout shows besides the matches: as many as the client's MessageTimeout.
LATEST_SHOWN = 10
# Seconds the socket waits for the latest messages: one page of summaries, no wait on the API's side.
LATEST_SECONDS = 10.0


class WaitFailed(Exception):
    """The wait could not be answered: what to print, as one line."""


class Refused(WaitFailed):
    """The inspector answered, but not with a wait's answer: a malformed query (its 400 names the position), a
    host name it does not answer to (421), or something that is not the inspector at all."""


class Interrupted(WaitFailed):
    """The inspector ended the wait before its time (it was stopping): what matched by then, and why."""

    def __init__(self, message: str, messages: tuple[Arrived, ...]) -> None:
        super().__init__(message)
        self.messages = messages


@dataclass(frozen=True)
class Wanted:
    """What the command waits for: `count` messages matching `query` (the API's syntax), within `timeout` seconds,
    in `domain` only when one is given (the API checks and normalises it)."""

    query: str
    count: int = 1
    timeout: float = 10.0
    domain: str | None = None

    def described(self) -> str:
        """'2 messages matching 'subject:reset'', for the lines that say what was waited for."""
        what = "1 message" if self.count == 1 else f"{self.count:,} messages"
        described = f"{what} matching {self.query!r}" if self.query.strip() else f"{what} (any)"
        return f"{described} in domain {self.domain!r}" if self.domain else described


@dataclass(frozen=True)
class Arrived:
    """One message of a wait's answer: the API's summary, as it came (for --json), and what a line shows of it."""

    document: Mapping[str, object]

    def text(self, name: str) -> str:
        value = self.document.get(name)
        return value if isinstance(value, str) else ""

    @property
    def envelope(self) -> tuple[str, list[str]]:
        envelope = self.document.get("envelope")
        if not isinstance(envelope, dict):
            return "", []
        sender, recipients = envelope.get("from"), envelope.get("to")
        to = [str(rcpt) for rcpt in recipients] if isinstance(recipients, list) else []
        return (sender if isinstance(sender, str) else ""), to


@dataclass(frozen=True)
class Outcome:
    """How the wait ended: `found` when enough matched; `messages`, what matched, oldest first."""

    found: bool
    messages: tuple[Arrived, ...]


def wait_url(api: str, wanted: Wanted, seconds: float) -> str:
    """The request for one round of at most `seconds`."""
    parameters: dict[str, str | int] = {"query": wanted.query, "count": wanted.count, "timeout": f"{seconds:.3f}"}
    if wanted.domain:
        parameters["domain"] = wanted.domain
    return f"{api}/api/v1/wait?{urlencode(parameters)}"


def read_answer(api: str, status: int, body: bytes) -> Outcome:
    """A round's answer as an Outcome; Refused, saying why in one line, for an answer that is not one."""
    document = decoded(body)
    if status in (200, 408):
        return Outcome(found=status == 200, messages=listed(api, status, document))
    raise refusal(api, status, document)


def decoded(body: bytes) -> object:
    """The answer's JSON; None when it is not JSON, or not UTF-8."""
    try:
        document: object = json.loads(body)
    except ValueError:
        return None
    return document


def listed(api: str, status: int, document: object) -> tuple[Arrived, ...]:
    """The `messages` of a wait's or a page's answer; Refused when it holds no list of summaries."""
    messages = document.get("messages") if isinstance(document, dict) else None
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        raise Refused(f"{api} answered {status} without a list of messages: is it maillab's inspector?")
    return tuple(Arrived(message) for message in messages)


def refusal(api: str, status: int, document: object) -> Refused:
    """The one line for an error status, from the API's `error` text when it has one."""
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, str):
        return Refused(f"{api} answered {status}, not as maillab's inspector does: is it the inspector's address?")
    if status == 400:
        return Refused(error)  # it names the parameter, and for a query the position: already what to say
    if status == 421:
        hint = "the inspector's MAILLAB_HTTP_HOSTS names those it answers to"
        return Refused(f"{api} answered {status}: {error} ({hint})")
    return Refused(f"{api} answered {status}: {error}")


def wait_for(ask: Ask, api: str, wanted: Wanted, clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Ask the inspector at `api` until `wanted` is there or its timeout is up, in rounds the API allows.

    Raises Refused for an answer that is not a wait's, Interrupted when the inspector ended a
    round early, and lets `ask`'s OSError through when nothing answers.
    """
    deadline = clock() + wanted.timeout
    while True:
        started = clock()
        left = max(0.0, deadline - started)
        seconds = min(left, WAIT_MAX_SECONDS)
        status, body = ask(wait_url(api, wanted, seconds), seconds + ANSWER_GRACE)
        outcome = read_answer(api, status, body)
        if outcome.found:
            return outcome
        waited = clock() - started
        if waited < seconds - EARLY:
            raise Interrupted(
                f"the inspector at {api} ended the wait after {waited:.1f}s of {seconds:g}s: it is stopping "
                f"(`docker compose ps inspector` shows whether it is up)",
                outcome.messages,
            )
        if seconds >= left:  # this round ran to the deadline
            return outcome


@dataclass(frozen=True)
class Latest:
    """The latest messages there are (newest first) for a timeout's report; or, in `problem`, why they are not."""

    messages: tuple[Arrived, ...] = ()
    problem: str = ""


def latest_url(api: str, domain: str | None, limit: int = LATEST_SHOWN) -> str:
    """The request for the first page of the newest messages, in `domain` when one is given."""
    parameters: dict[str, str | int] = {"limit": limit}
    if domain:
        parameters["domain"] = domain
    return f"{api}/api/v1/messages?{urlencode(parameters)}"


def latest(ask: Ask, api: str, domain: str | None) -> Latest:
    """The latest messages in `domain` (in the lab without one), matching or not: what did arrive.

    Never raises for the inspector's sake: the wait has timed out, which is the command's
    answer; a list that cannot be read is said in the report, as its `problem`.
    """
    try:
        status, body = ask(latest_url(api, domain), LATEST_SECONDS)
        document = decoded(body)
        if status != 200:
            raise refusal(api, status, document)
        return Latest(messages=listed(api, status, document))
    except Refused as exc:
        return Latest(problem=str(exc))
    except (OSError, http.client.HTTPException) as exc:
        return Latest(problem=f"{api} did not answer ({why(exc)})")


def latest_lines(found: Latest, domain: str | None) -> list[str]:
    """The report's lines on the latest messages: a heading, then one indented line each, as `as_line` shows them."""
    where = f"in domain {render.shown(domain)}" if domain else "in the lab"
    if found.problem:
        return [f"wait: the latest messages {where} could not be read: {render.shown(found.problem)}"]
    if not found.messages:
        return [f"wait: there is no message {where} at all"]
    count = len(found.messages)
    heading = f"the latest message {where}" if count == 1 else f"the latest {count} messages {where}, newest first"
    return [f"wait: {heading} (matching or not):"] + [f"  {as_line(arrived)}" for arrived in found.messages]


def unreachable(api: str, exc: BaseException) -> str:
    """The line for an inspector that did not answer: which address, why, and how to start the lab."""
    return (
        f"the inspector's API at {api} did not answer ({why(exc)}): start the lab with `make up`, "
        "or give its address with --api-url or MAILLAB_API_URL"
    )


def why(exc: BaseException) -> str:
    """Why a request got no answer, in a few words ("Connection refused", "timed out")."""
    reason = getattr(exc, "reason", exc)  # a URLError wraps the socket's error
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def as_line(arrived: Arrived) -> str:
    """One line a message: received, domain, envelope sender and recipients, subject; each shown, never obeyed."""
    sender, recipients = arrived.envelope
    to = render.shown(", ".join(f"<{rcpt}>" for rcpt in recipients))
    return (
        f"{render.shown(arrived.text('received'))}  {render.shown(arrived.text('domain'))}  "
        f"from <{render.shown(sender)}>  to {to}  {render.shown(arrived.text('subject'))}"
    )


def as_json(arrived: Arrived) -> str:
    """The API's summary as one JSON line, its text exact for `json.loads`, its controls escaped for a terminal."""
    # render's escaping, private there but the one every JSON line of the inspector goes through.
    return render.json_line(dict(arrived.document))


def timed_out(wanted: Wanted, outcome: Outcome) -> str:
    """The line that says what was waited for, and how much of it came."""
    arrived = f"{len(outcome.messages):,} of {wanted.count:,} arrived" if outcome.messages else "none arrived"
    return f"wait: timed out after {wanted.timeout:g}s waiting for {wanted.described()}: {arrived}"
