"""maillab's pytest plugin: one lab for the session (`maillab_lab`) and, for each test, an inbox (`inbox`):
a recipient domain of its own, so that tests never see each other's mail, under pytest-xdist too.

The pytest11 entry point loads it wherever maillab-client is installed, so it stays inert
until a test asks for one of its fixtures: it adds its options, registers its marker and a
report hook that looks only at tests holding an inbox, and opens no connection and runs no
Docker command before that.

The marker `@pytest.mark.maillab(keep=False, timeout=None)` (on a test, a class or a module;
the closest one wins, argument by argument) sets up that test's inbox: `keep=True` leaves it
visible at teardown (no DELETE ?domain=), to be looked at in the web view; `timeout=S` is the
default timeout of its `wait_for`. Not of `assert_no_message`, whose `within` keeps its own
default (2 s): a wait's timeout is a bound that costs nothing when the mail comes, while
`within` is waited in full by every test that passes, so a timeout raised for a slow CI
would slow down every one of them. It applies to the `inbox` fixture only; an argument it
does not know fails the test that asks for an inbox, in one line.

Where `maillab_lab` gets its lab, in this order:

1. the lab at --maillab-api-url (MAILLAB_API_URL, else http://127.0.0.1:$MAILLAB_HTTP_PORT, else
   http://127.0.0.1:8025), when it answers its health check and its SMTP server answers too: the
   one `make up` starts. Its SMTP is --maillab-smtp (MAILLAB_SMTP, else 127.0.0.1:$MAILLAB_SMTP_PORT,
   else 127.0.0.1:2525): the ports `make up` publishes on;
2. otherwise, when Docker answers, a lab of its own, started with the `docker` command line
   (no Python dependency): the server and the inspector (`serve`) from the project's images,
   maillab/server:dev and maillab/inspector:dev as `make build` tags them (another tag with
   --maillab-image-tag, or other images by overriding the `maillab_images` fixture), hardened as
   compose.yaml runs them, on a network of their own with a forward volume they share (and a
   state volume for the inspector), their ports published on random loopback ports. Everything
   it makes carries the label maillab.pytest=<the lab's name>, and is removed by that label when
   the session ends, whatever was recorded of it;
3. otherwise the tests that need it are skipped, with one line that says what was tried.

--maillab-start (MAILLAB_START=always) goes straight to 2; --maillab-no-start (MAILLAB_START=never) stops after 1.
Under pytest-xdist every worker without a running lab starts its own.

Mail that lands in an inbox after its test's teardown (a late send of the application's) stays
visible in the web view: the domain is hidden once, at teardown.

It works with pytest 7.0 and later (and pluggy 1.0): it uses old-style
hook wrappers (`hookwrapper=True`) and no `pytest.StashKey`, so that it imports wherever
maillab-client is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import smtplib
import subprocess
import time
import uuid
import weakref
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from maillab_client import Lab, LabUnavailable, MailLabError, Message
from maillab_client.content import printable
from maillab_client.errors import describe
from maillab_client.lab import base_url, smtp_address

DEFAULT_API_URL = "http://127.0.0.1:8025"
DEFAULT_SMTP = "127.0.0.1:2525"
DEFAULT_IMAGE_TAG = "dev"  # what compose.yaml tags the images `make build` and `make up` build
START_CHOICES = ("auto", "always", "never")
INBOX_PARENT = "maillab.test"  # .test is reserved (RFC 2606): no mail for an inbox can leave the lab
START_TIMEOUT = 90.0  # seconds for a started lab to answer; a cold inspector builds its catalogue first
# Containers, network and volume of a started lab carry this label, so that a session killed
# before its teardown leaves things one `docker ... prune --filter label=maillab.pytest` removes.
LABEL = "maillab.pytest"
WAIT_TIMEOUT = 10.0  # seconds an inbox's wait_for waits when neither the call nor the marker says
MARKER = "maillab"
MARKER_ARGUMENTS = ("keep", "timeout")

# The inbox each running test holds, for its report. A weak mapping rather than the item's
# stash: that needs pytest 7, and this module is imported by every pytest where the client is installed.
_INBOXES: weakref.WeakKeyDictionary[pytest.Item, Inbox] = weakref.WeakKeyDictionary()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maillab", "maillab: wait for mail and assert on it, one inbox per test")
    group.addoption(
        "--maillab-api-url",
        metavar="URL",
        help=f"the lab's web view and API (default: $MAILLAB_API_URL, else {DEFAULT_API_URL})",
    )
    group.addoption(
        "--maillab-smtp",
        metavar="HOST:PORT",
        help=f"the lab's SMTP, where the application under test sends (default: $MAILLAB_SMTP, else {DEFAULT_SMTP})",
    )
    # Two flags rather than one with an optional value, which would swallow a test path after it.
    group.addoption(
        "--maillab-start",
        action="store_const",
        const="always",
        dest="maillab_start",
        help="start a lab in containers even when one answers (default: $MAILLAB_START, else auto:"
        " only when none answers and Docker does)",
    )
    group.addoption(
        "--maillab-no-start",
        action="store_const",
        const="never",
        dest="maillab_start",
        help="never start a lab: skip the tests that need one when none answers",
    )
    group.addoption(
        "--maillab-image-tag",
        metavar="TAG",
        help=f"the tag of the maillab/server and maillab/inspector images a started lab runs"
        f" (default: $MAILLAB_IMAGE_TAG, else {DEFAULT_IMAGE_TAG}, as `make build` tags them)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(keep=False, timeout=None): keep=True leaves the test's inbox visible in the lab's web view"
        " after the test; timeout=S is the default timeout of its inbox.wait_for",
    )


@dataclass(frozen=True)
class InboxOptions:
    """What a test's maillab markers ask of its inbox: keep it after the test, and its wait_for's default timeout."""

    keep: bool = False
    timeout: float = WAIT_TIMEOUT


class MarkerError(ValueError):
    """A maillab marker with an argument it does not take, or a value it cannot use; the message says which."""


def inbox_options(markers: Iterable[pytest.Mark]) -> InboxOptions:
    """What the markers (closest first, as `iter_markers` gives them) set; the closest wins, argument by argument."""
    chosen: dict[str, object] = {}
    for mark in markers:
        if mark.args:
            raise MarkerError(
                f"maillab: @pytest.mark.{MARKER} takes keyword arguments only (keep=, timeout=),"
                f" not {printable(repr(mark.args), 80)}"
            )
        unknown = [name for name in mark.kwargs if name not in MARKER_ARGUMENTS]
        if unknown:
            raise MarkerError(
                f"maillab: @pytest.mark.{MARKER} got the unknown argument {printable(', '.join(unknown), 80)}:"
                f" it takes keep= and timeout="
            )
        for name, value in mark.kwargs.items():
            chosen.setdefault(name, value)
    keep = chosen.get("keep", False)
    if not isinstance(keep, bool):
        raise MarkerError(f"maillab: @pytest.mark.{MARKER}(keep={printable(repr(keep), 80)}): keep is True or False")
    timeout = chosen.get("timeout")
    if timeout is None:
        return InboxOptions(keep=keep)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < math.inf:
        raise MarkerError(
            f"maillab: @pytest.mark.{MARKER}(timeout={printable(repr(timeout), 80)}):"
            " timeout is a number of seconds, 0 or more"
        )
    return InboxOptions(keep=keep, timeout=float(timeout))


@dataclass(frozen=True)
class Settings:
    """The plugin's options, each from its flag, else its environment variable, else its default."""

    api_url: str
    smtp: tuple[str, int]
    start: str
    image_tag: str

    @classmethod
    def of(cls, config: pytest.Config, env: Mapping[str, str] = os.environ) -> Settings:
        def setting(option: str, variable: str, default: str) -> str:
            value = config.getoption(option) or env.get(variable, "").strip()
            return str(value) if value else default

        def published(variable: str) -> str:
            """127.0.0.1:<port> from the host port `make up` publishes on, "" when it is not set."""
            port = env.get(variable, "").strip()
            if not port:
                return ""
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingError(f"maillab: {variable}={printable(port)!r} is not a port number")
            return f"127.0.0.1:{int(port)}"

        start = setting("maillab_start", "MAILLAB_START", "auto")
        if start not in START_CHOICES:
            raise SettingError(f"maillab: MAILLAB_START={printable(start)!r}: use one of {', '.join(START_CHOICES)}")
        http_port, smtp_port = published("MAILLAB_HTTP_PORT"), published("MAILLAB_SMTP_PORT")
        try:
            api_url = base_url(
                setting("maillab_api_url", "MAILLAB_API_URL", f"http://{http_port}" if http_port else DEFAULT_API_URL)
            )
            smtp = smtp_address(setting("maillab_smtp", "MAILLAB_SMTP", smtp_port or DEFAULT_SMTP))
        except ValueError as error:
            raise SettingError(f"maillab: {printable(str(error))}") from None
        image_tag = setting("maillab_image_tag", "MAILLAB_IMAGE_TAG", DEFAULT_IMAGE_TAG)
        return cls(api_url=api_url, smtp=smtp, start=start, image_tag=image_tag)


