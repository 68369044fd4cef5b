"""Identical groups pooled into one (an exact reduction of the LP), and the pooled counts split back.

Containers of one kind at one distance from every receptor are interchangeable: same modes, idle
draw, commitment parameters (min on/off, start cost) and noise coefficients to every receptor. The
MILP does not need to tell them apart: pooling them into one group whose units, availability and
initial state add up gives the same LP relaxation value on the aggregate (identical units pool), and
a model 1/k the size for k alike containers. `solve` pools before building and splits the plan back
per group (`split_counts`) before the schedule is computed, so every figure and reason is the
original groups'. Measured on the SYNTHETIC panhandle-like 288 × 48 site (48 containers in 6
classes): see optimization/benchmarks/solve_scale.py.

Only groups without commitment parameters (min on, min off, start cost) pool (`poolable`): for them
the reduction is exact. With them, the pooled min on/off rows would be the sum of the members' rows,
a relaxation of them, and the split-back plan could fall short of an unpooled solve by more than the
MIP gap; such groups stay one class each. (`split_counts` still handles commitment: kept for
problems that pool anyway, e.g. tests.) The split keeps each member's running units where
they were, starts units where none is held off and stops units not held on (initial batches and the
member's own recent starts and stops) first, so members' starts add up to the class's except where
availability moves units between members, and members' min on/off times hold where the class
plan leaves room.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hashflex.optimize.problem import Group, GroupState, Problem


def class_key(problem: Problem, group: Group) -> tuple:
    """What must be equal for two groups to pool: modes, idle draw, commitment parameters and the
    unit noise energy of every mode at every receptor (exact floats)."""
    noise = tuple(tuple(receptor.unit_energy(group.id, mode) for mode in group.modes) for receptor in problem.receptors)
    return (group.modes, group.idle_power_kw, group.min_on_h, group.min_off_h, group.start_cost_usd, noise)


def committed(group: Group) -> bool:
    """A group with commitment parameters (min on, min off or a start cost): its units are not
    interchangeable with another group's once their histories differ, so it is never pooled."""
    return bool(group.min_on_h or group.min_off_h or group.start_cost_usd)


def poolable(problem: Problem) -> bool:
    """True when pooling applies: two or more identical groups without commitment parameters, and
    none of the families that name groups one by one (powered-off units, derates, reserves, GPU
    compute).

    Groups with min on/off or start costs are not pooled: the pooled min on/off rows are only a
    relaxation of the members' rows, and the split-back plan could be worth less than an unpooled
    solve by more than the MIP gap (a hypothesis example found one: −$0.28 against $0.92 with a
    $1.20 gap). Without them, identical groups pool exactly: every unit of a class is worth the same
    in every interval, and any split within each member's availability is as good as any other."""
    if problem.power_off or problem.derates or getattr(problem, "reserves", ()) or problem.compute is not None:
        return False
    keys = [class_key(problem, group) for group in problem.groups if not committed(group)]
    return len(set(keys)) < len(keys)


def pool_identical_groups(problem: Problem) -> tuple[Problem, list[list[int]]]:
    """Pool groups that are alike (`class_key`) into one group per class.

    Parameters
    ----------
    problem : Problem
        The planning problem (see `poolable` for when pooling applies).

    Returns
    -------
    (Problem, list of list of int)
        The pooled problem (one group per class, named after its first member; units, availability
        [T] and initial state summed, initial min-on/off batches concatenated) and, per pooled
        group, the indices of its members in ``problem.groups``.
    """
    classes: dict[tuple, list[int]] = {}
    for g, group in enumerate(problem.groups):
        # A group with commitment parameters is a class of its own (`poolable`).
        classes.setdefault(("group", g) if committed(group) else class_key(problem, group), []).append(g)
    members = list(classes.values())
    pooled = []
    for idx in members:
        first = problem.groups[idx[0]]
        gs = [problem.groups[g] for g in idx]
        loads = [g.initial.load_kw for g in gs]
        initial = GroupState(units_on=sum(g.initial.units_on for g in gs),
                             load_kw=None if all(v is None for v in loads) else sum(v or 0.0 for v in loads),
                             must_stay_on=tuple(b for g in gs for b in g.initial.must_stay_on),
                             must_stay_off=tuple(b for g in gs for b in g.initial.must_stay_off))
        pooled.append(dataclasses.replace(
            first, units=sum(g.units for g in gs), initial=initial,
            units_available=np.sum([np.asarray(g.units_available, dtype=int) for g in gs], axis=0)))
    ids = {problem.groups[idx[0]].id for idx in members}
    receptors = tuple(dataclasses.replace(r, attenuation_db={k: v for k, v in r.attenuation_db.items() if k in ids})
                      for r in problem.receptors)
    return dataclasses.replace(problem, groups=tuple(pooled), receptors=receptors), members


