"""Repair vs replace (issue 17) over a price history with the site's curtailment: hand-worked numbers,
real HiGHS solves, the repair log read without being changed."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.repair import RepairCase, evaluate_repair, failing_units, npv_usd, profile_variants
from hashflex.backtest.runner import build_actuals
from hashflex.health.detectors import Finding
from hashflex.health.repairs import RepairLog
from hashflex.profile import parse_profile

# hashprice 48 $/PH/day = 0.002 $/TH/h, no pool fee, no adders, no idle draw, no start costs:
# eff 300 TH/s at 3 kW breaks even at 200 $/MWh; old 100 TH/s at 3 kW at 66.67 $/MWh.
SITE = """
site: {id: tiny, name: Tiny repair site, timezone: America/Chicago, settlement_point: LZ_TEST,
       interval_minutes: 15, horizon_hours: 4, fine_horizon_hours: 4}
grid: {import_limit_kw: 100}
miner_groups:
  - {id: eff, model: efficient, units: 3, idle_power_kw: 0,
     modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 300, sound_power_dba: 80}]}
  - {id: old, model: old, units: 2, idle_power_kw: 0,
     modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 100, sound_power_dba: 80}]}
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
"""


def site():
    return parse_profile(SITE, "tiny")


def day_prices() -> pd.DataFrame:
    """2024-03-04 (history) at 50 $/MWh; 2024-03-05: 50 $/MWh until noon, 100 $/MWh after (local)."""
    prices = [50.0] * 96 + [50.0] * 48 + [100.0] * 48
    starts = pd.date_range(pd.Timestamp("2024-03-04T00:00-06:00").tz_convert("UTC"), periods=len(prices), freq="15min")
    return pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(minutes=15),
                         "settlement_point": "LZ_TEST", "market": "RT", "price_usd_mwh": prices})


CASE = RepairCase(group_id="old", units=1, repair_cost_usd=200.0, repair_downtime_days=10.0,
                  repaired_hashrate_th_s=90.0, repaired_power_kw=3.0, repaired_life_days=365.0,
                  new_model="S21 test", new_hashrate_th_s=300.0, new_power_kw=3.0, new_sound_dba=80.0,
                  new_unit_price_usd=1000.0, tariff_rate=0.25, replace_lead_days=30.0, salvage_usd=50.0,
                  horizon_days=730.0, discount_rate=0.0)


@pytest.fixture(scope="module")
def result():
    profile = site()
    actuals = build_actuals(profile, day_prices(), "2024-03-05", "2024-03-06")
    return evaluate_repair(profile, actuals, CASE)


def test_margins_follow_the_curtailment_by_hand(result) -> None:
    """The repaired unit (90 TH/s, breakeven 60 $/MWh) runs only the 12 cheap hours: 90 × 0.002 × 12 −
    3 × 12 × 50/1000 = 2.16 − 1.80 = 0.36 $/day. The new unit (breakeven 200) runs all day: 7.2 − 1.8
    + 7.2 − 3.6 = 9.00 $/day. A flat-price answer would not see the repaired unit sleep."""
    assert result["window_days"] == pytest.approx(1.0)
    assert result["repair"]["margin_usd_per_day"] == pytest.approx(0.36, abs=1e-6)
    assert result["replace"]["margin_usd_per_day"] == pytest.approx(9.00, abs=1e-6)
    down = result["variants"]["down"]
    # down: 3 eff all day (21.6 − 5.4 − 10.8 ... by hand: 3 × (14.4 − 1.8 − 3.6)) + 1 old for the cheap 12 h
    # (100 × 0.002 × 12 − 1.8 = 0.6): 27.0 + 0.6.
    assert down["profit_usd"] == pytest.approx(27.6, abs=1e-6)


def test_payback_and_npv_side_by_side_by_hand(result) -> None:
    repair, replace = result["repair"], result["replace"]
    # repair: $200 now, 10 days down, then 0.36 $/day until day 365.
    assert repair["cost_usd"] == pytest.approx(200.0)
    assert repair["running_days"] == 355
    assert repair["payback_days"] == pytest.approx(10 + 200 / 0.36)
    assert repair["npv_usd"] == pytest.approx(-200 + 0.36 * 355, abs=1e-6)
    # replace: 1000 × 1.25 − 50 salvage = $1,200 now, 30 days lead, then 9 $/day until day 730.
    assert replace["cost_usd"] == pytest.approx(1200.0)
    assert replace["payback_days"] == pytest.approx(30 + 1200 / 9)
    assert replace["npv_usd"] == pytest.approx(-1200 + 9 * 700, abs=1e-6)
    assert result["choice"] == "replace"


def test_discounting_by_hand() -> None:
    days = np.arange(30, 730)
    assert npv_usd(1200.0, 9.0, 30, 730, 0.10) == pytest.approx(-1200 + (9.0 / 1.1 ** (days / 365)).sum())
    assert npv_usd(0.0, 1.0, 0, 365, 0.0) == pytest.approx(365.0)


def test_variants_put_the_units_where_the_failing_ones_were() -> None:
    profile = parse_profile(SITE + """receptors:
  - {id: house, attenuation_db: {eff: 40, old: 55}, background_dba: 20, model_margin_db: 0,
     caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 60}]}
""", "tiny")
    variants = profile_variants(profile, CASE)
    assert variants["down"].group("old").units == 1
    assert variants["repaired"].group("repaired_old").units == 1
    assert variants["repaired"].receptors[0].attenuation_from("repaired_old") == 55
    assert variants["replaced"].receptors[0].attenuation_from("new_s21_test") == 55
    whole = profile_variants(profile, RepairCase(**{**CASE.__dict__, "units": 2}))
    assert [g.id for g in whole["down"].miner_groups] == ["eff"]


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ValueError, match="units"):
        profile_variants(site(), RepairCase(**{**CASE.__dict__, "units": 3}))
    with pytest.raises(ValueError, match="group_id"):
        profile_variants(site(), RepairCase(**{**CASE.__dict__, "group_id": "nope"}))
    with pytest.raises(ValueError, match="tariff_rate"):
        profile_variants(site(), RepairCase(**{**CASE.__dict__, "tariff_rate": -0.1}))
    with pytest.raises(ValueError, match="repaired_power_kw"):
        profile_variants(site(), RepairCase(**{**CASE.__dict__, "repaired_power_kw": math.nan}))


def test_failing_units_are_read_from_the_repair_log_without_changing_it(tmp_path) -> None:
    path = tmp_path / "repairs.db"
    log = RepairLog(path)
    at = datetime(2024, 3, 5, tzinfo=timezone.utc)
    log.open_ticket(Finding("old-1", "lost_hashboard", "critical", "2 of 3 boards", at))
    log.open_ticket(Finding("old-1", "overheating", "warning", "96 C", at))  # one miner, counted once
    second = log.open_ticket(Finding("old-2", "failing_fan", "warning", "fan 0 rpm", at))
    log.start(second.id, "tech")
    done = log.open_ticket(Finding("eff-1", "failing_fan", "warning", "fan 0 rpm", at))
    log.close(done.id, "fan swapped")
    log.open_ticket(Finding("ghost-9", "overheating", "warning", "not in this profile", at))
    log.close_db()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert failing_units(path, site()) == {"old": ["old-1", "old-2"]}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with pytest.raises(ValueError, match="repair_log"):
        failing_units(tmp_path / "missing.db", site())
