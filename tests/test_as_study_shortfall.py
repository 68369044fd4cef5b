"""The last 0.002 % of reserve obligations in the 112-day study (issue 15, H9).

Traced with ``optimization/benchmarks/ancillary_value.py --trace-short``: 66 of the 69 short
intervals (price-taking) were a fraction of one unit (4.96 kW of a 10,000 kW RRS award held by
1,893 hydro units at 5.28 kW each, 0.3 kW of ECRS), in the held plan, solved "optimal" from the
rounded LP start. The plan had filled the day's carbon budget, so no unit fitted at the short
interval, and every unit running there carried an award, so the cover's swap (`_swap_in`, which
sleeps units at that interval only) had nothing to sleep. The budget is a day's: its room can come
from another interval, where a unit no award needs steps down a mode.

A hand-checkable SYNTHETIC site: two intervals of 15 min, 400 kg/MWh. Hydro (RRS, 2 MW qualified)
units eco 510 kW (500 kW sheddable over a 10 kW idle); air units (no award) eco 510 / turbo 1,510 kW.
RRS award 1,500 kW both intervals. Counts: t0 hydro eco 2 (1,000 kW held: 500 kW short), nothing
else running; t1 hydro eco 3, air turbo 2. The carbon budget is exactly what these counts emit.
Load (asleep units at idle): t0 2 x 510 + 6 x 10 = 1,080 kW, t1 3 x 510 + 2 x 1,510 + 3 x 10 =
4,580 kW: (1,080 + 4,580) kW x 0.25 h x 0.4 kg/kWh = 566 kg, the budget. One more hydro unit at t0
needs 500 kW x 0.1 kg/kW = 50 kg; one air unit stepped turbo -> eco at t1 frees 1,000 x 0.1 = 100 kg.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from hashflex.optimize.build import problem_from_profile
from hashflex.optimize.problem import CarbonBudget
from hashflex.optimize.rounding import cover_reserve_obligations, load_kw
from hashflex.optimize.schedule import reserve_from_counts
from hashflex.profile import parse_profile

PROFILE = """
site: {name: AS study shortfall SYNTHETIC, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
grid: {import_limit_kw: 30000}
miner_groups:
  - id: hydro
    model: container
    units: 4
    cooling: hydro
    idle_power_kw: 10
    modes: [{name: eco, power_kw: 510, hashrate_th_s: 30000, sound_power_dba: 80}]
  - id: air
    model: hall
    units: 4
    cooling: air
    idle_power_kw: 10
    modes:
      - {name: eco, power_kw: 510, hashrate_th_s: 20000, sound_power_dba: 80}
      - {name: turbo, power_kw: 1510, hashrate_th_s: 40000, sound_power_dba: 85}
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: SYNTHETIC}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
ancillary:
  issuer: qse-test
  groups: {hydro: {response_s: 0.5, under_frequency_relay: true}, air: {response_s: 30}}
  products:
    RRS: {group_mw: {hydro: 2}, expected_deployments_per_month: 0}
