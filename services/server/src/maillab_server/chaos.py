"""Fault injection: the rules being applied, and the decision for each command (docs/chaos.md).

`Chaos` holds the active rules (maillab_common.chaos), a count per rule and a random
generator per `p=` rule. The protocols and the handler ask it at each stage
(`await chaos.intervene(stage, ...)`): it returns the reply to give instead of the lab's,
or None to go on as normal (after a delay, if that was the fault), and raises `HangUp`
when the connection is to close. Reserved recipients (`rcpt-451@...`) are answered
before any rule, with no configuration.

The rules are tried in order: a rule whose stage and match fit the command counts it as
matched, and its trigger decides; the first that fires acts, and the rules after it are
not asked (no count, no draw). So with seeds the same commands always get the same faults.
Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maillab_common.chaos import Rule, reserved_reply
from maillab_common.chaos_files import FROM_ENVIRONMENT, NO_RULES, ChaosState, RuleCount, now_iso

log = logging.getLogger(__name__)

# Told a delay's length before it begins: what keeps a protocol's idle timer from cutting it short.
BeforeDelay = Callable[[float], None]

RESERVED = 0  # Fault.rule for a reserved recipient's reply
AFTER_STORE_DISCONNECT = "after-store-disconnect"


class HangUp(Exception):
    """Close the connection now: after `reply` when there is one (a 421), else without a word."""

    def __init__(self, reply: str | None = None) -> None:
        super().__init__(reply or "disconnect")
        self.reply = reply


@dataclass(frozen=True)
class Fault:
    """What a rule (`rule` from 1, or RESERVED) does to one command."""

    rule: int
    stage: str
    action: str  # maillab_common.chaos.ACTIONS
    reply: str = ""  # the whole reply line, for action "reply"
    delay: float = 0.0  # seconds, for action "delay"

    @property
    def described(self) -> str:
        """The action as a log line or event names it: `reply=451`, `delay=200`, `disconnect`."""
        if self.action == "reply":
            return f"reply={self.reply[:3]}"
        if self.action == "delay":
            return f"delay={round(self.delay * 1000)}"
        return self.action

    async def perform(self, before_delay: BeforeDelay | None = None) -> str | None:
        """The reply to give instead of the lab's; None to go on as normal. Raises HangUp to close.

        A delay is told to `before_delay` first. `after-store-disconnect` is the caller's to act
        on, once the message is stored.
        """
        if self.action == "delay":
            if before_delay is not None:
                before_delay(self.delay)
            await asyncio.sleep(self.delay)
            return None
        if self.action == "disconnect":
            raise HangUp()
        if self.action == "reply" and self.reply.startswith("421"):
            raise HangUp(self.reply)  # RFC 5321 3.8: 421 closes the channel
        return self.reply if self.action == "reply" else None


def fault_reply(code: int, text: str, why: str) -> str:
    """A fault's reply line: `CODE TEXT` when the rule gives a text, else `CODE X.0.0 maillab chaos: WHY`."""
    return f"{code} {text}" if text else f"{code} {str(code)[0]}.0.0 maillab chaos: {why}"


def _fault(number: int, rule: Rule) -> Fault:
    return Fault(
        rule=number,
        stage=rule.stage,
        action=rule.action,
        reply=fault_reply(rule.code, rule.text, f"rule {number}") if rule.code is not None else "",
        delay=rule.delay_ms / 1000,
    )


