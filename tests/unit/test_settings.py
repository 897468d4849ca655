"""MAILLAB_* settings: how values are read, the README's table of them, and compose passing them on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from maillab_common.settings import ConfigError, env_float, env_int

ROOT = Path(__file__).resolve().parents[2]
_SETTING = re.compile(r'"(MAILLAB_[A-Z0-9_]+)"')
# Fixed by compose itself: the container's ports and folders, which the port mappings and the
# volumes are written against. The host ports are MAILLAB_SMTP_PORT and MAILLAB_CLASSROOM_PORT,
# in the ports section. The health check's socket keeps its default in the container's /tmp,
# where both `serve` and `healthcheck` find it.
COMPOSE_FIXES = {
    "server": {
        "MAILLAB_LISTEN_HOST",
        "MAILLAB_SMTP_PORT",
        "MAILLAB_CLASSROOM_PORT",
        "MAILLAB_FORWARD_DIR",
        "MAILLAB_CHAOS_DIR",
        "MAILLAB_HEALTH_SOCKET",
    }
}
# Set by compose from a user's variable of another name: the container's name -> the user's.
COMPOSE_FROM = {"MAILLAB_CLASSROOM_PUBLISHED_PORT": "MAILLAB_CLASSROOM_PORT"}


def settings_read_by(service: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "services" / service / "src").rglob("*.py"):
        names |= set(_SETTING.findall(path.read_text()))
    return names


def compose_environment(service: str) -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    environment: dict[str, Any] = compose["services"][service].get("environment", {})
    return environment


@pytest.mark.parametrize("service", ["server", "agent", "inspector"])
def test_every_setting_is_in_the_readme_table(service: str) -> None:
    readme = (ROOT / "README.md").read_text()
    table_rows = [line for line in readme.splitlines() if line.startswith("| `MAILLAB_")]
    documented = set(re.findall(r"`(MAILLAB_[A-Z0-9_]+)`", "\n".join(table_rows)))
    missing = settings_read_by(service) - documented
    assert settings_read_by(service), "no settings found: the pattern is out of date"
    assert not missing, f"README's settings table lacks {sorted(missing)}"


def test_compose_passes_every_server_setting_through() -> None:
    environment = compose_environment("server")
    missing = settings_read_by("server") - COMPOSE_FIXES["server"] - set(environment)
    assert not missing, f"compose.yaml's server environment lacks {sorted(missing)}"
    for name, value in environment.items():
        if name.startswith("MAILLAB_"):
            user = COMPOSE_FROM.get(name, name)
            assert f"${{{user}:-" in str(value), f"{name} in compose.yaml is not taken from the user's {user}"


def test_compose_publishes_the_classroom_port_and_passes_its_off_switch() -> None:
    """MAILLAB_CLASSROOM_PORT is the host port; the container learns of a 0 (off) by another name."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert "127.0.0.1:${MAILLAB_CLASSROOM_PORT:-2526}:2526" in compose["services"]["server"]["ports"]
    environment = compose_environment("server")
    assert environment["MAILLAB_CLASSROOM_PUBLISHED_PORT"] == "${MAILLAB_CLASSROOM_PORT:-2526}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 7),
        (" 12 ", 12),
        ("1", 1),
        ("100", 100),
        ("abc", "MAILLAB_X='abc' is not a whole number"),
        ("1.5", "MAILLAB_X='1.5' is not a whole number"),
        ("0", "MAILLAB_X='0' must be at least 1 and at most 100"),
        ("101", "MAILLAB_X='101' must be at least 1 and at most 100"),
    ],
)
def test_env_int_reads_a_bounded_whole_number(raw: str, expected: int | str) -> None:
    if isinstance(expected, int):
        assert env_int({"MAILLAB_X": raw}, "MAILLAB_X", 7, minimum=1, maximum=100) == expected
    else:
        with pytest.raises(ConfigError) as error:
            env_int({"MAILLAB_X": raw}, "MAILLAB_X", 7, minimum=1, maximum=100)
        assert str(error.value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 2.5),
        ("0.25", 0.25),
        ("1e3", 1000.0),
        ("x", "MAILLAB_X='x' is not a number"),
        ("nan", "MAILLAB_X='nan' must be at least 0.1"),
        ("0.05", "MAILLAB_X='0.05' must be at least 0.1"),
    ],
)
def test_env_float_reads_a_number_and_refuses_nan(raw: str, expected: float | str) -> None:
    if isinstance(expected, float):
        assert env_float({"MAILLAB_X": raw}, "MAILLAB_X", 2.5, minimum=0.1) == expected
    else:
        with pytest.raises(ConfigError) as error:
            env_float({"MAILLAB_X": raw}, "MAILLAB_X", 2.5, minimum=0.1)
        assert str(error.value) == expected
