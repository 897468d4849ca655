"""The pytest plugin (maillab_client.plugin), run the way its users run it: inner pytest sessions
(pytester) whose tests use `inbox`, against a real lab of server and inspector processes on
this host, and under pytest-xdist."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# httpx imports httpcore only when it first needs it, and keeps a map of httpcore's exceptions
# from that import. Imported here, before any inner session: pytester drops after each one the
# modules it imported, and an httpcore imported afresh would raise errors httpx does not map.
import httpcore  # noqa: F401
import httpx
import pytest

from maillab_client.plugin import (
    ContainerLab,
    Inbox,
    InboxOptions,
    MarkerError,
    SettingError,
    Settings,
    inbox_domain,
    inbox_options,
)
from tests.unit.conftest import free_port

pytest_plugins = ["pytester"]

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class HostLab:
    """`maillab-server serve` and `maillab-inspector serve` as child processes sharing a forward folder.

    Each logs to a file of its own beside the folder (a pipe nobody reads would fill and block
    it), and `stop` ends whatever `start` got to start.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.smtp_port, self.http_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.http_port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=f"{self.api_url}/api/v1", trust_env=False, timeout=10)

    def start(self) -> None:
        forward, state = self.root / "forward", self.root / "state"
        forward.mkdir()
        state.mkdir()
        # None of the developer's MAILLAB_* settings; no classroom listener, which would bind 2526.
        env = {name: value for name, value in os.environ.items() if not name.startswith("MAILLAB_")}
        server = [sys.executable, "-m", "maillab_server", "serve", "--port", str(self.smtp_port)]
        server += ["--listen-host", "127.0.0.1", "--forward-dir", str(forward), "--classroom-port", "0"]
        self._spawn("server", server, {**env, "MAILLAB_CLASSROOM_PORT": "0", "MAILLAB_LOG_FORMAT": "json"})
        self._spawn(
            "inspector",
            [sys.executable, "-m", "maillab_inspector", "serve", "--json"],
            {
                **env,
                "MAILLAB_FORWARD_DIR": str(forward),
                "MAILLAB_STATE_FILE": str(state / "positions.sqlite3"),
                "MAILLAB_CATALOGUE": str(state / "catalogue.sqlite3"),
                "MAILLAB_READY_FILE": str(state / "ready"),
                "MAILLAB_HTTP_READY_FILE": str(state / "http"),
                "MAILLAB_HTTP_PORT": str(self.http_port),
                "MAILLAB_SWEEP_INTERVAL": "0.2",
            },
        )
        self.wait_until_ready()

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        with (self.root / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
            self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_until_ready(self) -> None:
        # Nothing to wait on: ask until the SMTP server greets and the inspector's API answers.
        from tests.helpers import wait_until

        def running() -> None:
            for name, process in self.processes.items():
                assert process.poll() is None, f"the {name} stopped:\n{self.log(name)}"

        def greets() -> bool:
            running()
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=5) as connection:
                    return connection.recv(3) == b"220"
            except OSError:
                return False

        def answers() -> bool:
            running()
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(greets, "the server's greeting", 30)
        wait_until(answers, "the inspector's API to answer", 30)

    def messages(self, **params: str) -> dict[str, object]:
        document: dict[str, object] = self.http.get("/messages", params=params).json()
        return document

    def stop(self) -> None:
        self.http.close()
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def host_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostLab]:
    lab = HostLab(tmp_path_factory.mktemp("lab"))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(autouse=True)
def inner_sessions_start_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester's sessions run in this process, with its environment: none of the developer's
    MAILLAB_* settings, and no sign of this run's xdist (a worker's PYTEST_XDIST_WORKER would
    name the inner session's inboxes after it)."""
    for name in list(os.environ):
        if name.startswith(("MAILLAB_", "PYTEST_XDIST_")):
            monkeypatch.delenv(name)


