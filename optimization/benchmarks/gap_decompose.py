"""Where the MPC loses money against the perfect-foresight oracle (issue 14): a DIAGNOSTIC.

Runs, over one case of ``backtest_ratios.py`` (same windows, same real prices and hashprice):

- ``oracle``: perfect foresight (one MILP per local day over the actual prices);
- ``mpc rules``: the daemon's MPC with today's rule forecast;
- ``mpc learned``: the same with the learned price model as the daemon runs it;
- ``mpc perfect``: the same MPC, loop, horizon and re-plan with the ACTUAL RT prices as its forecast
  (look-ahead on purpose: it bounds what any price forecast could buy; never a product setting);
- ``mpc perfect Nh``: actual prices for the first N hours only, the rules after (``--perfect-hours``):
  how much of the gap is the near term;
- ``mpc perfectnext``: actual prices from the next interval on, the interval being decided priced by the rules
  (the last published RT price, not yet its own): the most any causal forecast deciding every 15 minutes could
  know (look-ahead on purpose beyond that interval, DIAGNOSTIC).

Modifiers (``variant+mod``): ``+hp`` the forecast sees each UTC day's hashprice from that day's start (look-ahead
on purpose, DIAGNOSTIC: settlement unchanged) instead of after the day ends; ``+nostab`` the plan-stability rule
off (every re-plan's first interval dispatched); ``+stab<F>`` the rule at another material gain (fraction
of the fleet's revenue per day at the horizon's rate, default 0.0005; of its horizon revenue before issue 14 H5); ``+rampstab`` a candidate rule valuing a hold over the new plan's
ramp (:func:`ramp_hold_previous_counts`); ``+oldstab``, ``+oldfloor``, ``+noblend``, ``+blend<N>h``,
``+qmean``, ``+mean``, ``+be<P>`` (the learned model's ``plan_estimate``: mean of P10/P50/P90, the squared-error
mean, or the breakeven-probability price at P(price < breakeven) >= P, e.g. ``+be0.6``; ``+be0.5/0.9``: 0.9 in
the first hour).

Modifiers that split the perfect-price gap by cause (issue 14, H4): ``+solar`` the forecast's on-site output
replaced by the actual output (look-ahead on purpose, DIAGNOSTIC); ``+hoursolar`` the diurnal profile of
on-site output by local hour (``ForecastConfig.renewable_profile_hourly``, the rule before H4; the product
now uses slots of the site's interval); ``+blockstab`` the stability rule valued over the new plan's first
block only (``hold_span="block"``, the rule before H4; the product also values the leading ramp);
``+gap<X>`` the MPC's MIP relative gap X (product ``milp.DEFAULT_REL_GAP`` = 0.005; the worker solves with
:func:`plan_with_gap`); ``+hor<N>`` a horizon of N hours, all at 15 min; ``+fine<N>`` 15-min intervals for
the first N hours, hourly blocks after (``optimize.coarsen``); ``+replan<N>`` a re-plan every N minutes.
Issue 14, H5 (3 days; mpc/oracle, unit switches per day): before, ``+replan<N>`` skipped the stability rule on
ticks that reuse the cached plan and ``+hor<N>`` scaled its threshold with the horizon; now the cached plan is
valued as a fresh one and the threshold is per day. ``perfect+replan60`` 2024-05 0.9997 -> 0.9970 (74,587 ->
48,897; ``perfect`` 0.9973, 48,876), 2020-02 0.9998 -> 0.9992, 2025-05 0.9993 -> 0.9978; ``rules+replan60``
0.9672 -> 0.9738 (101,351 -> 80,228), 0.9691 -> 0.9697, 0.9802 -> 0.9797; ``perfect+hor48`` 0.9948 -> 0.9973,
0.9986 -> 0.9993, 0.9939 -> 0.9981 (as at 24 h); ``rules+hor48`` 0.9830 -> 0.9844 (54,916 -> 67,285),
0.9739 -> 0.9758 (88,940 -> 95,630), 0.9834 -> 0.9888 (47,241 -> 54,228). The default (24 h, every interval)
is unchanged.
``+rampstab`` is now the product's rule (``hold_span="ramp"``, identical results on 2020-02, 2024-05, 2025-05);
``+loadramp`` a candidate whose ramp is the intervals where the plan's *load* stays on one side of the held
counts' load (modes may trade places within a ramp): 2024-05 perfect 0.9973 -> 0.9990, rules 0.9844 ->
0.9863, but unit switches +29 % / +20 %, not adopted. ``--oracle-days`` / ``--oracle-gap`` / ``--oracle-time-limit`` change the oracle's MILPs (days per MILP,
relative gap, HiGHS limit); the oracle's statuses and worst gap are printed. Measured on 7-9 May 2024
(west_texas at HB_HUBAVG, 3 days), code before H4: ``perfect`` 0.9936 ($1,029 short), ``+nostab`` 0.9956,
``+solar`` 0.9961, ``+nostab+solar`` 0.99999 ($2), ``+nostab+solar+hp`` 1.0000; ``+gap0.0001`` identical to
``perfect`` (the rounded LP start is within 1e-4 of the LP bound at every solve).

Then splits each policy's shortfall against the oracle per interval ($ = oracle profit − policy profit in
that interval) into buckets: intervals where the policy drew more energy than the oracle (ran into a
price the oracle avoided) or less (idle while the oracle mined); and by the price path: the first
interval above the least efficient group's breakeven ("first of a rise"), the next three ("rise +1..3"),
the first interval back below it ("first after peak"), the next four ("after peak +1..4"), and the rest
("steady above" / "steady below"). A bucket's sum over intervals is the gap it explains.

    python optimization/benchmarks/gap_decompose.py --case 2020-02 --days 3
    python optimization/benchmarks/gap_decompose.py --case 2024-05 --days 3 --variants rules perfect perfect1h
    python optimization/benchmarks/gap_decompose.py --case 2024-05 --days 3 --variants perfect perfect+nostab \
        perfect+hoursolar+blockstab perfect+solar perfect+nostab+solar+hp perfect+gap0.0001

``--top N`` prints, per policy, the $ lost by cause and its N costliest intervals (issue 14, F2): per
interval the forecast price of the interval being decided, the actual, the oracle's and the policy's load, the
MILP's first interval (planned kW), whether the plan-stability rule held what ran, the daily carbon budget
left and whether the plan spends all of it, and a cause (:func:`cause_labels`); ``--csv`` gets the same
columns. ``--no-carbon-budget`` removes the site's daily carbon budget for the oracle and every policy
(DIAGNOSTIC: how much of a gap reaches the plan through the budget's allocation across the day).

Measured (F2, 3 days, west_texas at HB_HUBAVG; mpc/oracle, gap $): 2024-05 rules 0.9844 ($2,522), ``perfectnext``
0.9881 ($1,926), ``perfect`` 0.9973 ($440, all of it the stability rule: ``perfect+nostab`` $2);
2025-05 rules 0.9888 ($1,779), ``perfectnext`` 0.9943 ($905), ``perfect`` 0.9981 ($307). With
``--no-carbon-budget``: 2024-05 rules 0.9872, learned 0.9860 (0.9801 with the budget); 2025-05 rules 0.9891.
``--top``, rules, $ lost by cause: 2024-05 stability rule 467, rise not published 814, fall not published 528,
carbon budget 564, other 149; 2025-05 407, 530, 388, 413, 40.
Feb 2020 (F1, west_texas at LZ_WEST, 3 days): the rules MPC's $16,420 gap is $11,421 the decided interval's own
price (``perfect0.25h`` 0.9926: the forecast of interval k is the RT price of k-1, published at the tick; $3,532 on
rises, $7,889 on falls after a peak) and $4,580 the rest of the horizon (``perfect`` 0.9994, $418), nearly all
through the daily carbon budget: the rules spent it on midday hours priced 100-170 $/MWh saving for an evening the
day-ahead put at 80-108 and real time at 315-1,849, and 13 t of 10 Feb's budget was left when the night noise cap
bound (budget used 0.980 vs 0.995). The stability rule saves $3,191 with the rules (``+nostab`` $19,611). No forecast
or control fault found in either forensic: day-ahead prices align at lag 0 h, the loop's carbon charge equals the
accounting's emissions to the kg, every dispatched interval is the MILP's plan except where the rule held, all
solves optimal, ``+hp`` does not help.

Prints one table per policy and the wall time. Needs scikit-learn for ``learned``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backtest_ratios as br  # noqa: E402 - the benchmark next to this one (cases, data loading)

from hashflex.backtest.runner import account, build_actuals, run_backtest, run_oracle  # noqa: E402
from hashflex.backtest.progress import Progress  # noqa: E402
from hashflex.feeds.hashprice import bundled_hashprice  # noqa: E402
from hashflex.forecast import rules as forecast_rules  # noqa: E402
from hashflex.profile import load_profile  # noqa: E402


class PerfectPrices:
    """Look-ahead hook (DIAGNOSTIC ONLY): the actual RT price for intervals within ``hours`` of now
    (all if None), no opinion (the rules) after. Its values are protected from the RT blend and the
    scarcity floor by :func:`protect_perfect`."""

    replaces_day_ahead = True
    source_label = "perfect"

    def __init__(self, actual: pd.Series, hours: float | None, skip_current: bool = False) -> None:
        self.actual, self.hours, self.skip_current = actual, hours, skip_current
        self.last_fallbacks: list = []

    def __call__(self, times: pd.DatetimeIndex, snapshot: object, now: pd.Timestamp) -> np.ndarray:
        values = self.actual.reindex(pd.DatetimeIndex(times)).to_numpy(dtype=float).copy()
        if self.hours is not None:
            lead_h = (pd.DatetimeIndex(times) - pd.Timestamp(now)).total_seconds().to_numpy() / 3600.0
            values[lead_h >= self.hours] = np.nan
        if self.skip_current:  # ``perfectnext``: the interval holding ``now`` is not published yet (the rules price it)
            values[pd.DatetimeIndex(times) <= pd.Timestamp(now)] = np.nan
        return values


def plan_with_gap(rel_gap: float, problem, fine_intervals: int, time_limit_s: float):  # noqa: ANN001, ANN201
    """``control.solver.plan_problem`` with the MIP relative gap ``rel_gap`` instead of the product's
    (``+gap<X>``; run in the solver worker, so module level: a spawned worker imports it by name)."""
    from hashflex.control import solver as control_solver
    from hashflex.optimize.solve import LpBasisCache, solve, solve_multiresolution

    if control_solver._BASIS_CACHE is None:
        control_solver._BASIS_CACHE = LpBasisCache()
    if fine_intervals < problem.T:
        return solve_multiresolution(problem, fine_intervals=fine_intervals, time_limit_s=time_limit_s,
                                     rel_gap=rel_gap, basis_cache=control_solver._BASIS_CACHE)
    return solve(problem, time_limit_s=time_limit_s, rel_gap=rel_gap, basis_cache=control_solver._BASIS_CACHE)


def perfect_renewables(actual_kw: pd.Series):  # noqa: ANN201
    """A wrapper for ``RecordedForecaster.__call__`` (``+solar``, DIAGNOSTIC look-ahead): the forecast's
    on-site output replaced by the actual output (kW) where the window has it."""
    import dataclasses

    from hashflex.forecast.sources import RecordedForecaster

    original = RecordedForecaster.__call__

    def call(self, now, horizon_start, periods):  # noqa: ANN001, ANN202
        forecast = original(self, now, horizon_start, periods)
        actual = actual_kw.reindex(pd.DatetimeIndex(forecast.interval_start)).to_numpy(float)
        known = np.isfinite(actual)
        renewable = np.asarray(forecast.renewable_kw, dtype=float).copy()
        renewable[known] = actual[known]
        return dataclasses.replace(forecast, renewable_kw=renewable)

    call.original = original  # type: ignore[attr-defined]
    return call


def protect_perfect() -> None:
    """The rules' RT blend and scarcity floor leave intervals priced by :class:`PerfectPrices` alone."""
    blend, floor = forecast_rules._blend_rt, forecast_rules._scarcity_floor

    def guarded(original):  # noqa: ANN001, ANN202
        def wrapper(rt, *args):  # noqa: ANN001, ANN002, ANN202
            price, source = args[-3], args[-2]
            keep = np.array([s.startswith("perfect") for s in source])
            saved = price[keep].copy()
            original(rt, *args)
            price[keep] = saved
        return wrapper

    forecast_rules._blend_rt = guarded(blend)
    forecast_rules._scarcity_floor = guarded(floor)


