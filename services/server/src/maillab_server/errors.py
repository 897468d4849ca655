"""Domain errors that carry the SMTP reply they stand for; only the handler speaks SMTP."""

from __future__ import annotations


class StorageError(Exception):
    """A message could not be stored; nothing of it was kept."""

    smtp_reply = "451 4.3.0 Could not store the message; try again later"


class StorageFull(StorageError):
    smtp_reply = "452 4.3.1 Insufficient system storage"
