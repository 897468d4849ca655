"""The interactive mode: the classic course client's prompts, asked line by line.

`compose` asks for From, To, Subject, Message (lines up to one holding only '.') and
Attachment on the streams it is given, checks each answer and asks again after a bad one.
It works the same whether a person types or a pipe feeds it, and returns None at end of
input, so that nothing is sent. `compose_on_stdio` runs it on the process's own streams,
where every line written has its controls escaped (`write_visible`). Sending is the caller's.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from maillab_agent.message import BadInput, check_mailbox, require_single_line, shorten
from maillab_common.text import visible

T = TypeVar("T")
ReadLine = Callable[[], str]  # returns "" at end of input, like TextIO.readline
Write = Callable[[str], None]


@dataclass(frozen=True)
class Draft:
    mail_from: str
    to: tuple[str, ...]
    subject: str
    body: str
    attachments: tuple[Path, ...]


def compose(read_line: ReadLine, write: Write) -> Draft | None:
    mail_from = _ask(read_line, write, "From: ", check_mailbox)
    if mail_from is None:
        return None
    to = _ask(read_line, write, "To: ", _mailboxes)
    if to is None:
        return None
    subject = _ask(read_line, write, "Subject: ", lambda text: require_single_line(text, "the subject"))
    if subject is None:
        return None
    write("Message: ")
    lines = []
    while (line := read_line()) != "":
        text = line.rstrip("\r\n")
        if text == ".":
            break
        lines.append(text)
    else:
        return None  # end of input inside the message: send nothing
    attachments = _ask(read_line, write, "Attachment: ", _attachment_paths)
    if attachments is None:
        return None
    return Draft(mail_from, to, subject, "".join(f"{line}\n" for line in lines), attachments)


def compose_on_stdio() -> Draft | None:
    """`compose` on standard input and output; BadInput when there is no standard input."""
    if sys.stdin is None:
        raise BadInput("no standard input to read the message from")
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Bytes that are not UTF-8 come through as surrogates, which the checks refuse with
        # a clear message, instead of as a UnicodeDecodeError.
        sys.stdin.reconfigure(errors="surrogateescape")
    draft = compose(sys.stdin.readline, write_visible)
    if draft is None:
        write_visible("\n")
    return draft


def write_visible(text: str) -> None:
    """Prompts, errors and the dialog; a final line end is the only control that goes out as it is."""
    line = text.removesuffix("\n")
    sys.stdout.write(visible(line) + text[len(line) :])
    sys.stdout.flush()


def show_dialog(side: str, line: str) -> None:
    """An smtp.Observer: each command (C:) and reply (S:) on a line of its own."""
    write_visible(f"{side}: {line}\n")


def _ask(read_line: ReadLine, write: Write, prompt: str, parse: Callable[[str], T]) -> T | None:
    while True:
        write(prompt)
        line = read_line()
        if line == "":
            return None
        try:
            return parse(line.rstrip("\r\n").strip())
        except BadInput as exc:
            write(f"error: {exc}\n")


def _mailboxes(text: str) -> tuple[str, ...]:
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    if not addresses:
        raise BadInput("give at least one recipient (comma-separated)")
    return tuple(check_mailbox(address) for address in addresses)


def _attachment_paths(text: str) -> tuple[Path, ...]:
    paths = []
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        try:
            path = Path(part).expanduser()
            exists, is_file, readable = path.exists(), path.is_file(), os.access(path, os.R_OK)
        # RuntimeError: '~nobody' names no home; ValueError: a NUL; OSError: a name too long
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadInput(f"{shorten(part)}: cannot be attached ({exc})") from None
        require_single_line(path.name, "an attachment's file name")
        if not is_file:
            raise BadInput(f"{path}: not a regular file" if exists else f"{path}: no such file")
        if not readable:
            raise BadInput(f"{path}: not readable")
        paths.append(path)
    return tuple(paths)
