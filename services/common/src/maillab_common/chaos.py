"""Fault-injection rules: their syntax, one contract for the server, the inspector and the CLI.

A rule is a stage, one action, an optional match and an optional trigger, written as
whitespace-separated terms; rules are separated by `;` (docs/chaos.md):

    rcpt reply=451 to=*@flaky.test times=2; data-end reply=452:4.3.1 p=0.1 seed=7

`parse_rules` turns such text into `Rule`s or raises `ChaosSyntaxError`, which names the
rule and the character where the problem is. `str(rule)` is its canonical text, which
`parse_rules` reads back to an equal rule. Also here: the reserved recipients
(`rcpt-451@...`, `data-550@...`) whose local part names a reply. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial

STAGES = ("connect", "helo", "mail", "rcpt", "data", "data-end", "auth")
ACTIONS = ("reply", "disconnect", "delay", "after-store-disconnect")
# What a match can look at, by stage: nothing is known of the envelope before MAIL.
MATCHABLE = {
    "connect": (),
    "helo": (),
    "auth": (),
    "mail": ("from",),
    "rcpt": ("from", "to"),
    "data": ("from", "to"),
    "data-end": ("from", "to"),
}
MAX_DELAY_MS = 600_000  # ten minutes: a tarpit, not a hang
MAX_TEXT = 200  # characters of a reply's own text
MAX_RULES = 100
_ACTIONS = "reply=CODE[:TEXT], disconnect, delay=MS, after-store-disconnect"
_TERMS = f"terms are the actions ({_ACTIONS}), to=, from=, p=, seed=, times= and every="
# A reply's text goes on the wire as it is: printable ASCII, and no quote (it ends a quoted value).
_REPLY_TEXT = re.compile(r"[\x20-\x21\x23-\x7e]*")
_TERM = re.compile(r'(?P<key>[^\s;="]+)(?:=(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s;"]*)))?')
_RESERVED = re.compile(r"(?P<stage>rcpt|data)-(?P<code>[45]\d\d)", re.IGNORECASE)


class ChaosSyntaxError(ValueError):
    """A rule that does not parse: `rule` counts from 1, `position` is the character (from 1) in the whole text."""

    def __init__(self, rule: int, position: int, reason: str) -> None:
        super().__init__(f"rule {rule}, at character {position}: {reason}")
        self.rule = rule
        self.position = position
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    """One fault: at `stage`, when the match and the trigger say so, do `action`."""

    stage: str
    action: str  # one of ACTIONS
    code: int | None = None  # reply=
    text: str = ""  # reply=CODE:TEXT, "" for the lab's own text
    delay_ms: int = 0  # delay=
    to: str | None = None  # a glob over recipients (lower case)
    sender: str | None = None  # from=, a glob over the envelope sender (lower case)
    probability: float | None = None  # p=
    seed: int | None = None
    times: int | None = None  # the first N matching commands
    every: int | None = None  # every Nth matching command

    def __str__(self) -> str:
        terms = [self.stage, self.action_text]
        terms += [f"to={self.to}"] if self.to is not None else []
        terms += [f"from={self.sender}"] if self.sender is not None else []
        terms += [f"p={self.probability!r}"] if self.probability is not None else []  # the shortest exact text
        terms += [f"seed={self.seed}"] if self.seed is not None else []
        terms += [f"times={self.times}"] if self.times is not None else []
        terms += [f"every={self.every}"] if self.every is not None else []
        return " ".join(terms)

    @property
    def action_text(self) -> str:
        """The action as written: `reply=451`, `reply="452:4.3.1 try later"`, `delay=200`, `disconnect`."""
        if self.action == "reply":
            if not self.text:
                return f"reply={self.code}"
            value = f"{self.code}:{self.text}"
            return f'reply="{value}"' if any(c in value for c in " ;") else f"reply={value}"
        if self.action == "delay":
            return f"delay={self.delay_ms}"
        return self.action

    def matches(self, sender: str | None, recipients: tuple[str, ...]) -> bool:
        """Whether the envelope so far matches: `to=` when any of `recipients` does."""
        if self.sender is not None and (sender is None or not fnmatchcase(sender.lower(), self.sender)):
            return False
        return self.to is None or any(fnmatchcase(rcpt.lower(), self.to) for rcpt in recipients)


def render_rules(rules: tuple[Rule, ...]) -> str:
    """The rules' canonical text, which `parse_rules` reads back to the same rules."""
    return "; ".join(str(rule) for rule in rules)


