"""The guard in counts (issue 18): the import, DR and noise checks of :class:`control.guard.Guard`
as vector operations over (group, mode) counts, with no object per miner.

The optimizer decides counts per group and mode, and within one (group, mode) every unit draws the
same power, has the same J/TH and the same sound power; so the per-miner guard's choices reduce to
*how many* units of each (group, mode) it moves, and to which mode. :class:`CountGuard` computes
those moves (:class:`Move`: ``n`` units of ``group`` from ``from_mode`` to ``to_mode``) in the per-miner
guard's order, class by class in bulk:

- import / DR cut: (group, mode) classes least efficient (J/TH, highest first), then loudest, then
  by group id (the per-miner guard's miner-id order under the ``<group>-<n>`` naming rule of
  ``profile.miner_ids``); whole units to sleep while a unit's removal fits in the excess, the next
  one to the highest-power lower mode that removes the rest, if one does (as `Guard._cut_power`);
- noise: the class whose units contribute most at the receptor steps down one rung, as many units
  as needed or as it has, again and again (as `Guard._cut_noise`; ties by the profile's group order,
  the per-miner guard's batch order).

:func:`apply_moves` is the driver edge: per move it picks the lowest-id units of the group that are
in ``from_mode`` (the per-miner guard's order within a class), so the modes that result are the
per-miner guard's, miner for miner (tests/test_guard_counts.py checks this on random fleets).
A setpoint's ``power_target_kw`` is taken as its mode's power (as dispatch sets it); two modes of
one group with the same J/TH and sound power are ordered by mode here, by miner id there.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from hashflex import acoustics
from hashflex.control.fleet import SLEEP, FleetArrays
from hashflex.control.guard import _REL_EPS, Guard, GuardAction, Limits, Measurements, _over_limit, cut_tolerance_kw

__all__ = ["CountGuard", "CountResult", "Move", "MovedMiners", "apply_moves", "realise"]

Counts = Mapping[tuple[str, str], int]


@dataclass(frozen=True)
class Move:
    """``n`` units of ``group`` moved from ``from_mode`` to ``to_mode`` (a mode name or ``"sleep"``)."""

    group: str
    from_mode: str
    to_mode: str
    n: int


@dataclass(frozen=True)
class CountResult:
    """What the count guard decided.

    Attributes
    ----------
    counts : running units per (group id, mode name) after the cuts (modes with 0 units omitted)
    moves : the cuts in the order taken (apply them in this order, `apply_moves`)
    actions : what was done and why, as `Guard` reports it (``miners`` empty: see ``moves``)
    spans : (action index, first move, end move): the moves each cutting action took
        (`realise` names the miners they moved in that action)
    """

    counts: dict[tuple[str, str], int]
    moves: list[Move] = field(default_factory=list)
    actions: list[GuardAction] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when anything was cut (the loop should re-plan)."""
        return bool(self.moves) or bool(self.actions)


