"""A simulated site for `hashflex run --simulate`: recorded real prices on a simulated clock, an
in-process fleet that follows setpoints, simulated noise sensors, and the real control loop.

The clock jumps interval by interval (no waiting), and the forecast at each tick is the daemon's
own (`ReplayForecaster`, a :class:`hashflex.forecast.RecordedForecaster`: the same rules and
fallbacks as ``hashflex run`` and the backtest) over what was published before it: day-ahead
prices from 13:00 Central the day before, real-time prices once their interval has ended.
Renewable output is a clear-sky solar shape scaled to the profile's capacity — SYNTHETIC,
labelled so in the output.

The run never plans an interval whose price is unknown: :func:`simulation_window` picks the window
(default: the price file's first full local day, one horizon long, cut at the file's end) and
refuses, with :class:`SimulationWindowError` naming the window and the file's coverage, a window
that the file's real-time prices do not cover interval by interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from operator import attrgetter
from typing import Protocol
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from hashflex.control.fleet import NO_TIME_US, SLEEP, time_us
from hashflex.control.loop import ControlLoop, LoopConfig, TickReport
from hashflex.audit import noise_interval_summary
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.drivers.base import Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.batch import BatchResult, GroupBatch, SetpointBatch
from hashflex.feeds.ercot import publication_times
from hashflex.forecast import PriceForecaster, RecordedForecaster
from hashflex.frames import time_weighted_mean
from hashflex.messages import DREventMessage, RenewableMessage
from hashflex.profile import SiteProfile
from hashflex.sim.noise import NoiseSensorSim
from hashflex.store import Store
from hashflex.optimize.schedule import grid_import_kw

log = logging.getLogger(__name__)


class SimulationWindowError(ValueError):
    """The requested simulation window is not covered by the price file (or is malformed)."""


@dataclass(frozen=True)
class SimulationWindow:
    """``intervals`` intervals of the profile's length from ``start`` (UTC); ``notes`` say why it
    was chosen (default start, cut at the file's end)."""

    start: pd.Timestamp
    intervals: int
    step: pd.Timedelta
    notes: tuple[str, ...] = ()

    @property
    def end(self) -> pd.Timestamp:
        """The window's end (exclusive, UTC)."""
        return self.start + self.intervals * self.step

    def describe(self, tz: object) -> str:
        """``window 2024-07-02 00:00 CDT .. 2024-07-03 00:00 CDT (96 intervals)`` in local time."""
        plural = "" if self.intervals == 1 else "s"
        return f"window {_local(self.start, tz)} .. {_local(self.end, tz)} ({self.intervals} interval{plural})"


def _local(stamp: pd.Timestamp, tz: object) -> str:
    return f"{pd.Timestamp(stamp).tz_convert(tz):%Y-%m-%d %H:%M %Z}"


def _next_local_midnight(stamp: pd.Timestamp, tz: object) -> pd.Timestamp:
    """``stamp`` if it is a local midnight, else the next one (DST-safe: built from the date)."""
    local = stamp.tz_convert(tz)
    if local == local.normalize():
        return local.tz_convert("UTC")
    return pd.Timestamp(local.date() + timedelta(days=1)).tz_localize(tz).tz_convert("UTC")


def simulation_window(profile: SiteProfile, prices: pd.DataFrame, *, start: pd.Timestamp | None = None,
                      end: pd.Timestamp | None = None, intervals: int | None = None,
                      source: str = "the price file") -> SimulationWindow:
    """The window to simulate, every interval of it covered by a real-time price in ``prices``.

    ``start`` default: the first local midnight at or after the first RT price (the file's first
    full local day). Length: up to ``end`` (exclusive), else ``intervals``, else one planning
    horizon cut at the end of the file's coverage (with a note). Raises
    :class:`SimulationWindowError` naming the window, ``source`` and its coverage when any interval
    has no price (before the file, after it, or in a gap), or when the window is malformed.
    """
    tz = profile.tz
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    rt = prices[prices["market"] == "RT"] if "market" in prices.columns else prices
    if rt.empty:
        raise SimulationWindowError(f"{source}: no real-time prices for {profile.site.settlement_point}: "
                                    f"nothing to simulate")
    first, last = rt["interval_start"].min(), rt["interval_end"].max()
    coverage = f"{source} covers {_local(first, tz)} .. {_local(last, tz)} ({profile.site.settlement_point} RT)"
    if end is not None and intervals is not None:
        raise SimulationWindowError("give the window's end (--to) or its length (--intervals), not both")
    if intervals is not None and intervals < 1:
        raise SimulationWindowError(f"intervals must be >= 1, got {intervals}")
    notes: list[str] = []
    if start is None:
        start = _next_local_midnight(first, tz)
        da = prices[prices["market"] == "DA"] if "market" in prices.columns else prices.iloc[0:0]
        if da.empty or not ((da["interval_start"] <= start) & (da["interval_end"] > start)).any():
            # No day-ahead price for the first day: the forecast (the daemon's) would know nothing
            # and curtail. Start a day later, with a day of published real-time prices behind it.
            second = _next_local_midnight(start + pd.Timedelta(hours=1), tz)
            if second < last:
                start = second
                notes.append(f"start: the second full local day of {source} (it has no day-ahead prices for the "
                             f"first: the forecast gets a day of published real-time prices, as the daemon would)")
            else:
                notes.append(f"start: the first full local day of {source}; it has no day-ahead prices and no "
                             f"second day, so the forecast knows no price at first and the plan curtails")
        else:
            notes.append(f"start: the first full local day of {source}")
    start = pd.Timestamp(start).tz_convert("UTC")
    if end is not None:
        end = pd.Timestamp(end).tz_convert("UTC")
        if end <= start:
            raise SimulationWindowError(f"window {_local(start, tz)} .. {_local(end, tz)}: the end must be after "
                                        f"the start")
        span = (end - start) / step
        if span != int(span):
            raise SimulationWindowError(f"window {_local(start, tz)} .. {_local(end, tz)} is not a whole number of "
                                        f"{profile.site.interval_minutes}-minute intervals")
        intervals = int(span)
    elif intervals is None:
        horizon = int(profile.site.horizon_hours * 60 / profile.site.interval_minutes)
        intervals = max(0, min(horizon, int((last - start) / step)))
        if 0 < intervals < horizon:
            notes.append(f"cut to {intervals} intervals at the end of {source}'s prices")
        intervals = max(intervals, 1)  # an uncovered start is reported below, with the window
    window = SimulationWindow(start, intervals, step, tuple(notes))
    from hashflex.plan import prices_on_grid  # the same "price in force" rule as `hashflex plan`

    index = pd.date_range(start, periods=intervals, freq=step)
    missing = np.isnan(prices_on_grid(rt.reset_index(drop=True), index, step))
    if missing.any():
        where = index[int(np.flatnonzero(missing)[0])]
        raise SimulationWindowError(
            f"{window.describe(tz)} is not covered by the prices: {coverage}, and no price covers the interval "
            f"at {_local(where, tz)} ({int(missing.sum())} of {intervals} intervals without a price); "
            f"choose --from/--to inside that coverage")
    return window


published_at = publication_times  # ERCOT's publication times (feeds.ercot); the old name, kept

_MINER_ID, _MODE, _EXPIRES = (attrgetter(name) for name in ("miner_id", "mode", "expires_at"))


class ReplayForecaster(RecordedForecaster):
    """The daemon's forecaster (:class:`hashflex.forecast.RecordedForecaster`: the same
    ``build_forecast`` rules, fallbacks and no-look-ahead as ``hashflex run`` and the backtest) over
    recorded prices, for a simulated site. The site's solar output is the SYNTHETIC clear-sky shape
    (:func:`clear_sky_solar_kw`), "measured" at every interval and visible to the forecast from
    then on, as a real site's meter readings are."""

    def __init__(self, profile: SiteProfile, prices: pd.DataFrame, solar_kw: float = 0.0,
                 price_forecaster: PriceForecaster | None = None) -> None:  # the learned price model (issue 14), None: the rules
        self.solar_kw = solar_kw
        observations = None
        solar = [r for r in profile.renewables if r.kind == "solar"]
        if solar_kw > 0 and solar and not prices.empty:
            step = pd.Timedelta(minutes=profile.site.interval_minutes)
            first = pd.Timestamp(prices["interval_start"].min()).tz_convert("UTC").floor(step)
            last = pd.Timestamp(prices["interval_end"].max()).tz_convert("UTC")
            times = pd.date_range(first - pd.Timedelta(days=4), last, freq=step, inclusive="left")
            total = sum(r.capacity_kw for r in solar)
            observations = pd.concat([pd.DataFrame({
                "source_id": r.id, "timestamp": times, "power_kw": clear_sky_solar_kw(times, profile, solar_kw)
                * r.capacity_kw / total, "published_at": times}) for r in solar], ignore_index=True)
            observations = observations.sort_values("published_at", kind="stable").reset_index(drop=True)
        super().__init__(profile, prices, observations, price_forecaster=price_forecaster)

    def update(self, prices: pd.DataFrame) -> None:
        """Take a new price frame (rebuild the recorded forecaster on it)."""
        self.__init__(self.profile, prices, self.solar_kw, self.price_forecaster)  # type: ignore[misc]


def clear_sky_solar_kw(index: pd.DatetimeIndex, profile: SiteProfile, capacity_kw: float) -> np.ndarray:
    """SYNTHETIC: a sine from 07:00 to 19:00 local time, peaking at capacity × 0.85."""
    if capacity_kw <= 0:
        return np.zeros(len(index))
    local = index.tz_convert(profile.tz)
    hour = local.hour + local.minute / 60.0
    shape = np.clip(np.sin((hour - 7.0) / 12.0 * np.pi), 0.0, None)
    return capacity_kw * 0.85 * shape


class SimulatedFleet:
    """Miners that follow setpoints at once (in process); a setpoint past its expiry → sleep.

    Held as arrays per group (mode index, expiry in µs; issue 18: no per-miner Python per tick):
    `expire`, `running`, `load_kw` and `hashrate_th_s` are a few numpy operations per group.
    Same results as the per-miner `SimulatedFleetPerMiner` (tests/test_sim_fleet_arrays.py).
    Miners outside the profile are kept aside as the per-miner fleet kept them.

    Parameters
    ----------
    profile : the site profile (its groups and ``miner_ids()`` naming rule)
    """

    def __init__(self, profile: SiteProfile) -> None:
        self.profile = profile
        by_group: dict[str, list[str]] = {g.id: [] for g in profile.miner_groups}
        for miner_id, group_id in profile.miner_ids().items():
            by_group[group_id].append(miner_id)
        self._index: dict[str, tuple[str, int]] = {}
        self._mode: dict[str, np.ndarray] = {}
        self._expires_us: dict[str, np.ndarray] = {}
        self._names: dict[str, dict[str, int]] = {}
        self._power = {}
        self._hashrate = {}
        # Each group's arrays are views into one fleet-wide array, so a batch is applied with one
        # indexed assignment (issue 18); `_position` is a miner's place in it.
        total = sum(len(by_group[g.id]) for g in profile.miner_groups)
        self._all_mode = np.full(total, -1, dtype=np.int16)
        self._all_expires_us = np.full(total, NO_TIME_US, dtype=np.int64)
        self._position: dict[str, int] = {}
        self._group_of = np.zeros(total, dtype=np.int64)  # group index per position
        offset = 0
        for g, group in enumerate(profile.miner_groups):
            ids = by_group[group.id]
            self._index.update({m: (group.id, i) for i, m in enumerate(ids)})
            self._position.update({m: offset + i for i, m in enumerate(ids)})
            self._group_of[offset:offset + len(ids)] = g
            self._mode[group.id] = self._all_mode[offset:offset + len(ids)]
            self._expires_us[group.id] = self._all_expires_us[offset:offset + len(ids)]
            offset += len(ids)
            self._names[group.id] = {m.name: k for k, m in enumerate(group.modes)}
            self._power[group.id] = np.array([m.power_kw for m in group.modes], dtype=float)
            self._hashrate[group.id] = np.array([m.hashrate_th_s for m in group.modes], dtype=float)
        self._others = SimulatedFleetPerMiner(profile)  # miners the profile does not name
        self._ids = {g: np.array(ids, dtype=object) for g, ids in by_group.items()}  # the profile's order
        self._ids_seen: dict[str, np.ndarray] = {}  # per group, the batch id column last found equal
        self._group_index = {group.id: g for g, group in enumerate(profile.miner_groups)}
        self._pdu_groups = {g.id for g in profile.miner_groups if getattr(g, "pdu_power_off", False)}
        self._applied: dict[str, SetpointResult] = {}  # one immutable APPLIED result per miner, reused (issue 18)
        # The mode code of (group, mode name), as `_apply_each` decides it: -1 asleep, -2 off at the
        # PDU, the mode's index, or -3 where the group lacks the mode (then `_apply_each` holds it aside).
        names = sorted({SLEEP, POWERED_OFF} | {m.name for g in profile.miner_groups for m in g.modes})
        self._name_id = {name: k for k, name in enumerate(names)}
        self._code = np.full((len(profile.miner_groups), len(names)), -3, dtype=np.int16)
        for g, group in enumerate(profile.miner_groups):
            for name, k in self._name_id.items():
                if name == SLEEP:
                    self._code[g, k] = -1
                elif name == POWERED_OFF and group.id in self._pdu_groups:
                    self._code[g, k] = -2
                elif name in self._names[group.id]:
                    self._code[g, k] = self._names[group.id][name]

    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """Apply every setpoint at once; one APPLIED result per setpoint, in order.

        A batch of profile miners in modes their groups have, each miner once (the loop's batches),
        is applied with one indexed assignment; any other batch setpoint by setpoint
        (``_apply_each``), with the same result.
        """
        n = len(batch)
        try:
            positions = np.fromiter(map(self._position.__getitem__, map(_MINER_ID, batch)), dtype=np.int64, count=n)
            names = np.fromiter(map(self._name_id.__getitem__, map(_MODE, batch)), dtype=np.int64, count=n)
        except KeyError:  # a miner the profile does not name, or a mode no group has
            return self._apply_each(batch)
        codes = self._code[self._group_of[positions], names]
        if n and ((codes == -3).any() or np.bincount(positions).max() > 1):  # a lacking mode; a miner twice
            return self._apply_each(batch)
        expiries = list(map(_EXPIRES, batch))
        if n and expiries.count(expiries[0]) == n:
            expires_us: int | np.ndarray = time_us(expiries[0])
        else:
            once: dict[datetime, int] = {}
            expires_us = np.fromiter((once[t] if t in once else once.setdefault(t, time_us(t)) for t in expiries),
                                     dtype=np.int64, count=n)
        self._all_mode[positions] = codes
        self._all_expires_us[positions] = expires_us
        return self._results(batch)

    def apply_batch(self, batch: SetpointBatch) -> BatchResult:
        """Apply a columnar batch (issue 18) as array writes: a group whose miner ids are the
        profile's, in its order, takes the batch's mode column mapped to this fleet's codes and the
        batch's expiry, with no object per miner; any other group goes setpoint by setpoint, as
        :meth:`apply` takes it. Every setpoint is applied (the same result as :meth:`apply`).

        Parameters
        ----------
        batch : SetpointBatch
            The batch (``drivers.batch``).

        Returns
        -------
        BatchResult
            Every setpoint ``applied in the simulated fleet``.
        """
        if type(self).apply is not SimulatedFleet.apply:
            # A subclass that answers per setpoint (e.g. miners that never answer) decides: it gets them all.
            return BatchResult.from_results(batch, self.apply(batch.setpoints()))
        expires_us = time_us(batch.expires_at)
        rest: list[Setpoint] = []
        for group in batch.groups:
            codes = self._batch_codes(group)
            if codes is None:
                rest += batch.group_setpoints(group)
                continue
            self._mode[group.group_id][:] = codes[group.mode.astype(np.int64) + 2]
            self._expires_us[group.group_id][:] = expires_us
        if rest:
            self._apply_each(rest)
        return BatchResult.all_applied(batch, "applied in the simulated fleet")

    def _batch_codes(self, group: GroupBatch) -> np.ndarray | None:
        """This fleet's mode code by the batch's mode index + 2, when ``group`` covers the profile
        group's miners in this fleet's order and names only modes the group has; else None."""
        mine = self._mode.get(group.group_id)
        if mine is None or len(mine) != len(group):
            return None
        seen = self._ids_seen.get(group.group_id)
        if seen is not group.miner_id:  # the loop passes the fleet's own id column: compared once
            expected = self._ids[group.group_id]
            if not np.array_equal(group.miner_id, expected):
                return None
            self._ids_seen[group.group_id] = group.miner_id
        g = self._group_index[group.group_id]
        codes = np.array([self._code[g, self._name_id[name]] if name in self._name_id else -3 for name in group.names],
                         dtype=np.int16)
        used = np.unique(group.mode.astype(np.int64) + 2)
        if (codes[used] == -3).any():  # a mode the group lacks (or off outside a PDU group): per setpoint
            return None
        return codes

    def _results(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """One APPLIED result per setpoint (each miner's one immutable result, reused)."""
        applied = self._applied
        try:
            return [applied[sp.miner_id] for sp in batch]
        except KeyError:
            for sp in batch:
                if sp.miner_id not in applied:
                    applied[sp.miner_id] = SetpointResult(sp.miner_id, SetpointStatus.APPLIED,
                                                          "applied in the simulated fleet")
            return [applied[sp.miner_id] for sp in batch]

    def _apply_each(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """:meth:`apply` setpoint by setpoint, in order (any batch: unknown miners and modes, repeats)."""
        others = []
        index_get, names_of, pdu_groups = self._index.get, self._names, self._pdu_groups
        modes, expires = self._mode, self._expires_us
        expiry_us: dict[datetime, int] = {}  # a batch shares a few expiry times: convert each once (issue 18)
        for sp in batch:
            at = index_get(sp.miner_id)
            if at is None:
                others.append(sp)
                continue
            group_id, i = at
            mode = sp.mode
            if mode == SLEEP:
                code = -1
            elif mode == POWERED_OFF and group_id in pdu_groups:
                code = -2  # outlet open at the PDU (issue 17): no draw; a later setpoint (sleep or a mode) closes it
            else:
                code = names_of[group_id].get(mode)
                if code is None:  # a mode the group lacks: held aside, as the per-miner fleet held it
                    modes[group_id][i] = -1
                    others.append(sp)
                    continue
            modes[group_id][i] = code
            when = sp.expires_at
            us = expiry_us.get(when)
            if us is None:
                us = expiry_us[when] = time_us(when)
            expires[group_id][i] = us
        if others:
            self._others.apply(others)
        return self._results(batch)

    def apply_modes(self, modes: dict[str, np.ndarray], expires_at: datetime) -> None:
        """The array fast path (no setpoint objects): every miner of the groups in ``modes`` takes
        its mode index (-1 asleep; the profile's ``miner_ids()`` order, which is id order) and
        the common expiry ``expires_at``. Raises ValueError for an array of the wrong length."""
        expires_us = time_us(expires_at)
        for group_id, new in modes.items():
            if len(new) != len(self._mode[group_id]):
                raise ValueError(f"group {group_id}: {len(new)} modes for {len(self._mode[group_id])} miners")
            self._mode[group_id][:] = new
            self._expires_us[group_id][:] = expires_us

    def close(self) -> None:
        """Nothing to release (in process)."""
        return None

    def expire(self, now: datetime) -> int:
        """Put every running miner whose setpoint expired at or before ``now`` to sleep; how many."""
        now_us = time_us(now)
        total = 0
        for group_id, mode in self._mode.items():
            expired = (mode >= 0) & (self._expires_us[group_id] <= now_us)
            mode[expired] = -1
            total += int(expired.sum())
        return total + self._others.expire(now)

    def running(self) -> dict[tuple[str, str], int]:
        """Running units per (group id, mode name)."""
        counts: dict[tuple[str, str], int] = {}
        for group_id, mode in self._mode.items():
            tally = np.bincount(mode[mode >= 0].astype(np.int64), minlength=len(self._names[group_id]))
            for name, k in self._names[group_id].items():
                if tally[k]:
                    counts[group_id, name] = int(tally[k])
        for key, n in self._others.running().items():
            counts[key] = counts.get(key, 0) + n
        return counts

    def hashrate_th_s(self) -> float:
        """Total hashrate of the running miners (TH/s)."""
        total = sum(float(self._hashrate[g][mode[mode >= 0]].sum()) for g, mode in self._mode.items())
        return total + self._others.hashrate_th_s()

    def load_kw(self) -> float:
        """Site miner load (kW): running units at mode power, every other unit of a group at idle."""
        total = 0.0
        others = self._others.running()
        for group in self.profile.miner_groups:
            mode = self._mode[group.id]
            on = mode[mode >= 0]
            extra = [(self._names[group.id][m], n) for (g, m), n in others.items()
                     if g == group.id and m in self._names[group.id]]
            total += float(self._power[group.id][on].sum()) + sum(n * self._power[group.id][k] for k, n in extra)
            off = int((mode == -2).sum())  # powered off at the PDU: no standby draw
            total += (group.units - on.size - off - sum(n for _, n in extra)) * group.idle_power_kw
        return total

    def powered_off(self) -> dict[str, int]:
        """Units powered off at the PDU per group id (issue 17)."""
        return {g: int((mode == -2).sum()) for g, mode in self._mode.items() if (mode == -2).any()}


@dataclass
class SimulatedFleetPerMiner:
    """The per-miner simulated fleet (one dict entry per miner): the reference `SimulatedFleet`
    is tested against and the baseline of optimization/benchmarks/fleet_tick.py."""

    profile: SiteProfile
    modes: dict[str, str] = field(default_factory=dict)
    expires: dict[str, datetime] = field(default_factory=dict)
    group_of: dict[str, str] = field(default_factory=dict)

    def apply(self, batch: list[Setpoint]) -> list[SetpointResult]:
        """Apply every setpoint at once; one APPLIED result per setpoint, in order."""
        for sp in batch:
            self.modes[sp.miner_id] = sp.mode
            self.expires[sp.miner_id] = sp.expires_at
            self.group_of.setdefault(sp.miner_id, sp.miner_id.rsplit("-", 1)[0])
        return [SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "applied in the simulated fleet") for sp in batch]

    def close(self) -> None:
        """Nothing to release (in process)."""
        return None

    def expire(self, now: datetime) -> int:
        """Put every running miner whose setpoint expired at or before ``now`` to sleep; how many."""
        expired = [m for m, at in self.expires.items() if at <= now and self.modes.get(m, SLEEP) != SLEEP]
        for miner in expired:
            self.modes[miner] = SLEEP
        return len(expired)

    def running(self) -> dict[tuple[str, str], int]:
        """Running units per (group id, mode name)."""
        counts: dict[tuple[str, str], int] = {}
        for miner, mode in self.modes.items():
            if mode != SLEEP:
                key = (self.group_of[miner], mode)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def hashrate_th_s(self) -> float:
        """Total hashrate of the running miners (TH/s)."""
        return sum(n * self.profile.group(g).mode(m).hashrate_th_s for (g, m), n in self.running().items())

    def load_kw(self) -> float:
        """Site miner load (kW): running units at mode power, every other unit of a group at idle."""
        total = 0.0
        running = self.running()
        for group in self.profile.miner_groups:
            on = 0
            for mode in group.modes:
                n = running.get((group.id, mode.name), 0)
                total += n * mode.power_kw
                on += n
            total += (group.units - on) * group.idle_power_kw
        return total


class SimulationObserver(Protocol):
    """Watches a simulation as it runs (the live site of `run --simulate`: dashboard and pacing).
    Every call is on the simulation's thread; ``now`` is simulated time (UTC)."""

    def started(self, loop: ControlLoop, now: datetime) -> None:
        """The simulation starts at ``now`` with ``loop``."""

    def message(self, message: object, now: datetime) -> None:
        """``message`` was delivered to the loop at ``now``."""

    def interval_done(self, row: dict, report: TickReport, now: datetime) -> None:
        """Interval ``now`` is done: its row of the result frame and the loop's tick report."""


@dataclass
class SimulationResult:
    """A simulation's outcome: the interval frame, the loop's tick reports, and the loop itself."""
    intervals: pd.DataFrame  # one row per interval: price, load, import, limit, noise measured/cap, reason
    reports: list[TickReport]
    loop: ControlLoop


def run_simulation(profile: SiteProfile, prices: pd.DataFrame, start: pd.Timestamp, intervals: int, *,
                   dr_events: Iterable[DREventMessage] = (), noise_bias_db: dict[str, float] | None = None,
                   seed: int = 0, time_limit_s: float = 20.0, store_path: str | None = None,
                   solver: SolveRunner | None = None,
                   observer: SimulationObserver | None = None,
                   price_forecaster: PriceForecaster | None = None) -> SimulationResult:
    """Drive the real control loop over ``intervals`` intervals of recorded prices. With
    ``store_path`` the run keeps a store and audit trail there, as a live site does, so
    ``hashflex report`` and ``hashflex audit verify`` work on it. ``solver``: the daemon's
    deadline-keeping runner (the CLI passes one); default an in-process solve without deadline.
    Choose ``start``/``intervals`` with :func:`simulation_window` so every interval has a price.
    ``observer`` (:class:`SimulationObserver`) sees the loop, every message and every interval
    (``hashflex.sim.live.LiveSite`` serves the dashboard from it and paces the run). ``price_forecaster``:
    the forecast's price hook (``run --simulate`` passes the daemon's learned price model,
    :class:`hashflex.price_model.OnlinePriceModel`); None: the rules alone."""
    solar_kw = sum(r.capacity_kw for r in profile.renewables if r.kind == "solar")
    forecaster = ReplayForecaster(profile, prices, solar_kw=solar_kw, price_forecaster=price_forecaster)
    fleet = SimulatedFleet(profile)
    store = Store(store_path) if store_path else None
    recorder = AuditRecorder(store) if store is not None else None
    loop = ControlLoop(profile, forecaster=forecaster, driver=fleet, store=store, recorder=recorder,
                       solver=solver or SolveRunner(time_limit_s=time_limit_s, inline=True), config=LoopConfig(run_mode="simulate"))
    sensors = NoiseSensorSim(profile, bias_db=noise_bias_db or {}, seed=seed)
    step = timedelta(minutes=profile.site.interval_minutes)
    events = sorted(dr_events, key=lambda e: e.start)
    rt_rows = prices[prices["market"] == "RT"].drop_duplicates("interval_start", keep="last")
    # Each interval settles at the time-weighted mean of the RT prices inside it (5-minute SCED
    # prices average into a 15-minute interval, as ERCOT settles; hashflex.frames).
    grid = pd.date_range(pd.Timestamp(start).tz_convert("UTC"), periods=intervals, freq=step)
    settled = time_weighted_mean(rt_rows["interval_start"], rt_rows["interval_end"], rt_rows["price_usd_mwh"],
                                 grid, step) if len(rt_rows) else np.full(intervals, np.nan)
    rt = pd.Series(settled, index=grid)
    rows, reports = [], []
    now = pd.Timestamp(start).tz_convert("UTC").to_pydatetime()
    notify = observer.message if observer is not None else (lambda message, at: None)
    if observer is not None:
        observer.started(loop, now)
    for _ in range(intervals):
        due = [e for e in events if e.start <= now + step]  # DR notices arrive before their start
        for event in due:
            loop.on_message(event, min(now, event.start))
            notify(event, min(now, event.start))
            events.remove(event)
        renewable = float(clear_sky_solar_kw(pd.DatetimeIndex([now]), profile, solar_kw)[0])
        solar_message = RenewableMessage(source_id="solar_pv", power_kw=renewable, timestamp=now)
        loop.on_message(solar_message, now)
        notify(solar_message, now)
        report = loop.tick(now)
        reports.append(report)
        fleet.expire(now)
        load = fleet.load_kw()
        readings = sensors.measure(fleet.running(), now + step / 2)
        for reading in readings:
            loop.on_message(reading, now + step / 2)
            notify(reading, now + step / 2)
        load_after = fleet.load_kw()  # the noise fast path may have cut within the interval
        limit, source = loop.dr_book.limit_at(now)
        row = {
            "interval_start": now, "price_usd_mwh": float(rt.get(pd.Timestamp(now), np.nan)),
            "load_kw": load, "load_after_fast_path_kw": load_after,
            "grid_import_kw": grid_import_kw(load_after, renewable), "renewable_kw": renewable,
            "import_limit_kw": min(profile.grid.import_limit_kw, limit), "limit_source": source or "import limit",
            "schedule_status": report.schedule.status.value if report.schedule else "",
            "reason": report.schedule.frame["reason"].iloc[0] if report.schedule else "",
        }
        for reading in readings:
            receptor = next(r for r in profile.receptors if r.id == reading.receptor_id)
            row[f"noise_measured_dba_{receptor.id}"] = reading.laeq_dba
            row[f"noise_cap_dba_{receptor.id}"] = receptor.cap_at(
                pd.Timestamp(reading.timestamp).tz_convert(profile.tz).to_pydatetime())
        rows.append(row)
        # Every interval is measured (the loop's carbon tally needs it), and audited when recording.
        interval_s = step.total_seconds()
        loop.record_measurement(
            now, interval_s / 3600.0, load_kw=load_after, renewable_kw=renewable,
            hashrate_th_s=fleet.hashrate_th_s(),
            noise={r.receptor_id: noise_interval_summary([(r.laeq_dba, interval_s)],
                                                         row[f"noise_cap_dba_{r.receptor_id}"])
                   for r in readings},
            price_usd_mwh=row["price_usd_mwh"], intensity_source="profile default factor")
        if observer is not None:
            observer.interval_done(row, report, now)
        now = now + step
    frame = pd.DataFrame(rows).set_index("interval_start")
    if recorder is not None:
        recorder.flush()
        recorder.close()
        store.close()
    return SimulationResult(frame, reports, loop)
