"""The image lock files pin, with hashes, every third-party dependency their pyproject files name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    return {Requirement(name).name.lower().replace("_", "-"): version for name, version, _ in _PIN.findall(lock)}


def declared(service: str) -> list[Requirement]:
    requirements = [Requirement("setuptools>=68")]  # the build backend for the source install
    for package in ("common", service):
        with open(ROOT / "services" / package / "pyproject.toml", "rb") as file:
            dependencies = tomllib.load(file)["project"].get("dependencies", [])
        requirements += [Requirement(dep) for dep in dependencies if not dep.startswith("maillab-")]
    return requirements


@pytest.mark.parametrize("service", ["server", "agent", "inspector"])
def test_the_lock_pins_every_declared_dependency_within_its_range(service: str) -> None:
    lock = (ROOT / "services" / service / "requirements.lock").read_text()
    pinned = pins(lock)
    for requirement in declared(service):
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{service}: {requirement} is not in requirements.lock (run make lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{service}: {name}=={pinned[name]} does not satisfy {requirement} (run make lock)"
        )


@pytest.mark.parametrize("service", ["server", "agent", "inspector"])
def test_every_pin_carries_a_hash_and_the_dockerfile_requires_them(service: str) -> None:
    lock = (ROOT / "services" / service / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2].strip())
    assert entries and all("==" in entry and "--hash=sha256:" in entry for entry in entries)
    dockerfile = (ROOT / "services" / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r /src/${SERVICE}/requirements.lock" in dockerfile
    assert f"FROM install AS {service}\n" in dockerfile
