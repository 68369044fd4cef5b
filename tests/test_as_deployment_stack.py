"""AS deployments as limits in the book (issue 15, a fresh newcomer review, H2): stacked deployments,
the limit acked vs the limit enforced, the overrun audited when it is seen, /status after a restart,
a baseline taken with stale telemetry, the first interval after a start, and the trail's ``at_utc``.

Through a real ``ControlLoop`` (inline HiGHS solves, a ``SimulatedFleet``) and a real store and
audit trail; /status over real HTTP on 127.0.0.1. The site and prices are
test_as_deployment_semantics' (SYNTHETIC): 10 hydro blocks of 1 MW, 10 kW each asleep (a block
sheds 990 kW), energy at $200/MWh (above breakeven: only an award keeps a block running); with n
blocks running the modelled import is 990 n + 100 kW.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hashflex.audit import AuditLog
from hashflex.control.ancillary import instruction_baseline
from hashflex.control.daemon import load_control_state
from hashflex.control.http import StatusServer
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder, IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage, TelemetryMessage
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store
from tests.as_support import hydro_profile_yaml
from tests.test_as_baseline_measured import SMALL
from tests.test_as_deployment_semantics import (
    MIN,
    NOW,
    _award,
    _awarded_loop,
    _deploy,
    _loop,
    _prices,
    _profile,
    _running,
)


def _status_http(loop, at: datetime) -> dict:
    """``/status`` over real HTTP on 127.0.0.1."""
    server = StatusServer(lambda now: loop.status(now), lambda: at, port=0)
    server.start()
    try:
        with urllib.request.urlopen(f"{server.url}status", timeout=10) as answer:
            return json.loads(answer.read().decode())
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- 1


def test_stacked_deployments_add_up_and_a_recall_gives_back_exactly_its_mw() -> None:
    """RRS 4,950 kW awarded: 5 blocks, 5,050 kW. Deployment A sheds 1,980 kW at 17:05 (limit 3,070 kW,
    3 blocks); B sheds 990 kW at 17:07, from the load the site would draw without A (3,070 + 1,980 =
    5,050 kW): together 2,970 kW shed, limit 2,080 kW (2 blocks). A recalled at 17:10 gives back
    exactly its 1,980 kW: B's limit is 5,050 − 990 = 4,060 kW (4 blocks). Before the fix B's baseline
    was the already-cut 3,070 kW, so after A's recall its limit stayed at 2,080 kW, 2,970 kW below the
    starting load with 990 kW deployed."""
    loop = _awarded_loop()
    a_at, b_at, recall_at = NOW + 5 * MIN, NOW + 7 * MIN, NOW + 10 * MIN
    ack_a = loop.handle_as_deploy(_deploy("A", a_at, 1980.0), a_at)
    assert ack_a.import_limit_kw == pytest.approx(3070.0), ack_a
    assert _running(loop) == 3
    ack_b = loop.handle_as_deploy(_deploy("B", b_at, 990.0), b_at)
    assert ack_b.status == "accepted", ack_b.reason
    assert loop.book.as_deployments["B"].stacked_baseline_kw == pytest.approx(5050.0)
    assert loop.book.as_deployments["B"].held_at_instruction_kw == pytest.approx(1980.0)
    assert "from 5050 kW (modelled: 3070 kW drawn + 1980 kW held by A in force)" in ack_b.reason, ack_b.reason
    limits = loop.book.import_limits_at(b_at)
    assert min(limits.values()) == pytest.approx(5050.0 - 1980.0 - 990.0)  # they add up
    assert ack_b.import_limit_kw == pytest.approx(limits["AS:RRS:B"])  # the ack is the enforced limit
    assert _running(loop) == 2
    assert loop.handle_as_deploy(_deploy("A", recall_at, recalled=True), recall_at).status == "accepted"
    limits = loop.book.import_limits_at(recall_at)
    assert "AS:RRS:A" not in limits
    assert limits["AS:RRS:B"] == pytest.approx(2080.0 + 1980.0)  # raised by exactly A's MW
    # The plan's view over the interval agrees, and a restart keeps the rule.
    over, labels = loop.book.import_limits_over([recall_at + 5 * MIN], timedelta(minutes=5))
    assert float(over[0]) == pytest.approx(4060.0) and labels[0] == "AS:RRS:B"
    restored = LimitsBook.from_dict(loop.book.to_dict(), loop.profile)
    assert restored.import_limits_at(recall_at)["AS:RRS:B"] == pytest.approx(4060.0)
    assert restored.import_limits_at(b_at + MIN)["AS:RRS:B"] == pytest.approx(2080.0)
    loop.tick(recall_at + MIN)
    assert _running(loop) == 4


def test_a_deployment_before_the_cut_reached_the_load_stacks_on_the_pre_cut_load() -> None:
    """B's baseline is capped at the load drawn before the deployments in force (A's baseline): a
    cut that left load it could not shed (idle draw) does not inflate B's baseline. A asks 4,990 kW
    (limit 60 kW; the cut leaves the 100 kW of idle draw); B (990 kW) then stacks on 5,050 kW, not on
    100 + 4,990 = 5,090 kW. RRS qualified for 10 MW here: 4,990 + 990 kW in force together is more than
    the default 5 MW, which the intake refuses (H10); the subject is the stacked baseline."""
    loop = _awarded_loop(parse_profile(hydro_profile_yaml("AS Semantics", qualified_mw={"RRS": 10}), source="test"))
    a_at, b_at = NOW + 5 * MIN, NOW + 6 * MIN
    assert loop.handle_as_deploy(_deploy("A", a_at, 4990.0), a_at).import_limit_kw == pytest.approx(60.0)
    assert loop.handle_as_deploy(_deploy("B", b_at, 990.0), b_at).status == "accepted"
    assert loop.book.as_deployments["B"].stacked_baseline_kw == pytest.approx(5050.0)
    recall_at = b_at + MIN
    loop.handle_as_deploy(_deploy("A", recall_at, recalled=True), recall_at)
    assert loop.book.import_limits_at(recall_at)["AS:RRS:B"] == pytest.approx(4060.0)


# ---------------------------------------------------------------------------------------------- 2


def test_an_award_started_between_instruction_and_arrival_is_in_the_acked_and_the_enforced_limit() -> None:
    """Nothing awarded before 17:10; RRS 990 kW awarded 17:10–20:00 (1 block,
    1,090 kW). A deployment of 990 kW instructed at 17:08 arrives at 17:12, after the award started.
    Before the fix A₀ was counted at 17:08 (0 kW): the ack said "to 100 kW" while the book enforced
    100 + 990 = 1,090 kW and nothing was shed. The load drawn at arrival already carries the award,
    so A₀ counts it: ack and book say 100 kW, and the block sleeps."""
    loop = _loop()
    start = NOW + 10 * MIN
    assert loop.handle_as_award(_award("rrs", "RRS", 990.0, start=start), NOW).status == "accepted"
    loop.tick(start)
    assert _running(loop) == 1
    issued, arrived = NOW + 8 * MIN, NOW + 12 * MIN
    ack = loop.handle_as_deploy(_deploy("late", issued, 990.0), arrived)
    assert ack.status == "accepted", ack.reason
    enforced = loop.book.import_limits_at(arrived)["AS:RRS:late"]
    assert ack.import_limit_kw == pytest.approx(enforced)
    assert enforced == pytest.approx(100.0)
    assert "to 100 kW" in ack.reason
    assert _running(loop) == 0
    assert loop.book.as_deployments["late"].awarded_at_instruction_kw == pytest.approx(990.0)


# ---------------------------------------------------------------------------------------------- 3


def _records(db: Path, kind: str) -> list[dict]:
    with AuditLog(db, readonly=True) as log:
        return [r.payload for r in log.records(kind)]


def test_an_overrun_is_audited_by_the_check_that_shows_it(tmp_path: Path) -> None:
    """RRS deployed at 17:05 for 3,960 kW and never recalled: a minute past RRS's sustained duration
    (``AS_PRODUCT_RULES``), /status (real HTTP) shows it ``overrun``. Before the fix the audit record
    and the ``as_overrun`` counter came only with the next interval's tick; now the same check
    records it, once."""
    db = tmp_path / "o.db"
    at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(_profile(), store, recorder)
        assert loop.handle_as_deploy(_deploy("long", at, 3960.0), at).status == "accepted"
        sustain_until = loop.book.as_deployments["long"].sustain_until
        loop.tick(sustain_until - 5 * MIN)
        assert loop.counters.get("as_overrun", 0) == 0
        seen = sustain_until + MIN
        status = _status_http(loop, seen)
        (shown,) = [d for d in status["limits"]["as_deployments"] if d["deployment_id"] == "long"]
        assert shown["overrun"] is True
        assert status["counters"]["as_overrun"] == 1
        recorder.flush()
        overruns = [p for p in _records(db, "as_performance") if p.get("event") == "overrun"]
        assert [p["deployment_id"] for p in overruns] == ["long"]
        _status_http(loop, seen + MIN)
        loop.tick(seen + 10 * MIN)
        recorder.flush()
        assert len([p for p in _records(db, "as_performance") if p.get("event") == "overrun"]) == 1, "once"
        recorder.close()


# ---------------------------------------------------------------------------------------------- 4


def test_status_as_performance_is_rebuilt_from_the_store_after_a_kill(tmp_path: Path) -> None:
    """A deployment in force, the process killed (nothing closed: its last records were written,
    its memory lost), a new loop on the same store restores the book and re-asserts the limit. Before
    the fix /status ``as_performance`` was empty while the deployment held; now it is the trail's last
    record of it. A deployment whose record never reached the trail is rebuilt from the book."""
    db = tmp_path / "k.db"
    profile = _profile()
    at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(profile, store, recorder)
        assert loop.handle_as_deploy(_deploy("kept", at, 1980.0), at).status == "accepted"
        recorder.flush()  # written before the kill
        expected = dict(loop.as_performance["kept"])
        # A second deployment whose record was still queued when the process died: not in the trail.
        lost = loop.book.as_deployments["kept"].__class__.from_json(
            {**loop.book.as_deployments["kept"].to_json(), "deployment_id": "lost", "deployed_kw": 990.0})
        loop.book.as_deployments["lost"] = lost
        loop._commit_book(loop.book)
        # kill -9: no close, no flush of anything queued afterwards; a new process on the same store.
        book, _ = load_control_state(store, profile)
        restarted = _loop(profile, store, AuditRecorder(store), book=book)
        restarted.restore(at + 2 * MIN).result(timeout=10)
        status = _status_http(restarted, at + 3 * MIN)
        shown = {p["deployment_id"]: p for p in status["as_performance"]}
        assert set(shown) == {"kept", "lost"}
        assert shown["kept"]["restored_from"] == "audit trail"
        for key in ("baseline_kw", "limit_kw", "obligation_kw", "delivered_kw", "deadline", "issued_at"):
            assert shown["kept"][key] == expected[key], key
        assert shown["lost"]["restored_from"] == "limits book"
        assert shown["lost"]["obligation_kw"] == pytest.approx(990.0)
        assert shown["lost"]["measured_response_s"] is None
        recorder.close()


# ---------------------------------------------------------------------------------------------- 5


def test_a_stale_reading_caps_the_instruction_baseline_so_no_credit_is_invented() -> None:
    """The rule (``instruction_baseline``): with telemetry 232 s old (the guard trusts 120 s) the
    baseline is min(modelled, last metered), named stale; a fresh reading below the model is taken
    as before; one above the model, or none, leaves the model; a non-finite or far-future one is no
    evidence. Numbers of the newcomer's case (SYNTHETIC): 22.7 MW modelled while booting, 92 kW metered."""
    assert instruction_baseline(22700.0, (92.0, 232.0, "site meter"), 120.0) == (92.0, "measured: site meter, stale 232 s")
    assert instruction_baseline(22700.0, (92.0, 5.0, "site meter"), 120.0) == (92.0, "measured: site meter")
    assert instruction_baseline(22700.0, (23000.0, 232.0, "site meter"), 120.0) == (22700.0, "modelled")
    assert instruction_baseline(22700.0, None, 120.0) == (22700.0, "modelled")
    assert instruction_baseline(22700.0, (float("nan"), 5.0, "site meter"), 120.0) == (22700.0, "modelled")
    assert instruction_baseline(22700.0, (92.0, -600.0, "site meter"), 120.0) == (22700.0, "modelled")