@pytest.fixture
def docker_log(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `docker` first on PATH that records its arguments and fails as an engine that is down would.

    With a file `engine-up` beside its log, it answers `version` and knows no image instead.
    """
    bin_dir = pytester.mkdir("fake-bin")
    log = pytester.path / "docker.log"
    fake = bin_dir / "docker"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        f"if [ -e {pytester.path}/engine-up ]; then\n"
        '  [ "$1" = version ] && { echo 27.0.0; exit 0; }\n'
        '  echo "Error: No such image: $4" >&2; exit 1\n'
        "fi\n"
        'echo "Cannot connect to the Docker daemon" >&2\nexit 1\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture
def against(host_lab: HostLab, monkeypatch: pytest.MonkeyPatch, docker_log: Path) -> HostLab:
    """The inner sessions use `host_lab`, and would skip rather than start containers if it did not answer."""
    monkeypatch.setenv("MAILLAB_API_URL", host_lab.api_url)
    monkeypatch.setenv("MAILLAB_SMTP", f"127.0.0.1:{host_lab.smtp_port}")
    monkeypatch.setenv("MAILLAB_START", "never")
    return host_lab


SENDS = """
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

def send(smtp, to, subject, body="hello"):
    mail = EmailMessage()
    mail["From"] = "app@sender.test"
    mail["To"] = to
    mail["Subject"] = subject
    mail["Message-ID"] = make_msgid(domain="sender.test")
    mail.set_content(body)
    with smtplib.SMTP(*smtp) as server:
        server.send_message(mail)
"""


def test_an_inbox_gets_its_own_mail_and_is_hidden_after_the_test(pytester: pytest.Pytester, against: HostLab) -> None:
    pytester.makeconftest(
        SENDS.replace("def send", "def _send") + "\nimport pytest\nsend = pytest.fixture(lambda: _send)\n"
    )
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_reset(inbox, send):
            Path("domain.txt").write_text(inbox.domain)
            send(inbox.smtp, "someone@elsewhere.test", 'Your "reset" code')  # not this inbox's
            send(inbox.smtp, inbox.address("alice"), 'Your "reset" code', "code 123456, https://app.test/r?t=1")
            [mail] = inbox.wait_for(subject='Your "reset" code', to="alice")
            assert mail.recipients == [inbox.address("alice")]
            assert mail.code() == "123456" and mail.links() == ["https://app.test/r?t=1"]
            assert [m.id for m in inbox.messages()] == [mail.id]
            inbox.assert_no_message(within=0.2, query="-to:" + inbox.address("alice"))
        """
    )
    result = pytester.runpytest("-W", "error")
    result.assert_outcomes(passed=1)
    domain = (pytester.path / "domain.txt").read_text()
    assert DNS_LABEL.match(domain.removesuffix(".maillab.test")), domain
    assert domain.startswith("t-test-reset-") and domain.endswith("-main-" + domain.split("-")[-1])
    assert against.messages(domain=domain)["total"] == 0  # hidden at teardown
    assert against.messages(domain="elsewhere.test")["total"] == 1  # another domain's mail is left alone


def test_a_failing_wait_says_what_did_arrive_in_the_inbox_with_control_characters_escaped(
    pytester: pytest.Pytester, against: HostLab
) -> None:
    pytester.makepyfile(
        SENDS
        + """
def test_reset(inbox):
    send(inbox.smtp, inbox.address("bob"), "=?utf-8?q?Welcome=1B[31m_red?=")
    send(inbox.smtp, "bob@elsewhere.test", "Reset your password")  # the right mail, in the wrong place
    inbox.wait_for(subject="Reset your password", timeout=1)
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "\x1b" not in output
    # The client's MessageTimeout, then the plugin's section: the mail that did arrive in this inbox.
    result.stdout.fnmatch_lines(
        [
            "*MessageTimeout: waited 1 s for 1 message matching 'subject:\"Reset your password\"' in domain t-test-*",
            "*- maillab inbox t-test-reset-*.maillab.test -*",
            "1 arrived for t-test-reset-*, newest first*",
            "*'Welcome\\x1b[[]31m red' from app@sender.test to bob@t-test-reset-*",
        ]
    )
    assert "to bob@elsewhere.test" not in output  # the section lists this inbox only


def test_assert_no_message_fails_naming_the_message(pytester: pytest.Pytester, against: HostLab) -> None:
    pytester.makepyfile(
        SENDS
        + """
def test_quiet(inbox):
    send(inbox.smtp, inbox.address("carol"), "surprise")
    inbox.assert_no_message(within=5)
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*UnexpectedMessage: expected no message at all in domain t-test-quiet-*", "*'surprise'*"]
    )


