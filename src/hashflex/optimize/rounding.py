"""Round an LP relaxation's unit counts into a feasible MIP start (pure numpy, no solver).

Flooring every count is always safe for the hard limits (less load, less import, less noise,
fewer emissions) but it flickers a fully-on group between N and N−1 units, which the min-on/off
rows then charge as fake starts and stops. So after flooring, each group gets back the whole
units its LP total had (floor of Σ_m n), placed in its lowest-power fractional modes: by
construction that draws no more power than the LP point did. Every restored unit is re-checked
against the import limit and each receptor's noise budget and dropped if it does not fit.
"""

from __future__ import annotations

import numpy as np

from hashflex.optimize.problem import Problem, Receptor

EPS = 1e-6


def round_lp_counts(problem: Problem, lp_counts: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """Integer counts close to ``lp_counts`` that respect availability, import and noise limits."""
    counts = {key: np.floor(np.maximum(values, 0.0) + EPS).astype(int) for key, values in lp_counts.items()}
    room_kw = problem.import_limit_kw + problem.renewable_kw - load_kw(problem, counts)
    noise_room = [r.energy_budget() - noise_energy(problem, r, counts) for r in problem.receptors]
    for g, group in enumerate(problem.groups):
        modes_by_power = sorted(range(len(group.modes)), key=lambda m: group.modes[m].power_kw)
        lp_total = sum(lp_counts[g, m] for m in range(len(group.modes)))
        for t in range(problem.T):
            missing = int(np.floor(lp_total[t] + EPS)) - sum(int(counts[g, m][t]) for m in modes_by_power)
            for m in modes_by_power:
                if missing <= 0:
                    break
                if lp_counts[g, m][t] - counts[g, m][t] <= EPS:
                    continue
                mode = group.modes[m]
                step_kw = mode.power_kw - group.idle_power_kw
                energies = [r.unit_energy(group.id, mode) for r in problem.receptors]
                fits = step_kw <= room_kw[t] + EPS and all(
                    e <= room[t] + EPS for e, room in zip(energies, noise_room) if e > 0
                )
                if not fits:
                    break
                counts[g, m][t] += 1
                missing -= 1
                room_kw[t] -= step_kw
                for room, energy in zip(noise_room, energies):
                    room[t] -= energy
    _cover_reserve_obligations(problem, counts, room_kw, noise_room)
    hold_derates(problem, counts)
    return respect_min_on_off(problem, counts)


def hold_derates(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> None:
    """Issue 17: move units above a `Derate`'s cap down, highest-power mode first, until at most
    available − derated units run modes above the cap (``milp.define_derates``). A moved unit
    goes to sleep (never to another mode: that could break the import or a noise cap). In place."""
    index = {group.id: g for g, group in enumerate(problem.groups)}
    for derate in problem.derates:
        g = index[derate.group]
        group = problem.groups[g]
        high = sorted((m for m, mode in enumerate(group.modes) if mode.power_kw > derate.max_power_kw + 1e-9),
                      key=lambda m: -group.modes[m].power_kw)
        allowed = np.maximum(group.units_available - derate.units, 0)
        for m in high:
            excess = np.maximum(sum(counts[g, k] for k in high) - allowed, 0)
            counts[g, m] = counts[g, m] - np.minimum(excess, counts[g, m])


def _cover_reserve_obligations(problem: Problem, counts: dict[tuple[int, int], np.ndarray], room_kw: np.ndarray,
                               noise_room: list[np.ndarray]) -> None:
    """Issue 15: flooring can leave an awarded reserve a few units short, which the MILP's short
    penalty then charges to the start (and the gap test fails at the root). Add units to the groups
    that carry reserve, largest shed step first, while the import and noise rooms allow, until the
    sheddable running load covers the obligations of every product (a warm start only: the MILP
    decides). In place."""
    if not problem.reserves:
        return
    carried = {g for g, group in enumerate(problem.groups) if any(group.id in r.group_max_kw for r in problem.reserves)}
    needed = sum(r.obligation_kw for r in problem.reserves)
    for t in np.flatnonzero(needed > EPS):
        sheddable = sum((mode.power_kw - problem.groups[g].idle_power_kw) * counts[g, m][t]
                        for g in carried for m, mode in enumerate(problem.groups[g].modes))
        steps = sorted(((mode.power_kw - problem.groups[g].idle_power_kw, g, m) for g in carried
                        for m, mode in enumerate(problem.groups[g].modes)), reverse=True)
        for step_kw, g, m in steps:
            group, mode = problem.groups[g], problem.groups[g].modes[m]
            energies = [r.unit_energy(group.id, mode) for r in problem.receptors]
            while sheddable < needed[t] - EPS:
                on = sum(int(counts[g, k][t]) for k in range(len(group.modes)))
                fits = on < group.units_available[t] and step_kw <= room_kw[t] + EPS and all(
                    e <= room[t] + EPS for e, room in zip(energies, noise_room) if e > 0)
                if not fits:
                    break
                counts[g, m][t] += 1
                sheddable += step_kw
                room_kw[t] -= step_kw
                for room, energy in zip(noise_room, energies):
                    room[t] -= energy


def _interval_starts_h(problem: Problem) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(problem.duration_h)[:-1]])


