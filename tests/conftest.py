"""Shared fixtures. ``mosquitto`` is a real broker on a free loopback port (module-scoped);
``mosquitto_factory`` starts private ones for tests that stop or restart the broker.

The broker is required: if the binary is missing the fixture FAILS (CI installs mosquitto).
Set HASHFLEX_MOSQUITTO to use a binary elsewhere.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MOSQUITTO_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def find_mosquitto() -> str | None:
    explicit = os.environ.get("HASHFLEX_MOSQUITTO")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((c for c in MOSQUITTO_CANDIDATES if os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(condition: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.01,
             message: str = "condition") -> None:
    """Poll ``condition`` until truthy; fail the test with ``message`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    if condition():
        return
    pytest.fail(f"timed out after {timeout_s} s waiting for {message}")


class MosquittoBroker:
    """A mosquitto process on 127.0.0.1:<port>, anonymous access, no persistence."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary, self.workdir = binary, workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    def accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{log}")
            if self.accepts_connections():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.host}:{self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        deadline = time.monotonic() + 5
        while self.accepts_connections() and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()


def _require_mosquitto() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto binary not found (install it: apt-get install -y mosquitto, "
                    "or set HASHFLEX_MOSQUITTO); MQTT tests need a real broker", pytrace=False)
    return binary


def _start_broker(binary: str, workdir: Path) -> MosquittoBroker:
    last_error: Exception | None = None
    for _ in range(3):  # a free port can be taken between probing and binding
        broker = MosquittoBroker(binary, workdir)
        try:
            broker.start()
            return broker
        except RuntimeError as exc:
            last_error = exc
    pytest.fail(f"could not start mosquitto: {last_error}", pytrace=False)


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A running broker shared by the tests of one module: use ``.host`` and ``.port``."""
    broker = _start_broker(_require_mosquitto(), tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[[], MosquittoBroker]]:
    """Start private brokers (stopped at teardown), for tests that stop or restart the broker."""
    binary = _require_mosquitto()
    brokers: list[MosquittoBroker] = []

    def make() -> MosquittoBroker:
        broker = _start_broker(binary, tmp_path)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(condition, timeout_s=10, message=...)``: poll instead of sleeping; fails on timeout."""
    return poll_until


@contextlib.contextmanager
def json_server(payload: object, path: str = "/prices") -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering every GET with ``payload`` as JSON; yields its URL."""
    body = json.dumps(payload).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
