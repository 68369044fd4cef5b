"""A deployment's import limit is measured from the pre-deployment load only (issue 15, newcomer on
2024-05-08; the project lead's decision): ERCOT measures a Load Resource's deployed response from its
telemetered consumption before the instruction (Nodal Protocols §8.1.1.4.x deployment criteria), so the
limit is the baseline less the deployed MW, constant from the instruction until the recall. Reserve
awarded later is not part of the instruction and does not let load come back: what the site cannot
hold under the limit is a *hold shortfall* (``reserve_hold_short``, clawed back), not a higher limit.

The 2024-05-08 case in miniature (the backtest's NSPIN award stepped up 2.7 → 4.9 MW during a 2.7 MW
deployment; the "award rise" let the load come back and only 0.4 of 2.7 MW was delivered measured from
the pre-deployment load, while the report showed shortfall 0). Here, on the SYNTHETIC hydro site of
``as_support`` (10 blocks of 1,000 kW, 10 kW asleep, a block sheds 990 kW; energy above breakeven so
only an award keeps a block running):

- NSPIN award ``nspin-17`` 2,970 kW over 17:00–18:00 ($40/MW-h): the plan runs 3 blocks, import
  3 × 1,000 + 7 × 10 = 3,070 kW;
- 17:03 NSPIN deploys 2,970 kW (deadline 17:33): baseline 3,070 kW, limit 3,070 − 2,970 = 100 kW;
- the hourly award steps up: ``nspin-18`` 4,950 kW over 18:00–20:00 ($50/MW-h), received 17:20.

The former rule raised the limit at 18:00 by 4,950 − 2,970 = 1,980 kW to 2,080 kW (two blocks back).
Now it stays 100 kW; the 4,950 − 2,970 = 1,980 kW of the new award not covered by the deployment
cannot be held by any running block under 100 kW: 1,980 kW hold shortfall per interval, clawed back
at $50/MW-h.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from as_support import (
    NOW,
    QUARTER,
    audit_payloads,
    award,
    deploy,
    flat_prices,
    hydro_profile,
    make_loop,
    running,
)

from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.report import build_report
from hashflex.store import Store

DEPLOYED_KW = 2970.0
BASELINE_KW = 3070.0
LIMIT_KW = BASELINE_KW - DEPLOYED_KW  # 100 kW
STEP_KW = 4950.0  # the 18:00 award
FORMER_LIMIT_KW = LIMIT_KW + STEP_KW - DEPLOYED_KW  # 2,080 kW: what the award rise allowed


def _profile():
    return hydro_profile("AS fixed limit", products=("NSPIN",), qualified_mw={"NSPIN": 10},
                         expected_deployments_per_month=None)


def _deployed_with_step_up(loop: ControlLoop) -> None:
    """17:00 award and plan (3 blocks), 17:03 deployment of 2,970 kW, 17:20 the 18:00 award step-up."""
    first = award("nspin-17", "NSPIN", DEPLOYED_KW, start=NOW, end=NOW + timedelta(hours=1), price_usd_mw_h=40.0)
    assert loop.handle_as_award(first, NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop) == 3
    at = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(deploy("dep-1", at, DEPLOYED_KW, product="NSPIN"), at)
    assert ack.status == "accepted", ack.reason
    assert ack.import_limit_kw == pytest.approx(LIMIT_KW)
    step = award("nspin-18", "NSPIN", STEP_KW, start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=3),
                 price_usd_mw_h=50.0)
    ack = loop.handle_as_award(step, NOW + timedelta(minutes=20))
    assert ack.status == "accepted", ack.reason


def test_the_limit_stays_at_baseline_less_deployed_after_an_award_step_up() -> None:
    """The book (what the guard, the fast path, the plan and /status use), the binding limits and the
    plan keep the site at 100 kW after the 18:00 step-up: no block comes back (the former rule: 2,080 kW,
    two blocks). The new award's uncovered 1,980 kW is the obligation the plan reports short."""
    loop = make_loop(_profile(), flat_prices())
    _deployed_with_step_up(loop)
    (deployment,) = loop.book.as_deployments.values()
    assert deployment.limit_kw == pytest.approx(LIMIT_KW)
    for minutes in (3, 20, 59, 60, 75, 119):
        t = NOW + timedelta(minutes=minutes)
        assert loop.book.deployment_limit_kw(deployment, t) == pytest.approx(LIMIT_KW), minutes
        assert loop.book.import_limits_at(t)["AS:NSPIN:dep-1"] == pytest.approx(LIMIT_KW), minutes
    for k in range(8):  # every interval 17:00–19:00, across the step-up
        start = NOW + k * QUARTER
        assert loop.book.deployment_limit_kw(deployment, start, start + QUARTER) == pytest.approx(LIMIT_KW), k
    later = NOW + timedelta(hours=1)
    report = loop.tick(later)
    assert running(loop) == 0, f"the plan brought {running(loop)} block(s) back under the deployment"
    first = report.schedule.frame.iloc[0]
    assert float(first["grid_import_kw"]) <= LIMIT_KW + 1e-6
    # The step-up's part beyond the deployed MW is an obligation the site cannot hold: reported short.
    assert loop.book.reserve_obligations_at(later) == {"NSPIN": pytest.approx(STEP_KW - DEPLOYED_KW)}
    assert float(first["reserve_NSPIN_short_kw"]) == pytest.approx(STEP_KW - DEPLOYED_KW, abs=1.0)