class SettingError(ValueError):
    """An option or variable of the plugin's that cannot be used; the message says which and why."""


def settings_of(config: pytest.Config) -> Settings:
    """The plugin's settings; a failure of the test that asked, in the setting's one line, for one that is wrong."""
    try:
        return Settings.of(config)
    except SettingError as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)  # outside the except: pytest would show the SettingError too


@pytest.fixture(scope="session")
def maillab_images(pytestconfig: pytest.Config) -> dict[str, str]:
    """The images a lab started for the session runs, service -> image: maillab/<service>:<--maillab-image-tag>.

    Asked for only when a lab is started. Override it in a conftest.py to run other images
    (a CI's own build, say).
    """
    tag = Settings.of(pytestconfig).image_tag
    return {service: f"maillab/{service}:{tag}" for service in ("server", "inspector")}


@pytest.fixture(scope="session")
def maillab_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab that answers: the running one, or one started in containers for this session; else a skip."""
    settings = settings_of(request.config)
    tried = ""
    if settings.start != "always":
        running = Lab(api_url=settings.api_url, smtp=settings.smtp)
        tried = not_ready(running)
        if not tried:
            with running:
                yield running
            return
        running.close()
        if settings.start == "never":
            pytest.skip(
                f"maillab: {tried}; start one with `make up` in the maillab checkout, or pass --maillab-api-url"
            )
    why_not = docker_missing()
    if why_not:
        if settings.start == "always":
            pytest.fail(f"maillab: --maillab-start needs Docker: {why_not}", pytrace=False)
        pytest.skip(f"maillab: {tried}, and {why_not}; start one with `make up` in the maillab checkout")
    images: dict[str, str] = request.getfixturevalue("maillab_images")
    missing = [image for image in images.values() if not image_exists(image)]
    if missing:
        what = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not built"
        if settings.start == "always":
            pytest.fail(f"maillab: {what}: run `make build` in the maillab checkout", pytrace=False)
        pytest.skip(f"maillab: {tried}, and {what}; start one with `make up` in the maillab checkout")
    started = ContainerLab(images)
    try:  # whatever happens from here, an interrupt too: nothing started may outlive the session
        try:
            lab = started.start()
        except LabStartError as error:
            pytest.fail(f"maillab: {error}", pytrace=False)
        with lab:
            yield lab
    finally:
        started.remove()


@pytest.fixture
def inbox(request: pytest.FixtureRequest) -> Iterator[Inbox]:
    """A recipient domain for this test alone, hidden from the lab's views (DELETE ?domain=) after it,
    unless its maillab marker says keep=True."""
    options = marked_options(request.node)
    # Asked for after the marker is read, so that a marker's mistake is said with no lab there too, not skipped.
    maillab_lab: Lab = request.getfixturevalue("maillab_lab")
    domain = inbox_domain(request.node.nodeid, os.environ.get("PYTEST_XDIST_WORKER", "main"))
    made = Inbox(maillab_lab, domain, timeout=options.timeout, keep=options.keep)
    _INBOXES[request.node] = made
    yield made
    if made.keep:
        return
    try:
        maillab_lab.delete(domain=made.domain)
    except MailLabError as error:
        pytest.fail(f"maillab: could not hide the inbox {made.domain}: {printable(str(error))}", pytrace=False)


def marked_options(node: pytest.Item) -> InboxOptions:
    """The options the test's maillab markers set; a failure of the test, in the marker's one line, for a mistake."""
    try:
        return inbox_options(node.iter_markers(MARKER))
    except MarkerError as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)  # outside the except: pytest would show the MarkerError too


def inbox_domain(nodeid: str, worker: str, random: str | None = None) -> str:
    """t-<test name>-<hash of its node id>-<xdist worker>-<random>.maillab.test, its first label at most 63 characters.

    The name makes it readable in the web view's list of domains; the hash tells apart
    tests of that name (parameters, other files); the worker and the random part, runs
    of the same test side by side (xdist, two sessions against one lab, a rerun).
    """
    name = re.sub(r"[^a-z0-9]+", "-", nodeid.rpartition("::")[2].lower()).strip("-")[:24].strip("-")
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:6]
    worker = re.sub(r"[^a-z0-9]+", "", worker.lower())[:8] or "w"
    random = random if random is not None else secrets.token_hex(3)
    label = "-".join(part for part in ("t", name, digest, worker, random) if part)
    return f"{label}.{INBOX_PARENT}"


class Inbox:
    """One test's mail: every address at its own domain, and queries scoped to that domain."""

    def __init__(self, lab: Lab, domain: str, *, timeout: float = WAIT_TIMEOUT, keep: bool = False) -> None:
        self.lab = lab
        self.domain = domain
        self.timeout = timeout  # wait_for's default
        self.keep = keep  # left visible after the test, for the web view

    @property
    def web_url(self) -> str:
        """This inbox in the lab's web view."""
        url: str = self.lab.api_url
        return f"{url}/?{urlencode({'domain': self.domain})}"

    def __repr__(self) -> str:
        return f"Inbox({self.domain!r})"

    @property
    def smtp(self) -> tuple[str, int]:
        """(host, port) of the lab's SMTP server, for the application under test to send to."""
        smtp: tuple[str, int] = self.lab.smtp
        return smtp

    def address(self, local: str = "user") -> str:
        """An address in this inbox: address("alice") is alice@<its domain>."""
        if not local or "@" in local or any(character.isspace() or not character.isprintable() for character in local):
            raise ValueError(f"{printable(local)!r} is not a local part (the part before @)")
        return f"{local}@{self.domain}"

    def query(self, subject: str | None = None, to: str | None = None, query: str | None = None) -> str:
        """The query for these conditions, each value quoted per the query syntax; a `to` without @ is a local part."""
        terms = []
        if subject is not None:
            terms.append(f"subject:{quoted(subject)}")
        if to is not None:
            terms.append(f"to:{quoted(to if '@' in to else self.address(to))}")
        if query:
            terms.append(query)
        return " ".join(terms)

    def wait_for(
        self,
        subject: str | None = None,
        to: str | None = None,
        query: str | None = None,
        count: int = 1,
        timeout: float | None = None,
    ) -> list[Message]:
        """The first `count` messages in this inbox that match, oldest first, once they are there.

        The lab waits on its side, answering the moment they land; MessageTimeout after
        `timeout` seconds (the maillab marker's timeout, else 10) says what did arrive.
        """
        __tracebackhide__ = True
        wanted = self.query(subject, to, query) or None
        waited = self.timeout if timeout is None else timeout
        try:
            return self.lab.wait_for(wanted, count=count, timeout=waited, domain=self.domain)
        except MailLabError as error:
            raise told(error) from None

    def messages(self, query: str | None = None) -> list[Message]:
        """The messages in this inbox that match `query` (all without one), newest first."""
        __tracebackhide__ = True
        try:
            return self.lab.messages(query=query or None, domain=self.domain)
        except MailLabError as error:
            raise told(error) from None

    def assert_no_message(self, within: float = 2.0, query: str | None = None) -> None:
        """Fail (UnexpectedMessage) if a message that matches lands in this inbox within `within` seconds.

        The marker's timeout does not change `within`: it is waited in full whenever the test passes.
        """
        __tracebackhide__ = True
        try:
            self.lab.assert_no_message(query or None, within=within, domain=self.domain)
        except MailLabError as error:
            raise told(error) from None

    def describe(self, limit: int = 20) -> str:
        """What arrived for this inbox, one line a message, control characters escaped: for a failing test's report."""
        try:
            arrived = self.lab.messages(domain=self.domain, limit=limit)
        except MailLabError as error:
            return f"could not list the mail for {self.domain}: {printable(str(error))}"
        if not arrived:
            host, port = self.smtp
            return f"no mail arrived for {self.domain} (the lab's SMTP: {host}:{port})"
        lines = [f"{len(arrived)} arrived for {self.domain}, newest first (at most {limit}):"]
        lines += [f"  {describe(message)}" for message in arrived]
        return "\n".join(lines)


