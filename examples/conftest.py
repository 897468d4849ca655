"""Runs the examples in this repository's own `make test`, as its integration tests.

The examples stay as a newcomer copies them: no marker, no fixture of this repository's.
Here they get the `integration` marker (they need a lab), and always a lab of their own,
started from the images that tests/integration's `images` fixture builds (maillab/*:test), not
`make build`'s: a lab this machine happens to run (`make up`, on images of another day, its
SMTP on another port) is never the one `make test` tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# The checkout's root, for `tests`: pytest puts it on the path for tests/ (a package), not for
# examples/, and `pytest examples` collects no tests/ first.
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from tests.integration import conftest as integration  # noqa: E402

# The images the integration tests build, with the base image they build them FROM.
base_image = integration.base_image
images = integration.images


@pytest.fixture(scope="session")
def maillab_images(images: dict[str, str]) -> dict[str, str]:
    """The plugin's fixture, overridden: a lab it starts here runs the images under test."""
    return {service: images[service] for service in ("server", "inspector")}


def pytest_configure(config: pytest.Config) -> None:
    """--maillab-start, unless the command line says otherwise: the lab is the images under test."""
    if config.getoption("maillab_start", None) is None:
        config.option.maillab_start = "always"


@pytest.hookimpl(tryfirst=True)  # before -m "not integration" deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
