"""Fixtures that build maillab's real images and run them as containers.

Images are built with testcontainers (docker-py's classic builder) FROM the base image
that scripts/base-image.sh provides: python:3.12-slim where it can be had, otherwise one
built here from Debian packages. Every container, network and volume made here is removed
in the fixture's teardown, so the tests need no Ryuk reaper.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.image import DockerImage
from testcontainers.core.network import Network
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("server", "inspector", "agent")


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
        DockerImage(
            path=str(ROOT / "services"),
            dockerfile_path=f"{service}/Dockerfile",
            tag=tag,
            clean_up=False,
            buildargs={"PYTHON_IMAGE": base_image},
            rm=True,
        ).build()
        tags[service] = tag
    return tags


@dataclass
class Lab:
    network: Network
    volume: str
    server: DockerContainer
    inspector: DockerContainer
    images: dict[str, str]

    def run_agent(self, *arguments: str, timeout: float = 180) -> tuple[int, str]:
        """Run the agent container to completion on the lab's network; returns (exit code, output)."""
        agent = (
            DockerContainer(self.images["agent"])
            .with_network(self.network)
            .with_env("MAILLAB_SERVER", "server:2525")
            .with_command(list(arguments))
        )
        agent.start()
        try:
            code = agent.get_wrapped_container().wait(timeout=timeout)["StatusCode"]
            stdout, stderr = agent.get_logs()
            return code, (stdout + stderr).decode(errors="replace")
        finally:
            agent.stop()

    def forward_files(self, into: Path) -> dict[str, Path]:
        """Copy /forward out of the server container; returns domain -> local copy."""
        stream, _ = self.server.get_wrapped_container().get_archive("/forward")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            archive.extractall(into, filter="data")
        return {path.name: path for path in (into / "forward").iterdir()}

    def inspector_output(self) -> str:
        stdout, _ = self.inspector.get_logs()
        return stdout.decode(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@pytest.fixture
def lab(images: dict[str, str]) -> Iterator[Lab]:
    """Server and inspector containers on their own network, sharing a fresh forward volume."""
    client = docker.from_env()
    volume = client.volumes.create(name=f"maillab-test-{uuid.uuid4().hex[:10]}")
    network = Network().create()
    started: list[DockerContainer] = []
    try:
        server = (
            DockerContainer(images["server"])
            .with_network(network)
            .with_network_aliases("server")
            .with_volume_mapping(volume.name, "/forward", "rw")
            .waiting_for(HealthcheckWaitStrategy())
        )
        server.start()
        started.append(server)
        inspector = (
            DockerContainer(images["inspector"])
            .with_network(network)
            .with_volume_mapping(volume.name, "/forward", "ro")
            .waiting_for(HealthcheckWaitStrategy())
        )
        inspector.start()
        started.append(inspector)
        yield Lab(network=network, volume=volume.name, server=server, inspector=inspector, images=images)
    finally:
        for container in reversed(started):
            container.stop()
        network.remove()
        volume.remove(force=True)
        client.close()