def test_a_deployment_received_with_stale_telemetry_is_not_credited_beyond_the_meter() -> None:
    """5 blocks run (5,050 kW modelled) but the meter last read 92 kW, 232 s before the deployment
    arrived (the daemon was booting). Before: the modelled 5,050 kW was the baseline and the cut of
    1,200 kW was credited as delivered while the meter never showed that load. Now the baseline is
    the 92 kW metered (stale) and the credited delivery is at most 92 kW."""
    loop = _awarded_loop()
    at = NOW + 5 * MIN
    loop.handle_meter(92.0, at - timedelta(seconds=232), at - timedelta(seconds=232))
    ack = loop.handle_as_deploy(_deploy("boot", at, 1200.0), at)
    assert ack.status == "accepted", ack.reason
    assert "stale 232 s" in ack.reason, ack.reason
    performance = loop.as_performance["boot"]
    assert performance["baseline_kw"] == pytest.approx(92.0)
    assert performance["delivered_kw"] <= 92.0 + 1e-6


# ---------------------------------------------------------------------------------------- 6 and 7


def _small_metered_loop(store: Store, recorder: AuditRecorder):
    profile = parse_profile(SMALL, source="test")
    return ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                       solver=SolveRunner(inline=True), store=store, recorder=recorder, meter=IntervalMeter())


