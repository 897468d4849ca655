"""Hostile text for output tests: control sequences and markup that must never act.

Every payload carries terminal controls (C0, C1, CSI, OSC, BEL, DCS) or rich markup. A
program that prints it must show it inert: controls escaped (`\\x1b`, `?`), markup literal.
`run_in_pty` runs a real program on a real pseudo-terminal, so output is what a user's
terminal would get, colours and all; `assert_inert` then checks that no sequence from a
payload survived as a control sequence.
"""

from __future__ import annotations

import base64
import functools
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


# Hostile messages: the worst found for the email package's header parser and MIME walk,
# each as it would be stored. tests/unit/test_inspector_bounds.py counts what the inspector
# spends on each; bench/inspector.py times them.
ENCODED_WORD = "=?utf-8?b?" + base64.b64encode("é".encode() * 3).decode() + "?="
PARAMETERS = "".join(f"; p{n}=v" for n in range(2000))


def multipart(parts: list[str]) -> bytes:
    """A multipart/mixed message with Subject "parts" of these parts (each its headers, a blank line, a body)."""
    body = "".join(f"--b\n{part}\n" for part in parts)
    return f"Subject: parts\nContent-Type: multipart/mixed; boundary=b\n\n{body}--b--\n".encode()


def _parameter_fields(part: int, size: int) -> str:
    parameters = "".join(f";{part}p{n}=v" for n in range(size // (len(str(part)) + 6)))
    return f"Content-Type: text/plain{parameters}\nContent-Disposition: attachment{parameters}\n\nx"


@functools.cache
def hostile_messages() -> dict[str, bytes]:
    """The corpus, built on first use: about 100 MB, which a benchmark must not hold while it
    measures another process's memory (a forked child's peak RSS counts its parent's pages)."""
    return {
        "a subject of 26,000 encoded words (560 KB)": f"Subject: {' '.join([ENCODED_WORD] * 26_000)}\n\nx\n".encode(),
        "100,000 MIME parts": multipart(["\nx"] * 100_000),
        "100,000 attachments": multipart(["Content-Disposition: attachment; filename=a\n\nx"] * 100_000),
        "500 parts with 2,000 parameters each": multipart(
            [f"Content-Type: text/plain{PARAMETERS}\nContent-Disposition: attachment{PARAMETERS}\n\nx"] * 500
        ),
        **{
            f"1,000 parts of {size:,}-byte parameter fields, each different": multipart(
                [_parameter_fields(part, size) for part in range(1000)]
            )
            for size in (512, 2048, 8192)
        },
        "a Content-Type with 100,000 parameters": (
            f"Subject: p\nContent-Type: multipart/mixed{''.join(f'; p{n}=v' for n in range(100_000))}; boundary=b\n\n"
            "--b\n\nx\n--b--\n"
        ).encode(),
        "100,000 header fields of encoded words": (
            "".join(f"X-H{n}: {ENCODED_WORD} {ENCODED_WORD}\n" for n in range(100_000)) + "Subject: s\n\nx\n"
        ).encode(),
        "a To of 100,000 addresses": (
            f"Subject: s\nTo: {', '.join(f'u{n}@x.test' for n in range(100_000))}\n\nx\n".encode()
        ),
        "MIME nested 3,000 deep": b"Subject: nested\n"
        + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (n, n) for n in range(3000)),
    }
