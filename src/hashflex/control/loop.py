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
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import numpy as np
import pandas as pd

from hashflex import audit as records
from hashflex.acoustics import compared_level_dba, modelled_laeq_dba, noise_margin_db
from hashflex.control.dispatch import plan_dispatch
from hashflex.control.dr import DRBook, DRDecision
from hashflex.control.fleet import SLEEP, FleetState
from hashflex.control.guard import Guard, GuardAction, GuardResult, Limits, Measurements
from hashflex.control.ladder import breakeven_ladder, under_water
from hashflex.control.limits import STORE_UNAVAILABLE, Hold, LimitsAck, LimitsBook
from hashflex.control.sender import SendQueue
from hashflex.plausibility import PlausibilityContext, check_plausible
from hashflex.forecast import FallbackCode, has_fallback
from hashflex.control.records import IntervalMeter
from hashflex.control.solver import SolveRunner
from hashflex.drivers.base import MinerDriver, MinerRegistry, Setpoint, SetpointResult
from hashflex.messages import (
    ASAckMessage,
    ASAwardMessage,
    ASDeployMessage,
    DRAckMessage,
    DREventMessage,
    LimitsChangeMessage,
    PriceMessage,
    NoiseMessage,
    RenewableMessage,
    TelemetryMessage,
)
from hashflex.optimize.problem import (
    CarbonBudget,
    GroupState,
    Problem,
    daily_carbon_budgets,
    four_cp_limits_kw,
    monthly_carbon_budgets,
    problem_from_profile,
)
from hashflex.optimize.schedule import Schedule, unit_column
from hashflex.profile import AS_PRODUCT_RULES, SiteProfile

log = logging.getLogger(__name__)


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
    def __call__(self, now: datetime, horizon_start: pd.Timestamp, periods: int) -> HorizonForecast: ...