def told(error: MailLabError) -> MailLabError:
    """`error` without the client's frames: its text says everything, and the test's own line is what to show."""
    return error.with_traceback(None)


def quoted(value: str) -> str:
    """`value` as one quoted query value: \\ and " escaped, as the query syntax reads them."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.hookimpl(hookwrapper=True)  # not wrapper=True, which needs pluggy 1.2 (pytest 7.4)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failing test that holds an inbox gets a report section with the mail that did arrive there; a test whose
    inbox is kept, one with its address in the web view (shown for a passing test with -rP)."""
    outcome = yield
    report = outcome.get_result()
    made = _INBOXES.get(item)
    if made is None or report.when != "call":
        return
    if report.failed:
        report.sections.append((f"maillab inbox {made.domain}", made.describe()))
    if made.keep:
        report.sections.append(("maillab inbox kept", f"{made.domain} is kept (keep=True): {made.web_url}"))


def reason_of(error: MailLabError) -> str:
    """What went wrong, without LabUnavailable's advice to start a lab: the plugin gives its own."""
    return error.reason if isinstance(error, LabUnavailable) else str(error)


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def not_ready(lab: Lab) -> str:
    """Why `lab` cannot take a test's mail ("" when it can): its API's health check, then its SMTP greeting."""
    try:
        lab.health()
    except MailLabError as error:
        return f"no lab answers at {lab.api_url} ({printable(first_line(reason_of(error)))})"
    host, port = lab.smtp
    try:
        with smtplib.SMTP(host, port, timeout=5) as smtp:
            smtp.noop()
    except (OSError, smtplib.SMTPException) as error:
        return (
            f"the lab at {lab.api_url} answers but its SMTP at {host}:{port} does not"
            f" ({printable(first_line(str(error)) or type(error).__name__)}; set --maillab-smtp or MAILLAB_SMTP)"
        )
    return ""


