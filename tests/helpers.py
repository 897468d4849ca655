"""What several test modules share: a delivery to vary, a MIME message, and the inspector as a process.

- `BASE`: one delivery, built by keyword; tests `replace` what they vary.
- `MULTIPART`: a message with an encoded subject, a text body and one attachment.
- `record`: message number N (subject `nN`, Message-ID `<N@x.test>`) as the server stores it.
- `Watch`: `maillab-inspector watch --json` in a child process, its output read line by line.
- `run_cli`: any maillab command line, run to its end; `inspector`: an inspector command.
- `wait_until`: wait for an observable condition, with a deadline.
- `HostLab`: the real server and inspector (`serve`) as processes on free ports, a context manager.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TextIO

from maillab_common.forward import Delivery, render_record
from maillab_inspector.state import load_positions

BASE = Delivery(
    mail_from="alice@example.test",
    rcpt_tos=("bob@example.test",),
    received_at=datetime(2026, 11, 28, 9, 5, 7, tzinfo=UTC),
    transaction_id="0123456789ABCDEF",
    helo="client.example",
    peer="192.0.2.7",
    server_name="maillab.test",
    tls=False,
    message=b"Subject: hello\nMessage-ID: <1@example.test>\n\nHello, world.\n",
)

MULTIPART = (
    b"From: a@x.test\nSubject: =?utf-8?q?caf=C3=A9?=\nMessage-ID: <m@x.test>\nMIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhello\n'
    b'--b\nContent-Type: image/png\nContent-Disposition: attachment; filename="p.png"\n'
    b"Content-Transfer-Encoding: base64\n\naGVsbG8=\n--b--\n"
)


def record(number: int, message: bytes | None = None) -> bytes:
    """A forward-file record of message `number` (subject `n<number>`), or of `message` when given."""
    body = message or f"Subject: n{number}\nMessage-ID: <{number}@x.test>\n\nbody {number}\n".encode()
    return render_record(replace(BASE, transaction_id=f"{number:04X}", message=body))


TIMEOUT = 15.0  # seconds to wait for what a test expects; it normally takes milliseconds


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Return once `condition()` holds; fail naming `what` if it does not within `timeout`.

    For a state the test can observe but not be told of (a server's session count, a
    refused connect): the test goes on the moment it holds, and a silent second proves nothing.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        threading.Event().wait(0.01)


def run_cli(
    module: str, *arguments: str, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m MODULE ARGUMENTS` to its end, 200 columns wide; `env` replaces os.environ."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        input=stdin,
        env={**(os.environ if env is None else env), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def inspector(forward: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `maillab-inspector ARGUMENTS` over the forward folder `forward` to its end."""
    return run_cli("maillab_inspector", *arguments, env={**os.environ, "MAILLAB_FORWARD_DIR": str(forward)})


