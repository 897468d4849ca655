"""The client and its pytest plugin as a project outside this repository uses them.

A project in a temporary folder gets a virtualenv of its own with `pip install` of
clients/python and pytest, nothing else of maillab's, and a test that uses `inbox`. It
passes against a lab of the real containers, first one running already (as `make up`
leaves it), then one the plugin starts by itself from the images and removes after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Lab, started_lab

pytestmark = pytest.mark.integration

SMTP_PORT = 2525
LABEL = "label=maillab.pytest"  # what the plugin puts on everything it makes

SIGNUP_TEST = '''
"""A project's own test of its sign-up mail, the way the README shows it."""

import smtplib
from email.message import EmailMessage


def send_welcome(to, smtp):
    mail = EmailMessage()
    mail["From"] = "shop@shop.example"
    mail["To"] = to
    mail["Subject"] = "Welcome: confirm your address"
    mail.set_content("Your code is 482913. Confirm at https://shop.example/confirm?c=482913")
    with smtplib.SMTP(*smtp) as server:
        server.send_message(mail)


def test_welcome_mail(inbox):
    send_welcome(inbox.address("new"), inbox.smtp)
    [mail] = inbox.wait_for(subject="Welcome", to="new")
    assert mail.code() == "482913"
    assert mail.links() == ["https://shop.example/confirm?c=482913"]
    inbox.assert_no_message(within=0.5, query="-to:" + inbox.address("new"))
'''

# The project's conftest.py says, in the header of every run, where its maillab_client came from.
WHERE_FROM = """
import maillab_client


def pytest_report_header():
    return "maillab_client imported from: " + maillab_client.__file__
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with its own virtualenv: pytest and the client as pip installs them from clients/python."""
    root = tmp_path_factory.mktemp("project")
    # A copy, as a user's checkout would be: pip builds in the source tree, and this one is shared.
    source = root / "maillab-client"
    shutil.copytree(
        ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, capture_output=True)
    installed = subprocess.run(
        [str(root / "venv" / "bin" / "pip"), "install", "--quiet", str(source), "pytest"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (root / "test_signup.py").write_text(SIGNUP_TEST)
    (root / "conftest.py").write_text(WHERE_FROM)
    return root


def run_pytest(project: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The project's pytest in its own virtualenv, with none of this checkout on its paths."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("MAILLAB_", "PYTHON"))}
    return subprocess.run(
        [
            str(project / "venv" / "bin" / "python"),
            "-m",
            "pytest",
            "-W",
            "error",
            "-rs",
            "-p",
            "no:cacheprovider",
            *arguments,
        ],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def smtp_lab(images: dict[str, str]) -> Iterator[Lab]:
    """A lab as `make up` runs it: the server's SMTP port and the inspector's API published on the host."""
    yield from started_lab(images, ("serve",), server_ports=(SMTP_PORT,))


def test_a_project_outside_the_checkout_passes_its_inbox_test_against_a_running_lab(
    project: Path, smtp_lab: Lab
) -> None:
    server = smtp_lab.server
    smtp = f"{server.get_container_host_ip()}:{server.get_exposed_port(SMTP_PORT)}"
    result = run_pytest(project, MAILLAB_API_URL=smtp_lab.api_url, MAILLAB_SMTP=smtp, MAILLAB_START="never")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout
    # The client came from the project's virtualenv, not this checkout (nor this run's own venv).
    [where] = [line.partition(": ")[2] for line in result.stdout.splitlines() if "imported from:" in line]
    assert Path(where).resolve().is_relative_to((project / "venv").resolve()), where


def left_by_the_plugin() -> set[str]:
    """The containers, networks and volumes that carry the plugin's label, by kind and id."""
    found = set()
    for kind in ("container", "network", "volume"):
        listed = subprocess.run(
            ["docker", kind, "ls", "--quiet", *(["--all"] if kind == "container" else []), "--filter", LABEL],
            capture_output=True,
            text=True,
            check=True,
        )
        found |= {f"{kind} {name}" for name in listed.stdout.split()}
    return found


def test_the_plugin_starts_a_lab_from_the_images_and_removes_it(project: Path, images: dict[str, str]) -> None:
    before = left_by_the_plugin()
    tag = images["server"].rpartition(":")[2]  # maillab/server:test, as the images fixture builds them
    result = run_pytest(project, "--maillab-start", "--maillab-image-tag", tag)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout
    assert left_by_the_plugin() <= before  # everything it made is gone
