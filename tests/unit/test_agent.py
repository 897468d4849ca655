"""The agent: reproducible messages, refused injections, batches against a real server, the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import time
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from typer.testing import CliRunner

from maillab_agent.__main__ import EXIT_CONNECT, EXIT_RECIPIENTS_REJECTED, app
from maillab_agent.batch import MAX_PAUSE, _Jobs, send_batch, write_manifest
from maillab_agent.message import UnsafeInput, batch_messages, build_message, parse_size
from maillab_agent.testdata import ATTACHMENT_KINDS
from maillab_common.forward import Record, parse_records
from maillab_common.manifest import read as read_manifest
from maillab_inspector.model import attachment_payloads
from maillab_server.handler import advertise_extensions
from tests.unit.conftest import StartServer, free_port


def without_date(data: bytes) -> bytes:
    return re.sub(rb"(?m)^Date: .*\r\n", b"", data)


def test_the_same_seed_gives_the_same_messages() -> None:
    first = batch_messages(seed=7, count=5, attachments=3)
    second = batch_messages(seed=7, count=5, attachments=3)
    other = batch_messages(seed=8, count=5, attachments=3)
    assert [without_date(m.data) for m in first] == [without_date(m.data) for m in second]
    assert [m.attachments for m in first] != [m.attachments for m in other]
    assert len({m.message_id for m in first}) == 5


def test_attachments_are_of_every_kind_and_well_formed() -> None:
    [message] = batch_messages(seed=1, count=1, attachments=len(ATTACHMENT_KINDS), attachment_size=(2000, 2000))
    by_type = {a.content_type: a.data for a in message.attachments}
    assert set(by_type) == {kind.content_type for kind in ATTACHMENT_KINDS}
    assert by_type["image/png"].startswith(b"\x89PNG\r\n\x1a\n") and by_type["image/png"].endswith(b"IEND\xaeB`\x82")
    assert by_type["application/pdf"].startswith(b"%PDF-1.4") and by_type["application/pdf"].endswith(b"%%EOF\n")
    assert by_type["text/csv"].startswith(b"id,value,label\n")
    parsed = message_from_bytes(message.data, policy=default)
    decoded = {part.get_content_type(): part.get_payload(decode=True) for part in parsed.iter_attachments()}
    assert decoded == by_type


@pytest.mark.parametrize(
    "field",
    [
        {"mail_from": "a@x.test\r\nRCPT TO:<victim@y.test>"},
        {"to": ["b@x.test\nBcc: victim@y.test"]},
        {"subject": "hi\r\nBcc: victim@y.test"},
        {"headers": [("X-Test", "1\r\nBcc: victim@y.test")]},
        {"headers": [("X-Test\n", "1")]},
    ],
)
def test_line_breaks_in_addresses_and_headers_are_refused(field: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "mail_from": "a@x.test",
        "to": ["b@x.test"],
        "subject": "s",
        "body": "b",
        "message_id": "<1@x.test>",
        **field,
    }
    with pytest.raises(UnsafeInput):
        build_message(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "size"), [("512", 512), ("100KiB", 102400), ("2M", 2097152), ("1 kb", 1024)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "-1"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_the_manifest_matches_what_the_server_stored(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    messages = batch_messages(seed=3, count=12, attachments=2, recipients_per_message=2)
    before = time.time()
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=3, timeout=10)
    after = time.time()
    assert report.accepted == 12 and report.retried == 0
    write_manifest(tmp_path / "manifest.json", seed=3, server="test", messages=messages, report=report)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"version", "seed", "server", "count", "messages"}
    assert (manifest["version"], manifest["seed"], manifest["server"], manifest["count"]) == (1, 3, "test", 12)
    assert set(manifest["messages"][0]) == {
        *("message_id", "mail_from", "rcpt_tos", "subject", "size", "attachments"),
        *("accepted", "refused", "reply", "attempts", "accepted_at"),
    }
    assert all(before <= entry["accepted_at"] <= after for entry in manifest["messages"]), "each 250's wall time"
    assert set(manifest["messages"][0]["attachments"][0]) == {"filename", "content_type", "size", "sha256"}
    typed = read_manifest(tmp_path / "manifest.json")
    assert [sent.message_id for sent in typed.messages] == [message.message_id for message in messages]
    assert typed.messages[0].attachments[0].sha256 == messages[0].attachments[0].sha256
    expected = {
        (entry["message_id"], rcpt.rpartition("@")[2]): [(a["filename"], a["sha256"]) for a in entry["attachments"]]
        for entry in manifest["messages"]
        for rcpt in entry["rcpt_tos"]
    }
    found = {}
    for path in server.config.forward_dir.iterdir():
        items, _ = parse_records(path.read_bytes())
        for item in items:
            assert isinstance(item, Record)
            message = message_from_bytes(item.delivery.message, policy=default)
            found[(message["Message-ID"], path.name)] = [
                (name, hashlib.sha256(data).hexdigest()) for name, _, data in attachment_payloads(message)
            ]
    assert found == expected


class Pipelining:
    """Test handlers advertise PIPELINING, so that the agent's pipelined path is the one tested."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return advertise_extensions(responses)