def test_without_a_lab_the_tests_that_need_one_skip_with_one_line_and_others_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MAILLAB_API_URL", url)
    pytester.makepyfile(
        """
        def test_mail(inbox):
            raise AssertionError("never runs")

        def test_other():
            pass
        """
    )
    result = pytester.runpytest("-W", "error", "-rs", "--maillab-no-start")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED [[]1[]] *: maillab: no lab answers at {url} (ConnectError*); start one with `make up`*"]
    )
    assert not docker_log.exists()  # never means never

    # Auto (the default): Docker is asked, and its failure is said in the same one line.
    result = pytester.runpytest("-W", "error", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED [[]1[]] *: maillab: no lab answers at {url} (*), and the Docker engine does not answer*make up*"]
    )
    assert docker_log.read_text().split("\n")[0].startswith("version")


def test_a_lab_whose_api_answers_but_not_its_smtp_is_not_used_and_the_line_says_so(
    pytester: pytest.Pytester, host_lab: HostLab, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    smtp = f"127.0.0.1:{free_port()}"  # nothing listens there: a `make up` with its SMTP on another port
    monkeypatch.setenv("MAILLAB_API_URL", host_lab.api_url)
    monkeypatch.setenv("MAILLAB_SMTP", smtp)
    pytester.makepyfile("def test_mail(inbox):\n    raise AssertionError('never runs')\n")
    result = pytester.runpytest("-W", "error", "-rs", "--maillab-no-start")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED * maillab: the lab at {host_lab.api_url} answers but its SMTP at {smtp} does not (*MAILLAB_SMTP)*"]
    )


def test_the_ports_make_up_publishes_on_are_the_defaults(pytestconfig: pytest.Config) -> None:
    settings = Settings.of(pytestconfig, {"MAILLAB_HTTP_PORT": "8125", "MAILLAB_SMTP_PORT": " 2625 "})
    assert (settings.api_url, settings.smtp) == ("http://127.0.0.1:8125", ("127.0.0.1", 2625))
    named = {"MAILLAB_HTTP_PORT": "8125", "MAILLAB_API_URL": "http://lab.test:80", "MAILLAB_SMTP": "lab.test:25"}
    assert (Settings.of(pytestconfig, named).api_url, Settings.of(pytestconfig, named).smtp) == (
        "http://lab.test:80",
        ("lab.test", 25),
    )
    assert (Settings.of(pytestconfig, {}).api_url, Settings.of(pytestconfig, {}).smtp) == (
        "http://127.0.0.1:8025",
        ("127.0.0.1", 2525),
    )
    with pytest.raises(SettingError, match="MAILLAB_SMTP_PORT='x' is not a port number"):
        Settings.of(pytestconfig, {"MAILLAB_SMTP_PORT": "x"})


def test_without_the_images_a_lab_is_not_started_and_the_line_says_to_build_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    monkeypatch.setenv("MAILLAB_API_URL", f"http://127.0.0.1:{free_port()}")
    (pytester.path / "engine-up").touch()
    pytester.makepyfile("def test_mail(inbox):\n    pass\n")
    result = pytester.runpytest("-W", "error", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * no lab answers at *, and maillab/server:dev and maillab/inspector:dev are not built; *make up*"]
    )
    # Asked for explicitly, the same is an error: the run cannot do what it was told.
    result = pytester.runpytest("--maillab-start", "--maillab-image-tag", "v1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*maillab: maillab/server:v1 and maillab/inspector:v1 are not built: run `make build`*"]
    )
    assert "Traceback" not in result.stdout.str()
    assert not any(line.startswith(("run", "network", "volume")) for line in docker_log.read_text().splitlines())