def test_the_report_measures_delivery_from_the_pre_deployment_load_and_claws_back_the_unheld_step(
        tmp_path: Path) -> None:
    """From the trail of the same case: the site obeys until 18:00 (metered 100 kW), then the load comes
    back to the former rule's 2,080 kW for 18:00–18:30 (as on 2024-05-08, measured by the meter; the
    fleet the loop commands runs no block, so the reserve is not held either).

    Assessed intervals (NSPIN's deadline 17:33 passed by their start): 17:45 (100 kW), 18:00 and 18:15
    (2,080 kW). Limit 100 kW in each (the former rule: 100, 2,080, 2,080 and shortfall 0). Shortfall per
    interval min(max(import − 100, 0), 2,970) = 0, 1,980, 1,980: mean 1,320 kW = 1.32 MW; metered
    delivered from the pre-deployment load (3,070 − (100 + 2,080 + 2,080) / 3) / 1000 = 1.65 MW.
    Hold shortfall: 18:00 and 18:15, 1,980 kW each (4,950 awarded − 2,970 deployed, 0 running), clawed
    back 1.98 MW × $50 × 0.25 h = $24.75 each, $49.50 in all."""
    db = tmp_path / "fixed.db"
    loads = {0: (3 * BASELINE_KW + 12 * LIMIT_KW) / 15, 1: LIMIT_KW, 2: LIMIT_KW, 3: LIMIT_KW,
             4: FORMER_LIMIT_KW, 5: FORMER_LIMIT_KW}
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(_profile(), flat_prices(), store, recorder)
        _deployed_with_step_up(loop)
        for k in range(4):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=loads[k], renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        loop.tick(NOW + timedelta(hours=1))
        assert running(loop) == 0
        for k in (4, 5):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=loads[k], renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:30Z")
    (row,) = report["ancillary"]["deployments"]
    assert row["baseline_kw"] == BASELINE_KW and row["limit_kw"] == LIMIT_KW
    assert row["metered_intervals"] == 3
    assert row["metered_limit_kw"] == pytest.approx(LIMIT_KW, abs=0.05)
    assert row["metered_shortfall_mw"] == pytest.approx(1.32, abs=1e-4)
    assert row["metered_delivered_mw"] == pytest.approx(1.65, abs=1e-4)
    shorts = {(r["interval_start"], r["product"]): r for r in audit_payloads(db, "reserve_hold_short")}
    for k in (4, 5):
        start = (NOW + k * QUARTER).isoformat()
        record = next((r for (s, p), r in shorts.items() if p == "NSPIN" and s.startswith(start[:16])), None)
        assert record is not None, f"no hold shortfall recorded for {start}: {sorted(shorts)}"
        assert record["short_kw"] == pytest.approx(STEP_KW - DEPLOYED_KW)
    assert report["economics"]["reserve_clawback_usd"] == pytest.approx(2 * 1.98 * 50.0 * 0.25, abs=0.01)


