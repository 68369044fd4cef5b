"""The guard: every setpoint batch is re-checked against the hard limits before it reaches a miner.

Pure and fast (no solve, no I/O, no clock: ``now`` is passed in). The optimizer already respects the
limits it knew about; the guard enforces the ones that hold *now*, with the latest measurements, and
cuts load on its own when a DR event starts or a sensor reads over its cap (the loop then re-plans).

``Guard(profile).check(batch, measurements, limits, now)`` applies, in order:

(c) **refusal**: setpoints already expired (``expires_at <= now``) or naming an unknown group/mode
    are dropped; that miner keeps its last setpoint until it expires, then sleeps (its safe default).
(a) **import**: ``P_batch + P_idle(units not in batch) + P_aux − P_renewable ≤ L`` with
    ``L = min(interconnection, every limit in limits.import_limits_kw)`` (DR events, operator
    overrides, 4CP). A setpoint counts at ``max(power_target_kw, mode power)``. If over, units are
    curtailed **least efficient (J/TH, highest first), then loudest (Lw), then id**: each goes to
    sleep, except the last, which steps to the highest-power lower mode that removes the rest of
    the excess, if one does. So the cut is the smallest in that order that gets under the limit.
(b) **noise**: at each receptor, ``E = Σ 10^((Lw − A)/10) (+ 10^(L_bg/10) for a total cap)`` must
    stay ≤ ``10^((cap − margin)/10)``, cap at the site's local time (the lower of the profile's and
    any override), margin the sensor calibration offset (measured − modelled, never below 0) or, with
    no sensor, the profile's ``model_margin_db``. If over, the unit contributing most at that
    receptor steps down one rung (next quieter mode that draws no more power, else sleep), again and
    again, until the level is under the cap. Sleeping units are taken as silent.

Every step only lowers power and sound, so a later rule never undoes an earlier one.

Missing, stale or implausible data is taken at its worst (when in doubt, curtail): renewable output
that is absent, not finite, undated, older than ``max_age_s`` or dated more than ``future_skew_s``
after ``now`` counts as 0 kW, and a reading above the profile's renewable nameplate (the sum of
``renewables[].capacity_kw``; 0 without renewables) counts as the nameplate; units of the profile
absent from the batch count at idle power.

Fast path (no schedule needed; e.g. on the batch ``FleetState.as_setpoints`` gives):
``emergency_dr_cut(batch, limit_kw, measurements, now=None)``, ``import_over_limit_cut(measured_import_kw,
limit_kw, batch, *, measured_at=None, now=None, measurements=None)``,
``noise_exceedance_cut(receptor_id, measured_dba, cap_dba, batch)``. The fast path checks freshness
too: without ``now`` the reference time is the newest ``issued_at`` of the batch (the fast-path
batch is issued now), and with an empty batch no reading is trusted. A meter reading for
``import_over_limit_cut`` that is not finite, undated, stale or from the future is not used: the
batch is cut to the limit on the model instead (as ``emergency_dr_cut``).
Each returns a :class:`GuardResult`: the new batch and the actions taken, with the reason in words.

``limits_at(now, dr_book, changes)`` gathers the limits in force from the DR book and operator /
authority ``LimitsChangeMessage``s (per issuer the latest message issued by ``now`` and still valid
wins; across issuers the lowest limit binds).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hashflex import acoustics
from hashflex.control.dr import DRBook
from hashflex.control.fleet import SLEEP, Setpoint
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.messages import LimitsChangeMessage
from hashflex.plausibility import FUTURE_SKEW_S
from hashflex.profile import MinerGroup, SiteProfile

__all__ = ["Guard", "GuardAction", "GuardResult", "Limits", "Measurements", "limits_at"]

_REL_EPS = 1e-9


def cut_tolerance_kw(excess_kw: float) -> float:
    """Rounding allowed in a power cut of ``excess_kw`` (kW): 1e-9 of it, at least 1e-9 kW (far below what
    a meter or a miner resolves). Shared by the per-miner and the count guard so that they cut alike."""
    return _REL_EPS * max(abs(excess_kw), 1.0)


def _over_limit(net_kw: float, limit_kw: float) -> bool:
    """Whether a modelled import ``net_kw`` (kW) is over ``limit_kw`` (kW) by more than rounding.

    The tolerance is relative, with a 1 kW floor: ``limit_kw * (1 + eps)`` alone left no tolerance at a
    0 kW limit, so the last bit of a sum taken in a different order (the per-miner guard adds miner by
    miner, the count guard count × power) decided whether to cut (hypothesis found 2 × 1.7 + 1.6 − 5.0 kW).
    1e-9 kW is far below anything a meter or a miner resolves, so no real excess is let through."""
    return net_kw > limit_kw + _REL_EPS * max(abs(limit_kw), 1.0)


@dataclass(frozen=True)
class Measurements:
    """The latest site measurements. ``None`` means unknown (treated at its worst)."""

    at: datetime | None = None  # when renewable_kw / import_kw were measured
    renewable_kw: float | None = None
    import_kw: float | None = None
    auxiliary_kw: float = 0.0  # non-miner load (pumps, fans, offices)
    noise_dba: Mapping[str, float] = field(default_factory=dict)
    noise_offset_db: Mapping[str, float] = field(default_factory=dict)  # measured − modelled


@dataclass(frozen=True)
class Limits:
    """Limits in force now, besides the profile's: import limits by source label, cap overrides."""

    import_limits_kw: Mapping[str, float] = field(default_factory=dict)  # e.g. {"DR:ev1": 800.0}
    noise_caps_dba: Mapping[str, float] = field(default_factory=dict)  # receptor id -> cap override


