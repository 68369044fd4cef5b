"""Amended AS deployments (issue 15): the same deployment id with a higher ``revision`` changes the MW
to shed; it is decided in the limits book, committed before it is acknowledged, cut by the fast path
and measured against the amended obligation. A lower revision is refused as stale and counted in
/metrics. Same tiny site as ``test_ancillary_control`` (10 hydro blocks of 1 MW, 10 kW idle each)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hashflex.audit import AuditLog
from hashflex.control.daemon import load_control_state
from hashflex.control.http import StatusServer
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.feeds.mqtt import MqttIngest
from hashflex.messages import ASDeployMessage, Topics
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store
from test_ancillary_control import NOW, PROFILE, award, make_loop, prices, running


def deploy(kw: float, revision: int = 0, at=NOW, deployment_id: str = "d-1", **extra) -> ASDeployMessage:  # noqa: ANN001, ANN003
    return ASDeployMessage(deployment_id=deployment_id, product="ECRS", issued_at=at, deployed_kw=kw,
                           revision=revision, issuer="qse-test", **extra)


def started(loop: ControlLoop) -> None:
    """The award in force and one tick: 5 blocks run (5,050 kW with the 5 sleeping blocks' idle)."""
    assert loop.handle_as_award(award(), NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop.driver) == 5


def test_a_higher_revision_amends_the_deployment_cut_and_measured_against_the_new_obligation() -> None:
    loop, fleet = make_loop()
    started(loop)
    first = loop.handle_as_deploy(deploy(2000.0), NOW)
    assert first.status == "accepted" and first.import_limit_kw == pytest.approx(3050.0)
    assert running(fleet) == 2  # a running block draws 1,000 kW, a sleeping one 10: 2 run = 2,080 kW
    at = NOW + timedelta(minutes=2)
    amended = loop.handle_as_deploy(deploy(3000.0, revision=1, at=at), at)
    assert amended.status == "accepted", amended.reason
    assert "amended" in amended.reason and "revision 1" in amended.reason
    # Measured from the load when the deployment was first instructed (5,050 kW), not from the
    # already-reduced load now: 5,050 − 3,000 = 2,050 kW.
    assert amended.import_limit_kw == pytest.approx(2050.0)
    assert amended.deadline == at + timedelta(minutes=10), "the added MW get the product's deadline from now"
    assert running(fleet) == 1, "the fast path cut to the amended limit at once"
    held = loop.book.as_deployments["d-1"]
    assert (held.revision, held.deployed_kw, held.limit_kw, held.issued_at) == (1, 3000.0, 2050.0, NOW)
    assert loop.book.import_limits_at(at) == {"AS:ECRS:d-1": pytest.approx(2050.0)}
    performance = loop.as_performance["d-1"]
    assert performance["obligation_kw"] == 3000.0 and performance["limit_kw"] == pytest.approx(2050.0)
    assert performance["revision"] == 1 and performance["amended_from_kw"] == 2000.0
    assert performance["shortfall_kw"] == pytest.approx(0.0)
    loop.measure_as_deployments(2040.0, at + timedelta(seconds=3))
    assert performance["measured_response_s"] == pytest.approx(3.0), "response to the amendment, from its time"
    # A smaller amendment raises the limit: the site is not held further down than asked.
    later = at + timedelta(minutes=2)
    eased = loop.handle_as_deploy(deploy(900.0, revision=2, at=later), later)
    assert eased.status == "accepted" and eased.import_limit_kw == pytest.approx(4150.0)
    assert loop.book.as_deployments["d-1"].deadline == at + timedelta(minutes=10), "easing sets no new deadline"
    loop.tick(later)
    assert running(fleet) == 4, "4 blocks (4,060 kW) fit under 4,150 kW again"
    # Survives a restart as amended.
    restored = LimitsBook.from_dict(loop.book.to_dict(), loop.profile)
    assert restored.as_deployments["d-1"] == loop.book.as_deployments["d-1"]


def test_a_stale_revision_is_refused_with_its_reason_and_counted_in_metrics() -> None:
    loop, fleet = make_loop()
    started(loop)
    loop.handle_as_deploy(deploy(2000.0), NOW)
    loop.handle_as_deploy(deploy(3000.0, revision=3), NOW + timedelta(minutes=1))
    stale = loop.handle_as_deploy(deploy(1000.0, revision=2), NOW + timedelta(minutes=2))
    assert stale.status == "rejected" and stale.reason.startswith("revision: 2 is older than the revision 3"), stale.reason
    same = loop.handle_as_deploy(deploy(500.0, revision=3), NOW + timedelta(minutes=2))
    assert same.status == "rejected" and same.reason.startswith("revision: 3 is the revision held"), same.reason
    assert loop.book.as_deployments["d-1"].deployed_kw == 3000.0 and running(fleet) == 1
    assert loop.counters["as_stale"] == 1, "the same revision with other terms is refused, not counted stale"
    server = StatusServer(lambda now: loop.status(now), lambda: NOW, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.stop()
    assert 'hashflex_events_total{counter="as_stale"} 1.0' in text


def test_an_ended_deployment_cannot_be_amended_and_recall_ends_it() -> None:
    loop, fleet = make_loop()
    started(loop)
    loop.handle_as_deploy(deploy(2000.0), NOW)
    at = NOW + timedelta(minutes=5)
    recall = loop.handle_as_deploy(deploy(0.0, at=at, recalled=True), at)
    assert recall.status == "accepted" and loop.book.import_limits_at(at) == {}
    late = loop.handle_as_deploy(deploy(3000.0, revision=1, at=at), at + timedelta(seconds=1))
    assert late.status == "rejected" and late.reason.startswith("deployment_id"), late.reason
    assert loop.book.import_limits_at(at) == {}
    loop.tick(at)
    assert running(fleet) == 5, "recalled: the site runs for its award again"


def test_amendment_is_durable_before_it_is_acked_and_in_the_audit_trail(tmp_path: Path) -> None:
    profile = parse_profile(PROFILE, source="test")
    with Store(tmp_path / "s.db") as store:
        recorder = AuditRecorder(store)
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store, recorder=recorder)
        started(loop)
        loop.handle_as_deploy(deploy(2000.0), NOW)
        ack = loop.handle_as_deploy(deploy(3000.0, revision=1), NOW + timedelta(minutes=1))
        assert ack.status == "accepted"
        book, _ = load_control_state(store, profile)  # what a restart would resume: committed before the ack
        assert (book.as_deployments["d-1"].revision, book.as_deployments["d-1"].limit_kw) == (1, 2050.0)
        recorder.flush()
        recorder.close()
    with AuditLog(tmp_path / "s.db", readonly=True) as log:
        deploys = [r.payload for r in log.records("as_deploy")]
        performances = [r.payload for r in log.records("as_performance")]
    assert [(d["message"]["revision"], d["ack"]["status"]) for d in deploys] == [(0, "accepted"), (1, "accepted")]
    assert performances[-1]["obligation_kw"] == 3000.0 and performances[-1]["revision"] == 1


def test_an_amended_mqtt_deployment_with_a_higher_revision(mosquitto, tmp_path: Path,  # noqa: ANN001
                                                           wait_for: Callable[..., None]) -> None:
    loop, fleet = make_loop()
    started(loop)
    topics = Topics(loop.profile.site_id)
    with Store(tmp_path / "ingest.db") as store:
        ingest = MqttIngest(store, loop.profile.site_id, mosquitto.host, mosquitto.port, client_id="as-amend-ingest",
                            session_expiry_s=0, clock=lambda: NOW, plausibility=loop.profile)
        ingest.add_callback(lambda message: loop.on_message(message, NOW))
        ingest.start()
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="as-amend-publisher", protocol=mqtt.MQTTv5)
        try:
            assert ingest.wait_connected(10)
            publisher.connect(mosquitto.host, mosquitto.port)
            publisher.loop_start()
            base = {"deployment_id": "d-mqtt", "product": "ECRS", "issued_at": NOW.isoformat(), "issuer": "qse-test"}
            for revision, kw in ((0, 2000.0), (1, 3000.0), (0, 1000.0)):  # the last one is stale
                publisher.publish(f"{topics.prefix}in/as/deploy",
                                  json.dumps({**base, "deployed_kw": kw, "revision": revision}),
                                  qos=1).wait_for_publish(5)
            wait_for(lambda: loop.counters.get("as_accepted", 0) + loop.counters.get("as_rejected", 0) == 4,
                     message="three deployments answered")
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            ingest.stop()
    assert loop.book.as_deployments["d-mqtt"].revision == 1
    assert loop.book.import_limits_at(NOW) == {"AS:ECRS:d-mqtt": pytest.approx(2050.0)}
    assert running(fleet) == 1 and loop.counters["as_stale"] == 1