def test_a_started_lab_is_removed_by_its_label_even_what_was_never_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `docker run` that created its container and failed to start it prints no id: nothing is recorded.
    log = tmp_path / "docker.log"
    fake = tmp_path / "docker"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n'
        'case "$1 $2" in\n'
        '  "ps --all") [ -e {gone} ] || echo c1; exit 0;;\n'
        '  "network ls") echo n1; exit 0;;\n'
        '  "volume ls") [ -e {gone} ] || printf "v1\\nv2\\n"; exit 0;;\n'
        '  "volume rm") touch {gone}; exit 0;;\n'
        "esac\n".replace("{gone}", str(tmp_path / "gone"))
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    lab = ContainerLab({"server": "s", "inspector": "i"})
    lab.remove()
    calls = log.read_text().splitlines()
    label = f"--filter label=maillab.pytest={lab.name}"
    assert f"ps --all --quiet {label}" in calls and f"volume ls --quiet {label}" in calls
    expected = ("rm --force --volumes c1", "network rm n1", "volume rm --force v1 v2")
    removals = [calls.index(removal) for removal in expected]
    assert removals == sorted(removals)  # containers first, then what they used


def test_the_plugin_is_inert_in_a_session_that_uses_none_of_its_fixtures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as api:  # a lab's API that notes every connection
        monkeypatch.setenv("MAILLAB_API_URL", f"http://127.0.0.1:{api.getsockname()[1]}")
        pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
        result = pytester.runpytest("-W", "error")
        result.assert_outcomes(passed=1)
        api.setblocking(False)
        with pytest.raises(BlockingIOError):
            api.accept()  # nobody connected
    assert not docker_log.exists()
    assert "maillab:" not in result.stdout.str()


def test_a_bad_setting_fails_the_tests_that_use_it_with_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    monkeypatch.setenv("MAILLAB_SMTP", "localhost")
    pytester.makepyfile("def test_mail(inbox):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*maillab: 'localhost' is not host:port (for example 127.0.0.1:2525)"])
    assert "Traceback" not in result.stdout.str() and "During handling" not in result.stdout.str()


def test_under_xdist_every_test_gets_only_its_own_mail(pytester: pytest.Pytester, against: HostLab) -> None:
    # Every test sends the same mail to the same local part: only the domain tells them apart.
    pytester.makepyfile(
        SENDS
        + """
import os, pytest

@pytest.mark.parametrize("n", range(16))
def test_mail(inbox, n):
    with open(os.path.join("domains", f"{n}.txt"), "w") as out:
        out.write(inbox.domain)
    send(inbox.smtp, inbox.address("alice"), "hello")
    [mail] = inbox.wait_for(subject="hello", to="alice")
    assert mail.recipients == [inbox.address("alice")]
    assert [m.id for m in inbox.messages()] == [mail.id]
    inbox.assert_no_message(within=0.3, query="-message-id:" + mail.email()["Message-ID"])
"""
    )
    pytester.mkdir("domains")
    result = pytester.runpytest_subprocess("-n", "4", "-W", "error")
    result.assert_outcomes(passed=16)
    domains = {path.read_text() for path in (pytester.path / "domains").iterdir()}
    assert len(domains) == 16
    workers = {domain.split("-")[-2] for domain in domains}
    assert len(workers) > 1 and workers <= {"gw0", "gw1", "gw2", "gw3"}, workers