class Publisher(Protocol):
    def publish_json(self, topic_suffix: str, payload: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    expiry_intervals: float = 2.0  # a setpoint outlives one missed tick, not two
    replan_debounce_s: float = 2.0
    solve_time_limit_s: float = 20.0
    stale_after_intervals: float = 3.0  # /healthz turns 503 when the last good tick is older
    async_sends: bool = False  # driver I/O on a sender thread (the daemon); False: on the caller's thread
    run_mode: str = "live"  # "live" | "simulate" | "backtest": recorded in the audit trail (reports label it)


@dataclass
class TickReport:
    at: datetime
    interval_start: pd.Timestamp
    schedule: Schedule | None
    batch: list[Setpoint]
    guard: GuardResult | None
    results: list[SetpointResult]
    fallbacks: tuple[str, ...]
    solve_seconds: float
    trigger: str


def interval_floor(now: datetime, minutes: int) -> pd.Timestamp:
    return pd.Timestamp(now).tz_convert("UTC").floor(f"{minutes}min")


def group_states(fleet: FleetState, profile: SiteProfile, now: datetime) -> dict[str, GroupState]:
    """Initial state per group for the solve, from the fleet as dispatched: units on, and units
    still held on (min-on) or off (min-off) with the hours they remain held."""
    states = {}
    for group in profile.miner_groups:
        miners = fleet.in_group(group.id)
        on = [m for m in miners if m.running]
        held_on: dict[float, int] = {}
        held_off: dict[float, int] = {}
        for miner in miners:
            if miner.running and miner.last_start is not None and group.min_on_minutes:
                left_h = (miner.last_start + timedelta(minutes=group.min_on_minutes) - now).total_seconds() / 3600
                if left_h > 0:
                    held_on[round(left_h, 4)] = held_on.get(round(left_h, 4), 0) + 1
            if not miner.running and miner.last_stop is not None and group.min_off_minutes:
                left_h = (miner.last_stop + timedelta(minutes=group.min_off_minutes) - now).total_seconds() / 3600
                if left_h > 0:
                    held_off[round(left_h, 4)] = held_off.get(round(left_h, 4), 0) + 1
        load_kw = sum(fleet.power_kw(group.id, m.mode) for m in miners if m.available)
        states[group.id] = GroupState(units_on=len(on), load_kw=load_kw,
                                      must_stay_on=tuple(sorted(held_on.items())),
                                      must_stay_off=tuple(sorted(held_off.items())))
    return states


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


def first_interval_counts(schedule: Schedule) -> dict[tuple[str, str], int]:
    row = schedule.frame.iloc[0]
    return {(g, m): int(row[unit_column(g, m)]) for g, m in schedule.group_modes}


class ControlLoop:
    """One site's controller. Call ``tick(now)`` each interval (or let ``run`` do it)."""

    def __init__(self, profile: SiteProfile, *, forecaster: Forecaster, driver: MinerDriver,
                 publisher: Publisher | None = None, store: Any = None, recorder: Any = None,
                 fleet: FleetState | None = None, dr_book: DRBook | None = None,
                 solver: SolveRunner | None = None, config: LoopConfig = LoopConfig(),
                 meter: IntervalMeter | None = None, book: LimitsBook | None = None) -> None:
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
        self._sender = SendQueue(self._apply_batch, synchronous=not config.async_sends)
        self._start_recorded = False  # the start config is recorded with the first record's time (see _record)
        self.counters: dict[str, int] = {"ticks": 0, "fast_path_actions": 0, "dr_accepted": 0, "dr_rejected": 0,
                                         "dr_duplicates": 0, "limits_accepted": 0, "limits_rejected": 0,
                                         "limits_duplicates": 0, "store_unavailable": 0, "setpoints_not_sent": 0,
                                         "fallback_schedules": 0, "setpoint_failures": 0}

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
            self._close_metered_interval(start)
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
                carbon_budgets=budgets, four_cp_alert_days=alert_days,
                **self._reserve_inputs(index),
            )
            problem = apply_cap_overrides(problem, caps)
            schedule = self.solver.run(problem, self.fine_intervals)
            if schedule.status.value == "failed_fallback":
                self.counters["fallback_schedules"] += 1
            with self._lock:
                result = plan_dispatch(first_interval_counts(schedule), self.fleet, now, self.expiry_s)
                checked = self.guard.check(result.setpoints, self.measurements, self.limits_now(now), now)
                sent = self._dispatch(checked.batch, now)
            results = sent.result()  # outside the lock: the sender thread takes it to book the results
            with self._lock:
                report = TickReport(now, start, schedule, checked.batch, checked, results, tuple(forecast.fallbacks),
                                    self.solver.last_seconds, trigger)
                self.last_report = report
                self.last_good_tick = now
                self.counters["ticks"] += 1
            self._record_tick(report, forecast)
            return report

    def _availability(self, periods: int) -> dict[str, np.ndarray]:
        return {g.id: np.full(periods, sum(1 for m in self.fleet.in_group(g.id) if m.available), dtype=int)
                for g in self.profile.miner_groups}

    def _dispatch(self, batch: list[Setpoint], now: datetime) -> Future:
        """Queue a full-fleet batch for the driver (call with the lock held). The fleet records it as
        intent now, so the next decision starts from it; a miner whose setpoint fails is reverted
        when the results come back. Returns the future of the driver's results."""
        before = {sp.miner_id: dataclasses.replace(self.fleet.miners[sp.miner_id]) for sp in batch}
        self.fleet.apply_setpoints(batch, now)
        self._save_commitment()
        return self._sender.submit((batch, now, before), self._after_send)

    def _apply_batch(self, job: tuple[list[Setpoint], datetime, dict[str, Any]] | None) -> list[SetpointResult]:
        if job is None:  # a flush marker (flush_sends)
            return []
        return self.driver.apply(job[0])

    def _after_send(self, job: tuple[list[Setpoint], datetime, dict[str, Any]],
                    results: list[SetpointResult]) -> None:
        batch, _, before = job
        intended = {sp.miner_id: sp.mode for sp in batch}
        failed = {r.miner_id for r in results if r.status.value not in ("applied", "unverified")}
        with self._lock:
            self.counters["setpoint_failures"] += sum(
                1 for r in results if r.status.value in ("rejected", "timeout", "unreachable"))
            # Transport faults (broker down, bad credentials, TLS): not the miners' fault, but visible.
            not_sent = sum(1 for r in results if r.status.value == "not_sent")
            self.counters["setpoints_not_sent"] += not_sent
            self.transport_failure = (f"{not_sent} of {len(results)} setpoints of the last batch not sent "
                                      f"(driver transport down)") if results and not_sent == len(results) else None
            self.registry.record(results)
            self._sync_availability()
            reverted = False
            for miner_id in failed:
                miner = self.fleet.miners.get(miner_id)
                # Revert only if nothing newer was queued for this miner since (intent unchanged).
                if miner is not None and miner.mode == intended.get(miner_id) and miner_id in before:
                    old = before[miner_id]
                    miner.mode, miner.last_start, miner.last_stop = old.mode, old.last_start, old.last_stop
                    reverted = True
            if reverted:
                self._save_commitment()

    def _save_commitment(self) -> None:
        """Persist which miners run and their last start/stop (min on/off across a restart)."""
        if self.store is None:
            return
        try:
            self.store.set_meta("fleet", self.fleet.to_dict())
        except Exception:  # noqa: BLE001 - a closed or failing store must not stop control
            log.exception("could not save the commitment state")

    def _sync_availability(self) -> None:
        down = self.registry.unavailable()
        for miner in self.fleet.miners.values():
            available = miner.miner_id not in down
            if miner.available != available:
                self.fleet.set_available(miner.miner_id, available)

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
        if marker is not None:
            marker.result(timeout=timeout_s)

    def close(self) -> None:
        """Finish queued batches and stop the sender thread (the solver is closed by its owner)."""
        self._sender.close()

    # ------------------------------------------------------------------ control state

    def _commit_book(self, trial: LimitsBook) -> None:
        """Make ``trial`` durable (raises StoreUnavailable); without a store there is nothing to do."""
        if self.store is not None:
            self.store.commit_state("limits_book", trial.to_dict())
        self.state_failure = None

    def _state_failed(self, exc: Exception) -> None:
        self.state_failure = str(exc)
        self.counters["store_unavailable"] += 1
        log.error("control state could not be committed: %s", exc)

    def restore(self, now: datetime) -> Future:
        """After a restart: record the state in force and re-assert it at once, before any solve.

        The saved fleet (what was commanded before the restart) is cut to the limits in force
        now and sent as one full batch with fresh expiry, whether or not the cut changed anything:
        the miners' last setpoints may be about to expire, and the new process cannot know what
        reached them. Returns the future of the driver's results."""
        with self._lock:
            self._record("restart", lambda: {"limits": self.book.summary(now),
                                             "units_running": sum(1 for m in self.fleet.miners.values() if m.running)},
                         now)
            self._record_transitions(now)
            imports = self.book.import_limits_at(now)
            limit = min(imports.values(), default=math.inf)
            batch = self.fleet.as_setpoints(now, self.expiry_s)
            result = self.guard.emergency_dr_cut(batch, limit, self.measurements, now=now)
            if result.changed:
                self.counters["fast_path_actions"] += 1
                self._record_guard(result, now, None)
            return self._dispatch(result.batch, now)

    # ------------------------------------------------------------------ fast path (MQTT thread)

    def on_message(self, message: Any, now: datetime) -> None:
        """Route an accepted inbound message; DR starts and noise exceedances act at once."""
        if getattr(message, "simulated", False) and not self.simulated_inputs:
            self.simulated_inputs = True  # from now on, every measurement is labelled simulated
            log.warning("simulated inputs (%s): measurements are labelled SIMULATED", type(message).__name__)
        try:
            if isinstance(message, DREventMessage):
                self.handle_dr(message, now)
            elif isinstance(message, NoiseMessage):
                self.handle_noise(message, now)
            elif isinstance(message, RenewableMessage):
                with self._lock:
                    self.measurements = _replace(self.measurements, renewable_kw=message.power_kw, at=message.timestamp)
                if self.meter is not None:
                    self.meter.renewable(message.power_kw)
            elif isinstance(message, TelemetryMessage):
                with self._lock:
                    self.telemetry_kw[message.miner_id] = message.power_kw
                    if not self._has_site_meter:  # the miners' own reports stand in for a meter
                        renewable = self.measurements.renewable_kw or 0.0
                        self._sample_meter(max(sum(self.telemetry_kw.values()) - renewable, 0.0),
                                           message.timestamp, "telemetry", now)
                if self.meter is not None:
                    self.meter.telemetry(message.miner_id, message.power_kw, message.hashrate_th_s)
            elif isinstance(message, LimitsChangeMessage):
                self.handle_limits(message, now)
            elif isinstance(message, PriceMessage):
                self.handle_price(message, now)
            elif isinstance(message, ASAwardMessage):
                self.handle_as_award(message, now)
            elif isinstance(message, ASDeployMessage):
                self.handle_as_deploy(message, now)
        except Exception:  # a bad message must never stop the controller
            log.exception("handling %s failed", type(message).__name__)

    def on_rejection(self, rejection: Any, now: datetime) -> None:
        """An inbound payload failed validation or plausibility (``messages.Rejection``). A DR event
        or limits change is recorded in the audit trail with the reason, and a DR event whose id can
        be read gets a ``rejected`` ack, so the issuer is not left waiting."""
        kind = getattr(rejection, "kind", None)
        if kind not in ("dr", "limits"):
            return
        try:
            preview = rejection.payload
            self._record("dr_event" if kind == "dr" else "limits_change", lambda: {
                "accepted": False, "reason": rejection.reason, "rule": rejection.rule, "payload_preview": preview,
                "received_at": now.isoformat()}, now)
            self.counters["dr_rejected" if kind == "dr" else "limits_rejected"] += 1
            event_id = _json_field(preview, "event_id")
            if kind == "dr" and event_id is not None:
                number = _json_field(preview, "modification_number")
                ack = DRAckMessage(event_id=event_id, modification_number=int(number) if number and number.isdigit() else 0,
                                   status="rejected", reason=rejection.reason[:500], acked_at=now)
                self._publish("out/dr/ack", ack.model_dump(mode="json"))
        except Exception:  # noqa: BLE001 - answering a bad message must never stop the controller
            log.exception("could not answer a rejected %s message", kind)

    def handle_dr(self, message: DREventMessage, now: datetime) -> DRAckMessage:
        """Decide one DR message, commit, acknowledge, cut at once if it binds now.

        The ack says ``accepted`` only once the book's new state is committed. A redelivery of a
        message already answered gets the same ack again (counted as a duplicate). If the commit
        fails the ack is ``rejected`` with reason ``store_unavailable: ...`` and a more restrictive
        limit is held in memory anyway (when in doubt, curtail)."""
        with self._lock:
            implausible = self._implausible(message, now)
            if implausible is not None:
                ack = DRDecision(message.event_id, message.modification_number, False, implausible).to_ack(now)
                self.counters["dr_rejected"] += 1
                self._publish("out/dr/ack", ack.model_dump(mode="json"))
                self._record("dr_event", lambda: records.dr_event_payload(message, False, implausible, None, now), now)
                self._record("dr_ack", lambda: records.dr_ack_payload(ack), now)
                return ack
            repeat = self.book.answered_dr(message)
            if repeat is not None:
                self.counters["dr_duplicates"] += 1
                self._publish("out/dr/ack", repeat.model_dump(mode="json"))
                self._record("dr_event", lambda: {**records.dr_event_payload(
                    message, repeat.status == "accepted", repeat.reason, None, now), "duplicate": True}, now)
                return repeat
            trial, decision, ack = self.book.decide_dr(message, now)
            held = None
            try:
                self._commit_book(trial)
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable, or any failure to persist
                self._state_failed(exc)
                if decision.accepted:
                    decision = DRDecision(message.event_id, message.modification_number, False,
                                          f"{STORE_UNAVAILABLE}: {exc}")
                    ack = decision.to_ack(now)
                    held = self.book.hold_dr(message, now)
                # a rejection not remembered is simply decided again on redelivery
            else:
                self.book.adopt(trial)
            self.counters["dr_accepted" if decision.accepted else "dr_rejected"] += 1
            self._publish("out/dr/ack", ack.model_dump(mode="json"))
            self._record("dr_event", lambda: {**records.dr_event_payload(
                message, decision.accepted, decision.reason, decision.limit_kw, now),
                **({"held_kw": held.limit_kw} if held else {})}, now)
            self._record("dr_ack", lambda: records.dr_ack_payload(ack), now)
            if decision.accepted or held is not None:
                self._cut_to_limit_now(now, f"DR event {message.event_id}", event_id=message.event_id)
        if decision.accepted or held is not None:
            self.request_replan(f"DR event {message.event_id}")
        return ack

    def _publish(self, topic_suffix: str, payload: dict[str, Any]) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish_json(topic_suffix, payload)
        except Exception:  # noqa: BLE001 - a publish failure must not undo a committed decision
            log.exception("could not publish %s", topic_suffix)

    def _cut_to_limit_now(self, now: datetime, why: str, event_id: str | None = None) -> None:
        """Fast path: cut the fleet's batch to the lowest import limit in force now (no solve)."""
        imports = self.book.import_limits_at(now)
        limit = min(imports.values(), default=math.inf)
        if not math.isfinite(limit):
            return
        batch = self.fleet.as_setpoints(now, self.expiry_s)
        result = self.guard.emergency_dr_cut(batch, limit, self.measurements, now=now)
        if result.changed:
            self.counters["fast_path_actions"] += 1
            self._dispatch(result.batch, now)
            log.warning("%s: fast path cut load to %.0f kW: %s", why, limit, "; ".join(a.reason for a in result.actions))
            self._record_guard(result, now, event_id)

    def handle_noise(self, message: NoiseMessage, now: datetime) -> None:
        receptor = next((r for r in self.profile.receptors if r.id == message.receptor_id), None)
        if receptor is None:
            return
        if self.meter is not None:
            self.meter.noise_reading(receptor.id, message.laeq_dba, message.averaging_s)
        with self._lock:
            cap = receptor.cap_at(pd.Timestamp(message.timestamp).tz_convert(self.profile.tz).to_pydatetime())
            cap = min(cap, self.book.noise_caps_at(now).get(receptor.id, math.inf))
            modelled = self.modelled_level_dba(receptor.id)
            measured = compared_level_dba(message.laeq_dba, receptor.background_dba, receptor.cap_applies_to)
            # Calibration: how far the real level sits above the model (only ever tightens the cap).
            # A silent site (modelled -inf) or a reading at the background says nothing about the model.
            if math.isfinite(modelled) and math.isfinite(measured):
                offset = self.noise_offsets_db.get(receptor.id, 0.0)
                self.noise_offsets_db[receptor.id] = max(0.0, 0.8 * offset + 0.2 * (measured - modelled))
                self.noise_residuals_db.setdefault(receptor.id, deque(maxlen=5_000)).append(measured - modelled)
            self.measurements = _replace(self.measurements,
                                         noise_dba={**self.measurements.noise_dba, receptor.id: message.laeq_dba},
                                         noise_offset_db=dict(self.noise_offsets_db))
            if measured <= cap:
                return
            self._cut_noise_now(receptor.id, measured, cap, now)
        self.request_replan(f"noise over cap at {receptor.id}")

    def handle_price(self, message: PriceMessage, now: datetime) -> bool:
        """A real-time price for the interval in progress (an SCED 5-minute LMP, or a 15-minute
        settlement price) at the site's settlement point: sleep at once every running unit whose
        breakeven it exceeds (:mod:`hashflex.control.ladder`), then re-plan. Returns True if it cut.

        Day-ahead prices, other settlement points and prices for other intervals (older than the
        last 5 minutes, or in the future) only inform the forecast."""
        if (message.market != "RT" or message.settlement_point != self.profile.site.settlement_point
                or not message.interval_start <= now < message.interval_end + timedelta(minutes=5)):
            return False
        with self._lock:
            ladder = breakeven_ladder(self.profile, hashprice_usd_per_ph_day=self.hashprice_usd_per_ph_day)
            losing = under_water(ladder, message.price_usd_mwh)
            batch = self.fleet.as_setpoints(now, self.expiry_s)
            cut = [dataclasses.replace(sp, mode=SLEEP, power_target_kw=self.fleet.power_kw(sp.group_id, SLEEP))
                   if (sp.group_id, sp.mode) in losing else sp for sp in batch]
            stopped = tuple(sp.miner_id for sp, new in zip(batch, cut, strict=True) if new.mode != sp.mode)
            if not stopped:
                return False
            self.counters["fast_path_actions"] += 1
            self._dispatch(cut, now)
            worst = max(losing.values())
            action = GuardAction("price_ladder_cut", f"real-time price {message.price_usd_mwh:.2f} $/MWh for "
                                 f"{message.interval_start.isoformat()} is above the breakeven of "
                                 f"{len(losing)} group mode(s) (highest {worst:.2f} $/MWh): "
                                 f"{len(stopped)} unit(s) to sleep", stopped)
            self._record_guard(GuardResult(cut, [action]), now, None)
            log.warning("price ladder: %s", action.reason)
        self.request_replan(f"real-time price {message.price_usd_mwh:.0f} $/MWh")
        return True

    def handle_meter(self, import_kw: float, measured_at: datetime, now: datetime) -> bool:
        """A site meter reading (revenue or check meter, ``drivers.modbus_meter``): when fresh and
        over the lowest import limit in force, cut more until the excess is gone — the meter is the
        guard's truth over the model. A stale or implausible reading is not believed (the guard
        falls back to the model). Returns True if it cut."""
        with self._lock:
            self._has_site_meter = True
            self._sample_meter(import_kw, measured_at, "site meter", now)
            imports = self.book.import_limits_at(now)
            limit = min([self.profile.grid.import_limit_kw, *imports.values()])
            self.measurements = _replace(self.measurements, import_kw=import_kw)
            if self.as_performance:
                self.measure_as_deployments(import_kw, measured_at)
            result = self.guard.import_over_limit_cut(import_kw, limit, self.fleet.as_setpoints(now, self.expiry_s),
                                                      measured_at=measured_at, now=now, measurements=self.measurements)
            if not result.changed:
                return False
            self.counters["fast_path_actions"] += 1
            self._dispatch(result.batch, now)
            self._record_guard(result, now, None)
        self.request_replan("metered import over the limit")
        return True

    def _sample_meter(self, import_kw: float, measured_at: datetime, source: str, now: datetime) -> None:
        """While a DR event is in force, record the metered import at most once a second
        (``meter_sample``), so the report measures when the load crossed the limit in seconds."""
        if not self.book.dr.active_ids(now):
            return
        if self._last_meter_sample is not None and (measured_at - self._last_meter_sample).total_seconds() < 1.0:
            return
        self._last_meter_sample = measured_at
        self._record("meter_sample", lambda: {"at": measured_at.isoformat(), "import_kw": round(float(import_kw), 3),
                                              "source": source}, now)

    def _cut_noise_now(self, receptor_id: str, level_dba: float, cap_dba: float, now: datetime) -> bool:
        batch = self.fleet.as_setpoints(now, self.expiry_s)
        result = self.guard.noise_exceedance_cut(receptor_id, level_dba, cap_dba, batch)
        if result.changed:
            self.counters["fast_path_actions"] += 1
            self._dispatch(result.batch, now)
            self._record_guard(result, now, None)
        return result.changed

    def _enforce_noise_caps_now(self, now: datetime) -> None:
        """A cap just tightened: compare each receptor's level now (the last reading, or the model
        with its margin and calibration when no reading is known) with the cap in force, and cut."""
        overrides = self.book.noise_caps_at(now)
        local = pd.Timestamp(now).tz_convert(self.profile.tz).to_pydatetime()
        for receptor in self.profile.receptors:
            if receptor.id not in overrides:
                continue
            cap = min(receptor.cap_at(local), overrides[receptor.id])
            modelled = self.modelled_level_dba(receptor.id)
            margin = self.noise_margins_db()[receptor.id]
            level = modelled + margin if math.isfinite(modelled) else -math.inf
            reading = self.measurements.noise_dba.get(receptor.id)
            if reading is not None:
                level = max(level, compared_level_dba(reading, receptor.background_dba, receptor.cap_applies_to))
            if level > cap:
                self._cut_noise_now(receptor.id, level, cap, now)

    def handle_limits(self, message: LimitsChangeMessage, now: datetime) -> LimitsAck:
        """Decide a site manager's limits change, commit, acknowledge on ``out/limits/ack`` and
        enforce at once: the import limit through the fast path, a noise cap against the level now.
        Same durability and idempotency rules as :meth:`handle_dr`."""
        with self._lock:
            implausible = self._implausible(message, now)
            if implausible is not None:
                ack = LimitsAck(self.book.limits_change_id(message), message.issuer, message.issued_at, "rejected",
                                implausible, now)
                self.counters["limits_rejected"] += 1
                self._publish("out/limits/ack", ack.to_json())
                self._record("limits_change", lambda: {"change": message.model_dump(mode="json"),
                                                       "ack": ack.to_json()}, now)
                return ack
            repeat = self.book.answered_limits(message)
            if repeat is not None:
                self.counters["limits_duplicates"] += 1
                self._publish("out/limits/ack", repeat.to_json())
                self._record("limits_change", lambda: {"change": message.model_dump(mode="json"),
                                                       "ack": repeat.to_json(), "duplicate": True}, now)
                return repeat
            trial, ack = self.book.decide_limits(message, now)
            held = None
            try:
                self._commit_book(trial)
            except Exception as exc:  # noqa: BLE001
                self._state_failed(exc)
                if ack.accepted:
                    ack = dataclasses.replace(ack, status="rejected", reason=f"{STORE_UNAVAILABLE}: {exc}")
                    held = self.book.hold_limits(message, now)
            else:
                self.book.adopt(trial)
            self.counters["limits_accepted" if ack.accepted else "limits_rejected"] += 1
            if not ack.accepted:
                log.warning("limits change from %r refused: %s", message.issuer, ack.reason)
            self._publish("out/limits/ack", ack.to_json())
            self._record("limits_change", lambda: {"change": message.model_dump(mode="json"), "ack": ack.to_json(),
                                                   **({"held_kw": held.limit_kw} if held else {})}, now)
            if ack.accepted:
                self._record("config", lambda: {**self._config_payload(f"limits change by {message.issuer}"),
                                                "limits_change": message.model_dump(mode="json")}, now)
            if ack.accepted or held is not None:
                self._cut_to_limit_now(now, f"limits change by {message.issuer}")
                self._enforce_noise_caps_now(now)
        if ack.accepted or held is not None:
            self.request_replan(f"limits changed by {message.issuer}")
        return ack

    # ------------------------------------------------------------------ ancillary services (issue 15)

    def _reserve_inputs(self, index: pd.DatetimeIndex) -> dict[str, Any]:
        """The awards in force as the plan's reserve obligations (kW per product, net of what is
        deployed) with their award prices; nothing without an ancillary section or an award."""
        if self.profile.ancillary is None or not self.book.as_awards:
            return {}
        obligations = self.book.reserve_obligations_over(index, self.interval)
        prices = {product: np.zeros(len(index)) for product in obligations}
        for award in self.book.as_awards.values():
            if award.get("price_usd_mw_h") is None:
                continue
            start, end = pd.Timestamp(award["start"]), pd.Timestamp(award["end"])
            inside = np.asarray((index < end) & (index + self.interval > start))
            prices[award["product"]][inside] = float(award["price_usd_mw_h"])
        return {"as_award_kw": obligations, "as_price_usd_mw_h": prices}

    def _decide_commit_ack(self, message: ASAwardMessage | ASDeployMessage, now: datetime,
                           decide: Callable[[], tuple[LimitsBook, ASAckMessage]]) -> tuple[ASAckMessage, bool]:
        """decide → commit → ack, as :meth:`handle_dr`: ``accepted`` only once committed; a redelivery
        gets its first answer again. Returns (ack, whether it is new and accepted). Call with the lock."""
        repeat = self.book.answered_as(message)
        if repeat is not None:
            self.counters["as_duplicates"] = self.counters.get("as_duplicates", 0) + 1
            self._publish("out/as/ack", repeat.model_dump(mode="json"))
            return repeat, False
        trial, ack = decide()
        try:
            self._commit_book(trial)
        except Exception as exc:  # noqa: BLE001 - StoreUnavailable, or any failure to persist
            self._state_failed(exc)
            if ack.status == "accepted":
                ack = ack.model_copy(update={"status": "rejected", "reason": f"{STORE_UNAVAILABLE}: {exc}"})
        else:
            self.book.adopt(trial)
        counter = "as_accepted" if ack.status == "accepted" else "as_rejected"
        self.counters[counter] = self.counters.get(counter, 0) + 1
        self._publish("out/as/ack", ack.model_dump(mode="json"))
        self._record(message.kind, lambda: {"message": message.model_dump(mode="json"),
                                            "ack": ack.model_dump(mode="json")}, now)
        return ack, ack.status == "accepted"

    def _implausible(self, message: Any, now: datetime) -> str | None:
        """The reason a command is out of the plausibility bounds (``hashflex.plausibility``, the
        same table the MQTT ingest applies to observations), or None. Every path that hands the loop
        a command — MQTT, the dashboard's limits API, OpenADR — is checked here alike."""
        rejection = check_plausible(message, now, self._plausibility)
        return None if rejection is None else rejection.reason

    def _refuse_as(self, message: Any, kind: str, message_id: str, now: datetime) -> ASAckMessage | None:
        implausible = self._implausible(message, now)
        if implausible is None:
            return None
        ack = ASAckMessage(message_id=message_id, kind=kind, status="rejected", reason=implausible[:500], acked_at=now)
        self._publish("out/as/ack", ack.model_dump(mode="json"))
        return ack

    def handle_as_award(self, message: ASAwardMessage, now: datetime) -> ASAckMessage:
        """An AS award from the QSE: decide, commit, acknowledge on ``out/as/ack``, re-plan so the
        plan holds the awarded reserve as a minimum running load."""
        refused = self._refuse_as(message, "as_award", message.award_id, now)
        if refused is not None:
            return refused
        with self._lock:
            ack, fresh = self._decide_commit_ack(message, now, lambda: self.book.decide_as_award(message, now))
        if fresh:
            self.request_replan(f"AS award {message.award_id}")
        return ack

    def handle_as_deploy(self, message: ASDeployMessage, now: datetime) -> ASAckMessage:
        """An AS deployment: an import limit of (modelled import now − deployed_kw) in the book,
        committed, acknowledged, and cut at once by the fast path (every product: RRS must be, and
        acting now meets any later deadline). What the cut achieves is measured against the
        obligation (:attr:`as_performance`: shortfall when the cut cannot reach the limit); a
        store failure holds the cut anyway (when in doubt, curtail) while the ack says rejected."""
        refused = self._refuse_as(message, "as_deploy", message.deployment_id, now)
        if refused is not None:
            return refused
        with self._lock:
            batch = self.fleet.as_setpoints(now, self.expiry_s)
            baseline_kw = self.guard.net_import_kw(batch, self.measurements.auxiliary_kw)
            ack, fresh = self._decide_commit_ack(
                message, now, lambda: self.book.decide_as_deploy(message, baseline_kw, now))
            if message.recalled:
                pass
            elif fresh or (ack.status == "rejected" and (ack.reason or "").startswith(STORE_UNAVAILABLE)):
                limit = max(baseline_kw - message.deployed_kw, 0.0)
                if not fresh:  # accepted but not durable: hold the cut in memory all the same
                    sustain = timedelta(hours=float(AS_PRODUCT_RULES[message.product]["sustain_h"]))
                    self.book.holds[f"AS:{message.deployment_id}"] = Hold(
                        f"AS:{message.deployment_id}", limit, message.issued_at, message.issued_at + sustain)
                self._cut_to_limit_now(now, f"AS {message.product} deployment {message.deployment_id}")
                after = self.guard.net_import_kw(self.fleet.as_setpoints(now, self.expiry_s),
                                                 self.measurements.auxiliary_kw)
                self.as_performance[message.deployment_id] = deployment_performance(
                    message, baseline_kw, limit, after, now, ack.deadline)
                self._record("as_performance", lambda: dict(self.as_performance[message.deployment_id]), now)
        if fresh:
            self.request_replan(f"AS deployment {message.deployment_id}")
        return ack

    def measure_as_deployments(self, import_kw: float, measured_at: datetime) -> None:
        """A measured site import (meter, or telemetry summed): the first reading at or under a
        deployment's limit is its response time; the shortfall is what the last reading before the
        deadline is still over the limit."""
        with self._lock:
            for performance in self.as_performance.values():
                issued = datetime.fromisoformat(performance["issued_at"])
                deadline = datetime.fromisoformat(performance["deadline"])
                if measured_at < issued:
                    continue
                if measured_at <= deadline:
                    performance["measured_import_kw"] = import_kw
                    performance["measured_shortfall_kw"] = max(import_kw - performance["limit_kw"], 0.0)
                if import_kw <= performance["limit_kw"] + 1e-6 and performance.get("measured_response_s") is None:
                    performance["measured_response_s"] = (measured_at - issued).total_seconds()
                    performance["measured_within_deadline"] = measured_at <= deadline

    def reload_profile(self, profile: SiteProfile, now: datetime) -> str:
        """Swap in an edited profile (SIGHUP). Limits, caps and economics may change at runtime; the
        fleet itself (groups, units) may not, since miners are addressed by it: that needs a restart."""
        fleet_shape = lambda p: [(g.id, g.units) for g in p.miner_groups]  # noqa: E731
        if fleet_shape(profile) != fleet_shape(self.profile):
            return "refused: miner groups or unit counts changed; restart the daemon to re-address the fleet"
        with self._lock:
            self.profile = profile
            self.book.profile = profile
            self.guard = Guard(profile)
            self._plausibility = PlausibilityContext.from_profile(profile)
            self._record("config", lambda: self._config_payload("change"), now)
        self.request_replan("profile reloaded")
        return "reloaded"

    # ------------------------------------------------------------------ scheduling of ticks

    def request_replan(self, reason: str) -> None:
        self.replan_reasons.append(reason)
        self._replan.set()

    def run(self, clock: Callable[[], datetime], stop: threading.Event) -> None:
        """Tick at every interval boundary, and (debounced) when a re-plan is requested."""
        next_tick = clock()
        while not stop.is_set():
            now = clock()
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

    # ------------------------------------------------------------------ records and status

    def _record_transitions(self, now: datetime) -> None:
        """DR status changes and expired manager limits since the last call: recorded, committed
        (a failed commit is shown in /status; the statuses follow from time and are recomputed after
        a restart), and a DR start cut through the fast path."""
        transitions = self.book.dr.transitions(now)
        expired = self.book.expire(now)
        for held in expired:
            self._record("limits_expired", lambda h=held: h.to_json(), now)
        for transition in transitions:
            self._record("dr_transition", lambda t=transition: {
                "event_id": t.event_id, "transition": t.kind, "status": t.status,
                "limit_kw": None if not math.isfinite(t.limit_kw) else t.limit_kw}, now)
        if (transitions or expired) and self.store is not None:
            try:
                self._commit_book(self.book)
            except Exception as exc:  # noqa: BLE001
                self._state_failed(exc)
        for transition in transitions:
            if transition.kind == "activated":
                self._cut_to_limit_now(now, f"DR event {transition.event_id} started", event_id=transition.event_id)

    def _record_tick(self, report: TickReport, forecast: HorizonForecast) -> None:
        status = self.status(report.at)
        if self.publisher is not None:
            self.publisher.publish_json("out/status", status)
            if report.schedule is not None:
                head = report.schedule.frame.head(8).reset_index()
                head["interval_start"] = head["interval_start"].map(lambda ts: ts.isoformat())
                head["interval_end"] = head["interval_end"].map(lambda ts: ts.isoformat())
                self.publisher.publish_json("out/schedule", {
                    "status": report.schedule.status.value, "created_at": report.at.isoformat(),
                    "intervals": head.replace([np.inf, -np.inf], None).to_dict(orient="records")})
        if report.schedule is not None:
            self._record("schedule", lambda: records.schedule_payload(report.schedule), report.at)
            self._record("setpoints", lambda: records.setpoints_payload(report.batch, source="schedule"), report.at)
            imports = self.book.import_limits_at(report.at)
            binding = min(imports.items(), key=lambda kv: kv[1])[0] if imports else ""
            event_id = binding[3:] if binding.startswith("DR:") else None
            for action in report.guard.actions if report.guard else []:
                self._record("guard_action", lambda a=action: records.guard_action_payload(
                    a.kind, a.reason, a.miners, event_id=event_id if a.kind == "import_curtail" else None), report.at)
        if self.store is not None and report.schedule is not None:
            first = report.schedule.frame.iloc[0]
            self.store.put_schedule({"status": report.schedule.status.value, "gap": report.schedule.info.gap,
                                     "trigger": report.trigger, "fallbacks": list(forecast.fallbacks),
                                     "first_interval": {k: (None if isinstance(v, float) and not math.isfinite(v) else
                                                            (v.isoformat() if hasattr(v, "isoformat") else v))
                                                        for k, v in first.items()}},
                                    created_at=report.at)

    def _record(self, kind: str, payload: Callable[[], dict[str, Any]], at: datetime | None = None) -> None:
        """Hand an audit entry to the recorder (payload built only when someone records). The first
        entry is preceded by the ``config`` record of the start, stamped with that entry's time (the
        loop's clock: simulated time in a simulation, not the wall clock)."""
        if self.recorder is None:
            return
        if not self._start_recorded:
            self._start_recorded = True
            self._record("config", lambda: self._config_payload("start"), at)
        try:
            self.recorder.record(kind, payload(), at or datetime.now(timezone.utc))
        except Exception:  # recording must never stop control
            log.exception("could not record %s", kind)

    def _close_metered_interval(self, current: pd.Timestamp) -> None:
        """At an interval boundary, record what the meter saw during the interval that ended."""
        if self.meter is None:
            return
        previous, self._metered_interval = self._metered_interval, current
        if previous is None or previous >= current:
            return
        interval_h = (current - previous).total_seconds() / 3600.0
        local = previous.tz_convert(self.profile.tz).to_pydatetime()
        summary = self.meter.summary({r.id: r.cap_at(local) for r in self.profile.receptors})
        self.meter.reset()
        price = intensity = source = None
        if self.store is not None:
            settled = self.store.prices(previous.to_pydatetime(), current.to_pydatetime(),
                                        settlement_point=self.profile.site.settlement_point, market="RT")
            if not settled.empty:  # finer prices settle to their time-weighted mean (frames rule)
                weights = (settled["interval_end"] - settled["interval_start"]).dt.total_seconds()
                price = float((settled["price_usd_mwh"] * weights).sum() / weights.sum())
            # The grid's average carbon intensity measured in the interval (in/carbon), with its
            # source, so the report's location-based Scope 2 says where each hour's factor came from.
            carbon = self.store.observations("carbon", previous.to_pydatetime(), current.to_pydatetime(),
                                             key="average")
            if not carbon.empty:
                intensity = float(carbon["intensity_kg_per_mwh"].mean())
                source = "; ".join(sorted(set(map(str, carbon["source"])))) if "source" in carbon else "in/carbon"
        self.record_measurement(previous.to_pydatetime(), interval_h, load_kw=summary["load_kw"],
                                renewable_kw=summary["renewable_kw"], hashrate_th_s=summary["hashrate_th_s"],
                                noise=summary["noise"], price_usd_mwh=price, intensity_kg_per_mwh=intensity,
                                intensity_source=source)

    def _record_guard(self, result: GuardResult, now: datetime, event_id: str | None) -> None:
        self._record("setpoints", lambda: records.setpoints_payload(result.batch, source="guard"), now)
        for action in result.actions:
            self._record("guard_action", lambda a=action: records.guard_action_payload(
                a.kind, a.reason, a.miners, event_id=event_id), now)

    def record_measurement(self, interval_start: datetime, interval_h: float, *, load_kw: float,
                           renewable_kw: float, hashrate_th_s: float,
                           noise: Mapping[str, tuple[float, float]], price_usd_mwh: float | None,
                           intensity_kg_per_mwh: float | None = None, intensity_source: str | None = None,
                           hashprice_usd_per_ph_day: float | None = None) -> None:
        """The ``measurement`` audit entry of one finished interval, from what was measured in it
        (``noise``: receptor → (LAeq, minutes over cap)); economics at the settled price."""
        import_kw = max(load_kw - renewable_kw, 0.0)
        self.measured_import_kw[pd.Timestamp(interval_start)] = (import_kw, interval_h)
        factor = intensity_kg_per_mwh if intensity_kg_per_mwh is not None else self.profile.carbon.default_intensity_kg_per_mwh
        local_day = pd.Timestamp(interval_start).tz_convert(self.profile.tz)
        for key in (local_day.strftime("%Y-%m-%d"), local_day.strftime("%Y-%m")):
            self.emitted_kg[key] = self.emitted_kg.get(key, 0.0) + import_kw * interval_h * factor / 1000.0
        if len(self.measured_import_kw) > 10_000:  # a few months of intervals is plenty for reports
            self.measured_import_kw.pop(next(iter(self.measured_import_kw)))
        # Revenue at the hashprice the plan used (the forecast's, from the feed when there is one),
        # not the profile's static value: the audit and the optimizer value a hash alike.
        hashprice = (hashprice_usd_per_ph_day if hashprice_usd_per_ph_day is not None  # settled (backtest)
                     else self.hashprice_usd_per_ph_day or self.profile.economics.hashprice_usd_per_ph_day)
        hp = hashprice / 1000.0 / 24.0 * (1 - self.profile.economics.pool_fee_pct / 100)
        revenue = hashrate_th_s * interval_h * hp
        cost = None if price_usd_mwh is None else import_kw * interval_h * (price_usd_mwh + self.profile.grid.total_adder_usd_mwh) / 1000
        local = pd.Timestamp(interval_start).tz_convert(self.profile.tz).to_pydatetime()
        step = timedelta(hours=interval_h)
        with self._lock:
            limits, sources = self.book.import_limits_over([pd.Timestamp(interval_start)], step)
            cp = four_cp_limits_kw(self.profile, pd.DatetimeIndex([pd.Timestamp(interval_start)]),
                                   self.book.four_cp_alert_days)[0]
            candidates = [(float(limits[0]), sources[0]), (float(cp), "4CP window"),
                          (self.profile.grid.import_limit_kw, "interconnection")]
            limit_kw, limit_source = min(candidates, key=lambda c: c[0])
            caps = {r.id: r.cap_at(local) for r in self.profile.receptors}
            modelled = {r.id: self.modelled_level_dba(r.id) for r in self.profile.receptors}
            full_kw = sum(max(m.power_kw for m in self.fleet.groups[g].modes) for g in
                          (mi.group_id for mi in self.fleet.miners.values() if mi.available))
        self._record("measurement", lambda: {**records.measurement_payload(
            interval_start, interval_h, import_kw, renewable_kw, load_kw, hashrate_th_s,
            {r: v[0] for r, v in noise.items()}, intensity_kg_per_mwh, price_usd_mwh, revenue, cost or 0.0,
            noise_model_dba=modelled, noise_cap_dba={k: (None if math.isinf(v) else v) for k, v in caps.items()},
            noise_over_cap_min={r: v[1] for r, v in noise.items()}, full_load_kw=full_kw,
            intensity_source=intensity_source, hashprice_usd_per_ph_day=hashprice),
            "import_limit_kw": limit_kw, "import_limit_source": limit_source,
            "source": "simulated" if self.config.run_mode != "live" or self.simulated_inputs else "metered"},
            interval_start)

    def modelled_level_dba(self, receptor_id: str) -> float:
        """The modelled level of the units running now, as the receptor's cap counts it (total, or
        the site's contribution alone)."""
        receptor = next(r for r in self.profile.receptors if r.id == receptor_id)
        return modelled_laeq_dba(self.profile, self.fleet.counts(), receptor_id,
                                 include_background=receptor.cap_applies_to == "total")

    def _config_payload(self, reason: str) -> dict[str, Any]:
        mode = self.config.run_mode
        return {**records.config_payload(self.profile, reason), "run_mode": mode, "simulated": mode != "live"}

    def carbon_budgets(self, index: pd.DatetimeIndex, now: datetime | None = None) -> tuple[CarbonBudget, ...]:
        """Daily and monthly budgets over the horizon, net of what was measured as emitted so far
        today and this month (intervals recorded with ``record_measurement``), each tightened by a
        site manager's budget in force at ``now`` (default: the horizon's start)."""
        local = pd.Timestamp(index[0]).tz_convert(self.profile.tz)
        overrides = self.book.carbon_budget_overrides_kg(now or pd.Timestamp(index[0]).to_pydatetime())
        return (daily_carbon_budgets(self.profile, index, self.emitted_kg.get(local.strftime("%Y-%m-%d"), 0.0),
                                     overrides.get("day"))
                + monthly_carbon_budgets(self.profile, index, self.emitted_kg.get(local.strftime("%Y-%m"), 0.0),
                                         overrides.get("month")))

    def mean_import_kw(self, start: datetime, end: datetime) -> float:
        """Time-weighted mean measured import over [start, end) from recorded intervals (NaN if none)."""
        total_kwh = hours = 0.0
        for interval_start, (kw, h) in list(self.measured_import_kw.items()):
            if pd.Timestamp(start) <= interval_start < pd.Timestamp(end):
                total_kwh += kw * h
                hours += h
        return total_kwh / hours if hours else math.nan

    def noise_margins_db(self, forecast_margins: Mapping[str, float] | None = None) -> dict[str, float]:
        """Receptor id → the margin below its cap the plan keeps (``acoustics.noise_margin_db``): the
        compliance quantile of the meter residuals when the profile asks for one and enough are
        known; otherwise the fixed margin tightened by the calibration offset and the forecast's."""
        out = {}
        for r in self.profile.receptors:
            margin, basis = noise_margin_db(r, self.noise_offsets_db.get(r.id), self.noise_residuals_db.get(r.id))
            if not basis.startswith("compliance") and forecast_margins:
                margin = max(margin, forecast_margins.get(r.id, 0.0))
            out[r.id] = margin
        return out

    def noise_compliance(self) -> dict[str, Any]:
        """Per receptor: the margin in use, its basis, and the share of recorded residuals the
        margin covers (the empirical probability the cap is met when planned at the cap)."""
        out = {}
        for r in self.profile.receptors:
            residuals = np.asarray(self.noise_residuals_db.get(r.id, ()), dtype=float)
            margin, basis = noise_margin_db(r, self.noise_offsets_db.get(r.id), residuals)
            out[r.id] = {"margin_db": round(margin, 3), "basis": basis, "samples": int(residuals.size),
                         "target_probability": r.compliance_probability,
                         "covered_share": None if residuals.size == 0 else float(np.mean(residuals <= margin))}
        return out

    def unhealthy_causes(self, now: datetime) -> list[str]:
        """Why the controller is not healthy now (empty: healthy): no recent tick, prices unknown,
        control state not durable."""
        causes = []
        report = self.last_report
        stale_after = self.config.stale_after_intervals * self.interval_minutes * 60
        age = None if self.last_good_tick is None else (now - self.last_good_tick).total_seconds()
        if age is None:
            causes.append("no tick yet")
        elif age > stale_after:
            causes.append(f"last tick {age:.0f} s ago (more than {stale_after:.0f} s)")
        if report is not None and _prices_unknown(report.fallbacks):
            causes.append("prices unknown: planning at the curtailment price")
        if self.state_failure is not None:
            causes.append(f"{STORE_UNAVAILABLE}: {self.state_failure}")
        if self.transport_failure is not None:
            causes.append(self.transport_failure)
        return causes

    def status(self, now: datetime) -> dict[str, Any]:
        report = self.last_report
        age = None if self.last_good_tick is None else (now - self.last_good_tick).total_seconds()
        with self._lock:
            causes = self.unhealthy_causes(now)
            limits = self.book.summary(now)
            active = self.book.dr.active_ids(now)
        return {
            "site": self.profile.site.name,
            "at": now.isoformat(),
            "healthy": not causes,
            "unhealthy_causes": causes,
            "last_tick_age_s": age,
            "last_solve": None if report is None or report.schedule is None else {
                "status": report.schedule.status.value, "gap": report.schedule.info.gap,
                "seconds": report.solve_seconds, "trigger": report.trigger},
            "fallbacks_in_use": [] if report is None else list(report.fallbacks),
            "active_dr_events": active,
            "limits": limits,
            "units_running": sum(1 for m in self.fleet.miners.values() if m.running),
            "miners_unavailable": {m: u.reason for m, u in self.registry.unavailable().items()},
            "counters": dict(self.counters),
            "noise_offsets_db": dict(self.noise_offsets_db),
            "noise_compliance": self.noise_compliance(),
            # AS deployments of the last day: obligation vs delivered, shortfall, time to respond (issue 15).
            "as_performance": [dict(p) for p in self.as_performance.values()
                               if datetime.fromisoformat(p["issued_at"]) > now - timedelta(days=1)],
        }


