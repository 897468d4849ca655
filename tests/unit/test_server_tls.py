"""STARTTLS and AUTH on the server, over real sockets, and the settings that turn them on."""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from maillab_common.forward import Record, parse_records
from maillab_common.settings import ConfigError
from maillab_server import protocol
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


def wrong_plain() -> str:
    return "PLAIN " + base64.b64encode(b"\0lab\0wrong").decode()


@pytest.mark.parametrize("starttls", [False, True])
def test_without_users_auth_is_neither_advertised_nor_taken(
    start_server: StartServer, tmp_path: Path, starttls: bool
) -> None:
    server = start_server(starttls=starttls, tls_dir=tmp_path / "tls")
    with connect(server) as client:
        client.ehlo()
        if starttls:
            client.starttls(context=trusting())
            client.ehlo()
        assert not client.has_extn("auth"), client.esmtp_features
        code, reply = client.docmd("AUTH", wrong_plain())
        assert (code, reply) == (502, b"5.5.1 AUTH not available: this server has no users")
        assert b"AUTH" not in client.docmd("HELP")[1]
        assert client.noop()[0] == 250, "the session goes on"


def test_help_names_auth_when_there_are_users(start_server: StartServer) -> None:
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as client:
        client.ehlo()
        assert b"AUTH" in client.docmd("HELP")[1]
        assert client.docmd("HELP", "AUTH") == (250, b"Syntax: AUTH <mechanism>")


def test_failed_auth_attempts_wait_then_close_with_421(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "AUTH_FAILURE_DELAY", 0.05)
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as client:
        client.ehlo()
        for _ in range(protocol.AUTH_FAILURES_BEFORE_CLOSE - 1):
            assert client.docmd("AUTH", wrong_plain())[0] == 535
        assert client.noop()[0] == 250, "a few failures are allowed"
        client.send(f"AUTH {wrong_plain()}\r\nNOOP\r\n".encode())  # pipelined: the NOOP is never answered
        assert client.getreply()[0] == 535
        code, reply = client.getreply()
        assert code == 421 and b"too many failed AUTH attempts" in reply
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.getreply()


def test_the_auth_delay_holds_up_only_its_own_session(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "AUTH_FAILURE_DELAY", 3600.0)
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as guesser, connect(server) as other:
        guesser.ehlo()
        assert guesser.docmd("AUTH", wrong_plain())[0] == 535, "a first wrong password is answered at once"
        guesser.send(f"AUTH {wrong_plain()}\r\n".encode())
        assert guesser.sock is not None
        guesser.sock.settimeout(0.5)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            guesser.getreply()  # the second guess's own answer waits out the delay
        other.ehlo()
        other.login("lab", "secret")
        assert other.sendmail("a@x.test", ["b@one.test"], MESSAGE) == {}


def test_only_wrong_credentials_count_as_failed_attempts(start_server: StartServer) -> None:
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as client:
        client.ehlo()
        for _ in range(protocol.AUTH_FAILURES_BEFORE_CLOSE + 2):
            assert client.docmd("AUTH", "NO-SUCH-MECHANISM")[0] == 504
        assert client.noop()[0] == 250
        client.login("lab", "secret")


def test_a_login_after_failures_below_the_limit_succeeds(start_server: StartServer) -> None:
    server = start_server(auth_users=(("lab", "secret"),))
    with connect(server) as client:
        client.ehlo()
        for _ in range(protocol.AUTH_FAILURES_BEFORE_CLOSE - 1):
            assert client.docmd("AUTH", wrong_plain())[0] == 535
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0lab\0secret").decode())[0] == 235
        assert client.sendmail("a@x.test", ["b@one.test"], MESSAGE) == {}


def test_a_link_planted_as_the_key_is_replaced_not_followed(tmp_path: Path) -> None:
    folder, victim = tmp_path / "tls", tmp_path / "victim"
    folder.mkdir(mode=0o700)
    victim.write_bytes(b"not yours\n")
    (folder / "key.pem").symlink_to(victim)
    cert, key = self_signed("lab.test", folder)
    assert victim.read_bytes() == b"not yours\n", "the link was followed"
    assert not key.is_symlink() and key.stat().st_mode & 0o777 == 0o600
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda cert, key: cert.unlink(), id="key without its certificate"),
        pytest.param(lambda cert, key: key.unlink(), id="certificate without its key"),
        pytest.param(lambda cert, key: key.write_bytes(key.read_bytes()[:100]), id="a half-written key"),
        pytest.param(lambda cert, key: cert.write_bytes(b""), id="an empty certificate"),
        pytest.param(
            lambda cert, key: key.write_bytes(self_signed("other.test", key.parent / "other")[1].read_bytes()),
            id="a key from another pair",
        ),
    ],
)
def test_a_pair_that_does_not_load_is_made_again(tmp_path: Path, damage: Callable[[Path, Path], object]) -> None:
    cert, key = self_signed("lab.test", tmp_path / "tls")
    damage(cert, key)
    assert self_signed("lab.test", tmp_path / "tls") == (cert, key)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in cert.parent.iterdir() if path.is_file()) == ["cert.pem", "key.pem"]


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(ValueError, match="no one else may write to"):
        self_signed("lab.test", folder)
    assert list(folder.iterdir()) == []
