"""The evidence report's AS deployments when a deployment is amended or two are in force together
(issue 15, findings of a QSE/auditor newcomer review):

1. an amended deployment's row mixed revisions (``deployed_mw`` of revision 0, the limit and the
   delivery of the latest): one row per revision now, each with its own instruction, span, limit,
   deadline, delivery and metered figures;
3. the report and the backtest measure a deployment's shortfall by one rule
   (:mod:`hashflex.control.as_shortfall`: the lowest limit in force binds, capped at the MW deployed,
   shared pro rata), checked on a crafted trail with concurrent and amended deployments against the
   backtest's own code path (``ASParticipant.after_tick`` + ``settle_reserve``).

The trails are written by the real control loop into a real store (inline HiGHS, simulated fleet),
as in ``test_report_ancillary`` (its site: 10 hydro blocks of 1 MW, 10 kW asleep; SYNTHETIC test data).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from as_support import make_loop
from test_report_ancillary import NOW, PROFILE, QUARTER, _award, _prices

from hashflex.control.as_shortfall import (
    binding_deployments,
    binding_revision,
    deployment_shortfall_kw,
    shortfall_shares,
)
from hashflex.control.records import AuditRecorder
from hashflex.messages import ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.store import Store


def _loop(profile, store):
    recorder = AuditRecorder(store)
    loop = make_loop(profile, _prices(), store, recorder)
    return loop, recorder


def _measure(loop, k: int, load_kw: float) -> None:
    loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=load_kw, renewable_kw=0.0, hashrate_th_s=0.0,
                            noise={}, price_usd_mwh=200.0)


# ------------------------------------------------------------------------------------ the rule


def test_the_rule_on_hand_cases() -> None:
    """Lowest limit binds; capped at the sum deployed; shares pro rata; nothing binds, nothing short."""
    assert binding_deployments([3050.0, 1080.0], [2000.0, 1000.0]) == (1080.0, 3000.0)
    assert binding_deployments([], []) == (float("inf"), 0.0)
    with pytest.raises(ValueError, match="deployed_kw"):
        binding_deployments([1.0], [])
    assert deployment_shortfall_kw(1500.0, 1080.0, 3000.0) == 420.0
    # Import 6,000 kW against a 50 kW limit of a 5,000 kW deployment: short 5,000 (all of it), not 5,950.
    assert deployment_shortfall_kw(6000.0, 50.0, 5000.0) == 5000.0
    assert deployment_shortfall_kw(40.0, 50.0, 5000.0) == 0.0
    # Float noise of summed unit powers (2e-9 kW over, seen on 2024-05-08) is not a shortfall; a watt is.
    assert deployment_shortfall_kw(14895.28 + 2e-9, 14895.28, 2700.0) == 0.0
    assert deployment_shortfall_kw(14895.28 + 1e-3, 14895.28, 2700.0) == pytest.approx(1e-3)
    np.testing.assert_allclose(deployment_shortfall_kw(np.array([900.0, 900.0, np.nan]),
                                                       np.array([500.0, np.inf, np.inf]),
                                                       np.array([300.0, 0.0, 0.0])), [300.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="import_kw"):
        deployment_shortfall_kw(np.nan, 50.0, 10.0)
    assert shortfall_shares(420.0, {"a": 2000.0, "b": 1000.0}) == pytest.approx({"a": 280.0, "b": 140.0})
    t = NOW
    revisions = [(t, t + timedelta(minutes=10), 0), (t + timedelta(minutes=20), t + timedelta(minutes=30), 1),
                 (t + timedelta(minutes=25), t + timedelta(minutes=30), 2)]
    assert binding_revision(revisions, t + timedelta(minutes=5)) is None  # not due yet
    assert binding_revision(revisions, t + timedelta(minutes=15)) == 0
    assert binding_revision(revisions, t + timedelta(minutes=26)) == 0  # 1 and 2 asked more: due at 30
    assert binding_revision(revisions, t + timedelta(minutes=30)) == 2


# ------------------------------------------------------------------------------------ finding 1


def test_an_amended_deployment_has_one_consistent_row_per_revision(tmp_path: Path) -> None:
    """RRS award 4,950 kW keeps 5 blocks running (5,050 kW). RRS deploys 3,000 kW at 17:03: limit
    5,050 − 3,000 = 2,050 kW, deadline 17:13; the fast path sleeps 4 blocks (1,090 kW). Revision 1 at
    17:20 asks 2,000 kW: limit 5,050 − 2,000 = 3,050 kW from its receipt (fewer MW: the deadline held,
    17:13). Metered means 17:00 1,882, 17:15 1,090, 17:30 2,500, 17:45 3,200 kW.

    Revision 0 (in force 17:03–17:20) binds the 17:15 interval: 1,090 under 2,050, short 0.
    Revision 1 (17:20 until recalled, at most max_hold_h: 01:03) binds 17:30 and 17:45: 0 and 150 kW over 3,050: mean 75 kW
    = 0.075 MW; mean import 2,850 kW, delivered (5,050 − 2,850) / 1000 = 2.2 MW.
    The report showed one row: deployed 3.0 MW (revision 0) with limit 3,050 kW (revision 1)."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "amended.db"
    with Store(db) as store:
        loop, recorder = _loop(profile, store)
        assert loop.handle_as_award(_award("RRS"), NOW).status == "accepted"
        loop.tick(NOW)
        at = NOW + timedelta(minutes=3)
        first = ASDeployMessage(deployment_id="dep-1", product="RRS", issued_at=at, deployed_kw=3000.0,
                                issuer="qse-test")
        assert loop.handle_as_deploy(first, at).status == "accepted"
        later = NOW + timedelta(minutes=20)
        amended = first.model_copy(update={"revision": 1, "deployed_kw": 2000.0, "issued_at": later})
        ack = loop.handle_as_deploy(amended, later)
        assert ack.status == "accepted", ack.reason
        for k, load_kw in enumerate([1882.0, 1090.0, 2500.0, 3200.0]):
            _measure(loop, k, load_kw)
        recorder.flush()
        recorder.close()
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    assert section["deployment_count"] == 1
    rows = section["deployments"]
    assert [(r["deployment_id"], r["revision"]) for r in rows] == [("dep-1", 0), ("dep-1", 1)]
    r0, r1 = rows
    assert r0["deployed_mw"] == 3.0 and r0["limit_kw"] == 2050.0 and r0["baseline_kw"] == 5050.0
    assert r0["deadline"] == "2024-06-03T17:13:00+00:00"
    assert r0["in_force_from"] == "2024-06-03T17:03:00+00:00"
    assert r0["in_force_until"] == "2024-06-03T17:20:00+00:00"
    assert r0["commanded_import_kw"] == 1090.0 and r0["delivered_mw"] == 3.96 and r0["shortfall_mw"] == 0.0
    assert r0["metered_intervals"] == 1 and r0["metered_import_kw"] == 1090.0 and r0["metered_limit_kw"] == 2050.0
    assert r0["metered_shortfall_mw"] == 0.0
    assert r1["deployed_mw"] == 2.0 and r1["limit_kw"] == 3050.0 and r1["baseline_kw"] == 5050.0
    assert r1["issued_at"] == "2024-06-03T17:20:00+00:00"
    assert r1["deadline"] == "2024-06-03T17:13:00+00:00"  # fewer MW: the deadline held
    assert r1["in_force_from"] == "2024-06-03T17:20:00+00:00"
    assert r1["in_force_until"] == "2024-06-04T01:03:00+00:00"  # held until recalled, at most max_hold_h (8 h)
    assert r1["metered_intervals"] == 2 and r1["metered_import_kw"] == 2850.0 and r1["metered_limit_kw"] == 3050.0
    assert r1["metered_shortfall_mw"] == 0.075 and r1["metered_delivered_mw"] == 2.2
    assert section["shortfall_count"] == 1


