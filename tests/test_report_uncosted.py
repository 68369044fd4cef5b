"""An interval without a real-time settlement point price is not costed at $0 (issue 15, QSE/auditor
newcomer review, finding 2): the live loop records such an interval with ``price_usd_mwh`` null (and,
today, ``energy_cost_usd`` 0.0); the report summed it as $0 of electricity. It must show the interval's
cost as unknown, count it ("N intervals without an RT settlement point price, not costed") and say that
the totals exclude it.

The trail is written by the real control loop into a real store (as ``test_report_ancillary``; its
SYNTHETIC test site).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_ancillary import NOW, PROFILE, QUARTER, _prices

from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.report.render import to_csv, to_html
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from hashflex.store import Store


def test_an_interval_without_a_price_is_not_costed_at_zero(tmp_path: Path) -> None:
    """Four quarters at 1,000 kW and 100,000 TH/s; the third has no RT price (the feed was down).
    Each priced quarter costs the same c = 1,000 kW × 0.25 h × ($200 + adders) / 1000, so the
    electricity cost is 3c (not 3c + $0 over four), profit is the three priced quarters' revenue − 3c,
    the average cost per MWh is 3c / 0.75 MWh, and the unpriced quarter is counted and named."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "uncosted.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store, recorder=recorder)
        for k, price in enumerate([200.0, 200.0, None, 200.0]):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=1000.0, renewable_kw=0.0,
                                    hashrate_th_s=100_000.0, noise={}, price_usd_mwh=price)
        recorder.flush()
        recorder.close()
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")
    intervals = report["intervals"]
    assert intervals[2]["price_usd_mwh"] is None
    assert intervals[2]["energy_cost_usd"] is None  # unknown, not $0
    cost_one = intervals[0]["energy_cost_usd"]
    revenue_one = intervals[0]["revenue_usd"]
    assert cost_one > 0 and intervals[1]["energy_cost_usd"] == cost_one
    economics = report["economics"]
    assert economics["uncosted_intervals"] == 1
    assert economics["uncosted_hours"] == 0.25
    assert economics["uncosted_grid_import_mwh"] == 0.25
    assert economics["energy_cost_usd"] == pytest.approx(3 * cost_one, abs=0.01)
    assert economics["average_energy_cost_usd_per_mwh"] == pytest.approx(3 * cost_one / 0.75, abs=0.01)
    assert economics["revenue_usd"] == pytest.approx(4 * revenue_one, abs=0.01)  # hashes are paid regardless
    assert economics["uncosted_revenue_usd"] == pytest.approx(revenue_one, abs=0.01)
    assert economics["profit_usd"] == pytest.approx(3 * revenue_one - 3 * cost_one, abs=0.01)
    assert any("1 interval(s) without an RT settlement point price, not costed" in n for n in economics["notes"])
    (hour,) = report["hourly"]
    assert hour["uncosted_intervals"] == 1 and hour["energy_cost_usd"] == pytest.approx(3 * cost_one, abs=0.01)
    page = to_html(report)
    assert "without an RT settlement point price, not costed" in page
    csv_rows = dict(line.split(",", 1) for line in to_csv(report).splitlines()[1:])
    assert csv_rows["economics.uncosted_intervals"] == "1"


def test_a_fully_priced_period_has_nothing_uncosted(tmp_path: Path) -> None:
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "priced.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                           solver=SolveRunner(inline=True), store=store, recorder=recorder)
        for k in range(2):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=1000.0, renewable_kw=0.0,
                                    hashrate_th_s=100_000.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["economics"]
    assert economics["uncosted_intervals"] == 0 and economics["notes"] == []
    assert economics["profit_usd"] == pytest.approx(economics["revenue_usd"] - economics["energy_cost_usd"], abs=0.01)
