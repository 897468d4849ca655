"""The fault-injection rules and the server's report of them, as files on a volume both services mount.

- `rules.json` holds the rules a user set (`maillab-server chaos set`, `PUT /api/v1/chaos`)
  and a new `generation` per change. The server watches it and applies each change.
  While it exists it wins over MAILLAB_CHAOS, across restarts; clearing writes no rules.
- `state.json` is written by the server alone: the rules it applies, which generation they
  came from, and how often each has fired. The CLI and the inspector read it to show the
  rules and to know when a change has been applied.

Each file is replaced whole (a temporary file renamed over it): a reader sees the old
content or the new, never half of one. Both are readable by all (0644): a change made as
root (`docker compose exec -u root server maillab-server chaos set ...`) stays readable by
the services' own users.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maillab_common.chaos import parse_rules

RULES_FILE = "rules.json"
STATE_FILE = "state.json"
# ChaosState.source: where the rules being applied came from.
FROM_FILE, FROM_ENVIRONMENT, NO_RULES = "file", "environment", "none"


class ChaosFileError(Exception):
    """A rules or state file that cannot be read or written, or that holds something else."""


class Superseded(Exception):
    """A change that another (`later`) replaced in the rules file before the server applied it: it never will."""

    def __init__(self, later: RulesFile) -> None:
        super().__init__(
            f"replaced by a later change (set by {later.set_by} at {later.set_at}) before the server applied this one"
        )
        self.later = later


@dataclass(frozen=True)
class RulesFile:
    text: str  # the rules as given, which parse
    generation: str  # new at every change: what the server's state echoes once it applies them
    set_at: str  # ISO time, UTC
    set_by: str  # "cli", "http"


@dataclass(frozen=True)
class RuleCount:
    rule: str  # the rule's canonical text (str(Rule))
    fired: int  # commands it acted on since it was applied
    matched: int  # commands it was asked about (its stage and match fitted), fired or not


@dataclass(frozen=True)
class ChaosState:
    generation: str  # the rules file's generation applied; "" for MAILLAB_CHAOS or no rules
    source: str  # FROM_FILE, FROM_ENVIRONMENT or NO_RULES
    rules: tuple[RuleCount, ...]
    reserved_fired: int  # replies given to reserved recipients (rcpt-451@...) since the server started
    updated_at: str  # ISO time, UTC
    problem: str = ""  # why the rules file was not applied (it does not parse), or ""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_rules(directory: Path, text: str, set_by: str) -> RulesFile:
    """Check `text` (ChaosSyntaxError when a rule does not parse), then make it the rules file's."""
    parse_rules(text)
    rules = RulesFile(text=text.strip(), generation=secrets.token_hex(8), set_at=now_iso(), set_by=set_by)
    _replace(directory / RULES_FILE, asdict(rules))
    return rules


def read_rules(directory: Path) -> RulesFile | None:
    """The rules file's content; None when there is none (no change since the volume was made)."""
    fields = _read(directory / RULES_FILE)
    if fields is None:
        return None
    try:
        return RulesFile(
            text=_field(fields, "text", str),
            generation=_field(fields, "generation", str),
            set_at=_field(fields, "set_at", str),
            set_by=_field(fields, "set_by", str),
        )
    except (KeyError, TypeError) as exc:
        raise ChaosFileError(f"{directory / RULES_FILE} is not a rules file: {exc}") from None


def write_state(directory: Path, state: ChaosState) -> None:
    _replace(directory / STATE_FILE, asdict(state))


def read_state(directory: Path) -> ChaosState | None:
    """What the server last reported; None when it has not yet (or never ran with this volume)."""
    fields = _read(directory / STATE_FILE)
    if fields is None:
        return None
    try:
        rules = tuple(
            RuleCount(
                rule=_field(rule, "rule", str), fired=_field(rule, "fired", int), matched=_field(rule, "matched", int)
            )
            for rule in _field(fields, "rules", list)
        )
        return ChaosState(
            generation=_field(fields, "generation", str),
            source=_field(fields, "source", str),
            rules=rules,
            reserved_fired=_field(fields, "reserved_fired", int),
            updated_at=_field(fields, "updated_at", str),
            problem=_field(fields, "problem", str),
        )
    except (KeyError, TypeError) as exc:
        raise ChaosFileError(f"{directory / STATE_FILE} is not the server's chaos state: {exc}") from None


def applied_generation(directory: Path) -> str | None:
    """The generation the server reports applied; None when it has reported nothing (readable)."""
    try:
        state = read_state(directory)
    except ChaosFileError:
        return None
    return None if state is None else state.generation


def wait_applied(directory: Path, generation: str, timeout: float, *, before: str | None = None) -> ChaosState | None:
    """The server's state once it reports `generation` applied; None if it has not within `timeout` s.

    A state whose `problem` is set for that generation also ends the wait: it was refused.
    `before` is what `applied_generation` gave before the change was written. Raises Superseded
    when another writer's change has replaced this one in the rules file and the server has
    moved on from `before` to another generation than this one: this one it will never apply.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = read_state(directory)
        except ChaosFileError:
            state = None  # a server of another version, say: as if it had not answered
        if state is not None and state.generation == generation:
            return state
        if state is not None and state.generation != before:
            try:
                latest = read_rules(directory)
            except ChaosFileError:
                latest = None
            if latest is not None and latest.generation != generation:
                raise Superseded(latest)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def change_rules(directory: Path, text: str, set_by: str, timeout: float) -> ChaosState | None:
    """Make `text` the rules (`write_rules`) and wait up to `timeout` s for the server to apply them.

    The server's state once it reports them applied (or refused: `problem`), None when it has
    not within `timeout`. Raises ChaosSyntaxError (nothing written), ChaosFileError, and
    Superseded when another writer's change replaced them first. One contract for every way
    of changing the rules: `maillab-server chaos` and the inspector's PUT and DELETE.
    """
    before = applied_generation(directory)
    written = write_rules(directory, text, set_by)
    return wait_applied(directory, written.generation, timeout, before=before)


def _field(fields: Any, name: str, kind: type) -> Any:
    value = fields[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} is not {kind.__name__}")
    return value


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChaosFileError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ChaosFileError(f"{path} is not JSON: {exc}") from None


def _replace(path: Path, content: dict[str, Any]) -> None:
    """Write `content` to `path` whole: a temporary file beside it, flushed to disk, renamed over it."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o644)  # not mkstemp's 0600: a file root wrote stays readable
                json.dump(content, file, ensure_ascii=True, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ChaosFileError(f"cannot write {path}: {exc}") from None