def _telemetry(loop, kw: float, at: datetime) -> None:
    for miner_id in loop.fleet.miners:
        loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=kw, hashrate_th_s=100.0, mode="run",
                                         temperature_c=40.0, timestamp=at), at)


def test_the_first_interval_after_a_start_is_recorded_over_the_time_it_covers(tmp_path: Path) -> None:
    """The daemon starts at 17:07 (its first tick); 20 SYNTHETIC miners report 4 kW each (80 kW)
    until 17:15. Before the fix the 17:00 interval was recorded as 80 kW over 0.25 h (20 kWh, 8 kg at
    400 kg/MWh), as if measured for 15 minutes. Now it spans 17:07–17:15: ``interval_h`` 8/60,
    ``covered_s`` 480, ``covered_fraction`` 8/15, energy and emissions over the 8 minutes only; the
    next interval is whole."""
    db = tmp_path / "m.db"
    start = NOW + 7 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _small_metered_loop(store, recorder)
        loop.tick(start)
        for k in range(8):
            _telemetry(loop, 4.0, start + k * MIN)
        loop.tick(NOW + 15 * MIN)
        for k in range(15):
            _telemetry(loop, 3.0, NOW + (15 + k) * MIN)
        loop.tick(NOW + 30 * MIN)
        recorder.flush()
        first, second = _records(db, "measurement")[:2]
        assert pd.Timestamp(first["interval_start"]) == pd.Timestamp(start)
        assert first["interval_h"] == pytest.approx(8 / 60)
        assert first["covered_s"] == pytest.approx(480.0)
        assert first["covered_fraction"] == pytest.approx(8 / 15)
        assert pd.Timestamp(first["interval_grid_start"]) == pd.Timestamp(NOW)
        assert first["import_kw"] == pytest.approx(80.0)
        day = "2024-06-03"
        assert loop.emitted_kg[day] == pytest.approx(80.0 * 8 / 60 * 0.4 + 60.0 * 0.25 * 0.4)
        assert second["interval_h"] == pytest.approx(0.25) and "covered_s" not in second
        assert pd.Timestamp(second["interval_start"]) == pd.Timestamp(NOW + 15 * MIN)
        recorder.close()


