"""Issue 15, a QSE/auditor newcomer review of the AS features through `hashflex run` (the daemon as a
process, a real Mosquitto on loopback, the store's real audit trail):

1. every inbound message the site refuses — by schema (malformed JSON, NaN, unknown field, negative
   value), by plausibility (clock skew) or by the limits book — is in the hash-chained audit trail
   (``input_rejected``) with the reason naming the field and the SHA-256 of the raw payload; a flood is
   bounded (the first ``REJECTION_AUDIT_FULL_PER_MINUTE`` per kind and minute in full, a per-minute
   ``input_rejected_summary`` counting the rest);
2. ``/status`` ``inputs.as_*`` count as ``accepted`` only what the site accepted (durably): a
   deployment the limits book refuses is ``rejected``, a redelivery of an accepted award a
   ``duplicate``, and the reasons are in ``inputs_refused``;
3. a second daemon on the same store fails fast, before writing anything to it, with a clear error,
   and the first daemon carries on.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from as_support import ISSUER, award, deploy
from conftest import free_port, poll_until
from hashflex.audit import AuditLog
from hashflex.audit.rejections import REJECTION_AUDIT_FULL_PER_MINUTE
from hashflex.messages import Topics

SITE = "asev"
PROFILE = f"""
site: {{id: {SITE}, name: AS evidence test site, timezone: America/Chicago, settlement_point: HB_WEST,
       settlement_point_type: HU, interval_minutes: 15, horizon_hours: 4}}
grid: {{import_limit_kw: 20000}}
dr: {{issuers: [utility], level_import_limit_kw: {{1: 40}}}}
miner_groups:
  - id: hydro
    model: container
    units: 10
    cooling: hydro
    idle_power_kw: 10
    modes: [{{name: run, power_kw: 1000, hashrate_th_s: 33333.333, sound_power_dba: 100}}]
