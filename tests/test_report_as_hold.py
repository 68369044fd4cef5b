"""The evidence report follows the controller's deployment rules (issue 15, third QSE/auditor review):
a deployment without a recall holds until the backstop ``ancillary.max_hold_h`` (flagged past its
product's sustained duration), and an award amended after the instruction raises the limit as a new
award would (A₀ as known at the instruction, kept in the ``as_performance`` record). The report
ended a deployment at the sustained duration and recomputed A₀ from today's awards, so it measured
against other limits than the loop enforced. SYNTHETIC site and prices (test_as_deployment_semantics)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from test_as_deployment_semantics import MIN, NOW, _award, _awarded_loop, _deploy, _loop, _profile, _running

from hashflex.control.records import AuditRecorder
from hashflex.report import build_report
from hashflex.store import Store


def _measure(loop, start, load_kw: float) -> None:  # noqa: ANN001
    loop.record_measurement(start, 0.25, load_kw=load_kw, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                            price_usd_mwh=200.0)


def test_a_deployment_held_past_its_sustained_duration_is_measured_until_recalled(tmp_path: Path) -> None:
    """RRS 3,960 kW deployed at 17:05 on 5,050 kW: limit 1,090 kW; never recalled in the period.
    The loop holds it past its sustained duration (RRS: 30 min under RTC+B, NPRR1282; 1 h before) and
    flags it; the report's row stayed in force only until 18:05 (then 1 h) and did not measure the 18:15 interval, where the site drew 2,090 kW: 1 MW over
    the limit still in force."""
    db = tmp_path / "hold.db"
    profile = _profile()
    at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(profile, store, recorder)
        assert loop.handle_as_deploy(_deploy("long", at, 3960.0), at).status == "accepted"
        loop.tick(at + timedelta(hours=1, minutes=10))  # past the sustained duration: flagged
        assert loop.counters["as_overrun"] == 1
        for k, load_kw in enumerate([1090.0] * 5 + [2090.0]):  # 17:15 … 18:30
            _measure(loop, NOW + timedelta(minutes=15) * (k + 1), load_kw)
        recorder.flush()
        recorder.close()
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T19:00Z")["ancillary"]
    (row,) = section["deployments"]
    assert pd.Timestamp(row["in_force_until"]) == pd.Timestamp(at + timedelta(hours=8))  # max_hold_h 8 h
    assert section["overrun_count"] == 1 and section["released_count"] == 0
    short = {i["interval_start"]: i["shortfall_kw"] for i in section["shortfall_intervals"]}
    assert short["2024-06-03T18:30:00+00:00"] == pytest.approx(1000.0)
    assert any("sustained duration" in n for n in section["notes"])


def test_the_report_measures_an_amended_award_as_the_loop_does(tmp_path: Path) -> None:
    """RRS 2,970 + ECRS 990 kW awarded; RRS deployed 1,980 kW at 17:05: limit 2,080 kW. ECRS amended
    to 1,980 kW at 17:30 (its window covers the instruction). The report measures the 17:45 interval
    against the limit the loop enforces. The rule changed by decision (was: the amendment raised the
    limit by 990 kW to 3,070 kW, no shortfall): the limit stays 2,080 kW, measured from the
    pre-deployment load only, so drawing 3,070 kW is 990 kW short in the loop and the report alike."""
    db = tmp_path / "amend.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(_profile(), store, recorder)
        assert loop.handle_as_award(_award("rrs", "RRS", 2970.0), NOW).status == "accepted"
        assert loop.handle_as_award(_award("ecrs", "ECRS", 990.0), NOW).status == "accepted"
        loop.tick(NOW)
        assert _running(loop) == 4
        at = NOW + 5 * MIN
        assert loop.handle_as_deploy(_deploy("dep", at, 1980.0), at).status == "accepted"
        amended_at = NOW + 30 * MIN
        assert loop.handle_as_award(_award("ecrs", "ECRS", 1980.0, revision=1), amended_at).status == "accepted"
        assert loop.book.import_limits_at(NOW + 45 * MIN)["AS:RRS:dep"] == pytest.approx(2080.0)
        _measure(loop, NOW + 45 * MIN, 3070.0)
        recorder.flush()
        recorder.close()
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    (interval,) = [i for i in section["shortfall_intervals"] if i["interval_start"] == "2024-06-03T17:45:00+00:00"]
    assert interval["binding_limit_kw"] == pytest.approx(2080.0)
    assert interval["shortfall_kw"] == pytest.approx(990.0)