def test_audit_at_utc_never_goes_back_against_seq(tmp_path: Path) -> None:
    """The trail of a started loop, its intervals, an AS deployment and a meter reading (5 s after the
    instruction) handled after an award recorded 10 s after it. Before the fix the ``measurement`` record was stamped with its
    interval's start (15 minutes before the tick records written ahead of it) and a deployment's
    measured response with the reading's time: ``at_utc`` went backwards against ``seq``. Now
    ``at_utc`` is when the loop wrote the record; an earlier time a record is about is in its payload
    (``interval_start``; ``event_at``)."""
    db = tmp_path / "t.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _small_metered_loop(store, recorder)
        assert loop.handle_as_award(ASAwardMessage(
            award_id="rrs", product="RRS", start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=3),
            reserve_kw=49.9, price_usd_mw_h=150.0, issuer="qse-test"), NOW).status == "accepted"
        loop.tick(NOW + 7 * MIN)
        _telemetry(loop, 4.0, NOW + 8 * MIN)
        loop.tick(NOW + 15 * MIN)
        at = NOW + 16 * MIN
        assert loop.handle_as_deploy(_deploy("d", at, 10.0), at).status == "accepted"
        later = at + timedelta(seconds=10)  # a record written after the reading below was taken
        assert loop.handle_as_award(ASAwardMessage(
            award_id="rrs-2", product="RRS", start=NOW + timedelta(hours=2), end=NOW + timedelta(hours=3),
            reserve_kw=10.0, price_usd_mw_h=150.0, issuer="qse-test"), later).status == "accepted"
        loop.handle_meter(5.0, at + timedelta(seconds=5), at + timedelta(seconds=20))
        loop.tick(NOW + 30 * MIN)
        recorder.flush()
        with AuditLog(db, readonly=True) as trail:
            rows = [(r.seq, r.at_utc, r.kind, r.payload) for r in trail.records()]
        recorder.close()
    stamps = [pd.Timestamp(at_utc) for _, at_utc, _, _ in rows]
    backwards = [(rows[i - 1][:3], rows[i][:3]) for i in range(1, len(rows)) if stamps[i] < stamps[i - 1]]
    assert not backwards, backwards
    measured = [p for _, _, kind, p in rows if kind == "measurement"]
    assert pd.Timestamp(measured[0]["interval_start"]) == pd.Timestamp(NOW + 7 * MIN)
    responses = [p for _, _, kind, p in rows if kind == "as_performance" and p.get("measured_response_s") is not None]
    assert responses and responses[-1]["event_at"] == (at + timedelta(seconds=5)).isoformat()