class Watch:
    """`maillab-inspector watch --json` (or its text output) in a child process, its output read line by line.

    What was not printed is never proved by waiting a while: a test delivers one more
    message, a marker, and `printed_until` returns everything printed up to it. The watch
    reads each file in order and prints what it has read in that order, so a message it
    should not have printed (a repeat after a restart, say) comes before the marker.
    """

    started: ClassVar[list[Watch]] = []  # the processes a test started, stopped in teardown

    def __init__(self, forward: Path, state: Path, *arguments: str, json_lines: bool = True) -> None:
        env = {
            **os.environ,
            "MAILLAB_FORWARD_DIR": str(forward),
            "MAILLAB_STATE_FILE": str(state),
            "MAILLAB_READY_FILE": str(state.with_suffix(".ready")),
            "MAILLAB_SWEEP_INTERVAL": "0.2",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "maillab_inspector", "watch", *(["--json"] if json_lines else []), *arguments],
            env={**env, "COLUMNS": "100"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        Watch.started.append(self)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.errors: list[str] = []
        self._logged = threading.Condition()
        self._pumps = [
            threading.Thread(target=self._pump_lines, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._pump_errors, args=(self.process.stderr,), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        self.wait_for_log("watching")

    def _pump_lines(self, stream: TextIO) -> None:
        for line in stream:
            self.lines.put(line)

    def _pump_errors(self, stream: TextIO) -> None:
        for line in stream:
            with self._logged:
                self.errors.append(line)
                self._logged.notify_all()

    def wait_for_log(self, text: str, timeout: float = TIMEOUT) -> None:
        with self._logged:
            if not self._logged.wait_for(lambda: any(text in line for line in self.errors), timeout):
                raise AssertionError(f"no log line with {text!r}: {self.errors}")

    def subjects(self, count: int, timeout: float = TIMEOUT) -> list[str]:
        """The subjects of the next `count` messages printed."""
        return [json.loads(self.lines.get(timeout=timeout))["subject"] for _ in range(count)]

    def printed_until(self, marker: str, timeout: float = TIMEOUT) -> list[str]:
        """The subjects printed from now up to the message whose subject is `marker`, that one included."""
        printed: list[str] = []
        while marker not in printed:
            try:
                printed += self.subjects(1, timeout)
            except queue.Empty:
                raise AssertionError(f"{marker!r} was never printed; before it: {printed}") from None
        return printed

    def wait_for_state(self, state: Path, name: str, offset: int, timeout: float = TIMEOUT) -> None:
        """Until the state file holds `offset` for the file `name` (the watch saves it after printing)."""
        waited = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if (load_positions(state) or {}).get(name, (0, -1))[1] == offset:
                return
            waited.wait(0.05)
        raise AssertionError(f"the state file never reached {name} at {offset}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=TIMEOUT)
        for pump in self._pumps:  # to the end of what the process wrote: every line it printed is in `lines`
            pump.join(timeout=TIMEOUT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class HostLab:
    """The real lab on the host: `python -m maillab_server serve` and `python -m maillab_inspector serve`
    as child processes on free loopback ports, storing under `root` (which must exist).

        with HostLab(tmp_path) as lab:
            lab.send(message)                      # through SMTP, to lab.smtp_port
            ... lab.api_url ...                    # the inspector, http://127.0.0.1:<port>

    Entering starts both and returns once the API answers its health check and the SMTP port
    accepts a session; the processes are stopped on leaving, and also when starting or the
    readiness check fails. Each writes its log to a file under `root` (server.log,
    inspector.log), never to a pipe nobody reads (a full pipe would block it); a failure to
    start quotes both. The classroom listener is off (port 0), so the fixed 2526 is never bound.
    """

    SENDER = "app@sender.test"

    def __init__(self, root: Path, *, ready_timeout: float = 60.0, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.forward = root / "forward"
        self.state = root / "state"
        self.chaos = root / "chaos"  # the fault-injection rules (docs/chaos.md), shared as in compose
        self.server_log = root / "server.log"
        self.inspector_log = root / "inspector.log"
        self.ready_timeout = ready_timeout
        self.env = dict(os.environ if env is None else env)
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.http_port}"
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> HostLab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.forward.mkdir(exist_ok=True)
        self.state.mkdir(exist_ok=True)
        self.chaos.mkdir(exist_ok=True)
        server_env = {
            **self.env,
            "MAILLAB_LOG_LEVEL": "warning",
            "MAILLAB_TLS_DIR": str(self.root / "tls"),
            "MAILLAB_CLASSROOM_PORT": "0",
            "MAILLAB_CHAOS_DIR": str(self.chaos),
        }
        server_argv = ["--listen-host", "127.0.0.1", "--port", str(self.smtp_port), "--classroom-port", "0"]
        self._spawn(
            ["maillab_server", "serve", *server_argv, "--forward-dir", str(self.forward)], server_env, self.server_log
        )
        inspector_env = {
            **self.env,
            "MAILLAB_FORWARD_DIR": str(self.forward),
            "MAILLAB_STATE_FILE": str(self.state / "positions.sqlite3"),
            "MAILLAB_CATALOGUE": str(self.state / "catalogue.sqlite3"),
            "MAILLAB_READY_FILE": str(self.state / "ready"),
            "MAILLAB_HTTP_READY_FILE": str(self.state / "http"),
            "MAILLAB_HTTP_PORT": str(self.http_port),
            "MAILLAB_OUTPUT": "json",
            "MAILLAB_CHAOS_DIR": str(self.chaos),
        }
        self._spawn(["maillab_inspector", "serve"], inspector_env, self.inspector_log)
        deadline = time.monotonic() + self.ready_timeout
        while not self.answers():
            if self.exited() or time.monotonic() > deadline:
                why = "a process exited" if self.exited() else f"not ready within {self.ready_timeout:g} s"
                raise AssertionError(f"the host lab did not start ({why}):\n{self.logs()}")
            threading.Event().wait(0.05)

    def _spawn(self, argv: list[str], env: Mapping[str, str], log: Path) -> None:
        with open(log, "ab") as file:  # the child keeps its own copy of the descriptor
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *argv],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=file,
                    stderr=subprocess.STDOUT,
                )
            )

    def answers(self) -> bool:
        """Whether the API answers its health check and the SMTP port greets."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v1/health", timeout=1) as response:
                if response.status != 200:
                    return False
            with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=1):
                return True
        except (OSError, urllib.error.URLError, smtplib.SMTPException):
            return False

    def exited(self) -> bool:
        return any(process.poll() is not None for process in self.processes)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace') if path.exists() else '(none)'}"
            for path in (self.server_log, self.inspector_log)
        )

    def stop(self) -> None:
        """Stop every process started, the inspector first; SIGKILL for one that outlives 20 s of SIGTERM."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def send(self, message: EmailMessage | bytes, recipients: Sequence[str] = (), sender: str = SENDER) -> None:
        """One message through SMTP, to `recipients` (the message's To, Cc and Bcc when none are given)."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as smtp:
            if isinstance(message, bytes):
                smtp.sendmail(sender, list(recipients), message)
            else:
                smtp.send_message(message, from_addr=sender, to_addrs=list(recipients) or None)
