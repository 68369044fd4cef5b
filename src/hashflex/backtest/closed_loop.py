"""The closed loop of a backtest: the real ``ControlLoop`` on a simulated clock, site and sensors.

``simulate_policy`` drives the real ``ControlLoop`` interval by interval on a simulated clock, a
simulated fleet (``hashflex.sim.site.SimulatedFleet``) and seeded noise sensors
(``hashflex.sim.noise``), and records the units that ran. For mpc (and ``mpc+as``) the forecast is
the daemon's own (``forecast.build_forecast``, see ``SnapshotForecaster``) over what was published
by each tick: RT prices at their interval's end, DA at 13:00 CT the day before (or the file's
``published_at``), on-site output as measured. DR events reach the loop as messages before their
start, as they would over MQTT. For ``mpc+as`` the runner plays the site's QSE
(:class:`~hashflex.backtest.ancillary_loop.ASParticipant`): AS awards reach ``handle_as_award`` when
the day-ahead market publishes them, SYNTHETIC deployments reach ``handle_as_deploy``.

Timing convention: the counts of an interval are those dispatched at its tick (the interval
start), after any AS deployment issued at that tick (cut at once by the fast path). A noise
sensor reads at mid-interval; if the guard's fast path cuts on that reading, the cut holds from
then until the next tick, but the interval is accounted (and counted as exceeding) with the
counts at its start — conservative on noise, slightly generous on profit. The per-interval CSV
marks such intervals (``fast_path_cut``).

(Split out of ``backtest.runner``, issue 11; ``runner`` re-exports every name for old imports.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hashflex.audit import noise_interval_summary
from hashflex.backtest.actuals import Actuals, Counts
from hashflex.backtest.ancillary_loop import AS_POLICY, ASParticipant
from hashflex.backtest.policies import AlwaysOnPlanner, ReplanningPlanner, SiteMemory, ThresholdPlanner
from hashflex.backtest.progress import Progress
from hashflex.control.loop import ControlLoop, HorizonForecast, LoopConfig, interval_floor
from hashflex.control.records import AuditRecorder
from hashflex.control.solver import SolveRunner
from hashflex.forecast import ForecastConfig, RecordedForecaster
from hashflex.messages import RenewableMessage
from hashflex.plan import renewables_on_grid
from hashflex.optimize.schedule import SolveInfo, grid_import_kw
from hashflex.profile import SiteProfile
from hashflex.sim.noise import NoiseSensorSim
from hashflex.sim.site import SimulatedFleet, clear_sky_solar_kw, published_at

__all__ = ["PolicyRun", "RuleForecaster", "SnapshotForecaster", "make_planner", "simulate_policy"]

log = logging.getLogger(__name__)

# The prefetch helper (next forecast, held audit appends) starts this long after a solve is
# handed to the worker, s: the executor's threads pickle the problem and write it to the worker
# first instead of waiting for the interpreter behind the helper (issue 18: the submission took
# ~3 ms a tick; measured with optimization/benchmarks/backtest_speed.py).
_SUBMIT_GRACE_S = 0.002


@dataclass
class PolicyRun:
    """What one policy did: unit counts per interval and what the site measured.

    Attributes
    ----------
    name : str
        The policy (``mpc``, ``mpc+as``, ``threshold``, ``always-on``, ``oracle``).
    counts : dict of (g, m) to np.ndarray
        [T] units of group g running in mode m, as dispatched at each interval's tick.
    measured_dba : dict of str to np.ndarray
        [T] simulated sensor reading per receptor at mid-interval, dB(A).
    wall_seconds : float
    extra : dict of str to np.ndarray
        [T] per-interval diagnostics for the CSV (``solve_seconds``, ``fast_path_cut``, ...).
    ancillary : ancillary_loop.ASOutcome or None
        ``mpc+as`` only: awards, SYNTHETIC deployments and their measured performance.
    """

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
    ancillary: Any = None
    forecast_prefetch_hits: int = 0  # ticks whose forecast was computed during the previous solve (issue 18)


class SnapshotForecaster(RecordedForecaster):
    """The daemon's forecaster over the recorded history, with on-site output measured at each tick.

    :class:`hashflex.forecast.RecordedForecaster`, the same class ``run --simulate`` plans with.
    On-site output before the window (three days, for the forecast's diurnal profile) is taken
    from the recorded file if it covers them, else from the same SYNTHETIC clear-sky shape.

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    config : ForecastConfig, optional
    price_forecaster : forecast.PriceForecaster, optional
        A learned price model plugged into the rules (None: the rules alone).
    """

    def __init__(self, profile: SiteProfile, actuals: Actuals, config: ForecastConfig | None = None,
                 price_forecaster: Any = None) -> None:
        source = profile.renewables[0].id if profile.renewables else None
        history_days = (config or ForecastConfig()).renewable_history_days
        before = pd.date_range(actuals.index[0] - pd.Timedelta(days=history_days), actuals.index[0],
                               freq=actuals.step, inclusive="left")
        solar_kw = sum(r.capacity_kw for r in profile.renewables if r.kind == "solar")
        past = (clear_sky_solar_kw(before, profile, solar_kw) if actuals.renewable_synthetic or actuals.renewables is None
                else renewables_on_grid(actuals.renewables.sort_index(), before, actuals.step))
        times = before.append(actuals.index)
        values = np.concatenate([past, actuals.renewable_kw])
        renewables = pd.DataFrame({"source_id": source, "timestamp": times, "power_kw": values,
                                   "published_at": times}) if source else None
        super().__init__(profile, actuals.prices, renewables, config, hashprice=actuals.hashprice,
                         price_forecaster=price_forecaster)
        self._prefetch_pool: ThreadPoolExecutor | None = None
        self._prefetched: tuple[tuple[int, int, int], Future] | None = None
        self.prefetch_hits = 0
        self.prefetch_delay_s = 0.0  # see prefetch(); set by simulate_policy
        self.prefetch_first: Callable[[], None] | None = None

    @staticmethod
    def _key(now: Any, horizon_start: Any, periods: int) -> tuple[int, int, int]:
        return pd.Timestamp(now).value, pd.Timestamp(horizon_start).value, int(periods)

    def prefetch(self, now: Any, horizon_start: Any, periods: int, *, delay_s: float | None = None,
                 first: Callable[[], None] | None = None) -> None:
        """Start the forecast of a later call in a helper thread (issue 18).

        The backtest calls this as a solve starts: the loop's thread then waits on the solver
        worker with the GIL released, so the next tick's forecast is computed on the idle core
        instead of after the solve. The forecast is a pure function of ``(now, horizon_start,
        periods)`` over recorded history published by ``now`` (no state changes between calls), so
        :meth:`__call__` with the same arguments returns exactly what it would have computed; any
        other call computes as before. An error is raised where the call would have raised it.

        Parameters
        ----------
        now, horizon_start, periods
            As :meth:`__call__`.
        delay_s : float, optional
            The helper starts this long after the call, s: the solve being submitted right after it
            (its problem pickled and written to the worker by the executor's threads) gets the
            interpreter first, so the worker starts at once (issue 18; see ``_SUBMIT_GRACE_S``).
            Default: the attribute ``prefetch_delay_s`` (0 unless the backtest set it).
        first : callable, optional
            Run by the helper before the forecast (after ``delay_s``): other work for the solve's
            wait (the backtest releases its held audit entries). An exception is logged, never raised.
            Default: the attribute ``prefetch_first`` (None unless the backtest set it).
        """
        delay_s = self.prefetch_delay_s if delay_s is None else delay_s
        first = self.prefetch_first if first is None else first
        self._settle()
        try:
            key = self._key(now, horizon_start, periods)
        except (TypeError, ValueError):  # not a time: nothing prefetched, the call raises as it would
            if first is not None:
                _run_quietly(first)
            return
        if self._prefetch_pool is None:
            self._prefetch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast-prefetch")
        compute = super().__call__

        def job() -> Any:
            if delay_s > 0:
                time.sleep(delay_s)
            if first is not None:
                _run_quietly(first)
            return compute(now, horizon_start, periods)

        self._prefetched = key, self._prefetch_pool.submit(job)

    def __call__(self, now: Any, horizon_start: pd.Timestamp, periods: int) -> Any:
        """The forecast (see :class:`hashflex.forecast.RecordedForecaster`); the prefetched one when
        :meth:`prefetch` was given these arguments."""
        pending, self._prefetched = self._prefetched, None
        if pending is not None:
            key, future = pending
            future.exception()  # wait for the helper (never two computations at once)
            try:
                hit = key == self._key(now, horizon_start, periods)
            except (TypeError, ValueError):
                hit = False
            if hit:
                self.prefetch_hits += 1
                return future.result()
        return super().__call__(now, horizon_start, periods)

    def _settle(self) -> None:
        """Wait for (and drop) a prefetch that was not asked for."""
        pending, self._prefetched = self._prefetched, None
        if pending is not None:
            pending[1].exception()

    def close(self) -> None:
        """Stop the helper thread (a pending prefetch is awaited and dropped)."""
        self._settle()
        if self._prefetch_pool is not None:
            self._prefetch_pool.shutdown(wait=True)
            self._prefetch_pool = None


def _run_quietly(action: Callable[[], None]) -> None:
    """``action()``; an exception is logged, never raised (helper-thread side work)."""
    try:
        action()
    except Exception:  # side work must not fail the forecast it rides with
        log.exception("prefetch helper: side work failed")


class RuleForecaster:
    """The forecast of the rule-based baselines, which read only the first interval.

    The last settled RT price and the renewable output measured now, held over the horizon (no
    look-ahead by construction; cheaper than the daemon's forecast, whose answer these rules
    never use).

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    memory : SiteMemory
        Updated by the runner with the last settled RT price before each tick.
    """

    def __init__(self, profile: SiteProfile, actuals: Actuals, memory: SiteMemory) -> None:
        self.profile, self.memory = profile, memory
        self.renewable = pd.Series(actuals.renewable_kw, index=actuals.index)
        # The threshold's breakeven uses the newest hashprice published by the tick (as mpc's forecast).
        self.hashprice = actuals.hashprice
        self._hashprice_index = _published_newest_index(actuals.hashprice)

    def __call__(self, now: Any, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
        """The flat horizon at ``now`` (see the class docstring)."""
        index = pd.date_range(horizon_start, periods=periods, freq=f"{self.profile.site.interval_minutes}min")
        price = self.memory.last_rt_price_usd_mwh
        measured = float(self.renewable.get(pd.Timestamp(now), 0.0))
        return HorizonForecast(index, np.full(periods, price if math.isfinite(price) else 5000.0),
                               renewable_kw=np.full(periods, measured),
                               hashprice_usd_per_ph_day=self._hashprice_known(pd.Timestamp(now)))

    def _hashprice_known(self, now: pd.Timestamp) -> float | None:
        if self.hashprice is None:
            return None
        if self._hashprice_index is not None:  # by searchsorted (issue 18): the same row as the filter below
            return self._hashprice_index(now)
        known = self.hashprice[pd.to_datetime(self.hashprice["published_at"], utc=True) <= now.tz_convert("UTC")]
        return None if known.empty else float(known.sort_values("timestamp")["hashprice_usd_per_ph_day"].iloc[-1])


def _published_newest_index(hashprice: pd.DataFrame | None) -> Callable[[pd.Timestamp], float | None] | None:
    """``now -> hashprice_usd_per_ph_day`` of the newest ``timestamp`` among the rows published by
    ``now`` (None before the first), by one searchsorted per tick instead of a filter and a sort.

    Built only when that row is unambiguous (unique timestamps, no NaT); None otherwise, and the
    caller filters and sorts as before.
    """
    if hashprice is None or hashprice.empty:
        return None
    stamps = pd.to_datetime(hashprice["timestamp"], utc=True)
    published = pd.to_datetime(hashprice["published_at"], utc=True)
    if stamps.isna().any() or not stamps.is_unique:
        return None
    keep = published.notna().to_numpy()  # NaT is never known (NaT <= now is False)
    published_ns = published.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)[keep]
    stamps_ns = stamps.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]").view(np.int64)[keep]
    values = hashprice["hashprice_usd_per_ph_day"].to_numpy(dtype=float)[keep]
    order = np.argsort(published_ns, kind="stable")
    published_ns, stamps_ns, values = published_ns[order], stamps_ns[order], values[order]
    # newest[i]: the row of the largest timestamp among the first i + 1 published (timestamps are unique)
    running = np.maximum.accumulate(stamps_ns)
    newest = np.maximum.accumulate(np.where(stamps_ns == running, np.arange(len(order)), 0))

    def lookup(now: pd.Timestamp) -> float | None:
        i = int(np.searchsorted(published_ns, now.tz_convert("UTC").as_unit("ns").value, side="right")) - 1
        return None if i < 0 else float(values[newest[i]])

    return lookup


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
    """The planner in the loop's solver slot for a closed-loop policy.

    Parameters
    ----------
    policy : str
        ``mpc`` or ``mpc+as`` (:class:`ReplanningPlanner`), ``threshold``, ``always-on``.
    profile : SiteProfile
    memory : SiteMemory
    replan_minutes : int
        mpc: re-solve every N minutes.
    time_limit_s : float
        Solver time limit per solve, s (the in-process runner's).
    persistence : int
        threshold: intervals a price signal must hold before switching.
    runner : SolveRunner, optional
        mpc solves through it (the daemon's deadline and fallback); None: an in-process runner
        without a deadline (tests only).

    Returns
    -------
    planner
        ``run(problem, fine_intervals) -> Schedule`` and ``last_seconds``.

    Raises
    ------
    ValueError
        An unknown policy (the oracle is not a closed-loop policy).
    """
    if policy in ("mpc", AS_POLICY):
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
                    price_forecaster: Any = None, as_mode: str = "day-ahead",
                    offer_rule: str | None = None, prefetch_forecast: bool | None = None) -> PolicyRun:
    """Drive the real ControlLoop over the window with ``policy``'s planner in the solver slot.

    Each interval: DR notices and (``mpc+as``) AS awards and recalls reach the loop as messages,
    the loop ticks, (``mpc+as``) SYNTHETIC deployments go through ``handle_as_deploy`` and are
    measured, the simulated fleet runs what it was told, sensors read, and the interval is
    reported to the loop as measured (see the module docstring for the timing convention).

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    policy : str
        ``mpc``, ``mpc+as``, ``threshold`` or ``always-on``.
    replan_minutes : int, optional
        mpc: re-solve every N minutes (default every interval).
    time_limit_s : float
        Solver time limit, s.
    persistence : int
        threshold: intervals a signal must hold.
    seed : int
        Seed of the simulated noise sensors (and of the SYNTHETIC deployments).
    noise_bias_db, noise_sigma_db
        Sensor bias per receptor and noise, dB.
    store : Store, optional
        Receives the loop's records (the daemon's audit trail).
    progress : Progress, optional
    runner : SolveRunner, optional
        mpc solves through it (see :func:`make_planner`).
    price_forecaster : forecast.PriceForecaster, optional
        mpc's hook (e.g. ``price_model.LearnedPriceForecaster``); None: the rules.
    as_mode : str
        ``mpc+as``: ``day-ahead`` (awards from the DAM co-optimisation) or ``real-time`` (reserve
        re-decided each interval, RTC+B); see :mod:`hashflex.backtest.ancillary_loop`.
    offer_rule : str, optional
        ``mpc+as`` day-ahead offers: ``price-taking`` (default) or ``rt-risk`` (`backtest.ancillary.OFFER_RULES`).
    prefetch_forecast : bool, optional
        mpc: compute the next tick's forecast while the solver worker solves this tick's plan
        (:meth:`SnapshotForecaster.prefetch`; the same forecasts, less wall time). Default: when
        the solves run in a worker process and no learned price model is plugged in.

    Returns
    -------
    PolicyRun
    """
    started = time.perf_counter()
    step = actuals.step
    dt_h = step / pd.Timedelta(hours=1)
    memory = SiteMemory()
    participant = None
    if policy == AS_POLICY:  # the site's QSE, played by the runner (issue 15)
        participant = ASParticipant(profile, actuals, mode=as_mode, seed=seed, time_limit_s=time_limit_s,
                                    offer_rule=offer_rule)
        runner = participant.wrap_runner(runner or SolveRunner(time_limit_s=time_limit_s, inline=True))
    planner = make_planner(policy, profile, memory, replan_minutes=replan_minutes or profile.site.interval_minutes,
                           time_limit_s=time_limit_s, persistence=persistence, runner=runner)
    forecaster = (SnapshotForecaster(profile, actuals, price_forecaster=price_forecaster)
                  if policy in ("mpc", AS_POLICY) else RuleForecaster(profile, actuals, memory))
    if prefetch_forecast is None:  # a learned model may keep state between calls: not prefetched
        solves_elsewhere = not getattr(getattr(planner, "runner", None), "inline", True)
        prefetch_forecast = solves_elsewhere and price_forecaster is None
    upcoming: list[datetime | None] = [None]  # the next tick's time, for the prefetch
    overlapped = (prefetch_forecast and isinstance(forecaster, SnapshotForecaster)
                  and isinstance(planner, ReplanningPlanner))
    if overlapped:
        def prefetch_next() -> None:
            # The audit entries held since the last solve are appended during this one, after the
            # forecast helper's grace (the submission first), then the next tick's forecast.
            if upcoming[0] is not None:
                forecaster.prefetch(upcoming[0], interval_floor(upcoming[0], profile.site.interval_minutes),
                                    loop.periods)
            elif recorder is not None:
                recorder.release()
        forecaster.prefetch_delay_s = _SUBMIT_GRACE_S
        planner.on_solve = prefetch_next
    fleet = SimulatedFleet(profile)
    # With a store the run keeps the audit trail a live site keeps, so `hashflex report` and
    # `hashflex audit verify` work on the backtest's database exactly as on a live one. With the
    # solves in a worker the entries are appended while it solves (paced: the same trail).
    recorder = AuditRecorder(store, paced=bool(overlapped)) if store is not None else None
    if overlapped and recorder is not None:
        forecaster.prefetch_first = recorder.release
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
    try:
        for k, stamp in enumerate(actuals.index):
            now = stamp.to_pydatetime()
            upcoming[0] = actuals.index[k + 1].to_pydatetime() if k + 1 < T else None
            if local_days[k] != memory.day:
                memory.day, memory.emitted_today_kg = local_days[k], 0.0
            memory.last_rt_price_usd_mwh = last_rt(stamp)
            for event in [e for e in events if e.start <= now + step]:  # notices arrive before their start
                loop.on_message(event, min(now, event.start))
                events.remove(event)
            if participant is not None:  # awards published by now, recalls of deployments that end
                participant.before_tick(loop, k, now)
            renewable_msg = RenewableMessage(source_id=renewable_id, power_kw=float(actuals.renewable_kw[k]), timestamp=now)
            loop.on_message(renewable_msg, now)
            if loop.replan_reasons and isinstance(planner, ReplanningPlanner):
                planner.force = True  # the daemon re-plans at once on a DR event or a noise exceedance
            loop.replan_reasons.clear()
            report = loop.tick(now)
            if participant is not None:  # real-time awards from this plan; SYNTHETIC deployments, cut at once
                participant.after_tick(loop, k, now, report)
            fleet.expire(now)
            running = fleet.running()
            for g, m, group_id, mode_name in keys:
                counts[g, m][k] = running.get((group_id, mode_name), 0)
            load_kw = sum(n * unit_kw[key] for key, n in running.items()) + idle_kw - sum(
                n * idle_of[key[0]] for key, n in running.items())
            memory.emitted_today_kg += grid_import_kw(load_kw, actuals.renewable_kw[k]) * dt_h * intensity / 1000.0
            if participant is not None:
                participant.measure(loop, k, now, grid_import_kw(load_kw, actuals.renewable_kw[k]))
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
    finally:  # the prefetch helper thread ends with the run, also when a tick raises
        if isinstance(forecaster, SnapshotForecaster):
            forecaster.close()
        if recorder is not None:  # entries held for the next solve go to the trail as they would have
            recorder.release()
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
    outcome = participant.outcome(loop) if participant is not None else None
    if outcome is not None:
        notes += outcome.notes
    return PolicyRun(policy, counts, measured, time.perf_counter() - started,
                     extra={"solve_seconds": solve_seconds, "fast_path_cut": cut, "schedule_status": status},
                     solves=solves, fallback_schedules=fallbacks,
                     fast_path_actions=loop.counters["fast_path_actions"], notes=notes, ancillary=outcome,
                     forecast_prefetch_hits=getattr(forecaster, "prefetch_hits", 0))

