"""STARTTLS and AUTH on the server, over real sockets, and the settings that turn them on."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records
from maillab_common.settings import ConfigError
from maillab_server.config import ServerConfig
from maillab_server.tls import self_signed
from tests.unit.conftest import ServerController, StartServer

MESSAGE = b"Subject: secure\r\n\r\nhello\r\n"


def trusting() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False  # the lab's certificate is self-signed
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(server: ServerController) -> smtplib.SMTP:
    return smtplib.SMTP(server.hostname, server.port, timeout=10)


def test_starttls_with_a_self_signed_certificate_marks_the_record(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(starttls=True, tls_dir=tmp_path / "tls")
    with connect(server) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=trusting())
        client.ehlo()
        assert client.sendmail("a@x.test", ["b@one.test"], MESSAGE) == {}
    items, _ = parse_records((server.config.forward_dir / "one.test").read_bytes())
    assert isinstance(items[0], Record) and items[0].delivery.tls
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o077 == 0, "the key is private"


def test_the_self_signed_certificate_is_made_once(tmp_path: Path) -> None:
    first = self_signed("lab.test", tmp_path)
    before = first[0].read_bytes()
    assert self_signed("lab.test", tmp_path) == first and first[0].read_bytes() == before


def test_require_tls_refuses_mail_before_starttls(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(starttls=True, require_tls=True, tls_dir=tmp_path / "tls")
    with connect(server) as client:
        client.ehlo()
        assert client.mail("a@x.test")[0] == 530
        client.starttls(context=trusting())
        client.ehlo()
        assert client.mail("a@x.test")[0] == 250


def test_require_auth_over_tls(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(starttls=True, require_auth=True, auth_users=(("lab", "secret"),), tls_dir=tmp_path / "t")
    with connect(server) as client:
        client.starttls(context=trusting())
        client.ehlo()
        assert client.mail("a@x.test")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("lab", "wrong")
        client.login("lab", "secret")
        assert client.sendmail("a@x.test", ["b@one.test"], MESSAGE) == {}


def test_auth_over_a_plain_connection_when_starttls_is_off(start_server: StartServer) -> None:
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"]
        client.login("lab", "secret")
        assert client.sendmail("a@x.test", ["b@one.test"], MESSAGE) == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAILLAB_REQUIRE_TLS": "true"}, "needs MAILLAB_STARTTLS=true"),
        ({"MAILLAB_STARTTLS": "true", "MAILLAB_REQUIRE_AUTH": "yes"}, "needs MAILLAB_AUTH_USERS"),
        ({"MAILLAB_AUTH_USERS": "lab:x", "MAILLAB_REQUIRE_AUTH": "1"}, "passwords go over TLS"),
        ({"MAILLAB_AUTH_USERS": "lab"}, "'lab' is not of the form user:password"),
        ({"MAILLAB_TLS_CERT": "/x.pem"}, "give both or neither"),
        ({"MAILLAB_STARTTLS": "maybe"}, "must be true or false"),
    ],
)
def test_settings_that_do_not_fit_together_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig.from_env(env)
