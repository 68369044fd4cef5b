"""Golden scenarios: optimization/scenarios/*.json, each a compact problem plus expected figures.

Every scenario is solved with `milp.solve` and checked twice: against the invariants every
schedule must satisfy (hard limits, integrality, energy balance, noise recomputed from the counts
with L = 10·log10(Σ n·10^((Lw−A)/10) [+ 10^(bg/10)])), and against its own expected figures.

Scenario format (arrays may be given as one number for every interval):
  problem:  T, interval_minutes (15), start, price_usd_mwh, price_adder_usd_mwh, hashprice_usd_per_ph_day,
            pool_fee, groups [{id, units, modes [{name, power_kw, hashrate_th_s, sound_power_dba}],
            units_available, idle_power_kw, min_on_h, min_off_h, start_cost_usd,
            initial {units_on, load_kw, must_stay_on [[h, n]], must_stay_off [[h, n]]}}], renewable_kw,
            import_limit_kw, import_limit_source, export_limit_kw, receptors [{id, attenuation_db,
            cap_dba (null = no cap), background_dba, cap_applies_to, margin_db}], intensity_kg_per_mwh,
            carbon_price_usd_per_t, carbon_budgets [{name, mask ("all" or [bool]), remaining_kg}],
            ramp_limit_kw_per_h, initial_load_kw
  expected: status_in, units_on / units_on_sum / grid_import_kw {"i" or "i-j": value}, group_units_on
            {group: {...}}, mode_units {"group/mode": {...}}, reasons {...: code}, reason_where_not_full,
            profit_usd / objective_usd / emissions_kg_sum {value, abs_tol}, noise_dba {receptor: {...:
            [level, tol]}}, penalties {name: value}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.optimize.solve import LpBasisCache, solve
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor
from hashflex.optimize.schedule import Schedule, SolveStatus, unit_column

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "optimization" / "scenarios").glob("*.json"))
TOL = 1e-6
EXPECTED_KEYS = {"status_in", "units_on", "units_on_sum", "group_units_on", "mode_units", "reasons",
                 "reason_where_not_full", "profit_usd", "objective_usd", "emissions_kg_sum", "grid_import_kw",
                 "noise_dba", "penalties"}


def _series(value: object, T: int, default: float = 0.0) -> np.ndarray:
    if value is None:
        return np.full(T, float(default))
    array = np.asarray(value, dtype=float)
    return np.full(T, float(array)) if array.ndim == 0 else array


def problem_from_json(spec: dict) -> Problem:
    T = int(spec["T"])
    dt_h = spec.get("interval_minutes", 15) / 60.0
    index = pd.date_range(spec.get("start", "2024-06-01T00:00Z"), periods=T, freq=f"{int(dt_h * 60)}min")
    groups = []
    for g in spec["groups"]:
        initial = g.get("initial", {})
        groups.append(Group(
            id=g["id"], units=int(g["units"]),
            modes=tuple(Mode(m["name"], m["power_kw"], m["hashrate_th_s"], m["sound_power_dba"]) for m in g["modes"]),
            units_available=_series(g.get("units_available"), T, g["units"]).astype(int),
            idle_power_kw=g.get("idle_power_kw", 0.0), min_on_h=g.get("min_on_h", 0.0),
            min_off_h=g.get("min_off_h", 0.0), start_cost_usd=g.get("start_cost_usd", 0.0),
            initial=GroupState(units_on=initial.get("units_on", 0), load_kw=initial.get("load_kw"),
                               must_stay_on=tuple(tuple(b) for b in initial.get("must_stay_on", ())),
                               must_stay_off=tuple(tuple(b) for b in initial.get("must_stay_off", ()))),
        ))
    receptors = tuple(
        Receptor(id=r["id"], attenuation_db=r["attenuation_db"],
                 cap_dba=np.array([math.inf if c is None else c for c in np.broadcast_to(
                     np.asarray(r["cap_dba"], dtype=object), (T,))], dtype=float),
                 background_dba=r["background_dba"], cap_applies_to=r.get("cap_applies_to", "total"),
                 margin_db=r.get("margin_db", 0.0))
        for r in spec.get("receptors", ())
    )
    budgets = tuple(
        CarbonBudget(b["name"], np.ones(T, dtype=bool) if b["mask"] == "all" else np.asarray(b["mask"], dtype=bool),
                     b["remaining_kg"])
        for b in spec.get("carbon_budgets", ())
    )
    source = spec.get("import_limit_source", "import limit")
    problem = Problem(
        interval_start=index,
        duration_h=np.full(T, dt_h),
        price_usd_mwh=_series(spec["price_usd_mwh"], T),
        price_adder_usd_mwh=spec.get("price_adder_usd_mwh", 0.0),
        hashprice_usd_per_ph_day=_series(spec["hashprice_usd_per_ph_day"], T),
        pool_fee=spec.get("pool_fee", 0.0),
        groups=tuple(groups),
        renewable_kw=_series(spec.get("renewable_kw"), T),
        import_limit_kw=_series(spec["import_limit_kw"], T),
        import_limit_source=tuple([source] * T if isinstance(source, str) else source),
        export_limit_kw=spec.get("export_limit_kw", 0.0),
        receptors=receptors,
        intensity_kg_per_mwh=_series(spec.get("intensity_kg_per_mwh"), T, 400.0),
        carbon_price_usd_per_t=spec.get("carbon_price_usd_per_t", 0.0),
        carbon_budgets=budgets,
        ramp_limit_kw_per_h=spec.get("ramp_limit_kw_per_h"),
        initial_load_kw=spec.get("initial_load_kw"),
        base_interval_h=dt_h,
    )
    problem.validate()
    return problem


def _intervals(key: str) -> list[int]:
    """"3" -> [3]; "2-5" -> [2, 3, 4, 5] (inclusive)."""
    first, _, last = key.partition("-")
    return list(range(int(first), int(last or first) + 1))


def _counts(schedule: Schedule, problem: Problem) -> dict[tuple[int, int], np.ndarray]:
    return {(g, m): schedule.counts(group.id, mode.name).to_numpy()
            for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}


def _units_on(schedule: Schedule, problem: Problem, group_id: str | None = None) -> np.ndarray:
    return sum(schedule.counts(group.id, mode.name).to_numpy().astype(float)
               for group in problem.groups if group_id in (None, group.id) for mode in group.modes)


def check_invariants(problem: Problem, schedule: Schedule) -> None:
    frame = schedule.frame
    assert len(frame) == problem.T
    counts = _counts(schedule, problem)
    for (g, m), n in counts.items():
        assert np.all(np.asarray(n, dtype=float) == np.rint(np.asarray(n, dtype=float))), "counts not integral"
        assert np.all(n >= 0)
    for g, group in enumerate(problem.groups):
        on = sum(counts[g, m] for m in range(len(group.modes)))
        assert np.all(on <= group.units_available), f"{group.id}: more units on than available"
    load = frame["load_kw"].to_numpy()
    grid_import = frame["grid_import_kw"].to_numpy()
    renewable_used = frame["renewable_used_kw"].to_numpy()
    assert np.all(grid_import <= problem.import_limit_kw + TOL), "import above its limit"
    assert np.all(grid_import >= -TOL) and np.all(renewable_used >= -TOL)
    assert np.allclose(load, grid_import + renewable_used, atol=TOL), "energy balance does not close"
    assert np.all(renewable_used + frame["export_kw"].to_numpy() <= problem.renewable_kw + TOL)
    assert np.all(frame["export_kw"].to_numpy() <= problem.export_limit_kw + TOL)
    emissions = grid_import * problem.duration_h * problem.intensity_kg_per_mwh / 1000.0
    assert np.allclose(frame["emissions_kg"].to_numpy(), emissions, atol=TOL)
    for budget in problem.carbon_budgets:
        assert emissions[budget.mask].sum() <= budget.remaining_kg + TOL, f"carbon budget {budget.name} exceeded"
    for receptor in problem.receptors:
        energy = np.zeros(problem.T)
        for (g, m), n in counts.items():
            group, mode = problem.groups[g], problem.groups[g].modes[m]
            attenuation = receptor.attenuation_db.get(group.id, math.inf)
            if math.isfinite(attenuation):
                energy += n * 10.0 ** ((mode.sound_power_dba - attenuation) / 10.0)
        background = 10.0 ** (receptor.background_dba / 10.0) if receptor.cap_applies_to == "total" else 0.0
        with np.errstate(divide="ignore"):
            level = 10.0 * np.log10(energy + background)
        limit = receptor.cap_dba - receptor.margin_db
        # With the background alone at or above the cap, the site may add nothing audible.
        ok = np.where(energy > 0, level <= limit + 1e-6, True)
        assert np.all(ok), f"noise at {receptor.id} above its cap: {level[~ok]} > {limit[~ok]}"
        assert np.allclose(np.where(energy > 0, frame[f"noise_dba_{receptor.id}"].to_numpy(), 0.0),
                           np.where(energy > 0, level, 0.0), atol=1e-9)


def check_expected(problem: Problem, schedule: Schedule, expected: dict) -> None:
    unknown = set(expected) - EXPECTED_KEYS
    assert not unknown, f"unknown expected keys {unknown}"
    frame = schedule.frame
    if "status_in" in expected:
        assert schedule.status.value in expected["status_in"], schedule.info.message
    for key, value in expected.get("units_on", {}).items():
        assert list(_units_on(schedule, problem)[_intervals(key)]) == [value] * len(_intervals(key)), key
    for key, value in expected.get("units_on_sum", {}).items():
        assert _units_on(schedule, problem)[_intervals(key)].sum() == value, key
    for group_id, figures in expected.get("group_units_on", {}).items():
        for key, value in figures.items():
            assert list(_units_on(schedule, problem, group_id)[_intervals(key)]) == [value] * len(_intervals(key))
    for name, figures in expected.get("mode_units", {}).items():
        group_id, mode = name.split("/")
        column = frame[unit_column(group_id, mode)].to_numpy()
        for key, value in figures.items():
            assert list(column[_intervals(key)]) == [value] * len(_intervals(key)), name
    for key, value in expected.get("grid_import_kw", {}).items():
        assert np.allclose(frame["grid_import_kw"].to_numpy()[_intervals(key)], value, atol=1e-6), key
    reasons = frame["reason"].to_numpy()
    for key, code in expected.get("reasons", {}).items():
        assert list(reasons[_intervals(key)]) == [code] * len(_intervals(key)), (key, list(frame["reason_detail"]))
    if "reason_where_not_full" in expected:
        partial = frame["load_kw"].to_numpy() < frame["full_load_kw"].to_numpy() - 1e-6
        assert partial.any()
        assert set(reasons[partial]) == {expected["reason_where_not_full"]}
    for field, actual in (("profit_usd", schedule.total_profit_usd), ("objective_usd", schedule.info.objective_usd),
                          ("emissions_kg_sum", float(frame["emissions_kg"].sum()))):
        if field in expected:
            figure = expected[field]
            assert actual == pytest.approx(figure["value"], abs=figure.get("abs_tol", 0.0),
                                           rel=figure.get("rel_tol", 0.0)), field
    for receptor_id, figures in expected.get("noise_dba", {}).items():
        levels = frame[f"noise_dba_{receptor_id}"].to_numpy()
        for key, (level, tol) in figures.items():
            assert np.allclose(levels[_intervals(key)], level, atol=tol), (receptor_id, key)
    if "penalties" in expected:
        assert schedule.info.penalties == expected["penalties"]


def test_there_are_golden_scenarios() -> None:
    assert len(SCENARIOS) >= 5


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    scenario = json.loads(path.read_text())
    problem = problem_from_json(scenario["problem"])
    schedule = solve(problem)
    assert schedule.status != SolveStatus.FALLBACK, schedule.info.message
    check_invariants(problem, schedule)
    check_expected(problem, schedule, scenario["expected"])


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_replanned_from_a_cached_basis(path: Path) -> None:
    """A re-plan that starts its LP from the cached basis of the same structure (LpBasisCache)
    meets the same invariants and expected figures."""
    scenario = json.loads(path.read_text())
    problem = problem_from_json(scenario["problem"])
    cache = LpBasisCache()
    cold = solve(problem, basis_cache=cache)
    assert len(cache) == 1
    warm = solve(problem, basis_cache=cache)
    assert warm.status != SolveStatus.FALLBACK, warm.info.message
    check_invariants(problem, warm)
    check_expected(problem, warm, scenario["expected"])
    assert warm.info.objective_usd == pytest.approx(cold.info.objective_usd, rel=0.01, abs=1e-6)
