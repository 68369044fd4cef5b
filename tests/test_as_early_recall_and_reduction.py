"""Two AS deployment-intake faults (issue 15, left by the last review), through a real ``ControlLoop``
(inline HiGHS solves, a ``SimulatedFleet``), a real SQLite store and a restart via
``load_control_state``:

1. an amendment asking FEWER MW, arriving after the first revision's deadline, was flagged late
   (``as_late``, ack ``late``): a reduction has no deadline to meet (it binds from receipt);
2. a recall that overtook its deployment (QoS 1 redelivery order; a lost deployment resent) was
   refused ("no deployment to recall"), and the deployment arriving afterwards then held until the
   backstop. The recall is now kept durably as pending and applied when the deployment arrives.

The site (SYNTHETIC test data): 10 hydro blocks of 1 MW, 10 kW each asleep, energy at $200/MWh
(above breakeven: only an award keeps a block running). An RRS award of 4,950 kW keeps 5 blocks
running: 5,050 kW. RRS's deadline is 600 s from the instruction.
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
site: {name: AS Early Recall, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
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
SEC = timedelta(seconds=1)


def _prices() -> pd.DataFrame:
    """SYNTHETIC flat $200/MWh, RT and DA."""
    starts = pd.date_range("2024-06-01T00:00Z", "2024-06-05T00:00Z", freq="15min", inclusive="left")
    return pd.concat([pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                                    "settlement_point": "HB_WEST", "market": market, "price_usd_mwh": 200.0})
                      for market in ("RT", "DA")], ignore_index=True)


def _deploy(deployment_id: str, issued_at: datetime, kw: float = 0.0, revision: int = 0,
            recalled: bool = False) -> ASDeployMessage:
    return ASDeployMessage(deployment_id=deployment_id, revision=revision, product="RRS", issued_at=issued_at,
                           deployed_kw=kw, recalled=recalled, issuer="qse-test")


def _loop(profile=None, store: Store | None = None, recorder: AuditRecorder | None = None,
          book: LimitsBook | None = None, award: bool = True) -> ControlLoop:
    profile = profile or parse_profile(PROFILE, source="test")
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


def test_a_reduction_arriving_after_the_first_deadline_is_not_late_and_binds_from_receipt(tmp_path: Path) -> None:
    """RRS 3,960 kW at 17:05 (deadline 17:15), cut to 1 block. Its revision 1 asks 1,980 kW, instructed
    and received at 17:20, after the first deadline: a reduction has no deadline to meet, so it is
    neither flagged nor counted late; the ack says it binds from receipt; the site may run 3 blocks."""
    db = tmp_path / "r.db"
    at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(store=store, recorder=recorder)
        first = loop.handle_as_deploy(_deploy("cut", at, 3960.0), at)
        assert first.status == "accepted" and first.late is False
        assert _running(loop) == 1
        later = at + 15 * MIN
        ack = loop.handle_as_deploy(_deploy("cut", later, 1980.0, revision=1), later)
        assert ack.status == "accepted", ack.reason
        assert ack.late is not True and not ack.late_by_s, ack
        assert "late" not in ack.reason, ack.reason
        assert "binds from receipt" in ack.reason, ack.reason
        assert ack.import_limit_kw == pytest.approx(5050.0 - 1980.0)
        assert loop.book.as_deployments["cut"].deadline == at + 600 * SEC, "the first deadline is kept"
        assert loop.counters.get("as_late", 0) == 0
        performance = loop.as_performance["cut"]
        assert performance.get("late") is not True
        assert 'counter="as_late"' not in _metrics(loop, later)
        loop.tick(later + SEC)
        assert _running(loop) == 3
        recorder.flush()
        recorder.close()
    deploys = [p for p in _records(db, "as_deploy") if p["message"]["revision"] == 1]
    assert len(deploys) == 1 and deploys[0]["ack"]["late"] is not True
    assert all(p.get("late") is not True for p in _records(db, "as_performance") if p.get("revision") == 1)


def test_an_increase_arriving_after_its_own_deadline_is_still_late() -> None:
    """The rule keeps what is right: more MW has a deadline (from the amendment's time), and one
    received after it is flagged late."""
    loop = _loop()
    at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("up", at, 1980.0), at).status == "accepted"
    issued = at + MIN
    ack = loop.handle_as_deploy(_deploy("up", issued, 3960.0, revision=1), issued + 11 * MIN)
    assert ack.status == "accepted" and ack.late is True and ack.late_by_s == pytest.approx(60.0)
    assert loop.counters["as_late"] == 1


# ---------------------------------------------------------------------------------------------- 2


def test_a_recall_that_overtook_its_deployment_is_kept_durably_and_ends_it_across_a_restart(tmp_path: Path) -> None:
    """The recall of ``lost`` (instructed 17:05) arrives first: accepted as pending, durable before the
    ack, counted (``as_recall_early``). After a restart, the deployment (instructed 17:04:30, resent)
    arrives at 17:06: it ended at the recall, so nothing is cut and it does not hold to the backstop."""
    db = tmp_path / "e.db"
    profile = parse_profile(PROFILE, source="test")
    recall_at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(profile, store, recorder)
        ack = loop.handle_as_deploy(_deploy("lost", recall_at, recalled=True), recall_at + SEC)
        assert ack.status == "accepted", ack.reason
        assert "no deployment yet" in ack.reason and "issued at or before the recall" in ack.reason, ack.reason
        assert loop.counters["as_recall_early"] == 1
        assert 'hashflex_events_total{counter="as_recall_early"} 1.0' in _metrics(loop, recall_at)
        book, _ = load_control_state(store, profile)  # committed before the ack
        restarted = _loop(profile, store, recorder, book=book, award=False)
        restarted.tick(recall_at + 30 * SEC)
        assert _running(restarted) == 5
        arrived = NOW + 6 * MIN
        issued = recall_at - 30 * SEC
        late_ack = restarted.handle_as_deploy(_deploy("lost", issued, 3960.0), arrived)
        assert late_ack.status == "accepted", late_ack.reason
        assert "recalled" in late_ack.reason and recall_at.isoformat() in late_ack.reason, late_ack.reason
        deployment = restarted.book.as_deployments["lost"]
        assert deployment.recalled and deployment.end == recall_at
        for t in (arrived, arrived + MIN, issued + timedelta(hours=2)):
            assert "AS:RRS:lost" not in restarted.book.import_limits_at(t), t
        assert _running(restarted) == 5, "ended before it arrived: nothing to cut"
        restarted.tick(arrived + SEC)
        assert _running(restarted) == 5
        assert restarted.counters["as_recall_early_ended"] == 1
        assert 'hashflex_events_total{counter="as_recall_early_ended"} 1.0' in _metrics(restarted, arrived)
        assert "lost" not in load_control_state(store, profile)[0].as_early_recalls, "the note is used once"
        recorder.flush()
        recorder.close()
    acks = [p["ack"] for p in _records(db, "as_deploy") if p["message"]["deployment_id"] == "lost"]
    assert [a["status"] for a in acks] == ["accepted", "accepted"]
    ended = [p for p in _records(db, "as_performance") if p.get("deployment_id") == "lost"]
    assert ended and ended[-1]["ended_at"] == recall_at.isoformat() and "recall" in ended[-1]["end_reason"]


def test_a_recall_that_overtook_its_deployment_before_it_bound_cancels_it() -> None:
    """Recall dated 17:05; the deployment, dated 17:05 too but arriving 17:04:50 would bind from arrival;
    here it arrives later (17:05:20) dated at the recall: it binds nothing (cancelled)."""
    loop = _loop()
    recall_at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("same", recall_at, recalled=True), recall_at + SEC).status == "accepted"
    ack = loop.handle_as_deploy(_deploy("same", recall_at, 3960.0), recall_at + 20 * SEC)
    assert ack.status == "accepted" and "cancelled" in ack.reason, ack.reason
    deployment = loop.book.as_deployments["same"]
    assert deployment.end == deployment.binds_from
    assert _running(loop) == 5


def test_a_deployment_issued_after_an_early_recall_is_a_new_instruction_and_holds() -> None:
    """The recall (17:05) is older than the deployment (17:06): the deployment holds and is cut."""
    loop = _loop()
    recall_at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("again", recall_at, recalled=True), recall_at + SEC).status == "accepted"
    issued = NOW + 6 * MIN
    ack = loop.handle_as_deploy(_deploy("again", issued, 3960.0), issued + SEC)
    assert ack.status == "accepted" and "older" in ack.reason, ack.reason
    assert ack.import_limit_kw == pytest.approx(5050.0 - 3960.0)
    assert not loop.book.as_deployments["again"].recalled
    assert loop.book.import_limits_at(issued + timedelta(hours=2))["AS:RRS:again"] == pytest.approx(1090.0)
    assert _running(loop) == 1
    assert loop.counters["as_recall_early_older"] == 1 and loop.counters.get("as_recall_early_ended", 0) == 0
    assert "again" not in loop.book.as_early_recalls
    # Its own recall ends it as any recall does.
    end_at = issued + 20 * MIN
    assert loop.handle_as_deploy(_deploy("again", end_at, recalled=True), end_at).status == "accepted"
    assert "AS:RRS:again" not in loop.book.import_limits_at(end_at)


def test_an_early_recall_is_accepted_only_once_durable(tmp_path: Path) -> None:
    """A store that cannot commit: the pending recall is refused (store_unavailable), not acked."""
    with Store(tmp_path / "f.db") as store:
        loop = _loop(store=store)
        store.fail_commits("database or disk is full")
        at = NOW + 5 * MIN
        ack = loop.handle_as_deploy(_deploy("x", at, recalled=True), at)
        assert ack.status == "rejected" and ack.reason.startswith("store_unavailable"), ack.reason
        assert "x" not in loop.book.as_early_recalls
        assert loop.counters.get("as_recall_early", 0) == 0


def test_early_recalls_are_bounded_by_the_backstop_and_a_count() -> None:
    """Notes older than ``max_hold_h`` are dropped (a deployment issued before them has reached its
    backstop), and at most ``EARLY_RECALLS_KEPT`` are kept, the oldest dropped first."""
    from hashflex.control.limits_ancillary import EARLY_RECALLS_KEPT

    profile = parse_profile(PROFILE, source="test")
    book = LimitsBook(profile)
    old = NOW - timedelta(hours=9)
    book, ack = book.decide_as_deploy(_deploy("old", old, recalled=True), 0.0, old)
    assert ack.status == "accepted" and "old" in book.as_early_recalls
    book, _ = book.decide_as_deploy(_deploy("new", NOW, recalled=True), 0.0, NOW)
    assert set(book.as_early_recalls) == {"new"}, "the 9 h old note is past the 8 h backstop"
    for k in range(EARLY_RECALLS_KEPT + 5):
        book, _ = book.decide_as_deploy(_deploy(f"n{k}", NOW, recalled=True), 0.0, NOW + k * SEC)
    assert len(book.as_early_recalls) == EARLY_RECALLS_KEPT
    assert "new" not in book.as_early_recalls and f"n{EARLY_RECALLS_KEPT + 4}" in book.as_early_recalls
    restored = LimitsBook.from_dict(book.to_dict(), profile)
    assert restored.as_early_recalls == book.as_early_recalls


def test_of_two_early_recalls_the_first_at_or_after_the_deployment_ends_it() -> None:
    """Recalls of ``two`` at 17:02 and 17:05 overtake it; the deployment instructed at 17:04 is ended
    by the 17:05 one (the 17:02 recall is older than it)."""
    loop = _loop()
    for at in (NOW + 2 * MIN, NOW + 5 * MIN):
        assert loop.handle_as_deploy(_deploy("two", at, recalled=True), at).status == "accepted"
    arrived = NOW + 6 * MIN
    assert loop.handle_as_deploy(_deploy("two", NOW + 4 * MIN, 3960.0), arrived).status == "accepted"
    deployment = loop.book.as_deployments["two"]
    assert deployment.recalled and deployment.end == NOW + 5 * MIN
    assert "AS:RRS:two" not in loop.book.import_limits_at(arrived) and _running(loop) == 5