def test_a_recall_ack_carries_the_import_limit_in_force_after_it() -> None:
    """Every other deployment ack carries ``import_limit_kw``; a recall's had none. Now it carries the
    limit in force after the recall (the lowest the book holds then, else the interconnection's).
    Award NSPIN 4,950 kW (5 blocks, 5,050 kW); dep-1 sheds 1,980 kW at 17:03, dep-2 990 kW at 17:10,
    stacked: 5,050 − 1,980 − 990 = 2,080 kW. Recalling dep-1 at 17:40 leaves dep-2's limit,
    5,050 − 990 = 4,060 kW; recalling dep-2 at 17:50 leaves the interconnection's 20,000 kW."""
    loop = make_loop(_profile(), flat_prices())
    first = award("nspin-17", "NSPIN", 4950.0, start=NOW, end=NOW + timedelta(hours=2), price_usd_mw_h=40.0)
    assert loop.handle_as_award(first, NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop) == 5  # import 5 × 1,000 + 5 × 10 = 5,050 kW
    at = NOW + timedelta(minutes=3)
    assert loop.handle_as_deploy(deploy("dep-1", at, 1980.0, product="NSPIN"), at).status == "accepted"
    at2 = NOW + timedelta(minutes=10)
    ack2 = loop.handle_as_deploy(deploy("dep-2", at2, 990.0, product="NSPIN"), at2)
    assert ack2.status == "accepted", ack2.reason
    # Stacked: 5,050 − 1,980 − 990 = 2,080 kW for both while both are in force.
    assert ack2.import_limit_kw == pytest.approx(2080.0)
    recall_at = NOW + timedelta(minutes=40)
    ack = loop.handle_as_deploy(deploy("dep-1", recall_at, product="NSPIN", recalled=True), recall_at)
    assert ack.status == "accepted", ack.reason
    # dep-2 alone now: its stacked baseline 5,050 less its 990 kW.
    assert ack.import_limit_kw == pytest.approx(4060.0)
    assert "4060 kW" in ack.reason
    recall2_at = NOW + timedelta(minutes=50)
    ack = loop.handle_as_deploy(deploy("dep-2", recall2_at, product="NSPIN", recalled=True), recall2_at)
    assert ack.status == "accepted", ack.reason
    assert ack.import_limit_kw == pytest.approx(20000.0)  # the interconnection: nothing else binds


def test_the_study_holds_the_pre_deployment_limit_through_an_award_step_up() -> None:
    """``backtest.ancillary`` (the study ``optimization/benchmarks/ancillary_value.py`` runs) by the same
    rule. NSPIN 2,700 kW awarded 00:00–01:00, 4,900 kW from 01:00 (the hourly step-up of 2024-05-08);
    a SYNTHETIC NSPIN deployment from 00:30 to 01:30 sheds the 2,700 kW in force at its start, from the
    3,000 kW the plan without it draws then: limit 300 kW until 01:30, and the 4,900 − 2,700 = 2,200 kW
    awarded beyond the deployed MW from 01:00 is still to be held. (The study's former rule shed the
    award in force interval by interval: 4,900 kW "deployed" from 01:00, never instructed, and no
    obligation left.) An ECRS deployment of 1,000 kW stacked 00:45–01:00 lowers the limit to
    3,000 − 2,700 − 1,000 = 0 kW meanwhile and gives its MW back when it ends."""
    from hashflex.backtest.ancillary import deployment_limits_kw

    quarters = 8  # 00:00–02:00
    nspin = np.array([2700.0] * 4 + [4900.0] * 4)
    ecrs = np.full(quarters, 1000.0)
    import_kw = np.array([3000.0] * 4 + [5200.0] * 4)
    deployed = {"NSPIN": np.array([False, False, True, True, True, True, False, False]),
                "ECRS": np.array([False, False, False, True, False, False, False, False])}
    limit, deployed_kw, obligation = deployment_limits_kw({"NSPIN": nspin, "ECRS": ecrs}, deployed, import_kw)
    assert list(limit) == [np.inf, np.inf, 300.0, 0.0, 300.0, 300.0, np.inf, np.inf]
    assert list(deployed_kw["NSPIN"]) == [0.0, 0.0, 2700.0, 2700.0, 2700.0, 2700.0, 0.0, 0.0]
    assert list(obligation["NSPIN"]) == [2700.0, 2700.0, 0.0, 0.0, 2200.0, 2200.0, 4900.0, 4900.0]
    assert list(obligation["ECRS"]) == [1000.0, 1000.0, 1000.0, 0.0, 1000.0, 1000.0, 1000.0, 1000.0]
