"""Issue 15 (H6): every reserve product is held by its own qualified groups, not only the awards'
total, in the rounded start and in the schedule the solver returns, whenever the hard limits allow;
where they do not, the shortfall is stated in ``reserve_<p>_short_kw``.

All sites, prices and awards here are SYNTHETIC (seeded random or hand-made), solved by real HiGHS.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.optimize.problem import Problem, problem_from_profile
from hashflex.optimize.rounding import cover_reserve_obligations, load_kw, reserve_uncovered_kw
from hashflex.optimize.schedule import SolveStatus, reserve_from_counts, schedule_from_counts, unit_column
from hashflex.optimize.solve import RunOutcome, _compiled_for, _hold_reserve_obligations, solve
from hashflex.profile import parse_profile
from as_support import ISSUER, big_small_profile_yaml

PRODUCTS = ("RRS", "ECRS", "NSPIN")
INDEX = pd.date_range("2024-06-03T00:00Z", periods=4, freq="15min")

# The 8 May 2024 case, small (tests/test_ancillary_obligations.py): RRS from 1,000 big units,
# ECRS 1,001 kW only from 2.6 kW units (2.59 kW sheddable each): ceil(1,001 / 2.59) = 387 units.
# The site is as_support's big/small site (SYNTHETIC).
AWARDS = {"RRS": 1000.0, "ECRS": 1001.0}


def _rounding_problem(limit_kw: float = 200000.0, price_usd_mwh: float = 50.0) -> Problem:
    profile = parse_profile(big_small_profile_yaml("AS Rounding", import_limit_kw=limit_kw), source="test")
    return problem_from_profile(profile, INDEX, [price_usd_mwh] * 4, as_award_kw=AWARDS,
                                as_price_usd_mw_h={"RRS": 1.0, "ECRS": 1.0})


def _random_site(seed: int) -> tuple[Problem, dict]:
    """A SYNTHETIC site: 2-3 miner groups (1-2 modes), 1-3 products each qualified for a random
    subset of the groups, awards up to 120 % of what the qualified groups may carry, an import
    limit from 30 % to 150 % of full load, energy prices around the groups' breakevens."""
    rng = np.random.default_rng(seed)
    groups, full_kw = [], 0.0
    for k in range(int(rng.integers(2, 4))):
        units = int(rng.integers(5, 60))
        idle_kw = float(rng.choice([0.0, 0.01, 0.05]))
        modes = []
        for m in range(int(rng.integers(1, 3))):
            power_kw = float(np.round(rng.uniform(1.5, 40.0), 2))
            hash_th_s = float(np.round(power_kw * rng.uniform(10.0, 60.0), 1))
            modes.append(f"{{name: m{m}, power_kw: {power_kw}, hashrate_th_s: {hash_th_s}, sound_power_dba: 80}}")
        full_kw += units * max(float(mode.split("power_kw: ")[1].split(",")[0]) for mode in modes)
        groups.append(f"""  - id: g{k}
    model: synthetic{k}
    units: {units}
    cooling: air
    idle_power_kw: {idle_kw}
    modes: [{", ".join(modes)}]""")
    ids = [f"g{k}" for k in range(len(groups))]
    names = [str(name) for name in rng.choice(PRODUCTS, size=int(rng.integers(1, 4)), replace=False)]
    products, awards = [], {}
    for name in names:
        qualified = [str(g) for g in rng.choice(ids, size=int(rng.integers(1, len(ids) + 1)), replace=False)]
        group_mw = {g: float(np.round(rng.uniform(0.02, 0.6), 3)) for g in qualified}
        mw = ", ".join(f"{g}: {value}" for g, value in group_mw.items())
        products.append(f"    {name}: {{group_mw: {{{mw}}}, expected_deployments_per_month: 0}}")
        awards[name] = np.round(rng.uniform(0.0, 1.2, size=len(INDEX)) * sum(group_mw.values()) * 1000.0, 1)
    limit_kw = float(np.round(full_kw * rng.uniform(0.3, 1.5), 1))
    text = f"""
site: {{name: Random {seed}, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}}
grid: {{import_limit_kw: {limit_kw}}}
miner_groups:
{chr(10).join(groups)}
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: {ISSUER}
  groups: {{{", ".join(f"{g}: {{response_s: 0.5, under_frequency_relay: true}}" for g in ids)}}}
  products:
{chr(10).join(products)}
"""
    profile = parse_profile(text, source="test")
    prices = rng.uniform(20.0, 250.0, size=len(INDEX))
    problem = problem_from_profile(profile, INDEX, prices, as_award_kw=awards,
                                   as_price_usd_mw_h={name: float(rng.uniform(1.0, 20.0)) for name in names})
    return problem, awards


