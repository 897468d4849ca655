"""Spooling DATA to disk: the same stored bytes as the in-memory path, bounded memory, nothing left behind."""

from __future__ import annotations

import errno
import itertools
import os
import random
import re
import smtplib
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maillab_common.esmtp import ONCE
from maillab_common.forward import (
    RECORD_END,
    BodyRenderer,
    Record,
    parse_records,
    render_body,
    render_trace,
    to_mbox_line_endings,
)
from maillab_common.settings import ConfigError
from maillab_server.config import ServerConfig
from maillab_server.data import DataScanner
from maillab_server.handler import ForwardHandler
from maillab_server.spool import Spool
from maillab_server.store import ForwardStore, Part
from tests.helpers import BASE
from tests.unit.conftest import ServerController, StartServer, free_port
from tests.unit.test_store import file_size_limit

# Pieces that meet at chunk edges in every way that matters: CR before LF, "From " lines
# (escaped or not), stuffed dots, the end of data, bare CR and LF.
PIECES = [b"\r", b"\n", b"\r\n", b".", b"..", b">", b"F", b"From", b" ", b"From ", b">From ", b"x", b"\r\n.", b"\r\n."]
messages = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)
cuts = st.lists(st.integers(0, 400), max_size=10)


def reference_body(message: bytes) -> bytes:
    """The stored form of a whole message, as docs/forward-format.md says it, kept apart from
    the one the server uses (`BodyRenderer`) as its oracle: LF line endings, then mboxrd."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", to_mbox_line_endings(message))


def pieces(data: bytes, at: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(cut for cut in set(at) if cut < len(data)), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def stored_in_memory(data: bytes, *, lenient: bool) -> bytes | None:
    """What the in-memory path stores for DATA bytes `data` (end of data included), or None if refused."""
    finished = DataScanner(max_size=100_000, max_line_length=1000, lenient=lenient).feed(data)
    assert finished is not None
    return None if finished.message is None else render_body(to_mbox_line_endings(bytes(finished.message)))


def stored_spooled(chunks: list[bytes], *, threshold: int, lenient: bool) -> bytes | None:
    """The same through the spool path: scanner hand-outs rendered a chunk at a time."""
    scanner = DataScanner(max_size=100_000, max_line_length=1000, lenient=lenient, spool_threshold=threshold)
    renderer = BodyRenderer()
    out = []
    for chunk in chunks:
        finished = scanner.feed(chunk)
        out.append(renderer.feed(scanner.take()))
        if finished is not None:
            if finished.message is None:
                return None
            out += [renderer.feed(bytes(finished.message)), renderer.finish()]
            assert renderer.length == len(b"".join(out))
            return b"".join(out)
    raise AssertionError("the end of data was never found")


@given(messages, cuts)
@settings(max_examples=2000, deadline=None)
def test_the_body_renderer_gives_the_stored_form_however_cut(message: bytes, at: list[int]) -> None:
    renderer = BodyRenderer()
    out = b"".join(renderer.feed(chunk) for chunk in pieces(message, at)) + renderer.finish()
    assert out == reference_body(message)
    assert render_body(message) == out, "whole or in chunks, one rendering"
    assert renderer.length == len(out)


@given(messages, cuts, st.integers(0, 40), st.booleans())
@settings(max_examples=2000, deadline=None)
def test_spooled_and_held_messages_are_stored_alike(
    message: bytes, at: list[int], threshold: int, lenient: bool
) -> None:
    data = message + b"\r\n.\r\n"
    expected = stored_in_memory(data, lenient=lenient)
    assert stored_spooled(pieces(data, at), threshold=threshold, lenient=lenient) == expected


def test_a_spool_has_no_name_in_the_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(b"From x\r\n" * 1000)
    spool.finish(b"end")
    try:
        assert list(tmp_path.iterdir()) == []
        assert spool.read_at(0, spool.length + 1) == render_body(b"From x\r\n" * 1000 + b"end")
    finally:
        spool.close()


def test_without_o_tmpfile_the_spool_is_unlinked_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_tmpfile(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "O_TMPFILE not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_tmpfile)
    spool = Spool(tmp_path)
    try:
        spool.finish(b"body\r\n")
        assert spool.error is None
        assert list(tmp_path.iterdir()) == []
        assert spool.read_at(0, 100) == b"body\n"
    finally:
        spool.close()


class SpoolRecordingHandler(ForwardHandler):
    """The real handler, keeping every spool it opens (to check it was used, and closed)."""

    def __init__(self, store: ForwardStore, config: ServerConfig, *, full: bool = False) -> None:
        super().__init__(store, config)
        self.spools: list[Spool] = []
        self._full = full

    def open_spool(self) -> Spool:
        spool = super().open_spool()
        if self._full:  # a real ENOSPC from the kernel on the first write
            os.close(spool.fd)
            spool.fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        self.spools.append(spool)
        return spool


def start(start_server: StartServer, tmp_path: Path, *, full: bool = False, **settings: object) -> ServerController:
    forward = tmp_path / "forward"
    forward.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(forward_dir=forward, **settings)  # type: ignore[arg-type]
    handler = SpoolRecordingHandler(ForwardStore(forward), config, full=full)
    return start_server(handler, forward_dir=forward, **settings)


def open_data(server: ServerController | int, recipients: Iterable[str] = ("b@one.test",)) -> socket.socket:
    """A raw client that is past DATA's 354: it sends the message in pieces, holding none of it whole."""
    address = ("127.0.0.1", server) if isinstance(server, int) else (server.hostname, server.port)
    connection = socket.create_connection(address, timeout=30)
    reader = connection.makefile("rb")
    commands = [b"EHLO client.test", b"MAIL FROM:<a@sender.test>", *(f"RCPT TO:<{r}>".encode() for r in recipients)]
    assert reader.readline().startswith(b"220")
    for command in [*commands, b"DATA"]:
        connection.sendall(command + b"\r\n")
        while (line := reader.readline())[3:4] == b"-":
            pass
        assert line[:1] in (b"2", b"3"), line
    return connection