def ramp_hold_previous_counts(original, problem, schedule, previous, min_gain_fraction: float = 0.0,  # noqa: ANN001
                              by_load: bool = False, **kwargs):  # noqa: ANN003, ANN201
    """A CANDIDATE stability rule, measured here before any change to ``control/stability.py`` (``+rampstab``):
    a hold is valued over the new plan's leading *ramp* — the intervals whose counts stay on one side of what
    runs now in every (group, mode) column (all >= it, or all <= it) — not only while they equal the first
    interval's. In a solar ramp under the import limit the new plan adds a few hundred kW each interval: its
    block is one interval, each tick's gain is one interval's margin of the units added, under the threshold,
    and the fleet stays flat for the hour (2025-08 west_texas). Same checks and threshold as the rule."""
    from hashflex.control import stability as st

    decision = original(problem, schedule, previous, min_gain_fraction=min_gain_fraction, **kwargs)
    if not decision.held or len(schedule.frame) != problem.T:  # a cached plan (+replan<N>): the rule's answer
        return decision
    units = st._unit_block(schedule.frame, schedule.group_modes)
    prev = np.array([int(previous.get(key, 0)) for key in schedule.group_modes])
    up, down = (units >= prev).all(axis=1), (units <= prev).all(axis=1)
    if by_load:  # +loadramp: the plan's load on one side of the held counts' load (modes may trade places)
        columns = {key: units[:, j] for j, key in enumerate(schedule.group_modes)}
        held_all = {key: int(previous.get(key, 0)) for key in columns}
        if set(columns) == {(g.id, m.name) for g in problem.groups for m in g.modes}:
            plan_kw = schedule.frame["load_kw"].to_numpy(float)
            held_kw = st._held(problem, schedule, columns, held_all, len(units)).frame["load_kw"].to_numpy(float)
            up, down = plan_kw >= held_kw - 1e-6, plan_kw <= held_kw + 1e-6
    side = up if up[0] else down
    span = int(np.argmin(side)) if not side.all() else len(units)
    columns = {key: units[:, j] for j, key in enumerate(schedule.group_modes)}
    if span <= 1 or set(columns) != {(g.id, m.name) for g in problem.groups for m in g.modes}:
        return decision
    held = {key: int(previous.get(key, 0)) for key in columns}
    for group in problem.groups:
        need = sum(held[(group.id, m.name)] for m in group.modes)
        short = np.asarray(group.units_available, dtype=int)[:span] < need
        span = int(np.argmax(short)) if short.any() else span
    if span <= 1:
        return decision
    alternative = st._held(problem, schedule, columns, held, span)
    bad, _ = st._first_infeasible(problem, alternative.frame, schedule.frame, span)
    if bad < span:
        if bad <= 1:
            return decision
        alternative = st._held(problem, schedule, columns, held, bad)
    gain = float(schedule.frame["profit_usd"].sum() - alternative.frame["profit_usd"].sum())
    threshold = min_gain_fraction * st.fleet_revenue_per_day_usd(problem)  # the rule's scale (issue 14, H5)
    if gain >= threshold:
        new = {key: int(units[0, j]) for j, key in enumerate(schedule.group_modes)}
        return st.StabilityDecision(new, False, gain, f"re-plan gains ${gain:,.2f} over its ramp (>= ${threshold:,.2f})")
    return decision


