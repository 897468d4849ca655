"""Lab-wide drills: the server killed under a batch, slow clients, the connection limit, exposure."""

from __future__ import annotations

import os
import select
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import docker
import pytest
from testcontainers.compose import DockerCompose
from testcontainers.core.container import DockerContainer
from testcontainers.core.wait_strategies import LogMessageWaitStrategy

from tests.integration.conftest import ROOT, wait_until
from tests.integration.test_server import read_forward

pytestmark = pytest.mark.integration

BATCH = 1000
KILLS = 3
IDLE_TIMEOUT = 5
MAX_CONNECTIONS = 6


def compose_command(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    engine = docker.from_env()
    yield engine
    engine.close()


def test_kill_9_of_the_server_three_times_during_a_batch_loses_and_doubles_nothing(
    compose: DockerCompose, client: docker.DockerClient, tmp_path: Path
) -> None:
    server = client.containers.get(compose.get_container("server").ID)
    command = ["docker", "compose", "run", "--rm", "-T", "agent", "batch", "--count", str(BATCH), "--seed", "77"]
    # At 50 messages a second, the batch (20 s) outlasts three kills and restarts.
    command += ["--rate", "50/s", "--concurrency", "4", "--attachments", "1", "--attachment-size", "1KiB-8KiB"]
    log = tmp_path / "agent.log"
    with open(log, "w") as sink:
        agent = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # The agent checks that the server answers before it starts: the kills come after.
        wait_until(lambda: f"sending {BATCH} messages" in log.read_text(), 120, "the agent to start sending")
        for kills in range(1, KILLS + 1):
            time.sleep(2.5)
            assert agent.poll() is None, f"the batch ended before kill {kills}: {log.read_text()}"
            kill_9(server)
            # compose.yaml's restart policy brings it back, not this test.
            wait_until(partial(restarted, server, kills), 60, "the server to be restarted")
        agent.wait(timeout=600)
    finally:
        if agent.poll() is None:
            agent.kill()
    output = log.read_text()
    assert agent.returncode == 0, f"exit {agent.returncode}: {output}"
    assert restarts(server) == KILLS, "each kill was one crash and one restart"
    summary = next(line for line in output.splitlines() if line.startswith("│") and line.split()[1].isdigit())
    sent, accepted, rejected, retried = (int(cell) for cell in summary.strip("│ ").split("│")[:4])
    assert (sent, accepted, rejected) == (BATCH, BATCH, 0), output
    assert retried > 0, "the kills cut some messages off"

    verify = compose_command("run", "--rm", "--no-deps", "-T", "inspector", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert (
        f"verify: expected {BATCH}, delivered {BATCH}, missing 0, corrupted 0, duplicated 0, unsent 0, damaged 0"
        in verify.stdout
    )
    # Every forward file ends on a whole record: a torn tail was cut off when the server came back.
    check = (
        "import os, sys\n"
        "from maillab_common.forward import Record, parse_records\n"
        "for name in sorted(os.listdir('/forward')):\n"
        "    items, rest = parse_records(open(os.path.join('/forward', name), 'rb').read())\n"
        "    bad = [i for i in items if not isinstance(i, Record)]\n"
        "    print(name, len(items), len(rest), len(bad))\n"
        "    sys.exit(1) if rest or bad else None\n"
    )
    files = compose_command("exec", "-T", "server", "python3", "-c", check)
    assert files.returncode == 0, files.stdout + files.stderr
    logs = compose_command("logs", "--no-color", "server").stdout
    print(
        f"kills {KILLS}, retried {retried}, repaired tails {logs.count('repaired /forward')}, "
        f"stored once despite a lost reply {logs.count('already-stored=')}"
    )


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


def restarted(container: docker.models.containers.Container, times: int) -> bool:
    return restarts(container) == times and running(container)


def restarts(container: docker.models.containers.Container) -> int:
    container.reload()
    count: int = container.attrs["RestartCount"]
    return count


def running(container: docker.models.containers.Container) -> bool:
    container.reload()
    return bool(container.attrs["State"]["Running"])


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

    def run(self, where: tuple[str, int]) -> None:
        with socket.create_connection(where, timeout=30) as connection:
            reader = connection.makefile("rb")
            assert reply_code(reader) == 220
            for line in self.opening:
                connection.sendall(line)
                assert reply_code(reader) in (250, 354)
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
    time.sleep(1)
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

        def place_taken() -> bool:  # the server learns of the close a moment later
            with socket.create_connection(where, timeout=10) as connection:
                return connection.makefile("rb").readline().startswith(b"220")

        wait_until(place_taken, 10, "a freed place to be taken again")
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
        wait_until(lambda: b"capturing" in sniffer.logs(), 30, "the capture to start")
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
            if target_port == 2525:
                inbound += 1
            else:
                other += 1
                print("syn", source.hex(), target.hex(), target_port, flush=True)
print("inbound", inbound, "other", other, flush=True)
"""
