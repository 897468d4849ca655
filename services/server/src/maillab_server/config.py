"""The server's settings, read once at start-up from MAILLAB_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maillab_common.chaos import ChaosSyntaxError, Rule, parse_rules
from maillab_common.settings import ConfigError, env_bool, env_choice, env_float, env_int, env_str

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "0.0.0.0"
    port: int = 2525
    classroom_port: int = 2526  # the classroom dialect's listener (classroom.py); 0: none
    hostname: str = "maillab.test"  # the name in the greeting and Received headers
    forward_dir: Path = Path("/forward")
    max_message_size: int = 32 * 1024 * 1024
    spool_threshold: int = 1024 * 1024  # a message past this many bytes goes to disk as it arrives
    max_recipients: int = 100
    max_line_length: int = 1000  # RFC 5321 4.5.3.1.6, CRLF included
    lenient_line_endings: bool = False  # unsafe: a bare LF ends lines and "." LF ends DATA
    idle_timeout: float = 300.0
    max_connections: int = 100
    shutdown_grace: float = 10.0
    log_level: str = "info"
    log_format: str = "text"
    starttls: bool = False
    tls_cert: Path | None = None  # with tls_key; without them a self-signed pair is made in tls_dir
    tls_key: Path | None = None
    tls_dir: Path = Path("/tmp/maillab-tls")
    require_tls: bool = False
    auth_users: tuple[tuple[str, str], ...] = ()  # (user, password)
    require_auth: bool = False
    chaos: tuple[Rule, ...] = ()  # fault injection (docs/chaos.md), until rules.json in chaos_dir says otherwise
    chaos_dir: Path = Path("/chaos")  # rules.json and state.json, shared with the inspector (chaos_live.py)
    health_socket: Path | None = None  # the health check's unix socket; None: health_socket_path's default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerConfig:
        env = os.environ if env is None else env
        return cls(
            listen_host=env_str(env, "MAILLAB_LISTEN_HOST", cls.listen_host),
            port=env_int(env, "MAILLAB_SMTP_PORT", cls.port, minimum=1, maximum=65535),
            classroom_port=_classroom_port(env),
            hostname=env_str(env, "MAILLAB_HOSTNAME", cls.hostname),
            forward_dir=Path(env_str(env, "MAILLAB_FORWARD_DIR", str(cls.forward_dir))),
            max_message_size=env_int(env, "MAILLAB_MAX_MESSAGE_SIZE", cls.max_message_size, minimum=1024),
            spool_threshold=env_int(env, "MAILLAB_SPOOL_THRESHOLD", cls.spool_threshold, minimum=0),
            max_recipients=env_int(env, "MAILLAB_MAX_RECIPIENTS", cls.max_recipients, minimum=1),
            max_line_length=env_int(env, "MAILLAB_MAX_LINE_LENGTH", cls.max_line_length, minimum=80),
            lenient_line_endings=env_bool(env, "MAILLAB_LENIENT_LINE_ENDINGS", cls.lenient_line_endings),
            idle_timeout=env_float(env, "MAILLAB_IDLE_TIMEOUT", cls.idle_timeout, minimum=1.0),
            max_connections=env_int(env, "MAILLAB_MAX_CONNECTIONS", cls.max_connections, minimum=1),
            shutdown_grace=env_float(env, "MAILLAB_SHUTDOWN_GRACE", cls.shutdown_grace),
            log_level=env_choice(env, "MAILLAB_LOG_LEVEL", cls.log_level, LOG_LEVELS),
            log_format=env_choice(env, "MAILLAB_LOG_FORMAT", cls.log_format, LOG_FORMATS),
            starttls=env_bool(env, "MAILLAB_STARTTLS", cls.starttls),
            tls_cert=_optional_path(env, "MAILLAB_TLS_CERT"),
            tls_key=_optional_path(env, "MAILLAB_TLS_KEY"),
            tls_dir=Path(env_str(env, "MAILLAB_TLS_DIR", str(cls.tls_dir))),
            require_tls=env_bool(env, "MAILLAB_REQUIRE_TLS", cls.require_tls),
            auth_users=_auth_users(env_str(env, "MAILLAB_AUTH_USERS", "")),
            require_auth=env_bool(env, "MAILLAB_REQUIRE_AUTH", cls.require_auth),
            chaos=_chaos_rules(env.get("MAILLAB_CHAOS", "")),
            chaos_dir=Path(env_str(env, "MAILLAB_CHAOS_DIR", str(cls.chaos_dir))),
            health_socket=_optional_path(env, "MAILLAB_HEALTH_SOCKET"),
        )._checked()

    @property
    def health_socket_path(self) -> Path:
        """Where `serve` listens for the health check, out of fault injection's reach (__main__.py).

        By default in /tmp, named after the SMTP port, so that servers on one host do not collide.
        """
        return self.health_socket or Path(f"/tmp/maillab-server-{self.port}.sock")

    def _checked(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("MAILLAB_TLS_CERT and MAILLAB_TLS_KEY go together: give both or neither")
        if self.require_tls and not self.starttls:
            raise ConfigError("MAILLAB_REQUIRE_TLS=true needs MAILLAB_STARTTLS=true")
        if self.require_auth and not self.auth_users:
            raise ConfigError("MAILLAB_REQUIRE_AUTH=true needs MAILLAB_AUTH_USERS (user:password,...)")
        if self.require_auth and not self.starttls:
            raise ConfigError("MAILLAB_REQUIRE_AUTH=true needs MAILLAB_STARTTLS=true: passwords go over TLS")
        if self.health_socket is not None and not self.health_socket.is_absolute():
            raise ConfigError(f"MAILLAB_HEALTH_SOCKET={str(self.health_socket)!r} is not an absolute path")
        return self


def _classroom_port(env: Mapping[str, str]) -> int:
    """The classroom listener's port; 0 when it is off.

    compose publishes the container's port 2526 on the user's MAILLAB_CLASSROOM_PORT, so in
    the container that variable keeps its default and the user's value comes as
    MAILLAB_CLASSROOM_PUBLISHED_PORT: 0 there turns the listener off too (a published port 0
    would be a random one; with nothing listening behind it, it is refused).
    """
    port = env_int(env, "MAILLAB_CLASSROOM_PORT", ServerConfig.classroom_port, minimum=0, maximum=65535)
    published = env_int(env, "MAILLAB_CLASSROOM_PUBLISHED_PORT", 1, minimum=0, maximum=65535)
    return 0 if published == 0 else port


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None


def _auth_users(text: str) -> tuple[tuple[str, str], ...]:
    users = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        user, colon, password = item.partition(":")
        if not colon or not user or not password:
            raise ConfigError(f"MAILLAB_AUTH_USERS: {user or item!r} is not of the form user:password")
        users.append((user, password))
    return tuple(users)


def _chaos_rules(text: str) -> tuple[Rule, ...]:
    try:
        return parse_rules(text)
    except ChaosSyntaxError as exc:
        raise ConfigError(f"MAILLAB_CHAOS: {exc}") from None


# Each setting's flag on `maillab-server serve`, and the variable it stands for: flags are
# applied as variables, so that both go through the same checks. MAILLAB_CLASSROOM_PUBLISHED_PORT
# has none: only compose sets it.
FLAGS = {
    "--listen-host": "MAILLAB_LISTEN_HOST",
    "--port": "MAILLAB_SMTP_PORT",
    "--classroom-port": "MAILLAB_CLASSROOM_PORT",
    "--hostname": "MAILLAB_HOSTNAME",
    "--forward-dir": "MAILLAB_FORWARD_DIR",
    "--max-message-size": "MAILLAB_MAX_MESSAGE_SIZE",
    "--spool-threshold": "MAILLAB_SPOOL_THRESHOLD",
    "--max-recipients": "MAILLAB_MAX_RECIPIENTS",
    "--max-line-length": "MAILLAB_MAX_LINE_LENGTH",
    "--lenient-line-endings": "MAILLAB_LENIENT_LINE_ENDINGS",
    "--idle-timeout": "MAILLAB_IDLE_TIMEOUT",
    "--max-connections": "MAILLAB_MAX_CONNECTIONS",
    "--shutdown-grace": "MAILLAB_SHUTDOWN_GRACE",
    "--log-level": "MAILLAB_LOG_LEVEL",
    "--log-format": "MAILLAB_LOG_FORMAT",
    "--starttls": "MAILLAB_STARTTLS",
    "--tls-cert": "MAILLAB_TLS_CERT",
    "--tls-key": "MAILLAB_TLS_KEY",
    "--require-tls": "MAILLAB_REQUIRE_TLS",
    "--auth-users": "MAILLAB_AUTH_USERS",
    "--require-auth": "MAILLAB_REQUIRE_AUTH",
    "--chaos": "MAILLAB_CHAOS",
    "--chaos-dir": "MAILLAB_CHAOS_DIR",
    "--health-socket": "MAILLAB_HEALTH_SOCKET",
}
