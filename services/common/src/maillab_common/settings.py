"""Reading MAILLAB_* environment variables into typed values, with clear errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeVar


class ConfigError(ValueError):
    """A MAILLAB_* setting has a value the service cannot use."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


N = TypeVar("N", int, float)


def _env_number(
    env: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], kind: str, minimum: N, maximum: N | None
) -> N:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {kind}") from None
    if not value >= minimum or (maximum is not None and value > maximum):  # `not >=` also refuses NaN
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}{upper}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    return _env_number(env, name, default, int, "a whole number", minimum, maximum)


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(env, name, default, float, "a number", minimum, None)


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} must be true or false")


def env_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of: {', '.join(choices)}")
    return value


_PORT = re.compile(r"[0-9]{1,5}")
# What no host name or address holds: controls, spaces, slashes, line separators, surrogates.
_NOT_IN_A_HOST = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029\ud800-\udfff/]")


def parse_host_port(value: str, *, name: str, default_port: int) -> tuple[str, int]:
    """Split 'host:port' (or '[v6]:port', or a bare host) into its parts; ConfigError when it is neither."""
    shown = value if len(value) <= 80 else f"{value[:80]}..."
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        closing = text.find("]")
        if closing == -1:
            raise ConfigError(f"{name}={shown!r}: missing ']' after the IPv6 address")
        host, rest = text[1:closing], text[closing + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{name}={shown!r} is not HOST:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ConfigError(f"{name}={shown!r} has no host")
    if _NOT_IN_A_HOST.search(host) or len(host) > 253:
        raise ConfigError(f"{name}={shown!r}: {host[:80]!r} is not a host name or address")
    if ":" not in host:  # an IPv6 address has colons; a name must be one the resolver can take
        try:
            host.encode("idna")
        except UnicodeError:
            raise ConfigError(f"{name}={shown!r}: {host[:80]!r} is not a host name (labels of 1 to 63)") from None
    if not port_text:
        return host, default_port
    # ASCII digits only: str.isdigit() takes '²', which int() then refuses.
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{name}={shown!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)
