"""Fault injection over HTTP (GET, PUT, DELETE /api/v1/chaos) and the /chaos page, over a real rules folder.

The real app writes and reads real rules files (maillab_common.chaos_files) in a temporary
folder. The server's part, applying each new rules file and reporting it in state.json, is
played by `RulesApplier`, a thread that does what the server does with zero counts; the real
server is exercised against the real inspector in tests/integration/test_chaos.py.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from maillab_common.chaos import parse_rules
from maillab_common.chaos_files import (
    FROM_FILE,
    ChaosState,
    RuleCount,
    Superseded,
    now_iso,
    read_rules,
    wait_applied,
    write_rules,
    write_state,
)
from maillab_inspector.config import InspectorConfig
from maillab_inspector.web.app import create_app
from maillab_inspector.web.chaos import APPLY_SECONDS, BODY_BYTES, RULES_CHARACTERS
from tests.helpers import run_cli
from tests.unit.test_web_api import Lab, TestClient
from tests.unit.test_web_api import lab as lab  # the fixture
from tests.unit.test_web_pages import Page, page

FLAKY = "rcpt reply=451 to=*@flaky.test times=2"
# A reply's text is printable ASCII: markup, as far as a page is concerned.
HOSTILE = 'data-end reply="554:<script>alert(1)</script><b>x</b>&amp;"'


class RulesApplier:
    """Plays the server: applies each new rules file, as its watcher does, and reports it with zero counts.

    `racer`: (rules, set_by) another writer sets over each change of the other's before it is applied.
    """

    def __init__(self, directory: Path, racer: tuple[str, str] | None = None) -> None:
        self.directory = directory
        self.racer = racer
        self.applied: list[str] = []  # the generations, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rules-applier", daemon=True)

    def __enter__(self) -> RulesApplier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            rules = read_rules(self.directory)
            if rules is None or (self.applied and self.applied[-1] == rules.generation):
                continue
            if self.racer is not None and rules.set_by != self.racer[1]:
                write_rules(self.directory, *self.racer)  # applied next time round, never the change it replaced
                continue
            counts = tuple(RuleCount(rule=str(rule), fired=0, matched=0) for rule in parse_rules(rules.text))
            state = ChaosState(
                generation=rules.generation, source=FROM_FILE, rules=counts, reserved_fired=0, updated_at=now_iso()
            )
            write_state(self.directory, state)
            self.applied.append(rules.generation)


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    made = tmp_path / "chaos"
    made.mkdir()
    return made


@pytest.fixture
def client(lab: Lab, chaos_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(lab.catalogue, lab.forward, None, chaos_dir=chaos_dir)) as made:
        yield made


@pytest.fixture
def server(chaos_dir: Path) -> Iterator[RulesApplier]:
    with RulesApplier(chaos_dir) as applier:
        yield applier


def no_report(pending: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "reported": False,
        "source": "none",
        "generation": "",
        "rules": [],
        "reserved_fired": 0,
        "updated_at": "",
        "problem": "",
        "pending": pending,
    }


# -- the API ------------------------------------------------------------------------------


def test_before_the_server_reports_get_answers_no_rules_and_says_so(client: TestClient) -> None:
    response = client.get("/api/v1/chaos")
    assert response.status_code == 200
    assert response.json() == no_report()


def test_put_writes_the_rules_and_answers_once_the_server_applies_them(
    client: TestClient, server: RulesApplier, chaos_dir: Path
) -> None:
    response = client.put("/api/v1/chaos", json={"rules": f"  {FLAKY} ;data disconnect p=0.5 seed=7 "})
    assert response.status_code == 200, response.text
    report = response.json()
    written = read_rules(chaos_dir)
    assert written is not None and written.set_by == "http"
    assert report["generation"] == written.generation == server.applied[-1]
    assert (report["reported"], report["source"], report["pending"], report["problem"]) == (True, "file", None, "")
    assert report["rules"] == [
        {"rule": FLAKY, "fired": 0, "matched": 0},
        {"rule": "data disconnect p=0.5 seed=7", "fired": 0, "matched": 0},
    ]
    assert report["updated_at"]
    assert client.get("/api/v1/chaos").json() == report


def test_get_shows_the_servers_counts_and_a_change_it_has_not_applied(client: TestClient, chaos_dir: Path) -> None:
    state = ChaosState(
        generation="",
        source="environment",
        rules=(RuleCount(rule=FLAKY, fired=2, matched=5),),
        reserved_fired=3,
        updated_at="2026-11-29T10:00:00.000+00:00",
    )
    write_state(chaos_dir, state)
    written = write_rules(chaos_dir, "helo disconnect", "cli")
    report = client.get("/api/v1/chaos").json()
    assert report["rules"] == [{"rule": FLAKY, "fired": 2, "matched": 5}]
    assert (report["source"], report["reserved_fired"], report["updated_at"]) == ("environment", 3, state.updated_at)
    assert report["pending"] == {
        "text": "helo disconnect",
        "generation": written.generation,
        "set_at": written.set_at,
        "set_by": "cli",
    }


def test_a_rule_that_does_not_parse_is_a_400_naming_the_rule_and_position_and_changes_nothing(
    client: TestClient, chaos_dir: Path
) -> None:
    before = write_rules(chaos_dir, FLAKY, "cli")
    text = f"{FLAKY}; rcpt reply=451 p=2"
    response = client.put("/api/v1/chaos", json={"rules": text})
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "rule", "position"}
    assert body["rule"] == 2
    assert text[body["position"] :] == "2", "position counts from 0, as for a malformed query"
    assert body["error"].startswith(f"rules: rule 2, at character {body['position'] + 1}: ")
    assert read_rules(chaos_dir) == before


def test_without_a_server_to_apply_them_the_rules_are_saved_and_put_answers_202_pending(
    client: TestClient, chaos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("maillab_inspector.web.chaos.APPLY_SECONDS", 0.2)
    response = client.put("/api/v1/chaos", json={"rules": FLAKY})
    assert response.status_code == 202, response.text
    written = read_rules(chaos_dir)
    assert written is not None
    pending = {"text": FLAKY, "generation": written.generation, "set_at": written.set_at, "set_by": "http"}
    assert response.json() == no_report(pending)
    assert client.get("/api/v1/chaos").json()["pending"] == pending
    assert APPLY_SECONDS == 2.0


def test_delete_clears_the_rules(client: TestClient, server: RulesApplier, chaos_dir: Path) -> None:
    assert client.put("/api/v1/chaos", json={"rules": FLAKY}).status_code == 200
    response = client.delete("/api/v1/chaos")
    assert response.status_code == 200, response.text
    assert (response.json()["rules"], response.json()["pending"]) == ([], None)
    cleared = read_rules(chaos_dir)
    assert cleared is not None and cleared.text == "" and cleared.generation == server.applied[-1]


@pytest.mark.parametrize("applied_before", [False, True])
def test_a_change_replaced_by_another_writers_before_it_is_applied_is_a_409(
    client: TestClient, chaos_dir: Path, applied_before: bool
) -> None:
    if applied_before:  # the server reports older rules: it must move past them, to the CLI's
        write_state(
            chaos_dir, ChaosState(generation="old", source=FROM_FILE, rules=(), reserved_fired=0, updated_at="")
        )
    with RulesApplier(chaos_dir, racer=(FLAKY, "cli")) as server:
        started = time.monotonic()
        response = client.put("/api/v1/chaos", json={"rules": "data disconnect"})
        assert time.monotonic() - started < APPLY_SECONDS, "it need not wait for what will never come"
    assert response.status_code == 409, response.text
    later = read_rules(chaos_dir)
    assert later is not None and later.set_by == "cli" and later.generation == server.applied[-1]
    assert response.json() == {
        "error": f"saved, but replaced by a later change (set by cli at {later.set_at}) "
        "before the server applied this one"
    }
    report = client.get("/api/v1/chaos").json()
    assert (report["rules"], report["pending"]) == ([{"rule": FLAKY, "fired": 0, "matched": 0}], None)


def test_the_cli_says_when_its_change_was_replaced_by_another_writers(chaos_dir: Path) -> None:
    with RulesApplier(chaos_dir, racer=(FLAKY, "http")):
        result = run_cli(
            "maillab_server", "chaos", "set", "data disconnect", env={**os.environ, "MAILLAB_CHAOS_DIR": str(chaos_dir)}
        )
    later = read_rules(chaos_dir)
    assert later is not None and later.set_by == "http"
    assert result.returncode == 1
    assert result.stderr == (
        f"error: saved, but replaced by a later change (set by http at {later.set_at}) "
        "before the server applied this one\n"
    )


def test_the_wait_for_a_change_ends_superseded_only_once_the_server_moves_on(chaos_dir: Path) -> None:
    ours = write_rules(chaos_dir, "helo disconnect", "http")
    before = "older"
    write_state(chaos_dir, ChaosState(generation=before, source=FROM_FILE, rules=(), reserved_fired=0, updated_at=""))
    later = write_rules(chaos_dir, FLAKY, "cli")
    assert wait_applied(chaos_dir, ours.generation, 0.1, before=before) is None, "the server may apply ours yet"
    moved = ChaosState(generation=later.generation, source=FROM_FILE, rules=(), reserved_fired=0, updated_at="")
    write_state(chaos_dir, moved)
    with pytest.raises(Superseded) as raised:
        wait_applied(chaos_dir, ours.generation, 5.0, before=before)
    assert raised.value.later == later
    write_state(chaos_dir, replace(moved, generation=ours.generation))
    assert wait_applied(chaos_dir, ours.generation, 0.1, before=before) is not None, "applied after all: not replaced"


def test_the_files_are_readable_by_all_whoever_writes_them(chaos_dir: Path) -> None:
    write_rules(chaos_dir, FLAKY, "cli")
    write_state(chaos_dir, ChaosState(generation="", source=FROM_FILE, rules=(), reserved_fired=0, updated_at=""))
    for name in ("rules.json", "state.json"):
        assert stat.S_IMODE((chaos_dir / name).stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "the body is not JSON"),
        (b"", "the body"),
        (b"{}", "rules"),
        (b'{"rules": 7}', "rules"),
        (b'{"rules": ["rcpt disconnect"]}', "rules"),
        (b'{"rules": "", "extra": 1}', "extra"),
        (b'"rcpt disconnect"', "the body"),
    ],
)
def test_a_body_that_is_not_rules_is_a_400(client: TestClient, chaos_dir: Path, body: bytes, named: str) -> None:
    response = client.put("/api/v1/chaos", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}
    assert named in response.json()["error"]
    assert read_rules(chaos_dir) is None


def test_a_folder_that_cannot_be_written_or_read_is_a_503(lab: Lab, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with TestClient(create_app(lab.catalogue, lab.forward, None, chaos_dir=missing)) as client:
        for response in (client.put("/api/v1/chaos", json={"rules": FLAKY}), client.delete("/api/v1/chaos")):
            assert response.status_code == 503
            assert response.json()["error"].startswith("cannot change the fault-injection rules: cannot write")
        assert client.get("/api/v1/chaos").json()["reported"] is False
        missing.mkdir()
        (missing / "state.json").write_text("{not json")
        unreadable = client.get("/api/v1/chaos")
        assert unreadable.status_code == 503
        assert "state.json is not JSON" in unreadable.json()["error"]


def test_the_openapi_document_gives_every_answer_of_chaos(client: TestClient) -> None:
    operations = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/chaos"]
    assert set(operations) == {"get", "put", "delete"}
    assert set(operations["get"]["responses"]) == {"200", "503"}
    assert set(operations["put"]["responses"]) == {"200", "202", "400", "409", "413", "503"}
    assert set(operations["delete"]["responses"]) == {"200", "202", "409", "503"}
    assert operations["put"]["requestBody"]["required"] is True
    schema = operations["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ChaosRules"}
    rules = client.get("/api/v1/openapi.json").json()["components"]["schemas"]["ChaosRules"]
    assert rules["required"] == ["rules"] and rules["properties"]["rules"]["maxLength"] == RULES_CHARACTERS


def test_a_body_over_128_kib_is_refused_before_it_is_read_whole(
    client: TestClient, chaos_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("maillab_inspector.web.chaos.APPLY_SECONDS", 0.1)

    def chunks() -> Iterator[bytes]:
        yield b'{"rules": "'
        for _ in range(1024):  # 64 MiB if it were all read
            yield b"x" * 65536

    response = client.put("/api/v1/chaos", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"error": f"the body is over {BODY_BYTES // 1024} KiB"}
    assert read_rules(chaos_dir) is None
    within = json.dumps({"rules": "rcpt reply=451" + " " * (RULES_CHARACTERS - 20)}).encode()
    assert BODY_BYTES > len(within) > RULES_CHARACTERS - 10
    assert client.put("/api/v1/chaos", content=within).status_code == 202


def test_another_sites_origin_and_an_unknown_host_may_not_change_the_rules(lab: Lab, chaos_dir: Path) -> None:
    app = create_app(lab.catalogue, lab.forward, None, hosts=("127.0.0.1", "localhost"), chaos_dir=chaos_dir)
    with TestClient(app, base_url="http://localhost:8025") as client:
        attacker = {"Origin": "http://attacker.example"}
        assert client.put("/api/v1/chaos", json={"rules": FLAKY}, headers=attacker).status_code == 403
        assert client.delete("/api/v1/chaos", headers=attacker).status_code == 403
        rebound = {"Host": "rebind.attacker.example:8025"}
        assert client.put("/api/v1/chaos", json={"rules": FLAKY}, headers=rebound).status_code == 421
        assert client.get("/api/v1/chaos", headers=rebound).status_code == 421
        assert client.get("/chaos", headers=rebound).status_code == 421
        assert read_rules(chaos_dir) is None, "nothing was written"


# -- the page ----------------------------------------------------------------------------


def test_the_page_shows_the_rules_their_counts_and_the_servers_report(client: TestClient, chaos_dir: Path) -> None:
    shown = page(client, "/chaos")
    assert shown.by_id("chaos-reported").get("data-reported") == "false"
    assert "hidden" in shown.by_id("chaos-rules").attributes
    assert "hidden" not in shown.by_id("chaos-none").attributes
    state = ChaosState(
        generation="0a1b",
        source="file",
        rules=(
            RuleCount(rule=FLAKY, fired=2, matched=5),
            RuleCount(rule="helo disconnect every=3", fired=1, matched=3),
        ),
        reserved_fired=4,
        updated_at="2026-11-29T10:00:00.000+00:00",
        problem="rules.json: rule 1 ...",
    )
    write_state(chaos_dir, state)
    shown = page(client, "/chaos")
    assert table_rows(shown) == [[FLAKY, "2", "5"], ["helo disconnect every=3", "1", "3"]]
    facts = {name: shown.by_id(f"chaos-{name}").text for name in ("source", "generation", "updated", "reserved")}
    assert facts == {"source": "file", "generation": "0a1b", "updated": state.updated_at, "reserved": "4"}
    assert shown.by_id("chaos-problem").text == state.problem
    assert shown.by_id("chaos-text").text == f"{FLAKY}; helo disconnect every=3", "the form starts with them"
    assert "hidden" in shown.by_id("chaos-pending").attributes
    assert shown.by_id("chaos").get("data-refresh-ms") == "1000"
    scripts = [element.get("src") for element in shown.elements if element.tag == "script"]
    assert scripts == ["/static/chaos.js"]
    assert client.get("/static/chaos.js").status_code == 200


def table_rows(shown: Page) -> list[list[str]]:
    """The text of each cell of each row of the rules table's body, in order."""
    start = shown.elements.index(shown.by_id("chaos-rule-rows"))
    rows: list[list[str]] = []
    for element in shown.elements[start + 1 :]:
        if element.tag == "tr":
            rows.append([])
        elif element.tag == "td":
            rows[-1].append(element.text.strip())
        elif element.tag != "code":
            break
    return rows


