"""Run policies over recorded history and account for each with one function.

``build_actuals`` fixes what really happened over the backtest window: real-time prices (what the
site is settled at), on-site renewable output (a recorded file, or the SYNTHETIC clear-sky shape
the simulator uses, labelled so), and DR import limits. ``simulate_policy`` drives the real
``ControlLoop`` interval by interval on a simulated clock, a simulated fleet
(``hashflex.sim.site.SimulatedFleet``) and seeded noise sensors (``hashflex.sim.noise``), and
records the units that ran. For mpc the forecast is the daemon's own (``forecast.build_forecast``,
see ``SnapshotForecaster``) over what was published by each tick: RT prices at their interval's
end, DA at 13:00 CT the day before (or the file's ``published_at``), on-site output as measured.
DR events reach the loop as messages before their start, as they would over MQTT. ``run_oracle`` solves the actual series with perfect
foresight. ``account`` then turns any policy's per-interval unit counts into money, energy,
emissions and noise with the *actual* prices, through the optimizer's own
``schedule_from_counts``: the same formulas for every policy, so none is flattered.

Timing convention: the counts of an interval are those dispatched at its tick (the interval
start). A noise sensor reads at mid-interval; if the guard's fast path cuts on that reading, the
cut holds from then until the next tick, but the interval is accounted (and counted as exceeding)
with the counts at its start — conservative on noise, slightly generous on profit. The per-interval
CSV marks such intervals (``fast_path_cut``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from hashflex.backtest.policies import (
    AlwaysOnPlanner,
    ReplanningPlanner,
    SiteMemory,
    ThresholdPlanner,
    oracle_counts,
)
from hashflex.control.dr import DRBook
from hashflex.audit import noise_interval_summary
from hashflex.control.records import AuditRecorder
from hashflex.control.loop import ControlLoop, HorizonForecast, LoopConfig
from hashflex.control.solver import SolveRunner
from hashflex.feeds.ercot import read_price_file
from hashflex.frames import time_weighted_mean
from hashflex.forecast import ForecastConfig, RecordedForecaster
from hashflex.messages import DREventMessage, RenewableMessage
from hashflex.optimize.problem import GroupState, Problem, problem_from_profile
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, schedule_from_counts
from hashflex.profile import SiteProfile
from hashflex.sim.noise import NoiseSensorSim
from hashflex.sim.site import SimulatedFleet, clear_sky_solar_kw, published_at

__all__ = ["Actuals", "BacktestResult", "PolicyRun", "Progress", "account", "actual_problem", "build_actuals",
           "load_prices", "run_backtest", "run_oracle", "simulate_policy"]

Counts = dict[tuple[int, int], np.ndarray]


# ---------------------------------------------------------------------------------------- inputs

def load_prices(profile: SiteProfile, paths: Sequence[str | Path], day_ahead: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Every price file (any format ``read_price_file`` parses; RT and/or DA) for the profile's
    settlement point, concatenated. An ``RTM-*.csv`` without a day-ahead file given picks up the
    ``DAM-*.csv`` beside it, as ``hashflex run --simulate`` does."""
    frames = []
    paths = [Path(p) for p in paths]
    day_ahead = [Path(p) for p in day_ahead]
    if not day_ahead:
        for path in paths:
            sibling = path.with_name(path.name.replace("RTM-", "DAM-"))
            if path.name.startswith("RTM-") and sibling.exists():
                day_ahead.append(sibling)
    notes: list[str] = []
    for path, market in [*((p, None) for p in paths), *((p, "DA") for p in day_ahead)]:
        # A file passed as day-ahead is day-ahead: a simple CSV without a market column is labelled
        # DA, and an ERCOT real-time report given there is refused (it used to be read as RT and
        # then overwrote the real-time prices in the de-duplication below).
        frame = read_price_file(path, settlement_point=profile.site.settlement_point,
                                settlement_point_type=profile.site.settlement_point_type, market=market)
        notes += frame.attrs.get("notes", [])
        report = frame.attrs.get("duplicates")
        if report:
            notes.append(f"{path}: {report.identical_rows_dropped} identical and {report.conflicting_rows_dropped} "
                         f"conflicting duplicate row(s) dropped (the last row of each kept)")
        frames.append(frame)
    prices = pd.concat(frames, ignore_index=True)
    if prices.empty:
        raise ValueError(f"no prices for {profile.site.settlement_point} in {', '.join(map(str, paths))}")
    prices = prices.drop_duplicates(["market", "interval_start"], keep="last").reset_index(drop=True)
    prices.attrs["notes"] = notes
    return prices


