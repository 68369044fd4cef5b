"""AS deployment intake faults from the last review (issue 15): a reduction is never late, and a
recall that overtakes its deployment is kept (durably) and applied when the deployment arrives.

Through ``ControlLoop.handle_as_deploy`` with a real store, the real audit recorder, real HTTP
/metrics and the restart path (``load_control_state``). The site (SYNTHETIC test data) is
test_as_deployment_semantics's: 10 hydro blocks of 1 MW, 10 kW asleep; an RRS award of 4,950 kW keeps
5 blocks running (modelled import 5,050 kW); RRS must be deployed within 600 s.
"""

from __future__ import annotations

import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hashflex.audit import AuditLog
from hashflex.control.daemon import load_control_state
from hashflex.control.http import StatusServer
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store

PROFILE = """
site: {name: AS Intake Order, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
grid: {import_limit_kw: 20000}
miner_groups:
  - id: hydro
    model: container
    units: 10
    cooling: hydro
    idle_power_kw: 10
    modes: [{name: run, power_kw: 1000, hashrate_th_s: 33333.333, sound_power_dba: 100}]
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
ancillary:
  issuer: qse-test
  groups: {hydro: {response_s: 0.5, under_frequency_relay: true}}
  products:
    RRS: {group_mw: {hydro: 5}, expected_deployments_per_month: 0}
"""
NOW = pd.Timestamp("2024-06-03T17:00Z").to_pydatetime()
MIN = timedelta(minutes=1)


def _prices() -> pd.DataFrame:
    """SYNTHETIC flat $200/MWh, RT and DA."""
    starts = pd.date_range("2024-06-01T00:00Z", "2024-06-05T00:00Z", freq="15min", inclusive="left")
    return pd.concat([pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                                    "settlement_point": "HB_WEST", "market": market, "price_usd_mwh": 200.0})
                      for market in ("RT", "DA")], ignore_index=True)


def _profile(extra: str = ""):
    return parse_profile(PROFILE + extra, source="test")


def _deploy(deployment_id: str, issued_at: datetime, kw: float = 0.0, revision: int = 0,
            recalled: bool = False) -> ASDeployMessage:
    return ASDeployMessage(deployment_id=deployment_id, revision=revision, product="RRS", issued_at=issued_at,
                           deployed_kw=kw, recalled=recalled, issuer="qse-test")


def _loop(profile=None, store: Store | None = None, recorder: AuditRecorder | None = None,
          book: LimitsBook | None = None, award: bool = True) -> ControlLoop:
    profile = profile or _profile()
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                       solver=SolveRunner(inline=True), store=store, recorder=recorder, book=book)
    if award:
        award_msg = ASAwardMessage(award_id="rrs", product="RRS", start=NOW - timedelta(hours=1),
                                   end=NOW + timedelta(hours=3), reserve_kw=4950.0, price_usd_mw_h=20.0,
                                   issuer="qse-test")
        assert loop.handle_as_award(award_msg, NOW).status == "accepted"
    loop.tick(NOW)
    assert _running(loop) == 5
    return loop


def _running(loop: ControlLoop) -> int:
    return sum(loop.driver.running().values())


def _metrics(loop: ControlLoop, at: datetime) -> str:
    server = StatusServer(lambda now: loop.status(now), lambda: at, port=0)  # real HTTP on 127.0.0.1
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}metrics", timeout=10) as answer:
            return answer.read().decode()
    finally:
        server.stop()


def _records(db: Path, kind: str) -> list[dict]:
    with AuditLog(db, readonly=True) as log:
        return [r.payload for r in log.records(kind)]


# ---------------------------------------------------------------------------------------------- 1


def test_a_reduction_arriving_after_the_first_deadline_is_not_late(tmp_path: Path) -> None:
    """RRS 3,960 kW at 17:03 (deadline 17:13), met at once. At 17:15 the QSE amends it down to 1,980 kW
    (revision 1): it keeps the first deadline (it binds from receipt), and a reduction has no deadline
    to meet, so it is not late: not in the ack, not counted, not in the audit record. An increase
    arriving after its own deadline still is."""
    db = tmp_path / "r.db"
    issued = NOW + 3 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(store=store, recorder=recorder)
        first = loop.handle_as_deploy(_deploy("d", issued, 3960.0), issued + timedelta(seconds=2))
        assert first.status == "accepted" and first.late is False
        assert _running(loop) == 1
        at = NOW + 15 * MIN
        ack = loop.handle_as_deploy(_deploy("d", at, 1980.0, revision=1), at)
        assert ack.status == "accepted", ack.reason
        assert ack.deadline == issued + timedelta(seconds=600), "a reduction keeps the first deadline"
        assert ack.late is False and ack.late_by_s == 0.0, ack.reason
        assert "late" not in ack.reason and "binds from receipt" in ack.reason, ack.reason
        assert loop.counters.get("as_late", 0) == 0
        performance = loop.as_performance["d"]
        assert performance["late"] is False
        assert performance["commanded_within_deadline"] is True, "no deadline to miss"
        # The first reading after the reduction's receipt is its assessment (its deadline is past).
        loop.measure_as_deployments(3070.0, at + timedelta(seconds=5))
        assert performance["measured_import_kw"] == pytest.approx(3070.0)
        assert performance["measured_shortfall_kw"] == pytest.approx(0.0)
        # An increase arriving 660 s after its instruction is late (its deadline is from its own time).
        up_at = NOW + 20 * MIN
        up = loop.handle_as_deploy(_deploy("d", up_at, 2970.0, revision=2), up_at + 11 * MIN)
        assert up.status == "accepted" and up.late is True and up.late_by_s == pytest.approx(60.0), up.reason
        assert loop.counters["as_late"] == 1
        assert 'hashflex_events_total{counter="as_late"} 1.0' in _metrics(loop, up_at + 11 * MIN)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    acks = [r["ack"] for r in _records(db, "as_deploy") if r["message"]["deployment_id"] == "d"]
    assert [a["late"] for a in acks] == [False, False, True]


