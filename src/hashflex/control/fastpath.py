"""The control loop's fast path (the MQTT network thread): DR, noise, price, meter and limits messages
decided at once, without a solve. A mixin of :class:`~hashflex.control.loop.ControlLoop`, split from
``loop.py`` along its seam; it reads and writes the loop's state (``self.book``, ``self.fleet``,
``self._batch``, ``self._lock``) exactly as the loop's own methods do.

Safety (brief): a more restrictive limit is enforced the moment it is decided; a DR or limits message
is acknowledged ``accepted`` only after the book is committed to the store.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
import math
import re
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from hashflex import audit as records
from hashflex.acoustics import compared_level_dba
from hashflex.control.compute_commands import shed_commands
from hashflex.control.dr import DRDecision
from hashflex.control.dispatch import ArrayDispatch
from hashflex.control.fleet import SLEEP, FleetArrays
from hashflex.control.guard_counts import realise
from hashflex.health.reading import reading_from_telemetry
from hashflex.control.guard import GuardAction, GuardResult, Measurements
from hashflex.control.ladder import breakeven_ladder, under_water
from hashflex.control.limits import STORE_UNAVAILABLE, LimitsAck
from hashflex.forecast import FallbackCode, has_fallback
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

log = logging.getLogger(__name__)
# Share of the fleet's miners that must have reported telemetry before their sum stands in for a site
# meter as an AS deployment's baseline (issue 15).
_TELEMETRY_BASELINE_COVERAGE = 0.95


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


class FastPathMixin:
    """Message handlers of the control loop (see the module docstring)."""

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
                        telemetry_import_kw = max(sum(self.telemetry_kw.values()) - renewable, 0.0)
                        self._sample_meter(telemetry_import_kw, message.timestamp, "telemetry", now)
                        # An AS deployment's baseline only once nearly every miner has reported, and with
                        # the auxiliary load no miner reports: a partial sum (after a restart) or one
                        # without the auxiliary kW would set the baseline too low and over-curtail.
                        if len(self.telemetry_kw) >= _TELEMETRY_BASELINE_COVERAGE * len(self.fleet):
                            measured_kw = telemetry_import_kw + (self.measurements.auxiliary_kw or 0.0)
                            self.note_measured_import(measured_kw, message.timestamp, "miner telemetry")
                            # Without a site meter the summed telemetry is the measured import an AS
                            # deployment's response is assessed on (newcomer finding: /status measured
                            # fields stayed null with every miner reporting). Each message updates the
                            # sum, so each is a reading (a few deployments at most to check).
                            if self.as_performance:
                                self.measure_as_deployments(measured_kw, message.timestamp)
                if self.meter is not None:
                    # received at now: the clock the interval's bounds are on (coverage, issue 15 H7)
                    self.meter.telemetry(message.miner_id, message.power_kw, message.hashrate_th_s, at=now)
                if message.miner_id in self.fleet.miners:  # fleet health (issue 17): findings, alerts, derates
                    self.health.ingest(reading_from_telemetry(
                        message, setpoint_power_kw=self._health_setpoint_kw(message.miner_id, message.mode,
                                                                            message.timestamp)))
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

    def _health_setpoint_kw(self, miner_id: str, reported_mode: str, at: datetime) -> float | None:
        """What the miner should draw for the health detectors' not-following test, or None (not judged):
        asleep or powered off, still inside its group's boot time after a start, or reporting another mode
        than commanded (booting, changing mode) — a miner in transition is not a miner ignoring its setpoint
        (a newcomer's live demo saw half the fleet flagged while it booted)."""
        miner = self.fleet.miners[miner_id]
        if not miner.running or reported_mode != miner.mode:
            return None
        group = self.profile.group(miner.group_id)
        boot = timedelta(minutes=float(getattr(group, "boot_minutes", 0.0) or 0.0))
        if miner.last_start is not None and at < miner.last_start + boot:
            return None
        return self.fleet.power_kw(miner.group_id, miner.mode)

    def on_rejection(self, rejection: Any, now: datetime) -> None:
        """An inbound payload failed validation or plausibility (``messages.Rejection``). A DR event
        or limits change is counted, and a DR event whose id can be read gets a ``rejected`` ack, so
        the issuer is not left waiting. The audit record is the ingest's, bounded per kind and
        minute (``audit.rejections``: ``input_rejected``); a record here too grew the trail without
        bound under a flood of malformed messages."""
        kind = getattr(rejection, "kind", None)
        if kind in ("as_award", "as_deploy"):
            self._answer_rejected_as(rejection, kind, now)
            return
        if kind not in ("dr", "limits"):
            return
        try:
            preview = rejection.payload
            self.counters["dr_rejected" if kind == "dr" else "limits_rejected"] += 1
            event_id = _json_field(preview, "event_id")
            if kind == "dr" and event_id is not None:
                number = _json_field(preview, "modification_number")
                ack = DRAckMessage(event_id=event_id, modification_number=int(number) if number and number.isdigit() else None,
                                   status="rejected", reason=rejection.reason[:500], acked_at=now)
                self._publish("out/dr/ack", ack.model_dump(mode="json"))
        except Exception:  # noqa: BLE001 - answering a bad message must never stop the controller
            log.exception("could not answer a rejected %s message", kind)

    def _answer_rejected_as(self, rejection: Any, kind: str, now: datetime) -> None:
        """A malformed AS award or deployment gets a ``rejected`` ack on ``out/as/ack`` naming the
        field (as a malformed DR event does), with its id when it can be read and a null id when not
        (an empty or non-object payload, an invalid id: issue 15, H1 finding 6), and is counted
        (``as_rejected``); the ingest has stored the payload in the rejections table already."""
        try:
            preview = rejection.payload
            message_id = _json_field(preview, "award_id" if kind == "as_award" else "deployment_id")
            self.counters["as_rejected"] = self.counters.get("as_rejected", 0) + 1
            reason = rejection.reason[:500]
            try:
                ack = ASAckMessage(message_id=message_id, kind=kind, status="rejected", reason=reason, acked_at=now)
            except ValueError:  # an id the schema refuses (pydantic's ValidationError): answered without it
                ack = ASAckMessage(message_id=None, kind=kind, status="rejected", reason=reason, acked_at=now)
            self._publish("out/as/ack", ack.model_dump(mode="json"))
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
            if not decision.accepted and held is None:
                # the book's refusal (wrong issuer, stale modification, ...): counted for /metrics as
                # the AS path counts its own, so /metrics and /status inputs_refused agree
                self._count_refusal("dr", decision.reason)
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
        result, modes = self._emergency_cut_modes(limit, now)
        if result.changed:
            self.counters["fast_path_actions"] += 1
            # recorded as mode columns (issue 18: at 100,000 miners, recording the batch miner by
            # miner was 0.9 s of a DR cut's latency)
            self._dispatch(result.batch, now, modes=modes)
            log.warning("%s: fast path cut load to %.0f kW: %s", why, limit, "; ".join(a.reason for a in result.actions))
            self._record_guard(result, now, event_id)
        if self.profile.compute is not None and self.compute_state is not None:
            batch = result.batch if result.changed else self.fleet.as_setpoints(now, self.expiry_s)
            self._shed_compute_now(batch, limit, now, why, event_id)

    def _emergency_cut(self, limit_kw: float, now: datetime) -> GuardResult:
        """The fleet cut to ``limit_kw`` (kW) now (:meth:`_emergency_cut_modes` without the columns)."""
        return self._emergency_cut_modes(limit_kw, now)[0]

    def _emergency_cut_modes(self, limit_kw: float, now: datetime) -> tuple[GuardResult, dict | None]:
        """The fleet cut to ``limit_kw`` (kW) now: `Guard.emergency_dr_cut` on the fleet's batch.

        Issue 18: the cut is decided in counts (`CountGuard`, vector work over (group, mode)
        classes, the same units as the per-miner guard: tests/test_guard_counts.py) and only the
        result becomes setpoints; a batch is built only when something is cut. Sites with groups
        the PDU can power off keep the per-miner guard (the count guard has no power-off stage).
        Returns a `GuardResult` whose batch is the whole fleet (fresh expiry) when it changed,
        empty otherwise, and the batch as mode columns per group (None on PDU sites and when
        nothing changed)."""
        if self._pdu_site():
            return self.guard.emergency_dr_cut(self.fleet.as_setpoints(now, self.expiry_s), limit_kw,
                                               self.measurements, now=now), None
        present = {g: self.fleet.group_size(g) for g in self.fleet.groups}
        cut = self.count_guard.emergency_dr_cut(self.fleet.counts(), limit_kw, self.measurements, now, present=present)
        if not cut.changed:
            return GuardResult([], []), None
        return self._realised(cut, now)

    def _realised(self, cut: Any, now: datetime) -> tuple[GuardResult, dict]:
        """A count cut of the fleet as it runs made into the batch to send (whole fleet, fresh
        expiry; each action naming the miners it moved) and its mode columns."""
        arrays = FleetArrays.from_fleet(self.fleet)
        modes, actions = realise(cut, arrays, {g: a.mode for g, a in arrays.groups.items()})
        return GuardResult(ArrayDispatch(modes).to_batch(arrays, now, self.expiry_s), actions), modes

    def _shed_compute_now(self, batch: list, limit_kw: float, now: datetime, why: str,
                          event_id: str | None = None) -> None:
        """When the miners' cut alone leaves import over ``limit_kw``, shed GPU load in the contracts'
        order (spot, batch, then inference capped; `control.compute_commands.shed_commands`)."""
        if self.profile.compute is None or self.compute_state is None:
            return
        renewable_kw, _ = self.guard._renewable(self.measurements, now)  # the guard's freshness rule
        excess = self.guard.net_import_kw(batch, self.measurements.auxiliary_kw, renewable_kw) - limit_kw
        if excess <= 0:
            return
        commands, state, reasons = shed_commands(self.profile, self.compute_state, excess, now, self.expiry_s)
        if not commands:
            return
        self.counters["fast_path_actions"] += 1
        self._send_compute(commands, state)
        log.warning("%s: fast path shed GPU load: %s", why, "; ".join(reasons))
        reason = (f"{why}: GPU load shed ({'; '.join(reasons)}); excess {excess:.1f} kW over {limit_kw:.1f} kW, "
                  f"clusters now {state.site_kw:.1f} kW")
        self._record("guard_action", lambda: records.guard_action_payload("compute_shed", reason, [],
                                                                           event_id=event_id), now)

    def handle_noise(self, message: NoiseMessage, now: datetime) -> None:
        """A noise meter's reading: calibrate the receptor's measured − modelled offset, and cut at once
        (without a solve) when the reading compared with the cap in force is over it."""
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
            cut, stopped, modes = self._sleep_losing(losing, now)
            if not stopped:
                return False
            self.counters["fast_path_actions"] += 1
            self._dispatch(cut, now, modes=modes)
            worst = max(losing.values())
            action = GuardAction("price_ladder_cut", f"real-time price {message.price_usd_mwh:.2f} $/MWh for "
                                 f"{message.interval_start.isoformat()} is above the breakeven of "
                                 f"{len(losing)} group mode(s) (highest {worst:.2f} $/MWh): "
                                 f"{len(stopped)} unit(s) to sleep", stopped)
            self._record_guard(GuardResult(cut, [action]), now, None)
            log.warning("price ladder: %s", action.reason)
        self.request_replan(f"real-time price {message.price_usd_mwh:.0f} $/MWh")
        return True

    def _sleep_losing(self, losing: dict[tuple[str, str], float],
                      now: datetime) -> tuple[list, tuple[str, ...], dict | None]:
        """The fleet's batch with every unit of a ``losing`` (group, mode) asleep: (batch, the miners
        stopped, the batch as mode columns or None). In columns (issue 18) except on PDU sites."""
        if self._pdu_site():
            batch = self.fleet.as_setpoints(now, self.expiry_s)
            cut = [dataclasses.replace(sp, mode=SLEEP, power_target_kw=self.fleet.power_kw(sp.group_id, SLEEP))
                   if (sp.group_id, sp.mode) in losing else sp for sp in batch]
            return cut, tuple(sp.miner_id for sp, new in zip(batch, cut, strict=True) if new.mode != sp.mode), None
        arrays = FleetArrays.from_fleet(self.fleet)
        modes = {}
        stopped: list[str] = []
        for group_id, cols in arrays.groups.items():
            new = cols.mode.copy()
            for k, name in enumerate(cols.mode_names):
                if (group_id, name) in losing:
                    new[new == k] = -1
            stopped += cols.miner_id[new != cols.mode].tolist()
            modes[group_id] = new
        if not stopped:
            return [], (), None
        return ArrayDispatch(modes).to_batch(arrays, now, self.expiry_s), tuple(stopped), modes

    def handle_meter(self, import_kw: float, measured_at: datetime, now: datetime) -> bool:
        """A site meter reading (revenue or check meter, ``drivers.modbus_meter``): when fresh and
        over the lowest import limit in force, cut more until the excess is gone — the meter is the
        guard's truth over the model. A stale or implausible reading is not believed (the guard
        falls back to the model). Returns True if it cut."""
        with self._lock:
            self._has_site_meter = True
            self._sample_meter(import_kw, measured_at, "site meter", now)
            self.note_measured_import(import_kw, measured_at, "site meter")  # an AS deployment's baseline
            imports = self.book.import_limits_at(now)
            limit = min([self.profile.grid.import_limit_kw, *imports.values()])
            self.measurements = _replace(self.measurements, import_kw=import_kw)
            if self.as_performance:
                self.measure_as_deployments(import_kw, measured_at)
            modes = None
            if self._pdu_site():
                result = self.guard.import_over_limit_cut(import_kw, limit, self.fleet.as_setpoints(now, self.expiry_s),
                                                          measured_at=measured_at, now=now,
                                                          measurements=self.measurements)
            else:  # in counts (issue 18: 1.1 s per miner at 100k), as the DR and noise cuts
                present = {g: self.fleet.group_size(g) for g in self.fleet.groups}
                cut = self.count_guard.import_over_limit_cut(import_kw, limit, self.fleet.counts(),
                                                             measured_at=measured_at, now=now,
                                                             measurements=self.measurements, present=present)
                if not cut.changed:
                    return False
                result, modes = self._realised(cut, now)
            if not result.changed:
                return False
            self.counters["fast_path_actions"] += 1
            self._dispatch(result.batch, now, modes=modes)
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
        if self._pdu_site():
            result = self.guard.noise_exceedance_cut(receptor_id, level_dba, cap_dba,
                                                     self.fleet.as_setpoints(now, self.expiry_s))
            modes = None
        else:  # in counts (issue 18), as the DR cut
            cut = self.count_guard.noise_exceedance_cut(receptor_id, level_dba, cap_dba, self.fleet.counts(), now)
            if not cut.changed:
                return False
            result, modes = self._realised(cut, now)
        if result.changed:
            self.counters["fast_path_actions"] += 1
            self._dispatch(result.batch, now, modes=modes)
            self._record_guard(result, now, None)
        return result.changed

    def _pdu_site(self) -> bool:
        """A group the PDU can power off: the fast paths keep the per-miner guard (the count guard
        has no power-off stage, and the fleet's columns as `FleetArrays` show off units asleep)."""
        return any(getattr(g, "pdu_power_off", False) for g in self.profile.miner_groups)

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
            if not ack.accepted and held is None:
                self._count_refusal("limits", ack.reason)
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