def parse_rules(text: str) -> tuple[Rule, ...]:
    """The rules in `text` (empty or blank: none). Raises ChaosSyntaxError at the first problem."""
    rules: list[Rule] = []
    terms: list[tuple[int, str, str | None]] = []  # (offset, key, value) of the rule being read
    at = 0
    while at <= len(text):
        if at == len(text) or text[at] == ";":
            if terms:
                if len(rules) == MAX_RULES:
                    raise ChaosSyntaxError(len(rules) + 1, terms[0][0] + 1, f"more than {MAX_RULES} rules")
                rules.append(_rule(len(rules) + 1, terms))
            terms = []
            at += 1
            continue
        if text[at].isspace():
            at += 1
            continue
        term = _TERM.match(text, at)
        if term is None:
            raise ChaosSyntaxError(len(rules) + 1, at + 1, f"{_shown(text[at])} cannot start a term")
        after = term.end()
        if after < len(text) and not (text[after].isspace() or text[after] == ";"):
            raise ChaosSyntaxError(len(rules) + 1, after + 1, _after_term(term, text[after]))
        value = term["quoted"] if term["quoted"] is not None else term["bare"]
        terms.append((at, term["key"], value))
        at = after
    return tuple(rules)


def _after_term(term: re.Match[str], following: str) -> str:
    """Why `following`, the character right after `term`, is out of place."""
    if following != '"':
        return "a term ends with a blank or ;"
    if term["quoted"] is not None:
        return "a second quote right after a quoted value: a value holds no quote, and terms are separated by blanks"
    if term["bare"] == "":  # the quoted form did not match: no quote closes it
        return "a quoted value without its closing quote"
    return 'a quote inside a term: only a whole value is quoted, as in reply="451:try later"'


