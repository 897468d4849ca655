"""The CLI helpers every service shares (maillab_common.cli), through the real command lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.hostile import assert_inert

CLIS = ("maillab_server", "maillab_agent", "maillab_inspector")


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(module, *args, env={"PATH": "/usr/bin:/bin", "TERM": "dumb"})


@pytest.mark.parametrize("module", CLIS)
def test_a_usage_error_is_one_line_and_exit_2(module: str) -> None:
    result = run(module, "--no-such-flag")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


@pytest.mark.parametrize(
    ("module", "command", "variable"),
    [
        ("maillab_agent", "send", "MAILLAB_SERVER"),
        ("maillab_agent", "batch", "MAILLAB_MANIFEST"),
        ("maillab_inspector", "verify", "MAILLAB_MANIFEST"),
        ("maillab_inspector", "watch", "MAILLAB_FORWARD_DIR"),
        ("maillab_server", "serve", "MAILLAB_SMTP_PORT"),
    ],
)
def test_help_names_the_variable_behind_an_option(module: str, command: str, variable: str) -> None:
    # Rich markup would swallow "[env X]" as a tag: the variable must reach the reader.
    result = run(module, command, "--help")
    assert result.returncode == 0, result.stderr
    assert variable in result.stdout


@pytest.mark.parametrize("module", ("maillab_agent", "maillab_inspector"))
def test_an_error_naming_hostile_input_is_inert(module: str, tmp_path: Path) -> None:
    hostile = "\x1b]0;owned\x07[bold]x[/]\u202e"
    if module == "maillab_agent":
        args: tuple[str, ...] = ("send", "--from", hostile, "--to", "a@b.test")
    else:
        args = ("list", "--domain", hostile, "--forward-dir", str(tmp_path))
    result = run(module, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "[bold]x[/]" in result.stderr, result.stderr
    assert_inert((result.stdout + result.stderr).encode())