receptors:
  - id: porch
    distance_m: {{hydro: 300}}
    background_dba: 30
    caps: [{{name: always, start: "00:00", end: "23:59", cap_dba: 60}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: {ISSUER}
  groups: {{hydro: {{response_s: 0.5, under_frequency_relay: true}}}}
  products:
    RRS: {{group_mw: {{hydro: 5}}}}
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def start_daemon(tmp_path: Path, mqtt_port: int, http_port: int, name: str = "daemon",
                 store: Path | None = None) -> subprocess.Popen:
    profile = tmp_path / "site.yaml"
    profile.write_text(PROFILE)
    log = (tmp_path / f"{name}.log").open("a")
    return subprocess.Popen(
        [sys.executable, "-m", "hashflex.cli", "--log-level", "INFO", "run", "--profile", str(profile),
         "--store", str(store or tmp_path / "hashflex.db"), "--mqtt-port", str(mqtt_port), "--http-port", str(http_port),
         "--time-limit", "5", "--price-model", "rules"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_daemon(daemon: subprocess.Popen) -> int | None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)
    return daemon.returncode


def http_json(port: int, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b"null")
    except OSError:
        return None


class Client:
    """A QSE/utility on the broker: publishes QoS 1 and collects the site's acks."""

    def __init__(self, port: int, topics: Topics) -> None:
        self.acks: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="qse-evidence", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"{topics.prefix}out/+/ack", qos=1), ready.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(5)

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def daemon(tmp_path: Path, mosquitto):  # noqa: ANN001 - conftest fixture
    http_port = free_port()
    process = start_daemon(tmp_path, mosquitto.port, http_port)
    try:
        poll_until(lambda: (http_json(http_port, "/status") or {}).get("mqtt_connected"), 60,
                   message="daemon up and subscribed")
    except BaseException:
        stop_daemon(process)
        print((tmp_path / "daemon.log").read_text()[-3000:])
        raise
    yield process, http_port, tmp_path, mosquitto
    stop_daemon(process)


def audit_records(db: Path, kind: str) -> list:
    with AuditLog(db, readonly=True) as log:
        assert log.verify().ok, "the trail verifies"
        return log.records(kind)


def test_refused_inputs_are_in_the_audit_trail_with_field_and_digest(daemon) -> None:  # noqa: ANN001
    process, http_port, tmp_path, broker = daemon
    topics = Topics(SITE)
    now = utc_now()
    iso = now.isoformat()
    good_deploy = deploy("d-1", now, 990.0).model_dump(mode="json")
    good_award = award("a-1", "RRS", 990.0, start=now, end=now + timedelta(hours=2)).model_dump(mode="json")
    dr = {"event_id": "ev-x", "modification_number": 0, "program": "ERS", "start": iso,
          "end": (now + timedelta(hours=1)).isoformat(), "import_limit_kw": 40.0, "issuer": "utility"}
    bad: dict[str, tuple[str, bytes, str]] = {  # name -> (topic, raw payload, a field its reason must name)
        "award_malformed_json": (f"{topics.prefix}in/as/award", b'{"award_id": "a-broken", "product": ', "payload"),
        "deploy_nan": (f"{topics.prefix}in/as/deploy",
                       json.dumps({**good_deploy, "deployment_id": "d-nan", "deployed_kw": float("nan")}).encode(),
                       "deployed_kw"),
        "award_negative": (f"{topics.prefix}in/as/award", json.dumps({**good_award, "award_id": "a-neg",
                                                                        "reserve_kw": -5.0}).encode(), "reserve_kw"),
        "deploy_unknown_field": (f"{topics.prefix}in/as/deploy",
                                 json.dumps({**good_deploy, "deployment_id": "d-extra", "priority": "high"}).encode(),
                                 "priority"),
        "deploy_clock_skew": (f"{topics.prefix}in/as/deploy",
                              deploy("d-future", now + timedelta(days=2), 990.0).model_dump_json().encode(),
                              "issued_at"),
        "deploy_zero_kw": (f"{topics.prefix}in/as/deploy", deploy("d-zero", now, 0.0).model_dump_json().encode(),
                           "deployed_kw"),
        "dr_unknown_field": (f"{topics.prefix}in/dr", json.dumps({**dr, "colour": "red"}).encode(), "colour"),
        "noise_negative": (f"{topics.prefix}in/noise/porch",
                           json.dumps({"receptor_id": "porch", "laeq_dba": -20.0, "averaging_s": 60,
                                       "timestamp": iso, "meter_class": 1}).encode(), "laeq_dba"),
    }
    client = Client(broker.port, topics)
    try:
        for topic, payload, _ in bad.values():
            client.send(topic, payload)
        poll_until(lambda: sum((v or {}).get("rejected", 0) + (v or {}).get("accepted", 0) for v in
                               (http_json(http_port, "/status") or {}).get("inputs", {}).values()) >= len(bad),
                   30, message="every bad input handled")
    finally:
        client.close()
    assert stop_daemon(process) == 0
    records = audit_records(tmp_path / "hashflex.db", "input_rejected")
    by_digest = {r.payload["payload_sha256"]: r.payload for r in records}
    for name, (topic, payload, field) in bad.items():
        digest = hashlib.sha256(payload).hexdigest()
        assert digest in by_digest, f"{name}: no input_rejected record with the payload's digest"
        record = by_digest[digest]
        assert record["topic"] == topic and record["payload_bytes"] == len(payload), name
        assert field in record["reason"], f"{name}: reason {record['reason']!r} does not name {field}"
        assert record["field"] == field, (name, record)
    assert by_digest[hashlib.sha256(bad["deploy_zero_kw"][1]).hexdigest()]["stage"] == "site"  # the limits book
    assert by_digest[hashlib.sha256(bad["deploy_nan"][1]).hexdigest()]["stage"] == "ingest"


def test_a_flood_of_bad_input_is_bounded_in_the_trail_and_counted(daemon) -> None:  # noqa: ANN001
    process, http_port, tmp_path, broker = daemon
    topics = Topics(SITE)
    flood = 3 * REJECTION_AUDIT_FULL_PER_MINUTE + 7
    client = Client(broker.port, topics)
    try:
        for i in range(flood):
            client.send(f"{topics.prefix}in/as/deploy", b'{"deployment_id": "flood-%d", ' % i)
        poll_until(lambda: ((http_json(http_port, "/status") or {}).get("inputs", {}).get("as_deploy") or {})
                   .get("rejected") == flood, 30, message="the flood handled")
    finally:
        client.close()
    assert stop_daemon(process) == 0  # a clean stop writes the summary of the minute in progress
    full = audit_records(tmp_path / "hashflex.db", "input_rejected")
    summaries = audit_records(tmp_path / "hashflex.db", "input_rejected_summary")
    per_minute = Counter(r.payload["minute"] for r in full if r.payload["kind"] == "as_deploy")
    assert per_minute and max(per_minute.values()) <= REJECTION_AUDIT_FULL_PER_MINUTE
    summarised = sum(s.payload["not_recorded_in_full"].get("as_deploy", {}).get("schema:json_invalid", 0)
                     for s in summaries)
    assert sum(per_minute.values()) + summarised == flood, "every refusal is in the trail, in full or counted"
    assert summarised > 0 and all(len(s.payload["unrecorded_sha256"]) == 64 for s in summaries)


def test_status_counts_as_accepted_only_what_the_site_accepted(daemon) -> None:  # noqa: ANN001
    process, http_port, tmp_path, broker = daemon
    topics = Topics(SITE)
    now = utc_now()
    accepted_award = award("a-ok", "RRS", 990.0, start=now, end=now + timedelta(hours=2))
    refused_deploys = [  # well-formed and plausible, refused by the site's limits book
        deploy("d-zero", now, 0.0),                                   # sheds nothing
        deploy("d-nspin", now, 990.0, product="NSPIN"),               # not qualified, never awarded
        deploy("d-ghost", now, 990.0, product="NSPIN", recalled=True),  # a recall for a product not qualified (an unknown id is kept as pending: test_as_intake_order)
        deploy("d-mallory", now, 990.0, issuer="mallory"),            # not the profile's QSE
    ]
    client = Client(broker.port, topics)
    try:
        client.send(f"{topics.prefix}in/as/award", accepted_award.model_dump_json().encode())
        client.send(f"{topics.prefix}in/as/award", accepted_award.model_dump_json().encode())  # a redelivery
        for message in refused_deploys:
            client.send(f"{topics.prefix}in/as/deploy", message.model_dump_json().encode())
        poll_until(lambda: len(client.acks) >= 2 + len(refused_deploys), 30, message="every message answered")
        poll_until(lambda: ((http_json(http_port, "/status") or {}).get("inputs", {}).get("as_deploy") or {})
                   .get("rejected", 0) + ((http_json(http_port, "/status") or {}).get("inputs", {})
                                          .get("as_deploy") or {}).get("accepted", 0) >= len(refused_deploys),
                   10, message="counted")
        status = http_json(http_port, "/status") or {}
    finally:
        client.close()
    acks = {a["message_id"]: a["status"] for a in client.acks}
    assert acks == {"a-ok": "accepted", "d-zero": "rejected", "d-nspin": "rejected", "d-ghost": "rejected",
                    "d-mallory": "rejected"}
    inputs = status["inputs"]
    assert inputs["as_deploy"]["accepted"] == 0, "a deployment the site refused is not 'accepted'"
    assert inputs["as_deploy"]["rejected"] == len(refused_deploys)
    assert inputs["as_award"]["accepted"] == 1 and inputs["as_award"]["duplicate"] == 1
    refused = status["inputs_refused"]["as_deploy"]
    assert refused == {"refused:deployed_kw": 1, "refused:issuer": 2, "refused:deployment_id": 1} or \
        sum(refused.values()) == len(refused_deploys), refused
    assert all(key.startswith("refused:") for key in refused)


def test_a_second_daemon_on_the_same_store_fails_before_writing(daemon, tmp_path: Path) -> None:  # noqa: ANN001
    first, http_port, tmp_path, broker = daemon
    db = tmp_path / "hashflex.db"
    poll_until(lambda: len(audit_records(db, "restart")) == 1, 20, message="the first daemon's restart record")
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT max(seq) FROM audit_log WHERE kind IN ('restart', 'config')").fetchone()[0]
    second = start_daemon(tmp_path, broker.port, http_port, name="second")  # same store, same port
    try:
        code = second.wait(30)
    except subprocess.TimeoutExpired:
        stop_daemon(second)
        raise AssertionError("the second daemon did not fail fast") from None
    output = (tmp_path / "second.log").read_text()
    assert code == 2, output
    assert "in use by another hashflex process" in output and str(db) in output, output
    assert len(audit_records(db, "restart")) == 1, "no false restart record from the second daemon"
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT max(seq) FROM audit_log WHERE kind IN ('restart', 'config')").fetchone()[0]
    assert after == before
    # the first daemon carries on: still serving, still on the broker (its MQTT session not taken over)
    assert first.poll() is None
    status = http_json(http_port, "/status") or {}
    assert status.get("mqtt_connected") is True
    assert (http_json(http_port, "/status") or {}).get("mqtt_connected") is True


def test_a_daemon_whose_http_port_is_taken_fails_before_writing(daemon) -> None:  # noqa: ANN001
    """Another store, the same HTTP port: the port is bound before the store is opened, so nothing is
    recorded in the second store and the error names the port."""
    first, http_port, tmp_path, broker = daemon
    other = tmp_path / "other.db"
    second = start_daemon(tmp_path, broker.port, http_port, name="other", store=other)
    try:
        code = second.wait(30)
    except subprocess.TimeoutExpired:
        stop_daemon(second)
        raise AssertionError("the second daemon did not fail fast") from None
    output = (tmp_path / "other.log").read_text()
    assert code == 2 and f"--http-port {http_port}" in output and "Address already in use" in output, output
    assert not other.exists() or not sqlite3.connect(other).execute(
        "SELECT name FROM sqlite_master WHERE name = 'audit_log'").fetchall(), "nothing recorded in the other store"
    assert first.poll() is None and (http_json(http_port, "/status") or {}).get("mqtt_connected") is True
