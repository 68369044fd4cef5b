"""Issue 15: an award's first interval is held under a binding noise cap and min on/off.

Through the loop on 4 May 2024 (``ancillary_value.py --loop --from 2024-05-03 --days 3``, price-taking)
the 4,900 kW Non-Spin award from 06:00 CDT was held from 06:15 on but 90.37 kW short at 06:00 (the
run's only 0.023 MW·h short). The 05:15 CDT plan (status optimal: the rounded LP start within the
gap) already had it: under the night cap at ranch_north one S19j Pro in eco (2.59 kW of Non-Spin)
takes the noise room of 14 S21 XP Hydro in turbo, so the LP relaxation itself held 1,857.3 units
rather than 1,892 (the short penalty, ~$0.3/kWh, was below the ~$6/kWh the room earns), and the
cover (`rounding.cover_reserve_obligations`) made room from 06:15 on but not at 06:00: a unit
started at 06:00 must run its 30-minute minimum on time, so it needed room at 06:15 as well, which
the cover made only when it reached 06:15, and it never went back. The carbon budget did not bind
(176 t of the day's 220 t left).

The same on a SYNTHETIC site small enough to check by hand: 20 quiet units (10 kW, 500 TH/s,
80 dB(A)) and 10 loud ones qualified for Non-Spin (10 kW, 200 TH/s, 90 dB(A)); one receptor 40 dB
from both, its cap on the site's contribution 53.1 dB(A) = 204,174 energy units: 20 quiet units
(20 × 10^4) or 2 loud ones (2 × 10^5) fit, 2 loud and 1 quiet do not. Energy $20/MWh, hashprice
$48/PH/day (0.002 $ per TH/s-hour): a quiet unit earns $1.00/h of hashes for $0.20/h of energy, a
loud one $0.40/h. A Non-Spin award of 20 kW over intervals 2 and 3 (15 minutes each) needs both loud
units running and every quiet unit asleep. Holding it costs 20 quiet units' margin less 2 loud ones',
20 × 0.80 − 2 × 0.20 = $15.60/h; the old penalty was 20 kW × ($0.02 + $0.10 hashes per kW + $0.005
MCPC + $0.10) = $4.50/h, so the plan preferred the shortfall.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.optimize.milp import reserve_short_penalty_usd_per_kw
from hashflex.optimize.problem import GroupState, Problem, problem_from_profile
from hashflex.optimize.rounding import (
    cover_reserve_obligations,
    noise_energy,
    reserve_uncovered_kw,
)
from hashflex.optimize.solve import _compiled_for, solve
from hashflex.profile import parse_profile

PROFILE = """
site: {{name: First Interval, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}}
grid: {{import_limit_kw: 10000}}
miner_groups:
  - id: quiet
    model: efficient
    units: 20
    cooling: air
    idle_power_kw: 0
    min_on_minutes: {quiet_min_on}
    min_off_minutes: 15
    modes: [{{name: run, power_kw: 10, hashrate_th_s: 500, sound_power_dba: 80}}]
  - id: loud
    model: old
    units: 10
    cooling: air
    idle_power_kw: 0
    min_on_minutes: 30
    min_off_minutes: 15
    modes: [{{name: run, power_kw: 10, hashrate_th_s: 200, sound_power_dba: 90}}]
