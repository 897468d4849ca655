"""Fixtures that build maillab's real images and run them as containers.

Images are built with testcontainers (docker-py's classic builder) FROM the base image
that scripts/base-image.sh provides: python:3.12-slim where it can be had, otherwise one
built here from Debian packages. Every container, network and volume made here is removed
in the fixture's teardown, so the tests need no Ryuk reaper.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.types import LogConfig
from docker.types.daemon import CancellableStream
from testcontainers.compose import DockerCompose
from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer
from testcontainers.core.image import DockerImage
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

from tests.unit.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("server", "inspector", "agent")
# The inspector's output whole, for drills that count every line: an engine's default may
# rotate a container's log away (this one keeps 3 files of 10 MB; 100k JSON lines are ~70 MB).
HTTP_PORT = 8025  # the inspector's web view and API, in its container
WHOLE_LOG = LogConfig(type=LogConfig.types.JSON, config={"max-size": "1g", "max-file": "1"})
# The inspector's CPU weight, as compose.yaml gives it: the pace drill runs it as `make up` does.
INSPECTOR_CPU_SHARES = int(
    re.search(r"cpu_shares: \$\{MAILLAB_INSPECTOR_CPU_SHARES:-(\d+)\}", (ROOT / "compose.yaml").read_text())[1]  # type: ignore[index]
)


def pytest_configure(config: pytest.Config) -> None:
    """Go without the Ryuk reaper where its image cannot be had, as on an engine with no registry.

    The fixtures below remove everything they create, so Ryuk is a second safety net, not
    a need. Where TESTCONTAINERS_RYUK_DISABLED is set, that choice stands.
    """
    if os.environ.get("TESTCONTAINERS_RYUK_DISABLED") is not None:
        return
    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return  # no Docker at all: the integration tests will say so themselves
    try:
        client.images.get(testcontainers_config.ryuk_image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(testcontainers_config.ryuk_image)
        except docker.errors.APIError:
            testcontainers_config.ryuk_disabled = True
            print(f"{testcontainers_config.ryuk_image} cannot be pulled: running without the Ryuk reaper")
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image() -> str:
    resolved = os.environ.get("MAILLAB_PYTHON_IMAGE")
    if resolved:
        return resolved
    return subprocess.run(
        [str(ROOT / "scripts" / "base-image.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="session")
def images(base_image: str) -> dict[str, str]:
    """Build the three service images once per session; returns service -> image tag."""
    tags = {}
    for service in SERVICES:
        tag = f"maillab/{service}:test"
        DockerImage(  # services/Dockerfile: a stage per service, on the same SERVICE (as compose.yaml)
            path=str(ROOT / "services"),
            tag=tag,
            clean_up=False,
            buildargs={"PYTHON_IMAGE": base_image, "SERVICE": service},
            target=service,
            rm=True,
        ).build()
        tags[service] = tag
    return tags


@dataclass
class Lab:
    """A running lab: server and inspector containers, their network, and three volumes."""

    network: Network
    volume: str  # the forward volume
    manifests: str  # where the agent writes manifests and verify reads them
    server: DockerContainer
    inspector: DockerContainer | None
    images: dict[str, str]
    # `serve` (the lab's: it also catalogues and serves HTTP), or `watch` alone (the pace drills)
    inspector_command: tuple[str, ...] = ("serve",)
    chaos: str = ""  # the fault-injection rules and the server's counts (docs/chaos.md), in both at /chaos
    state_volumes: list[str] = field(default_factory=list)  # each inspector container's /state, removed at the end

    @property
    def api_url(self) -> str:
        """The inspector's HTTP API as the host reaches it (`serve`), e.g. http://127.0.0.1:32768/api/v1."""
        assert self.inspector is not None
        host = self.inspector.get_container_host_ip()
        return f"http://{host}:{self.inspector.get_exposed_port(HTTP_PORT)}/api/v1"

    def start_inspector(self, **env: str) -> DockerContainer:
        """Start the inspector (printing JSON lines), or restart it: SIGTERM, then start again.

        With `env`, a new inspector container replaces the old one: a fresh start.
        """
        if self.inspector is not None and not env:
            self.inspector.get_wrapped_container().restart(timeout=10)
            HealthcheckWaitStrategy().wait_until_ready(self.inspector)
            return self.inspector
        if self.inspector is not None:
            self.inspector.stop()
        inspector = self._with_volumes(DockerContainer(self.images["inspector"]), "ro")
        # As compose runs it: its state on a volume of its own (fresh for a new container) and
        # /tmp in memory, on a read-only root. The root is the engine's storage driver, here
        # fuse-overlayfs: a user-space process outside the container's CPU weight. A position
        # commit there took 3 to 4 times as long (117 against 31 us), and stalled for seconds
        # while a batch kept the cores busy: the pace drill's lag p99 went from 0.1 s to 5-14 s.
        state = f"{self.volume}-state-{len(self.state_volumes)}"
        client = docker.from_env()
        try:
            client.volumes.create(name=state)
        finally:
            client.close()
        self.state_volumes.append(state)
        inspector.with_volume_mapping(state, "/state", "rw")
        inspector.with_tmpfs_mount("/tmp", "size=16m")
        inspector.with_kwargs(log_config=WHOLE_LOG, cpu_shares=INSPECTOR_CPU_SHARES, read_only=True)
        inspector.with_command(list(self.inspector_command)).with_exposed_ports(HTTP_PORT)
        if self.chaos:
            inspector.with_volume_mapping(self.chaos, "/chaos", "rw")
        for name, value in {"MAILLAB_OUTPUT": "json", **env}.items():
            inspector.with_env(name, value)
        self.inspector = inspector.waiting_for(HealthcheckWaitStrategy())
        self.inspector.start()
        return self.inspector

    def start_agent(self, *arguments: str) -> DockerContainer:
        agent = DockerContainer(self.images["agent"]).with_network(self.network)
        agent.with_env("MAILLAB_SERVER", "server:2525").with_volume_mapping(self.manifests, "/manifests", "rw")
        agent.with_command(list(arguments)).start()
        return agent

    def run_agent(self, *arguments: str, timeout: float = 180) -> tuple[int, str]:
        """Run the agent container to completion on the lab's network; returns (exit code, output)."""
        return self._run(self.start_agent(*arguments), timeout)

    def run_inspector(self, *arguments: str, timeout: float = 180) -> tuple[int, str]:
        """Run a one-shot inspector command (verify, list, show) against the lab's volumes."""
        inspector = self._with_volumes(DockerContainer(self.images["inspector"]), "ro").with_env("COLUMNS", "160")
        inspector.with_command(list(arguments)).start()
        return self._run(inspector, timeout)

    def read_manifest(self, path: str) -> str:
        """The file at `path` on the manifests volume, copied out (a large one would not fit the log)."""
        reader = self._with_volumes(DockerContainer(self.images["agent"]), "ro").with_kwargs(entrypoint=["true"])
        reader.start()
        try:
            container = reader.get_wrapped_container()
            container.wait(timeout=60)
            stream, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                copied = archive.extractfile(archive.getmembers()[0])
                assert copied is not None, path
                return copied.read().decode()
        finally:
            reader.stop()

    def corrupt(self, domain: str, message_id: str) -> None:
        """Flip one base64 character of the first attachment after `message_id`, as a bad disk would."""
        script = (
            "import sys\n"
            "path, marker = sys.argv[1], sys.argv[2].encode()\n"
            "data = bytearray(open(path, 'rb').read())\n"
            "start = data.index(b'Message-ID: ' + marker)\n"
            "at = data.index(b'\\n\\n', data.index(b'filename=\"attachment-1', start)) + 20\n"
            "data[at] = ord('A') if data[at] != ord('A') else ord('B')\n"
            "open(path, 'r+b').write(data)\n"
        )
        result = self.server.exec(["python3", "-c", script, f"/forward/{domain}", message_id])
        assert result.exit_code == 0, result.output

    def forward_files(self, into: Path) -> dict[str, Path]:
        """Copy /forward out of the server container; returns domain -> local copy."""
        return copy_forward(self.server.get_wrapped_container(), into)

    def inspector_lines(self) -> list[dict[str, Any]]:
        """What the inspector printed, one JSON object per message, across restarts."""
        assert self.inspector is not None
        stdout, _ = self.inspector.get_logs()
        return printed(stdout.decode().splitlines())

    def wait_for_printed(
        self, until: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Follow the inspector's output until what it printed satisfies `until`; returns that."""
        assert self.inspector is not None
        lines = follow_logs(
            self.inspector.get_wrapped_container(), lambda lines: until(printed(lines)), timeout, what, stderr=False
        )
        return printed(lines)

    def wait_for_messages(self, count: int, what: str, timeout: float) -> Tally:
        """Follow the inspector's output until `count` different messages were printed; returns the tally.

        For batches of many thousands: each line is read once (wait_for_printed reads all at every line).
        """
        assert self.inspector is not None
        tally = Tally(count)
        follow_logs(self.inspector.get_wrapped_container(), tally, timeout, what, stderr=False)
        return tally

    def inspector_stamped(self) -> list[str]:
        """The inspector's stdout across restarts, each line after the engine's RFC 3339 timestamp."""
        assert self.inspector is not None
        output: bytes = self.inspector.get_wrapped_container().logs(stdout=True, stderr=False, timestamps=True)
        return output.decode(errors="replace").splitlines()

    def _with_volumes(self, container: DockerContainer, forward_mode: str) -> DockerContainer:
        return (
            container.with_network(self.network)
            .with_volume_mapping(self.volume, "/forward", forward_mode)
            .with_volume_mapping(self.manifests, "/manifests", "ro")
        )

    @staticmethod
    def _run(container: DockerContainer, timeout: float) -> tuple[int, str]:
        try:
            code: int = container.get_wrapped_container().wait(timeout=timeout)["StatusCode"]
            stdout, stderr = container.get_logs()
            return code, (stdout + stderr).decode(errors="replace")
        finally:
            container.stop()


def run_command(
    *command: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command (make, docker compose) in the checkout, to the end; its output as text."""
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def copy_forward(server: Container, into: Path) -> dict[str, Path]:
    """Copy /forward out of a server container (not from a tmpfs: see read_forward); returns domain -> copy."""
    stream, _ = server.get_archive("/forward")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
        archive.extractall(into, filter="data")
    return {path.name: path for path in (into / "forward").iterdir()}


def read_forward(server: DockerContainer) -> dict[str, bytes]:
    """Every forward file of a running server, read with exec: `docker cp` does not see into a tmpfs."""
    listing = server.exec(["ls", "/forward"])
    assert listing.exit_code == 0, listing.output
    files = {}
    for name in listing.output.decode().split():
        content = server.exec(["cat", f"/forward/{name}"])
        assert content.exit_code == 0, content.output
        files[name] = content.output
    return files


def printed(lines: list[str]) -> list[dict[str, Any]]:
    """The inspector's JSON lines (`watch --json`), one object per message."""
    return [json.loads(line) for line in lines if line.startswith("{")]


class Tally:
    """An `until` for follow_logs: the Message-IDs of the JSON lines seen so far, each line read once."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.ids: set[str] = set()
        self.lines = 0  # JSON lines, copies included
        self._read = 0

    def __call__(self, lines: list[str]) -> bool:
        for line in lines[self._read :]:
            if line.startswith("{"):
                try:
                    self.ids.add(json.loads(line)["message_id"])
                except ValueError:  # not a whole line: a watch killed in the middle of one
                    continue
                self.lines += 1
        self._read = len(lines)
        return len(self.ids) >= self.wanted


def follow_logs(
    container: Container, until: Callable[[list[str]], bool], timeout: float, what: str, *, stderr: bool = True
) -> list[str]:
    """The container's output, line by line, up to the first line after which `until` holds.

    Woken by each line the container prints, not by a clock: the stream starts with what
    was printed already, then follows. A container's output lives as long as the container,
    so a restarted one shows every run's lines. Fails after `timeout` seconds, or when the
    output ends (the container stopped) first.
    """
    stream = container.logs(stream=True, follow=True, stdout=True, stderr=stderr)
    timer = Deadline(timeout, stream)
    timer.start()
    lines: list[str] = []
    pending = b""
    try:
        for chunk in stream:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines += (line.decode(errors="replace") for line in complete)
            if complete and until(lines):
                return lines
    except OSError:
        pass  # the stream was closed under the read by the Deadline
    finally:
        timer.cancel()
        end_stream(stream)
    ended = f"timed out after {timeout:.0f}s" if timer.expired else "the output ended"
    tail = "\n".join(lines[-20:])
    raise AssertionError(f"{ended} waiting for {what}; last lines:\n{tail}")


def restarted_after(crash: Callable[[], None], container: Container, timeout: float) -> None:
    """Run `crash`, then wait until the engine reports the container died and started again.

    The engine's event stream is open before the crash, so neither event can be missed.
    """
    events = container.client.events(decode=True, filters={"container": container.id, "event": ["die", "start"]})
    timer = Deadline(timeout, events)
    seen: list[str] = []
    try:
        crash()
        timer.start()
        for event in events:
            seen.append(event["Action"])
            if seen[-2:] == ["die", "start"]:
                return
    except OSError:
        pass
    finally:
        timer.cancel()
        end_stream(events)
    raise AssertionError(f"within {timeout:.0f}s of the crash the engine reported only {seen}, not a die and a start")


class Deadline(threading.Timer):
    """Ends a blocking read of a docker-py stream after `timeout` seconds, from its own thread."""

    def __init__(self, timeout: float, stream: CancellableStream) -> None:
        super().__init__(timeout, self._expire)
        self.stream = stream
        self.expired = False

    def _expire(self) -> None:
        self.expired = True
        with contextlib.suppress(OSError):  # the reader ended it at the same moment
            self.stream.close()  # shuts the socket: the reader's `for` ends


def end_stream(stream: CancellableStream) -> None:
    """End a docker-py stream for good.

    Its `close` shuts the socket (which wakes a reader in another thread) but leaves the HTTP
    response open, and with it the socket's file: closed too here, or a ResourceWarning
    comes when it is collected.
    """
    with contextlib.suppress(OSError):  # shut already, by a Deadline
        stream.close()
    stream._response.close()


def retry_until(attempt: Callable[[], bool], timeout: float, what: str, pause: float = 0.25) -> None:
    """Try `attempt` again and again, a pause apart, as a client retries.

    Only for what nothing announces, where trying is the only way to learn (a freed place,
    say); what a log line or an engine event announces is waited for with follow_logs or
    restarted_after.
    """
    deadline = time.monotonic() + timeout
    while not attempt():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(pause)


@pytest.fixture
def lab(images: dict[str, str]) -> Iterator[Lab]:
    """Server and inspector (`serve`) containers on their own network, sharing fresh volumes."""
    yield from started_lab(images, ("serve",))


@pytest.fixture
def watch_lab(images: dict[str, str]) -> Iterator[Lab]:
    """As `lab`, with the inspector running `watch` alone: what the pace drills measure."""
    yield from started_lab(images, ("watch",))


def started_lab(
    images: dict[str, str],
    inspector_command: tuple[str, ...],
    *,
    server_env: dict[str, str] | None = None,
    server_ports: tuple[int, ...] = (),
    inspector_env: dict[str, str] | None = None,
) -> Iterator[Lab]:
    """A lab on fresh volumes and a network of its own, removed when the generator ends."""
    client = docker.from_env()
    volume = client.volumes.create(name=f"maillab-test-{uuid.uuid4().hex[:10]}")
    manifests = client.volumes.create(name=f"{volume.name}-manifests")
    chaos = client.volumes.create(name=f"{volume.name}-chaos")
    network = Network().create()
    lab = server = None
    try:
        server = (
            DockerContainer(images["server"])
            .with_network(network)
            .with_network_aliases("server")
            .with_volume_mapping(volume.name, "/forward", "rw")
            .with_volume_mapping(chaos.name, "/chaos", "rw")
            .waiting_for(HealthcheckWaitStrategy())
        )
        for name, value in (server_env or {}).items():
            server.with_env(name, value)
        if server_ports:
            server.with_exposed_ports(*server_ports)
        server.start()
        lab = Lab(network, volume.name, manifests.name, server, None, images, inspector_command, chaos=chaos.name)
        lab.start_inspector(**(inspector_env or {}))
        yield lab
    finally:
        for container in (lab.inspector if lab else None, server):
            if container is not None:
                container.stop()
        network.remove()
        volume.remove(force=True)
        manifests.remove(force=True)
        chaos.remove(force=True)
        for name in lab.state_volumes if lab else ():
            client.volumes.get(name).remove(force=True)
        client.close()


@pytest.fixture
def compose_settings() -> dict[str, str]:
    """Settings for the lab that `compose` starts, given as a user would: in the environment.

    A test module overrides this fixture to add its own.
    """
    return {}


@pytest.fixture
def compose(
    base_image: str, compose_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[DockerCompose]:
    # Its own project name and port, so that a lab started with `make up` is left alone.
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", f"maillab-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("MAILLAB_SMTP_PORT", str(free_port()))
    monkeypatch.setenv("MAILLAB_CLASSROOM_PORT", str(free_port()))
    monkeypatch.setenv("MAILLAB_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("MAILLAB_PYTHON_IMAGE", base_image)
    for name, value in compose_settings.items():
        monkeypatch.setenv(name, value)
    # `up --build` builds only the services it starts; the agent (profile tools) is built here.
    subprocess.run(
        ["docker", "compose", "--profile", "tools", "build", "agent"], cwd=ROOT, check=True, capture_output=True
    )
    lab = DockerCompose(
        context=str(ROOT), compose_file_name="compose.yaml", build=True, wait=True, services=["server", "inspector"]
    )
    lab.start()
    try:
        yield lab
    finally:
        # `down` leaves one-off `run` containers (an agent cut off by a failed test) behind.
        client = docker.from_env()
        project = {"label": f"com.docker.compose.project={os.environ['COMPOSE_PROJECT_NAME']}"}
        for container in client.containers.list(all=True, filters=project):
            container.remove(force=True)
        client.close()
        lab.stop()  # down --volumes
