"""The inspector's settings from MAILLAB_* environment variables; flags override them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from maillab_common.settings import ConfigError, env_choice, env_float, env_int, env_str

# Printable ASCII without spaces: a host name, port and path as a URL writes them (A-labels for IDNs).
_URL_CHARACTERS = re.compile(r"[!-~]+")


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
    # Where `wait` finds the running inspector's API: from_env makes it http://127.0.0.1:<http_port>
    # (compose sets http://inspector:8025).
    api_url: str = "http://127.0.0.1:8025"
    # The fault-injection rules and the server's report of them (maillab_common.chaos_files):
    # a folder the server shares (compose mounts the `chaos` volume here in both containers).
    chaos_dir: Path = Path("/chaos")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InspectorConfig:
        env = os.environ if env is None else env
        state_file = Path(env_str(env, "MAILLAB_STATE_FILE", str(_default_state_file(env))))
        http_port = env_int(env, "MAILLAB_HTTP_PORT", cls.http_port, minimum=1, maximum=65535)
        # On the host, MAILLAB_HTTP_PORT is where compose publishes the lab's API: `wait` asks there.
        local_api = f"http://127.0.0.1:{http_port}"
        return cls(
            forward_dir=Path(env_str(env, "MAILLAB_FORWARD_DIR", str(cls.forward_dir))),
            sweep_interval=env_float(env, "MAILLAB_SWEEP_INTERVAL", cls.sweep_interval, minimum=0.05),
            ready_file=Path(env_str(env, "MAILLAB_READY_FILE", str(cls.ready_file))),
            output=env_choice(env, "MAILLAB_OUTPUT", cls.output, ("text", "json")),
            state_file=state_file,
            manifest=Path(env["MAILLAB_MANIFEST"]) if env.get("MAILLAB_MANIFEST", "").strip() else None,
            catalogue_file=Path(env_str(env, "MAILLAB_CATALOGUE", str(state_file.with_name("catalogue.sqlite3")))),
            http_host=env_str(env, "MAILLAB_HTTP_HOST", cls.http_host),
            http_port=http_port,
            http_hosts=tuple(name.strip() for name in env.get("MAILLAB_HTTP_HOSTS", "").split(",") if name.strip()),
            http_ready_file=Path(env_str(env, "MAILLAB_HTTP_READY_FILE", str(cls.http_ready_file))),
            api_url=api_url(env_str(env, "MAILLAB_API_URL", local_api), name="MAILLAB_API_URL"),
            chaos_dir=Path(env_str(env, "MAILLAB_CHAOS_DIR", str(cls.chaos_dir))),
        )


def api_url(text: str, *, name: str) -> str:
    """The inspector's address as `http[s]://host[:port][/prefix]`, without a trailing `/` or `/api/v1`
    (the API's curl examples name it so); ConfigError, naming `name`, for anything else."""
    value = text.strip()
    shown = value if len(value) <= 80 else f"{value[:80]}..."
    if not _URL_CHARACTERS.fullmatch(value):
        raise ConfigError(f"{name}={shown!r} is not an http:// or https:// address")
    try:
        parts = urlsplit(value)
        if parts.port == 0:  # .port raises ValueError itself for one that is not a number up to 65535
            raise ValueError("port 0 is no port to connect to")
    except ValueError as exc:
        raise ConfigError(f"{name}={shown!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={shown!r} is not an http:// or https:// address with a host")
    if parts.query or parts.fragment or parts.username is not None:
        raise ConfigError(f"{name}={shown!r}: give only the scheme, the host, the port and a path, if any")
    path = parts.path.rstrip("/").removesuffix("/api/v1").rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _default_state_file(env: Mapping[str, str]) -> Path:
    state_home = Path(env.get("XDG_STATE_HOME") or Path(env.get("HOME") or "/tmp") / ".local" / "state")
    return state_home / "maillab" / "inspector-positions.sqlite3"
