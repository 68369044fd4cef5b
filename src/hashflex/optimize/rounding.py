"""Round an LP relaxation's unit counts into a feasible MIP start (pure numpy, no solver).

Flooring every count is always safe for the hard limits (less load, less import, less noise,
fewer emissions) but it flickers a fully-on group between N and N−1 units, which the min-on/off
rows then charge as fake starts and stops. So after flooring, each group gets back the whole
units its LP total had (floor of Σ_m n), placed in its lowest-power fractional modes: by
construction that draws no more power than the LP point did. Every restored unit is re-checked
against the import limit and each receptor's noise budget and dropped if it does not fit.
Last, each awarded reserve product is covered by its own qualified groups where the hard limits
allow (`cover_reserve_obligations`, issue 15); the solver's answer gets the same cover
(`optimize.solve`).
"""

from __future__ import annotations

import itertools

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
    hold_derates(problem, counts)
    counts = respect_min_on_off(problem, counts)
    # Last: on the final counts, adding only runs of units that keep min on/off and the ramp.
    cover_reserve_obligations(problem, counts)
    return counts


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


def reserve_uncovered_kw(problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """[T] kW of the awards that no split of the running sheddable load among the products can hold,
    each product from its own qualified groups only (issue 15): Σ_p min(Ob[p,t], Rmax[p,t]) minus
    the most reserve the counts can hold, exactly (no solver).

    The most is a maximum flow (products → qualified groups → sheddable load), so by max-flow
    min-cut it is the least over product subsets S of Σ_{p∉S} min(Ob, Rmax)[p,t]
    + Σ_g min(shed[g,t], Σ_{p∈S} Gmax[p,g]), with shed[g,t] = Σ_m (P[g,m] − P_idle[g])·n[g,m,t]:
    the rows of ``milp.define_reserve`` with n fixed. Zero means every product's award is held;
    a part of an award above its offer cap Rmax is not counted here (no unit can hold it).

    Parameters
    ----------
    problem : the problem (its ``reserves`` and groups)
    counts : (g, m) → [T] integer units running mode m of group g

    Returns
    -------
    [T] float kW, >= 0 (zeros without reserves).
    """
    arrays = _ReserveArrays.of(problem)
    if arrays is None:
        return np.zeros(problem.T)
    return np.maximum(arrays.need.sum(axis=0) - arrays.cuts(arrays.sheddable(problem, counts)).min(axis=0), 0.0)


class _ReserveArrays:
    """The reserve data of a problem as arrays for the max-flow min-cut of `reserve_uncovered_kw`:
    ``carried`` group indices (C), ``gmax`` [P, C] kW, ``need`` [P, T] kW = min(obligation, cap),
    ``subsets`` [2^P, P] bool, ``subset_cap`` [2^P, C] kW = Σ_{p∈S} gmax[p, c]."""

    def __init__(self, problem: Problem) -> None:
        reserves = problem.reserves
        self.carried = [g for g, group in enumerate(problem.groups)
                        if any(group.id in r.group_max_kw for r in reserves)]
        self.gmax = np.array([[float(r.group_max_kw.get(problem.groups[g].id, 0.0)) for g in self.carried]
                              for r in reserves]).reshape(len(reserves), len(self.carried))
        self.need = np.array([np.minimum(r.obligation_kw, r.max_kw) for r in reserves], dtype=float)
        self.subsets = np.array(list(itertools.product((False, True), repeat=len(reserves))), dtype=bool)
        self.subset_cap = self.subsets.astype(float) @ self.gmax

    @classmethod
    def of(cls, problem: Problem) -> _ReserveArrays | None:
        """The arrays, or None when no product has an award to hold."""
        if not problem.reserves or not any(np.any(r.obligation_kw > EPS) for r in problem.reserves):
            return None
        return cls(problem)

    def sheddable(self, problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
        """[C, T] kW of running load each carried group can shed."""
        return np.array([sum((mode.power_kw - problem.groups[g].idle_power_kw) * counts[g, m]
                             for m, mode in enumerate(problem.groups[g].modes)) for g in self.carried],
                        dtype=float).reshape(len(self.carried), problem.T)

    def cuts(self, shed: np.ndarray, t: int | None = None) -> np.ndarray:
        """Cut values, [2^P, T] (or [2^P] at interval ``t`` only); their least is the most reserve held."""
        if t is not None:
            inside = np.minimum(shed[None, :, t], self.subset_cap).sum(axis=1)
            return (~self.subsets).astype(float) @ self.need[:, t] + inside
        inside = np.minimum(shed[None, :, :], self.subset_cap[:, :, None]).sum(axis=1)
        return (~self.subsets).astype(float) @ self.need + inside


def cover_reserve_obligations(problem: Problem, counts: dict[tuple[int, int], np.ndarray], *,
                              make_room: bool = True) -> int:
    """Issue 15: add units so that every product's award is held by its own qualified groups
    (``group_max_kw``), not only the awards' total, while the hard limits allow: availability (and
    units still cold-booting from a PDU power-off), derates, the import limit, every receptor's
    noise budget and the carbon budgets. In place; returns the units added.

    Flooring the LP counts can leave a product a unit short, and the short penalty of a few kW is
    far inside the MIP gap, so the start (and the MILP's answer) would keep it. Per interval with
    ``reserve_uncovered_kw`` > 0: take a least cut (a set S of products whose qualified groups are
    full), add units to a group of it whose running sheddable load is below what S may take from it,
    in the mode that covers the missing kW with the least overshoot, and repeat; when no unit fits
    because a hard limit is full, units no award needs are slept at t to make room (`_swap_in`, fewest
    hashes first); when some least cut has no group that can take a unit, or no room can be made,
    what is left stays short (stated in the schedule's ``reserve_<p>_short_kw``, never hidden). Units are added as a
    run of intervals around t, the shortest that adds no min-on shortfall, min-off excess or ramp
    excess (the soft rows of ``milp.define_commitment`` and ``define_ramp``, which cost $1,000 a unit
    and $10 a kW: far more than a short kW): a dip is filled, a new start runs its minimum on time.
    The added units only add load, so the import, noise and carbon rooms are re-checked over the run
    here, and the LP that values the counts re-checks every hard row.

    Parameters
    ----------
    problem : the problem (reserves, groups, limits, receptors, carbon budgets)
    counts : (g, m) → [T] integer units, changed in place
    make_room : sleep units no award needs when a hard limit is full (`_swap_in`)

    Returns
    -------
    int, the number of unit-intervals added (0 when every award was already held or nothing fits).

    Sources: ERCOT Nodal Protocols §8.1.1.4 (a Load Resource carrying Ancillary Service Resource
    Responsibility must be able to provide it), §3.18 (Load Resource participation).
    """
    arrays = _ReserveArrays.of(problem)
    if arrays is None:
        return 0
    shed = arrays.sheddable(problem, counts)
    deficit = arrays.need.sum(axis=0) - arrays.cuts(shed).min(axis=0)
    short_at = np.flatnonzero(deficit > EPS)
    if short_at.size == 0:
        return 0
    rooms = _Rooms(problem, counts)
    added = 0
    # Passes until one adds nothing: a unit started at t runs its minimum on time, so a run at t
    # may need room at t + 1 that only a later interval's swap makes (4 May 2024, 06:00 CDT: the
    # award's first interval stayed 35 S19j units short while 06:15 onwards was covered); once t + 1
    # holds its units, t needs a run of its own interval only.
    for _ in range(_MAX_COVER_PASSES):
        added_before = added
        added += _cover_pass(problem, rooms, arrays, shed, short_at, make_room)
        if added == added_before:
            break
        deficit = arrays.need.sum(axis=0) - arrays.cuts(shed).min(axis=0)
        short_at = np.flatnonzero(deficit > EPS)
        if short_at.size == 0:
            break
    return added


def _cover_pass(problem: Problem, rooms: _Rooms, arrays: _ReserveArrays, shed: np.ndarray, short_at: np.ndarray,
                make_room: bool) -> int:
    """One pass of `cover_reserve_obligations` over the intervals ``short_at``, in order; updates
    ``rooms`` (and the counts it holds) and ``shed``. Returns the unit-intervals added."""
    added = 0
    for t in short_at:
        for _ in range(_MAX_COVER_STEPS):
            cuts = arrays.cuts(shed, int(t))
            flow = float(cuts.min())
            missing = float(arrays.need[:, t].sum()) - flow
            if missing <= EPS:
                break
            least = np.flatnonzero(cuts <= flow + EPS)
            headroom = arrays.subset_cap[least] - shed[None, :, t]  # [least cuts, C] kW each group may still take
            helps = headroom > EPS
            if not helps.any(axis=1).all():  # a least cut whose groups are all full: nothing can help
                break
            # Prefer the groups that raise the most least cuts at once, then the most headroom.
            order = sorted(np.flatnonzero(helps.any(axis=0)),
                           key=lambda c: (-int(helps[:, c].sum()), -float(headroom[:, c].max())))
            wants = [(c, min(missing, float(headroom[helps[:, c], c].min()))) for c in order]
            step_units = _add_first(rooms, arrays, shed, wants, int(t))
            if not step_units and make_room:
                # Every limit that binds is full: make room from units no award needs, then add.
                step_units = _swap_in(problem, rooms, arrays, shed, wants, int(t), flow)
            if not step_units and make_room:
                # A full carbon budget spans the day: its room can come from other intervals.
                step_units = _carbon_from_elsewhere(problem, rooms, arrays, shed, wants, int(t))
            if not step_units:
                break
            added += step_units
    return added


def _add_first(rooms: _Rooms, arrays: _ReserveArrays, shed: np.ndarray, wants: list[tuple[int, float]],
               t: int) -> int:
    """Add units to the first carried group of ``wants`` ((c, kW wanted) in preference order) that
    takes any; updates ``shed``. Returns the unit-intervals added (0: none fitted)."""
    for c, want_kw in wants:
        units, step_kw, block = rooms.add_units(arrays.carried[c], t, want_kw)
        if units:
            shed[c, block] += step_kw
            return units * len(block)
    return 0


def _swap_in(problem: Problem, rooms: _Rooms, arrays: _ReserveArrays, shed: np.ndarray,
             wants: list[tuple[int, float]], t: int, flow: float) -> int:
    """Issue 15: when no unit of a short product's groups fits because a hard limit is full (import,
    a noise cap, a carbon budget), sleep at interval t units that no award needs (the max flow of
    reserve held does not fall without them), fewest hashes lost first, one at a time, until a unit
    of the short product fits; then add it. Holding an award is a minimum running load (the plan's
    obligation, ERCOT Nodal Protocols §8.1.1.3): a mining unit gives way even where the MILP's
    short penalty, per kW, would not pay for a whole unit. Nothing fits after every free unit: the
    removals are undone and the product stays short (stated in ``reserve_<p>_short_kw``).
    Returns the unit-intervals added (0: none)."""
    carried = {g: c for c, g in enumerate(arrays.carried)}
    # What keeps a unit of a wanted group out; a removal must free one of these (units and derates
    # no removal frees: then there is nothing to try).
    needed: set[str] = set()
    for c, _ in wants:
        g = arrays.carried[c]
        for m, mode in enumerate(problem.groups[g].modes):
            if mode.power_kw - problem.groups[g].idle_power_kw > EPS:
                blocks = rooms.blocking(g, m, t)
                if "units" not in blocks:
                    needed |= blocks
    if not needed:
        return 0
    wants_units = [(arrays.carried[c], m) for c, _ in wants
                   for m, mode in enumerate(problem.groups[arrays.carried[c]].modes)
                   if mode.power_kw - problem.groups[arrays.carried[c]].idle_power_kw > EPS]
    removed: list[tuple[int, int]] = []
    for _ in range(_MAX_SWAP_UNITS):
        candidates = []
        for (g, m), n in rooms.counts.items():
            if int(n[t]) <= 0:
                continue
            group = problem.groups[g]
            step_kw = group.modes[m].power_kw - group.idle_power_kw
            if step_kw <= EPS or not (rooms.frees(g, m) & needed):
                continue
            c = carried.get(g)
            if c is not None:
                trial = shed.copy()
                trial[c, t] -= step_kw
                if float(arrays.cuts(trial, t).min()) < flow - EPS:
                    continue  # an award needs this unit
            candidates.append((group.modes[m].hashrate_th_s, -step_kw, g, m))
        removed_one = False
        for _, _, g, m in sorted(candidates):
            # As many units of this class as the first blocked limit needs for one wanted unit
            # (at least one; each removal re-checked), then see whether a wanted unit fits.
            for _ in range(max(rooms.units_to_free(g, m, t, needed, wants_units), 1)):
                if int(rooms.counts[g, m][t]) <= 0 or not rooms.remove_unit(g, m, t):
                    break
                if g in carried:
                    group = problem.groups[g]
                    shed[carried[g], t] -= group.modes[m].power_kw - group.idle_power_kw
                    if float(arrays.cuts(shed, t).min()) < flow - EPS:  # went one too far: give it back
                        rooms.restore_unit(g, m, t)
                        shed[carried[g], t] += group.modes[m].power_kw - group.idle_power_kw
                        break
                removed.append((g, m))
                removed_one = True
            if removed_one:
                break
        if not removed_one:
            break
        if any(rooms.fits(g, m, t) >= 1 for g, m in wants_units):
            added = _add_first(rooms, arrays, shed, wants, t)
            if added:
                return added
    for g, m in reversed(removed):  # nothing fitted: give the units back
        rooms.restore_unit(g, m, t)
        if g in carried:
            group = problem.groups[g]
            shed[carried[g], t] += group.modes[m].power_kw - group.idle_power_kw
    return 0


_MAX_SWAP_UNITS = 200  # units slept per interval to make room (bounds the search)


def _carbon_from_elsewhere(problem: Problem, rooms: _Rooms, arrays: _ReserveArrays, shed: np.ndarray,
                           wants: list[tuple[int, float]], t: int) -> int:
    """Issue 15 (H9): when only a carbon budget keeps a unit of a short product out at interval t and
    `_swap_in` found nothing to sleep at t (every unit running there carries an award), free the
    budget's room at *other* intervals of the same budget: step one running unit at a time down to
    a lower-power mode of its group (units on unchanged, so no min-on/off row moves), where no
    award needs the kW (the max flow of reserve held at that interval does not fall) and the site
    load step adds no ramp excess, least margin lost per kg of CO2 freed first, until a unit of a
    wanted group fits at t; then add it. A daily budget filled by the plan otherwise left a rounded
    award a fraction of a unit short (e.g. 4.96 kW of a 10,000 kW RRS award held by 1,893 hydro
    units at 5.28 kW each on 22 Mar 2024). Nothing fits after the step-downs: they are undone.

    Parameters
    ----------
    problem, rooms, arrays, shed, wants, t : as `_swap_in` (``shed`` [C, T] kW updated in place)

    Returns
    -------
    int, the unit-intervals added (0: none).
    """
    budgets = [b for b, budget in enumerate(problem.carbon_budgets) if budget.mask[t]]
    if not budgets:
        return 0
    wants_units = []
    for c, _ in wants:
        g = arrays.carried[c]
        group = problem.groups[g]
        for m, mode in enumerate(group.modes):
            if mode.power_kw - group.idle_power_kw > EPS:
                blocks = rooms.blocking(g, m, t)
                if blocks and blocks <= {f"carbon:{b}" for b in budgets}:
                    wants_units.append((g, m))
    if not wants_units:
        return 0  # something other than carbon blocks (or nothing does): not this rule's case
    carried = {g: c for c, g in enumerate(arrays.carried)}
    hp = np.broadcast_to(np.asarray(problem.hashprice_usd_per_th_h, dtype=float), (problem.T,))
    price_kwh = np.asarray(problem.energy_price_usd_mwh, dtype=float) / 1000.0
    mask = np.zeros(problem.T, dtype=bool)
    for b in budgets:
        mask |= problem.carbon_budgets[b].mask
    mask[t] = False
    stepped: list[tuple[int, int, int, int]] = []  # (k, g, from m, to m2)

    def step(k: int, g: int, m: int, m2: int) -> None:
        group = problem.groups[g]
        rooms._charge(g, m, np.array([k]), -1, group.modes[m].power_kw - group.idle_power_kw)
        rooms._charge(g, m2, np.array([k]), 1, group.modes[m2].power_kw - group.idle_power_kw)
        if g in carried:
            shed[carried[g], k] += group.modes[m2].power_kw - group.modes[m].power_kw

    flows = {}
    for _ in range(_MAX_SWAP_UNITS):
        candidates = []
        for (g, m), n in rooms.counts.items():
            group = problem.groups[g]
            lower = [m2 for m2, other in enumerate(group.modes) if other.power_kw < group.modes[m].power_kw - EPS]
            if not lower:
                continue
            m2 = max(lower, key=lambda k2: group.modes[k2].power_kw)  # the next mode down: least hashes lost
            freed_kw = group.modes[m].power_kw - group.modes[m2].power_kw
            lost_th = group.modes[m].hashrate_th_s - group.modes[m2].hashrate_th_s
            for k in np.flatnonzero(mask & (np.asarray(n) > 0)):
                kg = freed_kw * float(rooms.kg_per_kw[k])
                if kg <= 0:
                    continue
                margin = lost_th * hp[k] - freed_kw * price_kwh[k]
                candidates.append((margin / kg, int(k), g, m, m2))
        ramp = problem.ramp_limit_kw_per_h is not None
        ramp_before = rooms._ramp_excess(rooms.site_load) if ramp else 0.0
        done = False
        for _, k, g, m, m2 in sorted(candidates):
            if g in carried:
                if k not in flows:
                    flows[k] = float(arrays.cuts(shed, k).min())
                trial = shed.copy()
                trial[carried[g], k] -= problem.groups[g].modes[m].power_kw - problem.groups[g].modes[m2].power_kw
                if float(arrays.cuts(trial, k).min()) < flows[k] - EPS:
                    continue  # an award needs these kW at k
            step(k, g, m, m2)
            if ramp and rooms._ramp_excess(rooms.site_load) > ramp_before + 1e-6:
                step(k, g, m2, m)
                continue
            stepped.append((k, g, m, m2))
            done = True
            break
        if not done:
            break
        if any(rooms.fits(g, m, t) >= 1 for g, m in wants_units):
            added = _add_first(rooms, arrays, shed, wants, t)
            if added:
                return added
    for k, g, m, m2 in reversed(stepped):  # nothing fitted: step them back up
        step(k, g, m2, m)
    return 0


_MAX_COVER_STEPS = 1000  # additions per interval (each adds >= 1 unit; bounds the loop, never reached in practice)
_MAX_COVER_PASSES = 4  # passes over the short intervals (each after the first only runs when the last added units)


def _window_sums(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """[T] Σ_{k = first[t]}^{t} values[k]."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    return cumulative[np.arange(1, values.size + 1)] - cumulative[first]


def _whole_units(room: float, per_unit: float) -> int:
    """Whole units of ``per_unit`` (> 0) within ``room`` (any sign; infinite: no limit)."""
    if not np.isfinite(room):
        return _NO_LIMIT if room > 0 else 0
    return int(np.floor(room / per_unit))


_NO_LIMIT = 10**9


class _Rooms:
    """What the hard limits leave for more running units, per interval: availability (less units
    still cold-booting from a PDU power-off), derates, import kW, noise energy per receptor, carbon
    kg per budget; `add_units` adds units within them and charges them."""

    def __init__(self, problem: Problem, counts: dict[tuple[int, int], np.ndarray]) -> None:
        self.problem, self.counts = problem, counts
        load = load_kw(problem, counts)
        self.site_load = load.copy()  # kW, for the ramp rows
        self.import_kw = problem.import_limit_kw + problem.renewable_kw - load
        self.noise = [r.energy_budget() - noise_energy(problem, r, counts) for r in problem.receptors]
        self.kg_per_kw = problem.duration_h * problem.intensity_kg_per_mwh / 1000.0
        imported = np.maximum(load - problem.renewable_kw, 0.0)
        self.carbon = [problem.effective_carbon_budget_kg(b) - float((imported * self.kg_per_kw)[b.mask].sum())
                       for b in problem.carbon_budgets]
        starts_h = _interval_starts_h(problem)
        self.booting = {}  # g -> [T] units that cannot run yet (powered off at the start, still booting)
        index = {group.id: g for g, group in enumerate(problem.groups)}
        for entry in problem.power_off:
            g = index[entry.group]
            initial_off = problem.groups[g].initial.units_off
            self.booting[g] = np.where(starts_h < entry.cold_boot_h - 1e-9, initial_off, 0)
        self._rows: dict[int, tuple] = {}  # g -> commitment row data (`_commitment_rows`)
        self._excess_now: dict[int, tuple] = {}  # g -> (units on [T], its soft-row excess), until charged
        self.derates = {}
        for derate in problem.derates:
            self.derates.setdefault(index[derate.group], []).append(derate)

    def fits(self, g: int, m: int, t: int) -> int:
        """How many more units of group g can run mode m at interval t within every hard limit."""
        problem, group = self.problem, self.problem.groups[g]
        mode = group.modes[m]
        step_kw = mode.power_kw - group.idle_power_kw
        on = sum(int(self.counts[g, k][t]) for k in range(len(group.modes)))
        room = int(group.units_available[t]) - on - int(self.booting.get(g, np.zeros(problem.T, dtype=int))[t])
        for derate in self.derates.get(g, ()):
            if mode.power_kw > derate.max_power_kw + 1e-9:
                high = sum(int(self.counts[g, k][t]) for k, other in enumerate(group.modes)
                           if other.power_kw > derate.max_power_kw + 1e-9)
                room = min(room, max(int(group.units_available[t]) - int(derate.units[t]), 0) - high)
        if step_kw > EPS:
            room = min(room, _whole_units(self.import_kw[t] + EPS, step_kw))
            for b, budget in enumerate(problem.carbon_budgets):
                if budget.mask[t] and self.kg_per_kw[t] > 0:
                    room = min(room, _whole_units(self.carbon[b] / self.kg_per_kw[t] + EPS, step_kw))
        for receptor, noise in zip(problem.receptors, self.noise):
            energy = receptor.unit_energy(group.id, mode)
            if energy > 0:
                room = min(room, _whole_units(noise[t] * (1.0 + 1e-9), energy))
        return max(room, 0)

    def add_units(self, g: int, t: int, want_kw: float) -> tuple[int, float, np.ndarray]:
        """Add units of group g around interval t towards ``want_kw`` of sheddable load: in the mode
        that covers it with the least overshoot (then the fewest units), over the shortest run of
        intervals containing t that fits every hard limit throughout and adds no soft-row excess
        (`_soft_excess`). Returns (units added per interval, kW of sheddable load added per interval,
        the run's interval indices); (0, 0.0, empty) when nothing fits."""
        group = self.problem.groups[g]
        options = []
        for m, mode in enumerate(group.modes):
            step_kw = mode.power_kw - group.idle_power_kw
            if step_kw > EPS:
                units = int(np.ceil(want_kw / step_kw - 1e-9))
                options.append((units * step_kw - want_kw, units, m, step_kw))
        for _, units, m, step_kw in sorted(options):
            for block in self._runs(g, t):
                fit = min(min(self.fits(g, m, int(k)) for k in block), self._carbon_fit(block, step_kw))
                for n in sorted({min(units, fit), 1}, reverse=True):
                    if n <= 0 or n > fit or not self._adds_no_soft_excess(g, m, block, n):
                        continue
                    self._charge(g, m, block, n, step_kw)
                    return n, n * step_kw, block
        return 0, 0.0, np.zeros(0, dtype=int)

    def blocking(self, g: int, m: int, t: int) -> set[str]:
        """Which hard limits leave no room for one more unit of (g, m) at t: ``units`` (availability,
        booting, derates), ``import``, ``noise:<receptor index>``, ``carbon:<budget index>``."""
        problem, group = self.problem, self.problem.groups[g]
        mode = group.modes[m]
        step_kw = mode.power_kw - group.idle_power_kw
        out: set[str] = set()
        on = sum(int(self.counts[g, k][t]) for k in range(len(group.modes)))
        room = int(group.units_available[t]) - on - int(self.booting.get(g, np.zeros(problem.T, dtype=int))[t])
        for derate in self.derates.get(g, ()):
            if mode.power_kw > derate.max_power_kw + 1e-9:
                high = sum(int(self.counts[g, k][t]) for k, other in enumerate(group.modes)
                           if other.power_kw > derate.max_power_kw + 1e-9)
                room = min(room, max(int(group.units_available[t]) - int(derate.units[t]), 0) - high)
        if room < 1:
            out.add("units")
        if step_kw > EPS:
            if _whole_units(self.import_kw[t] + EPS, step_kw) < 1:
                out.add("import")
            for b, budget in enumerate(problem.carbon_budgets):
                if budget.mask[t] and self.kg_per_kw[t] > 0 and _whole_units(
                        self.carbon[b] / self.kg_per_kw[t] + EPS, step_kw) < 1:
                    out.add(f"carbon:{b}")
        for i, (receptor, noise) in enumerate(zip(problem.receptors, self.noise)):
            energy = receptor.unit_energy(group.id, mode)
            if energy > 0 and _whole_units(noise[t] * (1.0 + 1e-9), energy) < 1:
                out.add(f"noise:{i}")
        return out

    def frees(self, g: int, m: int) -> set[str]:
        """Which limits sleeping a unit of (g, m) gives room back to (see `blocking`)."""
        group = self.problem.groups[g]
        out = {"import"} | {f"carbon:{b}" for b in range(len(self.problem.carbon_budgets))}
        return out | {f"noise:{i}" for i, r in enumerate(self.problem.receptors)
                      if r.unit_energy(group.id, group.modes[m]) > 0}

    def units_to_free(self, g: int, m: int, t: int, needed: set[str], wanted: list[tuple[int, int]]) -> int:
        """How many units of (g, m) to sleep at t so that the limits in ``needed`` it frees have room
        for one unit of the cheapest ``wanted`` (group, mode) (0 when it frees none of them)."""
        problem, group = self.problem, self.problem.groups[g]
        mode = group.modes[m]
        step_kw = mode.power_kw - group.idle_power_kw
        most = 0
        for gw, mw in wanted:
            wgroup = problem.groups[gw]
            wmode = wgroup.modes[mw]
            w_kw = wmode.power_kw - wgroup.idle_power_kw
            n = 0
            if "import" in needed and step_kw > EPS:
                n = max(n, int(np.ceil(max(w_kw - self.import_kw[t], 0.0) / step_kw - 1e-9)))
            for b, budget in enumerate(problem.carbon_budgets):
                if f"carbon:{b}" in needed and budget.mask[t] and self.kg_per_kw[t] > 0 and step_kw > EPS:
                    n = max(n, int(np.ceil(max(w_kw - self.carbon[b] / self.kg_per_kw[t], 0.0) / step_kw - 1e-9)))
            for i, (receptor, noise) in enumerate(zip(problem.receptors, self.noise)):
                freed = receptor.unit_energy(group.id, mode)
                if f"noise:{i}" in needed and freed > 0:
                    want = receptor.unit_energy(wgroup.id, wmode)
                    n = max(n, int(np.ceil(max(want - noise[t], 0.0) / freed - 1e-9)))
            most = n if most == 0 else min(most, n) if n else most
        return min(most, int(self.counts[g, m][t]))

    def remove_unit(self, g: int, m: int, t: int) -> bool:
        """Sleep one unit of (g, m) at interval t and give its load back to every room, unless that
        adds a min-on shortfall, min-off excess or ramp excess (then nothing changes: False)."""
        if int(self.counts[g, m][t]) <= 0 or not self._adds_no_soft_excess(g, m, np.array([t]), -1):
            return False
        group = self.problem.groups[g]
        self._charge(g, m, np.array([t]), -1, group.modes[m].power_kw - group.idle_power_kw)
        return True

    def restore_unit(self, g: int, m: int, t: int) -> None:
        """Undo `remove_unit`."""
        group = self.problem.groups[g]
        self._charge(g, m, np.array([t]), 1, group.modes[m].power_kw - group.idle_power_kw)

    def _carbon_fit(self, block: np.ndarray, step_kw: float) -> int:
        """Units of ``step_kw`` more import over ``block`` within every carbon budget's room."""
        fit = _NO_LIMIT
        for b, budget in enumerate(self.problem.carbon_budgets):
            kg_per_unit = step_kw * float(self.kg_per_kw[block][budget.mask[block]].sum())
            if kg_per_unit > 0:
                fit = min(fit, _whole_units(self.carbon[b] + EPS, kg_per_unit))
        return fit

    def _runs(self, g: int, t: int) -> list[np.ndarray]:
        """Runs of intervals [a, b] containing t, shortest first (then the latest start): up to the
        group's min on plus min off time in intervals, so a start can be held for its min on time
        and a recent stop can be bridged."""
        group, T = self.problem.groups[g], self.problem.T
        starts_h = _interval_starts_h(self.problem)
        span_h = group.min_on_h + group.min_off_h
        longest = max(1, int(np.count_nonzero((starts_h >= starts_h[t] - span_h - 1e-9)
                                              & (starts_h < starts_h[t] + span_h + 1e-9))))
        runs = []
        for length in range(1, longest + 1):
            for a in range(t, t - length, -1):
                b = a + length - 1
                if a >= 0 and b < T:
                    runs.append(np.arange(a, b + 1))
        return runs

    def _adds_no_soft_excess(self, g: int, m: int, block: np.ndarray, n: int) -> bool:
        """True when n more units of (g, m) over ``block`` add no min-on shortfall, min-off excess
        or ramp excess (1e-6 tolerance)."""
        group = self.problem.groups[g]
        if g not in self._excess_now:
            on = sum(self.counts[g, k] for k in range(len(group.modes))).astype(float)
            self._excess_now[g] = (on, self._commitment_excess(g, on))
        on, (before_on, before_off) = self._excess_now[g]
        after = on.copy()
        after[block] += n
        after_on, after_off = self._commitment_excess(g, after)
        if after_on > before_on + 1e-6 or after_off > before_off + 1e-6:
            return False
        if self.problem.ramp_limit_kw_per_h is None:
            return True
        step_kw = group.modes[m].power_kw - group.idle_power_kw
        load = self.site_load.copy()
        load[block] += n * step_kw
        return self._ramp_excess(load) <= self._ramp_excess(self.site_load) + 1e-6

    def _commitment_excess(self, g: int, on: np.ndarray) -> tuple[float, float]:
        """(Σ_t min-on shortfall, Σ_t min-off excess) in units for the units-on sequence ``on`` of
        group g: the rows of ``milp.define_commitment`` with the least starts and stops that make
        ``on`` (start = max(Δon, 0), stop = max(−Δon, 0))."""
        group = self.problem.groups[g]
        if not (group.min_on_h or group.min_off_h or group.start_cost_usd):
            return 0.0, 0.0  # no commitment rows for this group
        held_on, first_on, held_off, first_off = self._commitment_rows(g)
        delta = np.diff(on, prepend=float(group.initial.units_on))
        short_on = excess_off = 0.0
        if held_on is not None:
            need = held_on + (_window_sums(np.maximum(delta, 0.0), first_on) if first_on is not None else 0.0)
            short_on = float(np.maximum(need - on, 0.0).sum())
        if held_off is not None:
            used = on + held_off + (_window_sums(np.maximum(-delta, 0.0), first_off) if first_off is not None else 0.0)
            excess_off = float(np.maximum(used - group.units, 0.0).sum())
        return short_on, excess_off

    def _commitment_rows(self, g: int) -> tuple:
        """(held on [T] or None, min-on window starts or None, held off [T] or None, min-off window
        starts or None) of group g, as ``milp.define_commitment`` builds its rows; cached."""
        if g not in self._rows:
            from hashflex.optimize.milp import _initial_batches, _window_starts

            problem, group = self.problem, self.problem.groups[g]
            has_on = bool(group.min_on_h or group.initial.must_stay_on)
            has_off = bool(group.min_off_h or group.initial.must_stay_off)
            self._rows[g] = (
                _initial_batches(problem, g, "must_stay_on").astype(float) if has_on else None,
                _window_starts(problem, group.min_on_h) if has_on and group.min_on_h else None,
                _initial_batches(problem, g, "must_stay_off").astype(float) if has_off else None,
                _window_starts(problem, group.min_off_h) if has_off and group.min_off_h else None,
            )
        return self._rows[g]

    def _ramp_excess(self, load: np.ndarray) -> float:
        """Σ_t kW of site load steps beyond the ramp limit (``milp.define_ramp``; from the initial
        load at t = 0 when there is one)."""
        problem = self.problem
        previous = np.concatenate([[problem.initial_load_kw if problem.initial_load_kw is not None else load[0]],
                                   load[:-1]])
        return float(np.maximum(np.abs(load - previous) - problem.ramp_limit_kw_per_h * problem.duration_h, 0.0).sum())

    def _charge(self, g: int, m: int, block: np.ndarray, n: int, step_kw: float) -> None:
        """Add n units of (g, m) over ``block`` and take them out of every room."""
        group = self.problem.groups[g]
        self.counts[g, m][block] += n
        self._excess_now.pop(g, None)
        self.site_load[block] += n * step_kw
        self.import_kw[block] -= n * step_kw
        for receptor, noise in zip(self.problem.receptors, self.noise):
            noise[block] -= n * receptor.unit_energy(group.id, group.modes[m])
        for b, budget in enumerate(self.problem.carbon_budgets):
            self.carbon[b] -= n * step_kw * float(self.kg_per_kw[block][budget.mask[block]].sum())


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