def test_an_amendment_not_made_durable_holds_the_tighter_cut_and_a_recall_lifts_it(tmp_path: Path) -> None:
    """Store failure: the amendment's ack says store_unavailable, yet the site is cut to the amended
    limit (when in doubt, curtail); a looser amendment never loosens what is held; once the store
    works, the resent amendment and then the recall are durable and the site runs again."""
    profile = parse_profile(PROFILE, source="test")
    with Store(tmp_path / "s.db") as store:
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store)
        started(loop)
        loop.handle_as_deploy(deploy(2000.0), NOW)
        store.fail_commits("database or disk is full")
        at = NOW + timedelta(minutes=1)
        ack = loop.handle_as_deploy(deploy(3000.0, revision=1, at=at), at)
        assert ack.status == "rejected" and ack.reason.startswith("store_unavailable"), ack.reason
        assert running(loop.driver) == 1 and min(loop.book.import_limits_at(at).values()) == pytest.approx(2050.0)
        assert load_control_state(store, profile)[0].as_deployments["d-1"].revision == 0, "not durable"
        looser = loop.handle_as_deploy(deploy(500.0, revision=2, at=at), at)
        assert looser.status == "rejected" and min(loop.book.import_limits_at(at).values()) == pytest.approx(2050.0)
        store.fail_commits(None)
        assert loop.handle_as_deploy(deploy(3000.0, revision=1, at=at), at).status == "accepted"
        later = NOW + timedelta(minutes=20)
        recall = loop.handle_as_deploy(deploy(0.0, at=later, recalled=True), later)
        assert recall.status == "accepted"
        assert loop.book.import_limits_at(later) == {}, "no hold outlives the recall"
        loop.tick(later)
        assert running(loop.driver) == 5