"""


def _case() -> tuple[object, dict]:
    """(problem with the carbon budget exactly full, counts) of the module docstring (SYNTHETIC)."""
    profile = parse_profile(PROFILE, source="SYNTHETIC")
    index = pd.date_range("2024-03-22T12:00Z", periods=2, freq="15min")
    award = {"RRS": np.array([1500.0, 1500.0])}
    problem = problem_from_profile(profile, index, np.array([30.0, 30.0]), as_award_kw=award,
                                   as_price_usd_mw_h={"RRS": np.array([5.0, 5.0])}, carbon_budgets=())
    counts = {(0, 0): np.array([2, 3]), (1, 0): np.array([0, 0]), (1, 1): np.array([0, 2])}
    kg = float((load_kw(problem, counts) * 0.25 * 400.0 / 1000.0).sum())
    assert abs(kg - (1080.0 + 4580.0) * 0.25 * 400.0 / 1000.0) < 1e-9  # hand check: 566 kg
    budget = CarbonBudget(name="daily SYNTHETIC", mask=np.array([True, True]), remaining_kg=kg)
    return dataclasses.replace(problem, carbon_budgets=(budget,)), counts


def test_a_full_daily_carbon_budget_gets_room_from_another_interval() -> None:
    """Before the fix: nothing added, RRS 500 kW short at t0 (failed). After: one hydro unit at t0,
    one air unit stepped turbo -> eco at t1, the award held and the budget kept."""
    problem, counts = _case()
    _, short_before, _ = reserve_from_counts(problem, counts)
    assert short_before["RRS"][0] == 500.0  # the case is what the docstring says
    added = cover_reserve_obligations(problem, counts)
    _, short, _ = reserve_from_counts(problem, counts)
    assert added == 1
    assert np.all(short["RRS"] < 1e-6), short["RRS"]
    assert counts[0, 0].tolist() == [3, 3]
    assert counts[1, 1].tolist() == [0, 1] and counts[1, 0].tolist() == [0, 1]
    emitted = float((load_kw(problem, counts) * 0.25 * 400.0 / 1000.0).sum())
    assert emitted <= problem.carbon_budgets[0].remaining_kg + 1e-9
    assert abs(emitted - (1580.0 + 3580.0) * 0.25 * 400.0 / 1000.0) < 1e-9  # 516 kg


def test_an_award_needing_the_other_intervals_units_stays_short() -> None:
    """No unit that could step down at another interval (t1 runs only the hydro units the award
    needs, in their one mode): nothing is added, the counts are unchanged and the 500 kW short
    stays stated."""
    problem, counts = _case()
    counts[1, 1] = np.array([0, 0])  # t1: no air units running, nothing to step down
    budget = CarbonBudget(name="daily SYNTHETIC", mask=np.array([True, True]),
                          remaining_kg=float((load_kw(problem, counts) * 0.25 * 400.0 / 1000.0).sum()))
    problem = dataclasses.replace(problem, carbon_budgets=(budget,))
    before = {k: v.copy() for k, v in counts.items()}
    assert cover_reserve_obligations(problem, counts) == 0
    assert all(np.array_equal(counts[k], before[k]) for k in counts)
    _, short, _ = reserve_from_counts(problem, counts)
    assert short["RRS"][0] == 500.0


# The other 3 short intervals (both offer rules): 27 Feb 2024, a SYNTHETIC RRS deployment from
# 00:15 local. The study's deployment re-solve planned the day from a cold start, so every unit
# running at 00:00 was a start with a 30 min minimum on time; shedding the 10 MW at 00:15 then broke
# min-on ($1,000 a unit), so the plan ran fewer hydro units at 00:00 (RRS 2,143.6 kW short) and kept
# hydro units no award needed on at 00:15 under the deployment's import limit (ECRS 639 kW short);
# HiGHS also hit its 20 s limit. The site was running at midnight (the held plan's 00:00): the
# re-solve now starts from those units on. SYNTHETIC site below: hand-checkable.
DEPLOY_PROFILE = """
site: {name: AS deployment re-solve SYNTHETIC, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
grid: {import_limit_kw: 30000}
miner_groups:
  - id: hydro
    model: container
    units: 4
    cooling: hydro
    idle_power_kw: 10
    min_on_minutes: 30
    modes: [{name: run, power_kw: 1010, hashrate_th_s: 50000, sound_power_dba: 80}]
  - id: air
    model: hall
    units: 4
    cooling: air
    idle_power_kw: 10
    min_on_minutes: 30
    modes: [{name: run, power_kw: 1010, hashrate_th_s: 40000, sound_power_dba: 80}]
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: SYNTHETIC}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
ancillary:
  issuer: qse-test
  groups: {hydro: {response_s: 0.5, under_frequency_relay: true}, air: {response_s: 30}}
  products:
    RRS: {group_mw: {hydro: 4}, expected_deployments_per_month: 0}
    ECRS: {group_mw: {air: 4}, expected_deployments_per_month: 0}