@dataclass(frozen=True)
class Actuals:
    """What really happened over the window (one entry per base interval)."""

    index: pd.DatetimeIndex  # UTC interval starts
    price_usd_mwh: np.ndarray  # settled real-time price
    renewable_kw: np.ndarray
    renewable_synthetic: bool
    import_limit_kw: np.ndarray  # DR limits (inf where none)
    import_limit_source: tuple[str, ...]
    prices: pd.DataFrame  # the whole price history (RT and DA) the forecaster replays
    renewables: pd.Series | None = None  # the recorded on-site output as given (None: synthetic)
    dr_events: tuple[DREventMessage, ...] = ()
    notes: tuple[str, ...] = ()
    # Settlement hashprice per interval ($/PH/day, that UTC day's value; None: the profile's constant)
    # and the daily series it came from (the forecast sees day D's row only after D ends).
    hashprice_usd_per_ph_day: np.ndarray | None = None
    hashprice: pd.DataFrame | None = None

    @property
    def days(self) -> float:
        return len(self.index) * float(self.step / pd.Timedelta(days=1))

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.index.freq) if self.index.freq else self.index[1] - self.index[0]


def _local_midnight(day: pd.Timestamp | str, profile: SiteProfile) -> pd.Timestamp:
    stamp = pd.Timestamp(day)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(profile.site.timezone)
    return stamp.tz_convert("UTC")


def build_actuals(profile: SiteProfile, prices: pd.DataFrame, start: pd.Timestamp | str | None = None,
                  end: pd.Timestamp | str | None = None, *, renewables: pd.Series | None = None,
                  dr_events: Iterable[DREventMessage] = (), hashprice: pd.DataFrame | None = None) -> Actuals:
    """The window [start, end) on the profile's interval grid (a naive date is local midnight; the
    default runs from the second full local day of real-time prices, so the forecast has a day of
    published history, to the end of the last full day).

    ``hashprice``: a daily series (``feeds.hashprice.bundled_hashprice`` shape); each interval is
    then settled at its UTC day's hashprice and the mpc forecast sees each day's value once it is
    published. A day the series lacks raises ``ValueError`` naming it. Without it every policy is
    settled at the profile's constant ``hashprice_usd_per_ph_day`` (as before)."""
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    rt = prices[prices["market"] == "RT"].sort_values("interval_start")
    if rt.empty:
        raise ValueError("no real-time prices: a backtest settles at the RT price")
    first, last = rt["interval_start"].min(), rt["interval_end"].max()
    if start is None:  # the second full local day: the forecast gets a day of published history
        first_local = first.tz_convert(profile.tz)
        start = first_local.normalize() + pd.Timedelta(days=1 if first_local == first_local.normalize() else 2)
    if end is None:
        end = last.tz_convert(profile.tz).floor("D")
    start, end = _local_midnight(start, profile), _local_midnight(end, profile)
    if end <= start:
        raise ValueError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
    index = pd.date_range(start, end, freq=step, inclusive="left")
    rt = rt.drop_duplicates("interval_start", keep="last")
    # RT may be finer than the grid (5-minute SCED prices): each interval settles at the
    # time-weighted mean of the prices inside it, as ERCOT settles (Nodal Protocols §6.6.1).
    price = pd.Series(time_weighted_mean(rt["interval_start"], rt["interval_end"], rt["price_usd_mwh"], index, step),
                      index=index)
    notes = []
    outside = (index < first) | (index >= last)
    if outside.any():
        raise ValueError(f"real-time prices cover {first.isoformat()} .. {last.isoformat()}, not the whole window "
                         f"{start.isoformat()} .. {end.isoformat()}")
    if price.isna().any():
        notes.append(f"{int(price.isna().sum())} intervals without an RT price: the previous price is carried")
        price = price.ffill().bfill()
    solar_kw = sum(r.capacity_kw for r in profile.renewables if r.kind == "solar")
    if renewables is not None:
        renewable = renewables.sort_index().reindex(renewables.index.union(index)).ffill().reindex(index).fillna(0.0)
        renewable_kw, synthetic = renewable.to_numpy(dtype=float), False
    else:
        renewable_kw, synthetic = clear_sky_solar_kw(index, profile, solar_kw), True
        if solar_kw:
            notes.append("on-site solar: SYNTHETIC clear-sky shape (give --renewables for recorded output)")
    events = tuple(sorted(dr_events, key=lambda e: (e.start, e.modification_number)))
    book = DRBook()
    for event in events:
        decision = book.apply(event, min(event.start, start.to_pydatetime()), profile)
        if not decision.accepted:
            notes.append(f"DR event {event.event_id} rejected: {decision.reason}")
    limit, sources = book.limits_over(index, step.to_pytimedelta())
    settle_hp = None
    if hashprice is not None:
        from hashflex.feeds.hashprice import hashprice_by_day

        settle_hp = hashprice_by_day(hashprice, index)
        days = sorted({f"{d:%Y-%m-%d}" for d in index.floor("D")})
        notes.append(f"hashprice: each UTC day's own value ({days[0]} .. {days[-1]}: "
                     f"{settle_hp.min():.1f} .. {settle_hp.max():.1f} $/PH/day), not the profile's "
                     f"{profile.economics.hashprice_usd_per_ph_day:g}")
    return Actuals(index, price.to_numpy(dtype=float), renewable_kw, synthetic, np.asarray(limit, dtype=float),
                   tuple(s or "import limit" for s in sources), prices, renewables, events, tuple(notes),
                   settle_hp, hashprice)


