"""Reasons of a schedule (`optimize.explain.explain_intervals`): the vectorised explanation gives
the reasons of the per-step reference on random problems, and a unit left off where nothing binds
is "within the solver's gap" unless its group has commitment parameters or the ramp holds it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.optimize.explain import CARBON_BINDING_FRACTION, TOLERANCE_KW
from hashflex.optimize.problem import CarbonBudget, Group, GroupState, Mode, Problem, Receptor
from hashflex.optimize.schedule import SolveInfo, SolveStatus, schedule_from_counts

HASHPRICE = 50.0
STOCK = Mode("stock", 3.0, 100.0, 83.0)
TURBO = Mode("turbo", 3.6, 115.0, 86.0)
INFO = SolveInfo(status=SolveStatus.OPTIMAL)


def one_group_problem(T: int = 4, *, min_on_h: float = 0.0, min_off_h: float = 0.0, start_cost_usd: float = 0.0,
                      ramp_kw_per_h: float | None = None, initial: GroupState = GroupState()) -> Problem:
    """SYNTHETIC: 10 units, cheap energy (every step up pays), no import, noise or carbon limit."""
    return Problem(
        interval_start=pd.date_range("2024-06-01T00:00Z", periods=T, freq="15min"),
        duration_h=np.full(T, 0.25), price_usd_mwh=np.full(T, 20.0), price_adder_usd_mwh=0.0,
        hashprice_usd_per_ph_day=np.full(T, HASHPRICE), pool_fee=0.0,
        groups=(Group("air", 10, (STOCK,), np.full(T, 10), min_on_h=min_on_h, min_off_h=min_off_h,
                      start_cost_usd=start_cost_usd, initial=initial),),
        renewable_kw=np.zeros(T), import_limit_kw=np.full(T, 1e6), import_limit_source=("import limit",) * T,
        export_limit_kw=0.0, receptors=(), intensity_kg_per_mwh=np.full(T, 400.0), carbon_budgets=(),
        ramp_limit_kw_per_h=ramp_kw_per_h, initial_load_kw=None if ramp_kw_per_h is None else 24.0)


def reasons_of(problem: Problem, on: list[int]) -> list[str]:
    counts = {(0, 0): np.array(on, dtype=int)}
    return schedule_from_counts(problem, counts, INFO).frame["reason"].tolist()


def test_a_unit_left_off_where_nothing_binds_is_within_the_gap_without_commitment() -> None:
    """Newcomer finding: no min on/off, no start cost, no ramp: nothing across time can hold a
    profitable unit back, so "equipment" was wrong; the solver left it within its gap."""
    problem = one_group_problem()
    schedule = schedule_from_counts(problem, {(0, 0): np.array([10, 9, 10, 8])}, INFO)
    assert schedule.frame["reason"].tolist() == ["", "gap", "", "gap"]
    assert schedule.frame["reason_detail"].iloc[1].startswith("within the solver's gap")


def test_a_group_with_commitment_parameters_keeps_equipment() -> None:
    for kwargs in ({"min_on_h": 0.5}, {"min_off_h": 0.5}, {"start_cost_usd": 0.05}):
        assert reasons_of(one_group_problem(**kwargs), [10, 9, 10, 8]) == ["", "equipment", "", "equipment"], kwargs


def test_a_ramp_that_the_step_would_break_is_equipment_and_one_it_would_not_is_gap() -> None:
    # 8 units on at 3 kW = 24 kW, initial load 24 kW. Ramp 4 kW/h = 1 kW per 15 min: one more unit
    # (3 kW) would break it.
    assert reasons_of(one_group_problem(ramp_kw_per_h=4.0), [8, 8, 8, 8]) == ["equipment"] * 4
    # A ramp of 400 kW/h (100 kW per interval) never binds for one unit: the gap again.
    assert reasons_of(one_group_problem(ramp_kw_per_h=400.0), [8, 8, 8, 8]) == ["gap"] * 4


# ------------------------------------------------------------------ the per-step reference

def reference_reasons(problem: Problem, counts: dict, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The per-step explanation as it was before vectorisation (one Python loop per interval and
    step; reserve and cold-boot reasons aside: the random problems have neither), with the gap rule."""
    hp = problem.hashprice_usd_per_th_h * (1.0 - problem.pool_fee)
    carbon_usd_per_kwh = problem.intensity_kg_per_mwh / 1000.0 * problem.carbon_price_usd_per_t / 1000.0
    emissions = frame["emissions_kg"].to_numpy()
    carbon_left = {b.name: b.remaining_kg - float(emissions[b.mask].sum()) for b in problem.carbon_budgets}
    noise = {}
    for receptor in problem.receptors:
        used = np.zeros(problem.T)
        for (g, m), n in counts.items():
            used += n * receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[m])
        noise[receptor.id] = (used, receptor.energy_budget())
    load, full, grid_import = (frame[c].to_numpy() for c in ("load_kw", "full_load_kw", "grid_import_kw"))
    reasons, details = [], []
    for t in range(problem.T):
        if load[t] >= full[t] - TOLERANCE_KW:
            reasons.append("")
            details.append("full load")
            continue
        price = float(problem.energy_price_usd_mwh[t])
        headroom_kw = problem.import_limit_kw[t] - grid_import[t] + max(problem.renewable_kw[t] - (load[t] - grid_import[t]), 0.0)
        blocked, profitable = {}, 0
        for g, group in enumerate(problem.groups):
            on = sum(int(counts[g, m][t]) for m in range(len(group.modes)))
            steps = [(None, to) for to in range(len(group.modes)) if on < group.units_available[t]]
            steps += [(frm, to) for to in range(len(group.modes)) for frm in range(len(group.modes))
                      if counts[g, frm][t] > 0 and group.modes[to].power_kw > group.modes[frm].power_kw]
            for frm, to in steps:
                new = group.modes[to]
                old = group.modes[frm] if frm is not None else None
                d_power = new.power_kw - (old.power_kw if old else group.idle_power_kw)
                d_hash = new.hashrate_th_s - (old.hashrate_th_s if old else 0.0)
                if d_hash * hp[t] - d_power * (price / 1000.0 + carbon_usd_per_kwh[t]) <= 0:
                    continue
                profitable += 1
                blockers = []
                if d_power > headroom_kw + TOLERANCE_KW:
                    blockers.append(problem.import_limit_source[t])
                    blocked.setdefault(problem.import_limit_source[t], "import")
                for receptor in problem.receptors:
                    used, budget = noise[receptor.id]
                    d_energy = receptor.unit_energy(group.id, new) - (receptor.unit_energy(group.id, old) if old else 0.0)
                    if d_energy > 0 and used[t] + d_energy > budget[t]:
                        blockers.append(f"noise:{receptor.id}")
                        blocked.setdefault(f"noise:{receptor.id}", "noise")
                for b in problem.carbon_budgets:
                    extra = d_power * problem.duration_h[t] * problem.intensity_kg_per_mwh[t] / 1000.0
                    if b.mask[t] and carbon_left[b.name] < max(extra, CARBON_BINDING_FRACTION * b.remaining_kg):
                        blockers.append("carbon")
                        blocked.setdefault("carbon", "carbon")
                if not blockers:
                    committed = group.min_on_h or group.min_off_h or group.start_cost_usd
                    blocked.setdefault("equipment" if committed else "gap", "")
        if profitable == 0:
            reasons.append("price")
            details.append("")
            continue
        order = [problem.import_limit_source[t]] + [f"noise:{r.id}" for r in problem.receptors] + ["carbon", "equipment", "gap"]
        reasons.append(next(code for code in order if code in blocked))
        details.append("")
    return reasons, details


