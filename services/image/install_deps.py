"""Install the third-party dependencies named in the given pyproject.toml files.

The Dockerfiles run this before copying any source, so the dependency layer stays cached
while the code changes. maillab's own packages are skipped: they are installed from source.
"""

import subprocess
import sys
import tomllib

requirements = ["setuptools>=68"]  # the build backend, so the source install needs no network
for path in sys.argv[1:]:
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    requirements += [dep for dep in project.get("dependencies", []) if not dep.startswith("maillab-")]
subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", *requirements], check=True)
