"""The lab's own classroom listener against the agent's conformance run: the two sides agree."""

from __future__ import annotations

from maillab_agent.conform import ATTACHMENT, CASES, DOTS, PLAIN, SEVERAL
from maillab_common.forward import Record, parse_records
from tests.helpers import run_cli
from tests.unit.conftest import StartServer


def test_the_classroom_listener_passes_conform_and_stores_each_message_intact(start_server: StartServer) -> None:
    server = start_server(classroom=True)
    where = ("127.0.0.1", str(server.config.classroom_port))
    result = run_cli("maillab_agent", "conform", "--dialect", "classroom", *where)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CASES)} of {len(CASES)} cases passed" in result.stdout

    stored: dict[str, list[bytes]] = {}
    for path in server.config.forward_dir.iterdir():
        items, rest = parse_records(path.read_bytes())
        assert rest == b"" and all(isinstance(item, Record) for item in items), path
        stored[path.name] = [item.delivery.message for item in items if isinstance(item, Record)]
    # What conform could only see as a 250: the dot lines (unstuffed), the attachment's
    # base64 lines, every byte, as sent; one copy per message and recipient domain.
    assert stored["one.test"].count(DOTS) == 1
    assert stored["one.test"].count(ATTACHMENT) == 1
    assert stored["one.test"].count(PLAIN) == 3  # "one recipient", and twice in one session
    assert [stored[domain].count(SEVERAL) for domain in ("one.test", "two.test", "three.test")] == [1, 1, 1]
    assert len(stored["one.test"]) == 6, "nothing stored by a session that was refused"
