"""`maillab-inspector wait`: against a real lab on loopback, and its rounds with a clock and answers made up.

The lab is the real thing, once for the module: `maillab-server serve` storing into a
folder, `maillab-inspector serve` cataloguing it and answering HTTP, mail sent with smtplib.
The command runs as a child process, as a shell script runs it. Each test sends to its own
domain or subject, so that the tests share the lab and not their mail.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from maillab_common.cli import run_app
from maillab_common.settings import ConfigError
from maillab_inspector import waiting
from maillab_inspector.__main__ import app
from maillab_inspector.config import InspectorConfig, api_url
from maillab_inspector.web.api_v1 import WAIT_MAX_SECONDS
from tests.helpers import wait_until
from tests.hostile import CONTROL_PAYLOADS, MARKUP_PAYLOADS, assert_inert, run_in_pty
from tests.unit.conftest import free_port

RECEIVED = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@dataclass
class Lab:
    """A server and an inspector on loopback, sharing a forward folder."""

    smtp_port: int
    api: str  # the inspector's address, as MAILLAB_API_URL gives it

    def send(self, to: str, subject: str, sender: str = "app@sender.test") -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = sender, to, subject
        message.set_content("hello\n")
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=10) as client:
            client.send_message(message)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.api}/api/v1{path}", timeout=10) as response:
            return json.load(response)


def started(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("lab")
    forward = folder / "forward"
    forward.mkdir()
    smtp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "MAILLAB_FORWARD_DIR": str(forward),
        "MAILLAB_STATE_FILE": str(folder / "positions.sqlite3"),
        "MAILLAB_CATALOGUE": str(folder / "catalogue.sqlite3"),
        "MAILLAB_READY_FILE": str(folder / "ready"),
        "MAILLAB_HTTP_READY_FILE": str(folder / "http"),
        "MAILLAB_HTTP_PORT": str(http_port),
        "MAILLAB_SWEEP_INTERVAL": "0.2",
    }
    server_command = [sys.executable, "-m", "maillab_server", "serve", "--port", str(smtp_port)]
    server_command += ["--listen-host", "127.0.0.1", "--classroom-port", "0"]
    processes: list[subprocess.Popen[bytes]] = []
    lab = Lab(smtp_port, f"http://127.0.0.1:{http_port}")
    try:
        processes.append(started(server_command, env, folder / "server.log"))
        inspector = [sys.executable, "-m", "maillab_inspector", "serve", "--json"]
        processes.append(started(inspector, env, folder / "inspector.log"))

        def ready() -> bool:
            return listening(folder / "server.log", smtp_port) and answers(lab)

        wait_until(lambda: ready() or any(p.poll() is not None for p in processes), "the lab to answer", 30)
        logs = "".join(path.read_text() for path in sorted(folder.glob("*.log")))
        assert all(p.poll() is None for p in processes), logs
        yield lab
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def listening(log: Path, port: int) -> bool:
    """Whether the server said it listens (not a connection to find out: each would be a session it counts)."""
    return f"listening on 127.0.0.1:{port}" in log.read_text()


def answers(lab: Lab) -> bool:
    try:
        lab.get("/health")
    except (OSError, urllib.error.URLError):
        return False
    return True


def wait_command(
    *arguments: str, api: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`maillab-inspector wait ARGUMENTS` to its end, asking `api` (by --api-url; None: as the environment says).

    A proxy is set in its environment, and nothing listens there: the lab is asked directly.
    """
    environment = {**os.environ, "http_proxy": f"http://127.0.0.1:{free_port()}", "COLUMNS": "200", **(env or {})}
    if env is None or "MAILLAB_API_URL" not in env:
        environment.pop("MAILLAB_API_URL", None)
    command = [sys.executable, "-m", "maillab_inspector", "wait", *arguments]
    if api is not None:
        command += ["--api-url", api]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)


# -- against the real lab --------------------------------------------------------------------------------------


def test_mail_already_there_is_printed_at_once(lab: Lab) -> None:
    lab.send("alice@found.test", "password reset 1", sender="app@sender.test")
    result = wait_command("to:alice@found.test subject:reset", "--timeout", "20", api=lab.api)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"{RECEIVED}  found\.test  from <app@sender\.test>  to <alice@found\.test>  password reset 1\n", result.stdout
    ), result.stdout
    assert result.stderr == ""