# ---------------------------------------------------------------------------------------------- 2


def test_a_recall_that_overtakes_its_deployment_is_kept_across_a_restart_and_ends_it(tmp_path: Path) -> None:
    """The recall of ``over`` (instructed 17:05) arrives before the deployment (instructed 17:04, a
    QoS 1 redelivery after a reconnect). It used to be refused ("no deployment to recall") and the
    deployment then held 8 h. Now the recall is accepted as pending once durable, survives a restart,
    and the deployment arriving at 17:06 ends at 17:05: the site is not cut; audited and counted."""
    db = tmp_path / "o.db"
    profile = _profile()
    recall_at = NOW + 5 * MIN
    issued = NOW + 4 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(profile, store, recorder)
        ack = loop.handle_as_deploy(_deploy("over", recall_at, recalled=True), recall_at)
        assert ack.status == "accepted", ack.reason
        assert "no deployment yet" in ack.reason and "issued at or before the recall" in ack.reason, ack.reason
        assert loop.counters["as_recall_early"] == 1
        assert 'hashflex_events_total{counter="as_recall_early"} 1.0' in _metrics(loop, recall_at)
        # A restart resumes the pending recall from the committed book (it was durable before the ack).
        book, _ = load_control_state(store, profile)
        restarted = _loop(profile, store, recorder, book=book, award=False)
        arrived = NOW + 6 * MIN
        dep = restarted.handle_as_deploy(_deploy("over", issued, 3960.0), arrived)
        assert dep.status == "accepted", dep.reason
        assert "recall" in dep.reason and recall_at.isoformat() in dep.reason, dep.reason
        deployment = restarted.book.as_deployments["over"]
        assert deployment.recalled and deployment.end == recall_at
        assert "AS:RRS:over" not in restarted.book.import_limits_at(arrived)
        assert _running(restarted) == 5, "ended before it arrived: nothing is shed"
        assert restarted.counters["as_recall_early_ended"] == 1
        assert restarted.counters.get("as_late", 0) == 0
        assert "over" not in restarted.book.as_early_recalls, "applied: the note is spent"
        # The recall redelivered gets its first answer; it does not end anything else.
        again = restarted.handle_as_deploy(_deploy("over", recall_at, recalled=True), arrived)
        assert again.reason == ack.reason
        restarted.tick(arrived + MIN)
        assert _running(restarted) == 5
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    deploys = _records(db, "as_deploy")
    assert [r["message"]["recalled"] for r in deploys if r["message"]["deployment_id"] == "over"][:2] == [True, False]
    ended = [p for p in _records(db, "as_performance") if p.get("deployment_id") == "over"]
    assert ended and ended[-1]["ended_at"] == recall_at.isoformat()
    assert "recall" in ended[-1]["end_reason"] and recall_at.isoformat() in ended[-1]["end_reason"]


def test_a_deployment_issued_after_an_early_recall_is_a_new_instruction_and_holds() -> None:
    """The recall (17:05) is older than the deployment arriving after it (instructed 17:06): the
    deployment holds, and its ack says the older recall was not applied."""
    loop = _loop()
    recall_at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("new", recall_at, recalled=True), recall_at).status == "accepted"
    issued = NOW + 6 * MIN
    ack = loop.handle_as_deploy(_deploy("new", issued, 3960.0), issued)
    assert ack.status == "accepted" and ack.import_limit_kw == pytest.approx(1090.0), ack.reason
    assert "older" in ack.reason, ack.reason
    assert not loop.book.as_deployments["new"].recalled
    assert loop.book.import_limits_at(issued + 30 * MIN)["AS:RRS:new"] == pytest.approx(1090.0)
    assert _running(loop) == 1
    assert loop.counters.get("as_recall_early_ended", 0) == 0
    assert "new" not in loop.book.as_early_recalls
    # Its own recall later ends it as usual.
    later = NOW + 40 * MIN
    assert loop.handle_as_deploy(_deploy("new", later, recalled=True), later).status == "accepted"
    assert "AS:RRS:new" not in loop.book.import_limits_at(later)