def respect_min_on_off(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """Lower counts (never raise them, so hard limits stay met) until every group's units-on
    sequence keeps its minimum on and off times: a unit is started only if the ceiling stays
    high enough for its whole minimum on time, and a unit stopped stays off for its minimum off
    time. Rounding otherwise flickers N, N−1, N and the soft min-on/off rows charge their penalty."""
    starts_h = _interval_starts_h(problem)
    out = {key: values.copy() for key, values in counts.items()}
    for g, group in enumerate(problem.groups):
        modes = range(len(group.modes))
        ceiling = sum(out[g, m] for m in modes)
        on = group.initial.units_on
        locked_on = [(hours, units) for hours, units in group.initial.must_stay_on]  # (until_h, units)
        locked_off = [(hours, units) for hours, units in group.initial.must_stay_off]
        target = np.zeros(problem.T, dtype=int)
        for t in range(problem.T):
            now = starts_h[t]
            locked_on = [(until, n) for until, n in locked_on if until > now + 1e-9]
            locked_off = [(until, n) for until, n in locked_off if until > now + 1e-9]
            must_on = sum(n for _, n in locked_on)
            must_off = sum(n for _, n in locked_off)
            if ceiling[t] < on:
                on -= min(on - ceiling[t], max(on - must_on, 0))
                stopped = group.initial.units_on if t == 0 else target[t - 1]
                if stopped - on > 0 and group.min_off_h:
                    locked_off.append((now + group.min_off_h, stopped - on))
            elif ceiling[t] > on:
                horizon = (starts_h >= now) & (starts_h < now + max(group.min_on_h, 1e-9))
                can_start = min(ceiling[t] - on, group.units - on - must_off, int(ceiling[horizon].min()) - on)
                if can_start > 0:
                    on += can_start
                    if group.min_on_h:
                        locked_on.append((now + group.min_on_h, can_start))
            target[t] = on
        # Remove the excess from the highest-power modes first: least hashrate lost per kW saved.
        for m in sorted(modes, key=lambda m: -group.modes[m].power_kw):
            excess = np.maximum(sum(out[g, k] for k in modes) - target, 0)
            out[g, m] = out[g, m] - np.minimum(excess, out[g, m])
    return out


def load_kw(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """[T] site load in kW of the miners for ``counts`` (asleep units at idle), plus idle GPUs."""
    load = np.zeros(problem.T)
    for g, group in enumerate(problem.groups):
        on = np.zeros(problem.T)
        for m, mode in enumerate(group.modes):
            load += counts[g, m] * mode.power_kw
            on += counts[g, m]
        load += (group.units_available - on) * group.idle_power_kw
    if problem.compute is not None:  # GPUs idle at least (issue 16): the fallback must count them
        load += problem.compute.idle_site_kw()
    return load


def noise_energy(problem: Problem, receptor: Receptor, counts: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """[T] noise energy 10^(L/10) at ``receptor`` from ``counts``, plus idle GPU cooling."""
    energy = np.zeros(problem.T)
    for (g, m), n in counts.items():
        energy += n * receptor.unit_energy(problem.groups[g].id, problem.groups[g].modes[m])
    if problem.compute is not None:  # idle GPU cooling is always there (issue 16)
        energy += problem.compute.idle_noise_energy(receptor.id)
    return energy