def record_ticks(rule, ticks: dict):
    """The stability rule ``rule`` (the loop's ``hold_previous_counts``) wrapped to record, per tick, what
    :func:`trace_frame` reports: ``ticks[interval start] = (forecast $/MWh of the interval being decided, the
    MILP's first-interval load kW, held, the rule's reason, the daily carbon budget left kg (NaN: none), whether
    the plan spends all of it (within 0.5 %), the MILP's first-interval units per (group id, mode))``. A cached
    plan (``+replan<N>``) is recorded as planned then."""
    from hashflex.optimize.schedule import unit_column

    def wrapper(problem, schedule, previous, **kwargs):
        decision = rule(problem, schedule, previous, **kwargs)
        frame = schedule.frame
        left, spends = float("nan"), False
        daily = [b for b in problem.carbon_budgets if b.name.startswith("daily")]
        if daily:
            budget = daily[0]
            left = float(budget.remaining_kg)
            mask = np.asarray(budget.mask, dtype=bool)[:len(frame)]
            spends = float(frame["emissions_kg"].to_numpy(float)[mask].sum()) >= 0.995 * left if len(frame) == problem.T else False
        planned = {key: int(frame[unit_column(*key)].iloc[0]) for key in schedule.group_modes}
        ticks[pd.Timestamp(problem.interval_start[0])] = (float(problem.price_usd_mwh[0]), float(frame["load_kw"].iloc[0]),
                                                         bool(decision.held), decision.reason, left, spends, planned)
        return decision

    return wrapper