def actual_problem(profile: SiteProfile, actuals: Actuals, index: pd.DatetimeIndex | None = None,
                   initial: dict[str, GroupState] | None = None) -> Problem:
    """The optimizer's Problem over (part of) the window with the *actual* series."""
    index = actuals.index if index is None else index
    pos = actuals.index.get_indexer(index)
    sources = [actuals.import_limit_source[i] for i in pos]
    hashprice = None if actuals.hashprice_usd_per_ph_day is None else actuals.hashprice_usd_per_ph_day[pos]
    return problem_from_profile(profile, index, actuals.price_usd_mwh[pos], renewable_kw=actuals.renewable_kw[pos],
                                import_limit_kw=actuals.import_limit_kw[pos], import_limit_source=sources,
                                initial=initial, hashprice_usd_per_ph_day=hashprice)


def account(profile: SiteProfile, actuals: Actuals, counts: Counts, info: SolveInfo | None = None) -> Schedule:
    """THE economics of a policy: its per-interval unit counts n[g,m,t] over the window, priced at
    the actual RT price (plus the profile's adders) with the actual renewables and limits, by the
    optimizer's ``schedule_from_counts``. Every policy's figures come from here."""
    problem = actual_problem(profile, actuals)
    return schedule_from_counts(problem, counts, info or SolveInfo(status=SolveStatus.OPTIMAL, message="accounting"))


# ---------------------------------------------------------------------------------------- progress

