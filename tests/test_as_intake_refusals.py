"""AS intake refusals a QSE/auditor newcomer review found (issue 15, helper task H1), each reproduced
through the real ``ControlLoop`` (in-process fleet, inline HiGHS solve), a real store and audit
recorder, real HTTP on 127.0.0.1 and a real Mosquitto on loopback:

1. a deployment whose ``issued_at`` is older than ``ancillary.max_hold_h`` (a year, or just past the
   backstop) was acked "accepted ... obeyed in full" yet bound nothing (its hold was already over),
   then audited overrun + released before its arrival and listed by the report as in force: it is
   refused naming ``issued_at``, audited, counted in /metrics;
2. (same rule) a deployment already past its backstop;
3. a recall naming another product than the deployment it recalls was accepted: refused naming
   ``product``;
4. duplicate JSON keys were accepted (last wins) on the command topics: refused naming the key;
5. ``deployed_kw`` above the site's qualification for the product (30 MW on 10 MW) cut the site to
   0: refused naming ``deployed_kw``;
6. an empty or non-object payload on ``in/as/deploy`` got no ack at all: it is acked ``rejected``
   with a null id;
7. ``/metrics`` and ``/status`` named the same refusal differently (``future:issued_at`` /
   ``refused:issued_at``): one name in both;
8. ``bounds_markdown()`` had no rows for ``as_award`` / ``as_deploy``.

The site (SYNTHETIC test data) is test_as_late_deployments': 10 hydro blocks of 1 MW (10 kW asleep),
qualified for 5 MW of RRS and 5 MW of ECRS, energy at $200/MWh; an RRS award of 4,950 kW keeps 5
blocks running (modelled import 5,050 kW); ``max_hold_h`` is the default 8 h.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hashflex.audit import AuditLog
from hashflex.control.daemon import MqttPublisher, wire_ingest
from hashflex.control.http import StatusServer, input_rejections
from hashflex.control.records import AuditRecorder
from hashflex.feeds.mqtt import MqttIngest, refusal_rule
from hashflex.messages import ASDeployMessage, Rejection, Topics, parse_message
from hashflex.plausibility import PlausibilityContext, bounds_markdown, check_plausible
from hashflex.report import build_report
from hashflex.store import Store
from tests.test_as_late_deployments import NOW, _deploy, _loop


def _metrics(status_fn: Callable, now) -> tuple[str, dict]:  # noqa: ANN001
    """/metrics (Prometheus text) and /status (JSON) over real HTTP on 127.0.0.1."""
    server = StatusServer(status_fn, lambda: now, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}metrics", timeout=10) as answer:
            text = answer.read().decode()
        with urllib.request.urlopen(f"{server.url}status", timeout=10) as answer:
            status = json.loads(answer.read())
    finally:
        server.stop()
    return text, status


# ---------------------------------------------------------------- findings 1 and 2: stale deployments


@pytest.mark.parametrize("age", [timedelta(days=365), timedelta(hours=8, minutes=1), timedelta(hours=8)],
                         ids=["a-year-old", "just-past-the-backstop", "at-the-backstop"])
def test_a_deployment_whose_hold_is_already_over_is_refused_naming_issued_at(tmp_path: Path,
                                                                             age: timedelta) -> None:
    """Issued ``age`` before it arrives (max_hold_h 8 h: its hold would already be over): ack
    rejected naming issued_at, no limit, no cut, no performance record, no overrun/released later,
    the refusal audited (an ``as_deploy`` record with the rejected ack) and counted in /metrics."""
    db = tmp_path / "stale.db"
    arrived = NOW + timedelta(minutes=5)
    with Store(db) as store:
        recorder = AuditRecorder(store)
        try:
            loop = _loop(store, recorder)
            ack = loop.handle_as_deploy(_deploy("old-1", arrived - age, 1000.0), arrived)
            assert ack.status == "rejected", ack.reason
            assert "issued_at" in ack.reason and "max_hold_h" in ack.reason, ack.reason
            assert refusal_rule(ack.reason, "as_deploy") == "refused:issued_at"
            assert "old-1" not in loop.book.as_deployments
            assert not any(k.startswith("AS:") for k in loop.book.import_limits_at(arrived))
            assert sum(loop.driver.running().values()) == 5, "nothing cut"
            assert "old-1" not in loop.as_performance
            loop.tick(arrived + timedelta(minutes=1))  # no overrun / released transition for it
            assert loop.counters.get("as_overrun", 0) == 0 and loop.counters.get("as_released", 0) == 0
            assert loop.counters["as_rejected"] == 1
            in_status = loop.status(arrived)["limits"]["as_deployments"]
            assert not [d for d in in_status if d.get("deployment_id") == "old-1"], in_status
            text, _ = _metrics(lambda now: loop.status(now), arrived)
            assert 'hashflex_input_rejections_total{kind="as_deploy",reason="refused:issued_at"} 1.0' in text
        finally:
            recorder.flush()
            recorder.close()
        assert recorder.failures == 0
    with AuditLog(db, readonly=True) as log:
        records = [r for r in log.records() if r.kind in ("as_deploy", "as_performance")]
    assert [r.payload["ack"]["status"] for r in records if r.kind == "as_deploy"] == ["rejected"]
    assert not [r for r in records if r.kind == "as_performance"], "no overrun/released record for it"
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")
    rows = [r for r in report["ancillary"]["deployments"] if r.get("in_force_h") or r.get("shortfall_mw")]
    assert rows == [], "not listed as in force, nor short, in the period it arrived"
    assert report["ancillary"]["overrun_count"] == 0 and report["ancillary"]["released_count"] == 0


def test_a_refused_stale_deployment_does_not_stretch_the_reports_default_period(tmp_path: Path) -> None:
    db = tmp_path / "period.db"
    arrived = NOW + timedelta(minutes=5)
    with Store(db) as store:
        recorder = AuditRecorder(store)
        try:
            loop = _loop(store, recorder)
            assert loop.handle_as_deploy(_deploy("old-y", arrived - timedelta(days=365), 1000.0), arrived).status \
                == "rejected"
            for k in range(4):
                loop.record_measurement(NOW + k * timedelta(minutes=15), 0.25, load_kw=5050.0, renewable_kw=0.0,
                                        hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        finally:
            recorder.flush()
            recorder.close()
    report = build_report(db)
    assert report["report"]["period_start"] == NOW.isoformat(), report["report"]["period_start"]


def test_a_deployment_inside_its_backstop_is_still_obeyed() -> None:
    """The boundary is the backstop, not the sustained duration: an RRS deployment issued 7 h ago
    (past RRS's 30 min sustain, inside max_hold_h 8 h) is in force, accepted and cut."""
    loop = _loop()
    arrived = NOW + timedelta(minutes=5)
    ack = loop.handle_as_deploy(_deploy("old-ok", arrived - timedelta(hours=7), 1000.0), arrived)
    assert ack.status == "accepted", ack.reason
    assert "AS:RRS:old-ok" in loop.book.import_limits_at(arrived)
    assert sum(loop.driver.running().values()) < 5


def test_the_staleness_window_is_the_profile_backstop() -> None:
    """The plausibility context takes ``ancillary.max_hold_h`` as the as_deploy window; a recall is
    not refused by it (ending a deployment never needs a fresh date to be safe to refuse)."""
    loop = _loop()
    context = PlausibilityContext.from_profile(loop.profile)
    assert context.staleness_s["as_deploy"] == pytest.approx(8 * 3600.0)
    old = _deploy("old-2", NOW - timedelta(hours=9), 1000.0)
    rejection = check_plausible(old, NOW, context)
    assert rejection is not None and rejection.rule == "stale:issued_at"
    recall = old.model_copy(update={"recalled": True})
    assert check_plausible(recall, NOW, context) is None


# ---------------------------------------------------------------- finding 3: recall of another product


def test_a_recall_naming_another_product_is_refused_naming_product() -> None:
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    assert loop.handle_as_deploy(_deploy("dep-p", issued, 1000.0, product="RRS"), issued).status == "accepted"
    recall = _deploy("dep-p", issued + timedelta(minutes=2), 1000.0, product="ECRS").model_copy(
        update={"recalled": True})
    ack = loop.handle_as_deploy(recall, issued + timedelta(minutes=2))
    assert ack.status == "rejected", ack.reason
    assert ack.reason.startswith("product:") and "RRS" in ack.reason and "ECRS" in ack.reason, ack.reason
    held = loop.book.as_deployments["dep-p"]
    assert not held.recalled and "AS:RRS:dep-p" in loop.book.import_limits_at(issued + timedelta(minutes=3))
    counts = input_rejections(loop.status(issued + timedelta(minutes=2)))
    assert counts[("as_deploy", "refused:product")] == 1
    # The recall naming the right product ends it.
    right = recall.model_copy(update={"product": "RRS"})
    assert loop.handle_as_deploy(right, issued + timedelta(minutes=2)).status == "accepted"
    assert loop.book.as_deployments["dep-p"].recalled


def test_a_pending_recall_of_another_product_does_not_end_the_deployment() -> None:
    """The recall overtakes its deployment (kept pending) but names ECRS; the RRS deployment with that
    id arrives: the recall is not its recall, so the deployment holds and cuts."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    recall = _deploy("dep-e", issued + timedelta(minutes=1), 1000.0, product="ECRS").model_copy(
        update={"recalled": True})
    assert loop.handle_as_deploy(recall, issued + timedelta(minutes=1)).status == "accepted"  # pending
    ack = loop.handle_as_deploy(_deploy("dep-e", issued, 1000.0, product="RRS"), issued + timedelta(minutes=2))
    assert ack.status == "accepted", ack.reason
    assert not loop.book.as_deployments["dep-e"].recalled, ack.reason
    assert "AS:RRS:dep-e" in loop.book.import_limits_at(issued + timedelta(minutes=3))


# ---------------------------------------------------------------- finding 4: duplicate JSON keys


@pytest.mark.parametrize(("topic", "payload", "key"), [
    ("in/as/deploy", '{"deployment_id": "d", "product": "RRS", "issued_at": "2024-06-03T17:00:00Z", '
                     '"deployed_kw": 1000, "deployed_kw": 30000, "issuer": "qse-test"}', "deployed_kw"),
    ("in/as/award", '{"award_id": "a", "product": "RRS", "start": "2024-06-03T17:00:00Z", '
                    '"end": "2024-06-03T18:00:00Z", "reserve_kw": 10, "issuer": "qse-test", "issuer": "mallory"}',
     "issuer"),
    ("in/dr", '{"event_id": "e", "modification_number": 0, "program": "ERS-10", "start": "2024-06-03T17:00:00Z", "import_limit_kw": 10, '
              '"import_limit_kw": 1e6, "issuer": "utility"}', "import_limit_kw"),
    ("in/limits", '{"issuer": "ops", "reason": "test", "issued_at": "2024-06-03T17:00:00Z", "import_limit_kw": 10, '
                  '"import_limit_kw": 20}', "import_limit_kw"),
])
def test_duplicate_json_keys_on_command_topics_are_refused_naming_the_key(topic: str, payload: str,
                                                                          key: str) -> None:
    result = parse_message(f"hashflex/s/{topic}", payload.encode())
    assert isinstance(result, Rejection), f"{topic}: duplicate {key} accepted"
    assert result.rule == "schema:duplicate_key" and result.kind is not None
    assert f": {key}: " in result.reason and "duplicate" in result.reason, result.reason
    # The same payload with the key once (as json.loads reads it: the last wins) is well formed.
    once = json.dumps(json.loads(payload)).encode()
    assert not isinstance(parse_message(f"hashflex/s/{topic}", once), Rejection), "control: only the duplicate"


def test_a_payload_without_duplicates_still_parses() -> None:
    payload = {"deployment_id": "d", "product": "RRS", "issued_at": "2024-06-03T17:00:00Z",
               "deployed_kw": 1000, "issuer": "qse-test"}
    assert isinstance(parse_message("hashflex/s/in/as/deploy", json.dumps(payload).encode()), ASDeployMessage)


# ---------------------------------------------------------------- finding 5: above the qualification


def test_a_deployment_above_the_product_qualification_is_refused_naming_deployed_kw() -> None:
    """RRS is qualified for 5 MW: 30 MW (a unit slip, or another site's) is refused, nothing cut,
    the award still held; 5 MW (above the 4,950 kW award, within the qualification) is obeyed in full;
    an amendment above the qualification is refused and the revision in force stays."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(_deploy("big-30", issued, 30_000.0), issued)
    assert ack.status == "rejected", ack.reason
    assert ack.reason.startswith("deployed_kw:") and "5000 kW qualified for RRS" in ack.reason, ack.reason
    assert "big-30" not in loop.book.as_deployments and sum(loop.driver.running().values()) == 5
    within = loop.handle_as_deploy(_deploy("full-5", issued, 5000.0), issued)
    assert within.status == "accepted" and within.above_award_kw == pytest.approx(50.0), within.reason
    amended = loop.handle_as_deploy(_deploy("full-5", issued + timedelta(seconds=30), 5001.0, revision=1),
                                    issued + timedelta(seconds=30))
    assert amended.status == "rejected" and amended.reason.startswith("deployed_kw:"), amended.reason
    assert loop.book.as_deployments["full-5"].deployed_kw == 5000.0
    counts = input_rejections(loop.status(issued + timedelta(seconds=30)))
    assert counts[("as_deploy", "refused:deployed_kw")] == 2


# ---------------------------------------------------------------- findings 6 and 7 over MQTT


class _AckListener:
    """A real MQTT client subscribed to ``out/as/ack`` (what the QSE hears)."""

    def __init__(self, host: str, port: int, topics: Topics) -> None:
        self.acks: list[dict] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="h1-qse", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{topics.prefix}out/as/ack", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def wired(mosquitto):  # noqa: ANN001, ANN201
    """The loop wired to a real ingest and publisher as the daemon wires them (``wire_ingest``,
    ``MqttPublisher``), a QSE listening on out/as/ack, and the daemon's status composition."""
    loop = _loop()
    topics = Topics(loop.profile.site_id)
    publisher = MqttPublisher(loop.profile.site_id, mosquitto.host, mosquitto.port)
    loop.publisher = publisher
    clock = lambda: NOW + timedelta(minutes=5)  # noqa: E731
    ingest = MqttIngest(None, loop.profile.site_id, mosquitto.host, mosquitto.port, client_id="h1-ingest",
                        session_expiry_s=0, clock=clock, plausibility=loop.profile)
    wire_ingest(ingest, loop, clock)
    ingest.start()
    assert ingest.wait_connected(10)
    qse = _AckListener(mosquitto.host, mosquitto.port, topics)

    def status(now):  # noqa: ANN001, ANN202 - as run_daemon composes /status
        return {**loop.status(now), "inputs": ingest.stats(), "input_rejections": ingest.rejection_stats(),
                "inputs_refused": ingest.refusal_stats()}

    try:
        yield loop, topics, qse, status, clock
    finally:
        qse.close()
        ingest.stop()
        publisher.close()


@pytest.mark.parametrize("payload", [b"", b"[]", b'"dep-1"', b"42", b"null"], ids=["empty", "array", "string",
                                                                                   "number", "null"])
def test_an_empty_or_non_object_deploy_is_acked_rejected_with_a_null_id(wired, payload: bytes,  # noqa: ANN001
                                                                        wait_for: Callable[..., None]) -> None:
    loop, topics, qse, _, _ = wired
    qse.send(f"{topics.prefix}in/as/deploy", payload)
    wait_for(lambda: qse.acks, timeout_s=5, message="the QSE hears back")
    (ack,) = qse.acks
    assert ack["status"] == "rejected" and ack["kind"] == "as_deploy" and ack["message_id"] is None
    assert loop.counters["as_rejected"] == 1


def test_a_duplicate_key_deploy_over_mqtt_is_acked_rejected_naming_the_key(wired,  # noqa: ANN001
                                                                           wait_for: Callable[..., None]) -> None:
    loop, topics, qse, _, clock = wired
    payload = (f'{{"deployment_id": "dup-1", "product": "RRS", "issued_at": "{clock().isoformat()}", '
               '"deployed_kw": 1000, "deployed_kw": 30000, "issuer": "qse-test"}')
    qse.send(f"{topics.prefix}in/as/deploy", payload.encode())
    wait_for(lambda: qse.acks, timeout_s=10, message="the QSE hears back")
    (ack,) = qse.acks
    assert ack["message_id"] == "dup-1" and ack["status"] == "rejected" and "deployed_kw" in ack["reason"]
    assert "dup-1" not in loop.book.as_deployments and sum(loop.driver.running().values()) == 5


def test_metrics_and_status_name_each_refusal_alike(wired, wait_for: Callable[..., None]) -> None:  # noqa: ANN001
    """A deployment dated beyond the clock skew (plausibility), one whose hold is over (staleness),
    one from a wrong issuer and one above the qualification (the site's rules): /metrics'
    hashflex_input_rejections_total and /status' inputs_refused carry the same reason labels."""
    _, topics, qse, status, clock = wired
    now = clock()
    base = {"product": "RRS", "deployed_kw": 1000.0, "issuer": "qse-test"}
    sent = [
        {**base, "deployment_id": "ahead", "issued_at": (now + timedelta(hours=1)).isoformat()},
        {**base, "deployment_id": "old", "issued_at": (now - timedelta(days=365)).isoformat()},
        {**base, "deployment_id": "mallory", "issued_at": now.isoformat(), "issuer": "mallory"},
        {**base, "deployment_id": "big", "issued_at": now.isoformat(), "deployed_kw": 30_000.0},
    ]
    for message in sent:
        qse.send(f"{topics.prefix}in/as/deploy", json.dumps(message).encode())
    wait_for(lambda: len(qse.acks) == len(sent), timeout_s=10, message="every deployment answered")
    assert {a["message_id"]: a["status"] for a in qse.acks} == {m["deployment_id"]: "rejected" for m in sent}
    text, document = _metrics(status, now)
    refused = document["inputs_refused"]["as_deploy"]
    assert refused == {"refused:issued_at": 2, "refused:issuer": 1, "refused:deployed_kw": 1}, refused
    for label, count in refused.items():
        assert f'hashflex_input_rejections_total{{kind="as_deploy",reason="{label}"}} {count:.1f}' in text, label
    exported = {line.split('reason="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith('hashflex_input_rejections_total{kind="as_deploy"')}
    assert exported == set(refused), (exported, refused)


# ---------------------------------------------------------------- finding 8: the bounds table


def test_the_bounds_table_has_rows_for_awards_and_deployments() -> None:
    table = bounds_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| as_")]
    fields = {(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in rows}
    assert ("as_award", "reserve_kw") in fields and ("as_deploy", "deployed_kw") in fields, rows
    assert ("as_award", "start − now") in fields and ("as_deploy", "now − observed time") in fields, rows
    deploy_window = next(line for line in rows if line.startswith("| as_deploy | now − observed time"))
    assert "max_hold_h" in deploy_window and "28,800" in deploy_window, deploy_window


# ---------------------------------------------------------------- finding 7 for DR and limits


def test_dr_and_limits_refused_by_the_book_are_counted_for_metrics() -> None:
    """A DR event and a limits change from an unknown issuer are refused by the limits book (not the
    plausibility bounds): /metrics' hashflex_input_rejections_total counts them under the same label
    as /status inputs_refused (``refusal_rule`` of the answer), as it counts AS refusals. Before, only
    plausibility refusals of DR/limits reached ``command_rejections``."""
    from hashflex.messages import DREventMessage, LimitsChangeMessage

    loop = _loop()
    now = NOW + timedelta(minutes=1)
    dr = DREventMessage(event_id="stranger-dr", modification_number=0, program="ERS-10", start=now,
                        end=now + timedelta(hours=1), import_limit_kw=10.0, issuer="stranger")
    dr_ack = loop.handle_dr(dr, now)
    limits = LimitsChangeMessage(issuer="stranger", reason="test", issued_at=now, import_limit_kw=10.0)
    limits_ack = loop.handle_limits(limits, now)
    assert dr_ack.status == "rejected" and not limits_ack.accepted, (dr_ack, limits_ack)
    counts = input_rejections(loop.status(now))
    assert counts[("dr", refusal_rule(dr_ack.reason, "dr"))] == 1, counts
    assert counts[("limits", refusal_rule(limits_ack.reason, "limits"))] == 1, counts
    assert sum(loop.driver.running().values()) == 5, "nothing cut for a refused command"