class _Active:
    """One rule being applied: its counts and, for `p=`, its random generator."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.matched = 0
        self.fired = 0
        # A seed makes the draws repeatable; without one, the OS seeds it.
        self.random = random.Random(rule.seed) if rule.seed is not None else random.Random()

    def fires(self) -> bool:
        """Count one more matching command; whether the trigger fires on it."""
        self.matched += 1
        rule = self.rule
        if rule.times is not None:
            fired = self.matched <= rule.times
        elif rule.every is not None:
            fired = self.matched % rule.every == 0
        elif rule.probability is not None:
            fired = self.random.random() < rule.probability
        else:
            fired = True
        self.fired += fired
        return fired


class Chaos:
    """The rules being applied, with their counts; `intervene` at each stage of a session."""

    def __init__(self, rules: tuple[Rule, ...] = ()) -> None:
        self._active: list[_Active] = []
        self.generation = ""
        self.source = NO_RULES
        self.problem = ""
        self.reserved_fired = 0
        self.changes = 0  # goes up with every count and every change of rules: what state.json has to catch up on
        self.apply(rules, source=FROM_ENVIRONMENT)  # MAILLAB_CHAOS; none: NO_RULES

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(active.rule for active in self._active)

    def apply(self, rules: tuple[Rule, ...], *, source: str, generation: str = "") -> None:
        """Apply `rules` from now on, their counts and random generators new."""
        self._active = [_Active(rule) for rule in rules]
        self.source = source if rules or source != FROM_ENVIRONMENT else NO_RULES
        self.generation = generation
        self.problem = ""
        self.changes += 1

    def refuse(self, generation: str, problem: str) -> None:
        """A rules file that could not be applied: the rules stay; the state says why, for that generation."""
        self.generation = generation
        self.problem = problem
        self.changes += 1

    def state(self) -> ChaosState:
        return ChaosState(
            generation=self.generation,
            source=self.source,
            rules=tuple(RuleCount(rule=str(a.rule), fired=a.fired, matched=a.matched) for a in self._active),
            reserved_fired=self.reserved_fired,
            updated_at=now_iso(),
            problem=self.problem,
        )

    def decide(
        self, stage: str, *, peer: Any, sender: str | None = None, recipients: tuple[str, ...] = ()
    ) -> Fault | None:
        """The fault for this command at `stage`, logged, or None. `recipients` is what `to=` looks at:
        the RCPT's address at rcpt, every recipient at data and data-end."""
        fault = self._reserved(stage, recipients)
        if fault is None:
            fault = self._ruled(stage, sender, recipients)
        if fault is not None:
            _log_fault(fault, peer, sender, recipients)
        return fault

    async def intervene(
        self,
        stage: str,
        *,
        peer: Any,
        sender: str | None = None,
        recipients: tuple[str, ...] = (),
        before_delay: BeforeDelay | None = None,
    ) -> str | None:
        """`decide`, then act: the reply to give instead of the lab's, or None to go on. Raises HangUp.

        A delay is told to `before_delay` (the protocol's idle timer) before it begins."""
        fault = self.decide(stage, peer=peer, sender=sender, recipients=recipients)
        return None if fault is None else await fault.perform(before_delay)

    def _reserved(self, stage: str, recipients: tuple[str, ...]) -> Fault | None:
        if stage not in ("rcpt", "data-end"):
            return None
        for address in recipients:
            reserved = reserved_reply(address)
            if reserved is not None and reserved[0] == stage:
                self.reserved_fired += 1
                self.changes += 1
                code = reserved[1]
                return Fault(
                    rule=RESERVED, stage=stage, action="reply", reply=fault_reply(code, "", "reserved address")
                )
        return None

    def _ruled(self, stage: str, sender: str | None, recipients: tuple[str, ...]) -> Fault | None:
        for number, active in enumerate(self._active, start=1):
            if active.rule.stage != stage or not active.rule.matches(sender, recipients):
                continue
            self.changes += 1
            if active.fires():
                return _fault(number, active.rule)
        return None


def peer_text(peer: Any) -> str:
    """A session's peer as `host:port`."""
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


def _sender_text(sender: str | None) -> str:
    """The sender as a log line shows it: `<a@b.test>`, `<>` for the null sender, `-` before any MAIL."""
    if sender is None:
        return "-"
    return "<>" if sender in ("", "<>") else f"<{sender}>"  # aiosmtpd keeps the null sender as "<>"


def _log_fault(fault: Fault, peer: Any, sender: str | None, recipients: tuple[str, ...]) -> None:
    # Addresses are the client's text: the text formatter escapes their controls, JSON its own way.
    who = "reserved address" if fault.rule == RESERVED else f"rule {fault.rule}"
    event = {
        "type": "chaos",
        "rule": fault.rule,
        "stage": fault.stage,
        "action": fault.described,
        "peer": peer_text(peer),
        "from": sender,
        "to": list(recipients),
    }
    log.info(
        "chaos: %s at %s: %s, peer %s from=%s to=%s",
        who,
        fault.stage,
        fault.described,
        peer_text(peer),
        _sender_text(sender),
        ",".join(f"<{rcpt}>" for rcpt in recipients) or "-",
        extra={"event": event},
    )
