"""TLS and AUTH for the server: the STARTTLS context, a self-signed certificate when none is given, lab logins."""

from __future__ import annotations

import datetime
import hmac
import logging
import os
import secrets
import ssl
import stat
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
    """A certificate and key for `hostname` in `folder`: made on first start, reused after.

    A pair that does not load (a file missing, one half-written by a crash, a key that does
    not match its certificate) is made again. Each new file is written under a fresh
    temporary name with O_EXCL|O_NOFOLLOW (the key with mode 0600), so a link planted in the
    folder is never followed, then fsynced and renamed into place, key first: a crash leaves
    the old pair, the new one, or a pair that does not load and is made again.
    """
    cert, key = folder / "cert.pem", folder / "key.pem"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    if cert.exists() or key.exists():
        if _loads(cert, key):
            return cert, key
        log.warning("the certificate and key in %s do not load together: making a new pair", folder)
    for leftover in folder.glob(".*.pem.*.tmp"):  # from a crash in the middle of writing
        leftover.unlink(missing_ok=True)
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
    _write_new(key, key_bytes, mode=0o600)
    _write_new(cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    log.info("made a self-signed certificate for %s in %s", hostname, folder)
    return cert, key


def _check_private(folder: Path) -> None:
    """Refuse a folder that someone else could put a key or a link in."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ValueError(
            f"{folder} must be a folder of this server's own user that no one else may write to"
            " (set MAILLAB_TLS_DIR, or give MAILLAB_TLS_CERT and MAILLAB_TLS_KEY)"
        )


def _loads(cert: Path, key: Path) -> bool:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ValueError, ssl.SSLError):
        return False
    return True


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` with a file holding `data`, written whole before it takes the name."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # replaces a link at `path` itself, never what it points to
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