def test_an_early_recall_not_made_durable_is_refused_and_the_deployment_holds(tmp_path: Path) -> None:
    """Store failure: the pending recall cannot be kept, so it is refused (``store_unavailable``, not
    accepted) and nothing remembers it: the deployment arriving next holds (when in doubt, curtail)."""
    with Store(tmp_path / "f.db") as store:
        loop = _loop(store=store)
        recall_at = NOW + 5 * MIN
        store.fail_commits("database or disk is full")
        ack = loop.handle_as_deploy(_deploy("x", recall_at, recalled=True), recall_at)
        assert ack.status == "rejected" and ack.reason.startswith("store_unavailable"), ack.reason
        assert "x" not in loop.book.as_early_recalls
        store.fail_commits(None)
        assert loop.handle_as_deploy(_deploy("x", NOW + 4 * MIN, 3960.0), NOW + 6 * MIN).status == "accepted"
        assert "AS:RRS:x" in loop.book.import_limits_at(NOW + 7 * MIN)


def test_pending_recalls_are_bounded_by_max_hold_h_and_a_count() -> None:
    """A pending recall is kept only while a deployment it could end could still be in force (the
    backstop, ``max_hold_h`` from the recall) and at most ``EARLY_RECALLS_KEPT`` of them (the oldest
    are dropped first: a forgotten note lets a deployment hold, the safe side)."""
    from hashflex.control.limits_ancillary import EARLY_RECALLS_KEPT

    profile = _profile("  max_hold_h: 3\n")
    book = LimitsBook(profile)
    book, ack = book.decide_as_deploy(_deploy("a", NOW, recalled=True), 0.0, NOW)
    assert ack.status == "accepted" and "a" in book.as_early_recalls
    assert "a" in LimitsBook.from_dict(book.to_dict(), profile).as_early_recalls, "durable"
    later = NOW + timedelta(hours=3, seconds=1)
    book, _ = book.decide_as_deploy(_deploy("b", later, recalled=True), 0.0, later)
    assert set(book.as_early_recalls) == {"b"}
    for k in range(EARLY_RECALLS_KEPT + 5):
        book, _ = book.decide_as_deploy(_deploy(f"n{k}", later, recalled=True), 0.0, later)
    assert len(book.as_early_recalls) == EARLY_RECALLS_KEPT
    assert "b" not in book.as_early_recalls and f"n{EARLY_RECALLS_KEPT + 4}" in book.as_early_recalls


def test_of_two_pending_recalls_the_one_at_or_after_the_deployment_ends_it() -> None:
    """Two recalls of ``two`` overtake it (17:02 and 17:05: e.g. one by MQTT, one by a deleted OpenADR
    event). The deployment instructed at 17:04 is issued at or before the 17:05 recall, so that recall
    ends it, whatever the earlier one says."""
    loop = _loop()
    for at in (NOW + 2 * MIN, NOW + 5 * MIN):
        assert loop.handle_as_deploy(_deploy("two", at, recalled=True), at).status == "accepted"
    arrived = NOW + 6 * MIN
    ack = loop.handle_as_deploy(_deploy("two", NOW + 4 * MIN, 3960.0), arrived)
    assert ack.status == "accepted", ack.reason
    deployment = loop.book.as_deployments["two"]
    assert deployment.recalled and deployment.end == NOW + 5 * MIN, ack.reason
    assert "AS:RRS:two" not in loop.book.import_limits_at(arrived)


def test_an_early_recall_does_not_lift_a_newer_deployment_held_in_memory(tmp_path: Path) -> None:
    """A deployment instructed 17:06 could not be committed (store full): the site holds its cut in
    memory. A recall dated 17:05 then arrives (it was overtaken); it is older than the deployment held,
    so the cut stays (when in doubt, curtail); the resent deployment holds, durable."""
    with Store(tmp_path / "h.db") as store:
        loop = _loop(store=store)
        store.fail_commits("database or disk is full")
        ack = loop.handle_as_deploy(_deploy("n", NOW + 6 * MIN, 3960.0), NOW + 6 * MIN)
        assert ack.status == "rejected" and _running(loop) == 1
        store.fail_commits(None)
        recall = loop.handle_as_deploy(_deploy("n", NOW + 5 * MIN, recalled=True), NOW + 7 * MIN)
        assert recall.status == "accepted", recall.reason
        loop.tick(NOW + 8 * MIN)
        assert _running(loop) == 1, "the newer instruction's cut is not lifted by an older recall"
        again = loop.handle_as_deploy(_deploy("n", NOW + 6 * MIN, 3960.0), NOW + 9 * MIN)
        assert again.status == "accepted" and not loop.book.as_deployments["n"].recalled, again.reason
        assert "AS:RRS:n" in loop.book.import_limits_at(NOW + 10 * MIN)
