"""Hostile text for output tests: control sequences and markup that must never act.

Every payload carries terminal controls (C0, C1, CSI, OSC, BEL, DCS) or rich markup. A
program that prints it must show it inert: controls escaped (`\\x1b`, `?`), markup literal.
`run_in_pty` runs a real program on a real pseudo-terminal, so output is what a user's
terminal would get, colours and all; `assert_inert` then checks that no sequence from a
payload survived as a control sequence.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from collections.abc import Mapping, Sequence

# Each starts with a control a terminal acts on: set the title, clear the screen, ring the
# bell, move the cursor, define a hyperlink, the 8-bit CSI and OSC, a device control string.
CONTROL_PAYLOADS = (
    "\x1b]0;PWNED-TITLE\x07",
    "\x1b[2J\x1b[HPWNED-CLEAR",
    "\x07PWNED-BEL",
    "\x1b[31mPWNED-RED\x1b[0m",
    "\x1b]8;;http://evil.test/\x1b\\PWNED-LINK\x1b]8;;\x1b\\",
    "\u009b31mPWNED-C1CSI",
    "\u009d0;PWNED-C1OSC\u009c",
    "\x1bP+qPWNED-DCS\x1b\\",
    "\x08\x08\x08PWNED-BS\r",
    "\x00\x7fPWNED-NUL-DEL",
)

# rich markup that must be printed as it is, never styled or parsed.
MARKUP_PAYLOADS = ("[/]", "[bold]PWNED-BOLD[/bold]", "[link=http://evil.test/]PWNED-MARKUP[/link]", "[red")

# Byte sequences a terminal acts on. Program output may hold its own styling (ESC "[" ... "m"
# from rich), so what is searched for is the payloads' own sequences, not every ESC.
_ACTIVE = (
    b"\x1b]",  # OSC: title, hyperlink
    b"\x07",  # BEL
    b"\x1b[2J",
    b"\x1b[H",
    b"\x1b[31mPWNED",
    b"\x1bP",  # DCS
    b"\x08",
    b"\x00",
    b"\x7f",
    "\u009b".encode(),
    "\u009d".encode(),
    "\u009c".encode(),
)


def assert_inert(output: bytes, *, markup: Sequence[str] = ()) -> None:
    """Fail when `output` holds a control sequence from a payload, or styled markup.

    Each text in `markup` must appear literally (its brackets intact) in the output.
    """
    for sequence in _ACTIVE:
        at = output.find(sequence)
        assert at == -1, f"active sequence {sequence!r} in output: {output[max(0, at - 60) : at + 60]!r}"
    for text in markup:
        assert text.encode() in output, f"markup {text!r} was not printed literally: {output[-2000:]!r}"


def run_in_pty(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
    columns: int = 200,
) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as its stdin, stdout and stderr; return (exit code, output)."""
    leader, follower = pty.openpty()
    # A wide terminal, so that lines are not wrapped in the middle of what a test looks for.
    os.set_blocking(leader, False)
    environment = {**os.environ, **(env or {}), "TERM": "xterm-256color", "COLUMNS": str(columns)}
    environment.pop("NO_COLOR", None)
    with subprocess.Popen(
        list(argv), stdin=follower, stdout=follower, stderr=follower, env=environment, close_fds=True
    ) as process:
        os.close(follower)
        if input_text is not None:
            os.write(leader, input_text.encode())
        output = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise AssertionError(f"{argv} did not finish in {timeout}s; output so far: {bytes(output[-2000:])!r}")
            ready, _, _ = select.select([leader], [], [], min(remaining, 0.2))
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer is gone
                    chunk = b""
                if chunk:
                    output += chunk
                    continue
                if process.poll() is not None:
                    break
            elif process.poll() is not None:
                # exited; take what is left, then stop
                try:
                    while chunk := os.read(leader, 65536):
                        output += chunk
                except OSError:
                    pass
                break
        code = process.wait()
    os.close(leader)
    return code, bytes(output)
