"""The control loop: forecast → problem → solve → dispatch → guard → drivers, once per interval and
whenever limits change; and the fast path, which cuts load on a DR start or a noise exceedance
without waiting for a solve.

Everything outside is injected: the clock (``now`` is passed to every call), the forecaster, the
driver, the publisher, the store and the audit log. `hashflex run` wires them to the wall clock,
MQTT and real miners; the backtest and the simulator wire them to a simulated clock and site.

Control state lives in one :class:`~hashflex.control.limits.LimitsBook` (DR events, managers'
limits, 4CP, holds): the tick, the fast path, the guard and ``/status`` read only it. A DR or limits
message is acknowledged ``accepted`` only after the book's new state is committed to the store
(``Store.commit_state``); when that fails the answer is ``rejected: store_unavailable``, a more
restrictive limit is still held in memory, and ``/healthz`` turns 503 naming the cause. A message
seen before gets its first answer again (MQTT QoS 1 is at-least-once). Commitment state (which
miners run, their last start and stop) is saved after every batch, so min on/off survive a restart.

Threads: message callbacks arrive on the MQTT network thread; ticks run on the loop's thread.
A lock guards the fleet, the book and the batch in force; the solve runs outside it, and never
two at once (``_solve_lock``). With ``LoopConfig.async_sends`` (the daemon) driver I/O runs on a
sender thread: a message callback decides, commits, acknowledges and queues the cut, and never
waits on a miner. Batches are full-fleet and queued in order, so the last one queued is what the
fleet ends up with; the fleet records each batch as intent when queued and reverts a miner whose
setpoint failed.

Issue 18: the tick and the array fast paths send a columnar ``drivers.batch.SetpointBatch`` (per group:
miner ids, mode index, power; one expiry) and book the driver's ``BatchResult`` in counts: a tally of
outcome codes, and per miner only for those that failed (reverted, counted by the registry). Drivers
without ``apply_batch`` get the same setpoints one by one (``send_batch``); PDU sites and the meter's
and restart's cuts still send lists of ``Setpoint``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd

from hashflex.control.ancillary import reserve_keep_kw
from hashflex.control.as_intake import AncillaryIntakeMixin, deployment_performance  # noqa: F401 - re-exported
from hashflex.control.compute_commands import ComputeState
from hashflex.control.dispatch import ArrayDispatch, plan_dispatch_arrays
from hashflex.control.dr import DRBook
from hashflex.control.fastpath import FastPathMixin, _prices_unknown, _replace  # noqa: F401
from hashflex.control.fleet import NO_TIME_US, SLEEP, FleetArrays, FleetState, time_us
from hashflex.control.guard_counts import CountGuard, realise
from hashflex.control.guard import Guard, GuardResult, Limits, Measurements
from hashflex.control.limits import LimitsBook
from hashflex.control.loop_compute import ComputeMixin
from hashflex.control.loop_health import HealthMixin, health_ratings
from hashflex.control.loop_state import ControlStateMixin
from hashflex.control.loop_status import LoopStatusMixin
from hashflex.control.records import IntervalMeter
from hashflex.control.sender import SendQueue
from hashflex.control.solver import SolveRunner
from hashflex.control.stability import StabilityDecision, hold_previous_counts
from hashflex.drivers.base import MinerDriver, MinerRegistry, Setpoint, SetpointResult, SetpointStatus
from hashflex.drivers.batch import BatchResult, SetpointBatch, send_batch
from hashflex.drivers.compute import ComputeDriver, ComputeResult
from hashflex.drivers.pdu import POWERED_OFF
from hashflex.health.detectors import HealthBook
from hashflex.optimize.problem import (
    GroupState,
    Problem,
    problem_from_profile,
)
from hashflex.optimize.schedule import Schedule, unit_column
from hashflex.plausibility import PlausibilityContext
from hashflex.profile import SiteProfile

log = logging.getLogger(__name__)

# Results after which the fleet does not count a setpoint as taken (its miner is reverted).
_NOT_TAKEN = tuple(s for s in SetpointStatus if s not in (SetpointStatus.APPLIED, SetpointStatus.UNVERIFIED))


@dataclass(frozen=True)
class HorizonForecast:
    """What the forecaster knows at ``now`` for the horizon starting at the current interval."""

    interval_start: pd.DatetimeIndex
    price_usd_mwh: np.ndarray
    renewable_kw: np.ndarray | None = None
    intensity_kg_per_mwh: np.ndarray | None = None
    hashprice_usd_per_ph_day: np.ndarray | float | None = None
    noise_margin_db: dict[str, float] | None = None
    fallbacks: tuple[str, ...] = ()
    input_ages_s: dict[str, float] = field(default_factory=dict)


class Forecaster(Protocol):
    """What the loop plans with: ``forecast.store_forecaster`` (daemon) or ``RecordedForecaster``."""

    def __call__(self, now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast:
        """The horizon's arrays as known at ``now``.

        Parameters
        ----------
        now : datetime
            tz-aware; nothing published after it may be used (no look-ahead).
        horizon_start : pd.Timestamp
            UTC start of the current interval.
        periods : int
            Intervals in the horizon.
        """
        ...


class Publisher(Protocol):
    """Where acknowledgements, status, schedules and alerts go (the daemon: MQTT ``hashflex/<site>/out/...``)."""

    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        """Publish ``payload`` as JSON on the site's ``topic_suffix`` (e.g. ``out/dr/ack``); never raises.

        Parameters
        ----------
        topic_suffix : str
            The topic after ``hashflex/<site>/``.
        payload : dict
            JSON-serialisable.
        """
        ...


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs (times in the names; see each field's comment)."""

    expiry_intervals: float = 2.0  # a setpoint outlives one missed tick, not two
    replan_debounce_s: float = 2.0
    solve_time_limit_s: float = 20.0
    stale_after_intervals: float = 3.0  # /healthz turns 503 when the last good tick is older
    async_sends: bool = False  # driver I/O on a sender thread (the daemon); False: on the caller's thread
    run_mode: str = "live"  # "live" | "simulate" | "backtest": recorded in the audit trail (reports label it)
    # Plan stability (control.stability): a re-plan changes what runs only if it gains at least this
    # fraction of the whole fleet's gross revenue over a day (at the horizon's mean rate, so the same for
    # any horizon length; over the horizon before issue 14 H5, equal at 24 h) over keeping what runs
    # (0 turns the rule off). Measured in optimization/benchmarks/plan_stability.py (Feb 10-12 2020, the
    # block rule): 0.0005 gave profit x1.0049 west_texas, x1.0160 quiet_hollow vs off, unit switches x0.75 /
    # x0.89; 0.002 gave x1.0026 / x1.0168 for x0.72 / x0.76 (more profit at the site near homes, less at
    # west_texas: kept at 0.0005).
    replan_min_gain_fraction: float = 0.0005