def limits_at(now: datetime, dr_book: DRBook | None = None,
              changes: Iterable[LimitsChangeMessage] = ()) -> Limits:
    """The limits in force at ``now``: the DR book's (labelled ``DR:<event>``) and, per issuer, the
    latest change issued by ``now`` and not past ``valid_until`` (labelled ``limits:<issuer>``);
    noise cap overrides whose window contains ``now`` (the lowest per receptor)."""
    import_limits: dict[str, float] = {}
    if dr_book is not None:
        limit, label = dr_book.limit_at(now)
        if math.isfinite(limit):
            import_limits[label] = limit
    latest: dict[tuple[str, str], LimitsChangeMessage] = {}
    for change in changes:
        if change.issued_at > now or (change.valid_until is not None and change.valid_until <= now):
            continue
        for part in ("import", "noise"):
            present = change.import_limit_kw is not None if part == "import" else change.noise_caps is not None
            held = latest.get((change.issuer, part))
            if present and (held is None or change.issued_at >= held.issued_at):
                latest[change.issuer, part] = change
    caps: dict[str, float] = {}
    for (issuer, part), change in latest.items():
        if part == "import":
            import_limits[f"limits:{issuer}"] = float(change.import_limit_kw)  # type: ignore[arg-type]
            continue
        for cap in change.noise_caps or ():
            if cap.window_start <= now < cap.window_end:
                caps[cap.receptor_id] = min(cap.cap_dba, caps.get(cap.receptor_id, math.inf))
    return Limits(import_limits, caps)


@dataclass(frozen=True)
class GuardAction:
    """One thing the guard did: ``kind`` (refused_expired, import_curtail, ...), why, which miners
    (a tuple of ids; from the count guard's `guard_counts.realise` an equal `guard_counts.MovedMiners`,
    which makes the ids only when read)."""
    kind: str  # refused_expired, refused_unknown, import_curtail, noise_step_down, limit_unreachable, ...
    reason: str
    miners: Sequence[str] = ()


