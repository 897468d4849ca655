"""Lab-wide drills: the server killed under a batch, slow clients, the connection limit, exposure."""

from __future__ import annotations

import json
import os
import re
import select
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

import docker
import pytest
from testcontainers.compose import DockerCompose
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from maillab_common import manifest
from maillab_common.forward import Record, parse_records
from tests.integration.conftest import (
    copy_forward,
    follow_logs,
    read_forward,
    restarted_after,
    retry_until,
    run_command,
)

pytestmark = pytest.mark.integration

BATCH = 1000
KILLS = 3
STORED_BEFORE_A_KILL = 100  # messages each run of the server stores before it is killed
IDLE_TIMEOUT = 5
MAX_CONNECTIONS = 6


def compose_command(*arguments: str) -> subprocess.CompletedProcess[str]:
    return run_command("docker", "compose", *arguments)


@pytest.fixture
def compose_settings() -> dict[str, str]:
    """The drills read the server's log: one JSON object a line."""
    return {"MAILLAB_LOG_FORMAT": "json"}


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    yield engine
    engine.close()


def test_kill_9_of_the_server_three_times_during_a_batch_loses_and_doubles_nothing(
    compose: DockerCompose, client: docker.DockerClient, tmp_path: Path
) -> None:
    server = client.containers.get(compose.get_container("server").ID)
    name = f"{os.environ['COMPOSE_PROJECT_NAME']}-batch"
    command = ["run", "--detach", "--name", name, "agent", "batch", "--count", str(BATCH), "--seed", "77"]
    # At 50 messages a second, the batch (20 s) outlasts three kills and restarts.
    command += ["--rate", "50/s", "--concurrency", "4", "--attachments", "1", "--attachment-size", "1KiB-8KiB"]
    started = compose_command(*command)
    assert started.returncode == 0, started.stdout + started.stderr
    agent = client.containers.get(name)
    try:
        # The agent checks that the server answers before it starts: the kills come after.
        sending = f"sending {BATCH} messages"
        follow_logs(agent, lambda lines: any(sending in line for line in lines), 120, "the agent to start sending")
        for kills in range(1, KILLS + 1):
            follow_logs(server, partial(taking_mail, kills), 60, f"the server's run {kills} to store messages")
            agent.reload()
            assert agent.status == "running", f"the batch ended before kill {kills}: {agent.logs().decode()}"
            # compose.yaml's restart policy brings it back, not this test.
            restarted_after(partial(kill_9, server), server, 60)
        code = agent.wait(timeout=600)["StatusCode"]
        output = agent.logs().decode(errors="replace")
    finally:
        agent.remove(force=True)
    assert code == 0, f"exit {code}: {output}"
    assert restarts(server) == KILLS, "each kill was one crash and one restart"

    # What the agent did, from its manifest (JSON), not from its table.
    read = compose_command("run", "--rm", "--no-deps", "-T", "--entrypoint", "cat", "agent", "/manifests/latest.json")
    assert read.returncode == 0, read.stdout + read.stderr
    sent = manifest.loads(read.stdout).messages
    assert len(sent) == BATCH and all(message.accepted for message in sent), output
    retries = sum(message.attempts - 1 for message in sent)
    retried = sum(message.attempts > 1 for message in sent)
    assert retried > 0, "the kills cut some messages off"

    verify = compose_command("run", "--rm", "--no-deps", "-T", "inspector", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    counts = json.loads(verify.stdout)
    assert counts["ok"] and counts["findings"] == [], counts
    assert (counts["expected"], counts["delivered"], counts["unsent"], counts["damaged"]) == (BATCH, BATCH, 0, 0)

    # Every forward file ends on a whole record: a torn tail was cut off when the server came back.
    files = {domain: path.read_bytes() for domain, path in copy_forward(server, tmp_path).items()}
    stored: list[tuple[str, str]] = []  # (domain, transaction id) of every record
    boundaries: dict[str, set[int]] = {}  # where a record starts, or the file ends
    for domain, content in files.items():
        items, leftover = parse_records(content)
        assert leftover == b"" and all(isinstance(item, Record) for item in items), domain
        records = [item for item in items if isinstance(item, Record)]
        stored += [(domain, record.delivery.transaction_id) for record in records]
        boundaries[domain] = {record.offset for record in records} | {len(content)}
    assert len(set(stored)) == len(stored) == BATCH, "one record per message (one recipient each)"

    runs = server_runs(server.logs().decode(errors="replace").splitlines())
    assert len(runs) == KILLS + 1
    # Repairs, logged as each run starts: none on a fresh volume, each file at most once a
    # start, each cut exactly at a record boundary (what follows the cut is whole records),
    # and each torn record was an attempt that got no reply, so it was sent again.
    assert runs[0].repaired == [], "a fresh volume has nothing to repair"
    for run in runs[1:]:
        assert len({domain for domain, _ in run.repaired}) == len(run.repaired), run.repaired
        for domain, offset in run.repaired:
            assert offset in boundaries[domain], f"the repair of {domain} cut at {offset}, inside a record"
    repaired = sum(len(run.repaired) for run in runs)
    assert repaired <= retries, (repaired, retries)
    # Deliveries: every store the server logged is on disk. A record it never logged was
    # stored by an attempt killed before it could log and answer; the agent sent that message
    # again with XMAILLAB-ONCE, and the server found it ("already-stored") instead of storing
    # it twice. Only a retry can be found so.
    logged = {(domain, txid) for run in runs for txid, domains, _ in run.deliveries for domain in domains}
    found = [txid for run in runs for txid, _, already in run.deliveries if already]
    assert logged <= set(stored), "a store the server logged is missing"
    unlogged = set(stored) - logged
    assert len(found) >= len(unlogged), (sorted(unlogged), found)
    assert len(found) <= retries, (found, retries)
    print(
        f"kills {KILLS}, retried {retried} ({retries} retries), repaired tails {repaired}, "
        f"stored but not logged {len(unlogged)}, found already stored {len(found)}"
    )


@dataclass
class Run:
    """One run of the server, from its log: the tails it repaired as it started, then what it stored."""

    repaired: list[tuple[str, int]] = field(default_factory=list)  # (domain, offset it cut at)
    # (transaction id, domains it stored in, domains it found already stored)
    deliveries: list[tuple[str, list[str], list[str]]] = field(default_factory=list)


REPAIRED = re.compile(r"repaired /forward/(?P<domain>\S+): cut a torn record of \d+ bytes at offset (?P<offset>\d+)")
DELIVERY = re.compile(
    r"id=(?P<id>\w+) from=<.*> rcpts=\d+ bytes=\d+ domains=(?P<domains>\S*)"
    r"(?: already-stored=(?P<already>\S+))? ms=[\d.]+"
)


def starts_a_run(message: str) -> bool:
    """The main listener's line, once a run; the classroom listener's and the health socket's come after it."""
    return message.startswith("listening on") and ", storing in " in message


def server_runs(lines: list[str]) -> list[Run]:
    """The server's JSON log (MAILLAB_LOG_FORMAT=json), split into runs at each "listening on"."""
    runs: list[Run] = []
    repaired: list[tuple[str, int]] = []  # logged before the run's "listening on"
    for line in lines:
        if not line.startswith("{"):
            continue
        message = json.loads(line)["message"]
        if match := REPAIRED.fullmatch(message):
            repaired.append((match["domain"], int(match["offset"])))
        elif starts_a_run(message):
            runs.append(Run(repaired=repaired))
            repaired = []
        elif message.startswith("id=") and " from=<" in message:
            match = DELIVERY.fullmatch(message)
            assert match, f"a delivery line this test cannot read: {message}"
            already = match["already"].split(",") if match["already"] else []
            domains = [domain for domain in match["domains"].split(",") if domain not in already]
            runs[-1].deliveries.append((match["id"], domains, already))
    return runs


def taking_mail(run: int, lines: list[str]) -> bool:
    """Whether the server's `run`-th run has stored STORED_BEFORE_A_KILL messages: a cheap count, at every line."""
    started = [
        number
        for number, line in enumerate(lines)
        if '"message": "listening on' in line and ", storing in " in line  # as starts_a_run, unparsed
    ]
    if len(started) != run:
        return False
    stores = sum('"message": "id=' in line and " from=<" in line for line in lines[started[-1] :])
    return stores >= STORED_BEFORE_A_KILL


def kill_9(container: docker.models.containers.Container) -> None:
    """kill -9 of the container's main process, by a helper in the engine's PID namespace.

    Not `docker kill`: the engine counts that as a stop by hand, and a restart policy then
    leaves the container down, which is not what a crash does. Not os.kill from the test
    either: where the engine runs in a VM (Docker Desktop), its PIDs are not this host's.
    """
    container.reload()
    kill = f"import os; os.kill({container.attrs['State']['Pid']}, 9)"
    container.client.containers.run(
        container.image, entrypoint=["python3", "-c", kill], pid_mode="host", user="root", remove=True
    )


def restarts(container: docker.models.containers.Container) -> int:
    container.reload()
    count: int = container.attrs["RestartCount"]
    return count


@pytest.fixture
def strict_server(images: dict[str, str]) -> Iterator[DockerContainer]:
    """The server with a 5 s idle timeout and room for 6 connections, on a loopback port.

    Without its healthcheck: that opens a connection every few seconds, one of the six.
    """
    server = (
        DockerContainer(images["server"])
        .with_exposed_ports(2525)
        .with_env("MAILLAB_IDLE_TIMEOUT", str(IDLE_TIMEOUT))
        .with_env("MAILLAB_MAX_CONNECTIONS", str(MAX_CONNECTIONS))
        .with_tmpfs_mount("/forward", "size=4m,uid=10001,gid=10001,mode=0755")
        .with_kwargs(healthcheck={"test": ["NONE"]})
        .waiting_for(LogMessageWaitStrategy("listening on"))
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def address(server: DockerContainer) -> tuple[str, int]:
    return server.get_container_host_ip(), int(server.get_exposed_port(2525))


@dataclass
class Drip:
    """A client that sends its opening lines at once, then the rest one byte a second."""

    opening: list[bytes]
    slowly: bytes
    sent: int = 0  # bytes of `slowly` sent before the server hung up
    cut_at: float | None = None  # time.monotonic() when it hung up
    answered: threading.Event = field(default_factory=threading.Event)  # set once its opening lines were answered

    def run(self, where: tuple[str, int]) -> None:
        with socket.create_connection(where, timeout=30) as connection:
            reader = connection.makefile("rb")
            assert reply_code(reader) == 220
            for line in self.opening:
                connection.sendall(line)
                assert reply_code(reader) in (250, 354)
            self.answered.set()
            for byte in self.slowly:
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
                # Readable within the second only when the server closes: it answers nothing else.
                readable, _, _ = select.select([connection], [], [], 1.0)
                if readable and connection.recv(1) == b"":
                    break
                self.sent += 1
            else:
                return
            self.cut_at = time.monotonic()


def reply_code(reader: BinaryIO) -> int:
    """The code of the next reply, read to its last line."""
    while (line := reader.readline())[3:4] == b"-":
        pass
    return int(line[:3])


def test_a_client_sending_a_byte_a_second_is_cut_off_and_blocks_nobody(strict_server: DockerContainer) -> None:
    where = address(strict_server)
    in_command = Drip([b"EHLO drip\r\n"], b"MAIL FROM:<slow@drip.test>\r\n" * 3)
    in_data = Drip(
        [b"EHLO drip\r\n", b"MAIL FROM:<slow@drip.test>\r\n", b"RCPT TO:<x@drip.test>\r\n", b"DATA\r\n"],
        b"Subject: slow\r\n" * 10,
    )
    drippers = [threading.Thread(target=drip.run, args=(where,)) for drip in (in_command, in_data)]
    for dripper in drippers:
        dripper.start()
    for drip in (in_command, in_data):  # both hold a session open, well into it, before the fast client comes
        assert drip.answered.wait(timeout=30), drip
    with smtplib.SMTP(*where, timeout=30) as client:
        for number in range(20):
            client.sendmail("fast@sender.test", ["x@fast.test"], f"Subject: fast {number}\r\n\r\nquick\r\n".encode())
    fast_done = time.monotonic()
    for dripper in drippers:
        dripper.join(timeout=60)
    for drip in (in_command, in_data):
        # Cut off by the timeout, a few bytes in, not at the end of what it had to send...
        assert drip.cut_at is not None and 0 < drip.sent < 2 * IDLE_TIMEOUT, drip
        # ...and only after the fast client had sent all it had, while the slow ones hung on.
        assert fast_done < drip.cut_at, (fast_done, drip)
    assert sorted(read_forward(strict_server)) == ["fast.test"], "nothing of the slow message is stored"


def test_past_the_connection_limit_the_server_answers_421(strict_server: DockerContainer) -> None:
    where = address(strict_server)
    held: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(MAX_CONNECTIONS + 1):
            connection = socket.create_connection(where, timeout=10)
            held.append(connection)
            greetings.append(connection.makefile("rb").readline())
        assert [line[:3] for line in greetings] == [b"220"] * MAX_CONNECTIONS + [b"421"], greetings
        assert b"too many connections" in greetings[-1]
        assert held[-1].recv(1) == b"", "the 421 connection is closed"
        held.pop(0).close()

        def place_taken() -> bool:  # the server learns of the close a moment later: only trying tells
            with socket.create_connection(where, timeout=10) as connection:
                return connection.makefile("rb").readline().startswith(b"220")

        retry_until(place_taken, 10, "a freed place to be taken again")
    finally:
        for connection in held:
            connection.close()


def test_the_lab_runs_least_privileged_and_never_connects_out(
    compose: DockerCompose, client: docker.DockerClient
) -> None:
    for service in ("server", "inspector"):
        container = client.containers.get(compose.get_container(service).ID)
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert container.exec_run(["id", "-u"]).output.strip() == b"10001", service
        written = container.exec_run(["touch", "/usr/local/probe"])
        assert written.exit_code != 0 and b"Read-only file system" in written.output, service
    agent = compose_command(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "agent", "-c", "id -u; touch /probe"
    )
    assert agent.stdout.strip() == "10001" and "Read-only file system" in agent.stderr, agent

    # A packet capture in the server's network namespace while it takes mail for real domains.
    server = compose.get_container("server")
    sniffer = client.containers.run(
        "maillab/server:dev",
        entrypoint=["python3", "-c", SNIFFER, "20"],
        network_mode=f"container:{server.ID}",
        cap_add=["NET_RAW"],
        user="root",
        detach=True,
    )
    try:
        follow_logs(sniffer, lambda lines: "capturing" in lines, 30, "the capture to start")
        port = int(os.environ["MAILLAB_SMTP_PORT"])
        for number in range(10):  # a connection each, so that the capture must see ten
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                rcpts = ["someone@gmail.com", "postmaster@example.com", f"user{number}@outlook.com"]
                smtp.sendmail("a@sender.test", rcpts, f"Subject: relay? {number}\r\n\r\nno\r\n".encode())
        sniffer.wait(timeout=60)
        capture = sniffer.logs().decode()
    finally:
        sniffer.remove(force=True)
    summary = capture.strip().splitlines()[-1]
    inbound, other = (int(word) for word in summary.split()[1::2])
    assert inbound >= 10, f"the capture saw the test's own connections: {capture}"
    assert other == 0, f"the server connected out or looked a name up: {capture}"
    files = compose_command("exec", "-T", "server", "ls", "/forward").stdout.split()
    assert sorted(files) == ["example.com", "gmail.com", "outlook.com"], "stored, not relayed"


# Counts TCP SYNs into port 2525 and every other SYN or UDP datagram, on every interface.
SNIFFER = """
import socket, struct, sys, time
capture = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
capture.settimeout(0.5)
print("capturing", flush=True)
inbound = other = 0
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        packet, (interface, protocol, kind, _, _) = capture.recvfrom(65535)
    except TimeoutError:
        continue
    if kind == socket.PACKET_OUTGOING and interface == "lo":
        continue  # loopback shows each packet twice: count it once, as it arrives
    if protocol == 0x0800:
        next_header, start, source, target = packet[9], (packet[0] & 15) * 4, packet[12:16], packet[16:20]
    elif protocol == 0x86DD:
        next_header, start, source, target = packet[6], 40, packet[8:24], packet[24:40]
    else:
        continue
    if next_header == 17:
        other += 1
        print("udp", source.hex(), target.hex(), packet[start + 2 : start + 4].hex(), flush=True)
    elif next_header == 6:
        target_port, flags = struct.unpack("!H", packet[start + 2 : start + 4])[0], packet[start + 13]
        if flags & 0x02 and not flags & 0x10:
            if target_port in (2525, 2526):  # SMTP and the classroom listener (its health check too)
                inbound += 1
            else:
                other += 1
                print("syn", source.hex(), target.hex(), target_port, flush=True)
print("inbound", inbound, "other", other, flush=True)
"""