@pytest.mark.parametrize(
    ("nodeid", "worker"),
    [
        ("tests/test_a.py::test_reset", "main"),
        ("t.py::test_" + "x" * 200 + "[param-with spaces/and:colons]", "gw12345678901"),
        ("t.py::TestCase::test_Ünïcode_名前", "gw0"),
        ("t.py::___", ""),
    ],
)
def test_an_inbox_domain_is_one_valid_dns_label_under_maillab_test(nodeid: str, worker: str) -> None:
    domain = inbox_domain(nodeid, worker)
    label, _, parent = domain.partition(".")
    assert parent == "maillab.test"
    assert DNS_LABEL.match(label) and len(label) <= 63, domain
    assert inbox_domain(nodeid, worker, "r") == inbox_domain(nodeid, worker, "r")
    assert inbox_domain(nodeid, worker) != domain  # the random part: a rerun never sees the last run's mail


def test_an_inbox_quotes_what_it_puts_in_a_query() -> None:
    lab = object.__new__(Inbox)  # the query needs only the domain
    lab.domain = "d.maillab.test"
    assert lab.query(subject='say "hi" \\ to', to="alice") == 'subject:"say \\"hi\\" \\\\ to" to:"alice@d.maillab.test"'
    assert lab.query(to="bob@other.test", query="has:attachment") == 'to:"bob@other.test" has:attachment'
    assert lab.query() == ""
    with pytest.raises(ValueError, match="is not a local part"):
        lab.address("a b")


# -- the maillab marker ----------------------------------------------------------------------------------------


def test_the_marker_is_registered_so_strict_markers_accepts_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.maillab(keep=True, timeout=5)
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers", "-W", "error")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.maillab(keep=False, timeout=None): keep=True leaves the test's inbox*"])


def test_keep_leaves_the_inbox_visible_after_the_test_and_says_where(
    pytester: pytest.Pytester, against: HostLab
) -> None:
    pytester.makepyfile(
        SENDS
        + """
import pytest
from pathlib import Path

@pytest.mark.maillab(keep=True)
def test_kept(inbox):
    Path("kept.txt").write_text(inbox.domain)
    send(inbox.smtp, inbox.address("alice"), "look at me")
    inbox.wait_for(subject="look at me")

def test_hidden(inbox):
    Path("hidden.txt").write_text(inbox.domain)
    send(inbox.smtp, inbox.address("alice"), "hide me")
    inbox.wait_for(subject="hide me")
"""
    )
    result = pytester.runpytest("-W", "error", "-rP")
    result.assert_outcomes(passed=2)
    kept, hidden = (pytester.path / "kept.txt").read_text(), (pytester.path / "hidden.txt").read_text()
    assert against.messages(domain=kept)["total"] == 1  # no DELETE ?domain= at its teardown
    assert against.messages(domain=hidden)["total"] == 0
    result.stdout.fnmatch_lines(
        ["*- maillab inbox kept -*", f"{kept} is kept (keep=True): {against.api_url}/?domain={kept}"]
    )
    assert result.stdout.str().count("maillab inbox kept") == 1  # the test that keeps its inbox only


