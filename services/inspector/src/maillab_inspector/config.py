"""The inspector's settings from MAILLAB_* environment variables; flags override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maillab_common.settings import env_choice, env_float, env_int, env_str


@dataclass(frozen=True)
class InspectorConfig:
    forward_dir: Path = Path("/forward")
    # A full sweep of the folder at this interval catches whatever file events were missed.
    sweep_interval: float = 1.0
    ready_file: Path = Path("/tmp/maillab-inspector.ready")
    output: str = "text"
    state_file: Path = Path("inspector-positions.sqlite3")  # from_env puts it under $XDG_STATE_HOME
    manifest: Path | None = None  # the agent's manifest, for verify (compose shares it on a volume)
    catalogue_file: Path = Path("inspector-catalogue.sqlite3")  # from_env puts it beside the state file
    # `serve`'s web view and API: loopback on a host; the image listens on every interface
    # (MAILLAB_HTTP_HOST=0.0.0.0), and compose publishes the port on the host's loopback only.
    http_host: str = "127.0.0.1"
    http_port: int = 8025
    # Host names the web view answers to besides the loopback ones (DNS rebinding): "*" for any.
    http_hosts: tuple[str, ...] = ()
    # Where `serve` says which port it listens on, for the health check to ask.
    http_ready_file: Path = Path("/tmp/maillab-inspector.http")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InspectorConfig:
        env = os.environ if env is None else env
        state_file = Path(env_str(env, "MAILLAB_STATE_FILE", str(_default_state_file(env))))
        return cls(
            forward_dir=Path(env_str(env, "MAILLAB_FORWARD_DIR", str(cls.forward_dir))),
            sweep_interval=env_float(env, "MAILLAB_SWEEP_INTERVAL", cls.sweep_interval, minimum=0.05),
            ready_file=Path(env_str(env, "MAILLAB_READY_FILE", str(cls.ready_file))),
            output=env_choice(env, "MAILLAB_OUTPUT", cls.output, ("text", "json")),
            state_file=state_file,
            manifest=Path(env["MAILLAB_MANIFEST"]) if env.get("MAILLAB_MANIFEST", "").strip() else None,
            catalogue_file=Path(env_str(env, "MAILLAB_CATALOGUE", str(state_file.with_name("catalogue.sqlite3")))),
            http_host=env_str(env, "MAILLAB_HTTP_HOST", cls.http_host),
            http_port=env_int(env, "MAILLAB_HTTP_PORT", cls.http_port, minimum=1, maximum=65535),
            http_hosts=tuple(name.strip() for name in env.get("MAILLAB_HTTP_HOSTS", "").split(",") if name.strip()),
            http_ready_file=Path(env_str(env, "MAILLAB_HTTP_READY_FILE", str(cls.http_ready_file))),
        )


def _default_state_file(env: Mapping[str, str]) -> Path:
    state_home = Path(env.get("XDG_STATE_HOME") or Path(env.get("HOME") or "/tmp") / ".local" / "state")
    return state_home / "maillab" / "inspector-positions.sqlite3"
