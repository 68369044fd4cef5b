"""Issue 15 leftover (task H3): ``hashflex run`` exits promptly on SIGTERM once the broker is gone.

A site manager's ``systemctl stop`` sends SIGTERM and (by default) SIGKILLs 90 s later; the newcomer saw
the daemon linger ~11 s with the broker gone. Two ways the broker goes: Mosquitto stopped on the same host
(connection attempts refused at once) and the broker's host gone from the network (connection attempts
get no answer: a listener whose backlog is full on the broker's port drops every SYN, as a powered-off
host or a firewall does). Before the fix the shutdown stopped each MQTT client in turn, each waiting
for paho's network thread (a 1 s reconnect sleep, or a 5 s TCP connect timeout): 5.5 s refused,
11.4 s unreachable (measured on this machine; driver 6 s, ingest 3 s, publisher 1 s).

Real Mosquitto on a free loopback port, the daemon as a process, MQTT-simulated miners. What must
survive the fast exit: the accepted DR event (the limits book), a verifiable audit trail, the store lock
released (the restart takes it), exit code 0.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import free_port, poll_until
from hashflex.messages import DREventMessage, Topics
from hashflex.profile import load_profile
from hashflex.sim.miners import MqttSimulatedMiners
from test_daemon_e2e import PROFILE, AckListener, http_get, start_daemon, stop_daemon, utc_now

EXIT_BOUND_S = 10.0
"""SIGTERM to exit, s: generous (2.5-4 s measured after the fix on the loaded 2-core machine; 5.5 s
stopped and 11.4-13.2 s unreachable before), well inside systemd's 90 s stop timeout. A setpoint batch
being published when SIGTERM comes is let finish (up to the driver's 5 s ``puback_timeout_s``)."""


class Blackhole:
    """A listener on the broker's port whose accept queue is full, so new SYNs are dropped: a client's
    connect() hangs until its own timeout, as when the broker's host is gone from the network."""

    def __init__(self, host: str, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(0)
        self.filler = socket.create_connection((host, port), timeout=1)  # fills the queue; never accepted
        probe = socket.socket()
        probe.settimeout(0.3)
        with closing(probe):
            with pytest.raises(OSError):  # the queue is full: a connect gets no answer
                probe.connect((host, port))

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


def status(port: int) -> dict:
    code, body = http_get(port, "/status")
    return json.loads(body) if code in (200, 503) and body else {}


@pytest.mark.parametrize("broker_gone", ["stopped", "unreachable"])
def test_sigterm_with_the_broker_gone_exits_promptly_and_keeps_state(tmp_path: Path, mosquitto_factory,  # noqa: ANN001
                                                                     broker_gone: str) -> None:
    broker = mosquitto_factory()
    profile_path = tmp_path / "e2e.yaml"
    profile_path.write_text(PROFILE)
    profile = load_profile(profile_path)
    groups = {g.id: g for g in profile.miner_groups}
    miners = {f"air-{i:02d}": groups["air"] for i in range(1, 11)} | {f"hyd-{i}": groups["hyd"] for i in range(1, 6)}
    store_path, log, http_port = tmp_path / "hashflex.db", tmp_path / "daemon.log", free_port()
    topics = Topics("e2e")
    sim = MqttSimulatedMiners("e2e", broker.host, broker.port, miners)
    sim.start()
    assert sim.wait_ready(10)
    daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
    listener = AckListener(broker.host, broker.port, topics.dr_ack)
    blackhole = None
    try:
        try:
            poll_until(lambda: status(http_port).get("last_solve") is not None, 90, message="first solve")
        except BaseException:
            print(log.read_text()[-3000:])
            raise
        now = utc_now()
        event = DREventMessage(event_id="ers-stop", modification_number=0, program="ERS-10", start=now,
                               end=now + timedelta(hours=2), import_limit_kw=20.0, issuer="utility")
        listener.publish(topics.dr, event.model_dump_json())
        poll_until(lambda: any(a["event_id"] == "ers-stop" for a in listener.acks), 10, message="DR ack")
        assert next(a for a in listener.acks if a["event_id"] == "ers-stop")["status"] == "accepted"
        listener.close()
        sim.stop()

        broker.stop()
        if broker_gone == "unreachable":
            blackhole = Blackhole(broker.host, broker.port)
        poll_until(lambda: status(http_port).get("mqtt_connected") is False, 30, message="daemon sees the broker gone")
        # Every client in its reconnect cycle (back-off sleep or a hanging connect), and the re-plan the DR
        # event started done with its batch (a batch in flight is let finish: see EXIT_BOUND_S).
        time.sleep(6.0)

        started = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit within 30 s of SIGTERM ({broker_gone}):\n{log.read_text()[-3000:]}")
        elapsed_s = time.monotonic() - started
        output = log.read_text()
        print(f"broker {broker_gone}: exit {code} {elapsed_s:.2f} s after SIGTERM")
        assert code == 0, output[-3000:]
        assert elapsed_s < EXIT_BOUND_S, f"{elapsed_s:.1f} s from SIGTERM to exit ({broker_gone})\n{output[-3000:]}"
        assert "Traceback" not in output, output[-3000:]

        # The audit trail the exit left verifies, and the store lock was released (a restart takes it).
        verify = subprocess.run([sys.executable, "-m", "hashflex.cli", "audit", "verify", "--db", str(store_path)],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        if blackhole is not None:
            blackhole.close()
            blackhole = None
        broker.start()
        daemon = start_daemon(profile_path, store_path, broker.port, http_port, log)
        poll_until(lambda: status(http_port).get("last_solve") is not None, 90, message="first solve after restart")
        assert status(http_port)["active_dr_events"] == ["ers-stop"], "the accepted event survived the fast exit"
    finally:
        if blackhole is not None:
            blackhole.close()
        listener.close()
        sim.stop()
        stop_daemon(daemon)