def breakevens_usd_mwh(profile, hashprice_usd_per_ph_day: float) -> np.ndarray:
    """Every price at which a decision changes, $/MWh: each group's and mode's unit breakeven and the
    breakeven of each step up to the next mode (its extra hashrate over its extra power), at a hashprice."""
    fee = 1 - profile.economics.pool_fee_pct / 100
    rate = hashprice_usd_per_ph_day / 1000.0 / 24.0 * fee * 1000.0  # $/MWh per TH/s per kW
    out = []
    for group in profile.miner_groups:
        modes = sorted(group.modes, key=lambda m: m.power_kw)
        for i, mode in enumerate(modes):
            out.append(rate * mode.hashrate_th_s / mode.power_kw)
            if i:
                out.append(rate * (mode.hashrate_th_s - modes[i - 1].hashrate_th_s) / (mode.power_kw - modes[i - 1].power_kw))
    return np.array(out) - profile.grid.total_adder_usd_mwh


def cause_labels(price: np.ndarray, forecast: np.ndarray, breakevens: list[np.ndarray],
                 spends_budget: np.ndarray, planned_less: np.ndarray) -> np.ndarray:
    """Per interval, why the MILP's first interval could differ from the oracle's (a heuristic, F2; what the
    plan-stability rule changed after it is counted apart, :func:`trace_frame`'s ``stability_usd``):

    - ``d carbon budget``: the plan spends the whole daily carbon budget left and planned less load than the
      oracle ran, with no breakeven between the forecast and the actual price (the allocation across the day);
    - ``a rise not published``: a breakeven lies between the forecast and a higher actual price (the rise was
      published only after the decision);
    - ``b fall not published``: the same with a lower actual price (the fall not yet published);
    - ``e other``: none of these (the rest of the horizon's forecast, solar, hashprice, ...).

    ``price``, ``forecast`` [T] $/MWh; ``breakevens`` T arrays of $/MWh (:func:`breakevens_usd_mwh`);
    ``spends_budget``, ``planned_less`` [T] bool. Returns [T] labels (object)."""
    out = np.empty(len(price), dtype=object)
    for k in range(len(price)):
        low, high = sorted((float(price[k]), float(forecast[k])))
        crossed = bool(((breakevens[k] > low) & (breakevens[k] < high)).any()) if np.isfinite(forecast[k]) else False
        if spends_budget[k] and planned_less[k] and not crossed:
            out[k] = "d carbon budget"
        elif crossed:
            out[k] = "a rise not published" if price[k] > forecast[k] else "b fall not published"
        else:
            out[k] = "e other"
    return out


