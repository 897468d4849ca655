"""The agent's settings from MAILLAB_* environment variables; flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maillab_common.settings import env_float, env_str, parse_host_port

DEFAULT_SMTP_PORT = 2525


@dataclass(frozen=True)
class AgentConfig:
    server: str = "localhost:2525"  # HOST:PORT; compose sets server:2525
    timeout: float = 30.0
    manifest: Path | None = None  # where `batch` writes its manifest unless --manifest says

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentConfig:
        env = os.environ if env is None else env
        config = cls(
            server=env_str(env, "MAILLAB_SERVER", cls.server),
            timeout=env_float(env, "MAILLAB_TIMEOUT", cls.timeout, minimum=0.1),
            manifest=Path(env["MAILLAB_MANIFEST"]) if env.get("MAILLAB_MANIFEST", "").strip() else None,
        )
        config.server_address()  # fail at start-up, not at the first connection
        return config

    def server_address(self, override: str | None = None) -> tuple[str, int]:
        name = "--server" if override else "MAILLAB_SERVER"
        return server_address(override or self.server, name=name)


def server_address(value: str, *, name: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT, or a bare HOST) -> (host, port); ConfigError when it cannot be one."""
    return parse_host_port(value, name=name, default_port=DEFAULT_SMTP_PORT)