class Progress:
    """One self-rewriting line on stderr with rate and ETA; silent unless ``enabled``."""

    def __init__(self, label: str, total: int, *, step_days: float, enabled: bool, stream: TextIO | None = None,
                 min_interval_s: float = 0.5) -> None:
        self.label, self.total, self.step_days, self.enabled = label, max(total, 1), step_days, enabled
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self._last = 0.0
        self.min_interval_s = min_interval_s

    @classmethod
    def factory(cls, quiet: bool, stream: TextIO | None = None) -> Callable[[str, int, float], Progress]:
        stream = stream or sys.stderr
        enabled = not quiet and hasattr(stream, "isatty") and stream.isatty()
        return lambda label, total, step_days: cls(label, total, step_days=step_days, enabled=enabled, stream=stream)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.min_interval_s and done < self.total:
            return
        self._last = now
        elapsed = now - self.started
        rate = elapsed / done if done else 0.0
        eta = rate * (self.total - done)
        per_day = rate / self.step_days if self.step_days else 0.0
        self.stream.write(f"\r{self.label}: {done}/{self.total} intervals ({100 * done / self.total:3.0f}%), "
                          f"{per_day:5.1f} s per simulated day, ETA {_clock(eta)}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(f"\r{self.label}: done in {_clock(time.perf_counter() - self.started)}"
                              + " " * 40 + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _no_progress(label: str, total: int, step_days: float) -> Progress:
    return Progress(label, total, step_days=step_days, enabled=False)


# ---------------------------------------------------------------------------------------- policies

@dataclass
class PolicyRun:
    """What one policy did: unit counts per interval and what the site measured."""

    name: str
    counts: Counts
    measured_dba: dict[str, np.ndarray]  # simulated sensor reading per receptor (mid-interval)
    wall_seconds: float
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-interval diagnostics for the CSV
    solves: int = 0
    fallback_schedules: int = 0
    fast_path_actions: int = 0
    infos: list[SolveInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class SnapshotForecaster(RecordedForecaster):
    """The daemon's forecaster over the recorded history (:class:`hashflex.forecast.RecordedForecaster`,
    the same class ``run --simulate`` plans with), with on-site output measured at each tick.

    On-site output before the window (three days, for the forecast's diurnal profile) is taken
    from the recorded file if it covers them, else from the same SYNTHETIC clear-sky shape."""

    def __init__(self, profile: SiteProfile, actuals: Actuals, config: ForecastConfig | None = None,
                 price_forecaster: Any = None) -> None:
        source = profile.renewables[0].id if profile.renewables else None
        history_days = (config or ForecastConfig()).renewable_history_days
        before = pd.date_range(actuals.index[0] - pd.Timedelta(days=history_days), actuals.index[0],
                               freq=actuals.step, inclusive="left")
        solar_kw = sum(r.capacity_kw for r in profile.renewables if r.kind == "solar")
        past = (clear_sky_solar_kw(before, profile, solar_kw) if actuals.renewable_synthetic or actuals.renewables is None
                else actuals.renewables.reindex(before, method="ffill").fillna(0.0).to_numpy(dtype=float))
        times = before.append(actuals.index)
        values = np.concatenate([past, actuals.renewable_kw])
        renewables = pd.DataFrame({"source_id": source, "timestamp": times, "power_kw": values,
                                   "published_at": times}) if source else None
        super().__init__(profile, actuals.prices, renewables, config, hashprice=actuals.hashprice,
                         price_forecaster=price_forecaster)


class RuleForecaster:
    """For the rule-based baselines, which read only the first interval: the last settled RT price
    and the renewable output measured now, held over the horizon (no look-ahead by construction;
    cheaper than the daemon's forecast, whose answer these rules never use)."""

    def __init__(self, profile: SiteProfile, actuals: Actuals, memory: SiteMemory) -> None:
        self.profile, self.memory = profile, memory
        self.renewable = pd.Series(actuals.renewable_kw, index=actuals.index)
        # The threshold's breakeven uses the newest hashprice published by the tick (as mpc's forecast).
        self.hashprice = actuals.hashprice

    def __call__(self, now: Any, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
        index = pd.date_range(horizon_start, periods=periods, freq=f"{self.profile.site.interval_minutes}min")
        price = self.memory.last_rt_price_usd_mwh
        measured = float(self.renewable.get(pd.Timestamp(now), 0.0))
        return HorizonForecast(index, np.full(periods, price if math.isfinite(price) else 5000.0),
                               renewable_kw=np.full(periods, measured),
                               hashprice_usd_per_ph_day=self._hashprice_known(pd.Timestamp(now)))

    def _hashprice_known(self, now: pd.Timestamp) -> float | None:
        if self.hashprice is None:
            return None
        known = self.hashprice[pd.to_datetime(self.hashprice["published_at"], utc=True) <= now.tz_convert("UTC")]
        return None if known.empty else float(known.sort_values("timestamp")["hashprice_usd_per_ph_day"].iloc[-1])


def _last_rt_lookup(prices: pd.DataFrame) -> Callable[[pd.Timestamp], float]:
    """Last settled RT price published at or before t (the operator's screen)."""
    rt = prices[prices["market"] == "RT"].copy()
    if "published_at" not in rt.columns:
        rt["published_at"] = published_at(rt)
    rt = rt.sort_values("published_at")
    times = pd.DatetimeIndex(rt["published_at"]).tz_convert("UTC")
    values = rt["price_usd_mwh"].to_numpy(dtype=float)

    def lookup(t: pd.Timestamp) -> float:
        i = int(times.searchsorted(t.tz_convert("UTC"), side="right")) - 1
        return float(values[i]) if i >= 0 else math.nan

    return lookup


def make_planner(policy: str, profile: SiteProfile, memory: SiteMemory, *, replan_minutes: int,
                 time_limit_s: float, persistence: int, runner: SolveRunner | None = None) -> Any:
    """The policy's planner; mpc solves through ``runner`` (the daemon's deadline and fallback),
    or an in-process runner without a deadline when none is given (tests only)."""
    if policy == "mpc":
        return ReplanningPlanner(runner or SolveRunner(time_limit_s=time_limit_s, inline=True), replan_minutes)
    if policy == "threshold":
        return ThresholdPlanner(profile, memory, persistence=persistence)
    if policy == "always-on":
        return AlwaysOnPlanner()
    raise ValueError(f"unknown closed-loop policy {policy!r}")


def simulate_policy(profile: SiteProfile, actuals: Actuals, policy: str, *, replan_minutes: int | None = None,
                    time_limit_s: float = 20.0, persistence: int = 1, seed: int = 0,
                    noise_bias_db: dict[str, float] | None = None, noise_sigma_db: float = 0.5, store: Any = None,
                    progress: Progress | None = None, runner: SolveRunner | None = None,
                    price_forecaster: Any = None) -> PolicyRun:
    """Drive the real ControlLoop over the window with ``policy``'s planner in the solver slot
    (mpc solves through ``runner``: see :func:`make_planner`). ``price_forecaster`` is mpc's
    ``forecast.PriceForecaster`` hook (e.g. ``price_model.LearnedPriceForecaster``); None: the rules."""
    started = time.perf_counter()
    step = actuals.step
    dt_h = step / pd.Timedelta(hours=1)
    memory = SiteMemory()
    planner = make_planner(policy, profile, memory, replan_minutes=replan_minutes or profile.site.interval_minutes,
                           time_limit_s=time_limit_s, persistence=persistence, runner=runner)
    forecaster = (SnapshotForecaster(profile, actuals, price_forecaster=price_forecaster) if policy == "mpc"
                  else RuleForecaster(profile, actuals, memory))
    fleet = SimulatedFleet(profile)
    # With a store the run keeps the audit trail a live site keeps, so `hashflex report` and
    # `hashflex audit verify` work on the backtest's database exactly as on a live one.
    recorder = AuditRecorder(store) if store is not None else None
    loop = ControlLoop(profile, forecaster=forecaster, driver=fleet, solver=planner, store=store, config=LoopConfig(run_mode="backtest"),
                       recorder=recorder)
    sensors = NoiseSensorSim(profile, bias_db=dict(noise_bias_db or {}), sigma_db=noise_sigma_db, seed=seed)
    last_rt = _last_rt_lookup(actuals.prices)
    renewable_id = profile.renewables[0].id if profile.renewables else "site"
    events = list(actuals.dr_events)
    intensity = profile.carbon.default_intensity_kg_per_mwh
    T = len(actuals.index)
    keys = [(g, m, group.id, mode.name) for g, group in enumerate(profile.miner_groups) for m, mode in enumerate(group.modes)]
    counts = {(g, m): np.zeros(T, dtype=int) for g, m, _, _ in keys}
    measured = {r.id: np.full(T, np.nan) for r in profile.receptors}
    solve_seconds, cut, status = np.zeros(T), np.zeros(T, dtype=bool), np.empty(T, dtype=object)
    local_days = actuals.index.tz_convert(profile.tz).normalize()
    unit_kw = {(group.id, mode.name): mode.power_kw for group in profile.miner_groups for mode in group.modes}
    idle_of = {group.id: group.idle_power_kw for group in profile.miner_groups}
    idle_kw = sum(group.units * group.idle_power_kw for group in profile.miner_groups)
    for k, stamp in enumerate(actuals.index):
        now = stamp.to_pydatetime()
        if local_days[k] != memory.day:
            memory.day, memory.emitted_today_kg = local_days[k], 0.0
        memory.last_rt_price_usd_mwh = last_rt(stamp)
        for event in [e for e in events if e.start <= now + step]:  # notices arrive before their start
            loop.on_message(event, min(now, event.start))
            events.remove(event)
        renewable_msg = RenewableMessage(source_id=renewable_id, power_kw=float(actuals.renewable_kw[k]), timestamp=now)
        loop.on_message(renewable_msg, now)
        if loop.replan_reasons and isinstance(planner, ReplanningPlanner):
            planner.force = True  # the daemon re-plans at once on a DR event or a noise exceedance
        loop.replan_reasons.clear()
        report = loop.tick(now)
        fleet.expire(now)
        running = fleet.running()
        for g, m, group_id, mode_name in keys:
            counts[g, m][k] = running.get((group_id, mode_name), 0)
        load_kw = sum(n * unit_kw[key] for key, n in running.items()) + idle_kw - sum(
            n * idle_of[key[0]] for key, n in running.items())
        memory.emitted_today_kg += max(load_kw - actuals.renewable_kw[k], 0.0) * dt_h * intensity / 1000.0
        before = loop.counters["fast_path_actions"]
        readings = sensors.measure(running, now + step / 2)
        for reading in readings:
            measured[reading.receptor_id][k] = reading.laeq_dba
            if store is not None:
                store.put(reading, received_at=reading.timestamp)
            loop.on_message(reading, now + step / 2)
        # The interval as measured, as the daemon reports it from its meters: the loop charges the
        # carbon budgets with it (and audits it when recording).
        caps = {r.id: r.cap_at(stamp.tz_convert(profile.tz).to_pydatetime()) for r in profile.receptors}
        noise = {r.receptor_id: noise_interval_summary([(r.laeq_dba, dt_h * 3600.0)], caps[r.receptor_id])
                 for r in readings}
        settled_hp = (None if actuals.hashprice_usd_per_ph_day is None
                      else float(actuals.hashprice_usd_per_ph_day[k]))  # the day's realised value, as account()
        loop.record_measurement(now, dt_h, load_kw=load_kw, renewable_kw=float(actuals.renewable_kw[k]),
                                hashrate_th_s=fleet.hashrate_th_s(), noise=noise,
                                price_usd_mwh=float(actuals.price_usd_mwh[k]), hashprice_usd_per_ph_day=settled_hp)
        cut[k] = loop.counters["fast_path_actions"] > before
        solve_seconds[k] = report.solve_seconds
        status[k] = report.schedule.status.value if report.schedule is not None else ""
        if progress is not None:
            progress.update(k + 1)
    if progress is not None:
        progress.close()
    if recorder is not None:
        recorder.flush()
        recorder.close()
    solves, fallbacks = getattr(planner, "solves", 0), loop.counters["fallback_schedules"]
    notes = []
    if fallbacks:
        deadline = getattr(getattr(planner, "runner", None), "deadline_s", None)
        notes.append(f"{fallbacks} of {solves} solves fell back to the greedy schedule"
                     + (f" (solver deadline {deadline:g} s)" if deadline is not None else ""))
    return PolicyRun(policy, counts, measured, time.perf_counter() - started,
                     extra={"solve_seconds": solve_seconds, "fast_path_cut": cut, "schedule_status": status},
                     solves=solves, fallback_schedules=fallbacks,
                     fast_path_actions=loop.counters["fast_path_actions"], notes=notes)


def run_oracle(profile: SiteProfile, actuals: Actuals, *, days_per_solve: int = 1, time_limit_s: float = 60.0,
               rel_gap: float = 1e-3, seed: int = 0, noise_bias_db: dict[str, float] | None = None,
               noise_sigma_db: float = 0.5, progress: Progress | None = None,
               runner: SolveRunner | None = None) -> PolicyRun:
    """Perfect foresight over the actual series (see ``policies.oracle_counts``); sensors read its
    counts with the same seed so its measured noise is comparable."""
    started = time.perf_counter()
    counts, infos = oracle_counts(lambda index, initial: actual_problem(profile, actuals, index, initial),
                                  actuals.index, profile.tz, days_per_solve=days_per_solve,
                                  time_limit_s=time_limit_s, rel_gap=rel_gap,
                                  progress=progress.update if progress is not None else None, runner=runner)
    if progress is not None:
        progress.close()
    sensors = NoiseSensorSim(profile, bias_db=dict(noise_bias_db or {}), sigma_db=noise_sigma_db, seed=seed)
    measured = {r.id: np.full(len(actuals.index), np.nan) for r in profile.receptors}
    for k, stamp in enumerate(actuals.index):
        running = {(group.id, mode.name): int(counts[g, m][k]) for g, group in enumerate(profile.miner_groups)
                   for m, mode in enumerate(group.modes) if counts[g, m][k]}
        for reading in sensors.measure(running, (stamp + actuals.step / 2).to_pydatetime()):
            measured[reading.receptor_id][k] = reading.laeq_dba
    gaps = [i.gap for i in infos if i.gap is not None]
    notes = [f"{len(infos)} MILP(s), worst relative gap {max(gaps) * 100:.3f}%" if gaps else f"{len(infos)} MILP(s)"]
    notes += [f"oracle block {i}: {info.status.value} {info.message}" for i, info in enumerate(infos)
              if info.status in (SolveStatus.FALLBACK, SolveStatus.TIME_LIMIT)]
    status = np.empty(len(actuals.index), dtype=object)
    status[:] = "oracle"
    return PolicyRun("oracle", counts, measured, time.perf_counter() - started,
                     extra={"solve_seconds": np.zeros(len(actuals.index)),
                            "fast_path_cut": np.zeros(len(actuals.index), dtype=bool), "schedule_status": status},
                     solves=len(infos), infos=infos, notes=notes)


@dataclass
class BacktestResult:
    profile: SiteProfile
    actuals: Actuals
    runs: dict[str, PolicyRun]
    schedules: dict[str, Schedule]  # accounted with actual prices, one per policy


def run_backtest(profile: SiteProfile, actuals: Actuals, policies: Sequence[str], *,
                 replan_minutes: int | None = None, time_limit_s: float = 20.0, persistence: int = 1,
                 oracle_days: int = 1, oracle_rel_gap: float = 1e-3, seed: int = 0,
                 noise_bias_db: dict[str, float] | None = None, noise_sigma_db: float = 0.5, store: Any = None,
                 progress: Callable[[str, int, float], Progress] | None = None,
                 deadline_s: float | None = None, inline_solver: bool = False,
                 price_forecaster: Any = None) -> BacktestResult:
    """Run each policy over the same window and account for each with ``account``. ``store`` (a
    ``hashflex.store.Store``) receives the mpc loop's records, as the daemon's store would.

    Every solve (mpc's and the oracle's) runs in one worker process with the daemon's hard deadline
    (:class:`SolveRunner`): ``deadline_s`` wall-clock seconds (default ``time_limit_s`` + 10; the
    oracle's limit is at least 60 s, with the same margin), past which the worker is killed and the
    greedy fallback used (counted in ``fallback_schedules`` and the notes). ``inline_solver``
    solves in-process with no deadline (tests that want no worker process)."""
    progress = progress or _no_progress
    step_days = float(actuals.step / pd.Timedelta(days=1))
    runs: dict[str, PolicyRun] = {}
    with SolveRunner(time_limit_s=time_limit_s, deadline_s=deadline_s, inline=inline_solver) as runner:
        for policy in policies:
            bar = progress(policy, len(actuals.index), step_days)
            if policy == "oracle":
                runs[policy] = run_oracle(profile, actuals, days_per_solve=oracle_days, rel_gap=oracle_rel_gap,
                                          time_limit_s=max(time_limit_s, 60.0), seed=seed,
                                          noise_bias_db=noise_bias_db, noise_sigma_db=noise_sigma_db, progress=bar,
                                          runner=runner)
            else:
                runs[policy] = simulate_policy(profile, actuals, policy, replan_minutes=replan_minutes,
                                               time_limit_s=time_limit_s, persistence=persistence, seed=seed,
                                               noise_bias_db=noise_bias_db, noise_sigma_db=noise_sigma_db,
                                               store=store if policy == "mpc" else None,
                                               progress=bar, runner=runner, price_forecaster=price_forecaster)
    schedules = {name: account(profile, actuals, run.counts) for name, run in runs.items()}
    return BacktestResult(profile, actuals, runs, schedules)
