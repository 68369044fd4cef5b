"""The daemon's per-interval measurement is the interval's mean load, not a snapshot of its end
(newcomer, issue 15: a `measurement` record said 92 kW for 05:45-06:00 while the site drew 17.6-19.6 MW
for 14 of the 15 minutes; the reserve hold and the energy, cost and emissions are computed from it)."""

from __future__ import annotations

import pytest

from hashflex.control.records import IntervalMeter


def test_each_miners_mean_over_its_reports_summed() -> None:
    meter = IntervalMeter()
    for power_kw, hashrate in ((5.0, 200.0), (5.0, 200.0), (5.0, 200.0), (0.1, 0.0)):  # cut in the last minute
        meter.telemetry("m1", power_kw, hashrate)
    meter.telemetry("m2", 3.0, 100.0)  # reported once
    summary = meter.summary({})
    assert summary["load_kw"] == pytest.approx(15.1 / 4 + 3.0)  # was 0.1 + 3.0: the last report
    assert summary["hashrate_th_s"] == pytest.approx(600.0 / 4 + 100.0)
    assert summary["telemetry_miners"] == 2
    meter.reset()
    assert meter.summary({})["load_kw"] == 0.0