"""


def test_the_deployment_resolve_starts_from_the_units_running_at_midnight() -> None:
    """SYNTHETIC: 8 intervals of 15 min at $20/MWh (every unit mines: 50 and 40 TH/s per kW-ish at
    48 $/PH/day), awards RRS 3,000 kW (3 hydro units) and ECRS 4,000 kW (all 4 air units) all day, an
    RRS deployment at t1-t2. The held plan runs all 8 units (8 x 1,010 = 8,080 kW); the deployment
    caps the import at 8,080 - 3,000 = 5,080 kW at t1-t2 (4 air units for ECRS + 1 hydro = 5,050 kW).
    Before: from a cold start, the 2 hydro units that must stop at t1 break their 30 min min-on
    ($1,000 a unit, more than the short penalty), so the plan leaves RRS short at t0 (failed).
    After: the re-solve starts from the 8 units running at midnight; nothing short."""
    from hashflex.backtest.ancillary import ASDayResult, _settle_day

    profile = parse_profile(DEPLOY_PROFILE, source="SYNTHETIC")
    index = pd.date_range("2024-02-27T06:00Z", periods=8, freq="15min")
    rt = np.full(8, 20.0)
    award = {"RRS": np.full(8, 3000.0), "ECRS": np.full(8, 4000.0)}
    mcpc = {"RRS": np.full(8, 5.0), "ECRS": np.full(8, 5.0)}
    deployed = {"RRS": np.array([False, True, True] + [False] * 5), "ECRS": np.zeros(8, dtype=bool)}
    result = ASDayResult()
    _settle_day(profile, index, rt, mcpc, award, deployed, result, hp=None, time_limit_s=20.0, gap=0.005, dt_h=0.25)
    assert result.deployments == 1
    # Awarded: (3,000 + 4,000) kW x 8 x 0.25 h = 14 MW·h; held the same (shed during the deployment counts).
    assert abs(result.awarded_mwh - 14.0) < 1e-9
    assert result.short_intervals == [], result.short_intervals
    assert abs(result.held_mwh - 14.0) < 1e-6


def test_the_deployment_resolve_still_pays_the_days_first_starts() -> None:
    """Every study day is a cold start (energy-only pays its 00:00 starts): the re-solve that starts
    from the units running at midnight still charges them. SYNTHETIC: $1 a start on both groups;
    the 8 units at 00:00 cost $8, so the day's profit falls by at least $8 against $0 starts (the
    3 hydro units stopped at t1, 4 air + 1 hydro = 5,050 kW under the 5,080 kW cap, and restarted
    at t3 add $3: $11; the plan itself does not change for $1 against ~$100/h of hashes a unit)."""
    from hashflex.backtest.ancillary import ASDayResult, _settle_day

    index = pd.date_range("2024-02-27T06:00Z", periods=8, freq="15min")
    award = {"RRS": np.full(8, 3000.0), "ECRS": np.full(8, 4000.0)}
    mcpc = {"RRS": np.full(8, 5.0), "ECRS": np.full(8, 5.0)}
    deployed = {"RRS": np.array([False, True, True] + [False] * 5), "ECRS": np.zeros(8, dtype=bool)}
    profits = []
    for cost in (0.0, 1.0):
        text = DEPLOY_PROFILE.replace("min_on_minutes: 30", f"min_on_minutes: 30\n    start_cost_usd: {cost}")
        result = ASDayResult()
        _settle_day(parse_profile(text, source="SYNTHETIC"), index, np.full(8, 20.0), mcpc, award, deployed, result,
                    hp=None, time_limit_s=20.0, gap=0.005, dt_h=0.25)
        assert result.short_intervals == []
        profits.append(result.profit_with_as_usd)
    assert 8.0 - 1e-6 <= profits[0] - profits[1] <= 11.0 + 1e-6, profits
