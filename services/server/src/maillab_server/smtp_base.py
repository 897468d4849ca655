"""The one door to aiosmtpd: the only module that uses its private names.

protocol.py builds the lab's SMTP server on `SMTPBase` and uses aiosmtpd's public hooks
where they do the job: handler `handle_*` methods, the `authenticator`, `smtp_<COMMAND>`
methods, `push`, `check_helo_needed`/`check_auth_needed`, the `session`, `envelope`,
`event_handler` and `transport` attributes, and asyncio's `connection_made`. For the rest
aiosmtpd 1.4 has no public hook, and the lab uses these private names, each here only:

- `SMTP._create_envelope` (documented as an override point): every transaction's envelope
  is an `envelope_class`, which can carry more than aiosmtpd's (the lab's spool).
- `SMTP._set_post_data_state`: `end_transaction` resets after DATA as aiosmtpd's own DATA
  does, since the lab reads DATA itself.
- `SMTP._getaddr`: the address of MAIL, RCPT and VRFY comes from `parse_address`
  (aiosmtpd's own parser is slow, and super-linear on hostile input).
- `SMTP._getparams`: MAIL and RCPT parameters named in `passed_parameters` get past
  aiosmtpd's check, which refuses every parameter it does not know itself.
- `SMTP._smtp_methods`: the command table that `answer_every_command_with` replaces, so
  that a server shutting down answers whatever comes next.
- `SMTP._reader`, and asyncio.StreamReader's `_limit` and `_buffer`: `bulk_reader` lets DATA
  read the connection in large reads, and `unread` hands the bytes read past the end of
  DATA (pipelined commands) back to aiosmtpd's command loop.
- `SMTP._reset_timeout` and `SMTP._timeout_duration`: `extend_idle_timeout` pushes the idle
  timer out while the lab holds a reply back on purpose (a fault's delay, a failed AUTH's),
  so that the timer does not close the connection in the middle of the wait.

tests/unit/test_smtp_base.py has one test per name that fails, naming it, when an aiosmtpd
(or Python) release changes it; pyproject.toml also pins aiosmtpd below 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope

Command = Callable[[str | None], Awaitable[None]]


class SMTPBase(SMTP):
    """aiosmtpd's SMTP protocol, with what the lab needs of its internals as named methods."""

    envelope_class: ClassVar[type[Envelope]] = Envelope
    passed_parameters: ClassVar[frozenset[str]] = frozenset()

    def parse_address(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL, RCPT or VRFY argument and the text after it; (None, None) if malformed.

        As aiosmtpd: ("", "") for an empty argument. This default is aiosmtpd's own parser.
        """
        return super()._getaddr(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return self.parse_address(arg)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # What is passed stays in the command's mail_options or rcpt_options for the handler.
        parsed: dict[str, str | bool] | None = super()._getparams(
            [param for param in params if param not in self.passed_parameters]
        )
        return parsed

    def _create_envelope(self) -> Envelope:
        return self.envelope_class()

    def end_transaction(self) -> None:
        """Start afresh after DATA with aiosmtpd's own reset (a new, empty envelope, today)."""
        protocol: Any = self  # aiosmtpd's method is not annotated
        protocol._set_post_data_state()

    @contextmanager
    def bulk_reader(self, read_size: int) -> Iterator[asyncio.StreamReader]:
        """The connection's reader, taking up to `read_size` bytes before it pauses the socket.

        aiosmtpd's reader pauses the socket once it holds twice its limit (the longest command
        line, about 1 KiB), which would cut a large DATA into reads of a few KiB each.
        """
        reader: Any = self._reader
        line_limit, reader._limit = reader._limit, read_size
        try:
            yield reader
        finally:
            reader._limit = line_limit

    def unread(self, data: bytes) -> None:
        """Put `data` back in front of what the reader holds: aiosmtpd's command loop reads it next."""
        if data:
            reader: Any = self._reader
            reader._buffer[0:0] = data

    def answer_every_command_with(self, command: Command) -> None:
        """From now on every command aiosmtpd knows is answered by `command` (others still get 500)."""
        self._smtp_methods = dict.fromkeys(self._smtp_methods, command)

    def extend_idle_timeout(self, seconds: float) -> None:
        """Restart the idle timer to run out `seconds` later than a full idle timeout from now.

        For a reply held back on purpose: aiosmtpd's timer runs from the last command read, and
        would otherwise close the connection, silently, in the middle of the wait.
        """
        protocol: Any = self  # aiosmtpd's timer is not annotated
        protocol._reset_timeout(protocol._timeout_duration + seconds)