class RecordingRelay:
    """A TCP relay in front of the inspector, which says when a request has gone through it to the inspector."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.asked = threading.Event()
        self.thread = threading.Thread(target=self._relay, daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        with self.listener, self.listener.accept()[0] as client, socket.create_connection(self.target) as upstream:
            request = b""
            while b"\r\n\r\n" not in request:  # a GET: its head, and no body
                request += client.recv(65536)
            upstream.sendall(request)
            self.asked.set()
            while chunk := upstream.recv(65536):
                client.sendall(chunk)


def test_mail_that_arrives_during_the_wait_ends_it(lab: Lab) -> None:
    relay = RecordingRelay(("127.0.0.1", int(lab.api.rsplit(":", 1)[1])))
    command = [sys.executable, "-m", "maillab_inspector", "wait", "to:late.test", "--timeout", "30"]
    command += ["--api-url", f"http://127.0.0.1:{relay.port}"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert relay.asked.wait(30), "the command never asked"
        assert process.poll() is None, process.communicate()
        lab.send("bob@late.test", "arrived later")
        stdout, stderr = process.communicate(timeout=30)
    relay.thread.join(10)
    assert process.returncode == 0, stderr
    assert re.fullmatch(
        rf"{RECEIVED}  late\.test  from <app@sender\.test>  to <bob@late\.test>  arrived later\n", stdout
    )


def test_count_waits_for_that_many_and_prints_them_oldest_first(lab: Lab) -> None:
    for n in range(1, 4):
        lab.send(f"user{n}@count.test", f"count {n}")
    result = wait_command("domain:count.test", "--count", "3", "--timeout", "20", api=lab.api)
    assert result.returncode == 0, result.stderr
    assert [line.rsplit("  ", 1)[1] for line in result.stdout.splitlines()] == ["count 1", "count 2", "count 3"]


def test_a_timeout_exits_1_and_lists_what_did_arrive(lab: Lab) -> None:
    lab.send("carol@partial.test", "only one of two")
    lab.send("dan@partial.test", "not what was asked for")
    lab.send("carol@elsewhere-partial.test", "only one of two, in another domain")
    wait_until(lambda: lab.get("/messages?domain=partial.test")["total"] == 2, "the messages to be catalogued")
    started_at = time.monotonic()
    result = wait_command("subject:only", "--domain", "partial.test", "--count", "2", "--timeout", "1", api=lab.api)
    assert time.monotonic() - started_at >= 1
    assert result.returncode == 1, result.stderr
    # stdout: what matched, as when the wait succeeds; stderr: the timeout, then what there is in the domain.
    assert re.fullmatch(
        rf"{RECEIVED}  partial\.test  from <.*>  to <carol@partial\.test>  only one of two\n", result.stdout
    ), result.stdout
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        "wait: timed out after 1s waiting for 2 messages matching 'subject:only' in domain 'partial.test':"
        " 1 of 2 arrived",
        "wait: the latest 2 messages in domain partial.test, newest first (matching or not):",
    ], result.stderr
    assert [re.sub(RECEIVED, "T", line) for line in lines[2:]] == [
        "  T  partial.test  from <app@sender.test>  to <dan@partial.test>  not what was asked for",
        "  T  partial.test  from <app@sender.test>  to <carol@partial.test>  only one of two",
    ], result.stderr


def test_a_timeout_with_nothing_arrived_says_so(lab: Lab) -> None:
    result = wait_command("subject:never-sent", "--domain", "nothing.test", "--timeout", "0.3", api=lab.api)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "wait: timed out after 0.3s waiting for 1 message matching 'subject:never-sent' in domain 'nothing.test':"
        " none arrived\n"
        "wait: there is no message in domain nothing.test at all\n"
    )


def test_a_timeout_without_a_domain_shows_the_latest_ten_in_the_lab(lab: Lab) -> None:
    for n in range(12):
        lab.send(f"user{n}@latest.test", f"latest {n}")
    wait_until(lambda: lab.get("/messages?domain=latest.test")["total"] == 12, "the messages to be catalogued")
    result = wait_command("subject:never-sent", "--timeout", "0.3", api=lab.api)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("waiting for 1 message matching 'subject:never-sent': none arrived"), result.stderr
    assert lines[1] == "wait: the latest 10 messages in the lab, newest first (matching or not):"
    assert [line.rsplit("  ", 1)[1] for line in lines[2:]] == [f"latest {n}" for n in range(11, 1, -1)]


def test_a_domain_the_api_refuses_is_one_line_and_exit_2(lab: Lab) -> None:
    result = wait_command("x", "--domain", "not a domain", api=lab.api)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: domain: 'not a domain' is not a valid domain name"), result.stderr


def test_json_lines_are_the_apis_summaries(lab: Lab) -> None:
    lab.send("dave@json.test", "as json é")
    lab.send("erin@json.test", "as json 2")
    result = wait_command("domain:json.test", "--count", "2", "--json", "--timeout", "20", api=lab.api)
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert printed == lab.get("/wait?query=domain:json.test&count=2&timeout=0")["messages"]
    assert [summary["subject"] for summary in printed] == ["as json é", "as json 2"]
    assert "as json é" in result.stdout  # readable, not \u00e9: only controls are escaped


def test_json_lines_on_timeout_leave_stdout_to_the_json(lab: Lab) -> None:
    lab.send("frank@jsontimeout.test", "one")
    wait_until(lambda: lab.get("/messages?domain=jsontimeout.test")["total"] == 1, "the message to be catalogued")
    arguments = ("", "--domain", "jsontimeout.test", "--count", "2", "--json", "--timeout", "1")
    result = wait_command(*arguments, api=lab.api)
    assert result.returncode == 1
    assert [json.loads(line)["subject"] for line in result.stdout.splitlines()] == ["one"]
    # The latest messages are for the person reading the log: on stderr, as lines, after the timeout's.
    lines = result.stderr.splitlines()
    assert lines[0].startswith("wait: timed out after 1s waiting for 2 messages"), result.stderr
    assert [re.sub(RECEIVED, "T", line) for line in lines[1:]] == [
        "wait: the latest message in domain jsontimeout.test (matching or not):",
        "  T  jsontimeout.test  from <app@sender.test>  to <frank@jsontimeout.test>  one",
    ], result.stderr


def test_a_malformed_query_is_one_line_naming_the_position_and_exit_2(lab: Lab) -> None:
    result = wait_command("to:a@x.test subjet:x", api=lab.api)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: query: at character 13: unknown field 'subjet'"), result.stderr
    hostile = wait_command("x\x1b]0;PWNED-TITLE\x07", api=lab.api)  # the inspector's error may quote it
    assert hostile.returncode == 2 and hostile.stderr.count("\n") == 1, hostile.stderr
    assert_inert(hostile.stderr.encode())


def test_a_lab_that_does_not_answer_is_one_line_naming_its_address_and_make_up() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    for result in (
        wait_command("subject:x", api=api),
        wait_command("subject:x", api=None, env={"MAILLAB_API_URL": api}),
    ):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: the inspector's API at {api} did not answer (Connection refused)")
        assert "`make up`" in result.stderr


def test_something_else_at_the_address_is_one_line(lab: Lab) -> None:
    result = wait_command("subject:x", api=f"{lab.api}/elsewhere")
    assert result.returncode == 2
    assert result.stderr == f"error: {lab.api}/elsewhere answered 404: not found: /elsewhere/api/v1/wait\n"


def test_without_an_address_it_asks_the_port_make_up_publishes_on(lab: Lab) -> None:
    lab.send("gina@published.test", "on the published port")
    port = lab.api.rsplit(":", 1)[1]
    result = wait_command("domain:published.test", "--timeout", "20", api=None, env={"MAILLAB_HTTP_PORT": port})
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("on the published port\n"), result.stdout


@pytest.mark.parametrize(
    ("arguments", "env", "error"),
    [
        (("x", "--count", "0"), {}, "--count"),
        (("x", "--count", "1001"), {}, "--count"),
        (("x", "--timeout", "-1"), {}, "--timeout"),
        (("x", "--timeout", "nan"), {}, "--timeout"),
        (("x", "--api-url", "ftp://x.test"), {}, "--api-url='ftp://x.test' is not an http:// or https:// address"),
        (("x",), {"MAILLAB_API_URL": "localhost:8025"}, "MAILLAB_API_URL='localhost:8025' is not an http://"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    arguments: tuple[str, ...],
    env: dict[str, str],
    error: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MAILLAB_API_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:  # in this process: what is tested is refused before any I/O
        run_app(app, "maillab-inspector", args=["wait", *arguments])
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and error in stderr, stderr


def test_help_names_the_address_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_app(app, "maillab-inspector", args=["wait", "--help"])
    assert exited.value.code == 0
    assert "MAILLAB_API_URL" in capsys.readouterr().out


def test_hostile_subjects_are_shown_never_obeyed(lab: Lab) -> None:
    payloads = CONTROL_PAYLOADS + MARKUP_PAYLOADS
    for n, payload in enumerate(payloads):
        # As encoded words: the header itself stays 7-bit, the decoded subject holds the controls.
        encoded = base64.b64encode(f"hostile {payload}".encode()).decode()
        lab.send(f"victim{n}@hostile.test", f"=?utf-8?b?{encoded}?=")
    wanted = ("domain:hostile.test", "--count", str(len(payloads)), "--timeout", "20", "--api-url", lab.api)
    for extra in ((), ("--json",)):
        code, output = run_in_pty([sys.executable, "-m", "maillab_inspector", "wait", *wanted, *extra])
        assert code == 0, output
        assert_inert(output, markup=MARKUP_PAYLOADS)
        assert output.count(b"\n") == len(payloads), output  # one line each, whatever the subject holds
    result = wait_command(*wanted, "--json", api=None)
    exact = lab.get(f"/wait?query=domain:hostile.test&count={len(payloads)}&timeout=0")["messages"]
    assert [json.loads(line) for line in result.stdout.splitlines()] == exact  # JSON keeps the text exact


@pytest.mark.parametrize(
    ("group", "payloads", "markup"),
    [("controls", CONTROL_PAYLOADS, ()), ("markup", MARKUP_PAYLOADS, MARKUP_PAYLOADS)],
)
def test_hostile_mail_among_the_latest_on_a_timeout_is_shown_never_obeyed(
    lab: Lab, group: str, payloads: tuple[str, ...], markup: tuple[str, ...]
) -> None:
    assert len(payloads) <= waiting.LATEST_SHOWN  # all of them among the latest
    domain = f"hostile-latest-{group}.test"
    for n, payload in enumerate(payloads):
        encoded = base64.b64encode(f"hostile {payload}".encode()).decode()
        lab.send(f"victim{n}@{domain}", f"=?utf-8?b?{encoded}?=")
    wait_until(lambda: lab.get(f"/messages?domain={domain}")["total"] == len(payloads), "the mail to be catalogued")
    wanted = ("subject:never-sent", "--domain", domain, "--timeout", "0.2", "--api-url", lab.api)
    for extra in ((), ("--json",)):
        code, output = run_in_pty([sys.executable, "-m", "maillab_inspector", "wait", *wanted, *extra])
        assert code == 1, output
        assert_inert(output, markup=markup)
        # The timeout's line, the heading, and one line each, whatever the subject holds.
        assert output.count(b"\n") == 2 + len(payloads), output
        assert output.count(b"hostile ") == len(payloads), output


# -- the rounds, with a clock and answers made up --------------------------------------------------------------


class ScriptedInspector:
    """An `Ask` that answers from a script, each answer taking the time it names on a clock the test owns."""

    def __init__(self, *answers: tuple[int, dict[str, object] | bytes, float]) -> None:
        self.answers = list(answers)
        self.now = 0.0
        self.asked: list[tuple[str, float]] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, url: str, timeout: float) -> tuple[int, bytes]:
        self.asked.append((url, timeout))
        status, body, takes = self.answers.pop(0)
        self.now += takes
        return status, body if isinstance(body, bytes) else json.dumps(body).encode()

    def timeouts(self) -> list[str]:
        return [re.search(r"timeout=([0-9.]+)", url)[1] for url, _ in self.asked]  # type: ignore[index]


def answer(*subjects: str) -> dict[str, object]:
    return {"matched": len(subjects), "messages": [{"subject": subject} for subject in subjects]}


def test_a_wait_longer_than_the_apis_cap_is_asked_for_in_rounds_to_its_deadline() -> None:
    assert WAIT_MAX_SECONDS == 300.0
    inspector = ScriptedInspector((408, answer(), 300.0), (408, answer(), 300.0), (408, answer("a"), 100.0))
    outcome = waiting.wait_for(inspector, "http://lab", waiting.Wanted("x", 2, 700.0), inspector.clock)
    assert outcome == waiting.Outcome(found=False, messages=(waiting.Arrived({"subject": "a"}),))
    assert inspector.timeouts() == ["300.000", "300.000", "100.000"]
    assert [timeout for _, timeout in inspector.asked] == [330.0, 330.0, 130.0]  # the socket outwaits the API


def test_rounds_end_when_the_mail_is_there() -> None:
    inspector = ScriptedInspector((408, answer(), 300.0), (200, answer("a", "b"), 5.0))
    outcome = waiting.wait_for(inspector, "http://lab", waiting.Wanted("x", 2, 1000.0), inspector.clock)
    assert outcome.found and [m.text("subject") for m in outcome.messages] == ["a", "b"]
    assert len(inspector.asked) == 2


def test_a_round_ended_early_is_the_inspector_stopping() -> None:
    inspector = ScriptedInspector((408, answer("a"), 2.0))
    with pytest.raises(waiting.Interrupted, match=r"ended the wait after 2\.0s of 10s: it is stopping") as raised:
        waiting.wait_for(inspector, "http://lab", waiting.Wanted("x", 2, 10.0), inspector.clock)
    assert [m.text("subject") for m in raised.value.messages] == ["a"]


def test_a_zero_timeout_asks_once() -> None:
    inspector = ScriptedInspector((408, answer(), 0.0))
    assert not waiting.wait_for(inspector, "http://lab", waiting.Wanted("x", 1, 0.0), inspector.clock).found
    assert inspector.timeouts() == ["0.000"]


def test_the_request_carries_the_query_as_it_was_written() -> None:
    url = waiting.wait_url("http://lab:8025", waiting.Wanted('subject:"a b" to:x@y.test&z', 3), 12.5)
    assert url == ("http://lab:8025/api/v1/wait?query=subject%3A%22a+b%22+to%3Ax%40y.test%26z&count=3&timeout=12.500")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "query: at character 1: unknown field 'x'", "position": 0}, "query: at character 1: unknown"),
        (421, {"error": "this inspector does not answer to the host 'lab'"}, "MAILLAB_HTTP_HOSTS"),
        (500, {"error": "internal error (KeyError): a bug in the inspector"}, "http://lab answered 500: internal"),
        (404, b"<html>not here</html>", "http://lab answered 404, not as maillab's inspector does"),
        (200, {"matched": 1}, "answered 200 without a list of messages"),
        (408, {"messages": ["a"]}, "answered 408 without a list of messages"),
        (200, b"\xff", "answered 200 without a list of messages"),
    ],
)
def test_an_answer_that_is_not_a_waits_is_refused_in_one_line(
    status: int, body: dict[str, object] | bytes, error: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(waiting.Refused, match=re.escape(error)):
        waiting.read_answer("http://lab", status, raw)


def test_a_line_shows_fields_of_the_wrong_kind_as_nothing() -> None:
    odd = waiting.Arrived({"received": 5, "envelope": {"from": None, "to": "x"}, "subject": ["a"]})
    assert waiting.as_line(odd) == "    from <>  to   "


def test_the_unreachable_line_names_the_reason() -> None:
    line = waiting.unreachable(
        "http://lab:8025", urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    )
    assert line.startswith("the inspector's API at http://lab:8025 did not answer (Connection refused): ")
    assert "(timed out)" in waiting.unreachable("http://lab:8025", TimeoutError("timed out"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:8025", "http://127.0.0.1:8025"),
        (" http://inspector:8025/ ", "http://inspector:8025"),
        ("http://127.0.0.1:8025/api/v1/", "http://127.0.0.1:8025"),  # as the curl examples write it
        ("https://[::1]:8443/lab/", "https://[::1]:8443/lab"),
    ],
)
def test_the_api_url_setting(value: str, expected: str) -> None:
    assert api_url(value, name="MAILLAB_API_URL") == expected
    assert InspectorConfig.from_env({"MAILLAB_API_URL": value}).api_url == expected


@pytest.mark.parametrize(
    "value",
    [
        "localhost:8025",
        "ftp://x.test",
        "http://",
        "http://x.test:0",
        "http://x.test:99999",
        "http://a b",
        "http://x?q=1",
    ],
)
def test_a_bad_api_url_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="MAILLAB_API_URL="):
        InspectorConfig.from_env({"MAILLAB_API_URL": value})


def test_the_api_url_defaults_to_the_labs_published_port() -> None:
    assert InspectorConfig.from_env({}).api_url == "http://127.0.0.1:8025"


def test_the_latest_are_asked_for_in_the_waits_domain_and_read_newest_first() -> None:
    inspector = ScriptedInspector((200, {"messages": [{"subject": "b"}, {"subject": "a"}], "next_cursor": "c"}, 0.1))
    found = waiting.latest(inspector, "http://lab", "one.test")
    assert [arrived.text("subject") for arrived in found.messages] == ["b", "a"] and found.problem == ""
    assert inspector.asked == [("http://lab/api/v1/messages?limit=10&domain=one.test", waiting.LATEST_SECONDS)]
    assert waiting.latest_url("http://lab", None) == "http://lab/api/v1/messages?limit=10"


def refusing(exc: BaseException) -> waiting.Ask:
    def ask(url: str, timeout: float) -> tuple[int, bytes]:
        raise exc

    return ask


@pytest.mark.parametrize(
    ("ask", "problem"),
    [
        (ScriptedInspector((500, {"error": "internal error (KeyError)"}, 0.0)), "http://lab answered 500: internal"),
        (ScriptedInspector((200, b"<html>", 0.0)), "http://lab answered 200 without a list of messages"),
        (ScriptedInspector((404, b"not here", 0.0)), "http://lab answered 404, not as maillab's inspector does"),
        (refusing(ConnectionRefusedError(111, "Connection refused")), "http://lab did not answer (Connection refused)"),
        (refusing(http.client.RemoteDisconnected("closed")), "http://lab did not answer (closed)"),
    ],
)
def test_latest_that_cannot_be_read_is_a_line_of_the_report_not_a_failure(ask: waiting.Ask, problem: str) -> None:
    found = waiting.latest(ask, "http://lab", None)
    assert found.messages == () and found.problem.startswith(problem), found.problem
    [line] = waiting.latest_lines(found, None)
    assert line.startswith(f"wait: the latest messages in the lab could not be read: {problem}")


def test_the_latest_lines_show_every_field_escaped() -> None:
    hostile = "\x1b]0;PWNED\x07\x9b31m\n"
    found = waiting.Latest(
        messages=(
            waiting.Arrived(
                {
                    "received": f"2026{hostile}",
                    "domain": f"d{hostile}",
                    "envelope": {"from": f"s{hostile}", "to": [f"r{hostile}"]},
                    "subject": f"x{hostile}",
                }
            ),
        )
    )
    lines = waiting.latest_lines(found, f"one.test{hostile}")
    assert len(lines) == 2
    for line in lines:
        assert not any(character in line for character in "\x1b\x07\x9b\n"), line
    assert lines[0] == "wait: the latest message in domain one.test\\x1b]0;PWNED\\x07\\x9b31m\\x0a (matching or not):"
    assert lines[1].count("PWNED") == 5
    [problem] = waiting.latest_lines(waiting.Latest(problem=f"no{hostile}"), None)
    assert problem.endswith("no\\x1b]0;PWNED\\x07\\x9b31m\\x0a")


def test_a_domain_goes_with_the_wait_and_into_what_it_says() -> None:
    wanted = waiting.Wanted("subject:x", 2, 1.0, "one.test")
    assert waiting.wait_url("http://lab", wanted, 1.0).endswith("&timeout=1.000&domain=one.test")
    assert "domain" not in waiting.wait_url("http://lab", waiting.Wanted("subject:x"), 1.0)
    assert wanted.described() == "2 messages matching 'subject:x' in domain 'one.test'"