@dataclass
class TickReport:
    """What one tick did: the plan, the batch after the guard, the driver's results, the forecast's
    fallbacks, the solve time (s), what triggered it and what the stability rule decided."""

    at: datetime
    interval_start: pd.Timestamp
    schedule: Schedule | None
    batch: list[Setpoint] | SetpointBatch  # a SetpointBatch is a sequence of Setpoint (made when read)
    guard: GuardResult | None
    results: list[SetpointResult] | BatchResult  # likewise a sequence of SetpointResult
    fallbacks: tuple[str, ...]
    solve_seconds: float
    trigger: str
    stability: str = ""  # control.stability: kept what runs, or why the new plan went out


def interval_floor(now: datetime, minutes: int) -> pd.Timestamp:
    """The UTC start of the ``minutes``-long interval holding ``now``."""
    return pd.Timestamp(now).tz_convert("UTC").floor(f"{minutes}min")


def group_states(fleet: FleetState, profile: SiteProfile, now: datetime) -> dict[str, GroupState]:
    """Initial state per group for the solve, from the fleet as dispatched: units on, and units
    still held on (min-on) or off (min-off) with the hours they remain held.

    Vector work over the fleet's columns (issue 18); the hours left are computed as the per-miner
    ``(last_start + min_on - now) / 1 h`` was (exact integer microseconds, then one division), and
    rounded to 0.1 ms of an hour with Python's ``round`` once per distinct value."""
    now_us = time_us(now)
    states = {}
    for group in profile.miner_groups:
        if group.id not in fleet.groups:
            states[group.id] = GroupState(units_on=0, load_kw=0.0, must_stay_on=(), must_stay_off=(), units_off=0)
            continue
        cols = fleet.columns(group.id)
        running = cols.mode >= 0
        held_on = _held(cols.last_start_us[running], group.min_on_minutes, now_us)
        held_off = _held(cols.last_stop_us[~running], group.min_off_minutes, now_us)
        power = cols.power_kw()
        usable = cols.available
        load_kw = float(power[np.maximum(cols.mode[usable], -1).astype(np.int64) + 1].sum())
        off = fleet.powered_off(group.id) if getattr(group, "pdu_power_off", False) else 0
        if off:  # powered off at the PDU: no idle draw
            load_kw -= fleet.power_kw(group.id, SLEEP) * int((cols.mode[usable] == -2).sum())
        states[group.id] = GroupState(units_on=int(running.sum()), load_kw=load_kw,
                                      must_stay_on=held_on, must_stay_off=held_off, units_off=off)
    return states