def test_a_later_award_never_lifts_the_limit_above_what_the_fleet_can_draw(tmp_path: Path) -> None:
    """Issue 15 newcomer finding (High): a site at full load at the instruction, a later award
    starting while a deployment holds, raised the limit above the load drawn before any deployment
    (6,427 kW with 6,028 kW drawn): the deployment shed nothing. SYNTHETIC: 10 blocks of 1,000 kW all
    running at $20/MWh (import 10,000 kW = the fleet's full load, profile.full_load_kw); RRS 4,950
    kW awarded 16:00–20:00 and ECRS 2,000 kW from 17:30 (both known before); RRS deploys 1,000 kW at
    17:03: limit 9,000 kW. From 17:30 the limit stays 9,000 kW (it was 11,000): first by a full-load
    cap on the award rise, since the project lead's decision (tests/test_as_deployment_fixed_limit.py)
    because no award moves the limit, measured from the pre-deployment load only."""
    from as_support import (
        NOW,
        award,
        deploy,
        flat_prices,
        hydro_profile,
        make_loop,
        running,
    )

    profile = hydro_profile("AS cap", qualified_mw={"RRS": 10, "ECRS": 5})
    db = tmp_path / "cap.db"
    store = Store(db)
    recorder = AuditRecorder(store)
    loop = make_loop(profile, flat_prices(20.0), store, recorder)
    assert profile.full_load_kw == pytest.approx(10_000.0)
    assert loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW).status == "accepted"
    assert loop.handle_as_award(award("ecrs", "ECRS", 2000.0, start=NOW + timedelta(minutes=30)), NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop) == 10
    at = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(deploy("d-1", at, 1000.0), at)
    assert ack.status == "accepted" and ack.import_limit_kw == pytest.approx(9000.0), ack
    held = loop.book.as_deployments["d-1"]
    later = NOW + timedelta(minutes=31)
    assert loop.book.deployment_limit_kw(held, later) == pytest.approx(9000.0)  # was 11,000
    assert loop.book.deployment_limit_kw(held, later) <= profile.full_load_kw - 1000.0
    # The report rebuilds the same limit from the trail:
    # metered 9,000 kW from 17:15 to 18:00 is no shortfall, at the limit the book enforced.
    for k in range(4):
        loop.record_measurement(NOW + k * timedelta(minutes=15), 0.25, load_kw=10_000.0 if k == 0 else 9000.0,
                                renewable_kw=0.0, hashrate_th_s=0.0, noise={}, price_usd_mwh=20.0)
    recorder.flush()
    recorder.close()
    store.close()
    from hashflex.report import build_report

    (row,) = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]["deployments"]
    assert row["metered_limit_kw"] == pytest.approx(9000.0), row
    assert row["metered_shortfall_mw"] == pytest.approx(0.0), row


