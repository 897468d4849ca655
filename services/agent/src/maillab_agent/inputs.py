"""Checked values from what a user gives on the command line, beyond what typer checks.

Files to attach, a body file, USER:PASS, 'Name: value' headers, a rate and a list of
domains. Each function returns the value or raises BadInput with the one line the CLI
shows; nothing here prints or exits.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from maillab_agent.message import (
    MAX_ATTACHMENT_SIZE,
    Attachment,
    BadInput,
    check_mailbox,
    require_single_line,
    require_text,
)
from maillab_agent.session import Credentials


def read_attachments(paths: Iterable[Path]) -> list[Attachment]:
    """Each path's file as an attachment, its type guessed from its name; only regular files up to 1GiB."""
    attachments = []
    for path in paths:
        try:
            require_single_line(path.name, "an attachment's file name")
            with open(path, "rb") as file:
                status = os.fstat(file.fileno())
                # Checked on the open file, so that a directory, a FIFO or /dev/zero is never read.
                if not stat.S_ISREG(status.st_mode):
                    raise BadInput("not a regular file")
                if status.st_size > MAX_ATTACHMENT_SIZE:
                    raise BadInput("over 1GiB")
                data = file.read()
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:  # BadInput, or a NUL in the path
            raise BadInput(f"cannot attach {path}: {exc}") from None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        attachments.append(Attachment(filename=path.name, content_type=content_type, data=data))
    return attachments


def read_body(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None


def parse_credentials(text: str) -> Credentials:
    """--auth USER:PASS; the password may hold colons."""
    user, colon, password = text.partition(":")
    if not colon or not user:
        raise BadInput("--auth takes USER:PASS")
    require_text(text, "--auth")
    return Credentials(user=user, password=password)


def parse_header(text: str) -> tuple[str, str]:
    """--header 'Name: value' -> (name, value); build_message checks both."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise BadInput(f"--header {text!r} is not of the form 'Name: value'")
    return name.strip(), value.strip()


def parse_rate(text: str) -> float:
    """--rate '50/s' (or '50') -> 50.0 messages a second."""
    try:
        value = float(text.strip().removesuffix("/s"))
    except ValueError:
        raise BadInput(f"--rate {text!r} is not a rate such as 50/s") from None
    if not value > 0:  # also NaN
        raise BadInput("--rate must be above 0")
    return value


def parse_domains(text: str) -> tuple[str, ...]:
    """--domains 'a.test, b.test' -> ('a.test', 'b.test'): at least one, each fit for an address."""
    domains = tuple(domain.strip() for domain in text.split(",") if domain.strip())
    if not domains:
        raise BadInput("--domains names no domain")
    for domain in domains:
        check_mailbox(f"user@{domain}")
    return domains