def test_the_markers_timeout_is_the_default_of_wait_for_and_not_of_within(
    pytester: pytest.Pytester, against: HostLab
) -> None:
    pytester.makepyfile(
        SENDS
        + """
import pytest

pytestmark = pytest.mark.maillab(timeout=0.3)

def test_module_marker(inbox):
    inbox.wait_for(subject="never sent")

@pytest.mark.maillab(timeout=0.6)
def test_closest_marker(inbox):
    inbox.wait_for(subject="never sent")

@pytest.mark.maillab(timeout=30)
def test_call(inbox):
    inbox.wait_for(subject="never sent", timeout=0.2)

@pytest.mark.maillab(timeout=30)
def test_within(inbox):
    send(inbox.smtp, inbox.address("carol"), "surprise")
    inbox.assert_no_message()
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*MessageTimeout: waited 0.3 s for 1 message matching 'subject:\"never sent\"' in domain t-test-module-*",
            "*MessageTimeout: waited 0.6 s for 1 message matching * in domain t-test-closest-marker-*",
            "*MessageTimeout: waited 0.2 s for 1 message matching * in domain t-test-call-*",
            "*UnexpectedMessage: expected no message at all in domain t-test-within-* within 2 s, but one arrived:",
        ]
    )


def test_the_closest_marker_wins_argument_by_argument(pytester: pytest.Pytester, against: HostLab) -> None:
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.maillab(keep=True, timeout=3)

        @pytest.mark.maillab(timeout=0.4)
        class TestMarked:
            def test_both(self, inbox):
                assert (inbox.keep, inbox.timeout) == (True, 0.4)

            @pytest.mark.maillab(keep=False)
            def test_closest(self, inbox):
                assert (inbox.keep, inbox.timeout) == (False, 0.4)

        def test_module(inbox):
            assert (inbox.keep, inbox.timeout) == (True, 3.0)
        """
    )
    unmarked = "def test_unmarked(inbox):\n    assert (inbox.keep, inbox.timeout) == (False, 10.0)\n"
    pytester.makepyfile(test_unmarked=unmarked)
    result = pytester.runpytest("-W", "error")
    result.assert_outcomes(passed=4)


