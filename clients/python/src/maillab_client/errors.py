"""The client's exceptions, and the text that makes a failing test explain itself.

Every exception is a MailLabError. The two a test fails with (MessageTimeout,
UnexpectedMessage) are AssertionErrors too, so that pytest reports them as failed
assertions, not as errors. Their text lists the mail that did arrive, each message on one
line, with everything it says passed through `printable` (message content is hostile and
reaches a terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from maillab_client.content import printable

if TYPE_CHECKING:
    from maillab_client.message import Message

HINT = "Start the lab with `make up` in the maillab checkout, or set MAILLAB_API_URL to the URL of a running inspector."


class MailLabError(Exception):
    """Anything the lab or the client could not do."""


class LabUnavailable(MailLabError):
    """The inspector's API did not answer at `url`."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"the maillab API at {url} does not answer ({reason}). {HINT}")

    def __reduce__(self) -> tuple[type[LabUnavailable], tuple[str, str]]:
        return type(self), (self.url, self.reason)


class ApiError(MailLabError):
    """The API answered with an error: `status`, and its `{"error": ...}` text."""

    def __init__(self, method: str, url: str, status: int, error: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.error = error
        super().__init__(f"{method} {url}: {status} {printable(error, 1000)}")

    def __reduce__(self) -> tuple[type[ApiError], tuple[str, str, int, str]]:
        return type(self), (self.method, self.url, self.status, self.error)


class MessageTimeout(MailLabError, AssertionError):
    """wait_for ran out of time: what it waited for, what matched, and the latest mail there was."""

    def __init__(
        self,
        *,
        query: str | None,
        count: int,
        timeout: float,
        domain: str | None,
        matched: Sequence[Message],
        latest: Sequence[Message],
        latest_problem: str = "",
    ) -> None:
        self.query = query
        self.count = count
        self.timeout = timeout
        self.domain = domain
        self.matched = list(matched)
        self.latest = list(latest)
        self.latest_problem = latest_problem
        lines = [f"waited {timeout:g} s for {_wanted(query, count, domain)}: {len(matched)} matched"]
        if matched:
            lines.append("matched:")
            lines += [f"  {describe(message)}" for message in matched]
        lines.append(_latest_heading(domain, latest, latest_problem))
        lines += [f"  {describe(message)}" for message in latest]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Callable[..., MessageTimeout], tuple[object, ...]]:
        # The arguments are keyword-only, and BaseException's own reduce passes self.args (the text).
        arguments = (self.query, self.count, self.timeout, self.domain, self.matched, self.latest, self.latest_problem)
        return _message_timeout, arguments


class UnexpectedMessage(MailLabError, AssertionError):
    """assert_no_message found mail that matches."""

    def __init__(self, *, query: str | None, within: float, domain: str | None, found: Sequence[Message]) -> None:
        self.query = query
        self.within = within
        self.domain = domain
        self.found = list(found)
        lines = [f"expected no message {_matching(query, domain)} within {within:g} s, but one arrived:"]
        lines += [f"  {describe(message)}" for message in found]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Callable[..., UnexpectedMessage], tuple[object, ...]]:
        return _unexpected_message, (self.query, self.within, self.domain, self.found)


def _message_timeout(
    query: str | None,
    count: int,
    timeout: float,
    domain: str | None,
    matched: Sequence[Message],
    latest: Sequence[Message],
    latest_problem: str,
) -> MessageTimeout:
    """A MessageTimeout from its arguments in order: what unpickling and copying call."""
    return MessageTimeout(
        query=query,
        count=count,
        timeout=timeout,
        domain=domain,
        matched=matched,
        latest=latest,
        latest_problem=latest_problem,
    )


def _unexpected_message(
    query: str | None, within: float, domain: str | None, found: Sequence[Message]
) -> UnexpectedMessage:
    """An UnexpectedMessage from its arguments in order: what unpickling and copying call."""
    return UnexpectedMessage(query=query, within=within, domain=domain, found=found)


def _matching(query: str | None, domain: str | None) -> str:
    where = f" in domain {printable(domain)}" if domain else ""
    return f"matching '{printable(query)}'{where}" if query else f"at all{where}"


def _wanted(query: str | None, count: int, domain: str | None) -> str:
    what = "1 message" if count == 1 else f"{count} messages"
    return f"{what} {_matching(query, domain)}"


def _latest_heading(domain: str | None, latest: Sequence[Message], problem: str) -> str:
    where = f"in domain {printable(domain)}" if domain else "in the lab"
    if problem:
        return f"the latest messages {where} could not be read: {printable(problem)}"
    if not latest:
        return f"no message at all arrived {where}"
    return f"the latest {len(latest)} {where}, newest first:"


def describe(message: Message) -> str:
    """One line for a message: when, subject, sender and recipients, all safe to print."""
    recipients = ", ".join(printable(address, 80) for address in message.recipients[:5])
    if len(message.recipients) > 5:
        recipients += f", and {len(message.recipients) - 5} more"
    return (
        f"{message.received_text} '{printable(message.subject)}'"
        f" from {printable(message.sender, 80) or '<>'} to {recipients} (id {printable(message.id, 40)})"
    )