# ------------------------------------------------------------------------------------ finding 3


def _concurrent_trail(db: Path, profile):
    """RRS award 4,950 kW (5 blocks, 5,050 kW). 17:03 RRS dep-a 2,000 kW; 17:18 ECRS dep-b 1,000 kW
    (from the load then); 17:35 dep-b revision 1, 500 kW. Measured import per quarter from 17:00 is
    a block count's draw (100 + 990 n kW), so the backtest's counts give the same import.
    Returns the loop's ``ASParticipant`` (no SYNTHETIC draws: the deployments are these) after its
    ``after_tick`` at each interval start, as the backtest runner calls it, and the block counts."""
    from hashflex.backtest.actuals import Actuals
    from hashflex.backtest.ancillary_loop import ASParticipant

    index = pd.date_range(NOW, periods=5, freq="15min")
    hours = pd.date_range(index[0].floor("D") - pd.Timedelta(days=2), periods=24 * 5, freq="h")
    market = pd.DataFrame({"da_usd_mwh": 200.0, "rt_usd_mwh": 200.0, "RRS": 150.0, "ECRS": 150.0, "NSPIN": 0.0},
                          index=hours)
    actuals = Actuals(index=index, price_usd_mwh=np.full(5, 200.0), renewable_kw=np.zeros(5),
                      renewable_synthetic=False, import_limit_kw=np.full(5, np.inf),
                      import_limit_source=("",) * 5, prices=_prices(), as_market=market)
    running = [5, 2, 1, 2, 3]  # blocks running per interval: 5,050, 2,080, 1,090, 2,080, 3,070 kW
    with Store(db) as store:
        loop, recorder = _loop(profile, store)
        participant = ASParticipant(profile, actuals)
        participant.draws = {p: np.zeros(5, dtype=bool) for p in participant.draws}
        assert loop.handle_as_award(_award("RRS"), NOW).status == "accepted"
        loop.tick(NOW)
        a = ASDeployMessage(deployment_id="dep-a", product="RRS", issued_at=NOW + timedelta(minutes=3),
                            deployed_kw=2000.0, issuer="qse-test")
        b = ASDeployMessage(deployment_id="dep-b", product="ECRS", issued_at=NOW + timedelta(minutes=18),
                            deployed_kw=1000.0, issuer="qse-test")
        b1 = b.model_copy(update={"revision": 1, "deployed_kw": 500.0, "issued_at": NOW + timedelta(minutes=35)})
        events = {0: [a], 1: [b], 2: [b1]}
        for k in range(5):
            now = NOW + k * QUARTER
            participant.after_tick(loop, k, now, SimpleNamespace(schedule=None))
            for message in events.get(k, []):
                ack = loop.handle_as_deploy(message, message.issued_at)
                assert ack.status == "accepted", ack.reason
            _measure(loop, k, 100.0 + 990.0 * running[k])
        recorder.flush()
        recorder.close()
        outcome = participant.outcome(loop)
        limits = {d.deployment_id: d.limit_kw for d in loop.book.as_deployments.values()}
    return actuals, outcome, running, limits