def trace_frame(profile, actuals, oracle: pd.DataFrame, frame: pd.DataFrame, ticks: dict,
                counts: dict) -> pd.DataFrame:
    """Per interval of one policy (F2): actual and forecast price ($/MWh), the oracle's, the policy's and the
    MILP's first-interval load (kW), held, the rule's reason, daily carbon budget left (kg), whether the plan
    spends it, $ lost vs the oracle (``lost_usd``), of which the stability rule's (``stability_usd``: the MILP's
    first interval minus what was dispatched, both at the actual prices, where the rule held) and
    :func:`cause_labels` of the rest. ``counts``: the policy's dispatched counts (``PolicyRun.counts``).
    Intervals without a recorded tick are NaN and count as dispatched."""
    index = actuals.index
    rows = [ticks.get(t, (np.nan, np.nan, False, "", np.nan, False, None)) for t in index]
    out = pd.DataFrame([r[:6] for r in rows], index=index,
                       columns=["forecast_usd_mwh", "planned_kw", "held", "stability", "carbon_left_kg", "spends_budget"])
    planned = {key: np.array(column, copy=True) for key, column in counts.items()}
    for g, group in enumerate(profile.miner_groups):
        for m, mode in enumerate(group.modes):
            for k, row in enumerate(rows):
                if row[6] is not None:
                    planned[g, m][k] = row[6].get((group.id, mode.name), 0)
    planned_profit = account(profile, actuals, planned).frame["profit_usd"].to_numpy(float)
    out.insert(0, "price_usd_mwh", actuals.price_usd_mwh)
    out.insert(2, "oracle_kw", oracle["load_kw"].to_numpy(float))
    out.insert(3, "policy_kw", frame["load_kw"].to_numpy(float))
    out["held"] = out["held"].astype(bool) & ((out["planned_kw"] - out["policy_kw"]).abs() > 1e-3)
    out["lost_usd"] = oracle["profit_usd"].to_numpy(float) - frame["profit_usd"].to_numpy(float)
    out["stability_usd"] = np.where(out["held"], planned_profit - frame["profit_usd"].to_numpy(float), 0.0)
    hp = actuals.hashprice_usd_per_ph_day
    hp = np.full(len(index), profile.economics.hashprice_usd_per_ph_day) if hp is None else np.asarray(hp, float)
    out["cause"] = cause_labels(out["price_usd_mwh"].to_numpy(float), out["forecast_usd_mwh"].to_numpy(float),
                                [breakevens_usd_mwh(profile, h) for h in hp], out["spends_budget"].to_numpy(bool),
                                out["planned_kw"].to_numpy(float) < out["oracle_kw"].to_numpy(float) - 1e-3)
    return out


def buckets(price: np.ndarray, line: np.ndarray, delta: np.ndarray, more_energy: np.ndarray) -> dict[str, float]:
    """Sum of ``delta`` ($ lost vs the oracle per interval) per bucket (module docstring)."""
    above = price > line
    label = np.where(above, "steady above", "steady below").astype(object)
    since_rise = np.full(len(price), 99)
    since_fall = np.full(len(price), 99)
    for k in range(1, len(price)):
        if above[k] and not above[k - 1]:
            since_rise[k] = 0
        elif above[k]:
            since_rise[k] = since_rise[k - 1] + 1
        if not above[k] and above[k - 1]:
            since_fall[k] = 0
        elif not above[k]:
            since_fall[k] = since_fall[k - 1] + 1
    label[since_rise == 0] = "first of a rise"
    label[(since_rise >= 1) & (since_rise <= 3)] = "rise +1..3"
    label[since_fall == 0] = "first after peak"
    label[(since_fall >= 1) & (since_fall <= 4)] = "after peak +1..4"
    out: dict[str, float] = {}
    for name in ("first of a rise", "rise +1..3", "steady above", "first after peak", "after peak +1..4",
                 "steady below"):
        hit = label == name
        out[f"{name} | ran more"] = float(delta[hit & more_energy].sum())
        out[f"{name} | ran less"] = float(delta[hit & ~more_energy].sum())
    return out


