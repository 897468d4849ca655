"""The handler owns a spool from the end of DATA: whatever fails before the store has it, the spool is closed."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from maillab_server import handler as handler_module
from tests.unit.conftest import StartServer
from tests.unit.test_spool import SpoolRecordingHandler, start


def test_a_failure_before_the_store_has_the_spool_closes_it(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_trace(*args: object) -> bytes:
        raise RuntimeError("a bug between DATA and the store")

    monkeypatch.setattr(handler_module, "render_trace", broken_trace)
    server = start(start_server, tmp_path, spool_threshold=64 * 1024)
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail("a@sender.test", ["b@one.test"], b"Subject: x\r\n\r\n" + b"line\r\n" * 40_000)
    assert len(handler.spools) == 1 and handler.spools[0].fd == -1, "the spool was left open"
