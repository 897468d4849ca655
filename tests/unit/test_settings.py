"""Every MAILLAB_* setting is documented in the README's table, and compose passes the server's through."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_SETTING = re.compile(r'"(MAILLAB_[A-Z0-9_]+)"')
# Fixed by compose itself: the container's port and folder, which the port mapping and the
# volume are written against. The host port is MAILLAB_SMTP_PORT, in the ports section.
COMPOSE_FIXES = {"server": {"MAILLAB_LISTEN_HOST", "MAILLAB_SMTP_PORT", "MAILLAB_FORWARD_DIR"}}


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
            assert f"${{{name}:-" in str(value), f"{name} in compose.yaml is not taken from the user's {name}"
