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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("server", ("server", 587)),  # no port: the caller's default
        ("[::1]", ("::1", 587)),
        ("::1", ("::1", 587)),  # an IPv6 address without brackets cannot carry a port
        ("2001:db8::1", ("2001:db8::1", 587)),
        ("host:1", ("host", 1)),
        ("host:65535", ("host", 65535)),
        ("[::1]:1", ("::1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[2001:db8::1]:2525", ("2001:db8::1", 2525)),
        (" host:25 ", ("host", 25)),  # surrounding spaces, as env files leave them
        ("x" * 63 + ".test:25", ("x" * 63 + ".test", 25)),
    ],
)
def test_defaults_bounds_and_brackets(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, name="X", default_port=587) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "X='' has no host"),
        ("   ", "X='   ' has no host"),
        (":25", "X=':25' has no host"),
        ("[]:25", "X='[]:25' has no host"),
        ("[]", "X='[]' has no host"),
        ("host:0", "X='host:0': the port must be a number from 1 to 65535"),
        ("host:65536", "X='host:65536': the port must be a number from 1 to 65535"),
        ("[::1]:0", "X='[::1]:0': the port must be a number from 1 to 65535"),
        ("[::1]:65536", "X='[::1]:65536': the port must be a number from 1 to 65535"),
        ("host:+25", "X='host:+25': the port must be a number from 1 to 65535"),
        ("host: 25", "X='host: 25': the port must be a number from 1 to 65535"),
        ("[::1", "X='[::1': missing ']' after the IPv6 address"),
        ("[::1]]:25", "X='[::1]]:25' is not HOST:PORT"),
        ("[::1]25", "X='[::1]25' is not HOST:PORT"),
        ("a\x00b:25", "X='a\\x00b:25': 'a\\x00b' is not a host name or address"),
        ("a\nb:25", "X='a\\nb:25': 'a\\nb' is not a host name or address"),
        ("a\u2028b:25", "X='a\\u2028b:25': 'a\\u2028b' is not a host name or address"),
        ("a\x7fb:25", "X='a\\x7fb:25': 'a\\x7fb' is not a host name or address"),
        ("[::1\x00]:25", "X='[::1\\x00]:25': '::1\\x00' is not a host name or address"),
        ("a\ud800b:25", "X='a\\ud800b:25': 'a\\ud800b' is not a host name or address"),
    ],
)
def test_each_mistake_is_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_host_port(value, name="X", default_port=25)
    assert str(raised.value) == message
