"""The inspector's commands as real processes over real forward files."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from maillab_common.forward import render_record
from maillab_inspector.__main__ import attachment_name
from maillab_server.store import ForwardStore
from tests.unit.test_forward_format import BASE
from tests.unit.test_inspector import MULTIPART


def record(number: int, message: bytes | None = None) -> bytes:
    body = message or f"Subject: n{number}\nMessage-ID: <{number}@x.test>\n\nbody {number}\n".encode()
    return render_record(replace(BASE, transaction_id=f"{number:04X}", message=body))


class Watch:
    """`maillab-inspector watch --json` in a child process, its output read line by line."""

    started: ClassVar[list[Watch]] = []  # the processes a test started, stopped in teardown

    def __init__(self, forward: Path, state: Path, *arguments: str) -> None:
        env = {
            **os.environ,
            "MAILLAB_FORWARD_DIR": str(forward),
            "MAILLAB_STATE_FILE": str(state),
            "MAILLAB_READY_FILE": str(state.with_suffix(".ready")),
            "MAILLAB_SWEEP_INTERVAL": "0.2",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maillab_inspector", "watch", "--json", *arguments],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        Watch.started.append(self)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.errors.append), daemon=True).start()
        self.wait_for_log("watching")

    @staticmethod
    def _pump(stream: object, put: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            put(line)  # type: ignore[operator]

    def wait_for_log(self, text: str, timeout: float = 15) -> None:
        deadline = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if any(text in line for line in self.errors):
                return
            deadline.wait(0.05)
        raise AssertionError(f"no log line with {text!r}: {self.errors}")

    def subjects(self, count: int, timeout: float = 15) -> list[str]:
        return [json.loads(self.lines.get(timeout=timeout))["subject"] for _ in range(count)]

    def quiet(self, seconds: float = 1.0) -> bool:
        try:
            line = self.lines.get(timeout=seconds)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected output: {line}")

    def wait_for_state(self, state: Path, name: str, offset: int, timeout: float = 15) -> None:
        for _ in range(int(timeout / 0.05)):
            try:
                if json.loads(state.read_text())["files"][name]["offset"] == offset:
                    return
            except (OSError, ValueError, KeyError):
                pass
            threading.Event().wait(0.05)
        raise AssertionError(f"the state file never reached {name} at {offset}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=15)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[tuple[ForwardStore, Path]]:
    forward = tmp_path / "forward"
    forward.mkdir()
    yield ForwardStore(forward), tmp_path / "state" / "offsets.json"
    for watch in Watch.started:
        watch.stop(signal.SIGKILL)
    Watch.started.clear()


def test_a_restart_neither_misses_nor_repeats(folders: tuple[ForwardStore, Path]) -> None:
    store, state = folders
    store.deliver({"a.test": record(1)})  # stored before the first start: not printed
    watch = Watch(store.root, state)
    store.deliver({"a.test": record(2), "b.test": record(3)})
    assert sorted(watch.subjects(2)) == ["n2", "n3"]
    assert watch.stop() == 0
    store.deliver({"a.test": record(4)})  # while the inspector is down
    store.deliver({"c.test": record(5)})
    watch = Watch(store.root, state)
    assert sorted(watch.subjects(2)) == ["n4", "n5"]
    assert watch.quiet()
    store.deliver({"a.test": record(6)})
    assert watch.subjects(1) == ["n6"]
    # kill -9 once the position is saved; between a print and its save, a kill would
    # print that message again (docs/inspector.md says why that window cannot close).
    watch.wait_for_state(state, "a.test", (store.root / "a.test").stat().st_size)
    assert watch.stop(signal.SIGKILL) == -signal.SIGKILL
    store.deliver({"a.test": record(7)})
    watch = Watch(store.root, state)
    assert watch.subjects(1) == ["n7"]
    assert watch.quiet()
    watch.stop()


def test_from_start_prints_what_is_stored_and_domain_filters(folders: tuple[ForwardStore, Path]) -> None:
    store, state = folders
    store.deliver({"a.test": record(1), "b.test": record(1)})
    store.deliver({"a.test": record(2)})
    watch = Watch(store.root, state, "--from-start", "--domain", "A.TEST")
    assert watch.subjects(2) == ["n1", "n2"]
    store.deliver({"b.test": record(3)})
    store.deliver({"a.test": record(4)})
    assert watch.subjects(1) == ["n4"]
    watch.stop()


def test_garbage_gives_a_warning_and_watching_goes_on(folders: tuple[ForwardStore, Path]) -> None:
    store, state = folders
    watch = Watch(store.root, state)
    with open(store.root / "a.test", "ab") as file:
        file.write(b"this is not a record\n" * 3)
    store.deliver({"a.test": record(1)})
    assert watch.subjects(1) == ["n1"]
    watch.wait_for_log("damaged bytes")
    assert watch.process.poll() is None
    assert watch.stop() == 0


def inspector(forward: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maillab_inspector", *arguments],
        env={**os.environ, "MAILLAB_FORWARD_DIR": str(forward), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_and_show_with_saved_attachments(folders: tuple[ForwardStore, Path], tmp_path: Path) -> None:
    store, _ = folders
    hostile = MULTIPART.replace(b'filename="p.png"', b'filename="../../escape.png"')
    store.deliver({"a.test": record(1), "b.test": record(2, hostile)})
    listing = inspector(store.root, "list")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[1] for line in listing.stdout.splitlines()] == ["a.test", "b.test"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "escape.png").write_bytes(b"already here")
    shown = inspector(store.root, "show", "m@x.test", "--save-attachments", str(tmp_path / "out"))
    assert shown.returncode == 0, shown.stderr
    assert "Subject: café" in shown.stdout and "hello" in shown.stdout
    assert (tmp_path / "out" / "escape.png").read_bytes() == b"already here"
    assert (tmp_path / "out" / "escape-1.png").read_bytes() == b"hello"
    assert not (tmp_path / "escape.png").exists()
    missing = inspector(store.root, "show", "<nope@x.test>")
    assert missing.returncode == 1 and "no stored message" in missing.stderr


def test_verify_exit_codes(folders: tuple[ForwardStore, Path], tmp_path: Path) -> None:
    store, _ = folders
    store.deliver({"a.test": record(1)})
    entry = {
        "message_id": "<1@x.test>",
        "rcpt_tos": ["bob@a.test"],
        "subject": "n1",
        "accepted": True,
        "attachments": [],
    }
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"messages": [entry]}))
    assert inspector(store.root, "verify", "--manifest", str(manifest), "--timeout", "0").returncode == 0
    manifest.write_text(json.dumps({"messages": [entry, {**entry, "message_id": "<2@x.test>"}]}))
    missing = inspector(store.root, "verify", "--manifest", str(manifest), "--timeout", "0.5")
    assert missing.returncode == 1 and "missing: <2@x.test> in a.test" in missing.stdout
    manifest.write_text("{not json")
    broken = inspector(store.root, "verify", "--manifest", str(manifest))
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    absent = inspector(store.root, "verify", "--manifest", str(tmp_path / "none.json"))
    assert absent.returncode == 2 and "cannot read the manifest" in absent.stderr


def attachment(filename: str, data: str) -> str:
    quoted = filename.replace("\\", "\\\\")
    return (
        f'--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename="{quoted}"\n'
        f"Content-Transfer-Encoding: base64\n\n{base64.b64encode(data.encode()).decode()}\n"
    )


def test_saved_attachments_get_a_safe_name_whatever_they_are_called(tmp_path: Path) -> None:
    """Long, empty, dotted, path-like and control-laden names are all saved, none outside the folder."""
    names = ["n" * 300 + ".pdf", "é" * 300 + ".pdf", "../../up.txt", "..", "", "a\x1b]0;t\x07b.txt", "C:\\dir\\win.doc"]
    names += ["same.txt", "same.txt", "x." + "e" * 300, "/etc/passwd", ".hidden"]
    parts = "".join(attachment(name, f"data {number}") for number, name in enumerate(names))
    message = f"Subject: names\nMessage-ID: <names@x.test>\nContent-Type: multipart/mixed; boundary=b\n\n{parts}--b--\n"
    forward = tmp_path / "forward"
    forward.mkdir()
    (forward / "x.test").write_bytes(record(1, message.encode()))
    out = tmp_path / "out"
    (out / "win.doc").mkdir(parents=True)  # a folder in the way: not written into
    result = inspector(forward, "show", "names@x.test", "--save-attachments", str(out))
    assert result.returncode == 0, result.stderr
    saved = {path.read_text(): path.name for path in out.iterdir() if path.is_file()}
    assert len(saved) == len(names) and not (tmp_path / "up.txt").exists()
    assert all(len(name.encode()) <= 255 and "\x1b" not in name for name in saved.values())
    assert saved["data 0"] == "n" * 251 + ".pdf" and saved["data 1"] == "_" * 251 + ".pdf", "cut, extension kept"
    assert saved["data 2"] == "up.txt" and saved["data 3"] == "attachment-4" and saved["data 4"] == "attachment-5"
    assert saved["data 5"] == "a__0_t_b.txt" and saved["data 6"] == "win-1.doc"
    assert (saved["data 7"], saved["data 8"]) == ("same.txt", "same-1.txt")
    assert saved["data 9"] == ("x." + "e" * 300)[:255] and saved["data 10"] == "passwd" and saved["data 11"] == "hidden"


@pytest.mark.parametrize(
    ("filename", "copy", "expected"),
    [
        ("report.pdf", 0, "report.pdf"),
        ("report.pdf", 2, "report-2.pdf"),
        ("n" * 300 + ".pdf", 12, "n" * 248 + "-12.pdf"),
        ("../../..", 0, "attachment-1"),
        (" . ", 0, "attachment-1"),
        ("a/b\\c", 0, "c"),
        ("tab\there\u2028.txt", 0, "tab_here_.txt"),
    ],
)
def test_attachment_names(filename: str, copy: int, expected: str) -> None:
    assert attachment_name(filename, 1, copy) == expected
