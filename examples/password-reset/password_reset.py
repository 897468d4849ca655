"""A tiny application: it mails a password-reset link and a 6-digit code, through any SMTP server."""

from __future__ import annotations

import secrets
import smtplib
from email.message import EmailMessage


def send_reset(to: str, smtp: tuple[str, int] = ("127.0.0.1", 2525)) -> tuple[str, str]:
    """Mail `to` a reset link and a one-time code through the server at `smtp`; returns (link, code)."""
    link = f"https://app.example/reset?token={secrets.token_urlsafe(16)}"
    code = f"{secrets.randbelow(1_000_000):06d}"
    mail = EmailMessage()
    mail["From"] = "App <no-reply@app.example>"
    mail["To"] = to
    mail["Subject"] = "Reset your password"
    mail.set_content(f"Open {link} or enter the code {code}.\n")
    mail.add_alternative(f'<p><a href="{link}">Reset your password</a> or enter the code {code}.</p>', subtype="html")
    with smtplib.SMTP(*smtp) as server:
        server.send_message(mail)
    return link, code
