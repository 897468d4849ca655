"""The conformance run for classroom servers: scripted sessions, and what each must be answered.

CASES is a table of sessions taken from the classroom grammar (see classroom.py): good ones
(one and several recipients, dot lines, an attachment, two messages, spaces around a path)
and bad ones (commands out of order must get 503, malformed paths and HELO domains 501,
unknown commands 500). Each case runs on a connection of its own, a step at a time; a step
passes when its reply has the dialect's form (`classroom.reply_problem`: one line, LF
without CR, a classroom code, printable ASCII) and the expected code. A reply that does not
come within the timeout fails its case, so a hanging server cannot hang the run.

The table and its rows are data; `run` is the only part that touches the network. What a
server stores cannot be seen from the client: a dot line is checked only by the 250.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from maillab_agent.classroom import ClassroomClient, wire_message
from maillab_agent.smtp import SmtpConnectionError
from maillab_common.loop import run as run_loop

SENDER = "alice@sender.test"
RECIPIENTS = ("bob@one.test", "carol@two.test", "dave@three.test")
GOT_WIDTH = 60  # the longest reply text shown in a row; the rest is cut


@dataclass(frozen=True)
class Step:
    """One thing sent and the code its reply must have: a command (str), a message (bytes, sent
    dot-stuffed and ended by '.'), or nothing at all (None: the greeting)."""

    send: str | bytes | None
    expect: int
    shown: str = ""

    @property
    def sent(self) -> str:
        """What the step sent, for the table."""
        if self.shown:
            return self.shown
        if self.send is None:
            return "(connect)"
        if isinstance(self.send, bytes):
            return f"<message, {len(self.send.splitlines())} lines>"
        return self.send


@dataclass(frozen=True)
class Case:
    """A session from the greeting to QUIT; the table shows its `probe` step, or the step that failed."""

    name: str
    steps: tuple[Step, ...]
    probe: int
    note: str = ""


@dataclass(frozen=True)
class Outcome:
    case: Case
    step: Step  # the step that failed, or the probe
    got: str  # the reply line as received (its line end removed), or what went wrong
    passed: bool
    connected: bool = True


def _message(subject: str, body: str, to: tuple[str, ...] = RECIPIENTS[:1], headers: str = "") -> bytes:
    return f"From: {SENDER}\nTo: {', '.join(to)}\nSubject: {subject}\n{headers}\n{body}".encode()


_ATTACHED = bytes(range(256)) * 2 + b"tail"  # 516 bytes: 9 base64 lines of 76 characters, then a partial one
_BOUNDARY = "maillab-conform-boundary"
PLAIN = _message("conform: one recipient", "Hello from maillab's conformance run.\n")
SEVERAL = _message("conform: three recipients", "Hello to three.\n", RECIPIENTS)
DOTS = _message("conform: dot lines", ".a line starting with a dot\n..two dots\n.\nthe line above is a lone dot\n")
ATTACHMENT = _message(
    "conform: an attachment",
    f"--{_BOUNDARY}\nContent-Type: text/plain\n\nThe attachment is 516 bytes.\n\n"
    f"--{_BOUNDARY}\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
    f'Content-Disposition: attachment; filename="bytes.bin"\n\n'
    f"{base64.encodebytes(_ATTACHED).decode()}\n--{_BOUNDARY}--\n",
    headers=f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{_BOUNDARY}"\n',
)

GREETING = Step(None, 220)
HELO = Step("HELO maillab", 250)
MAIL = Step(f"MAIL FROM: <{SENDER}>", 250)
RCPT = Step(f"RCPT TO: <{RECIPIENTS[0]}>", 250)
DATA = Step("DATA", 354)
QUIT = Step("QUIT", 221)
MESSAGE = (HELO, MAIL, RCPT, DATA)  # up to the message itself


def _case(name: str, setup: tuple[Step, ...], probe: Step, then: tuple[Step, ...] = (), note: str = "") -> Case:
    return Case(name=name, steps=(GREETING, *setup, probe, *then, QUIT), probe=1 + len(setup), note=note)


CASES: tuple[Case, ...] = (
    # Good sessions.
    Case(name="greeting and QUIT", steps=(GREETING, QUIT), probe=0),
    _case("HELO", (), HELO),
    _case("one recipient", MESSAGE, Step(PLAIN, 250)),
    _case(
        "three recipients",
        (HELO, MAIL, *(Step(f"RCPT TO: <{rcpt}>", 250) for rcpt in RECIPIENTS), DATA),
        Step(SEVERAL, 250),
    ),
    _case(
        "dot lines",
        MESSAGE,
        Step(DOTS, 250),
        note="lines starting with '.' go dot-stuffed; only the 250 can be checked, not that they arrived intact",
    ),
    _case("an attachment", MESSAGE, Step(ATTACHMENT, 250)),
    _case("two messages in one session", (*MESSAGE, Step(PLAIN, 250), MAIL, RCPT, DATA), Step(PLAIN, 250)),
    _case("spaces around a path", (HELO,), Step(f"MAIL FROM:   <{SENDER}>   ", 250)),
    _case("goes on after a 501", (HELO, Step("MAIL FROM: alice", 501)), MAIL, (RCPT,)),
    # Out of order: 503.
    _case("MAIL before HELO", (), Step(f"MAIL FROM: <{SENDER}>", 503)),
    _case("RCPT before HELO", (), Step(f"RCPT TO: <{RECIPIENTS[0]}>", 503)),
    _case("RCPT before MAIL", (HELO,), Step(f"RCPT TO: <{RECIPIENTS[0]}>", 503)),
    _case("DATA before MAIL", (HELO,), Step("DATA", 503)),
    _case("DATA before RCPT", (HELO, MAIL), Step("DATA", 503)),
    # Malformed paths and domains: 501.
    _case("MAIL path without brackets", (HELO,), Step(f"MAIL FROM: {SENDER}", 501)),
    _case("MAIL path without @", (HELO,), Step("MAIL FROM: <alice>", 501)),
    _case("RCPT path with two @", (HELO, MAIL), Step("RCPT TO: <a@@b>", 501)),
    _case("RCPT domain element starting with a digit", (HELO, MAIL), Step("RCPT TO: <bob@1one.test>", 501)),
    _case("HELO domain with a hyphen", (), Step("HELO maillab-agent", 501)),
    _case("HELO domain element starting with a digit", (), Step("HELO 1lab.test", 501)),
    _case("HELO domain with an empty element", (), Step("HELO lab..test", 501)),
    # Unknown commands: 500.
    _case("EHLO", (), Step("EHLO maillab", 500)),
    _case("unknown command", (HELO,), Step("VRFY alice", 500)),
)


async def run_case(host: str, port: int, case: Case, *, timeout: float) -> Outcome:
    """Run one case on a connection of its own; each reply is awaited at most `timeout` seconds."""
    try:
        client = await ClassroomClient.open(host, port, timeout=timeout)
    except SmtpConnectionError as exc:
        return Outcome(case=case, step=case.steps[0], got=str(exc), passed=False, connected=False)
    try:
        shown = ""
        for number, step in enumerate(case.steps):
            if isinstance(step.send, str):
                client.write_command(step.send)
            elif isinstance(step.send, bytes):
                client.write_data(wire_message(step.send))
            try:
                heard = await client.hear()
            except SmtpConnectionError as exc:
                return Outcome(case=case, step=step, got=f"({exc})", passed=False)
            reply = heard.reply
            if (problem := heard.problem) is not None or reply is None or reply.code != step.expect:
                got = f"{heard.line} ({problem})" if problem else heard.line
                return Outcome(case=case, step=step, got=got, passed=False)
            if number == case.probe:
                shown = heard.line
        return Outcome(case=case, step=case.steps[case.probe], got=shown, passed=True)
    finally:
        await client.close()


def run(
    host: str,
    port: int,
    *,
    timeout: float,
    cases: tuple[Case, ...] = CASES,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
) -> list[Outcome]:
    """Run `cases` one after another (course servers often take one client at a time).

    When the first case cannot connect, the rest are not tried.
    """

    async def run_all() -> list[Outcome]:
        outcomes: list[Outcome] = []
        for case in cases:
            outcome = await run_case(host, port, case, timeout=timeout)
            outcomes.append(outcome)
            if not outcome.connected and len(outcomes) == 1:
                break
            on_outcome(outcome)
        return outcomes

    return run_loop(run_all())


@dataclass(frozen=True)
class Columns:
    """The table's column widths, known before the first case runs, so that rows print as they come."""

    name: int
    sent: int

    @classmethod
    def of(cls, cases: tuple[Case, ...]) -> Columns:
        return cls(
            name=max(len(case.name) for case in cases),
            sent=max(len(step.sent) for case in cases for step in case.steps),
        )

    def header(self) -> str:
        return self._line("case", "sent", "expected", "got", "result")

    def row(self, outcome: Outcome) -> str:
        got = outcome.got if len(outcome.got) <= GOT_WIDTH else outcome.got[: GOT_WIDTH - 3] + "..."
        result = "PASS" if outcome.passed else "FAIL"
        return self._line(outcome.case.name, outcome.step.sent, str(outcome.step.expect), got, result)

    def _line(self, name: str, sent: str, expected: str, got: str, result: str) -> str:
        return f"{name:<{self.name}}  {sent:<{self.sent}}  {expected:<8}  {got:<{GOT_WIDTH}}  {result}"


def summary(outcomes: list[Outcome]) -> list[str]:
    """The lines after the table: how many passed, and the cases' notes."""
    passed = sum(outcome.passed for outcome in outcomes)
    notes = [f"note: {outcome.case.name}: {outcome.case.note}" for outcome in outcomes if outcome.case.note]
    return [f"{passed} of {len(outcomes)} cases passed", *notes]
