"""The inspector's commands as real processes over real forward files."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from maillab_inspector.attachments import attachment_name
from maillab_server.store import ForwardStore
from tests.helpers import MULTIPART, Watch, inspector, record
from tests.store_helpers import deliver


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
    deliver(store, {"a.test": record(1)})  # stored before the first start: not printed
    watch = Watch(store.root, state)
    deliver(store, {"a.test": record(2), "b.test": record(3)})
    assert sorted(watch.subjects(2)) == ["n2", "n3"]
    assert watch.stop() == 0
    deliver(store, {"a.test": record(4)})  # while the inspector is down
    deliver(store, {"c.test": record(5)})
    watch = Watch(store.root, state)
    assert sorted(watch.subjects(2)) == ["n4", "n5"]
    deliver(store, {"a.test": record(6)})
    assert watch.printed_until("n6") == ["n6"], "n1 to n3 are not printed again"
    # kill -9 once the position is saved; between a print and its save, a kill would
    # print that message again (docs/inspector.md says why that window cannot close).
    watch.wait_for_state(state, "a.test", (store.root / "a.test").stat().st_size)
    assert watch.stop(signal.SIGKILL) == -signal.SIGKILL
    deliver(store, {"a.test": record(7)})
    watch = Watch(store.root, state)
    assert watch.subjects(1) == ["n7"]
    deliver(store, {"c.test": record(8)})
    assert watch.printed_until("n8") == ["n8"], "nothing before n7 is printed again"
    watch.stop()


def test_from_start_prints_what_is_stored_and_domain_filters(folders: tuple[ForwardStore, Path]) -> None:
    store, state = folders
    deliver(store, {"a.test": record(1), "b.test": record(1)})
    deliver(store, {"a.test": record(2)})
    watch = Watch(store.root, state, "--from-start", "--domain", "A.TEST")
    assert watch.subjects(2) == ["n1", "n2"]
    deliver(store, {"b.test": record(3)})
    deliver(store, {"a.test": record(4)})
    assert watch.subjects(1) == ["n4"]
    watch.stop()


def test_garbage_gives_a_warning_and_watching_goes_on(folders: tuple[ForwardStore, Path]) -> None:
    store, state = folders
    watch = Watch(store.root, state)
    with open(store.root / "a.test", "ab") as file:
        file.write(b"this is not a record\n" * 3)
    deliver(store, {"a.test": record(1)})
    assert watch.subjects(1) == ["n1"]
    watch.wait_for_log("damaged bytes")
    assert watch.process.poll() is None
    assert watch.stop() == 0


def test_list_and_show_with_saved_attachments(folders: tuple[ForwardStore, Path], tmp_path: Path) -> None:
    store, _ = folders
    hostile = MULTIPART.replace(b'filename="p.png"', b'filename="../../escape.png"')
    deliver(store, {"a.test": record(1), "b.test": record(2, hostile)})
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
    deliver(store, {"a.test": record(1)})
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


def test_verify_and_list_speak_json_for_scripts(folders: tuple[ForwardStore, Path], tmp_path: Path) -> None:
    store, _ = folders
    hostile_id = "<3\x1b]0;x\x07@x.test>"
    deliver(store, {"a.test": record(1), "b.test": record(2)})
    deliver(store, {"a.test": record(1)})  # a second copy of message 1
    entry = {"message_id": "<1@x.test>", "rcpt_tos": ["bob@a.test"], "subject": "n1", "attachments": []}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": 1, "messages": [entry, {**entry, "message_id": hostile_id}]}))
    result = inspector(store.root, "verify", "--manifest", str(manifest), "--timeout", "0", "--json")
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 1
    report = json.loads(result.stdout)
    assert report == {
        "manifest": "manifest.json",
        "ok": False,
        **{"expected": 2, "delivered": 1, "missing": 1, "corrupted": 0, "duplicated": 1, "unsent": 0, "damaged": 0},
        "findings": [
            {"problem": "missing", "message_id": hostile_id, "domain": "a.test"},
            {"problem": "duplicated", "message_id": "<1@x.test>", "domain": "a.test", "copies": 2},
        ],
    }
    listed = inspector(store.root, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((line["domain"], line["subject"]) for line in lines) == [
        ("a.test", "n1"),
        ("a.test", "n1"),
        ("b.test", "n2"),
    ]


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