def _held(stamps_us: np.ndarray, minutes: float | None, now_us: int) -> tuple[tuple[float, int], ...]:
    """(hours left, units) of units still held by a minimum time of ``minutes`` since ``stamps_us``."""
    if not minutes:
        return ()
    stamped = stamps_us[stamps_us != NO_TIME_US]
    left_us = stamped + int(round(minutes * 60_000_000)) - now_us
    left_us = left_us[left_us > 0]
    if not left_us.size:
        return ()
    values, n = np.unique(left_us, return_counts=True)
    held: dict[float, int] = {}
    for us, k in zip(values.tolist(), n.tolist()):
        key = round(us / 1e6 / 3600, 4)
        held[key] = held.get(key, 0) + k
    return tuple(sorted(held.items()))


def apply_cap_overrides(problem: Problem, caps_dba: Mapping[str, np.ndarray]) -> Problem:
    """Tighten receptor caps to ``caps_dba`` (receptor id → per-interval cap, inf where none, e.g.
    :meth:`LimitsBook.noise_caps_over`); never loosens."""
    if not caps_dba:
        return problem
    receptors = []
    for receptor in problem.receptors:
        cap = receptor.cap_dba
        if receptor.id in caps_dba:
            cap = np.minimum(cap, np.asarray(caps_dba[receptor.id], dtype=float))
        receptors.append(dataclasses.replace(receptor, cap_dba=cap))
    return dataclasses.replace(problem, receptors=tuple(receptors))


def power_off_planned(schedule: Schedule, setpoints: list[Setpoint], fleet: FleetState) -> list[Setpoint]:
    """The plan's ``units_<g>_off`` (issue 17) applied to a dispatched batch: that many of the group's sleeping
    units get mode ``off`` (the PDU opens their outlets; 0 kW), units already off first (no relay cycle),
    then by id. Groups without the column, or without that many sleeping units, keep what they have.

    Parameters
    ----------
    schedule : Schedule
        The plan; its first row's ``units_<g>_off`` columns are read.
    setpoints : list[Setpoint]
        One per miner, as dispatched (sleeping units have mode ``sleep``).
    fleet : FleetState
        Which miners are off now.

    Returns
    -------
    list[Setpoint]
        The batch, same order.
    """
    row = schedule.frame.iloc[0]
    wanted = {g: int(row[unit_column(g, POWERED_OFF)]) for g in {gid for gid, _ in schedule.group_modes}
              if unit_column(g, POWERED_OFF) in schedule.frame.columns}
    wanted = {g: n for g, n in wanted.items() if n > 0}
    if not wanted:
        return setpoints
    out = list(setpoints)
    for group_id, n in wanted.items():
        asleep = [i for i, sp in enumerate(out) if sp.group_id == group_id and sp.mode == SLEEP]
        asleep.sort(key=lambda i: (fleet.miners[out[i].miner_id].mode != POWERED_OFF, out[i].miner_id))
        for i in asleep[:n]:
            out[i] = dataclasses.replace(out[i], mode=POWERED_OFF, power_target_kw=0.0)
    return out