def _held(problem: Problem, group: Group, attr: str) -> np.ndarray:
    """[T] units of ``group`` held on (``must_stay_on``) or off by batches from before the horizon."""
    starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])
    held = np.zeros(problem.T, dtype=int)
    for hours_left, units in getattr(group.initial, attr):
        held += np.where(starts_h < hours_left - 1e-9, int(units), 0)
    return held


def split_counts(problem: Problem, members: list[list[int]], pooled_counts: dict[tuple[int, int], np.ndarray]
                 ) -> dict[tuple[int, int], np.ndarray]:
    """The pooled plan's counts back per original group.

    Per class and interval, each member keeps the units it ran before (within its availability);
    a rise of the class's units on is started in members with room, first where no unit is held
    off (by an initial batch or the member's own stops within min-off time), a fall is stopped
    from units not held on (by an initial batch or the member's own starts within min-on time)
    first, last members first; the class's modes are then filled member by member. So a member's
    min on/off times hold wherever the class's plan leaves room for them.

    Parameters
    ----------
    problem : Problem
        The original (unpooled) problem.
    members : list of list of int
        Per pooled group k, its members' indices (`pool_identical_groups`).
    pooled_counts : dict
        (k, m) → [T] int units of pooled group k in mode m.

    Returns
    -------
    dict
        (g, m) → [T] int units of original group g in mode m; per interval, the members' counts of
        each mode add up to the class's and no member runs more than it has available.
    """
    T = problem.T
    out = {}
    for k, idx in enumerate(members):
        groups = [problem.groups[g] for g in idx]
        n_modes = len(groups[0].modes)
        class_n = np.array([np.asarray(pooled_counts[k, m], dtype=int) for m in range(n_modes)])  # [M, T]
        avail = np.array([np.asarray(g.units_available, dtype=int) for g in groups])  # [K, T]
        held_on = np.array([_held(problem, g, "must_stay_on") for g in groups])
        held_off = np.array([_held(problem, g, "must_stay_off") for g in groups])
        starts_h = np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])
        min_on_h, min_off_h = groups[0].min_on_h, groups[0].min_off_h
        started = np.zeros((len(idx), T), dtype=int)  # units started per member and interval
        stopped = np.zeros((len(idx), T), dtype=int)
        on = np.array([g.initial.units_on for g in groups], dtype=int)
        per = np.zeros((len(idx), n_modes, T), dtype=int)
        for t in range(T):
            # Units still locked by a member's own recent starts (min-on) or stops (min-off).
            recent_on = (starts_h[:t] > starts_h[t] - min_on_h - 1e-9) if min_on_h else np.zeros(t, dtype=bool)
            recent_off = (starts_h[:t] > starts_h[t] - min_off_h - 1e-9) if min_off_h else np.zeros(t, dtype=bool)
            locked_on = held_on[:, t] + started[:, :t][:, recent_on].sum(axis=1)
            locked_off = held_off[:, t] + stopped[:, :t][:, recent_off].sum(axis=1)
            before = on.copy()
            on = np.minimum(on, avail[:, t])
            diff = int(class_n[:, t].sum() - on.sum())
            if diff > 0:
                for cap in (np.minimum(avail[:, t], np.array([g.units for g in groups]) - locked_off), avail[:, t]):
                    for i in range(len(idx)):
                        step = min(diff, max(int(cap[i] - on[i]), 0))
                        on[i] += step
                        diff -= step
            elif diff < 0:
                for floor in (np.minimum(locked_on, on), np.zeros(len(idx), dtype=int)):
                    for i in reversed(range(len(idx))):
                        step = min(-diff, max(int(on[i] - floor[i]), 0))
                        on[i] -= step
                        diff += step
            started[:, t] = np.maximum(on - before, 0)
            stopped[:, t] = np.maximum(before - on, 0)
            if diff != 0:
                raise ValueError(f"pooled counts of {groups[0].id}'s class exceed its members' availability at {t}")
            left = class_n[:, t].copy()
            for i in range(len(idx)):
                room = int(on[i])
                for m in range(n_modes):
                    take = min(room, int(left[m]))
                    per[i, m, t] = take
                    left[m] -= take
                    room -= take
        for i, g in enumerate(idx):
            for m in range(n_modes):
                out[g, m] = per[i, m]
    return out