class CountGuard:
    """The hard-limit checks of one `Guard` (same profile, same freshness rules) on counts.

    Parameters
    ----------
    guard : the per-miner guard whose profile, mode table, noise table and freshness rules are used
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        # Issue 15: ``(sheddable kW per group, now) -> kW per group to keep running`` for the
        # awards in force (`control.ancillary.reserve_keep_kw`; the loop sets it). An import cut
        # takes first what no award needs; None: the per-miner guard's order alone.
        self.reserve_keep: Callable[[Mapping[str, float], datetime], Mapping[str, float]] | None = None
        profile = guard.profile
        self._group_index = {g.id: i for i, g in enumerate(profile.miner_groups)}
        self._units = {g.id: g.units for g in profile.miner_groups}
        self._idle = {g.id: g.idle_power_kw for g in profile.miner_groups}
        self._modes = {g.id: g.modes for g in profile.miner_groups}

    # ------------------------------------------------------------------ entry points

    def check(self, counts: Counts, measurements: Measurements, limits: Limits, now: datetime, *,
              present: Mapping[str, int] | None = None) -> CountResult:
        """`Guard.check` on counts: curtail for import, then step down for noise.

        Parameters
        ----------
        counts : running units per (group id, mode name); sleep and zero entries may be left out
        measurements, limits : as for `Guard.check`
        now : timezone-aware time of the check
        present : miners per group in the fleet (default: the profile's ``units``); sleeping ones
            and those beyond draw idle power, as the per-miner guard counts units absent from a batch

        Returns
        -------
        CountResult

        Raises
        ------
        ValueError
            ``now`` naive, or a count naming an unknown group or mode, or negative.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        state = self._state(counts)
        actions: list[GuardAction] = []
        moves: list[Move] = _Moves()
        spans: list[tuple[int, int, int]] = []
        limit_kw, source = self.guard.import_limit(limits)
        renewable_kw, note = self.guard._renewable(measurements, now)
        net = self.net_import_kw(state, measurements.auxiliary_kw, renewable_kw, present)
        if _over_limit(net, limit_kw):
            spans.append((len(actions), _open(moves), -1))
            self._cut_power(state, net - limit_kw, "import_curtail",
                            f"modelled import {net:.1f} kW (batch + idle + auxiliary − renewable "
                            f"{renewable_kw:.1f} kW{note}) is over the {source} limit {limit_kw:.1f} kW",
                            actions, moves, keep=self._keep(state, now))
        local = now.astimezone(self.guard.profile.tz)
        for receptor in self.guard.profile.receptors:
            cap = min(receptor.cap_at(local), limits.noise_caps_dba.get(receptor.id, math.inf))
            if math.isinf(cap):
                continue
            offset = measurements.noise_offset_db.get(receptor.id)
            margin, why = ((receptor.model_margin_db, "model margin") if offset is None
                           else (max(offset, 0.0), "sensor offset"))
            spans.append((len(actions), _open(moves), -1))
            self._cut_noise(state, receptor.id, cap - margin,
                            f"cap {cap:.1f} dBA at {local:%a %H:%M} local, {why} {margin:.1f} dB",
                            "noise_step_down", actions, moves, keep=self._keep(state, now))
        return CountResult(_running(state), moves, actions, _close(spans, actions, moves))

    def emergency_dr_cut(self, counts: Counts, limit_kw: float, measurements: Measurements, now: datetime, *,
                         present: Mapping[str, int] | None = None) -> CountResult:
        """The fast path's DR cut in counts (`Guard.emergency_dr_cut`): cut until modelled import
        ≤ ``limit_kw`` (kW), renewable credited only if fresh at ``now`` and at most at nameplate.

        Raises ValueError for a count naming an unknown group or mode, or negative."""
        state = self._state(counts)
        actions: list[GuardAction] = []
        moves: list[Move] = _Moves()
        spans: list[tuple[int, int, int]] = []
        renewable_kw, note = self.guard._renewable(measurements, now)
        net = self.net_import_kw(state, measurements.auxiliary_kw, renewable_kw, present)
        if _over_limit(net, limit_kw):
            spans.append((len(actions), _open(moves), -1))
            self._cut_power(state, net - limit_kw, "emergency_dr_cut",
                            f"emergency limit {limit_kw:.1f} kW; modelled import {net:.1f} kW "
                            f"(renewable {renewable_kw:.1f} kW{note})", actions, moves, keep=self._keep(state, now))
        return CountResult(_running(state), moves, actions, _close(spans, actions, moves))

    def import_over_limit_cut(self, measured_import_kw: float, limit_kw: float, counts: Counts, *,
                              measured_at: datetime | None = None, now: datetime | None = None,
                              measurements: Measurements | None = None,
                              present: Mapping[str, int] | None = None) -> CountResult:
        """`Guard.import_over_limit_cut` in counts: the meter reads ``measured_import_kw`` (kW) over
        ``limit_kw`` (kW): remove at least the measured excess. A reading that is not finite, undated,
        older than the guard's ``max_age_s`` or beyond its clock skew is not believed: the cut is then to
        ``limit_kw`` on the model (idle + auxiliary − renewable of ``measurements``, at their worst), as
        the DR cut. With ``now`` and a ``reserve_keep`` hook, units no award needs go first (issue 15).

        Raises ValueError for a count naming an unknown group or mode, or negative."""
        state = self._state(counts)
        actions: list[GuardAction] = []
        moves: list[Move] = _Moves()
        spans: list[tuple[int, int, int]] = []
        keep = self._keep(state, now) if now is not None else None
        doubt = self.guard._doubt(measured_import_kw, measured_at, now, "meter reading")
        if doubt is not None:
            measurements = measurements or Measurements()
            renewable_kw, note = self.guard._renewable(measurements, now)
            net = self.net_import_kw(state, measurements.auxiliary_kw, renewable_kw, present)
            if _over_limit(net, limit_kw):
                spans.append((len(actions), _open(moves), -1))
                self._cut_power(state, net - limit_kw, "import_over_limit_cut",
                                f"{doubt}, not used; modelled import {net:.1f} kW (renewable "
                                f"{renewable_kw:.1f} kW{note}) is over the limit {limit_kw:.1f} kW",
                                actions, moves, keep=keep)
            return CountResult(_running(state), moves, actions, _close(spans, actions, moves))
        excess = measured_import_kw - limit_kw
        if excess > limit_kw * _REL_EPS:
            spans.append((len(actions), _open(moves), -1))
            self._cut_power(state, excess, "import_over_limit_cut",
                            f"measured import {measured_import_kw:.1f} kW is {excess:.1f} kW over "
                            f"the limit {limit_kw:.1f} kW", actions, moves, keep=keep)
        return CountResult(_running(state), moves, actions, _close(spans, actions, moves))

    def noise_exceedance_cut(self, receptor_id: str, measured_dba: float, cap_dba: float,
                             counts: Counts, now: datetime | None = None) -> CountResult:
        """`Guard.noise_exceedance_cut` in counts: lower the modelled level at ``receptor_id`` by
        the measured excess ``measured_dba − cap_dba`` (dB). With ``now`` (timezone-aware) and a
        ``reserve_keep`` hook, units no reserve award in force needs step down first (issue 15); the cap
        is hard, so reserve-holding units follow if it still needs them. Raises ValueError for an
        unknown receptor."""
        if receptor_id not in self.guard._energy:
            raise ValueError(f"unknown receptor {receptor_id!r}")
        state = self._state(counts)
        actions: list[GuardAction] = []
        moves: list[Move] = _Moves()
        spans: list[tuple[int, int, int]] = []
        excess = measured_dba - cap_dba
        if excess > 0:
            modelled = self.noise_level_dba(state, receptor_id)
            spans.append((len(actions), _open(moves), -1))
            self._cut_noise(state, receptor_id, modelled - excess,
                            f"sensor reads {measured_dba:.1f} dBA, {excess:.1f} dB over the cap "
                            f"{cap_dba:.1f} dBA; modelled {modelled:.1f} dBA must fall by as much",
                            "noise_exceedance_cut", actions, moves,
                            keep=self._keep(state, now) if now is not None else None)
        return CountResult(_running(state), moves, actions, _close(spans, actions, moves))

    # ------------------------------------------------------------------ figures

    def net_import_kw(self, counts: Counts, auxiliary_kw: float = 0.0, renewable_kw: float = 0.0,
                      present: Mapping[str, int] | None = None) -> float:
        """Running units at mode power + idle power of every other unit + auxiliary − renewable (kW).

        ``present``: miners per group (default the profile's units); the idle units of a group are
        ``max(units, present) − running``, as the per-miner guard counts them."""
        total = auxiliary_kw - renewable_kw
        running: dict[str, int] = {}
        for (group_id, mode), n in counts.items():
            if mode == SLEEP or n <= 0:
                continue
            total += n * self.guard._specs[group_id, mode].power_kw
            running[group_id] = running.get(group_id, 0) + n
        for group_id, units in self._units.items():
            fleet_units = max(units, (present or {}).get(group_id, units))
            total += max(fleet_units - running.get(group_id, 0), 0) * self._idle[group_id]
        return max(total, 0.0)

    def noise_level_dba(self, counts: Counts, receptor_id: str) -> float:
        """Modelled level at the receptor, dB(A) (with background for a total cap; −inf if silent)."""
        table = self.guard._energy[receptor_id]
        energy = sum(n * table[key] for key, n in counts.items() if n > 0) + self.guard._background_energy(receptor_id)
        return acoustics.level_dba(energy)

    # ------------------------------------------------------------------ internals

    def _state(self, counts: Counts) -> dict[tuple[str, str], int]:
        state: dict[tuple[str, str], int] = {}
        for (group_id, mode), n in counts.items():
            if (group_id, mode) not in self.guard._specs:
                raise ValueError(f"counts name unknown group or mode {(group_id, mode)!r}")
            if n < 0:
                raise ValueError(f"counts: negative unit count {n} for {(group_id, mode)!r}")
            if mode != SLEEP and n:
                state[group_id, mode] = state.get((group_id, mode), 0) + int(n)
        return state

    def _move(self, state: dict, moves: list[Move], group_id: str, from_mode: str, to_mode: str, n: int) -> None:
        state[group_id, from_mode] -= n
        if to_mode != SLEEP:
            state[group_id, to_mode] = state.get((group_id, to_mode), 0) + n
        # Merged with the previous move only within one action's span (`realise` names each action's miners).
        if (len(moves) > getattr(moves, "floor", 0)
                and (moves[-1].group, moves[-1].from_mode, moves[-1].to_mode) == (group_id, from_mode, to_mode)):
            moves[-1] = Move(group_id, from_mode, to_mode, moves[-1].n + n)
        else:
            moves.append(Move(group_id, from_mode, to_mode, n))

    def _keep(self, state: Mapping[tuple[str, str], int], now: datetime) -> dict[str, float] | None:
        """Group id -> sheddable kW the awards in force need kept running (None: no hook, no award)."""
        if self.reserve_keep is None:
            return None
        keep = dict(self.reserve_keep(self._sheddable(state), now))
        return keep if any(v > 0 for v in keep.values()) else None

    def _sheddable(self, state: Mapping[tuple[str, str], int]) -> dict[str, float]:
        """Group id -> running load above idle, kW (what a group can hold as reserve)."""
        out: dict[str, float] = {}
        for (group_id, mode), n in state.items():
            if n > 0:
                out[group_id] = out.get(group_id, 0.0) + n * (self.guard._specs[group_id, mode].power_kw
                                                              - self._idle[group_id])
        return out

    def _cut_power(self, state: dict, excess_kw: float, kind: str, why: str, actions: list[GuardAction],
                   moves: list[Move], keep: Mapping[str, float] | None = None) -> None:
        """`Guard._cut_power` class by class: whole units to sleep while a unit's removal fits.

        With ``keep`` (group id -> sheddable kW the awards in force need, issue 15) a first pass in
        the same order cuts only what each group runs above its keep; a second pass, only if the
        limit still needs it, cuts the rest (the import limit is hard: reserve-holding units go too,
        and the action says so)."""
        specs = self.guard._specs
        order = sorted((key for key, n in state.items() if n > 0),
                       key=lambda k: (-specs[k].j_per_th, -specs[k].sound_dba, k[0]))
        remaining = excess_kw
        tol = cut_tolerance_kw(excess_kw)  # as the per-miner guard: rounding left over counts as removed
        slept = stepped = 0
        room = None
        if keep:
            room = {g: kw - keep.get(g, 0.0) for g, kw in self._sheddable(state).items()}
        passes = (room, None) if room is not None else (None,)
        forced = 0.0
        for spare in passes:
            before_pass = remaining
            if spare is None and room is not None:  # step-downs of the first pass made new classes
                order = sorted((key for key, n in state.items() if n > 0),
                               key=lambda k: (-specs[k].j_per_th, -specs[k].sound_dba, k[0]))
            for group_id, mode in order:
                if remaining <= tol:
                    break
                n_here = state.get((group_id, mode), 0)
                if n_here <= 0:
                    continue
                spec = specs[group_id, mode]
                idle = self._idle[group_id]
                removal = spec.power_kw - idle
                count = n_here
                if spare is not None and removal > 0:
                    # Only what the group runs above what its awards need (whole units).
                    count = min(count, max(int((spare.get(group_id, 0.0) + 1e-9) // removal), 0))
                # Units slept whole: those whose removal does not exceed what remains (removal <= remaining).
                whole = count if removal <= 0 else min(count, _whole_units(remaining, removal, tol))
                if whole:
                    self._move(state, moves, group_id, mode, SLEEP, whole)
                    remaining -= whole * removal
                    slept += whole
                    if spare is not None:
                        spare[group_id] = spare.get(group_id, 0.0) - whole * max(removal, 0.0)
                if remaining <= tol or whole == n_here:
                    continue
                # The next unit removes more than remains: the highest-power lower mode that still removes it.
                lower = [m for m in self._modes[group_id] if m.power_kw < spec.power_kw
                         and spec.power_kw - m.power_kw >= remaining - tol and m.sound_power_dba <= spec.sound_dba]
                target = max(lower, key=lambda m: m.power_kw).name if lower else SLEEP
                drop = spec.power_kw - (specs[group_id, target].power_kw if target != SLEEP else idle)
                if spare is not None and drop > spare.get(group_id, 0.0) + 1e-9:
                    continue  # that step would take load an award needs: a later class, or the second pass
                self._move(state, moves, group_id, mode, target, 1)
                remaining -= drop
                if spare is not None:
                    spare[group_id] = spare.get(group_id, 0.0) - drop
                slept, stepped = (slept + 1, stepped) if target == SLEEP else (slept, stepped + 1)
            if spare is None and room is not None:
                forced = before_pass - max(remaining, 0.0)
        removed = excess_kw - remaining
        detail = f"{slept} unit(s) to sleep" + (f", {stepped} to a lower mode" if stepped else "")
        order_note = ("least efficient (J/TH) and loudest first" if room is None else
                      "least efficient (J/TH) and loudest first, units no reserve award needs before the others"
                      + (f" ({forced:.1f} kW of it from units holding awarded reserve: the limit needs them)"
                         if forced > 0 else ""))
        actions.append(GuardAction(kind, f"{why}; curtailed {order_note}: "
                                         f"{detail}, {removed:.1f} kW removed", ()))
        if remaining > _REL_EPS * max(excess_kw, 1.0):
            actions.append(GuardAction("limit_unreachable",
                                       f"{remaining:.1f} kW still over with every unit of the batch asleep "
                                       "(idle and auxiliary load alone exceed the limit)", ()))

    def _cut_noise(self, state: dict, receptor_id: str, target_dba: float, why: str, kind: str,
                   actions: list[GuardAction], moves: list[Move], keep: Mapping[str, float] | None = None) -> None:
        """`Guard._cut_noise` in bulk: the loudest class steps down as many units as needed.

        With ``keep`` (group id -> sheddable kW the awards in force need, issue 15) a first pass steps
        down, loudest first, only what each group runs above its keep (a step lowers a group's
        sheddable load by the step's power); a second pass, only if the receptor is still over, takes
        the loudest of the rest (the cap is hard: reserve-holding units step too, and the action says
        so). Without ``keep``, the per-miner guard's order alone."""
        table = self.guard._energy[receptor_id]
        specs = self.guard._specs
        background = self.guard._background_energy(receptor_id)
        budget = acoustics.energy(target_dba) - background
        limit = max(budget, 0.0) * (1 + _REL_EPS)
        energy = sum(n * table[key] for key, n in state.items())
        if energy <= limit:
            return
        before = self.noise_level_dba(state, receptor_id)
        touched = 0
        forced = 0
        spare = None
        if keep:
            spare = {g: kw - keep.get(g, 0.0) for g, kw in self._sheddable(state).items()}
        for first_pass in ((True, False) if spare is not None else (False,)):
            blocked: set[tuple[str, str]] = set()
            while energy > limit:
                live = [key for key, n in state.items() if n > 0 and table[key] > 0 and key not in blocked]
                if not live:
                    if first_pass:
                        break
                    energy = 0.0
                    break
                group_id, mode = min(live, key=lambda k: (-table[k], self._group_index[k[0]]))
                down = specs[group_id, mode].step_down
                drop = table[group_id, mode] - table[group_id, down]
                need = state[group_id, mode] if drop <= 0 else min(state[group_id, mode],
                                                                    _units_to_cover(energy - limit, drop))
                if spare is not None:
                    step_kw = specs[group_id, mode].power_kw - (specs[group_id, down].power_kw if down != SLEEP
                                                                else self._idle[group_id])
                    if first_pass and step_kw > 0:
                        # Only the steps the group's load above its awards can give (whole units).
                        need = min(need, max(int((spare.get(group_id, 0.0) + 1e-9) // step_kw), 0))
                        if need == 0:
                            blocked.add((group_id, mode))
                            continue
                    spare[group_id] = spare.get(group_id, 0.0) - need * max(step_kw, 0.0)
                    if not first_pass:
                        forced += need
                self._move(state, moves, group_id, mode, down, need)
                energy -= need * drop
                touched += need  # a unit stepped twice counts twice here, once in the per-miner guard
        after = self.noise_level_dba(state, receptor_id)
        order_note = ("" if spare is None else
                      ", units no reserve award needs first"
                      + (f" ({forced} step(s) of units holding awarded reserve: the cap needs them)" if forced else ""))
        actions.append(GuardAction(kind, f"receptor {receptor_id}: modelled {before:.1f} dBA over the target "
                                         f"{target_dba:.1f} dBA ({why}); stepped down {touched} unit step(s) "
                                         f"contributing most{order_note}, now {after:.1f} dBA", ()))
        if budget <= 0:
            actions.append(GuardAction("limit_unreachable",
                                       f"receptor {receptor_id}: background alone is at or over the target "
                                       f"{target_dba:.1f} dBA; every contributing unit is asleep", ()))


class _Moves(list):
    """The moves of one check; ``floor``: where the current action's span began (no merging across)."""

    floor = 0


def _open(moves: list[Move]) -> int:
    """Begin a new action's span at the end of ``moves``; returns its first index."""
    moves.floor = len(moves)  # type: ignore[attr-defined]
    return len(moves)


def _close(spans: list[tuple[int, int, int]], actions: list[GuardAction],
           moves: list[Move]) -> list[tuple[int, int, int]]:
    """Each opened span (action index, first move, -1) ended at the next one's first move (or the
    last move); spans whose cut appended no action are dropped."""
    out = []
    for k, (action, first, _) in enumerate(spans):
        end = spans[k + 1][1] if k + 1 < len(spans) else len(moves)
        if action < len(actions):
            out.append((action, first, end))
    return out


def realise(cut: CountResult, fleet: FleetArrays,
            modes: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[GuardAction]]:
    """The driver edge of a count cut with its audit: `apply_moves` span by span, each cutting
    action naming the miners its moves changed (as the per-miner guard's actions do).

    Parameters
    ----------
    cut : the count guard's result
    fleet : the fleet the indices refer to
    modes : group id -> [N] mode index per miner (-1 asleep) before the cut; not modified

    Returns
    -------
    tuple
        (group id -> [N] int16 mode indices after the cut, the actions with ``miners`` filled)

    Raises
    ------
    ValueError
        As `apply_moves`.
    """
    current = {g: np.asarray(v, dtype=np.int16) for g, v in modes.items()}
    actions = list(cut.actions)
    for action, first, end in cut.spans:
        moves = cut.moves[first:end]
        # only the groups the span's moves name change (issue 18: no copy or comparison of the others)
        touched = apply_moves({g: current[g] for g in dict.fromkeys(m.group for m in moves)}, fleet, moves)
        moved = MovedMiners([(arrays.miner_id, np.flatnonzero(touched[g] != current[g]))
                             for g, arrays in fleet.groups.items() if g in touched])
        actions[action] = dataclasses.replace(actions[action], miners=moved)
        current = {**current, **touched}
    return current, actions


class MovedMiners(Sequence):
    """The miners one guard action moved (``GuardAction.miners`` from `realise`): a read-only sequence of
    miner ids, group by group in the fleet's group order and by id within a group, equal to (and hashing
    as) the tuple of those ids. Kept as (ids column, positions) per group and made into strings only when
    read (issue 18: at 100,000 miners a cut moves tens of thousands; its count and its first ids, what
    the audit keeps, need not make the rest).

    Parameters
    ----------
    parts : sequence of (np.ndarray, np.ndarray)
        Per group: its [N] id column (object, str) and the [k] int positions of its moved miners.
    """

    __slots__ = ("_parts", "_len", "_ids")

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self._parts = [(ids, where) for ids, where in parts if len(where)]
        self._len = sum(len(where) for _, where in self._parts)
        self._ids: tuple[str, ...] | None = None

    def _all(self) -> tuple[str, ...]:
        if self._ids is None:
            self._ids = tuple(m for ids, where in self._parts for m in ids[where].tolist())
        return self._ids

    def __len__(self) -> int:
        """Miners moved."""
        return self._len

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        """One id, or a slice as a tuple (a leading slice, e.g. ``[:50]``, reads only those ids)."""
        if isinstance(index, slice) and self._ids is None:
            start, stop, step = index.indices(self._len)
            if step == 1 and start == 0:
                out: list[str] = []
                for ids, where in self._parts:
                    if len(out) >= stop:
                        break
                    out += ids[where[:stop - len(out)]].tolist()
                return tuple(out)
        return self._all()[index]

    def __iter__(self):
        """The ids, in order."""
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        """Equal to a tuple (or another `MovedMiners`) of the same ids in the same order."""
        if isinstance(other, MovedMiners):
            return self._all() == other._all()
        if isinstance(other, tuple):
            return self._all() == other
        return NotImplemented

    def __hash__(self) -> int:
        """The hash of the equal tuple."""
        return hash(self._all())

    def __repr__(self) -> str:
        return f"MovedMiners({self._all()!r})" if self._len <= 10 else f"MovedMiners({self._len} miners)"


def _whole_units(remaining: float, removal: float, tol: float = 0.0) -> int:
    """How many units of ``removal`` kW the per-miner loop sleeps whole from ``remaining`` kW: it
    sleeps a unit while ``removal <= remaining + tol`` and stops once ``remaining <= tol`` (``tol``:
    `cut_tolerance_kw`, so that rounding in the two ways of subtracting does not decide)."""
    k = max(int(remaining // removal) - 2, 0)
    left = remaining - k * removal
    while left > tol and removal <= left + tol:
        left -= removal
        k += 1
    return k


def _units_to_cover(excess: float, drop: float) -> int:
    """Fewest steps of ``drop`` that bring ``excess`` to zero or below (at least one)."""
    return max(int(math.ceil(excess / drop)), 1)


def _running(state: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in state.items() if n > 0}


def counts_of(fleet: FleetArrays) -> dict[tuple[str, str], int]:
    """Running units per (group id, mode name) of ``fleet`` (one bincount per group)."""
    out: dict[tuple[str, str], int] = {}
    for group_id, arrays in fleet.groups.items():
        names = arrays.mode_names
        tally = np.bincount(arrays.mode[arrays.mode >= 0].astype(np.int64), minlength=len(names))
        for k, n in enumerate(tally.tolist()):
            if n:
                out[group_id, names[k]] = n
    return out


def apply_moves(modes: Mapping[str, np.ndarray], fleet: FleetArrays, moves: Sequence[Move]) -> dict[str, np.ndarray]:
    """The driver edge of a count cut: per move, the ``n`` lowest-id units of the group in
    ``from_mode`` go to ``to_mode``.

    Parameters
    ----------
    modes : group id -> [N] mode index per miner (-1 asleep), id order (as `ArrayDispatch.modes`
        or ``GroupArrays.mode``); not modified
    fleet : the fleet the indices refer to (mode names per group)
    moves : as `CountResult.moves`

    Returns
    -------
    dict
        group id -> [N] int16 mode indices after the moves.

    Raises
    ------
    ValueError
        A move asks for more units than the group has in ``from_mode``.
    """
    out = {g: np.array(v, dtype=np.int16, copy=True) for g, v in modes.items()}
    for move in moves:
        names = fleet.groups[move.group].mode_names
        src = names.index(move.from_mode)
        dst = -1 if move.to_mode == SLEEP else names.index(move.to_mode)
        where = np.flatnonzero(out[move.group] == src)[:move.n]
        if len(where) < move.n:
            raise ValueError(f"move {move}: group {move.group} has only {len(where)} unit(s) in {move.from_mode}")
        out[move.group][where] = dst
    return out