def _rule(number: int, terms: list[tuple[int, str, str | None]]) -> Rule:
    """The rule made of `terms` (offset, key, value), the first of which is its stage."""

    def fail(offset: int, reason: str) -> ChaosSyntaxError:
        return ChaosSyntaxError(number, offset + 1, reason)

    (stage_at, stage, stage_value), *rest = terms
    if stage_value is not None or stage.lower() not in STAGES:
        raise fail(stage_at, f"{_shown(stage)} is not a stage; a rule starts with one of: {', '.join(STAGES)}")
    stage = stage.lower()
    fields: dict[str, object] = {}
    seen: dict[str, int] = {}  # kind of term -> its offset
    for offset, written, value in rest:
        key = written.lower()
        bad = partial(fail, offset + len(key) + 1)  # a bad value's error, at the value's position
        if key in ("disconnect", "after-store-disconnect") and value is None:
            kind, fields["action"] = "action", key
        elif key in ("disconnect", "after-store-disconnect"):
            raise fail(offset, f"{key} takes no value")
        elif value is None:
            raise fail(offset, f"{_shown(written)} is not a term; {_TERMS}")
        elif key == "reply":
            kind, fields["action"] = "action", "reply"
            fields["code"], fields["text"] = _reply(value, bad)
        elif key == "delay":
            kind, fields["action"] = "action", "delay"
            fields["delay_ms"] = _whole(value, 1, MAX_DELAY_MS, "delay= takes milliseconds", bad)
        elif key in ("to", "from"):
            if key not in MATCHABLE[stage]:
                known = " or ".join(f"{k}=" for k in MATCHABLE[stage]) or "nothing"
                raise fail(offset, f"{key}= cannot match at {stage}: there a rule can match {known}")
            if not value or any(not c.isprintable() or c.isspace() or c in ';"' for c in value):
                raise bad(f"{key}= takes a glob over addresses, such as *@flaky.test, without blanks, ; or quotes")
            kind = key
            fields["to" if key == "to" else "sender"] = value.lower()
        elif key == "p":
            kind, fields["probability"] = "trigger", _probability(value, bad)
        elif key == "seed":
            kind, fields["seed"] = "seed", _whole(value, 0, 2**63 - 1, "seed= takes a whole number", bad)
        elif key in ("times", "every"):
            count = _whole(value, 1, 2**31 - 1, f"{key}= takes a number of commands", bad)
            kind, fields[key] = "trigger", count
        else:
            raise fail(offset, f"{_shown(written)} is not a term; {_TERMS}")
        if kind in seen:
            what = {"action": "one action", "trigger": "one trigger (p=, times= or every=)"}.get(kind, f"one {key}=")
            raise fail(offset, f"a rule has {what}; this is a second")
        seen[kind] = offset
    if "action" not in fields:
        raise fail(stage_at, f"this {stage} rule has no action; actions: {_ACTIONS}")
    if fields["action"] == "after-store-disconnect" and stage != "data-end":
        raise fail(seen["action"], "after-store-disconnect is for data-end only (stored, then the reply lost)")
    if "seed" in seen and "probability" not in fields:
        raise fail(seen["seed"], "seed= goes with p=: only a random trigger has a seed")
    return Rule(stage=stage, **fields)  # type: ignore[arg-type]


def _reply(value: str, fail: Callable[[str], ChaosSyntaxError]) -> tuple[int, str]:
    code, colon, text = value.partition(":")
    if not re.fullmatch(r"\d{3}", code) or not 400 <= int(code) <= 599:
        raise fail(f"reply= takes a 4xx or 5xx code (a fault), not {_shown(code)}")
    if colon and not text:
        raise fail("reply=CODE: has no text after its colon; leave the colon out for the lab's own text")
    if len(text) > MAX_TEXT or not _REPLY_TEXT.fullmatch(text):
        raise fail(f"a reply's text is printable ASCII without quotes, at most {MAX_TEXT} characters")
    return int(code), text


def _whole(value: str, minimum: int, maximum: int, what: str, fail: Callable[[str], ChaosSyntaxError]) -> int:
    if not re.fullmatch(r"\d{1,19}", value) or not minimum <= int(value) <= maximum:
        raise fail(f"{what} from {minimum} to {maximum}, not {_shown(value)}")
    return int(value)


def _probability(value: str, fail: Callable[[str], ChaosSyntaxError]) -> float:
    try:
        probability = float(value) if re.fullmatch(r"[0-9.]+(?:[eE][+-]?\d+)?", value) else math.nan
    except ValueError:
        probability = math.nan
    if not 0.0 <= probability <= 1.0:
        raise fail(f"p= takes a probability from 0 to 1, not {_shown(value)}")
    return probability


def _shown(text: str) -> str:
    """`text` quoted for an error message, its control characters escaped (it is the user's)."""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def reserved_reply(address: str) -> tuple[str, int] | None:
    """(stage, code) when `address`'s local part names a reply: `rcpt-451@x` -> ("rcpt", 451).

    `rcpt-NNN@...` is refused at RCPT, `data-NNN@...` at the end of DATA (the whole message),
    every time; NNN is a 4xx or 5xx code. Other addresses: None.
    """
    local, at, _ = address.rpartition("@")
    match = _RESERVED.fullmatch(local) if at else None
    if match is None:
        return None
    return ("rcpt" if match["stage"].lower() == "rcpt" else "data-end"), int(match["code"])