def deployment_performance(message: ASDeployMessage, baseline_kw: float, limit_kw: float, commanded_kw: float,
                           now: datetime, deadline: datetime | None) -> dict[str, Any]:
    """What one AS deployment asked and what the fast path commanded (issue 15): obligation
    (deployed kW), delivered = baseline − commanded import, shortfall = what the commanded import is
    still over the limit (load that cannot be shed: idle draw, auxiliaries), time to command."""
    delivered = max(baseline_kw - commanded_kw, 0.0)
    return {"deployment_id": message.deployment_id, "product": message.product,
            "issued_at": message.issued_at.isoformat(),
            "deadline": (deadline or message.issued_at).isoformat(),
            "obligation_kw": float(message.deployed_kw), "baseline_kw": baseline_kw, "limit_kw": limit_kw,
            "commanded_import_kw": commanded_kw, "delivered_kw": delivered,
            "shortfall_kw": max(commanded_kw - limit_kw, 0.0),
            "commanded_after_s": max((now - message.issued_at).total_seconds(), 0.0),
            "commanded_within_deadline": deadline is None or now <= deadline,
            "measured_import_kw": None, "measured_shortfall_kw": None, "measured_response_s": None,
            "measured_within_deadline": None}


def _json_field(text: str, name: str) -> str | None:
    """A string or integer field read from a (possibly truncated) JSON payload, or None."""
    found = re.search(rf'"{re.escape(name)}"\s*:\s*(?:"([^"\\]{{1,128}})"|(\d{{1,9}}))', text or "")
    if found is None:
        return None
    return found.group(1) if found.group(1) is not None else found.group(2)


def _prices_unknown(fallbacks: Any) -> bool:
    """True when the forecast had to invent prices (the site is then curtailed: not healthy)."""
    return has_fallback(fallbacks, FallbackCode.PRICE_UNKNOWN)


def _replace(measurements: Measurements, **changes: Any) -> Measurements:
    return dataclasses.replace(measurements, **changes)