def carbon_timing(frame: pd.DataFrame, index: pd.DatetimeIndex, profile: object) -> dict[str, float]:
    """When the day's carbon budget was spent (the "budget spent at midday" failure of issue 14): the share of
    each local day's emissions emitted before 16:00 local, averaged over days, and the share of the daily
    budget used (mean over days; near 1 where the budget bound). Empty when the profile has no daily budget."""
    budget = profile.carbon.daily_budget_kg  # type: ignore[attr-defined]
    if budget is None:
        return {}
    local = index.tz_convert(profile.site.timezone)  # type: ignore[attr-defined]
    kg = pd.Series(frame["emissions_kg"].to_numpy(float), index=local)
    day = kg.groupby(local.normalize()).sum()
    early = kg[local.hour < 16].groupby(local[local.hour < 16].normalize()).sum().reindex(day.index, fill_value=0.0)
    share = (early / day.where(day > 0)).mean()
    return {"carbon share before 16:00": float(share), "budget used": float((day / budget).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="2020-02", choices=list(br.CASES))
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--start", help="first day (default: the case's)")
    parser.add_argument("--profile", default="west_texas")
    parser.add_argument("--variants", nargs="+", default=["rules", "learned", "perfect", "perfect1h"],
                        help="rules, learned, perfect, perfect<N>h")
    parser.add_argument("--dev2-dir", type=Path, default=br.DEV2_SHARED, help="the dev2 folder for the 2025 cases (default: the repo's copy)")
    parser.add_argument("--csv", help="write the per-interval frame here")
    parser.add_argument("--tag", default="", help="names this code state in the cache (e.g. after a change)")
    parser.add_argument("--cache", help="a folder: each run's counts are kept there and reused (same case/days/variant)")
    parser.add_argument("--oracle-days", type=int, default=1, help="local days per oracle MILP (default 1, as the backtest)")
    parser.add_argument("--oracle-gap", type=float, default=1e-3, help="the oracle's MIP relative gap (default 1e-3)")
    parser.add_argument("--oracle-time-limit", type=float, default=60.0, help="the oracle's HiGHS time limit per MILP, s")
    parser.add_argument("--top", type=int, default=0, help="print each policy's $ lost by cause and its N costliest intervals")
    parser.add_argument("--no-carbon-budget", action="store_true",
                        help="DIAGNOSTIC: the site's daily carbon budget removed for the oracle and every policy")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    _, first_day = br.CASES[args.case]
    profile, prices, load = br.case_inputs(args.case, load_profile(args.profile), args.dev2_dir)
    if args.no_carbon_budget:
        profile = profile.model_copy(update={"carbon": profile.carbon.model_copy(update={"daily_budget_kg": None})})
        args.tag += "_nocarbon"
    start = pd.Timestamp(args.start or first_day)
    hashprice = br.settlement_hashprice(bundled_hashprice(), start, args.days)  # None: the profile's constant
    actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=args.days), hashprice=hashprice)
    rt = prices[(prices["market"] == "RT") & (prices["settlement_point"] == profile.site.settlement_point)]
    rt_series = pd.Series(rt["price_usd_mwh"].to_numpy(float), index=pd.DatetimeIndex(rt["interval_start"]).tz_convert("UTC"))
    rt_series = rt_series[~rt_series.index.duplicated(keep="last")].sort_index()
    protect_perfect()
    quiet = Progress.factory(True)
    oracle_path = (Path(args.cache) / f"{args.profile}_{args.case}_{start:%Y%m%d}_{args.days}_oracle"
                   f"_{args.oracle_days}d_{args.oracle_gap:g}{args.tag}.pkl") if args.cache else None
    if oracle_path is not None and oracle_path.exists():
        runs = {"oracle": pd.read_pickle(oracle_path)}
    else:
        runs = {"oracle": run_oracle(profile, actuals, days_per_solve=args.oracle_days, rel_gap=args.oracle_gap,
                                     time_limit_s=args.oracle_time_limit)}
        if oracle_path is not None:
            oracle_path.parent.mkdir(parents=True, exist_ok=True)
            pd.to_pickle(runs["oracle"], oracle_path)
    oracle_gaps = [i.gap for i in runs["oracle"].infos if i.gap is not None]
    print(f"oracle: {len(runs['oracle'].infos)} MILP(s), statuses "
          f"{sorted({i.status.value for i in runs['oracle'].infos})}, worst gap "
          f"{max(oracle_gaps, default=float('nan')):.2e}", file=sys.stderr)
    import functools

    from hashflex.control import loop as control_loop
    from hashflex.control import solver as control_solver
    from hashflex.forecast.sources import RecordedForecaster

    product_plan, product_forecast = control_solver.plan_problem, RecordedForecaster.__call__
    renewables_call = perfect_renewables(pd.Series(actuals.renewable_kw, index=actuals.index))
    from hashflex.control.stability import hold_previous_counts
    from hashflex.forecast import ForecastConfig
    from hashflex.price_model import PriceModelConfig

    def no_stability(problem, schedule, previous, **_):  # noqa: ANN001, ANN202 - DIAGNOSTIC: the rule off
        return hold_previous_counts(problem, schedule, previous, min_gain_fraction=0.0)

    block_stability = functools.partial(hold_previous_counts, hold_span="block")  # the rule before H4
    ramp_stability = functools.partial(ramp_hold_previous_counts, block_stability)
    load_ramp_stability = functools.partial(ramp_hold_previous_counts, block_stability, by_load=True)

    def scaled_stability(fraction, problem, schedule, previous, **kwargs):  # noqa: ANN001, ANN202
        kwargs["min_gain_fraction"] = fraction
        return hold_previous_counts(problem, schedule, previous, **kwargs)

    traces: dict[str, dict] = {}
    for variant in args.variants:
        # Modifiers bring back the rules before this change, side by side in one run:
        # +oldstab (the stability rule valued over the first interval only), +oldfloor (scarcity floor = mean);
        # +noblend: the last RT price is not blended into what the learned model priced; +qmean: the learned
        # model plans at the mean of P10/P50/P90; +mean: at its squared-error (conditional mean) model;
        # +blend<N>h: the RT blend decays over N hours (default 1).
        variant, *mods = variant.split("+")
        control_loop.hold_previous_counts = (functools.partial(hold_previous_counts, hold_span="first")
                                             if "oldstab" in mods else no_stability if "nostab" in mods
                                             else ramp_stability if "rampstab" in mods
                                             else load_ramp_stability if "loadramp" in mods
                                             else block_stability if "blockstab" in mods else hold_previous_counts)
        fraction = [float(m[len("stab"):]) for m in mods if m.startswith("stab")]
        if fraction:  # the rule with another material gain (the loop's replan_min_gain_fraction, default 0.0005)
            control_loop.hold_previous_counts = functools.partial(scaled_stability, fraction[0])
        ticks: dict = {}
        control_loop.hold_previous_counts = record_ticks(control_loop.hold_previous_counts, ticks)
        old_floor = "oldfloor" in mods
        blend_h = [float(m[len("blend"):-1]) for m in mods if m.startswith("blend") and m.endswith("h")]
        forecast_rules.ForecastConfig = functools.partial(ForecastConfig, scarcity_floor_follows_last=not old_floor,
                                                          rt_blend_learned="noblend" not in mods,
                                                          renewable_profile_hourly="hoursolar" in mods,
                                                          **({"rt_blend_h": blend_h[0]} if blend_h else {}))
        estimate = "mean" if "mean" in mods else "quantile_mean" if "qmean" in mods else "quantile"
        be = [m[len("be"):] for m in mods if m.startswith("be")]  # be<P> or be<P>/<N> (N: the first hour's P)
        extra = {}
        if be:
            p, _, near = be[0].partition("/")
            estimate = "breakeven"
            extra = {"breakeven_probability": float(p), "breakeven_probability_near": float(near) if near else None}
        model_config = PriceModelConfig(scarcity_floor_follows_last=not old_floor, plan_estimate=estimate, **extra)
        name = "+".join([variant, *mods])
        if variant == "rules":
            hook = None
        elif variant == "learned":
            hook = br.learned_hook("daemon", profile, actuals, load, model_config)
        elif variant == "perfectnext":
            hook = PerfectPrices(rt_series, None, skip_current=True)
        elif variant.startswith("perfect"):
            hours = float(variant[len("perfect"):].rstrip("h")) if variant != "perfect" else None
            hook = PerfectPrices(rt_series, hours)
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        gap = [float(m[len("gap"):]) for m in mods if m.startswith("gap")]
        control_solver.plan_problem = (functools.partial(plan_with_gap, gap[0]) if gap else product_plan)
        RecordedForecaster.__call__ = renewables_call if "solar" in mods else product_forecast
        site = {}
        hours = [float(m[len("hor"):]) for m in mods if m.startswith("hor")]
        if hours:  # the horizon N h (all of it fine unless +fine<N> says otherwise)
            site.update(horizon_hours=hours[0], fine_horizon_hours=hours[0])
        fine = [float(m[len("fine"):]) for m in mods if m.startswith("fine")]
        if fine:  # 15-min intervals for the first N h, hourly blocks after (optimize.coarsen)
            site["fine_horizon_hours"] = fine[0]
        run_profile = profile.model_copy(update={"site": profile.site.model_copy(update=site)}) if site else profile
        replan = [int(m[len("replan"):]) for m in mods if m.startswith("replan")]
        run_actuals = actuals
        if "hp" in mods and hashprice is not None:  # DIAGNOSTIC look-ahead: today's hashprice known at 00:00 UTC
            early = hashprice.assign(published_at=pd.to_datetime(hashprice["timestamp"], utc=True))
            run_actuals = build_actuals(profile, prices, start, start + pd.Timedelta(days=args.days), hashprice=early)
        t0 = time.perf_counter()
        cached = Path(args.cache) / f"{args.profile}_{args.case}_{start:%Y%m%d}_{args.days}_{name}{args.tag}.pkl" if args.cache else None
        traced = cached.with_name(cached.stem + "_ticks.pkl") if cached is not None else None
        if cached is not None and cached.exists():
            runs[f"mpc {name}"] = pd.read_pickle(cached)
            traces[f"mpc {name}"] = pd.read_pickle(traced) if traced.exists() else {}
            continue
        result = run_backtest(run_profile, run_actuals, ["mpc"], progress=quiet, price_forecaster=hook,
                              replan_minutes=replan[0] if replan else None)
        runs[f"mpc {name}"] = result.runs["mpc"]
        traces[f"mpc {name}"] = ticks
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            pd.to_pickle(result.runs["mpc"], cached)
            pd.to_pickle(ticks, traced)
        print(f"mpc {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    frames = {name: account(profile, actuals, run.counts).frame for name, run in runs.items()}
    oracle = frames["oracle"]
    price = actuals.price_usd_mwh
    hp = actuals.hashprice_usd_per_ph_day
    line = br.breakeven_usd_mwh(profile, hp if hp is not None else np.full(len(price),
                                                                             profile.economics.hashprice_usd_per_ph_day))
    total_oracle = float(oracle["profit_usd"].sum())
    print(f"{args.profile}@{profile.site.settlement_point} {args.case} {actuals.index[0]} .. {actuals.index[-1]}; "
          f"oracle profit {total_oracle:,.0f} $; breakeven (worst group) {line.min():.1f}..{line.max():.1f} $/MWh")
    table = {}
    for name, frame in frames.items():
        if name == "oracle":
            continue
        delta = oracle["profit_usd"].to_numpy(float) - frame["profit_usd"].to_numpy(float)
        more = frame["load_kw"].to_numpy(float) > oracle["load_kw"].to_numpy(float) + 1e-6
        row = buckets(price, line, delta, more)
        row["TOTAL gap $"] = float(delta.sum())
        row["ratio"] = float(frame["profit_usd"].sum()) / total_oracle
        row["energy MWh vs oracle"] = float(((frame["load_kw"] - oracle["load_kw"]).to_numpy(float)
                                             * frame["duration_h"].to_numpy(float)).sum() / 1000.0)
        row["carbon kg"] = float(frame["emissions_kg"].sum())
        row["unit switches / day"] = br.unit_switches_per_day(runs[name].counts, args.days)
        row.update(carbon_timing(frame, actuals.index, profile))
        table[name] = row
    out = pd.DataFrame(table)
    out.loc["carbon kg", "oracle"] = float(oracle["emissions_kg"].sum())
    for key, value in carbon_timing(oracle, actuals.index, profile).items():
        out.loc[key, "oracle"] = value
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.4f}".format):
        print(out)
    traced = {name: trace_frame(profile, actuals, oracle, frame, traces.get(name, {}), runs[name].counts)
              for name, frame in frames.items() if name != "oracle"}
    if args.top:
        with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 48,
                               "display.float_format", "{:,.1f}".format):
            for name, trace in traced.items():
                print(f"\n{name}: $ lost by cause (gap {trace['lost_usd'].sum():,.0f} $; the stability rule's "
                      f"{trace['stability_usd'].sum():,.0f} $ over {int(trace['held'].sum())} held intervals, the rest:)")
                rest = trace["lost_usd"] - trace["stability_usd"]
                print(rest.groupby(trace["cause"]).agg(["sum", "count"]).to_string())
                top = trace.sort_values("lost_usd", ascending=False).head(args.top)
                top = top.set_axis(top.index.tz_convert(profile.tz).strftime("%m-%d %H:%M"))
                print(top.drop(columns=["spends_budget"]).to_string())
    if args.csv:
        wide = pd.DataFrame({"price": price, "line": line}, index=actuals.index)
        for name, frame in frames.items():
            wide[f"load_{name}"] = frame["load_kw"].to_numpy(float)
            wide[f"profit_{name}"] = frame["profit_usd"].to_numpy(float)
        for name, trace in traced.items():
            for column in ("forecast_usd_mwh", "planned_kw", "held", "stability", "carbon_left_kg", "stability_usd", "cause"):
                wide[f"{column}_{name}"] = trace[column].to_numpy()
        wide.to_csv(args.csv)
    print(f"wall {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
