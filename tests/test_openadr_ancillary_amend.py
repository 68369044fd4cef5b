"""OpenADR 3 AS deployments that the VTN modifies or deletes (issue 15): an amended event amends the
deployment in the limits book (durable before it is acknowledged, measured against the amended
obligation); an older version (stale) is refused and counted; an event deleted while the VEN was down
ends its deployment and withdraws its award on the first complete poll after the restart; a failed
poll never drops a deployment in force. The test VTN over real HTTP on 127.0.0.1 (behind the
validating proxy), the real control loop and limits book, a real SQLite store and audit trail."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hashflex.audit import AuditLog
from hashflex.control.daemon import load_control_state
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.openadr.config import WebhookConfig
from hashflex.openadr.mapping import modification_number
from hashflex.sim.site import ReplayForecaster
from hashflex.store import Store
from openadr_tls import TestCert
from openadr_vtn import TestVTN
from test_openadr import T0, Site, cert, iso, prices, vtn  # noqa: F401
from test_openadr_ancillary import as_profile, as_site, as_ven, award_event, deploy_event, program_type  # noqa: F401

DEPLOY = "DISPATCH_SETPOINT_RELATIVE"


def dispatch(megawatts: float) -> list[dict]:
    return [{"id": 0, "payloads": [{"type": DEPLOY, "values": [megawatts]}]}]


def test_a_modified_deployment_event_amends_the_deployment(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    as_site.tick()
    before_kw = as_site.fleet.load_kw()
    event = vtn.create_event(deploy_event(program["id"], T0, 3.0))  # PT0S: until recalled
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    deployment_id = f"{event['id']}:0"
    first = as_site.loop.book.as_deployments[deployment_id]
    assert first.deployed_kw == 3000.0 and first.revision == modification_number(event["modificationDateTime"])
    # The QSE raises the deployment to 8 MW: PUT /events/{id} (3.0.1 updateEvent), a new modificationDateTime.
    as_site.advance(2)
    modified = vtn.update_event(event["id"], intervals=dispatch(8.0))
    ven.tick(as_site.now)
    ack = ven.as_acks[-1]
    assert ack.status == "accepted" and "amended" in ack.reason, ack.reason
    held = as_site.loop.book.as_deployments[deployment_id]
    # The version's number: its modificationDateTime, or one more when modified within the same second.
    assert held.deployed_kw == 8000.0
    assert held.revision == max(modification_number(modified["modificationDateTime"]), first.revision + 1)
    assert held.baseline_kw == pytest.approx(before_kw, rel=0.02), "measured from the load when first deployed"
    assert ack.import_limit_kw == pytest.approx(before_kw - 8000.0, rel=0.02)
    assert as_site.fleet.load_kw() <= ack.import_limit_kw + 1e-6, "cut at once to the amended limit"
    performance = as_site.loop.as_performance[deployment_id]
    assert performance["obligation_kw"] == 8000.0 and performance["amended_from_kw"] == 3000.0
    assert ven.counters["as_amendments"] == 1 and ven.counters["as_refused"] == 0
    # Then the QSE gives it an end 10 minutes after its start: recalled when that comes.
    as_site.advance(2)
    vtn.update_event(event["id"], intervalPeriod={"start": iso(T0), "duration": "PT10M"})
    ven.tick(as_site.now)
    assert as_site.loop.book.as_deployments[deployment_id].deployed_kw == 8000.0, "an end alone is no amendment"
    as_site.advance(7)
    ven.tick(as_site.now)
    assert ven.counters["as_recalls"] == 1 and as_site.loop.book.import_limits_at(as_site.now) == {}
    assert as_site.loop.book.as_deployments[deployment_id].end == T0 + timedelta(minutes=10)
    assert "interval ended" in as_site.loop.as_performance[deployment_id]["end_reason"]


def test_a_stale_version_of_a_deployment_event_is_refused_and_counted(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    as_site.tick()
    event = vtn.create_event(deploy_event(program["id"], T0, 3.0))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    as_site.advance(1)
    newer = vtn.update_event(event["id"], intervals=dispatch(8.0))
    ven.tick(as_site.now)
    deployment_id = f"{event['id']}:0"
    assert as_site.loop.book.as_deployments[deployment_id].deployed_kw == 8000.0
    # An older version of the event comes back (a lagging VTN replica, an overtaken notification).
    vtn.put_raw_event({**newer, "modificationDateTime": event["modificationDateTime"].replace(
        event["modificationDateTime"][:4], str(int(event["modificationDateTime"][:4]) - 1)),
        "intervals": dispatch(1.0)})
    as_site.advance(1)
    ven.tick(as_site.now)
    assert as_site.loop.book.as_deployments[deployment_id].deployed_kw == 8000.0, "the newer version stays in force"
    reasons = [r["reason"] for r in ven.status()["rejections"] if r["id"] in (event["id"], deployment_id)]
    assert any("stale" in reason for reason in reasons), reasons
    assert ven.counters["as_stale"] == 1
    assert as_site.loop.counters["as_stale"] == 1, "refused by the site as stale: in /metrics"
    # The newer version read again changes nothing.
    vtn.put_raw_event(newer)
    as_site.advance(1)
    ven.tick(as_site.now)
    assert as_site.loop.book.as_deployments[deployment_id].deployed_kw == 8000.0
    assert ven.counters["as_amendments"] == 1


def test_a_failed_poll_never_drops_a_deployment_in_force(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    program = vtn.create_program("qse-rrs", **program_type("RRS"))
    as_site.tick()
    event = vtn.create_event(deploy_event(program["id"], T0, 2.0))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    source = f"AS:RRS:{event['id']}:0"
    limit_kw = as_site.loop.book.import_limits_at(as_site.now)[source]
    vtn.fail_next(20, 500, "/events")
    for _ in range(3):
        as_site.advance(1)
        ven.tick(as_site.now)
    assert ven.counters["poll_failures"] >= 1 and ven.counters["as_recalls"] == 0
    assert as_site.loop.book.import_limits_at(as_site.now) == {source: limit_kw}
    vtn.recover()
    as_site.advance(1)
    ven.tick(as_site.now)
    assert ven.counters["as_recalls"] == 0 and as_site.loop.book.import_limits_at(as_site.now) == {source: limit_kw}


def test_events_deleted_or_amended_while_the_ven_was_down_are_reconciled_on_restart(  # noqa: F811
        vtn: TestVTN, as_profile, prices, tmp_path: Path) -> None:  # noqa: ANN001, F811
    ecrs = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    rrs = vtn.create_program("qse-rrs", **program_type("RRS"))
    award = vtn.create_event(award_event(ecrs["id"], T0 + timedelta(hours=1), [4.0]))
    shrunk = vtn.create_event(award_event(rrs["id"], T0 + timedelta(hours=1), [2.0, 3.0]))
    gone = vtn.create_event(deploy_event(ecrs["id"], T0, 3.0))
    kept = vtn.create_event(deploy_event(rrs["id"], T0, 2.0))
    box = Site(as_profile, prices)

    def start():  # noqa: ANN202
        """The loop on the same simulated fleet, its book as last committed (a restart)."""
        store = Store(tmp_path / "site.db")
        book, _ = load_control_state(store, as_profile)
        recorder = AuditRecorder(store)
        box.loop = ControlLoop(as_profile, forecaster=ReplayForecaster(as_profile, prices), driver=box.fleet,
                               store=store, book=book, solver=SolveRunner(inline=True), recorder=recorder)
        return store, recorder

    store, recorder = start()
    box.tick()
    ven = as_ven(vtn, box)
    ven.tick(box.now)
    gone_id, kept_id = f"{gone['id']}:0", f"{kept['id']}:0"
    assert set(box.loop.book.import_limits_at(box.now)) == {f"AS:ECRS:{gone_id}", f"AS:RRS:{kept_id}"}
    recorder.close()
    store.close()

    # While the VEN is down the QSE deletes the award and one deployment and raises the other.
    vtn.delete_event(award["id"])
    vtn.delete_event(gone["id"])
    vtn.update_event(kept["id"], intervals=dispatch(4.0))
    vtn.update_event(shrunk["id"], intervals=shrunk["intervals"][:1])  # its second hour is withdrawn
    box.advance(3)
    store, recorder = start()
    box.loop.restore(box.now)
    assert set(box.loop.book.import_limits_at(box.now)) == {f"AS:ECRS:{gone_id}", f"AS:RRS:{kept_id}"}
    vtn.fail_next(20, 500, "/events")  # the VTN is not reachable at first: nothing is dropped
    again = as_ven(vtn, box)
    again.tick(box.now)
    assert again.counters["poll_failures"] >= 1
    assert set(box.loop.book.import_limits_at(box.now)) == {f"AS:ECRS:{gone_id}", f"AS:RRS:{kept_id}"}
    vtn.recover()
    box.advance(1)
    again.tick(box.now)
    book = box.loop.book
    assert list(book.import_limits_at(box.now)) == [f"AS:RRS:{kept_id}"], "the deleted deployment ended"
    assert book.as_deployments[gone_id].recalled and book.as_deployments[gone_id].end == box.now
    assert book.as_deployments[kept_id].deployed_kw == 4000.0, "the one still listed is amended, not redeployed"
    assert book.as_awards[f"{award['id']}:0"]["reserve_kw"] == 0.0, "the deleted award is withdrawn"
    assert [book.as_awards[f"{shrunk['id']}:{k}"]["reserve_kw"] for k in (0, 1)] == [2000.0, 0.0], \
        "the interval removed while the VEN was down is withdrawn, the other kept"
    assert again.counters["as_refused"] == 0, [a.reason for a in again.as_acks]
    box.tick()
    assert box.fleet.load_kw() <= book.import_limits_at(box.now)[f"AS:RRS:{kept_id}"] + 1e-6
    recorder.flush()
    recorder.close()
    assert recorder.failures == 0
    store.close()
    with AuditLog(tmp_path / "site.db", readonly=True) as log:
        recalls = [r.payload for r in log.records("as_deploy") if r.payload["message"]["recalled"]]
        withdrawals = [r.payload for r in log.records("as_award") if r.payload["message"]["reserve_kw"] == 0.0]
    (recall,) = recalls
    assert recall["message"]["deployment_id"] == gone_id and recall["ack"]["status"] == "accepted"
    assert "no longer on the VTN" in recall["note"]
    notes = {w["message"]["award_id"]: w["note"] for w in withdrawals if w["ack"]["status"] == "accepted"}
    assert "no longer on the VTN" in notes[f"{award['id']}:0"]
    assert "interval no longer in the event" in notes[f"{shrunk['id']}:1"] and len(withdrawals) == 2


def test_a_deletion_notified_over_the_webhook_recalls_at_once_with_its_reason(vtn: TestVTN, as_site: Site,  # noqa: F811
                                                                             cert: TestCert) -> None:  # noqa: F811
    program = vtn.create_program("qse-rrs", **program_type("RRS"))
    as_site.tick()
    ven = as_ven(vtn, as_site, webhook=WebhookConfig(bearer_token="hook-secret", ssl_context=cert.server_context()))
    ven.enrol()
    ven.start_webhook()
    ven.subscribe()
    try:
        event = vtn.create_event(deploy_event(program["id"], T0, 2.0))  # CREATE notified: deployed at once
        deployment_id = f"{event['id']}:0"
        assert list(as_site.loop.book.import_limits_at(as_site.now)) == [f"AS:RRS:{deployment_id}"]
        as_site.advance(1)
        vtn.delete_event(event["id"])  # DELETE notified: recalled before any poll
        assert ven.counters["polls"] == 0 and ven.counters["as_recalls"] == 1
        assert as_site.loop.book.import_limits_at(as_site.now) == {}
        assert as_site.loop.as_performance[deployment_id]["end_reason"] == (
            f"OpenADR event {event['id']} deleted (VTN notification)")
    finally:
        ven.stop()


def test_the_vens_refusals_reach_the_audit_trail(vtn: TestVTN, as_profile, prices, tmp_path: Path) -> None:  # noqa: ANN001, F811
    """A stale version refused by the VEN is in the tamper-evident trail with its reason (the
    recorder drops a kind the audit does not know, counting a failure)."""
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    box = Site(as_profile, prices)
    with Store(tmp_path / "site.db") as store:
        recorder = AuditRecorder(store)
        box.loop = ControlLoop(as_profile, forecaster=ReplayForecaster(as_profile, prices), driver=box.fleet,
                               store=store, solver=SolveRunner(inline=True), recorder=recorder)
        box.tick()
        event = vtn.create_event(deploy_event(program["id"], T0, 3.0))
        ven = as_ven(vtn, box)
        ven.tick(box.now)
        vtn.put_raw_event({**event, "modificationDateTime": "2021-01-01T00:00:00Z", "intervals": dispatch(1.0)})
        box.advance(1)
        ven.tick(box.now)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    with AuditLog(tmp_path / "site.db", readonly=True) as log:
        (refusal,) = [r.payload for r in log.records("openadr_rejected")]
        (stale,) = [r.payload for r in log.records("as_deploy") if r.payload["ack"]["status"] == "rejected"]
    assert refusal["id"] == event["id"] and refusal["reason"].startswith("stale: modificationDateTime")
    assert stale["ack"]["reason"].endswith("(stale)") and stale["note"] == f"OpenADR event {event['id']}: stale version"


def test_reconciliation_when_the_vtn_modified_an_event_in_the_second_it_created_it(  # noqa: F811
        vtn: TestVTN, as_profile, prices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001, F811
    """The clean-clone CI ran the restart test fast enough that the VTN created and modified the
    kept deployment's event within one second: ``modificationDateTime`` has whole seconds, so the
    amendment carried the revision in force and the book refused it as a repeat (2 MW kept, not
    4). Every create and update in the same second here; the amendment still lands."""
    import openadr_vtn

    fixed = openadr_vtn._now_iso()
    monkeypatch.setattr(openadr_vtn, "_now_iso", lambda: fixed)
    test_events_deleted_or_amended_while_the_ven_was_down_are_reconciled_on_restart(vtn, as_profile, prices, tmp_path)
