"""Saving a message's attachments (`show --save-attachments`): safe names, nothing overwritten.

A file name in a message is hostile: it may climb out of the folder (`../../x`), hold
controls, or be too long for any file system. Each attachment is written under a name made
from it that is none of those, into a new file only, never through a file, folder or
symlink already there.
"""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")
NAME_BYTES = 255  # the longest file name Linux file systems take (NAME_MAX)
LONGEST_EXTENSION = 16  # past this, what follows the last dot is not kept whole as an extension


class CannotSave(Exception):
    """An attachment could not be written; the message says which and why."""


def attachment_name(filename: str, number: int, copy: int = 0) -> str:
    """A file name for an attachment that is safe in any folder, and never too long.

    The last part of `filename` (so `../../x` is `x`), every character but letters, digits,
    `.`, `_`, ` ` and `-` as `_` (controls and path separators included), no leading dot;
    `attachment-NUMBER` where nothing is left. Cut to NAME_BYTES, keeping the extension;
    copy N > 0 of a name gets `-N` before its extension.
    """
    base = Path(filename.replace("\\", "/")).name
    name = _UNSAFE_NAME.sub("_", base).lstrip(". ").rstrip() or f"attachment-{number}"
    dot = name.rfind(".")
    extension = name[dot:] if dot > 0 and len(name) - dot <= LONGEST_EXTENSION else ""
    stem = name[: len(name) - len(extension)]
    tail = (f"-{copy}" if copy else "") + extension
    return stem[: NAME_BYTES - len(tail)] + tail  # ASCII by now: one byte per character


def save(folder: Path, payloads: list[tuple[str, str, bytes]]) -> list[Path]:
    """Write attachments under `folder`, each under `attachment_name`, never overwriting a file.

    `payloads` are (filename, content type, bytes). Raises CannotSave when the folder cannot
    be created or a file cannot be written.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotSave(f"cannot create {folder}: {exc.strerror}") from None
    saved = []
    for number, (filename, _, data) in enumerate(payloads, start=1):
        copy = 0
        while True:
            path = folder / attachment_name(filename, number, copy)
            try:
                with open(path, "xb") as file:
                    file.write(data)
                break
            except FileExistsError:  # a file, a folder or a symlink: never written through
                copy += 1
            except OSError as exc:
                raise CannotSave(f"cannot write {path}: {exc.strerror}") from None
        saved.append(path)
    return saved