def first_interval_counts(schedule: Schedule) -> dict[tuple[str, str], int]:
    """Units per (group id, mode) in the schedule's first interval."""
    row = schedule.frame.iloc[0]
    return {(g, m): int(row[unit_column(g, m)]) for g, m in schedule.group_modes}


class ControlLoop(FastPathMixin, AncillaryIntakeMixin, LoopStatusMixin, HealthMixin, ComputeMixin,
                  ControlStateMixin):
    """One site's controller. Call ``tick(now)`` each interval (or let ``run`` do it)."""

    def __init__(self, profile: SiteProfile, *, forecaster: Forecaster, driver: MinerDriver,
                 publisher: Publisher | None = None, store: Any = None, recorder: Any = None,
                 fleet: FleetState | None = None, dr_book: DRBook | None = None,
                 solver: SolveRunner | None = None, config: LoopConfig = LoopConfig(),
                 meter: IntervalMeter | None = None, book: LimitsBook | None = None,
                 compute_driver: ComputeDriver | None = None, health: HealthBook | None = None) -> None:
        self.profile = profile
        self.forecaster = forecaster
        self.driver = driver
        self.publisher = publisher
        self.store = store
        self.emitted_kg: dict[str, float] = {}  # local day "YYYY-MM-DD" and month "YYYY-MM" -> kg, measured
        self.measured_import_kw: dict[pd.Timestamp, tuple[float, float]] = {}  # start -> (kW, hours), for DR reports
        self.meter = meter  # live sites: telemetry/renewable/noise of the running interval
        self._metered_interval: pd.Timestamp | None = None
        self.recorder = recorder  # control.records.AuditRecorder (or anything with record(kind, payload, at))
        self.config = config
        self.fleet = fleet or FleetState.from_profile(profile)
        # The one book of what limits the site (DR, managers, 4CP, holds); see control.limits.
        self.book = book or LimitsBook(profile, dr=dr_book or DRBook())
        self.solver = solver or SolveRunner(time_limit_s=config.solve_time_limit_s)
        self.guard = Guard(profile)
        self.count_guard = CountGuard(self.guard)  # the fast path's cuts in counts (issue 18)
        # Issue 15: a cut for a hard limit takes first what the awards in force do not need.
        self.count_guard.reserve_keep = lambda shed, now: reserve_keep_kw(
            self.profile, self.book.reserve_obligations_at(now), shed)
        self._plausibility = PlausibilityContext.from_profile(profile)
        # Miners that keep failing setpoints (or, with a verifying driver, do not follow them) are
        # marked unavailable, so the optimizer plans without them and /status names them.
        self.registry = MinerRegistry({m.miner_id: m.group_id for m in self.fleet.miners.values()}, max_mismatches=2)
        self.interval_minutes = profile.site.interval_minutes
        self.interval = timedelta(minutes=self.interval_minutes)
        self.periods = int(profile.site.horizon_hours * 60 / self.interval_minutes)
        self.fine_intervals = int(profile.site.fine_horizon_hours * 60 / self.interval_minutes)
        self.expiry_s = config.expiry_intervals * self.interval_minutes * 60
        self.measurements = Measurements()
        self.noise_offsets_db: dict[str, float] = {}
        self.noise_residuals_db: dict[str, deque[float]] = {}  # measured − modelled per reading (compliance margin)
        self.telemetry_kw: dict[str, float] = {}
        self._lock = threading.RLock()
        self._solve_lock = threading.Lock()
        self._replan = threading.Event()
        self.replan_reasons: list[str] = []
        self.last_report: TickReport | None = None
        self.last_good_tick: datetime | None = None
        self.state_failure: str | None = None  # the last failed commit of control state, until one succeeds
        self.transport_failure: str | None = None  # the last batch went nowhere (broker down), until one does
        self.simulated_inputs = False  # a simulator's telemetry or noise reading arrived (hashflex sim)
        self._has_site_meter = False  # once a meter reading arrives, telemetry no longer stands in for it
        self._last_meter_sample: datetime | None = None
        self.hashprice_usd_per_ph_day: float | None = None  # the forecast's, for the first interval of the last tick
        # AS deployment id -> performance (obligation, commanded and measured response, shortfall); issue 15.
        self.as_performance: dict[str, dict[str, Any]] = {}
        self.reserve_hold_short_kw: dict[pd.Timestamp, dict[str, float]] = {}  # interval -> product -> kW (issue 15)
        # Commands refused as implausible by the loop (every path: MQTT, dashboard, OpenADR): kind -> rule -> n.
        self.command_rejections: dict[str, dict[str, int]] = {}
        self._sender = SendQueue(self._apply_batch, synchronous=not config.async_sends)
        # GPU clusters (issue 16): the plan's first interval as power caps and suspend/resume, on their
        # own sender thread (a cluster agent's confirmations must not hold up the miners' batch).
        self.compute_driver = compute_driver
        self.compute_state: ComputeState | None = None
        self.compute_results: list[ComputeResult] = []
        # Fleet health (issue 17): telemetry in, findings out; the plan counts on no unit that must stop
        # (critical overheat, stalled fan, ignores setpoints) and runs hot ones only in lower modes.
        self.health = health if health is not None else HealthBook(health_ratings(profile), on_alert=self._alert)
        self._compute_sender = SendQueue(self._apply_compute, synchronous=not config.async_sends,
                                         name="hashflex-compute-sender")
        self._commitment_saved_at: datetime | None = None  # when the commitment state was last saved
        self._start_recorded = False  # the start config is recorded with the first record's time (see _record)
        self._record_lock = threading.Lock()  # a record's time and its place in the queue together
        self._last_record_at: datetime | None = None  # the last record's time: at_utc never goes back
        self._metered_from: pd.Timestamp | None = None  # the meter covers the interval from (first tick)
        self.counters: dict[str, int] = {"ticks": 0, "fast_path_actions": 0, "dr_accepted": 0, "dr_rejected": 0,
                                         "dr_duplicates": 0, "limits_accepted": 0, "limits_rejected": 0,
                                         "limits_duplicates": 0, "store_unavailable": 0, "setpoints_not_sent": 0,
                                         "fallback_schedules": 0, "setpoint_failures": 0,
                                         # plan stability: ticks that changed what runs, units moved by them, and
                                         # ticks that kept what runs (control.stability)
                                         "plan_changes": 0, "plan_churn_units": 0, "plan_holds": 0}

    @property
    def dr_book(self) -> DRBook:
        """The DR events of the limits book (read-only use; changes go through :meth:`handle_dr`)."""
        return self.book.dr

    # ------------------------------------------------------------------ the tick

    def limits_now(self, now: datetime) -> Limits:
        """The limits in force at ``now``, from the book, as the guard takes them."""
        return Limits(import_limits_kw=self.book.import_limits_at(now), noise_caps_dba=self.book.noise_caps_at(now))

    def tick(self, now: datetime, trigger: str = "interval") -> TickReport:
        """Plan from ``now`` and send the first interval's setpoints through the guard."""
        with self._solve_lock:
            start = interval_floor(now, self.interval_minutes)
            self._close_metered_interval(start, now)
            with self._lock:
                self._record_transitions(now)
                forecast = self.forecaster(now, start, self.periods)
                index = forecast.interval_start
                limit, sources = self.book.import_limits_over(index, self.interval)
                caps = self.book.noise_caps_over(index, self.interval)
                initial = group_states(self.fleet, self.profile, now)
                available = self._availability(len(index))
                margins = self.noise_margins_db(forecast.noise_margin_db)
                budgets = self.carbon_budgets(index, now)
                alert_days = set(self.book.four_cp_alert_days)
                hashprice = np.atleast_1d(np.asarray(
                    forecast.hashprice_usd_per_ph_day if forecast.hashprice_usd_per_ph_day is not None
                    else self.profile.economics.hashprice_usd_per_ph_day, dtype=float))
                self.hashprice_usd_per_ph_day = float(hashprice[0])  # what measurements are valued at
            problem = problem_from_profile(
                self.profile, index, forecast.price_usd_mwh, renewable_kw=forecast.renewable_kw,
                import_limit_kw=limit, import_limit_source=sources,
                intensity_kg_per_mwh=forecast.intensity_kg_per_mwh,
                hashprice_usd_per_ph_day=forecast.hashprice_usd_per_ph_day,
                units_available=available, initial=initial, noise_margin_db=margins,
                **self._health_derates(len(index)),
                carbon_budgets=budgets, four_cp_alert_days=alert_days,
                **self._reserve_inputs(index),
            )
            problem = apply_cap_overrides(problem, caps)
            schedule = self.solver.run(problem, self.fine_intervals)
            if schedule.status.value == "failed_fallback":
                self.counters["fallback_schedules"] += 1
            with self._lock:
                self._command_compute(schedule, now)  # first: the guard counts the GPUs' planned draw
                stable = self._stable_counts(problem, schedule, start)
                # Counts to miners on arrays (issue 18), preferring healthy units and giving hot ones the
                # lowest-power modes (issue 17); the guard then checks the batch as before.
                arrays = FleetArrays.from_fleet(self.fleet)
                score, hot = self._dispatch_hints(arrays)
                dispatched = plan_dispatch_arrays(stable.counts, arrays, now, self.expiry_s, health_score=score, hot=hot)
                checked, modes = self._guard_dispatched(schedule, dispatched, arrays, now)
                sent = self._dispatch(checked.batch, now, modes=modes)
            results = sent.result()  # outside the lock: the sender thread takes it to book the results
            with self._lock:
                report = TickReport(now, start, schedule, checked.batch, checked, results, tuple(forecast.fallbacks),
                                    self.solver.last_seconds, trigger, stable.reason)
                self.last_report = report
                self.last_good_tick = now
                self.counters["ticks"] += 1
            self._record_tick(report, forecast)
            return report

    def _guard_dispatched(self, schedule: Schedule, dispatched: ArrayDispatch, arrays: FleetArrays,
                          now: datetime) -> tuple[GuardResult, dict[str, np.ndarray] | None]:
        """The guard's check of a dispatched plan: the batch that goes to the drivers, and its modes
        per group as columns (None where the per-miner guard ran).

        Issue 18: the import and noise checks are decided in counts (`CountGuard`: vector work over
        (group, mode) classes, the per-miner guard's units, tests/test_guard_counts.py) and the
        setpoints are made once, after the cut. A site with groups the PDU can power off keeps the
        per-miner guard on the batch (the plan's ``off`` units draw nothing, which the count guard
        does not model)."""
        limits = self.limits_now(now)
        if self._pdu_site():
            setpoints = power_off_planned(schedule, dispatched.to_setpoints(arrays, now, self.expiry_s), self.fleet)
            return self.guard.check(setpoints, self.measurements, limits, now), None
        present = {g: len(a.miner_id) for g, a in arrays.groups.items()}
        cut = self.count_guard.check(dispatched.counts(arrays), self.measurements, limits, now, present=present)
        modes, actions = realise(cut, arrays, dispatched.modes) if cut.changed else (dispatched.modes, [])
        # The batch goes to the driver as columns (issue 18: no Setpoint per miner unless a driver
        # that needs them, or a reader, iterates it).
        return GuardResult(ArrayDispatch(modes).to_batch(arrays, now, self.expiry_s), actions), modes

    def _availability(self, periods: int) -> dict[str, np.ndarray]:
        usable = self.fleet.usable_counts(self._health_stopped())
        return {g.id: np.full(periods, usable.get(g.id, 0), dtype=int) for g in self.profile.miner_groups}

    def _dispatch(self, batch: list[Setpoint] | SetpointBatch, now: datetime, *,
                  modes: dict[str, np.ndarray] | None = None) -> Future:
        """Queue a full-fleet batch for the driver (call with the lock held). The fleet records it as
        intent now, so the next decision starts from it; a miner whose setpoint fails is reverted
        when the results come back. ``modes``: the batch as mode columns per group (`ArrayDispatch`
        form), recorded as vector work instead of miner by miner. Returns the future of the driver's
        results."""
        # Only a miner whose mode this batch changes can need reverting (issue 18: no copy per miner).
        before = self.fleet.apply_modes(modes, now) if modes is not None else self.fleet.apply_setpoints(batch, now)
        # The commitment state (min on/off across a restart) changes only when a mode does; run
        # hours, which change every tick, are saved at least hourly.
        if before or self._commitment_saved_at is None or now - self._commitment_saved_at >= timedelta(hours=1):
            self._save_commitment()
            self._commitment_saved_at = now
        return self._sender.submit((batch, now, before), self._after_send)

    def _stable_counts(self, problem: Problem, schedule: Schedule, start: pd.Timestamp) -> StabilityDecision:
        """The first interval's counts after the plan-stability rule (call with the lock held): what runs
        now (as dispatched, fast-path cuts included) is kept unless the new plan gains materially. The
        first tick of a process has nothing to keep (the restart cut already enforced what binds). A plan
        cached by the solver slot (the backtest's re-plan cadence) is valued as a fresh one; a planner that
        declares ``plan_stability = False`` (the backtest's baselines) is not held."""
        previous = self.fleet.counts() if self.last_report is not None else None
        fraction = self.config.replan_min_gain_fraction if getattr(self.solver, "plan_stability", True) else 0.0
        decision = hold_previous_counts(problem, schedule, previous, min_gain_fraction=fraction)
        if previous is not None and decision.counts != {k: previous.get(k, 0) for k in decision.counts}:
            self.counters["plan_changes"] += 1
            self.counters["plan_churn_units"] += sum(abs(decision.counts.get(k, 0) - previous.get(k, 0))
                                                     for k in set(decision.counts) | set(previous))
        if decision.held:
            self.counters["plan_holds"] += 1
        return decision

    def _apply_batch(self, job: tuple[list[Setpoint] | SetpointBatch, datetime, dict[str, Any]] | None
                     ) -> list[SetpointResult] | BatchResult:
        if job is None:  # a flush marker (flush_sends)
            return []
        if isinstance(job[0], SetpointBatch):  # columns: whole to a batch driver, else expanded per miner
            return send_batch(self.driver, job[0])
        return self.driver.apply(job[0])

    def _after_send(self, job: tuple[list[Setpoint] | SetpointBatch, datetime, dict[str, Any]],
                    results: list[SetpointResult] | BatchResult) -> None:
        batch, _, before = job
        if isinstance(results, BatchResult):
            # In counts (issue 18): a tally of the outcome codes, per miner only for those that failed.
            tally = results.tally()
            rows = results.rows(_NOT_TAKEN)
            failed = {sp.miner_id for sp, _ in rows}
            intended = {sp.miner_id: sp.mode for sp, _ in rows}
        else:
            # One pass over the results; the batch is looked at only for miners that failed (few).
            tally = {}
            failed = set()
            for r in results:
                status = r.status.value
                tally[status] = tally.get(status, 0) + 1
                if status not in ("applied", "unverified"):
                    failed.add(r.miner_id)
            intended = {sp.miner_id: sp.mode for sp in batch if sp.miner_id in failed} if failed else {}
        with self._lock:
            self.counters["setpoint_failures"] += sum(tally.get(s, 0) for s in ("rejected", "timeout", "unreachable"))
            # Transport faults (broker down, bad credentials, TLS): not the miners' fault, but visible.
            not_sent = tally.get("not_sent", 0)
            self.counters["setpoints_not_sent"] += not_sent
            self.transport_failure = (f"{not_sent} of {len(results)} setpoints of the last batch not sent "
                                      f"(driver transport down, or no miner subscribed yet)") if results and not_sent == len(results) else None
            if isinstance(results, BatchResult):
                self.registry.record_batch(results)
            else:
                self.registry.record(results)
            self._sync_availability()
            reverted = False
            for miner_id in failed:
                miner = self.fleet.miners.get(miner_id)
                # Revert only if nothing newer was queued for this miner since (intent unchanged).
                if miner is not None and miner.mode == intended.get(miner_id) and miner_id in before:
                    self.fleet.revert(miner_id, before[miner_id])
                    reverted = True
            if reverted:
                self._save_commitment()

    def _sync_availability(self) -> None:
        self.fleet.set_available_where(set(self.registry.unavailable()))

    def verify_setpoints(self, timeout_s: float = 0.0) -> None:
        """Record what telemetry confirms (drivers that can verify), before the next plan."""
        verify = getattr(self.driver, "verify", None)
        if verify is None:
            return
        try:
            results = verify(timeout_s)
        except Exception:  # verification is advisory; never stop the loop for it
            log.exception("setpoint verification failed")
            return
        with self._lock:
            self.registry.record(results, verification=True)
            self._sync_availability()

    def flush_sends(self, timeout_s: float = 30.0) -> None:
        """Wait until every batch queued so far has been through the driver."""
        with self._lock:
            marker = self._sender.submit(None, None) if not self._sender.synchronous else None
            compute_marker = (self._compute_sender.submit(None, None)
                              if not self._compute_sender.synchronous else None)
        for future in (marker, compute_marker):
            if future is not None:
                future.result(timeout=timeout_s)

    def close(self) -> None:
        """Finish queued batches and stop the sender thread (the solver is closed by its owner)."""
        self._sender.close()
        self._compute_sender.close()

    # ------------------------------------------------------------------ scheduling of ticks

    def request_replan(self, reason: str) -> None:
        """Ask the loop thread for a (debounced) re-plan; ``reason`` becomes the tick's trigger."""
        self.replan_reasons.append(reason)
        self._replan.set()

    def run(self, clock: Callable[[], datetime], stop: threading.Event) -> None:
        """Tick at every interval boundary, and (debounced) when a re-plan is requested; at least once a
        second, record AS deployments that just passed their sustained duration or backstop."""
        next_tick = clock()
        while not stop.is_set():
            now = clock()
            # AS deployments past their sustained duration or backstop are audited when it happens
            # (within a second), not at the next interval's tick (issue 15, H2 finding 3).
            self._as_deployment_transitions(now)
            if now >= next_tick:
                self.verify_setpoints()
                self.tick(now)
                boundary = interval_floor(now, self.interval_minutes) + pd.Timedelta(minutes=self.interval_minutes)
                next_tick = boundary.to_pydatetime()
            wait_s = max(0.0, (next_tick - clock()).total_seconds())
            if self._replan.wait(timeout=min(wait_s, 1.0)):
                time.sleep(self.config.replan_debounce_s)
                self._replan.clear()
                reasons, self.replan_reasons = self.replan_reasons, []
                self.tick(clock(), trigger="; ".join(dict.fromkeys(reasons)) or "re-plan")
