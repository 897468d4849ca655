"""Write each image's lock file: services/<service>/requirements.lock (`make lock`).

An image holds maillab-common, one service, and their third-party dependencies. Those
dependencies, read from the two pyproject.toml files, plus setuptools (the build backend
that installs the source with no network), are resolved once for every Python the images
may run (3.11 from Debian, 3.12 from python:3.12-slim) and pinned with their hashes. The
Dockerfile (services/Dockerfile) installs from the lock with --require-hashes, so a build gets exactly these
files or fails.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("server", "agent", "inspector")
BUILD_BACKEND = "setuptools>=68"


def third_party_requirements(service: str) -> list[str]:
    requirements = [BUILD_BACKEND]
    for package in ("common", service):
        with open(ROOT / "services" / package / "pyproject.toml", "rb") as file:
            project = tomllib.load(file)["project"]
        requirements += [dep for dep in project.get("dependencies", []) if not dep.startswith("maillab-")]
    return requirements


def lock(uv: str, service: str) -> None:
    output = ROOT / "services" / service / "requirements.lock"
    with tempfile.NamedTemporaryFile("w", suffix=".in") as requirements:
        requirements.write("\n".join(third_party_requirements(service)) + "\n")
        requirements.flush()
        subprocess.run(
            [
                uv, "pip", "compile", "--quiet", "--universal", "--python-version", "3.11",
                "--generate-hashes", "--no-annotate", "--custom-compile-command", "make lock",
                "--output-file", str(output), requirements.name,
            ],
            check=True,
        )  # fmt: skip
    print(f"lock: wrote {output.relative_to(ROOT)}")


def main() -> int:
    uv = sys.argv[1] if len(sys.argv) > 1 else "uv"
    try:
        for service in SERVICES:
            lock(uv, service)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
