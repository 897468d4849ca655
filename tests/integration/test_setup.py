"""A fresh machine: what `make` installs by itself, and how a step that fails stops it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import run_command

pytestmark = pytest.mark.integration


def test_make_installs_compose_v2_into_an_empty_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "docker-config"
    config.mkdir()
    environment = {**os.environ, "DOCKER_CONFIG": str(config)}
    before = run_command("docker", "compose", "version", env=environment)
    assert before.returncode != 0, "an empty DOCKER_CONFIG must start without the compose plugin"

    made = run_command("make", "--no-print-directory", "check-compose", env=environment)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (config / "cli-plugins" / "docker-compose").is_file()
    after = run_command("docker", "compose", "version", "--short", env=environment)
    assert after.returncode == 0 and after.stdout.lstrip("v").startswith("2."), after.stdout + after.stderr


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH of links to every command on this one, but `missing`: a machine without them."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name not in missing and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="the debootstrap step is taken only as root")
def test_a_base_image_that_cannot_be_made_stops_make_with_its_own_error(tmp_path: Path) -> None:
    # Neither the wanted image nor the local one exists, and this machine has no debootstrap
    # and no apt-get: the build must stop at once with the script's own line, not go on to
    # a registry lookup of an empty image name.
    assert shutil.which("docker")
    environment = {
        **os.environ,
        "PATH": path_without(tmp_path, "debootstrap", "apt-get"),
        "PYTHON_IMAGE": "maillab/absent:never",
        "MAILLAB_LOCAL_BASE_IMAGE": "maillab/absent-base:never",
        "TMPDIR": str(tmp_path),
    }
    made = run_command("make", "--no-print-directory", "build", timeout=600, env=environment)
    output = made.stdout + made.stderr
    assert made.returncode != 0, output
    assert "debootstrap is needed to build maillab/absent-base:never; install it with" in output, output
    for build_step in ("load metadata", "failed to solve", "Building", "naming to"):
        assert build_step not in output, "no image build may start: " + output
