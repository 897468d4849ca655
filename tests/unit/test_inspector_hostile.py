"""Hostile text in every place of a message, through every inspector command on a real pty.

Each payload of tests/hostile.py (terminal controls and rich markup) is put into one
message everywhere a message has text: the subject (raw and as RFC 2047 encoded words),
the From and To display names and addresses, the body, attachment file names (quoted and
RFC 2231 encoded), and the envelope in the trace (sender, recipients, HELO name). The
records are written with `render_record`, as the server writes them; then the real
`maillab-inspector` runs `list`, `show`, `show --save-attachments`, `watch` (panels and
JSON) and `verify` on a pseudo-terminal, and no payload may act: every control shown as an
escape, every piece of markup printed as it is.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from maillab_common.forward import Record, render_record
from maillab_inspector.model import summarize
from maillab_inspector.render import as_json, as_line, as_panel
from tests.helpers import BASE
from tests.hostile import CONTROL_PAYLOADS, MARKUP_PAYLOADS, assert_inert, run_in_pty

PAYLOADS = CONTROL_PAYLOADS + MARKUP_PAYLOADS
END = "END-OF-BATTERY"
INSPECTOR = (sys.executable, "-m", "maillab_inspector")
# A forward file whose very name is hostile: no server names one so, but a hand may.
HOSTILE_FILE = "evil\x1b]0;PWNED-TITLE\x07\u009b31m.test"


def encoded_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def hostile_message(number: int, payload: str) -> bytes:
    """A message with `payload` in every header, display name, address, body line and file name."""
    # A CR would end a header line early (the parser takes a bare CR for a line end), so not in headers.
    header = payload.replace("\r", "")
    quoted = header.replace("\\", "\\\\").replace('"', '\\"')
    rfc2231 = urllib.parse.quote(f"{payload}.txt", safe="")
    lines = [
        f"Subject: s{number} {header} {encoded_word(payload)}",
        f"Message-ID: <h{number}@x.test>",
        f'From: "{quoted}" <"{quoted}"@sender.test>',
        f'To: {encoded_word(payload)} <to@x.test>, "{quoted}" <b@x.test>',
        f"X-Hostile: {header}",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="bound"',
        "",
        "--bound",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"first line {payload}",
        payload,
        f"tab\tand {payload} again",
        "--bound",
        "Content-Type: application/octet-stream",
        f'Content-Disposition: attachment; filename="{quoted}.bin"',
        "Content-Transfer-Encoding: base64",
        "",
        base64.b64encode(payload.encode()).decode(),
        "--bound",
        "Content-Type: text/plain",
        f"Content-Disposition: attachment; filename*=utf-8''{rfc2231}",
        "",
        "attached",
        "--bound",
        "Content-Type: text/plain",
        f'Content-Disposition: attachment; filename="{encoded_word(payload)}"',
        "",
        "attached",
        "--bound--",
        "",
    ]
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def hostile_record(number: int, payload: str) -> bytes:
    delivery = replace(
        BASE,
        mail_from=f'"{payload}"@sender.test',
        rcpt_tos=(f"{payload}@x.test", "plain@x.test"),
        helo=payload.replace("\n", " "),
        transaction_id=f"H{number:04d}",
        message=hostile_message(number, payload),
    )
    return render_record(delivery)


def end_record() -> bytes:
    return render_record(replace(BASE, message=f"Subject: {END}\nMessage-ID: <end@x.test>\n\n{END}\n".encode()))


@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("forward")
    (folder / "x.test").write_bytes(b"".join(hostile_record(n, p) for n, p in enumerate(PAYLOADS)) + end_record())
    (folder / HOSTILE_FILE).write_bytes(hostile_record(99, PAYLOADS[0]) + b"damage\x1b]0;PWNED-TITLE\x07\n")
    return folder


def environment(forward: Path, state: Path) -> dict[str, str]:
    return {
        "MAILLAB_FORWARD_DIR": str(forward),
        "MAILLAB_STATE_FILE": str(state / "state.json"),
        "MAILLAB_READY_FILE": str(state / "ready"),
        "MAILLAB_SWEEP_INTERVAL": "0.2",
    }


def run(forward: Path, tmp_path: Path, *arguments: str) -> tuple[int, bytes]:
    return run_in_pty([*INSPECTOR, *arguments], env=environment(forward, tmp_path), timeout=120)


def test_list_shows_every_payload_inert(forward: Path, tmp_path: Path) -> None:
    code, output = run(forward, tmp_path, "list")
    assert code == 0, output[-2000:]
    assert_inert(output, markup=MARKUP_PAYLOADS)
    assert b"Traceback" not in output
    assert output.count(b"\r\n") >= len(PAYLOADS) + 2, "one line per message: no payload broke a line"
    assert b"\\x1b]0;PWNED-TITLE\\x07" in output, "controls are shown as escapes"
    assert b"\\x9b31m" in output, "the file name too"


@pytest.mark.parametrize("number", range(len(PAYLOADS)), ids=[repr(p) for p in PAYLOADS])
def test_show_and_saved_attachments_are_inert(forward: Path, tmp_path: Path, number: int) -> None:
    saved = tmp_path / "saved"
    code, output = run(forward, tmp_path, "show", f"<h{number}@x.test>", "--save-attachments", str(saved))
    assert code == 0, output[-3000:]
    payload = PAYLOADS[number]
    assert_inert(output, markup=[payload] if payload in MARKUP_PAYLOADS else [])
    assert b"Traceback" not in output
    assert b"PWNED" in output or payload in MARKUP_PAYLOADS
    names = sorted(path.name for path in saved.iterdir())
    assert len(names) == 3, names
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._ -]{1,255}", name), name
    assert payload.encode() in b"".join(path.read_bytes() for path in saved.iterdir()), "the bytes, as sent"


def watch_in_pty(argv: Sequence[str], env: Mapping[str, str], until: bytes, timeout: float = 60) -> bytes:
    """Run `watch` on a pty until `until` is printed, then stop it with SIGTERM as compose does."""
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    environment = {**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "200"}
    environment.pop("NO_COLOR", None)
    output = bytearray()
    with subprocess.Popen(list(argv), stdin=follower, stdout=follower, stderr=follower, env=environment) as process:
        os.close(follower)
        deadline = time.monotonic() + timeout
        try:
            while until not in output:
                assert time.monotonic() < deadline, f"{until!r} never printed: {bytes(output[-2000:])!r}"
                assert process.poll() is None, f"watch exited: {bytes(output[-2000:])!r}"
                if select.select([leader], [], [], 0.2)[0]:
                    output += os.read(leader, 65536)
            time.sleep(0.3)  # what it prints after, if anything
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
            while select.select([leader], [], [], 0.2)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child is gone
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            if process.poll() is None:
                process.kill()
            os.close(leader)
    return bytes(output)


def test_watch_panels_are_inert(forward: Path, tmp_path: Path) -> None:
    output = watch_in_pty([*INSPECTOR, "watch", "--from-start"], environment(forward, tmp_path), END.encode())
    assert_inert(output, markup=MARKUP_PAYLOADS)
    assert b"Traceback" not in output
    for number in range(len(PAYLOADS)):
        assert f"<h{number}@x.test>".encode() in output


def test_watch_json_is_inert_and_keeps_the_text_exactly(forward: Path, tmp_path: Path) -> None:
    output = watch_in_pty([*INSPECTOR, "watch", "--from-start", "--json"], environment(forward, tmp_path), b"END-OF")
    assert_inert(output, markup=MARKUP_PAYLOADS)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    by_id = {line["message_id"]: line for line in lines}
    for number, payload in enumerate(PAYLOADS):
        line = by_id[f"<h{number}@x.test>"]
        assert line["mail_from"] == f'"{payload}"@sender.test', "a program reads the text exactly"
        assert " ".join(payload.split()) in line["subject"]
        assert line["attachments"][1]["filename"] == f"{payload}.txt"


def test_verify_reports_are_inert(forward: Path, tmp_path: Path) -> None:
    entries = [
        {
            "message_id": f"<h{number}@x.test>",
            "rcpt_tos": ["plain@x.test"],
            "subject": f"expected {payload}",  # not what is stored: each one is reported corrupted
            "accepted": True,
            "attachments": [],
        }
        for number, payload in enumerate(PAYLOADS)
    ]
    entries += [
        {"message_id": f"<{payload}@x.test>", "rcpt_tos": ["a@x.test"], "subject": "", "attachments": []}
        for payload in PAYLOADS
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"messages": entries}))
    code, output = run(forward, tmp_path, "verify", "--manifest", str(manifest), "--timeout", "0")
    assert code == 1, output[-3000:]
    assert_inert(output, markup=MARKUP_PAYLOADS)
    assert b"Traceback" not in output
    assert output.count(b"corrupted: <h") == len(PAYLOADS) and output.count(b"missing: <") == len(PAYLOADS)


def test_an_address_of_markup_is_shown_not_parsed(tmp_path: Path) -> None:
    """The crash the issue names: a sender of `"[/]"@x` made `show` raise MarkupError."""
    forward = tmp_path / "forward"
    forward.mkdir()
    delivery = replace(BASE, mail_from='"[/]"@x', message=b"Subject: m\nMessage-ID: <m@x.test>\n\n:smile: [bold]b\n")
    (forward / "x.test").write_bytes(render_record(delivery))
    code, output = run(forward, tmp_path, "show", "m@x.test")
    assert code == 0 and b"Traceback" not in output, output
    assert b'from <"[/]"@x>' in output and b":smile: [bold]b" in output, "no markup, no emoji codes"


def test_show_keeps_line_ends_and_shows_every_other_separator(tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    body = "one\ttab\ntwo\x85nel\u2028ls\x0bvt\x0cff\x1crs\x1bend\nthree\n"
    message = f"Subject: m\nMessage-ID: <m@x.test>\nContent-Type: text/plain; charset=utf-8\n\n{body}".encode()
    (forward / "x.test").write_bytes(render_record(replace(BASE, message=message)))
    code, output = run(forward, tmp_path, "show", "m@x.test")
    assert code == 0, output
    assert b"one     tab\r\ntwo\\x85nel\\u2028ls\\x0bvt\\x0cff\\x1crs\\x1bend\r\nthree\r\n" in output


UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
controls = st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp"]), max_size=6)
texts = st.lists(st.one_of(controls, st.text(max_size=6), st.sampled_from(PAYLOADS)), max_size=6).map("".join)


@settings(max_examples=200, deadline=None)
@given(subject=texts, body=texts, sender=texts, filename=texts)
def test_no_control_character_is_ever_printed(subject: str, body: str, sender: str, filename: str) -> None:
    """Random text with controls, anywhere: `list` lines, panels and JSON hold none of them raw."""
    message = (
        f"Subject: {encoded_word(subject)}\nMessage-ID: {encoded_word(subject)}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain; charset=utf-8\n'
        f"Content-Transfer-Encoding: base64\n\n{base64.b64encode(body.encode('utf-8', 'surrogatepass')).decode()}\n"
        f"--b\nContent-Disposition: attachment; filename*=utf-8''"
        f"{urllib.parse.quote(filename.encode('utf-8', 'surrogatepass'), safe='')}\n\nx\n--b--\n"
    ).encode()
    delivery = replace(BASE, mail_from=sender.replace("\n", " ").encode("utf-8", "replace").decode(), message=message)
    summary = summarize("x.test", Record(offset=0, length=1, delivery=delivery))
    assert UNSAFE.search(as_line(summary)) is None and "\n" not in as_line(summary)
    line = as_json(summary)
    assert UNSAFE.search(line) is None and json.loads(line)["mail_from"] == delivery.mail_from
    rendered = io.StringIO()
    Console(file=rendered, width=200, color_system=None).print(as_panel(summary))
    assert UNSAFE.search(rendered.getvalue()) is None, rendered.getvalue()