def finish_data(connection: socket.socket) -> bytes:
    connection.sendall(b".\r\n")
    reply = connection.makefile("rb").readline()
    connection.close()
    return reply


LINE = b"From line at the start of a line, then a long line of x" + b"x" * 900 + b"\r\n"
CHUNK = LINE * 1024  # about 0.9 MiB, the same bytes object sent again and again


def records(forward: Path, domain: str) -> list[Record]:
    items, leftover = parse_records((forward / domain).read_bytes())
    assert leftover == b""
    return [item for item in items if isinstance(item, Record)]


def test_a_large_message_is_spooled_and_never_held_whole(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, spool_threshold=64 * 1024)
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    count = 16  # about 15 MiB
    connection = open_data(server, ["b@one.test", "c@two.test"])
    tracemalloc.start()
    try:
        for _ in range(count):
            connection.sendall(CHUNK)
        reply = finish_data(connection)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.startswith(b"250 ")
    # Held whole, the message would be in memory two or three times: 30-45 MiB.
    assert peak < 4 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    [spool] = handler.spools
    assert spool.fd == -1  # closed: an unnamed file is gone with its last descriptor
    forward = server.config.forward_dir
    assert sorted(path.name for path in forward.iterdir()) == ["one.test", "two.test"]
    for domain in ("one.test", "two.test"):
        [record] = records(forward, domain)
        assert record.delivery.message == (LINE * 1024 * count).replace(b"\r\n", b"\n")


