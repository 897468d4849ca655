"""Reading DATA in bulk: finding the end, checking limits and undoing dot-stuffing, a chunk at a time.

aiosmtpd reads DATA a line at a time, with Python work for every line; for a 100 KiB
message that is over a thousand awaits. `DataScanner` takes whatever has arrived, looks for
the end of data with C-speed searches, and hands back the message and the bytes that
followed it (pipelined commands). It is pure: the protocol feeds it bytes.

Strict (the default): only CRLF "." CRLF ends the data; a bare LF is content, never a line
end, so the smuggling payloads of CVE-2024-27305 (LF "." LF, LF "." CRLF) stay inside the
message. Lenient (MAILLAB_LENIENT_LINE_ENDINGS, unsafe): a bare LF also ends a line, for
course-style clients that send LF and end with "." LF.

Past `spool_threshold` bytes it stops holding the message: `take` hands out what has come,
dot-unstuffed, all but the few bytes that the end of data or a stuffed dot may straddle,
and the caller spools them (spool.py). The bytes handed out and the final `message`,
joined, are what the scanner would have returned whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_STRICT_END = re.compile(rb"\r\n\.\r\n")
_LENIENT_END = re.compile(rb"\r?\n\.\r?\n")
_STRICT_STUFFED = re.compile(rb"\r\n\.")
_LENIENT_STUFFED = re.compile(rb"\n\.")


class Problem(Enum):
    TOO_BIG = "552 5.3.4 Message too big for this server"
    LINE_TOO_LONG = "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"


@dataclass(frozen=True)
class Finished:
    message: bytearray | None  # None when a limit was passed (the data was read and dropped)
    problem: Problem | None
    rest: bytes  # what came after the end of data: pipelined commands


class DataScanner:
    def __init__(
        self, *, max_size: int, max_line_length: int, lenient: bool = False, spool_threshold: int | None = None
    ) -> None:
        self._max_size = max_size
        self._end = _LENIENT_END if lenient else _STRICT_END
        self._stuffed = _LENIENT_STUFFED if lenient else _STRICT_STUFFED
        self._stuffed_length = 2 if lenient else 3
        # A line of max_line_length bytes, CRLF included, has that many bytes before its LF.
        self._max_line_length = max_line_length
        self._line_length = 0  # of the line not yet ended
        self._line_too_long = False
        # The CRLF that ended the DATA command line starts the first line of data: with it in
        # front, every line, the first too, and the end of data look the same.
        self._buffer = bytearray(b"\r\n")
        self._skip = 2  # of the CRLF put in front, the bytes not handed out yet
        self._scanned = 0
        self._dropped = False  # past the size limit: keep only enough to find the end
        # Past spool_threshold bytes, the message is handed out as it comes (`take`) instead of
        # held, all but the few bytes that the end of data or a stuffed dot may straddle.
        self._spool_threshold = spool_threshold
        self.spooling = False
        self._released = 0  # bytes of the buffer (the CRLF in front included) handed out
        self._taken: list[bytes] = []

    def _find_end(self) -> tuple[int, int] | None:
        """Where the message ends (its last line end included) and where the rest begins."""
        if self._end is _STRICT_END:  # a plain search is much faster than the pattern's
            start = self._buffer.find(b"\r\n.\r\n", self._scanned)
            return None if start == -1 else (start + 2, start + 5)
        found = self._end.search(self._buffer, self._scanned)
        return None if found is None else (found.start() + found[0].index(b"\n") + 1, found.end())

    def feed(self, chunk: bytes) -> Finished | None:
        """Take the next bytes; return the result once the end of data has arrived."""
        chunk_start = len(self._buffer)
        self._buffer += chunk
        found = self._find_end()
        if not self._dropped:
            self._measure_lines(chunk[: max(0, found[0] - chunk_start)] if found else chunk)
        if found is None:
            # The end may straddle chunks: search again from just before this chunk's end.
            self._scanned = max(0, len(self._buffer) - 4)
            if self._released + len(self._buffer) - 2 > self._max_size + 5:  # + 5: room for the end of data
                self._dropped = True
                del self._buffer[: self._scanned]
                self._scanned = 0
            elif self.spooling or (self._spool_threshold is not None and len(self._buffer) > self._spool_threshold):
                self.spooling = True
                self._release(self._scanned)
            return None
        rest = bytes(self._buffer[found[1] :])
        if self._dropped or self._released + found[0] - 2 > self._max_size:  # the 2: the CRLF put in front
            return Finished(message=None, problem=Problem.TOO_BIG, rest=rest)
        # Keep the line end before the end of data: it ends the message's last line.
        del self._buffer[found[0] :]
        buffer, self._buffer = self._buffer, bytearray()
        if self._line_too_long:
            return Finished(message=None, problem=Problem.LINE_TOO_LONG, rest=rest)
        if self._stuffed.search(buffer):  # rare: only lines that begin with a dot
            buffer = bytearray(self._stuffed.sub(lambda match: match[0][:-1], buffer))
        del buffer[: self._skip]  # the CRLF put in front; deleting from the front of a bytearray is cheap
        return Finished(message=buffer, problem=None, rest=rest)  # while spooling: what `take` has not given

    def take(self) -> bytes:
        """The message's bytes handed out since the last call, dot-unstuffed (only while spooling)."""
        taken = b"".join(self._taken)
        self._taken.clear()
        return taken

    def _release(self, end: int) -> None:
        """Hand out the buffer's bytes before `end`, dot-unstuffed.

        The end of data cannot start before `end` (it was searched for), and a stuffed dot's
        line start that straddles `end` stays in the buffer whole, so every one is undone in
        exactly one part: the parts joined are what the whole would have given.
        """
        straddling = self._stuffed.search(
            self._buffer, max(0, end - self._stuffed_length + 1), end + self._stuffed_length - 1
        )
        if straddling is not None and straddling.start() < end:
            end = straddling.start()
        part = bytes(memoryview(self._buffer)[:end])
        del self._buffer[:end]
        self._scanned -= end
        self._released += end
        if self._line_too_long:
            return  # the message will be refused: nothing of it is worth keeping
        if self._stuffed.search(part):
            part = self._stuffed.sub(lambda match: match[0][:-1], part)
        skip = min(self._skip, len(part))
        self._skip -= skip
        self._taken.append(part[skip:] if skip else part)

    def _measure_lines(self, data: bytes) -> None:
        """Keep track of the longest line, a chunk at a time (a split of one chunk runs in C)."""
        lines = data.split(b"\n")
        if len(lines) == 1:
            self._line_length += len(data)
        else:
            inner = max(map(len, lines[1:-1]), default=-1) + 1  # map and len: no Python work per line
            longest = max(self._line_length + len(lines[0]) + 1, inner)
            self._line_length = len(lines[-1])
            self._line_too_long |= longest > self._max_line_length
        self._line_too_long |= self._line_length >= self._max_line_length
