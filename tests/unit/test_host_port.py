"""parse_host_port: every shape of HOST:PORT, and one clear ConfigError for everything else."""

from __future__ import annotations

import pytest

from maillab_common.settings import ConfigError, parse_host_port


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:2525", ("localhost", 2525)),
        ("server", ("server", 25)),
        ("[::1]:587", ("::1", 587)),
        ("[::1]", ("::1", 25)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
        ("bücher.test:2525", ("bücher.test", 2525)),
    ],
)
def test_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, name="X", default_port=25) == expected


@pytest.mark.parametrize(
    "value",
    [
        "host:²",  # a digit to str.isdigit(), not to int()
        "host:" + "9" * 5000,  # past int()'s digit limit
        "host:0",
        "host:65536",
        "host:-1",
        ":25",
        "[::1",
        "[::1]x",
        "ho st:25",
        "host\x1b[2J:25",
        "a/b:25",
        "x" * 64 + ".test:25",  # a label over 63
        "h" * 254,
    ],
)
def test_anything_else_is_one_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_host_port(value, name="X", default_port=25)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 300