def test_a_marker_argument_it_does_not_take_fails_the_test_in_one_line_with_no_lab_there_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    monkeypatch.setenv("MAILLAB_API_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.maillab(kep=True)
        def test_typo(inbox):
            pass

        @pytest.mark.maillab(True)
        def test_positional(inbox):
            pass

        @pytest.mark.maillab(timeout="5")
        def test_text(inbox):
            pass
        """
    )
    # -rN: no short summary, which under CI (the CI variable) repeats each reason whole.
    result = pytester.runpytest("--maillab-no-start", "--strict-markers", "-rN")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "maillab: @pytest.mark.maillab got the unknown argument kep: it takes keep= and timeout=",
            "maillab: @pytest.mark.maillab takes keyword arguments only (keep=, timeout=), not (True,)",
            "maillab: @pytest.mark.maillab(timeout='5'): timeout is a number of seconds, 0 or more",
        ]
    )
    output = result.stdout.str()
    assert "Traceback" not in output and "plugin.py" not in output and "During handling" not in output, output
    assert output.count("got the unknown argument kep") == 1  # the error's one line, nothing else


@pytest.mark.parametrize(
    ("marks", "options"),
    [
        ([], InboxOptions(keep=False, timeout=10.0)),
        ([pytest.mark.maillab(keep=True)], InboxOptions(keep=True, timeout=10.0)),
        ([pytest.mark.maillab(timeout=0)], InboxOptions(keep=False, timeout=0.0)),
        ([pytest.mark.maillab(timeout=None), pytest.mark.maillab(timeout=4)], InboxOptions(timeout=10.0)),
        ([pytest.mark.maillab(timeout=2.5), pytest.mark.maillab(keep=True, timeout=9)], InboxOptions(True, 2.5)),
    ],
)
def test_inbox_options_from_the_markers_closest_first(marks: list[pytest.MarkDecorator], options: InboxOptions) -> None:
    assert inbox_options(mark.mark for mark in marks) == options


@pytest.mark.parametrize(
    ("mark", "error"),
    [
        (pytest.mark.maillab(keep=True, timeout=1, domain="x"), "the unknown argument domain: it takes keep= and"),
        (pytest.mark.maillab(keep="yes"), "@pytest.mark.maillab(keep='yes'): keep is True or False"),
        (pytest.mark.maillab(keep=1), "keep is True or False"),
        (pytest.mark.maillab(timeout=-1), "(timeout=-1): timeout is a number of seconds, 0 or more"),
        (pytest.mark.maillab(timeout=float("nan")), "(timeout=nan): timeout is a number of seconds"),
        (pytest.mark.maillab(timeout=float("inf")), "(timeout=inf): timeout is a number of seconds"),
        (pytest.mark.maillab(timeout=True), "(timeout=True): timeout is a number of seconds"),
        (pytest.mark.maillab(5), "takes keyword arguments only (keep=, timeout=), not (5,)"),
        (pytest.mark.maillab(keep="\x1b[31m"), "(keep='\\x1b[31m'): keep is"),
    ],
)
def test_a_marker_it_cannot_use_is_one_line_naming_the_argument(mark: pytest.MarkDecorator, error: str) -> None:
    with pytest.raises(MarkerError) as raised:
        inbox_options([mark.mark])
    message = str(raised.value)
    assert message.startswith("maillab: @pytest.mark.maillab") and error in message, message
    assert "\n" not in message and "\x1b" not in message


# -- the command-line flags ------------------------------------------------------------------------------------

SENDS_AND_WAITS = (
    SENDS
    + """
def test_mail(inbox):
    send(inbox.smtp, inbox.address("alice"), "by the flags")
    [mail] = inbox.wait_for(subject="by the flags", timeout=20)
    assert mail.recipients == [inbox.address("alice")]
"""
)


def test_the_flags_name_the_lab(pytester: pytest.Pytester, host_lab: HostLab, docker_log: Path) -> None:
    assert not any(name.startswith("MAILLAB_") for name in os.environ)  # the flags alone
    pytester.makepyfile(SENDS_AND_WAITS)
    flags = ["--maillab-api-url", host_lab.api_url, "--maillab-smtp", f"127.0.0.1:{host_lab.smtp_port}"]
    result = pytester.runpytest("-W", "error", "--maillab-no-start", *flags)
    result.assert_outcomes(passed=1)


def test_a_flag_wins_over_its_environment_variable(
    pytester: pytest.Pytester, host_lab: HostLab, monkeypatch: pytest.MonkeyPatch, docker_log: Path
) -> None:
    api, smtp = host_lab.api_url, f"127.0.0.1:{host_lab.smtp_port}"
    dead_api, dead_smtp = f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"  # nothing listens there
    pytester.makepyfile(SENDS_AND_WAITS)

    monkeypatch.setenv("MAILLAB_API_URL", dead_api)
    monkeypatch.setenv("MAILLAB_SMTP", dead_smtp)
    result = pytester.runpytest("-W", "error", "--maillab-no-start", "--maillab-api-url", api, "--maillab-smtp", smtp)
    result.assert_outcomes(passed=1)

    monkeypatch.setenv("MAILLAB_API_URL", api)
    monkeypatch.setenv("MAILLAB_SMTP", smtp)
    result = pytester.runpytest("-rs", "--maillab-no-start", "--maillab-smtp", dead_smtp)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * maillab: the lab at {api} answers but its SMTP at {dead_smtp} does not*"])
    result = pytester.runpytest("-rs", "--maillab-no-start", "--maillab-api-url", dead_api)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * maillab: no lab answers at {dead_api} (*"])


def test_settings_take_each_flag_before_its_variable(pytester: pytest.Pytester) -> None:
    env = {"MAILLAB_API_URL": "http://env.test:1", "MAILLAB_SMTP": "env.test:1", "MAILLAB_START": "never"}
    config = pytester.parseconfig(
        "--maillab-api-url", "http://flag.test:2/api/v1/", "--maillab-smtp", "flag.test:2", "--maillab-start"
    )
    settings = Settings.of(config, env)
    assert (settings.api_url, settings.smtp, settings.start) == ("http://flag.test:2", ("flag.test", 2), "always")
    unflagged = Settings.of(pytester.parseconfig(), env)
    assert (unflagged.api_url, unflagged.smtp, unflagged.start) == ("http://env.test:1", ("env.test", 1), "never")
    with pytest.raises(SettingError, match=r"'flag\.test' is not host:port"):
        Settings.of(pytester.parseconfig("--maillab-smtp", "flag.test"), env)