class FlakyHandler(Pipelining):
    """Answers 451 to the first DATA of each message, then accepts it."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.accepted: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if content not in self.seen:
            self.seen.add(content)
            return "451 4.3.0 Try again"
        self.accepted.append(content)
        return "250 OK"


class RefusingHandler(Pipelining):
    def __init__(self) -> None:
        self.attempts = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts += 1
        return "554 5.6.0 No thanks"


def test_4xx_is_retried_until_accepted(start_server: StartServer) -> None:
    handler = FlakyHandler()
    server = start_server(handler)
    messages = batch_messages(seed=5, count=4, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=2, timeout=10)
    assert report.accepted == 4 and report.retried == 4
    assert all(outcome.attempts == 2 for outcome in report.outcomes)
    assert len(handler.accepted) == 4


def test_5xx_is_never_retried(start_server: StartServer) -> None:
    handler = RefusingHandler()
    server = start_server(handler)
    report = send_batch(
        batch_messages(seed=5, count=3, attachments=0),
        host=server.hostname,
        port=server.port,
        concurrency=1,
        timeout=10,
    )
    assert report.rejected == 3 and report.retried == 0
    assert handler.attempts == 3
    assert all(outcome.reply == "data: 554 5.6.0 No thanks" for outcome in report.outcomes)


runner = CliRunner()


def test_send_cli_delivers(start_server: StartServer) -> None:
    server = start_server()
    result = runner.invoke(
        app,
        [
            "send",
            "--from",
            "a@x.test",
            "--to",
            "b@one.test",
            "--subject",
            "cli",
            "--server",
            f"{server.hostname}:{server.port}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sent <send-" in result.output
    assert (server.config.forward_dir / "one.test").exists()


def test_send_cli_refuses_injection_with_a_clear_error_and_no_traceback() -> None:
    result = runner.invoke(app, ["send", "--from", "a@x.test", "--to", "b@one.test", "--subject", "a\r\nBcc: c@x"])
    assert result.exit_code == 2
    assert "must not contain a line break" in result.output
    assert "Traceback" not in result.output


def test_send_cli_exit_codes_tell_failures_apart(start_server: StartServer) -> None:
    unreachable = runner.invoke(
        app, ["send", "--from", "a@x.test", "--to", "b@one.test", "--server", f"127.0.0.1:{free_port()}"]
    )
    assert unreachable.exit_code == EXIT_CONNECT, unreachable.output
    server = start_server(SomeRecipientsRefused())
    refused = runner.invoke(
        app, ["send", "--from", "a@x.test", "--to", "bad@one.test", "--server", f"{server.hostname}:{server.port}"]
    )
    assert refused.exit_code == EXIT_RECIPIENTS_REJECTED, refused.output
    bad_server = runner.invoke(app, ["send", "--from", "a@x.test", "--to", "b@x.test", "--server", "host:99999"])
    assert bad_server.exit_code == 2 and "port" in bad_server.output


def test_batch_cli_writes_a_manifest(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    result = runner.invoke(
        app,
        [
            "batch",
            "--count",
            "6",
            "--attachments",
            "2",
            "--seed",
            "11",
            "--manifest",
            str(tmp_path / "m.json"),
            "--server",
            f"{server.hostname}:{server.port}",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["seed"] == 11
    assert [entry["accepted"] for entry in manifest["messages"]] == [True] * 6


class DroppingHandler(Pipelining):
    """Drops the connection instead of answering the third DATA; accepts everything else."""

    def __init__(self) -> None:
        self.datas = 0
        self.accepted: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.datas += 1
        if self.datas == 3:
            assert server.transport is not None
            server.transport.close()
            return "421 4.3.0 gone"  # never reaches the client
        self.accepted.append(envelope.original_content or b"")
        return "250 OK"


def test_a_dropped_connection_loses_nothing(start_server: StartServer) -> None:
    handler = DroppingHandler()
    server = start_server(handler)
    messages = batch_messages(seed=8, count=8, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=1, timeout=10)
    assert report.accepted == 8
    assert sorted(handler.accepted) == sorted(m.data for m in messages)


def test_rate_spaces_the_messages(start_server: StartServer) -> None:
    server = start_server()
    messages = batch_messages(seed=9, count=6, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=3, timeout=10, rate=10.0)
    assert report.accepted == 6
    assert report.elapsed >= 0.5  # six starts, a tenth of a second apart: a floor, not a speed


class SomeRecipientsRefused:
    """Refuses recipients whose address starts with 'bad'; no PIPELINING unless mixed in."""

    def __init__(self) -> None:
        self.delivered: list[list[str]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.delivered.append(list(envelope.rcpt_tos))
        return "250 OK"


class SomeRecipientsRefusedPipelining(Pipelining, SomeRecipientsRefused):
    pass


@pytest.mark.parametrize("handler_class", [SomeRecipientsRefused, SomeRecipientsRefusedPipelining])
def test_a_partly_refused_message_goes_to_the_others_and_says_so(
    start_server: StartServer, tmp_path: Path, handler_class: type[SomeRecipientsRefused]
) -> None:
    handler = handler_class()
    server = start_server(handler)
    message = build_message(
        mail_from="a@x.test",
        to=["bad@one.test", "good@two.test"],
        subject="partly",
        body="b",
        message_id="<partly@x.test>",
    )
    report = send_batch([message], host=server.hostname, port=server.port, concurrency=1, timeout=10)
    [outcome] = report.outcomes
    assert outcome.accepted and outcome.refused == ("bad@one.test",) and outcome.attempts == 1
    assert report.partly_refused == 1 and report.rejected == 0
    assert handler.delivered == [["good@two.test"]]
    write_manifest(tmp_path / "m.json", seed=0, server="test", messages=[message], report=report)
    [entry] = json.loads((tmp_path / "m.json").read_text())["messages"]
    assert entry["accepted"] is True and entry["refused"] == ["bad@one.test"]


class BusyHandler(Pipelining):
    """Answers 451 to every DATA: a server whose trouble does not pass."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "451 4.3.0 Busy"