def _counts_of(problem: Problem, frame: pd.DataFrame) -> dict[tuple[int, int], np.ndarray]:
    return {(g, m): frame[unit_column(group.id, mode.name)].to_numpy().astype(int)
            for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}


def _total_short_kw(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    return sum(reserve_from_counts(problem, counts)[1].values())


@pytest.mark.parametrize("seed", range(12))
def test_uncovered_is_the_reserve_lps_shortfall(seed: int) -> None:
    """The exact max-flow min-cut of `reserve_uncovered_kw` equals the shortfall of the schedule's
    own reserve LP (`schedule.reserve_from_counts`, HiGHS) on random counts, product by product
    summed (awards here never exceed the offer cap)."""
    problem, _ = _random_site(seed)
    rng = np.random.default_rng(1000 + seed)
    for _ in range(5):
        counts = {}
        for g, group in enumerate(problem.groups):
            left = group.units_available.astype(int).copy()
            for m in range(len(group.modes)):
                counts[g, m] = rng.integers(0, left + 1)
                left = left - counts[g, m]
        assert reserve_uncovered_kw(problem, counts) == pytest.approx(_total_short_kw(problem, counts), abs=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_random_sites_hold_every_product_whenever_the_limits_allow(seed: int) -> None:
    """Solved end to end: the hard limits hold, and where a product is short no single unit more of
    any group (within availability and the import limit) would shrink the shortfall (checked by the
    schedule's reserve LP, not by the cover's own arithmetic)."""
    problem, awards = _random_site(seed)
    schedule = solve(problem)
    assert schedule.info.status != SolveStatus.FALLBACK
    frame = schedule.frame
    assert (frame["grid_import_kw"] <= frame["import_limit_kw"] + 1e-6).all()
    counts = _counts_of(problem, frame)
    short = sum(frame[f"reserve_{name}_short_kw"].to_numpy() for name in awards)
    room_kw = problem.import_limit_kw + problem.renewable_kw - load_kw(problem, counts)
    for t in np.flatnonzero(short > 1e-6):
        for g, group in enumerate(problem.groups):
            if sum(int(counts[g, m][t]) for m in range(len(group.modes))) >= group.units_available[t]:
                continue
            for m, mode in enumerate(group.modes):
                if mode.power_kw - group.idle_power_kw > room_kw[t] + 1e-6:
                    continue
                more = {key: values.copy() for key, values in counts.items()}
                more[g, m][t] += 1
                assert _total_short_kw(problem, more)[t] >= short[t] - 1e-6, (
                    f"t={t}: one more unit of {group.id}/{mode.name} fits and would hold more reserve")


def test_the_cover_adds_what_each_product_lacks() -> None:
    """Counts holding 100,999.74 kW sheddable against 2,001 kW awarded in total, but ECRS only
    999.74 kW: one small unit more per interval, nothing else."""
    problem = _rounding_problem()
    counts = {(0, 0): np.full(4, 1000), (1, 0): np.full(4, 386)}
    assert reserve_uncovered_kw(problem, counts) == pytest.approx(np.full(4, 1001.0 - 386 * 2.59))
    assert cover_reserve_obligations(problem, counts) == 4
    assert counts[1, 0].tolist() == [387] * 4 and counts[0, 0].tolist() == [1000] * 4
    assert reserve_uncovered_kw(problem, counts) == pytest.approx(np.zeros(4), abs=1e-9)
    assert cover_reserve_obligations(problem, counts) == 0


def test_a_short_solver_answer_is_covered_before_it_becomes_the_schedule() -> None:
    """The MILP's answer itself (not only the rounded start) is checked: an incumbent 1.26 kW short
    of ECRS, as HiGHS may return within the 0.5 % gap, comes back with 387 small units, re-valued by
    the LP with the counts fixed (a better objective: holding costs less than the short penalty),
    and the count columns get their bounds back."""
    problem = _rounding_problem()
    compiled, _, _ = _compiled_for(problem, None)
    if compiled.deferred is not None:  # as solve_lp_round_mip does before its LP
        compiled.deferred.add_to(compiled.highs)
        compiled.deferred = None
    highs = compiled.highs
    keys = list(compiled.count_columns)
    cols = np.concatenate([compiled.count_columns[key] for key in keys]).astype(np.int32)
    short_counts = {(0, 0): np.full(4, 1000), (1, 0): np.full(4, 386)}
    fixed = np.concatenate([short_counts[key] for key in keys]).astype(float)
    highs.changeColsBounds(len(cols), cols, fixed, fixed)
    highs.run()
    incumbent = RunOutcome(SolveStatus.OPTIMAL, highs.getInfo().objective_function_value, None, None,
                           np.array(highs.getSolution().col_value), "synthetic incumbent")
    highs.changeColsBounds(len(cols), cols, compiled.lower[cols], compiled.upper[cols])

    outcome = _hold_reserve_obligations(compiled, problem, incumbent, rel_gap=0.005, deadline=float("inf"))

    counts = {key: np.rint(outcome.x[compiled.count_columns[key]]).astype(int) for key in keys}
    assert counts[1, 0].tolist() == [387] * 4
    assert outcome.objective > incumbent.objective
    assert "4 units added" in outcome.message
    frame = schedule_from_counts(problem, counts, _info(outcome)).frame
    assert (frame["reserve_ECRS_short_kw"] <= 1e-6).all() and (frame["reserve_RRS_short_kw"] <= 1e-6).all()
    lp = highs.getLp()
    assert np.array_equal(np.asarray(lp.col_lower_)[cols], compiled.lower[cols])
    assert np.array_equal(np.asarray(lp.col_upper_)[cols], compiled.upper[cols])


def test_a_shortfall_the_import_limit_forces_is_stated() -> None:
    """Import limit 2,011 kW: 10 big units hold RRS (1,000 kW) and 386 small units fit (2,009.74 kW
    imported with the other 614 asleep at 0.01 kW); a 387th would need 2,012.33 kW. The plan is
    1.26 kW short of ECRS and says so, within the limit."""
    problem = _rounding_problem(limit_kw=2011.0, price_usd_mwh=300.0)
    frame = solve(problem).frame
    assert (frame["grid_import_kw"] <= 2011.0 + 1e-6).all()
    assert (frame["units_small_run"] == 386).all()
    assert frame["reserve_ECRS_short_kw"].to_numpy() == pytest.approx(np.full(4, 1001.0 - 386 * 2.59), abs=1e-6)
    assert (frame["reserve_RRS_short_kw"] <= 1e-6).all()
    counts = _counts_of(problem, frame)
    assert cover_reserve_obligations(problem, counts) == 0, "no unit fits: nothing is added past the limit"


def _info(outcome: RunOutcome):
    from hashflex.optimize.schedule import SolveInfo

    return SolveInfo(status=outcome.status, objective_usd=outcome.objective, bound_usd=outcome.bound,
                     gap=outcome.gap, build_seconds=0.0, solve_seconds=0.0, message=outcome.message)


def test_the_appsi_route_covers_its_answer_too() -> None:
    """The same guard on Pyomo's appsi route: an answer loaded 1.26 kW short of ECRS is covered
    (387 small units), re-solved with the counts fixed, and the counts are left free again."""
    from pyomo.contrib.appsi.solvers import Highs

    from hashflex.optimize.milp import build_model, extract_counts
    from hashflex.optimize.solve import _hold_reserve_obligations_appsi

    problem = _rounding_problem()
    model = build_model(problem)
    solver = Highs()
    solver.config.load_solution = False
    solver.highs_options = {"output_flag": False}
    for (g, m), n in {(0, 0): 1000, (1, 0): 386}.items():
        for t in range(problem.T):
            model.n[g, m, t].fix(n)
    short = solver.solve(model)
    short.solution_loader.load_vars()
    for var in model.n.values():
        var.unfix()

    objective, added = _hold_reserve_obligations_appsi(model, problem, solver)

    assert added == 4
    assert objective > short.best_feasible_objective
    assert extract_counts(model, problem)[1, 0].tolist() == [387] * 4
    assert not any(var.fixed for var in model.n.values())
    assert solve(problem, interface="appsi").frame["reserve_ECRS_short_kw"].max() <= 1e-6
