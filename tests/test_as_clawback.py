"""One clawback definition for the backtest and the report (issue 15).

A newcomer saw $317.73 charged back in the report and $4.96 in the backtest of the same day: the
report charged a deployment's metered shortfall, the backtest the hold shortfalls (and a modelled
deployment shortfall), and hold shortfalls were not in the audit trail. Now both charge reserve
awarded and not held by running, sheddable, qualified load (ERCOT's failure to provide, Nodal
Protocols §6.4.9.1.3 / §6.7.3) at the award's price, by one function
(``control.ancillary.reserve_clawback_usd``) on one set of numbers: the loop records them per
product and interval (``reserve_hold_short`` audit records) and the backtest settles the loop's record.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest

from hashflex.audit import AuditLog
from hashflex.control.ancillary import reserve_clawback_usd, reserve_hold_shortfalls
from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage, LimitsChangeMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from test_as_obligation_cuts import NOW, PROFILE, _prices


class _Recorder:
    """Collects what the loop records (kind, payload, at)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict, object]] = []

    def record(self, kind: str, payload: dict, at: object) -> None:
        self.records.append((kind, payload, at))


def test_the_clawback_is_the_hold_shortfall_at_the_award_price() -> None:
    """90.4 kW short for a quarter hour at $12.50/MW-h: 0.0904 × 12.5 × 0.25 = $0.2825."""
    assert reserve_clawback_usd(90.4, 12.5, 0.25) == pytest.approx(0.2825)
    profile = parse_profile(PROFILE, source="test")
    # Non-Spin 1,980 kW on old_air, which runs one block (990 kW above idle): 990 kW short.
    assert reserve_hold_shortfalls(profile, {"NSPIN": 1980.0, "RRS": 0.0}, {"old_air": 990.0, "hydro": 9900.0}) == {
        "NSPIN": pytest.approx(990.0)}


def test_the_loop_records_each_interval_an_award_is_not_held() -> None:
    """RRS 5,000 kW (6 hydro blocks) and Non-Spin 1,980 kW (2 old blocks) awarded at $20/MW-h; both
    held at 17:00 (no record). A manager's import limit of 6,000 kW from 17:15 is below the 7,920 kW
    of sheddable load the two awards need plus idle draw: the hard limit wins, an award is short, and
    the loop records each product short with its clawback at the award's price."""
    profile = parse_profile(PROFILE.replace("timezone: America/Chicago}", "timezone: America/Chicago, "
                                                                          "managers: [site-manager]}"), source="test")
    fleet = SimulatedFleet(profile)
    recorder = _Recorder()
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=fleet,
                       solver=SolveRunner(inline=True), recorder=recorder)
    award = ASAwardMessage(award_id="nspin", product="NSPIN", start=NOW, end=NOW + timedelta(hours=2),
                           reserve_kw=1980.0, price_usd_mw_h=20.0, issuer="qse-test")
    rrs = ASAwardMessage(award_id="rrs", product="RRS", start=NOW, end=NOW + timedelta(hours=2),
                         reserve_kw=5000.0, price_usd_mw_h=20.0, issuer="qse-test")
    assert loop.handle_as_award(award, NOW).status == "accepted"
    assert loop.handle_as_award(rrs, NOW).status == "accepted"
    loop.tick(NOW)
    loop.record_measurement(NOW, 0.25, load_kw=12080.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=60.0)
    assert [r for r in recorder.records if r[0] == "reserve_hold_short"] == []  # both awards held
    at = NOW + timedelta(minutes=15)
    limit = LimitsChangeMessage(issuer="site-manager", reason="test", issued_at=at, import_limit_kw=6000.0,
                                valid_until=at + timedelta(hours=1))
    loop.on_message(limit, at)
    loop.tick(at)
    held_old = sum(n for (g, _), n in fleet.running().items() if g == "old_air")
    loop.record_measurement(at, 0.25, load_kw=6000.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=60.0)
    shorts = [p for kind, p, _ in recorder.records if kind == "reserve_hold_short"]
    expected_short = max(1980.0 - held_old * 990.0, 0.0) + max(5000.0 - sum(
        n for (g, _), n in fleet.running().items() if g == "hydro") * 990.0, 0.0)
    assert expected_short > 0, "the limit leaves an award short"
    assert sum(p["short_kw"] for p in shorts) == pytest.approx(expected_short)
    for p in shorts:
        assert p["interval_start"].startswith(pd.Timestamp(at).strftime("%Y-%m-%dT%H:%M"))
        assert p["clawback_usd"] == pytest.approx(reserve_clawback_usd(p["short_kw"], 20.0, 0.25))
        assert p["held_kw"] == pytest.approx(p["obligation_kw"] - p["short_kw"])


@pytest.fixture(scope="module")
def short_window(tmp_path_factory):
    """Two real hours (3 May 2024, 22:00–24:00 CDT, bundled prices, ASSUMED example qualification)
    with every noise sensor biased +4 dB (SYNTHETIC): the measured exceedances make the fast path
    step units down at night, and some awards go short. Inline HiGHS (no deadline: deterministic)."""
    from hashflex.backtest.ancillary import (
        EXAMPLE_WEST_TEXAS_ANCILLARY,
        load_hourly_market,
        market_price_frame,
        with_ancillary,
    )
    from hashflex.backtest.cli import _store_prices
    from hashflex.backtest.runner import build_actuals, run_backtest
    from hashflex.backtest.summary import summary_document
    from hashflex.profile import load_profile
    from hashflex.store import Store
    from pathlib import Path

    out = tmp_path_factory.mktemp("mpc_as_clawback")
    data = (Path(__file__).resolve().parents[1] / "optimization" / "data" / "ercot_dev2"
            / "hourly_hubs_dam_rt_and_dam_as_mcpc_2024.csv")
    profile = with_ancillary(load_profile("west_texas"), EXAMPLE_WEST_TEXAS_ANCILLARY)
    market = load_hourly_market(data)
    start = pd.Timestamp("2024-05-03T22:00-05:00")
    actuals = build_actuals(profile, market_price_frame(market, profile.site.settlement_point), start,
                            start + pd.Timedelta(hours=2), as_market=market)
    store = Store(out / "backtest.db")
    try:
        _store_prices(store, actuals)
        result = run_backtest(profile, actuals, ["mpc+as"], replan_minutes=60, seed=0, store=store,
                              inline_solver=True, noise_bias_db={r.id: 4.0 for r in profile.receptors})
    finally:
        store.close()
    (out / "summary.json").write_text(json.dumps(summary_document(result)))
    return out


def test_a_backtest_report_charges_what_the_backtest_settles_to_the_cent(short_window) -> None:
    figures = json.loads((short_window / "summary.json").read_text())["policies"]["mpc+as"]
    assert figures["as_clawback_usd"] > 0, "the window has an award not held (else the test shows nothing)"
    economics = build_report(short_window / "backtest.db")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(figures["as_payment_usd"], abs=0.005)
    assert economics["reserve_clawback_usd"] == pytest.approx(figures["as_clawback_usd"], abs=0.005)
    assert economics["reserve_revenue_usd"] == pytest.approx(figures["as_revenue_usd"], abs=0.005)
    # The trail holds the records the clawback came from, one per product and interval short.
    records = [r for r in AuditLog(short_window / "backtest.db").records(kinds=("reserve_hold_short",))]
    assert records and all(r.payload["short_kw"] > 0 for r in records)
    assert len({(r.payload["interval_start"], r.payload["product"]) for r in records}) == len(records)
    assert sum(r.payload["clawback_usd"] for r in records) == pytest.approx(figures["as_clawback_usd"], abs=1e-6)
