"""`maillab-server chaos set|show|clear`: the rules changed from the command line, as the running server sees them.

`set` checks the rules, writes them to rules.json in the chaos folder and waits for the
server's state.json to report them applied; `show` prints that report with each rule's
counts; `clear` sets no rules. The server applies a change within a second (chaos_live.py).
Exit codes: 0 done, 1 not applied (no server, refused, or replaced by a later change from
another writer) or a file that cannot be read or written, 2 a rule that does not parse.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.cells import cell_len

from maillab_common.chaos import ChaosSyntaxError, parse_rules
from maillab_common.chaos_files import (
    FROM_ENVIRONMENT,
    FROM_FILE,
    ChaosFileError,
    ChaosState,
    Superseded,
    change_rules,
    read_rules,
    read_state,
)
from maillab_common.cli import EXIT_USAGE, fail, say
from maillab_common.text import visible

APPLY_TIMEOUT = 2.0  # seconds the server has to report a change applied
EXIT_NOT_APPLIED = 1


def set_rules(directory: Path, text: str) -> None:
    """Check `text`, make it the rules, and print them once the server applies them."""
    try:
        parse_rules(text)
    except ChaosSyntaxError as exc:
        say(str(exc), error=True, label="error:")
        for line in pointed(text, exc.position):
            say(line, error=True)
        raise typer.Exit(EXIT_USAGE) from None
    _change(directory, text)


def clear_rules(directory: Path) -> None:
    _change(directory, "")


def show_rules(directory: Path, *, as_json: bool) -> None:
    """The rules the server applies, with their counts, and a change it has not applied yet."""
    try:
        state, pending = read_state(directory), read_rules(directory)
    except ChaosFileError as exc:
        fail(str(exc), EXIT_NOT_APPLIED)
    if state is None:
        if pending is not None:
            say(f"set, not applied yet (set by {pending.set_by} at {pending.set_at}): {pending.text or 'no rules'}")
        fail(f"no chaos state in {directory}: the server has not reported its rules (is it running?)", 1)
    if as_json:
        typer.echo(json.dumps(asdict(state), indent=1))
        return
    _print_state(state)
    if pending is not None and pending.generation != state.generation:
        say(f"not applied yet (set by {pending.set_by} at {pending.set_at}): {pending.text or 'no rules'}")


def pointed(text: str, position: int) -> tuple[str, str]:
    """`text` on one line, its controls escaped, and a caret line under character `position` (from 1).

    The caret is placed by the columns a terminal gives the text before it: two for a wide character (CJK, emoji).
    """
    return f"  {visible(text)}", "  " + " " * cell_len(visible(text[: position - 1])) + "^"


def _change(directory: Path, text: str) -> None:
    try:
        state = change_rules(directory, text, "cli", APPLY_TIMEOUT)
    except ChaosFileError as exc:
        fail(str(exc), EXIT_NOT_APPLIED)
    except Superseded as exc:
        fail(f"saved, but {exc}", EXIT_NOT_APPLIED)
    if state is None:
        fail(
            f"saved in {directory}, but the server has not applied it within {APPLY_TIMEOUT:.0f} s: is it running?",
            EXIT_NOT_APPLIED,
        )
    if state.problem:
        fail(f"saved, but the server refused it: {state.problem}", EXIT_NOT_APPLIED)
    _print_state(state)


def _print_state(state: ChaosState) -> None:
    source = {FROM_FILE: "set while running", FROM_ENVIRONMENT: "from MAILLAB_CHAOS"}.get(state.source, "")
    if not state.rules:
        say("no rules: chaos is off (reserved addresses such as rcpt-451@... still answer)")
    else:
        say(f"{len(state.rules)} rule{'s' if len(state.rules) > 1 else ''} applied, {source}:")
    for number, count in enumerate(state.rules, start=1):
        say(f"  {number}. {count.rule}    fired {count.fired} of {count.matched} matched")
    say(f"reserved addresses fired {state.reserved_fired} times")
    if state.problem:
        say(f"refused, the rules above stay: {state.problem}", error=True, label="error:")
