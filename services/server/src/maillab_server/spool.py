"""A large message spooled to disk as it arrives, in its stored form, so memory does not grow with its size.

Past `MAILLAB_SPOOL_THRESHOLD` bytes of DATA, the protocol hands each chunk to a `Spool`,
which renders it (forward.py's `BodyRenderer`: the bytes `render_body` gives for the whole)
into an unnamed file in the forward folder. An `O_TMPFILE` file has no name: no reader
ever sees it, and the kernel frees it when its last descriptor closes, after a crash too.
The store then copies it into each recipient domain's record.

Only one thing may close a spool, at one moment: the protocol while it reads DATA, then the
handler once the store is done with it (a delivery's future done, cancelled ones too).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from aiosmtpd.smtp import Envelope

from maillab_common.forward import BodyRenderer
from maillab_server.errors import StorageError, StorageFull


class Spool:
    def __init__(self, folder: Path) -> None:
        self._renderer = BodyRenderer()
        self.error: StorageError | None = None  # the first write that failed; later writes are skipped
        self.fd = -1
        try:
            self.fd = _open_unnamed(folder)
        except OSError as exc:
            self._fail(exc)

    @property
    def length(self) -> int:
        """Bytes of the stored form written so far: all of them once `finish` has run."""
        return self._renderer.length

    def write(self, data: bytes) -> None:
        if data and self.error is None:
            self._write(self._renderer.feed(data))

    def finish(self, data: bytes) -> None:
        """Write the message's last bytes; the spool then holds its whole stored form (or an error)."""
        self.write(data)
        if self.error is None:
            self._write(self._renderer.finish())

    def check(self) -> None:
        """Raise the error that stopped the spool, if one did (a full disk: StorageFull)."""
        if self.error is not None:
            raise self.error

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes of the stored form from `offset` (XMAILLAB-ONCE compares a chunk at a time)."""
        self.check()
        try:
            return os.pread(self.fd, size, offset)
        except OSError as exc:
            raise StorageError(f"reading the spooled message: {exc}") from exc

    def close(self) -> None:
        if self.fd != -1:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        self.error = (StorageFull if full else StorageError)(f"spooling the message: {exc}")
        self.close()  # what was written goes at once: a full disk gets its space back


class LabEnvelope(Envelope):
    """aiosmtpd's envelope, with the spool that holds the message when it was too large to hold."""

    def __init__(self) -> None:
        super().__init__()
        self.spool: Spool | None = None


def _open_unnamed(folder: Path) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(folder, flags | os.O_TMPFILE, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    # A file system without O_TMPFILE: a dot-named file, which readers skip, unlinked at once.
    fd, name = tempfile.mkstemp(prefix=".maillab-spool-", dir=folder)
    os.unlink(name)
    return fd