def test_a_4xx_that_never_passes_is_given_up_after_retry_for(start_server: StartServer) -> None:
    server = start_server(BusyHandler())
    messages = batch_messages(seed=5, count=3, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=2, timeout=10, retry_for=1.0)
    assert report.rejected == 3
    assert all(outcome.attempts > 1 and outcome.reply == "data: 451 4.3.0 Busy" for outcome in report.outcomes)
    assert all(outcome.accepted_at == 0.0 for outcome in report.outcomes), "never accepted: no 250 time"


def test_connections_over_the_servers_limit_are_retried_not_fatal(start_server: StartServer) -> None:
    """More connections than the server allows: the extra ones get a 421 greeting and try again."""
    server = start_server(max_connections=1)
    messages = batch_messages(seed=6, count=12, attachments=0)
    report = send_batch(messages, host=server.hostname, port=server.port, concurrency=3, timeout=10)
    assert report.accepted == 12
    assert report.retried > 0, "some connection met the limit"


def test_the_pause_between_retries_stays_bounded_however_many_there_were() -> None:
    jobs = _Jobs(count=1, rate=None)
    job = jobs.take()
    assert job is not None
    job.attempt = 5000  # about three hours of a server that stays down
    jobs.retry(job)
    assert jobs.wait() == pytest.approx(MAX_PAUSE, abs=0.1)
