"""TLS and AUTH for the server: the STARTTLS context, a self-signed certificate when none is given, lab logins."""

from __future__ import annotations

import datetime
import hmac
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from maillab_server.config import ServerConfig

log = logging.getLogger(__name__)


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The context STARTTLS upgrades with, or None when STARTTLS is off."""
    if not config.starttls:
        return None
    if config.tls_cert is not None and config.tls_key is not None:
        cert, key = config.tls_cert, config.tls_key
    else:
        cert, key = self_signed(config.hostname, config.tls_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def self_signed(hostname: str, folder: Path) -> tuple[Path, Path]:
    """A certificate and key for `hostname` in `folder`: made on first start, reused after."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_bytes)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate for %s in %s", hostname, folder)
    return cert, key


class LabLogins:
    """aiosmtpd authenticator for AUTH PLAIN and LOGIN against MAILLAB_AUTH_USERS."""

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        self._users = {user.encode(): password.encode() for user, password in users}

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._users.get(auth_data.login)
        valid = expected is not None and hmac.compare_digest(expected, auth_data.password)
        return AuthResult(success=valid, handled=False)