# The lab started in containers. The docker CLI rather than a Python library: a user who
# has the images has the CLI, and the client library keeps to one dependency.


class LabStartError(RuntimeError):
    """The started lab did not come up; the message says what happened, with its containers' last lines."""


def docker(*arguments: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=timeout, check=False)


def docker_missing() -> str:
    """Why Docker cannot start a lab ("" when it can): no `docker` command, or no engine answering it."""
    if shutil.which("docker") is None:
        return "there is no `docker` command"
    try:
        answer = docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 20 s"
    if answer.returncode != 0:
        return f"the Docker engine does not answer ({printable(first_line(answer.stderr))})"
    return ""


def image_exists(image: str) -> bool:
    return docker("image", "inspect", "--format", "{{.Id}}", image).returncode == 0


class ContainerLab:
    """Server and inspector containers on a network of their own, sharing a fresh forward volume (and a state volume).

    Hardened as compose.yaml runs them: a read-only root filesystem with a 16 MiB /tmp,
    no capabilities, no-new-privileges, at most 64 processes, compose's memory limits
    (MAILLAB_SERVER_MEMORY, MAILLAB_INSPECTOR_MEMORY, else 512m and 768m) and the inspector's
    CPU weight; ports on the loopback only. Without the classroom port and the manifests
    volume, which tests of an application do not use.
    """

    def __init__(self, images: Mapping[str, str]) -> None:
        self.images = dict(images)
        self.name = f"maillab-pytest-{uuid.uuid4().hex[:10]}"
        self.label = f"{LABEL}={self.name}"
        self.containers: list[str] = []
        self.network = ""

    def start(self, timeout: float = START_TIMEOUT) -> Lab:
        label = self.label
        self.network = self._made("network", "create", "--label", label, self.name)
        forward = self._made("volume", "create", "--label", label, f"{self.name}-forward")
        state = self._made("volume", "create", "--label", label, f"{self.name}-state")
        common = ["--detach", "--label", label, "--network", self.network, "--cap-drop", "ALL"]
        common += ["--security-opt", "no-new-privileges:true", "--read-only", "--tmpfs", "/tmp:size=16m"]
        server = self._run(
            *common,
            *("--memory", os.environ.get("MAILLAB_SERVER_MEMORY", "").strip() or "512m", "--pids-limit", "64"),
            *("--name", f"{self.name}-server", "--network-alias", "server", "--volume", f"{forward}:/forward"),
            *("--publish", "127.0.0.1::2525", self.images["server"]),
        )
        inspector = self._run(
            *common,
            *("--memory", os.environ.get("MAILLAB_INSPECTOR_MEMORY", "").strip() or "768m", "--pids-limit", "128"),
            *("--cpu-shares", os.environ.get("MAILLAB_INSPECTOR_CPU_SHARES", "").strip() or "4096"),
            *("--name", f"{self.name}-inspector", "--volume", f"{forward}:/forward:ro", "--volume", f"{state}:/state"),
            *("--publish", "127.0.0.1::8025", self.images["inspector"], "serve"),
        )
        smtp = self._published(server, 2525)
        lab = Lab(api_url=f"http://{smtp[0]}:{self._published(inspector, 8025)[1]}", smtp=smtp)
        try:
            self._wait_until_ready(lab, timeout)
        except BaseException:
            lab.close()
            raise
        return lab

    def remove(self) -> None:
        """Remove everything that carries this lab's label, containers first; what cannot be, is left, never a failure.

        By label rather than by the ids recorded: a `docker run` that created its container and
        then failed to start it, or one that timed out, printed no id.
        """
        for attempt in range(2):
            containers = self._labelled("ps", "--all", "--quiet") or self.containers
            if containers:
                self._quietly("rm", "--force", "--volumes", *containers)
            networks = self._labelled("network", "ls", "--quiet") or ([self.network] if self.network else [])
            if networks:
                self._quietly("network", "rm", *networks)
            volumes = self._labelled("volume", "ls", "--quiet")
            if volumes:
                self._quietly("volume", "rm", "--force", *volumes)
            # Once more only if something was left: a command that timed out may still be creating it.
            if attempt or not (self._labelled("ps", "--all", "--quiet") or self._labelled("volume", "ls", "--quiet")):
                break
            time.sleep(1)
        self.containers, self.network = [], ""

    def _labelled(self, *listing: str) -> list[str]:
        """The ids `docker ... ls --quiet` (or `ps`) lists with this label; [] when the engine does not answer."""
        try:
            listed = docker(*listing, "--filter", f"label={self.label}", timeout=30)
        except subprocess.TimeoutExpired:
            return []
        return listed.stdout.split() if listed.returncode == 0 else []

    @staticmethod
    def _quietly(*arguments: str) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # an engine that hangs: the label finds them later
            docker(*arguments)

    def _made(self, *arguments: str) -> str:
        try:
            done = docker(*arguments)
        except subprocess.TimeoutExpired:
            raise LabStartError(f"`docker {' '.join(arguments[:2])}` did not finish within 60 s") from None
        if done.returncode != 0:
            raise LabStartError(f"`docker {' '.join(arguments[:2])}` failed: {printable(first_line(done.stderr))}")
        return done.stdout.strip()

    def _run(self, *arguments: str) -> str:
        container = self._made("run", *arguments)
        self.containers.append(container)
        return container

    def _published(self, container: str, port: int) -> tuple[str, int]:
        mapped = self._made("port", container, f"{port}/tcp")
        for line in mapped.splitlines():
            host, _, number = line.strip().rpartition(":")
            if host == "127.0.0.1" and number.isdigit():
                return host, int(number)
        raise LabStartError(f"the engine did not publish port {port} of {container[:12]} on 127.0.0.1: {mapped!r}")

    def _wait_until_ready(self, lab: Lab, timeout: float) -> None:
        """Until the API answers its health check and the SMTP server its greeting.

        Asked again and again: a published port says nothing of what listens behind it, and
        the engine's own health status is first checked only after its 5 s interval.
        """
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            reason = not_ready(lab)
            if not reason:
                return
            tries += 1
            if tries % 10 == 0:
                self._check_running()
            if time.monotonic() > deadline:
                images = " and ".join(self.images.values())
                raise LabStartError(f"the lab of {images} is not ready after {timeout:.0f} s: {reason}")
            time.sleep(0.2)

    def _check_running(self) -> None:
        for container in self.containers:
            state = docker("inspect", "--format", "{{json .State}}", container)
            if state.returncode == 0 and not json.loads(state.stdout).get("Running"):
                logs = docker("logs", "--tail", "10", container)
                tail = "\n".join(printable(line) for line in (logs.stdout + logs.stderr).splitlines()[-10:])
                raise LabStartError(f"the container {container[:12]} stopped; its last lines:\n{tail}")