def test_report_and_backtest_measure_concurrent_amended_deployments_alike(tmp_path: Path) -> None:
    """dep-a: limit 5,050 − 2,000 = 3,050 kW, deadline 17:13. dep-b: sheds from the load at 17:18
    (after dep-a's cut), limit that − 1,000 kW, deadline 17:28; revision 1 (500 kW) that + 500 from
    17:35. Per interval the lowest limit of the deployments due binds, capped at their MW together:

    - 17:15: dep-a alone: 2,080 kW under 3,050: 0;
    - 17:30: dep-a and dep-b (due at 17:28): limit = dep-b's, cap 3,000 kW;
    - 17:45 and 18:00: dep-a and dep-b revision 1: limit = dep-b's raised by 500, cap 2,500 kW.

    The backtest's per-interval ``as_deployment_short_kw`` (its own settlement of the same loop's
    book) equals the report's per interval, and the report's per-row shares add up to it."""
    from hashflex.backtest.ancillary_loop import settle_reserve

    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "concurrent.db"
    actuals, outcome, running, limits = _concurrent_trail(db, profile)
    counts = {(0, 0): np.asarray(running, dtype=int)}
    frame = settle_reserve(profile, actuals, counts, outcome).frame
    np.testing.assert_allclose(frame["grid_import_kw"], [100.0 + 990.0 * n for n in running])
    backtest_short = dict(zip(actuals.index, frame["as_deployment_short_kw"], strict=True))

    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:15Z")["ancillary"]
    limit_b = limits["dep-b"]  # revision 1's: the load at 17:18 − 500
    limit_b0 = limit_b - 500.0
    imports = [100.0 + 990.0 * n for n in running]
    expected = [0.0, 0.0, min(max(imports[2] - limit_b0, 0.0), 3000.0),
                min(max(imports[3] - limit_b, 0.0), 2500.0), min(max(imports[4] - limit_b, 0.0), 2500.0)]
    assert expected[4] > 0 and expected[3] >= 0  # the case has a shortfall to agree on
    intervals = {pd.Timestamp(i["interval_start"]): i for i in section["shortfall_intervals"]}
    for k, start in enumerate(actuals.index):
        report_short = intervals[start]["shortfall_kw"] if start in intervals else 0.0
        assert report_short == pytest.approx(expected[k], abs=0.05), start
        assert report_short == pytest.approx(backtest_short[start], abs=0.05), start
    assert intervals[actuals.index[2]]["binding_limit_kw"] == pytest.approx(limit_b0, abs=0.05)
    assert intervals[actuals.index[2]]["deployed_kw"] == 3000.0
    assert intervals[actuals.index[4]]["deployed_kw"] == 2500.0

    rows = {(r["deployment_id"], r["revision"]): r for r in section["deployments"]}
    assert set(rows) == {("dep-a", 0), ("dep-b", 0), ("dep-b", 1)}
    # The rows' shares (h-weighted means × hours) add up to the site's shortfall over the intervals.
    total_kwh = sum(r["metered_shortfall_mw"] * 1000.0 * 0.25 * r["metered_intervals"] for r in rows.values())
    assert total_kwh == pytest.approx(sum(expected) * 0.25, abs=0.1)
    # dep-a carries 2,000 / 3,000 of 17:30 and 2,000 / 2,500 of 17:45 and 18:00 (assessed 17:15–18:00).
    share_a = (0.0 + expected[2] * 2 / 3 + expected[3] * 0.8 + expected[4] * 0.8) / 4
    assert rows["dep-a", 0]["metered_shortfall_mw"] == pytest.approx(share_a / 1000.0, abs=1e-4)
    assert rows["dep-b", 0]["metered_intervals"] == 1 and rows["dep-b", 1]["metered_intervals"] == 2
    assert rows["dep-b", 1]["limit_kw"] == pytest.approx(limit_b, abs=0.05)