@dataclass(frozen=True)
class GuardResult:
    """The batch after the guard's checks, and the actions taken (empty: nothing cut or refused)."""
    batch: list[Setpoint]
    actions: list[GuardAction] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the guard cut or refused anything (the loop should re-plan)."""
        return bool(self.actions)


@dataclass(frozen=True)
class _ModeSpec:
    power_kw: float
    j_per_th: float
    sound_dba: float
    step_down: str  # next rung down: a quieter mode drawing no more power, else sleep


class Guard:
    """Hard-limit checks for one site profile. Construct once; every method is pure."""

    def __init__(self, profile: SiteProfile, max_age_s: float = 120.0, future_skew_s: float = FUTURE_SKEW_S) -> None:
        """``max_age_s``: older measurements are not trusted; ``future_skew_s``: nor ones dated
        more than this after ``now`` (both in seconds)."""
        self.profile = profile
        self.max_age_s = max_age_s
        self.future_skew_s = future_skew_s
        # A site can never be credited with more renewable output than it has installed.
        self.renewable_nameplate_kw = float(sum(r.capacity_kw for r in profile.renewables))
        self.interconnection_kw = profile.grid.import_limit_kw
        self._groups: dict[str, MinerGroup] = {g.id: g for g in profile.miner_groups}
        self._specs: dict[tuple[str, str], _ModeSpec] = {}
        for group in profile.miner_groups:
            for mode in group.modes:
                quieter = [m for m in group.modes
                           if m.sound_power_dba < mode.sound_power_dba and m.power_kw <= mode.power_kw]
                down = max(quieter, key=lambda m: m.sound_power_dba).name if quieter else SLEEP
                self._specs[group.id, mode.name] = _ModeSpec(mode.power_kw, mode.efficiency_j_per_th,
                                                             mode.sound_power_dba, down)
            self._specs[group.id, SLEEP] = _ModeSpec(group.idle_power_kw, math.inf, -math.inf, SLEEP)
            if getattr(group, "pdu_power_off", False):  # outlet open at the PDU (issue 17): no draw, silent
                self._specs[group.id, POWERED_OFF] = _ModeSpec(0.0, math.inf, -math.inf, POWERED_OFF)
        # Per receptor: unit energy 10^((Lw − A)/10) for each (group, mode); sleep is silent.
        self._energy: dict[str, dict[tuple[str, str], float]] = {}
        for receptor in profile.receptors:
            table = {}
            for (group_id, mode), spec in self._specs.items():
                attenuation = receptor.attenuation_from(group_id)
                silent = mode in (SLEEP, POWERED_OFF) or math.isinf(attenuation)
                table[group_id, mode] = 0.0 if silent else acoustics.energy(spec.sound_dba - attenuation)
            self._energy[receptor.id] = table

    # ------------------------------------------------------------------ the full check

    def check(self, batch: Sequence[Setpoint], measurements: Measurements, limits: Limits,
              now: datetime) -> GuardResult:
        """Refuse, then curtail for import, then step down for noise (see module docstring)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        actions: list[GuardAction] = []
        kept = self._refuse(batch, now, actions)
        limit_kw, source = self.import_limit(limits)
        renewable_kw, renewable_note = self._renewable(measurements, now)
        net = self.net_import_kw(kept, measurements.auxiliary_kw, renewable_kw)
        if _over_limit(net, limit_kw):
            kept = self._cut_power(kept, net - limit_kw, "import_curtail",
                                   f"modelled import {net:.1f} kW (batch + idle + auxiliary − renewable "
                                   f"{renewable_kw:.1f} kW{renewable_note}) is over the {source} limit "
                                   f"{limit_kw:.1f} kW", actions)
        local = now.astimezone(self.profile.tz)
        for receptor in self.profile.receptors:
            cap = min(receptor.cap_at(local), limits.noise_caps_dba.get(receptor.id, math.inf))
            if math.isinf(cap):
                continue
            offset = measurements.noise_offset_db.get(receptor.id)
            if offset is None:
                margin, why = receptor.model_margin_db, "model margin"
            else:
                margin, why = max(offset, 0.0), "sensor offset"
            kept = self._cut_noise(kept, receptor.id, cap - margin,
                                   f"cap {cap:.1f} dBA at {local:%a %H:%M} local, {why} {margin:.1f} dB",
                                   "noise_step_down", actions)
        return GuardResult(kept, actions)

    # ------------------------------------------------------------------ fast path

    def emergency_dr_cut(self, batch: Sequence[Setpoint], limit_kw: float, measurements: Measurements,
                         now: datetime | None = None) -> GuardResult:
        """Cut the batch at once until modelled import ≤ ``limit_kw`` (e.g. a DR event just started).

        Renewable output counts only if measured, dated and fresh at ``now`` (default: the newest
        ``issued_at`` of the batch), and at most at nameplate. Setpoints naming an unknown
        group/mode (and, when ``now`` is given, expired ones) are refused."""
        actions: list[GuardAction] = []
        kept = self._refuse(batch, now, actions)
        renewable_kw, note = self._renewable(measurements, now if now is not None else _reference_time(batch))
        net = self.net_import_kw(kept, measurements.auxiliary_kw, renewable_kw)
        if _over_limit(net, limit_kw):
            kept = self._cut_power(kept, net - limit_kw, "emergency_dr_cut",
                                   f"emergency limit {limit_kw:.1f} kW; modelled import {net:.1f} kW "
                                   f"(renewable {renewable_kw:.1f} kW{note})", actions)
        return GuardResult(kept, actions)

    def import_over_limit_cut(self, measured_import_kw: float, limit_kw: float, batch: Sequence[Setpoint],
                              *, measured_at: datetime | None = None, now: datetime | None = None,
                              measurements: Measurements | None = None) -> GuardResult:
        """The meter reads over the limit: remove at least the measured excess from the batch.

        The reading is used only if finite and dated (``measured_at``) within ``max_age_s`` before
        and ``future_skew_s`` after ``now`` (default: the newest ``issued_at`` of the batch).
        Otherwise the meter is not believed and the batch is cut to ``limit_kw`` on the model
        (idle + auxiliary − renewable from ``measurements``, at their worst), like the DR cut."""
        actions: list[GuardAction] = []
        reference = now if now is not None else _reference_time(batch)
        doubt = self._doubt(measured_import_kw, measured_at, reference, "meter reading")
        if doubt is not None:
            measurements = measurements or Measurements()
            kept = self._refuse(batch, now, actions)
            renewable_kw, note = self._renewable(measurements, reference)
            net = self.net_import_kw(kept, measurements.auxiliary_kw, renewable_kw)
            if _over_limit(net, limit_kw):
                kept = self._cut_power(kept, net - limit_kw, "import_over_limit_cut",
                                       f"{doubt}, not used; modelled import {net:.1f} kW (renewable "
                                       f"{renewable_kw:.1f} kW{note}) is over the limit {limit_kw:.1f} kW", actions)
            return GuardResult(kept, actions)
        kept = self._refuse(batch, None, actions)
        excess = measured_import_kw - limit_kw
        if excess > limit_kw * _REL_EPS:
            kept = self._cut_power(kept, excess, "import_over_limit_cut",
                                   f"measured import {measured_import_kw:.1f} kW is {excess:.1f} kW over "
                                   f"the limit {limit_kw:.1f} kW", actions)
        return GuardResult(kept, actions)

    def noise_exceedance_cut(self, receptor_id: str, measured_dba: float, cap_dba: float,
                             batch: Sequence[Setpoint]) -> GuardResult:
        """A sensor reads ``measured_dba`` over ``cap_dba``: lower the modelled level at the receptor
        by the measured excess (the measured-minus-modelled offset is taken as constant)."""
        if receptor_id not in self._energy:
            raise ValueError(f"unknown receptor {receptor_id!r}")
        actions: list[GuardAction] = []
        kept = self._refuse(batch, None, actions)
        excess = measured_dba - cap_dba
        if excess > 0:
            modelled = self.noise_level_dba(kept, receptor_id)
            kept = self._cut_noise(kept, receptor_id, modelled - excess,
                                   f"sensor reads {measured_dba:.1f} dBA, {excess:.1f} dB over the cap "
                                   f"{cap_dba:.1f} dBA; modelled {modelled:.1f} dBA must fall by as much",
                                   "noise_exceedance_cut", actions)
        return GuardResult(kept, actions)

    # ------------------------------------------------------------------ figures

    def import_limit(self, limits: Limits) -> tuple[float, str]:
        """The binding import limit and its source label."""
        limit, source = self.interconnection_kw, "interconnection"
        for label, value in limits.import_limits_kw.items():
            if value < limit:
                limit, source = value, label
        return limit, source

    def unit_power_kw(self, sp: Setpoint) -> float:
        """The power a setpoint counts at (kW): the larger of its target and its mode's power."""
        return max(sp.power_target_kw, self._specs[sp.group_id, sp.mode].power_kw)

    def net_import_kw(self, batch: Sequence[Setpoint], auxiliary_kw: float = 0.0,
                      renewable_kw: float = 0.0) -> float:
        """Batch power + idle power of profile units absent from the batch + auxiliary − renewable."""
        total = auxiliary_kw - renewable_kw
        present: dict[str, int] = {}
        for sp in batch:
            total += self.unit_power_kw(sp)
            present[sp.group_id] = present.get(sp.group_id, 0) + 1
        for group in self.profile.miner_groups:
            total += max(group.units - present.get(group.id, 0), 0) * group.idle_power_kw
        return max(total, 0.0)

    def noise_level_dba(self, batch: Sequence[Setpoint], receptor_id: str) -> float:
        """Modelled level at the receptor (with background for a total cap; −inf if silent)."""
        energy = self._site_energy(batch, receptor_id) + self._background_energy(receptor_id)
        return acoustics.level_dba(energy)

    # ------------------------------------------------------------------ internals

    def _doubt(self, value: float | None, at: datetime | None, now: datetime | None, what: str) -> str | None:
        """Why a reading is not to be believed at ``now``, or None if it is usable."""
        if value is None:
            return f"{what} missing"
        if not math.isfinite(value):
            return f"{what} {value!r} not finite"
        if at is None or now is None:
            return f"{what} undated" if at is None else f"{what} with no time to compare to"
        age_s = (now - at).total_seconds()
        if age_s > self.max_age_s:
            return f"{what} {age_s:.0f} s old, older than {self.max_age_s:.0f} s"
        if -age_s > self.future_skew_s:
            return f"{what} dated {-age_s:.0f} s in the future, beyond the {self.future_skew_s:.0f} s clock skew"
        return None

    def _renewable(self, measurements: Measurements, now: datetime | None) -> tuple[float, str]:
        """Renewable output to credit at ``now``: 0 unless measured, finite and fresh; ≤ nameplate."""
        doubt = self._doubt(measurements.renewable_kw, measurements.at, now, "renewable reading")
        if doubt is not None:
            return 0.0, f", {doubt}: taken as 0"
        value = max(float(measurements.renewable_kw), 0.0)  # type: ignore[arg-type]
        if value > self.renewable_nameplate_kw:
            return self.renewable_nameplate_kw, (f", reading {value:.6g} kW capped at the "
                                                 f"{self.renewable_nameplate_kw:.0f} kW nameplate")
        return value, ""

    def _refuse(self, batch: Iterable[Setpoint], now: datetime | None,
                actions: list[GuardAction]) -> list[Setpoint]:
        """Drop setpoints naming an unknown group/mode, and expired ones when ``now`` is known."""
        kept, expired, unknown = [], [], []
        for sp in batch:
            if (sp.group_id, sp.mode) not in self._specs:
                unknown.append(sp.miner_id)
            elif now is not None and sp.expires_at <= now:
                expired.append(sp.miner_id)
            else:
                kept.append(sp)
        if expired:
            actions.append(GuardAction("refused_expired",
                                       f"{len(expired)} setpoint(s) expired at or before {now}; "
                                       "not sent (the miners fall back to sleep when their last setpoint "
                                       "expires)", tuple(expired)))
        if unknown:
            actions.append(GuardAction("refused_unknown",
                                       f"{len(unknown)} setpoint(s) name a group or mode not in the profile; "
                                       "not sent", tuple(unknown)))
        return kept

    def _background_energy(self, receptor_id: str) -> float:
        receptor = next(r for r in self.profile.receptors if r.id == receptor_id)
        return acoustics.energy(receptor.background_dba) if receptor.cap_applies_to == "total" else 0.0

    def _site_energy(self, batch: Sequence[Setpoint], receptor_id: str) -> float:
        table = self._energy[receptor_id]
        return sum(table[sp.group_id, sp.mode] for sp in batch)

    def _set_mode(self, sp: Setpoint, mode: str) -> Setpoint:
        group = self._groups[sp.group_id]
        power = self._specs[group.id, mode].power_kw
        return dataclasses.replace(sp, mode=mode, power_target_kw=power)

    def _cut_power(self, batch: list[Setpoint], excess_kw: float, kind: str, why: str,
                   actions: list[GuardAction]) -> list[Setpoint]:
        """Curtail least efficient, then loudest, units until ``excess_kw`` is removed."""
        out = list(batch)
        order = sorted(
            (i for i, sp in enumerate(out) if sp.mode not in (SLEEP, POWERED_OFF)),
            key=lambda i: (-self._specs[out[i].group_id, out[i].mode].j_per_th,
                           -self._specs[out[i].group_id, out[i].mode].sound_dba, out[i].miner_id),
        )
        remaining = excess_kw
        # What is left within rounding counts as removed, and a removal within rounding of what is left
        # fits (`cut_tolerance_kw`): the count guard subtracts count × power where this loop subtracts
        # unit by unit, and the two must decide alike (tests/test_guard_counts.py).
        tol = cut_tolerance_kw(excess_kw)
        cut: list[str] = []
        slept = stepped = 0
        for i in order:
            if remaining <= tol:
                break
            sp = out[i]
            power = self.unit_power_kw(sp)
            idle = self._groups[sp.group_id].idle_power_kw
            target = SLEEP
            if power - idle > remaining + tol:
                # The last unit: the highest-power lower mode that still removes the rest, if any.
                lower = [m for m in self._groups[sp.group_id].modes
                         if m.power_kw < power and power - m.power_kw >= remaining - tol
                         and m.sound_power_dba <= self._specs[sp.group_id, sp.mode].sound_dba]
                if lower:
                    target = max(lower, key=lambda m: m.power_kw).name
            out[i] = self._set_mode(sp, target)
            remaining -= power - self.unit_power_kw(out[i])
            cut.append(sp.miner_id)
            if target == SLEEP:
                slept += 1
            else:
                stepped += 1
        # Still over with every unit asleep: open PDU outlets of sleeping units where the profile allows it
        # (issue 17: zero draw, a cold restart later), largest standby draw first.
        powered_off = 0
        if remaining > _REL_EPS * max(excess_kw, 1.0):
            asleep = sorted((i for i, sp in enumerate(out) if sp.mode == SLEEP and (sp.group_id, POWERED_OFF) in self._specs),
                            key=lambda i: (-self._groups[out[i].group_id].idle_power_kw, out[i].miner_id))
            for i in asleep:
                if remaining <= 0:
                    break
                sp = out[i]
                out[i] = self._set_mode(sp, POWERED_OFF)
                remaining -= self._groups[sp.group_id].idle_power_kw
                cut.append(sp.miner_id)
                powered_off += 1
        removed = excess_kw - remaining
        detail = f"{slept} unit(s) to sleep" + (f", {stepped} to a lower mode" if stepped else "")
        if powered_off:
            detail += f", {powered_off} powered off at the PDU"
        actions.append(GuardAction(kind, f"{why}; curtailed least efficient (J/TH) and loudest first: "
                                         f"{detail}, {removed:.1f} kW removed", tuple(cut)))
        if remaining > _REL_EPS * max(excess_kw, 1.0):
            actions.append(GuardAction("limit_unreachable",
                                       f"{remaining:.1f} kW still over with every unit of the batch asleep "
                                       "(idle and auxiliary load alone exceed the limit)", ()))
        return out

    def _cut_noise(self, batch: list[Setpoint], receptor_id: str, target_dba: float, why: str,
                   kind: str, actions: list[GuardAction]) -> list[Setpoint]:
        """Step down the largest contributor at the receptor, one rung at a time, until under target."""
        table = self._energy[receptor_id]
        background = self._background_energy(receptor_id)
        budget = acoustics.energy(target_dba) - background
        energy = self._site_energy(batch, receptor_id)
        if energy <= max(budget, 0.0) * (1 + _REL_EPS):
            return batch
        before = self.noise_level_dba(batch, receptor_id)
        out = list(batch)
        heap = [(-table[sp.group_id, sp.mode], i) for i, sp in enumerate(out) if table[sp.group_id, sp.mode] > 0]
        heapq.heapify(heap)
        touched: dict[str, None] = {}
        while heap and energy > max(budget, 0.0) * (1 + _REL_EPS):
            negative, i = heapq.heappop(heap)
            sp = out[i]
            out[i] = self._set_mode(sp, self._specs[sp.group_id, sp.mode].step_down)
            new = table[out[i].group_id, out[i].mode]
            energy -= -negative - new
            touched[sp.miner_id] = None
            if new > 0:
                heapq.heappush(heap, (-new, i))
        if not heap:
            energy = 0.0
        after = self.noise_level_dba(out, receptor_id)
        actions.append(GuardAction(kind, f"receptor {receptor_id}: modelled {before:.1f} dBA over the target "
                                         f"{target_dba:.1f} dBA ({why}); stepped down {len(touched)} unit(s) "
                                         f"contributing most, now {after:.1f} dBA", tuple(touched)))
        if budget <= 0:
            actions.append(GuardAction("limit_unreachable",
                                       f"receptor {receptor_id}: background alone is at or over the target "
                                       f"{target_dba:.1f} dBA; every contributing unit is asleep", ()))
        return out


def _reference_time(batch: Sequence[Setpoint]) -> datetime | None:
    """The time a fast-path batch was issued (its newest ``issued_at``); None for an empty batch."""
    return max((sp.issued_at for sp in batch), default=None)