def test_a_client_gone_in_the_middle_of_data_leaves_nothing(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, spool_threshold=64 * 1024)
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    connection = open_data(server)
    connection.sendall(CHUNK * 2)
    deadline = time.monotonic() + 10
    while not handler.spools and time.monotonic() < deadline:
        time.sleep(0.01)
    connection.close()
    while handler.spools[0].fd != -1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handler.spools[0].fd == -1
    assert list(server.config.forward_dir.iterdir()) == []
    with smtplib.SMTP(server.hostname, server.port, timeout=10) as client:  # and the server goes on
        assert client.sendmail("a@sender.test", ["b@one.test"], b"Subject: after\r\n\r\nok\r\n") == {}


def test_a_store_failure_of_a_spooled_message_leaves_every_file_as_it_was(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start(start_server, tmp_path, spool_threshold=64 * 1024)
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    forward = server.config.forward_dir
    with smtplib.SMTP(server.hostname, server.port, timeout=30) as client:
        client.sendmail("a@sender.test", ["b@one.test"], b"Subject: small\r\n\r\nsmall\r\n")
        client.sendmail("a@sender.test", ["b@two.test"], CHUNK * 3)
    before = {name: (forward / name).read_bytes() for name in ("one.test", "two.test")}
    # The spool (about 2.7 MiB) and one.test's record fit under the limit; two.test's record does not.
    with file_size_limit(len(before["two.test"]) + len(CHUNK)):
        connection = open_data(server, ["b@one.test", "b@two.test"])
        connection.sendall(CHUNK * 3)
        reply = finish_data(connection)
    assert reply.startswith(b"451 ")
    assert {name: (forward / name).read_bytes() for name in before} == before
    assert [spool.fd for spool in handler.spools] == [-1, -1]


def test_a_full_disk_while_spooling_answers_452_and_stores_nothing(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, full=True, spool_threshold=64 * 1024)
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    connection = open_data(server)
    connection.sendall(CHUNK * 2)
    reply = finish_data(connection)
    assert reply.startswith(b"452 4.3.1 ")
    assert list(server.config.forward_dir.iterdir()) == []
    assert handler.spools[0].fd == -1


@pytest.mark.parametrize("problem", ["too big", "line too long"])
def test_a_refused_spooled_message_closes_its_spool(start_server: StartServer, tmp_path: Path, problem: str) -> None:
    server = start(start_server, tmp_path, spool_threshold=64 * 1024, max_message_size=2 * len(CHUNK))
    handler = server.handler
    assert isinstance(handler, SpoolRecordingHandler)
    connection = open_data(server)
    connection.sendall(CHUNK * 3 if problem == "too big" else CHUNK + b"y" * 2000 + b"\r\n")
    reply = finish_data(connection)
    assert reply.startswith(b"552 " if problem == "too big" else b"500 ")
    assert handler.spools[0].fd == -1
    assert list(server.config.forward_dir.iterdir()) == []


def test_once_finds_an_earlier_copy_of_a_spooled_message(start_server: StartServer, tmp_path: Path) -> None:
    server = start(start_server, tmp_path, spool_threshold=64 * 1024)
    forward = server.config.forward_dir
    message = b"Subject: once, spooled\r\n\r\n" + CHUNK * 2
    with smtplib.SMTP(server.hostname, server.port, timeout=30) as client:
        for _ in range(2):
            client.ehlo()
            client.mail("a@sender.test", [ONCE])
            client.rcpt("b@one.test")
            code, reply = client.data(message)
            assert code == 250
    assert reply == b"2.0.0 OK: already stored by an earlier attempt"
    assert len(records(forward, "one.test")) == 1
    # The same envelope and length, one byte different at the very end: another message.
    with smtplib.SMTP(server.hostname, server.port, timeout=30) as client:
        client.ehlo()
        client.mail("a@sender.test", [ONCE])
        client.rcpt("b@one.test")
        code, reply = client.data(message[:-3] + b"y\r\n")
        assert (code, reply[:16]) == (250, b"2.0.0 OK: stored")
    assert len(records(forward, "one.test")) == 2


@pytest.mark.parametrize("seed", range(3))
def test_over_a_socket_spooled_and_held_messages_are_stored_alike(
    start_server: StartServer, tmp_path: Path, seed: int
) -> None:
    """The whole server both ways, one hostile message cut into random writes: the same record."""
    rng = random.Random(seed)
    body = b"".join(rng.choice(PIECES) for _ in range(200_000))
    while b"\r\n.\r\n" in body:
        body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    body += b"\r\nend\r\n"
    stored = []
    for threshold in (0, 10**9):
        server = start(start_server, tmp_path / str(threshold), spool_threshold=threshold)
        connection = open_data(server)
        position = 0
        while position < len(body):
            step = rng.randrange(1, 64 * 1024)
            connection.sendall(body[position : position + step])
            position += step
        assert finish_data(connection).startswith(b"250 ")
        handler = server.handler
        assert isinstance(handler, SpoolRecordingHandler)
        assert len(handler.spools) == (1 if threshold == 0 else 0)
        [record] = records(server.config.forward_dir, "one.test")
        stored.append((record.length, record.delivery.message))  # the traces differ only in same-length fields
    assert stored[0] == stored[1]


def test_group_commit_copies_spools_and_retries_them_one_by_one(tmp_path: Path) -> None:
    """A group with a failing delivery is undone and written again one by one: each spool is read twice."""
    store = ForwardStore(tmp_path)
    (tmp_path / "broken.test").mkdir()  # a folder where a file should be: that delivery fails
    spools = []
    futures = []
    for number in range(20):
        message = f"Subject: {number}\n\nFrom me\n".encode() * 5000
        spool = Spool(tmp_path)
        spool.finish(message)
        spools.append(spool)
        delivery = replace(BASE, transaction_id=f"{number:04X}", message=message)
        record: list[Part] = [render_trace(delivery, spool.length), spool, RECORD_END]
        domains = ["a.test", "broken.test"] if number == 7 else ["a.test"]
        futures.append(store.submit(dict.fromkeys(domains, record)))
    errors = [future.exception(timeout=30) for future in futures]
    for spool in spools:
        spool.close()
    assert [number for number, error in enumerate(errors) if error is not None] == [7]
    stored = records(tmp_path, "a.test")
    assert [record.delivery.transaction_id for record in stored] == [f"{n:04X}" for n in range(20) if n != 7]
    assert all(record.delivery.message.count(b"From me\n") == 5000 for record in stored)


def test_the_threshold_is_a_setting(tmp_path: Path) -> None:
    assert ServerConfig().spool_threshold == 1024 * 1024
    assert ServerConfig.from_env({"MAILLAB_SPOOL_THRESHOLD": "0"}).spool_threshold == 0
    with pytest.raises(ConfigError, match="MAILLAB_SPOOL_THRESHOLD"):
        ServerConfig.from_env({"MAILLAB_SPOOL_THRESHOLD": "-1"})


def test_a_server_killed_while_spooling_leaves_nothing_behind(tmp_path: Path) -> None:
    forward = tmp_path / "forward"
    forward.mkdir()
    port = free_port()
    command = ["serve", "--listen-host", "127.0.0.1", "--port", str(port), "--forward-dir", str(forward)]
    server = subprocess.Popen(
        [sys.executable, "-m", "maillab_server", *command, "--spool-threshold", "65536"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        connection = open_data(port)
        connection.sendall(CHUNK * 3)

        def spools() -> list[str]:
            # An O_TMPFILE file shows in /proc as "<folder>/#<inode> (deleted)": in the folder, nameless.
            targets = [os.readlink(fd) for fd in Path(f"/proc/{server.pid}/fd").iterdir()]
            return [target for target in targets if target.startswith(f"{forward}/#")]

        deadline = time.monotonic() + 10
        while not spools() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spools(), "the message never reached a spool file before its end of data"
        server.kill()
        server.wait(timeout=10)
        connection.close()
        assert list(forward.iterdir()) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
