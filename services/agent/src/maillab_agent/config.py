"""The agent's settings from MAILLAB_* environment variables; flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maillab_agent.message import MAX_BATCH_MEMORY
from maillab_common.settings import env_float, env_str, parse_host_port

DEFAULT_SMTP_PORT = 2525
# cgroup v2, then v1: "max" or an absurd v1 figure means no limit (taken as is, then capped).
CGROUP_MEMORY_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


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


def memory_budget(limits: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int:
    """How much memory a batch may take: MAX_BATCH_MEMORY, or half the container's limit.

    A batch is built whole before it is sent, and `batch_memory` estimates it about 1.4x
    low (measured: 559 MiB for an estimate of 354), so half a cgroup limit keeps the agent
    clear of the OOM killer: a batch too big is refused with exit 2 instead.
    """
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isascii() and text.isdigit():
            return min(MAX_BATCH_MEMORY, int(text) // 2)
    return MAX_BATCH_MEMORY


def server_address(value: str, *, name: str) -> tuple[str, int]:
    """HOST:PORT (or [v6]:PORT, or a bare HOST) -> (host, port); ConfigError when it cannot be one."""
    return parse_host_port(value, name=name, default_port=DEFAULT_SMTP_PORT)