def test_a_hostile_rule_is_text_on_the_page_never_markup(client: TestClient, chaos_dir: Path) -> None:
    write_rules(chaos_dir, HOSTILE, "http")  # pending: in the form and the pending line
    write_state(
        chaos_dir,
        ChaosState(
            generation="",
            source="file",
            rules=(RuleCount(rule=HOSTILE, fired=1, matched=1),),
            reserved_fired=0,
            updated_at=now_iso(),
            problem="<img src=x onerror=alert(2)>",
        ),
    )
    shown = page(client, "/chaos")
    assert shown.by_id("chaos-pending-text").text == HOSTILE
    assert shown.by_id("chaos-text").text == HOSTILE
    assert shown.by_id("chaos-problem").text == "<img src=x onerror=alert(2)>"
    assert table_rows(shown) == [[HOSTILE, "1", "1"]]
    assert [e.tag for e in shown.elements if e.tag in ("script", "img", "b")] == ["script"]  # only chaos.js
    assert not [e for e in shown.elements for name in e.attributes if name.startswith("on")]


def test_an_unreadable_folder_shows_its_error_and_still_the_form(client: TestClient, chaos_dir: Path) -> None:
    (chaos_dir / "rules.json").write_text("[1, 2]")
    shown = page(client, "/chaos")
    assert "is not a rules file" in shown.by_id("chaos-unreadable").text
    assert "hidden" not in shown.by_id("chaos-unreadable").attributes
    assert shown.by_id("chaos-text").text == ""


def test_every_page_links_to_the_chaos_page(client: TestClient) -> None:
    for path in ("/", "/verify", "/chaos"):
        assert page(client, path).by_id("chaos-link").get("href") == "/chaos"


def test_the_chaos_folder_is_a_setting() -> None:
    assert InspectorConfig.from_env({}).chaos_dir == Path("/chaos")
    assert InspectorConfig.from_env({"MAILLAB_CHAOS_DIR": "/tmp/rules"}).chaos_dir == Path("/tmp/rules")