@st.composite
def random_cases(draw: st.DrawFn) -> tuple[Problem, dict]:
    """SYNTHETIC random problems and random integer counts within availability."""
    T = draw(st.integers(2, 6))
    groups, counts = [], {}
    for g in range(draw(st.integers(1, 3))):
        modes = tuple(Mode(f"m{m}", draw(st.floats(1.0, 8.0)), draw(st.floats(50.0, 500.0)), draw(st.floats(55.0, 90.0)))
                      for m in range(draw(st.integers(1, 3))))
        units = draw(st.integers(1, 30))
        available = np.array([draw(st.integers(0, units)) for _ in range(T)])
        committed = draw(st.booleans())
        groups.append(Group(f"g{g}", units, modes, available, idle_power_kw=draw(st.sampled_from([0.0, 0.02])),
                            min_on_h=0.5 if committed else 0.0))
        left = available.copy()
        for m in range(len(modes)):
            n = np.array([draw(st.integers(0, int(v))) for v in left])
            counts[g, m] = n
            left = left - n
    receptors = tuple(
        Receptor(f"r{r}", {grp.id: draw(st.floats(40.0, 80.0)) for grp in groups},
                 np.array([draw(st.sampled_from([40.0, 45.0, 55.0, math.inf])) for _ in range(T)]),
                 background_dba=draw(st.floats(20.0, 50.0)), cap_applies_to=draw(st.sampled_from(["total", "site"])))
        for r in range(draw(st.integers(0, 2))))
    budget = draw(st.none() | st.floats(0.0, 50.0))
    problem = Problem(
        interval_start=pd.date_range("2024-01-01T00:00Z", periods=T, freq="15min"), duration_h=np.full(T, 0.25),
        price_usd_mwh=np.array([draw(st.floats(-50.0, 3000.0)) for _ in range(T)]),
        price_adder_usd_mwh=draw(st.floats(0.0, 10.0)), hashprice_usd_per_ph_day=np.full(T, draw(st.floats(20.0, 300.0))),
        pool_fee=0.02, groups=tuple(groups), renewable_kw=np.array([draw(st.floats(0.0, 100.0)) for _ in range(T)]),
        import_limit_kw=np.array([draw(st.floats(0.0, 400.0)) for _ in range(T)]),
        import_limit_source=tuple(draw(st.sampled_from(["import limit", "DR"])) for _ in range(T)),
        export_limit_kw=0.0, receptors=receptors, intensity_kg_per_mwh=np.full(T, 400.0),
        carbon_budgets=() if budget is None else (CarbonBudget("b", np.ones(T, dtype=bool), budget),))
    return problem, counts


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_vectorised_reasons_equal_the_per_step_reference(case: tuple[Problem, dict]) -> None:
    problem, counts = case
    schedule = schedule_from_counts(problem, counts, INFO)
    expected, _ = reference_reasons(problem, counts, schedule.frame)
    assert schedule.frame["reason"].tolist() == expected
