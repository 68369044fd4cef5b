"""Plan stability: a re-plan changes what runs only for a material gain (issue 14).

Every tick re-solves the horizon with new prices; small forecast changes flip a few units on and off
from one tick to the next, which a site manager reads as a fault (EMHASS users report exactly this).
The rule: when the new plan's first interval differs from what runs now (the fleet as dispatched, fast-
path cuts included; the loop passes it as ``previous``), value those counts held over the new plan's first
block — its leading intervals whose counts equal its first interval's, while the previous counts stay
feasible there (``hold_span="block"``; ``"first"``: the first interval only, the rule before, which held a
stale mode for whole days because each tick forwent one interval's gain) — with the new plan for every later
interval, on the *new* problem (same prices, limits, caps, budgets), and
keep them unless the new plan earns at least the material gain more over the horizon: ``min_gain_usd``, or
``min_gain_fraction`` of the whole fleet's gross revenue over a day at the horizon's mean rate (not over the
horizon: a longer horizon would hold harder; the same at the default 24 h), or ``min_gain_unit_intervals``
intervals of gross revenue of each unit the change moves (a switching cost per unit), whichever is
largest. Measured with
``optimization/benchmarks/plan_stability.py``; an earlier version compared with the previous *plan* for
the interval and, on the noise-bound quiet_hollow site, re-raised units the noise fast path had cut
(dispatched unit switches up 70 %).

A plan cached from an earlier tick (the backtest's MPC re-solving every ``replan_minutes``: its frame from this
interval on, shorter than the tick's problem) is valued the same way, on the leading part of this tick's problem
with its figures recomputed there: the daemon re-solves every tick and values every plan, and the cached ticks
skipped the rule before (issue 14, H5: with hourly re-plans the plan's next interval went out whatever it moved).

Safety: the previous counts are kept only when they are feasible on the new problem in that interval —
units available, grid import within the import limit in force, every receptor's modelled level within
its cap less the margin, no more reserve short than the new plan, no more load than the new plan when a
carbon budget applies — and never for a site with GPU clusters (their plan is not re-valued here). A
tightened limit therefore always wins; the guard re-checks the result as for any plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hashflex.optimize.problem import Problem
from hashflex.optimize.schedule import Schedule, reserve_column, schedule_from_counts, unit_column

__all__ = ["MIN_GAIN_SPAN_H", "StabilityDecision", "fleet_revenue_per_day_usd", "full_fleet_revenue_usd",
           "hold_previous_counts", "moved_units_revenue_usd"]

_EPS_KW = 1e-6
_EPS_DB = 1e-6
# The span the fleet fraction of the material gain is taken over, h: a day, so the gain a site manager must
# see does not grow with the horizon (issue 14, H5: as a fraction of the horizon's revenue a 48 h horizon held
# twice as hard as 24 h). At the default 24 h horizon the threshold is the one measured before.
MIN_GAIN_SPAN_H = 24.0


def full_fleet_revenue_usd(problem: Problem) -> float:
    """Gross mining revenue of every available unit at its group's top hashrate over the horizon, $.

    Σ_t Σ_g available[g,t] · max_m TH/s[g,m] / 1000 · hashprice[t] ($/PH/day) · duration_h[t] / 24 · (1 − fee).
    """
    per_interval = np.zeros(problem.T)
    for group in problem.groups:
        top_th_s = max(mode.hashrate_th_s for mode in group.modes)
        per_interval += np.asarray(group.units_available, dtype=float) * top_th_s / 1000.0
    hashprice = np.broadcast_to(np.asarray(problem.hashprice_usd_per_ph_day, dtype=float), (problem.T,))
    return float(np.sum(per_interval * hashprice * problem.duration_h / 24.0) * (1.0 - problem.pool_fee))


def fleet_revenue_per_day_usd(problem: Problem) -> float:
    """Gross mining revenue of every available unit at its top hashrate over one day (`MIN_GAIN_SPAN_H`) at the
    horizon's mean rate, $: `full_fleet_revenue_usd` × 24 / the horizon's hours (Σ duration_h).

    The scale of ``min_gain_fraction``: the same for a 2 h, 24 h or 48 h horizon of the same site and prices;
    at a 24 h horizon exactly `full_fleet_revenue_usd` (the ratio is 1.0), the threshold before issue 14 H5.
    A cached plan's shorter frame (`hold_previous_counts`) therefore gets the same threshold as a fresh one.
    """
    horizon_h = float(np.sum(problem.duration_h))
    return full_fleet_revenue_usd(problem) * (MIN_GAIN_SPAN_H / horizon_h) if horizon_h > 0 else 0.0


def moved_units_revenue_usd(problem: Problem, new: dict[tuple[str, str], int],
                            previous: dict[tuple[str, str], int]) -> float:
    """Gross revenue of the units a change moves, for one interval (the first), $.

    Σ_g Σ_m |new[g,m] − previous[g,m]| · max_m TH/s[g,m] / 1000 · hashprice[0] ($/PH/day) · duration_h[0] / 24
    · (1 − fee): each unit switched on or off counts once, a unit changing mode twice (out of one mode, into
    another), as the loop's ``plan_churn_units`` counter counts them.

    Parameters
    ----------
    problem : Problem
        The new problem (groups, hashprice, interval lengths).
    new, previous : dict[tuple[str, str], int]
        Units per (group id, mode) in the first interval; modes absent count 0.

    Returns
    -------
    float
        $ (>= 0).
    """
    hashprice = float(np.broadcast_to(np.asarray(problem.hashprice_usd_per_ph_day, dtype=float), (problem.T,))[0])
    total = 0.0
    for group in problem.groups:
        top_th_s = max(mode.hashrate_th_s for mode in group.modes)
        moved = sum(abs(int(new.get((group.id, m.name), 0)) - int(previous.get((group.id, m.name), 0)))
                    for m in group.modes)
        total += moved * top_th_s / 1000.0
    return total * hashprice * float(problem.duration_h[0]) / 24.0 * (1.0 - problem.pool_fee)


@dataclass(frozen=True)
class StabilityDecision:
    """The outcome for one tick.

    Attributes
    ----------
    counts : dict[tuple[str, str], int]
        Units per (group id, mode) to dispatch now: what runs (held) or the new plan's.
    held : bool
        True when the previous counts were kept.
    gain_usd : float
        New plan's profit over the horizon minus the held alternative's, both valued on the new problem
        (NaN when no alternative was valued).
    reason : str
        Why (for the log and the audit trail).
    """

    counts: dict[tuple[str, str], int]
    held: bool
    gain_usd: float
    reason: str


def hold_previous_counts(problem: Problem, schedule: Schedule, previous: dict[tuple[str, str], int] | None,
                         min_gain_usd: float = 0.0, min_gain_fraction: float = 0.0,
                         min_gain_unit_intervals: float = 0.0, hold_span: str = "ramp") -> StabilityDecision:
    """Keep what runs for the first interval unless the new plan gains materially (the largest of the three).

    Parameters
    ----------
    problem : Problem
        This tick's problem (``T`` intervals): the one the new schedule solved (the same grid as
        ``schedule.frame``), or one whose first intervals are a cached plan's (below).
    schedule : Schedule
        The new plan; or a plan cached from an earlier tick, its frame from this interval on (fewer rows than
        ``T``, its index the problem's first ``interval_start``): valued on those leading intervals of
        ``problem``, its figures recomputed there (this tick's prices, limits and state). A frame that does not
        start at the problem's first interval is not valued (its first interval goes out).
    previous : dict[tuple[str, str], int] or None
        What runs now, units per (group id, mode) (modes absent: 0); None when there is nothing to keep
        (the first tick of a process).
    min_gain_usd : float
        The material gain, $ over the horizon.
    min_gain_fraction : float
        Or, if larger, this fraction of what the whole fleet would earn in a day at its top modes, at the
        horizon's mean rate (`fleet_revenue_per_day_usd`: a scale of the site that depends on neither plan nor
        on the horizon's length; before issue 14 H5 it was the revenue over the horizon, the same at 24 h).
    min_gain_unit_intervals : float
        Or, if larger, this many intervals of gross revenue of each unit the change moves
        (`moved_units_revenue_usd` × this): a switching cost per unit, so moving one unit needs a small gain
        and moving the whole fleet a large one. All three <= 0 turn the rule off. Not the loop's default:
        the alternative differs from the new plan in the first interval only, so the gain per unit moved is at
        most one interval's margin and K >= 1 freezes the fleet; measured (plan_stability.py, Feb 10-12 2020)
        K = 0.5 cost 8-9 % of profit and K = 1 about 75-80 %, where the fleet fraction 0.0005 cost nothing.
    hold_span : str
        How long the held alternative keeps what runs when it is valued. ``ramp`` (default): as ``block``, and
        when that holds, also over the new plan's leading *ramp* — the intervals whose counts stay on one side
        of what runs in every (group, mode) column (all >= it, or all <= it; same feasibility checks) — and the
        change is made when either gain is material. In a solar ramp under the import limit the new plan adds a
        few hundred kW each interval: its block is one interval, each tick's gain one interval's margin of the
        units added, under the threshold, and the fleet stayed flat for the hour (issue 14, H4: with the actual
        prices as forecast, west_texas 7-9 May 2024 mpc/oracle 0.9961 -> 0.9973, 15-17 May 2025 0.9961 ->
        0.9981; rule forecast 0.9839 -> 0.9844, 0.9871 -> 0.9888; gap_decompose.py). ``block``: over the new
        plan's first block — the leading intervals whose counts equal its first interval's — as long as the
        previous counts stay feasible there (import limit, caps less margin, reserve, carbon load): a change
        the new plan keeps for hours is what holding would forgo tick after tick, since every later tick
        makes the same comparison. ``first``: the first interval only (the rule before; measured in
        ``optimization/benchmarks/gap_decompose.py`` on Feb 10-12 2020 it held a stale mode for whole days:
        each tick's one-interval gain, $55-65, stayed under the $130 threshold, $4k over two days).

    Returns
    -------
    StabilityDecision
    """
    frame = schedule.frame
    # the plan's unit columns read as one block (issue 18: a pandas lookup per column and interval
    # was half of this rule's time on every tick)
    units = _unit_block(frame, schedule.group_modes)
    new = {key: int(units[0, j]) for j, key in enumerate(schedule.group_modes)} if len(frame) else {
        key: int(frame[unit_column(*key)].iloc[0]) for key in schedule.group_modes}
    if previous is None or (min_gain_usd <= 0 and min_gain_fraction <= 0 and min_gain_unit_intervals <= 0):
        return StabilityDecision(new, False, float("nan"), "nothing to keep" if previous is None else "off")
    previous = {key: int(previous.get(key, 0)) for key in new}
    if previous == new:
        return StabilityDecision(new, False, 0.0, "unchanged")
    if problem.compute is not None:
        return StabilityDecision(new, False, float("nan"), "not valued (compute site)")
    if len(frame) != problem.T:
        # A cached plan (the backtest re-solving every replan_minutes: its frame from this interval on, made
        # on an earlier problem): valued on the leading part of this tick's problem, re-figured there, as the
        # daemon values the plan it solves every tick (issue 14, H5: these ticks skipped the rule before).
        leading = _leading_problem(problem, frame.index)
        if leading is None:
            return StabilityDecision(new, False, float("nan"), "not valued (the plan does not start at this interval)")
        schedule = _refigured(leading, schedule, units)
        if schedule is None:
            return StabilityDecision(new, False, float("nan"), "not valued (the plan lacks a group's modes)")
        problem = leading
        frame = schedule.frame
        units = _unit_block(frame, schedule.group_modes)
    if hold_span not in ("ramp", "block", "first"):
        raise ValueError(f"hold_span {hold_span!r}: expected 'ramp', 'block' or 'first'")
    position = {key: j for j, key in enumerate(schedule.group_modes)}
    columns = {(g.id, m.name): (units[:, position[g.id, m.name]] if (g.id, m.name) in position
                                else frame[unit_column(g.id, m.name)].to_numpy(dtype=int))
               for g in problem.groups for m in g.modes}
    block = units if set(columns) == set(position) else np.column_stack(list(columns.values()))
    span = 1
    if hold_span in ("block", "ramp"):  # the new plan's first block: its counts stay those of its first interval
        same = (block == block[0]).all(axis=1)
        span = int(np.argmin(same)) if not same.all() else len(frame)
    for group in problem.groups:
        held_units = sum(previous[(group.id, mode.name)] for mode in group.modes)
        if held_units > int(group.units_available[0]):
            return StabilityDecision(new, False, float("nan"), f"previous counts exceed {group.id}'s available units")
    gain, reason = _hold_gain(problem, schedule, columns, previous, span)
    if reason:
        return StabilityDecision(new, False, float("nan"), reason)
    if min_gain_fraction > 0:
        min_gain_usd = max(min_gain_usd, min_gain_fraction * fleet_revenue_per_day_usd(problem))
    if min_gain_unit_intervals > 0:
        min_gain_usd = max(min_gain_usd, min_gain_unit_intervals * moved_units_revenue_usd(problem, new, previous))
    if gain >= min_gain_usd:
        return StabilityDecision(new, False, gain, f"re-plan gains ${gain:,.2f} (>= ${min_gain_usd:,.2f})")
    if hold_span == "ramp":  # the new plan's leading ramp: every column on one side of what runs
        held = np.array([previous[key] for key in columns])
        up, down = (block >= held).all(axis=1), (block <= held).all(axis=1)
        side = up if up[0] else down
        ramp = int(np.argmin(side)) if not side.all() else len(frame)
        ramp_gain, ramp_reason = _hold_gain(problem, schedule, columns, previous, ramp) if ramp > span else (gain, "")
        if not ramp_reason and ramp_gain >= min_gain_usd:
            return StabilityDecision(new, False, ramp_gain,
                                     f"re-plan gains ${ramp_gain:,.2f} over its ramp (>= ${min_gain_usd:,.2f})")
    return StabilityDecision(previous, True, gain,
                             f"kept what runs: the re-plan would gain only ${gain:,.2f} (< ${min_gain_usd:,.2f})")


def _hold_gain(problem: Problem, schedule: Schedule, columns: dict[tuple[str, str], np.ndarray],
               previous: dict[tuple[str, str], int], span: int) -> tuple[float, str]:
    """The new plan's profit minus that of holding ``previous`` over its first ``span`` intervals, $, both
    on ``problem``; the hold ends earlier where a group has fewer units available or the held counts fail a
    check of `_first_infeasible`. Returns (gain, '') or (NaN, why) when they may not run even now."""
    for group in problem.groups:
        held_units = sum(previous[(group.id, mode.name)] for mode in group.modes)
        short = np.asarray(group.units_available, dtype=int)[:span] < held_units
        span = min(span, int(np.argmax(short)) if short.any() else span)
    alternative = _held(problem, schedule, columns, previous, span)
    bad, reason = _first_infeasible(problem, alternative.frame, schedule.frame, span)
    if bad == 0:
        return float("nan"), reason
    if bad < span:  # hold only while the previous counts stay feasible (the checks of the first interval)
        alternative = _held(problem, schedule, columns, previous, bad)
    return float(schedule.frame["profit_usd"].sum() - alternative.frame["profit_usd"].sum()), ""


def _leading_problem(problem: Problem, index: pd.DatetimeIndex) -> Problem | None:
    """``problem`` cut to its first ``len(index)`` intervals when ``index`` is exactly their starts (a plan
    cached from an earlier tick covers this tick's problem from its first interval on, for fewer intervals);
    None otherwise. Every [T] array is cut (prices, limits, availability, caps, budgets' masks, reserves,
    derates); a problem with GPU compute is never cut here (the rule does not value those sites)."""
    n = len(index)
    if n == 0 or n > problem.T or not index.equals(problem.interval_start[:n]):
        return None
    cut = slice(0, n)
    return dataclasses.replace(
        problem,
        interval_start=problem.interval_start[cut], duration_h=problem.duration_h[cut],
        price_usd_mwh=problem.price_usd_mwh[cut], hashprice_usd_per_ph_day=problem.hashprice_usd_per_ph_day[cut],
        renewable_kw=problem.renewable_kw[cut], import_limit_kw=problem.import_limit_kw[cut],
        import_limit_source=tuple(problem.import_limit_source[cut]),
        intensity_kg_per_mwh=problem.intensity_kg_per_mwh[cut],
        groups=tuple(dataclasses.replace(g, units_available=g.units_available[cut]) for g in problem.groups),
        receptors=tuple(dataclasses.replace(r, cap_dba=r.cap_dba[cut]) for r in problem.receptors),
        carbon_budgets=tuple(dataclasses.replace(b, mask=b.mask[cut]) for b in problem.carbon_budgets),
        reserves=tuple(dataclasses.replace(r, price_usd_mw_h=r.price_usd_mw_h[cut], max_kw=r.max_kw[cut],
                                           obligation_kw=r.obligation_kw[cut]) for r in problem.reserves),
        derates=tuple(dataclasses.replace(d, units=d.units[cut]) for d in problem.derates),
    )


def _refigured(problem: Problem, schedule: Schedule, units: np.ndarray) -> Schedule | None:
    """The counts of ``schedule`` (``units`` [T, len(group_modes)], rows on ``problem``'s grid) with every
    figure recomputed on ``problem`` (this tick's prices and state), as the held alternative is (`_held`);
    None when the plan lacks a (group, mode) of the problem."""
    position = {key: j for j, key in enumerate(schedule.group_modes)}
    if any((g.id, m.name) not in position for g in problem.groups for m in g.modes):
        return None
    counts = {(g, m): units[:, position[group.id, mode.name]]
              for g, group in enumerate(problem.groups) for m, mode in enumerate(group.modes)}
    return schedule_from_counts(problem, counts, schedule.info, explain=False)


def _unit_block(frame: Any, group_modes: tuple[tuple[str, str], ...]) -> np.ndarray:
    """[T, len(group_modes)] int units of each (group, mode) column of a schedule's frame, in that order
    (what ``frame[unit_column(g, m)].to_numpy(dtype=int)`` gives column by column)."""
    names = [unit_column(g, m) for g, m in group_modes]
    if not names:
        return np.zeros((len(frame), 0), dtype=int)
    return np.column_stack([frame[name].to_numpy(dtype=int) for name in names]) if len(set(names)) != len(names) \
        else frame[names].to_numpy(dtype=int)


def _held(problem: Problem, schedule: Schedule, columns: dict[tuple[str, str], np.ndarray],
          previous: dict[tuple[str, str], int], span: int) -> Schedule:
    """The new plan with ``previous`` counts in its first ``span`` intervals (at least one), valued on ``problem``."""
    counts: dict[tuple[int, int], np.ndarray] = {}
    for g, group in enumerate(problem.groups):
        for m, mode in enumerate(group.modes):
            column = columns[(group.id, mode.name)].copy()
            column[:max(span, 1)] = previous[(group.id, mode.name)]
            counts[g, m] = column
    return schedule_from_counts(problem, counts, schedule.info, explain=False)  # valued, not explained


def _first_infeasible(problem: Problem, alt: Any, new: Any, span: int) -> tuple[int, str]:
    """The first of the intervals ``0..span-1`` where the held counts (frame ``alt``) may not run, and why:
    import limit, caps less margin, reserve held, and (with a carbon budget) no more load than the new plan
    (frame ``new``); ``(span, '')`` when they may run in all of them. Vector work over the span."""
    checks: list[tuple[np.ndarray, str]] = [
        (alt["grid_import_kw"].to_numpy(float)[:span] > np.asarray(problem.import_limit_kw, float)[:span] + _EPS_KW,
         "previous counts exceed the import limit now")]
    for receptor in problem.receptors:
        cap = np.broadcast_to(np.asarray(receptor.cap_dba, dtype=float), (problem.T,))[:span] - float(
            getattr(receptor, "margin_db", 0.0))
        checks.append((alt[f"noise_dba_{receptor.id}"].to_numpy(float)[:span] > cap + _EPS_DB,
                       f"previous counts exceed the cap at {receptor.id}"))
    for reserve in problem.reserves:
        column = reserve_column(reserve.name, "short_kw")
        checks.append((alt[column].to_numpy(float)[:span] > new[column].to_numpy(float)[:span] + _EPS_KW,
                       f"previous counts hold less {reserve.name} reserve"))
    if problem.carbon_budgets:
        checks.append((alt["load_kw"].to_numpy(float)[:span] > new["load_kw"].to_numpy(float)[:span] + _EPS_KW,
                       "previous counts use more of a carbon budget"))
    first, why = span, ""
    for failed, reason in checks:  # in this order, so the first interval's reason is the one named before
        if failed.any() and int(np.argmax(failed)) < first:
            first, why = int(np.argmax(failed)), reason
    return first, why