receptors:
  - id: house
    attenuation_db: {{quiet: 40, loud: 40}}
    background_dba: 30
    cap_applies_to: site
    model_margin_db: 0
    caps: [{{name: always, start: "00:00", end: "23:59", cap_dba: 53.1}},
           {{name: late, start: "23:59", end: "00:00", cap_dba: 53.1}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: qse-test
  groups: {{loud: {{response_s: 30}}}}
  products:
    NSPIN: {{group_mw: {{loud: 0.1}}, expected_deployments_per_month: 0}}
"""
INDEX = pd.date_range("2024-06-03T09:00Z", periods=4, freq="15min")  # 04:00-05:00 CDT
AWARD_KW = np.array([0.0, 0.0, 20.0, 20.0])  # 2 loud units from interval 2


def _problem(*, quiet_min_on: int = 30, initial: dict[str, GroupState] | None = None) -> Problem:
    profile = parse_profile(PROFILE.format(quiet_min_on=quiet_min_on), source="test")
    return problem_from_profile(profile, INDEX, [20.0] * 4, as_award_kw={"NSPIN": AWARD_KW},
                                as_price_usd_mw_h={"NSPIN": 5.0},
                                initial=initial or {"quiet": GroupState(units_on=20)})


def _within_cap(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> bool:
    receptor = problem.receptors[0]
    return bool(np.all(noise_energy(problem, receptor, counts) <= receptor.energy_budget() + 1e-6))


def test_the_site_is_as_described() -> None:
    problem = _problem()
    receptor = problem.receptors[0]
    quiet, loud = problem.groups
    assert receptor.unit_energy("quiet", quiet.modes[0]) == pytest.approx(1e4)
    assert receptor.unit_energy("loud", loud.modes[0]) == pytest.approx(1e5)
    assert receptor.energy_budget() == pytest.approx(np.full(4, 10 ** 5.31))
    assert problem.hashprice_usd_per_th_h == pytest.approx(np.full(4, 0.002))


def test_the_cover_holds_the_first_interval_of_an_award() -> None:
    """Every quiet unit running, no loud one: the award is short 20 kW at 2 and 3. A loud unit
    started at 2 must run at 3 too (min on 30 min), so it needs room at both; the cover made room
    at 3 only when it got there, and left interval 2 short. It must hold both: quiet asleep and 2
    loud units at 2 and 3, within the cap."""
    problem = _problem()
    counts = {(0, 0): np.full(4, 20), (1, 0): np.zeros(4, dtype=int)}
    assert reserve_uncovered_kw(problem, counts) == pytest.approx([0.0, 0.0, 20.0, 20.0])

    cover_reserve_obligations(problem, counts)

    assert reserve_uncovered_kw(problem, counts) == pytest.approx(np.zeros(4), abs=1e-9)
    assert counts[1, 0].tolist() == [0, 0, 2, 2]
    assert counts[0, 0].tolist() == [20, 20, 0, 0]
    assert _within_cap(problem, counts)


def test_the_plan_values_holding_above_the_noise_room_it_takes() -> None:
    """The LP relaxation (the start the 4 May plan kept) holds the award: the short penalty per kW
    is above what the noise room of 1 kW of loud reserve earns, one quiet unit's $1.00/h of hashes,
    and the LP puts both loud units on at 2 and 3 instead of 20 quiet ones (it was 0.042 loud units
    and 20 quiet ones before: 19.6 kW short)."""
    problem = _problem()
    penalty = reserve_short_penalty_usd_per_kw(problem)
    # 20 kW short for 15 minutes must cost more than $15.60/h × 0.25 h of holding.
    assert 20.0 * penalty[2] > 15.60 * 0.25
    compiled, _model, _ = _compiled_for(problem, None)
    highs = compiled.highs
    if compiled.deferred is not None:  # as solve_lp_round_mip does
        highs.run()
        compiled.deferred.add_to(highs)
        compiled.deferred = None
    highs.run()
    x = np.asarray(highs.getSolution().col_value)
    loud = x[compiled.count_columns[1, 0]]
    quiet = x[compiled.count_columns[0, 0]]
    assert loud[2:] == pytest.approx([2.0, 2.0], abs=1e-6)
    # What is left of the cap beside them: (204,174 − 200,000) / 10,000 = 0.417 of a quiet unit.
    assert quiet[2:] == pytest.approx([0.4174, 0.4174], abs=1e-4)


def test_the_plan_before_the_award_stages_it_under_min_on() -> None:
    """The plan at t−1 stages the award: quiet units have a 45-minute minimum on time, so a quiet
    unit started at 0 or 1 would still run at 2 and block the award (the cap has no room for it
    beside 2 loud units). Two loud units run from the start; the plan keeps them and starts no
    quiet unit: loud [2, 2, 2, 2], quiet [0, 0, 0, 0], nothing short. (Starting 20 quiet units at 0
    earns 20 × $0.80/h × 0.75 h = $12 before the award and leaves it 20 kW short at 2: the old
    penalty, 20 × $0.225 × 0.25 h = $1.13, made that the plan.)"""
    initial = {"quiet": GroupState(units_on=0), "loud": GroupState(units_on=2)}
    problem = _problem(quiet_min_on=45, initial=initial)

    frame = solve(problem).frame

    assert frame["units_loud_run"].tolist() == [2, 2, 2, 2]
    assert frame["units_quiet_run"].tolist() == [0, 0, 0, 0]
    assert frame["reserve_NSPIN_short_kw"].to_numpy() == pytest.approx(np.zeros(4), abs=1e-6)
    counts = {(0, 0): frame["units_quiet_run"].to_numpy(), (1, 0): frame["units_loud_run"].to_numpy()}
    assert _within_cap(problem, counts)