def test_an_amendments_ack_says_where_its_limit_comes_from() -> None:
    """Issue 15 newcomer finding (High): an amendment was acked "shed 700 kW (was 500) from 5027 kW
    to 5927 kW", a shed whose limit is above its starting point, unexplained. SYNTHETIC: 5 blocks
    run for RRS 4,950 kW (import 5,050 kW); ECRS 2,000 kW awarded from 17:30 (known before); RRS
    deploys 1,000 kW at 17:03 (limit 4,050 kW); amended at 17:31 to 1,500 kW: limit 5,050 − 1,500 =
    3,550 kW. The rule changed by decision (was: + 2,000 kW for the ECRS award started since, 5,550 kW,
    named in the ack): a limit is measured from the pre-deployment load only, never above it."""
    from as_support import NOW, award, deploy, flat_prices, hydro_profile, make_loop

    profile = hydro_profile("AS amend text", qualified_mw={"RRS": 10, "ECRS": 5})
    loop = make_loop(profile, flat_prices())
    assert loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW).status == "accepted"
    assert loop.handle_as_award(award("ecrs", "ECRS", 2000.0, start=NOW + timedelta(minutes=30)), NOW).status == "accepted"
    loop.tick(NOW)
    at = NOW + timedelta(minutes=3)
    assert loop.handle_as_deploy(deploy("d-1", at, 1000.0), at).import_limit_kw == pytest.approx(4050.0)
    later = NOW + timedelta(minutes=31)
    ack = loop.handle_as_deploy(deploy("d-1", later, 1500.0, revision=1), later)
    assert ack.status == "accepted" and ack.import_limit_kw == pytest.approx(3550.0), ack
    assert "from 5050 kW to 3550 kW" in ack.reason, ack.reason
    assert "plus" not in ack.reason, ack.reason


def test_without_a_site_meter_the_miners_telemetry_measures_a_deployment() -> None:
    """Issue 15 newcomer finding: with every miner reporting fresh telemetry and no site meter,
    /status kept ``measured_import_kw``, ``measured_shortfall_kw`` and ``measured_response_s`` null
    for every deployment: only a meter reading was measured. SYNTHETIC (test_as_baseline_measured's
    small site): 20 miners of 5 kW, 10 running for a 49.9 kW RRS award (50.1 kW modelled); RRS
    deploys 10 kW at 17:03 (limit 40.1 kW; the fast path commands 3 to sleep). 10 s later the
    miners still report the old load (10 × 5 + 10 × 0.01 = 50.1 kW): 10 kW over, no response yet;
    20 s later 7 run (7 × 5 + 13 × 0.01 = 35.13 kW): under the limit, response 20 s."""
    from test_as_baseline_measured import _small_loop

    def report(loop, at, running: int) -> None:
        for k, miner_id in enumerate(sorted(loop.fleet.miners)):
            loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=5.0 if k < running else 0.01,
                                             hashrate_th_s=0.0, mode="run", temperature_c=40.0, timestamp=at), at)

    loop, _ = _small_loop()
    at = NOW + 3 * MIN
    assert loop.handle_as_deploy(_deploy("tel", at, 10.0), at).status == "accepted"
    report(loop, at + timedelta(seconds=10), running=10)
    performance = loop.as_performance["tel"]
    assert performance["measured_import_kw"] == pytest.approx(50.1), performance  # the sum after the last report
    assert performance["measured_shortfall_kw"] == pytest.approx(10.0)
    assert performance["measured_response_s"] is None
    report(loop, at + timedelta(seconds=20), running=7)
    assert loop.as_performance["tel"]["measured_import_kw"] == pytest.approx(35.13)
    assert loop.as_performance["tel"]["measured_response_s"] == pytest.approx(20.0)
