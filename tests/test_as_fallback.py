"""The greedy fallback holds awarded reserve as the MILP does (issue 15): hand-checkable cases.

A qualified immersion unit sheds 3.5 kW (3.6 kW running, 0.1 kW asleep), so an RRS award of 5 MW
needs ceil(5,000 / 3.5) = 1,429 units running: 1,428 hold only 4,998 kW. Hashprice $48/PH/day on
100 TH/s earns $0.20/h per unit, breakeven $0.20 / 3.5 kW = $57.14/MWh of shed load; at $500/MWh
energy alone runs nothing. The air group is not qualified for any product, and it earns a little more
(101 TH/s), so a greedy by profit alone fills any room with it first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.optimize.fallback import greedy_schedule
from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.schedule import SolveStatus
from hashflex.profile import parse_profile

PROFILE = """
site: {{name: AS Fallback Test, settlement_point: HB_WEST, timezone: America/Chicago}}
grid: {{import_limit_kw: {import_kw}}}
miner_groups:
  - id: immersion
    model: S19 immersion
    units: 2000
    cooling: immersion
    idle_power_kw: 0.1
    modes: [{{name: run, power_kw: 3.6, hashrate_th_s: 100, sound_power_dba: 60}}]
  - id: air
    model: S19 air
    units: 2000
    cooling: air
    idle_power_kw: 0.1
    modes: [{{name: run, power_kw: 3.6, hashrate_th_s: 101, sound_power_dba: 60}}]
receptors:
  - id: farm
    attenuation_db: {{immersion: 60, air: 60}}
    background_dba: 0
    cap_applies_to: site
    model_margin_db: 0
    caps: [{{name: night, start: "22:00", end: "06:00", cap_dba: {night_cap}}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: qse-test
  groups: {{immersion: {{response_s: 0.5, under_frequency_relay: true}}}}
  products:
    RRS: {{group_mw: {{immersion: 7}}, expected_deployments_per_month: 0}}
"""
NEEDED = 1429  # ceil(5000 / 3.5)


def profile(import_kw: float = 20000.0, night_cap: float = 80.0):
    return parse_profile(PROFILE.format(import_kw=import_kw, night_cap=night_cap), source="test")


def index(start_local: str, n: int) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(start_local, tz="America/Chicago"), periods=n, freq="15min")


def test_below_breakeven_the_fallback_keeps_exactly_the_units_an_award_needs() -> None:
    """$500/MWh, RRS award 5 MW: exactly 1,429 qualified units run (not the air group), 5,001.5 kW
    held, nothing short; the MILP's award row, without the solver."""
    problem = problem_from_profile(profile(), index("2024-06-01 12:00", 4), np.full(4, 500.0),
                                   as_award_kw={"RRS": 5000.0}, as_price_usd_mw_h={"RRS": 1.0})
    schedule = greedy_schedule(problem, reason="solver timeout after 5.0 s")
    frame = schedule.frame
    assert schedule.info.status == SolveStatus.FALLBACK
    assert (frame["units_immersion_run"] == NEEDED).all()
    assert (frame["units_air_run"] == 0).all()
    assert frame["reserve_RRS_kw"].to_numpy() == pytest.approx(np.full(4, 5000.0))
    assert (frame["reserve_RRS_short_kw"] < 1e-6).all()
    assert schedule.info.message == "solver timeout after 5.0 s"  # nothing short: nothing added to the reason


def test_above_breakeven_the_award_is_held_from_qualified_units_before_the_import_limit_fills() -> None:
    """$20/MWh (every unit profitable) but an import limit of 6 MW: 400 kW of idle draw, then
    5,600 kW / 3.5 kW = 1,600 units fit. Greedy by profit alone fills them with air units (the award
    short by all of it); the award needs 1,429 of them to be qualified units, as the MILP's short
    penalty (above any margin) makes it choose, and the other 171 are air units."""
    problem = problem_from_profile(profile(import_kw=6000.0), index("2024-06-01 12:00", 2), np.full(2, 20.0),
                                   as_award_kw={"RRS": 5000.0}, as_price_usd_mw_h={"RRS": 1.0})
    frame = greedy_schedule(problem, reason="solver failure").frame
    assert (frame["units_immersion_run"] == NEEDED).all()
    assert (frame["units_air_run"] == 1600 - NEEDED).all()
    assert (frame["reserve_RRS_short_kw"] < 1e-6).all()
    assert (frame["grid_import_kw"] <= 6000.0 + 1e-6).all()


def test_night_noise_cap_that_cannot_hold_the_award_says_how_short() -> None:
    """From 22:00 the farm's cap is 30 dB(A): each running unit adds 10^0 = 1 unit of noise energy at
    the farm (60 − 60 dB), so 10^3 = 1,000 units may run: 3,500 kW held, 1,500 kW short, and the
    fallback's reason names the product, the MW short and the limit."""
    problem = problem_from_profile(profile(night_cap=30.0), index("2024-06-01 21:30", 4), np.full(4, 500.0),
                                   as_award_kw={"RRS": 5000.0}, as_price_usd_mw_h={"RRS": 1.0})
    schedule = greedy_schedule(problem, reason="solver timeout after 5.0 s")
    frame = schedule.frame
    assert frame["units_immersion_run"].tolist() == [NEEDED, NEEDED, 1000, 1000]
    assert frame["reserve_RRS_short_kw"].to_numpy() == pytest.approx([0, 0, 1500, 1500])
    assert (frame["noise_dba_farm"] <= frame["noise_cap_dba_farm"] + 1e-9).all()
    message = schedule.info.message
    assert message.startswith("solver timeout after 5.0 s; ")
    assert "reserve RRS short 1.5 MW" in message
    assert "2 of 4 intervals" in message
    assert "noise:farm" in message
    details = frame["reason_detail"].tolist()
    assert "reserve RRS 1.5 MW short" in details[2] and "noise:farm" in details[2]
    assert "short" not in details[0]


def test_a_dr_import_limit_wins_over_the_award_and_the_shortfall_names_it() -> None:
    """A DR limit of 2 MW: 400 kW of sleeping units' idle draw, so 1,600 kW / 3.5 kW = 457 units may
    run (1,599.5 kW shed): the award is 3,400.5 kW short, the limit holds (safety first)."""
    problem = problem_from_profile(profile(), index("2024-06-01 12:00", 2), np.full(2, 500.0),
                                   import_limit_kw=np.full(2, 2000.0), as_award_kw={"RRS": 5000.0},
                                   as_price_usd_mw_h={"RRS": 1.0})
    schedule = greedy_schedule(problem, reason="solver failure")
    frame = schedule.frame
    assert (frame["grid_import_kw"] <= 2000.0 + 1e-6).all()
    assert (frame["units_immersion_run"] == 457).all()
    assert frame["reserve_RRS_short_kw"].to_numpy() == pytest.approx([3400.5, 3400.5])
    assert "reserve RRS short 3.4 MW" in schedule.info.message
