"""The control loop's records and status: transitions, ticks and metered intervals into the audit
trail and the store, and the live ``/status`` view (limits in force, noise margins and compliance,
carbon budgets, health causes). A mixin of :class:`~hashflex.control.loop.ControlLoop`, split from
``loop.py`` along its seam.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hashflex import audit as records
from hashflex.acoustics import modelled_laeq_dba, noise_margin_db
from hashflex.audit.payloads import reserve_hold_short_payload
from hashflex.control.ancillary import (
    SheddableMean,
    drawn_sheddable_kw,
    mean_award_prices,
    mean_hold_shortfalls,
    metered_group_sheddable_kw,
    reserve_clawback_usd,
    revision_windows,
)
from hashflex.control.guard import GuardResult
from hashflex.control.limits import STORE_UNAVAILABLE
from hashflex.optimize.problem import (
    CarbonBudget,
    daily_carbon_budgets,
    four_cp_limits_kw,
    monthly_carbon_budgets,
)

from hashflex.control.fastpath import _prices_unknown
from hashflex.optimize.schedule import grid_import_kw

if TYPE_CHECKING:  # annotations only: loop imports this module
    from hashflex.control.loop import HorizonForecast, TickReport

log = logging.getLogger(__name__)
_HOLD_SHORT_KW = 1e-6  # kW below which a product counts as held (float noise of the allocation)


class LoopStatusMixin:
    """Records and status of the control loop."""

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

    def _sample_sheddable(self, at: datetime) -> None:
        """Sample the commanded sheddable load per group into the interval's time-weighted mean
        (``control.ancillary.SheddableMean``, issue 15 H6): at each tick's end, each recorded
        ``setpoints`` batch and each interval boundary. O(miners) numpy per sample (the fleet's
        counts), per-group sums kept. Never stops control."""
        if self.profile.ancillary is None:
            return  # no reserve to check
        try:
            acc = self.__dict__.get("_sheddable_mean")
            if acc is None:
                acc = self._sheddable_mean = SheddableMean()
            acc.sample(at, self.reserve_sheddable_kw())
        except Exception:  # bookkeeping must never stop control
            log.exception("could not sample the sheddable load")

    def _as_revision_log(self) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
        """(kind, id) -> the accepted revisions of each award and deployment in the order received:
        (received, kW, price or None) for an award, (received, kW, revision) for a deployment. Seeded at first use with the book's (received None: the revision held then,
        over its whole window), so the hold check holds each revision when the report does
        (``control.ancillary.revision_windows``, issue 15 H6)."""
        log_ = self.__dict__.get("_as_revisions")
        if log_ is None:
            log_ = self._as_revisions = {}
            for award_id, award in self.book.as_awards.items():
                log_["as_award", award_id] = [(None, float(award["reserve_kw"]), award.get("price_usd_mw_h"))]
            for deployment_id, deployment in self.book.as_deployments.items():
                log_["as_deploy", deployment_id] = [(None, float(deployment.deployed_kw), deployment.revision)]
        return log_

    def _note_as_revision(self, kind: str, body: Mapping[str, Any], stamp: datetime) -> None:
        """Log an accepted award or deployment revision (the ``as_award`` / ``as_deploy`` record the
        loop writes; a recall is not a revision, a redelivery of a deployment revision neither)."""
        ack, message = body.get("ack") or {}, body.get("message") or {}
        if ack.get("status") != "accepted" or message.get("recalled"):
            return
        key = (kind, str(message.get("award_id" if kind == "as_award" else "deployment_id")))
        try:
            fresh = "_as_revisions" not in self.__dict__
            log_ = self._as_revision_log()
            if fresh:  # seeded from the book, which holds this revision already: it starts now
                log_.pop(key, None)
            held = log_.setdefault(key, [])
            if kind == "as_award":
                held.append((stamp, float(message.get("reserve_kw") or 0.0), message.get("price_usd_mw_h")))
            else:
                revision = int(message.get("revision") or 0)
                if held and len(held[-1]) > 2 and revision <= held[-1][2]:
                    return  # a redelivery, not a new revision (the report's rule too)
                acked = ack.get("acked_at")
                received = pd.Timestamp(acked).to_pydatetime() if acked else stamp
                held.append((received, float(message.get("deployed_kw") or 0.0), revision))
        except Exception:  # bookkeeping must never stop control
            log.exception("could not log the %s revision", kind)

    def _obligation_windows(self) -> tuple[list[tuple[str, datetime, datetime, float, float | None]],
                                           list[tuple[str, datetime, datetime, float]]]:
        """(awards, deployments) as ``mean_hold_shortfalls`` takes them (awards with their price last,
        for ``mean_award_prices``): each accepted revision over the time it was held
        (``revision_windows``), the windows from the book. Call with the lock held."""
        log_ = self._as_revision_log()
        for key in [k for k in log_ if k[1] not in (self.book.as_awards if k[0] == "as_award"
                                                     else self.book.as_deployments)]:
            del log_[key]  # the book no longer holds it (ended and pruned): nor does the log
        awards = []
        for award_id, award in self.book.as_awards.items():
            start, end = datetime.fromisoformat(award["start"]), datetime.fromisoformat(award["end"])
            held = log_.get(("as_award", award_id)) or [(None, float(award["reserve_kw"]), award.get("price_usd_mw_h"))]
            for i, a, b in revision_windows([(r[0], start, end) for r in held]):
                price = held[i][2]
                awards.append((award["product"], a, b, held[i][1], None if price is None else float(price)))
        deployments = []
        for deployment_id, d in self.book.as_deployments.items():
            held = log_.get(("as_deploy", deployment_id)) or [(None, float(d.deployed_kw))]
            for i, a, b in revision_windows([(r[0], d.binds_from, d.end) for r in held]):
                deployments.append((d.product, a, b, held[i][1]))
        return awards, deployments

    def _record_tick(self, report: TickReport, forecast: HorizonForecast) -> None:
        self._sample_sheddable(report.at)
        # learned | rules (forecast.Forecast.forecast_source; issue 14): in /status and the stored schedule
        self.forecast_source = getattr(forecast, "forecast_source", "rules")
        if self.publisher is not None:  # the /status document is built only to be published (issue 18: a backtest has none)
            self.publisher.publish_json("out/status", self.status(report.at))
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
            actions = report.guard.actions if report.guard else []
            binding = ""
            if actions:  # the binding import limit names the DR event behind a curtailment (none: not looked up)
                imports = self.book.import_limits_at(report.at)
                binding = min(imports.items(), key=lambda kv: kv[1])[0] if imports else ""
            event_id = binding[3:] if binding.startswith("DR:") else None
            for action in actions:
                self._record("guard_action", lambda a=action: records.guard_action_payload(
                    a.kind, a.reason, a.miners, event_id=event_id if a.kind == "import_curtail" else None), report.at)
        if self.store is not None and report.schedule is not None:
            first = report.schedule.frame.iloc[0]
            self.store.put_schedule({"status": report.schedule.status.value, "gap": report.schedule.info.gap,
                                     "trigger": report.trigger, "fallbacks": list(forecast.fallbacks),
                                     "forecast_source": self.forecast_source,
                                     "stability": report.stability,
                                     "first_interval": {k: (None if isinstance(v, float) and not math.isfinite(v) else
                                                            (v.isoformat() if hasattr(v, "isoformat") else v))
                                                        for k, v in first.items()}},
                                    created_at=report.at)

    def _record(self, kind: str, payload: Callable[[], dict[str, Any]], at: datetime | None = None) -> None:
        """Hand an audit entry to the recorder (payload built only when someone records). The first
        entry is preceded by the ``config`` record of the start, stamped with that entry's time (the
        loop's clock: simulated time in a simulation, not the wall clock).

        **``at_utc`` is the time the loop wrote the record** (its clock), so it never goes backwards
        against ``seq`` (issue 15, H2 finding 7): ``at`` is the caller's time (its ``now``); an
        earlier ``at`` than the last record's (a tick's records stamped at the tick's start but
        written after its solve, while a message was recorded meanwhile; a meter reading's time) is
        stamped with the last record's time and the caller's time is kept in the payload as
        ``event_at`` (ISO). Event times a record is *about* (an interval's start, a reading's time)
        are in its payload, never in ``at_utc``.
        """
        if kind == "setpoints":  # the commanded fleet changed (a tick's batch, a fast-path cut), recorded or not
            self._sample_sheddable(at or datetime.now(timezone.utc))
        if self.recorder is None:
            if kind in ("as_award", "as_deploy"):  # the hold check holds each revision while in force (H6)
                try:
                    self._note_as_revision(kind, payload(), at or datetime.now(timezone.utc))
                except Exception:  # bookkeeping must never stop control
                    log.exception("could not log the %s revision", kind)
            return
        if not self._start_recorded:
            self._start_recorded = True
            self._record("config", lambda: self._config_payload("start"), at)
        try:
            body = payload()
            with self._record_lock:  # the time and the queue's order are decided together
                stamp = at or datetime.now(timezone.utc)
                last = self._last_record_at
                if last is not None and stamp < last:
                    body = {**body, "event_at": stamp.isoformat()}
                    stamp = last
                self._last_record_at = stamp
                self.recorder.record(kind, body, stamp)
            if kind in ("as_award", "as_deploy"):
                self._note_as_revision(kind, body, stamp)
        except Exception:  # recording must never stop control
            log.exception("could not record %s", kind)

    def _close_metered_interval(self, current: pd.Timestamp, now: datetime | None = None) -> None:
        """At an interval boundary (the tick at ``now``), record what the meter saw during the interval
        that ended.

        The interval in which the process started is covered only from its first tick (issue 15, H2
        finding 6: it was recorded at the telemetry's mean as if for the whole 15 minutes): the
        ``measurement`` record then spans the covered part, ``interval_start`` = the first tick and
        ``interval_h`` = the covered hours (its facts are means over that span, as the payload
        defines), with ``interval_grid_start`` (the control interval), ``covered_s`` and
        ``covered_fraction``; energy, cost, revenue and emissions are over the covered time only.
        Telemetry received before the first tick (seconds, while the daemon starts) is in the mean.
        """
        if "_telemetry_watch_from" not in self.__dict__:  # the first tick: when the process began
            # waiting for telemetry (issue 15, H9: a miner silent since then is stale after the window)
            self._telemetry_watch_from = now or current.to_pydatetime()
        if self.meter is None:
            return
        previous, self._metered_interval = self._metered_interval, current
        if previous is None:  # the process' first tick: the meter covers the interval from now on
            self._metered_from = max(pd.Timestamp(now), current) if now is not None else current
            self._sample_sheddable(self._metered_from.to_pydatetime())
            return
        if previous >= current:
            return
        covered_from = max(previous, getattr(self, "_metered_from", None) or previous)
        self._metered_from = current
        interval_h = (current - previous).total_seconds() / 3600.0
        covered_h = (current - covered_from).total_seconds() / 3600.0
        local = previous.tz_convert(self.profile.tz).to_pydatetime()
        summary = self.meter.summary({r.id: r.cap_at(local) for r in self.profile.receptors},
                                     start=covered_from.to_pydatetime(), end=current.to_pydatetime())
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
                                intensity_source=source, covered_h=covered_h,
                                at=None if now is None else max(now, current.to_pydatetime()),
                                # No telemetry at all: the load was not measured. The reserve hold counts
                                # each miner (H1b): a sum with some miners silent is too low, and a
                                # miner that did not report is counted by what it was commanded to do.
                                load_metered=summary.get("telemetry_miners", 0) > 0,
                                miner_load_kw=summary.get("miner_power_kw", {}),
                                miner_covered=summary.get("miner_covered_fraction"))

    def _record_guard(self, result: GuardResult, now: datetime, event_id: str | None) -> None:
        self._record("setpoints", lambda: records.setpoints_payload(result.batch, source="guard"), now)
        for action in result.actions:
            self._record("guard_action", lambda a=action: records.guard_action_payload(
                a.kind, a.reason, a.miners, event_id=event_id), now)

    def record_measurement(self, interval_start: datetime, interval_h: float, *, load_kw: float,
                           renewable_kw: float, hashrate_th_s: float,
                           noise: Mapping[str, tuple[float, float]], price_usd_mwh: float | None,
                           intensity_kg_per_mwh: float | None = None, intensity_source: str | None = None,
                           hashprice_usd_per_ph_day: float | None = None, covered_h: float | None = None,
                           at: datetime | None = None, load_metered: bool = True,
                           miner_load_kw: Mapping[str, float] | None = None,
                           miner_covered: Mapping[str, float] | None = None,
                           commanded_sheddable_kw: Mapping[str, float] | None = None) -> None:
        """The ``measurement`` audit entry of one finished interval, from what was measured in it
        (``noise``: receptor → (LAeq, minutes over cap)); economics at the settled price.

        Parameters
        ----------
        interval_start : datetime
            The control interval's start, timezone-aware.
        interval_h : float
            Its length, h.
        load_kw, renewable_kw, hashrate_th_s, noise, price_usd_mwh, intensity_kg_per_mwh, intensity_source,
        hashprice_usd_per_ph_day
            What was measured (means over the covered time; kW, TH/s, dB(A)) and the prices.
        covered_h : float, optional
            The hours of the interval the measurements cover, ending at its end (None: all of it).
            Less than ``interval_h`` (the interval the process started in, H2 finding 6): the record
            spans ``[end − covered_h, end)`` (``interval_start``, ``interval_h``), names the control
            interval (``interval_grid_start``), ``covered_s`` and ``covered_fraction``, and energy,
            cost, revenue, emissions and the reserve hold are over the covered time only.
        at : datetime, optional
            When it is written (the audit record's time; default the interval's end, the earliest
            a measurement of it exists).
        load_metered : bool, default True
            Whether ``load_kw`` is a fresh measurement of the interval (False: nothing was measured,
            e.g. the daemon's meter got no telemetry; on a live site the record's import, load,
            hashrate, revenue and cost are then null and its ``source`` ``unmeasured``, issue 15
            H9). The reserve hold (:meth:`record_reserve_hold`)
            counts only the load measured as drawn when it is, the commanded fleet otherwise, and
            says which (``reserve_hold_basis``).
        miner_load_kw : mapping of str to float, optional
            Miner id -> its mean reported power over the interval, kW, for the miners that reported
            (``IntervalMeter.summary``'s ``miner_power_kw``; the daemon's meter). Given, the reserve
            hold is counted miner by miner (issue 15, H1b) instead of from ``load_kw``; None (the
            backtest, the simulation: a modelled load, no per-miner figures): from ``load_kw``.
        miner_covered : mapping of str to float, optional
            Miner id -> the share of the interval its reports cover (``IntervalMeter.summary``'s
            ``miner_covered_fraction``, issue 15 H7): the rest counts as unreported. None: all of it.
        commanded_sheddable_kw : mapping of str to float, optional
            Group -> the commanded sheddable load time-weighted over the interval, kW; None: the
            loop's own (``control.ancillary.SheddableMean``, issue 15 H6: sampled at each tick, each
            recorded ``setpoints`` batch and the first tick), else the fleet as commanded now.

        Raises
        ------
        ValueError
            ``covered_h`` not in (0, ``interval_h``].
        """
        full_start, full_h = interval_start, interval_h
        covered = {}
        if covered_h is not None and covered_h < interval_h - 1e-9:
            if not covered_h > 0:
                raise ValueError(f"covered_h: {covered_h!r} h; must be in (0, interval_h={interval_h:g}]")
            interval_start = full_start + timedelta(hours=interval_h - covered_h)
            interval_h = covered_h
            covered = {"interval_grid_start": pd.Timestamp(full_start).isoformat(),
                       "covered_s": round(covered_h * 3600.0, 3), "covered_fraction": covered_h / full_h}
        written_at = at or (pd.Timestamp(full_start) + pd.Timedelta(hours=full_h)).to_pydatetime()
        source = "simulated" if self.config.run_mode != "live" or self.simulated_inputs else "metered"
        # A live site's load is the telemetry sum (it has no meter): with no miner reporting, nothing
        # was measured, and 0.0 "metered" read as a site that drew nothing (issue 15, H9; second
        # newcomer finding 2). Import, load, hashrate, revenue and cost are null, as an interval
        # without a price is null-costed; the report shows the row's figures null.
        unmeasured = not load_metered and source == "metered"
        if unmeasured:
            source = "unmeasured"
        import_kw = grid_import_kw(load_kw, renewable_kw)
        factor = intensity_kg_per_mwh if intensity_kg_per_mwh is not None else self.profile.carbon.default_intensity_kg_per_mwh
        if not unmeasured:  # DR reports and the emissions tally take measured intervals only
            self.measured_import_kw[pd.Timestamp(interval_start)] = (import_kw, interval_h)
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
        # No settled price: the cost is unknown (null in the trail), never $0 (the report leaves it out).
        cost = None if price_usd_mwh is None else import_kw * interval_h * (price_usd_mwh + self.profile.grid.total_adder_usd_mwh) / 1000
        if unmeasured:
            import_kw = load_kw = hashrate_th_s = revenue = cost = None
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
            full_kw = sum(n * max(m.power_kw for m in self.fleet.groups[g].modes)
                          for g, n in self.fleet.usable_counts().items())
            # The reserve the running units held (issue 15, H8 item 3; H1): per group, so the report
            # need not estimate it from the metered load where an award changed mid-interval and no
            # reserve_hold_short record was written; capped by the load measured as drawn.
            if commanded_sheddable_kw is None and "_sheddable_mean" in self.__dict__:
                commanded_sheddable_kw = self._sheddable_mean.mean(
                    pd.Timestamp(interval_start).to_pydatetime(),
                    (pd.Timestamp(interval_start) + pd.Timedelta(hours=interval_h)).to_pydatetime())
            hold = (self._reserve_hold_figures(load_kw if load_metered else None, miner_load_kw,
                                               miner_covered, commanded_sheddable_kw)
                    if self.profile.ancillary is not None else None)
        reserve = {} if hold is None else hold
        self._record("measurement", lambda: {**records.measurement_payload(
            interval_start, interval_h, import_kw, renewable_kw, load_kw, hashrate_th_s,
            {r: v[0] for r, v in noise.items()}, intensity_kg_per_mwh, price_usd_mwh, revenue, cost,
            noise_model_dba=modelled, noise_cap_dba={k: (None if math.isinf(v) else v) for k, v in caps.items()},
            noise_over_cap_min={r: v[1] for r, v in noise.items()}, full_load_kw=full_kw,
            intensity_source=intensity_source, hashprice_usd_per_ph_day=hashprice),
            "import_limit_kw": limit_kw, "import_limit_source": limit_source,
            "source": source,
            **covered, **reserve},
            written_at)
        self.record_reserve_hold(interval_start, interval_h, at=written_at, hold=hold)

    def reserve_sheddable_kw(self) -> dict[str, float]:
        """The load the units running now could shed, per miner group: Σ units × (mode power − the
        group's idle draw), kW (a unit asleep still draws its idle power: that part is not sheddable).
        Groups with no unit running are 0. The *commanded* figure: the hold check caps it by the load
        measured as drawn (:meth:`_reserve_hold_figures`) before ``reserve_hold_shortfalls``
        allocates it to the products awarded; recorded with each ``measurement`` and
        ``reserve_hold_short`` record (``reserve_sheddable_commanded_kw``). Call with the lock held
        or from the loop's thread.

        Returns
        -------
        dict of str to float
            Group id -> kW, >= 0, for every group of the profile.
        """
        power = {(g.id, m.name): m.power_kw - g.idle_power_kw for g in self.profile.miner_groups for m in g.modes}
        sheddable = {g.id: 0.0 for g in self.profile.miner_groups}
        for (group_id, mode), n in self.fleet.counts().items():
            if n > 0 and (group_id, mode) in power:
                sheddable[group_id] = sheddable.get(group_id, 0.0) + n * max(power[group_id, mode], 0.0)
        return sheddable

    def _reserve_hold_figures(self, metered_load_kw: float | None,
                              miner_load_kw: Mapping[str, float] | None = None,
                              miner_covered: Mapping[str, float] | None = None,
                              commanded_kw: Mapping[str, float] | None = None) -> dict[str, Any]:
        """The reserve the running units held over an interval, per group, and how it was known (H1, H1b).

        A Load Resource holds reserve only with load it draws: the commanded figure
        (:meth:`reserve_sheddable_kw`) is capped by what was measured as drawn
        (``control.ancillary.drawn_sheddable_kw``), per group where the daemon's telemetry says it
        miner by miner, else from the site's load:

        - ``miner_load_kw`` given (the daemon's meter): per miner
          (``control.ancillary.metered_group_sheddable_kw``): one that reported counts what it drew
          above its group's idle; a running one that did not, as commanded; one asleep, powered off
          or unavailable that did not, 0 (no idle subtracted for it). Each group holds
          min(commanded, its metered sum). A miner's reports stand for the part of the interval
          they cover (``miner_covered``, H7); the rest counts as not reported. Basis ``"metered"``
          when every running miner reported over the interval, ``"partly metered"`` when some did
          not or left more than 1/15 of it uncovered (``reserve_unreported_running_units`` says how
          many), ``"commanded"`` when none did (or no miner reported at all).
        - else ``metered_load_kw`` (the backtest's and simulation's modelled fleet, a direct caller):
          less the idle draw of every unit not powered off at the PDU (those draw none), scaled pro
          rata over the groups; basis ``"metered"``. ``load_kw`` is the miners' load alone (GPU
          clusters and auxiliaries are not in it), so nothing else is subtracted.
        - neither: the commanded figure, basis ``"commanded"``.

        Call with the lock held. Costs O(miners) once an interval (one dict look-up per miner, then
        numpy), never per tick.

        Parameters
        ----------
        metered_load_kw : float or None
            The interval's measured (or modelled) mean miner load, kW; None: no fresh measurement.
        miner_load_kw : mapping of str to float, optional
            Miner id -> mean reported power over the interval, kW, for those that reported
            (``IntervalMeter.summary``'s ``miner_power_kw``); ids not in the fleet are ignored.
        miner_covered : mapping of str to float, optional
            Miner id -> the share of the interval its reports cover (``miner_covered_fraction``, H7):
            the uncovered part counts as not reported (``metered_group_sheddable_kw``); None or absent: 1.
        commanded_kw : mapping of str to float, optional
            Group -> the commanded sheddable load time-weighted over the interval, kW (issue 15 H6:
            the units that ran, weighted by how long they ran; ``control.ancillary.SheddableMean``);
            None: the fleet as commanded now (:meth:`reserve_sheddable_kw`). The metered cap is
            already an interval mean.

        Returns
        -------
        dict
            ``reserve_sheddable_kw`` (group -> kW, the figure the hold check uses),
            ``reserve_sheddable_commanded_kw`` (group -> kW as commanded), ``reserve_sheddable_metered_kw``
            (kW measured as sheddable, site total; None unmetered), ``reserve_sheddable_metered_group_kw``
            (group -> kW as measured per miner; None without per-miner figures),
            ``reserve_unreported_running_units`` (running miners that sent no telemetry in the
            interval; None without per-miner figures) and ``reserve_hold_basis`` (``"metered"``,
            ``"partly metered"`` or ``"commanded"``), as recorded in the ``measurement`` and
            ``reserve_hold_short`` payloads.
        """
        now_kw = self.reserve_sheddable_kw()
        commanded = now_kw if commanded_kw is None else {g: float(commanded_kw.get(g, 0.0)) for g in now_kw}
        metered: float | None = None
        by_group: dict[str, float] | None = None
        unreported: int | None = None
        basis = "commanded"
        if miner_load_kw is not None:
            by_group, unreported, running = {}, 0, 0
            for group_id, group in self.fleet.groups.items():
                cols = self.fleet.columns(group_id)
                ids = cols.miner_id.tolist()
                reported = np.fromiter((miner_load_kw.get(m, math.nan) for m in ids), dtype=float, count=len(ids))
                covered = (None if miner_covered is None else  # H7: a report stands for its span only
                           np.fromiter((miner_covered.get(m, 1.0) for m in ids), dtype=float, count=len(ids)))
                kw, silent = metered_group_sheddable_kw(
                    cols.mode, cols.available, reported,
                    [m.power_kw - group.idle_power_kw for m in group.modes], group.idle_power_kw, covered)
                by_group[group_id] = kw
                unreported += silent
                running += int((cols.mode >= 0).sum())
            metered = sum(by_group.values())
            heard = running - unreported
            basis = ("metered" if (unreported == 0 and (running > 0 or len(miner_load_kw) > 0))
                     else "partly metered" if heard > 0 else "commanded")
            used = drawn_sheddable_kw(commanded, by_group)
        else:
            if metered_load_kw is not None and math.isfinite(float(metered_load_kw)):
                # A unit powered off at the PDU draws nothing, so none of its idle is in the load.
                idle_kw = sum((self.fleet.group_size(g.id) - self.fleet.powered_off(g.id)) * g.idle_power_kw
                              for g in self.fleet.groups.values())
                metered = max(float(metered_load_kw) - idle_kw, 0.0)
                basis = "metered"
            used = drawn_sheddable_kw(commanded, metered)
        return {"reserve_sheddable_kw": used,
                "reserve_sheddable_commanded_kw": commanded,
                "reserve_sheddable_commanded_basis": "time-weighted" if commanded_kw is not None else "at end",
                "reserve_sheddable_metered_kw": metered,
                "reserve_sheddable_metered_group_kw": by_group,
                "reserve_unreported_running_units": unreported, "reserve_hold_basis": basis}

    def record_reserve_hold(self, interval_start: datetime, interval_h: float,
                            at: datetime | None = None, hold: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Issue 15: per product, the reserve awarded over a finished interval and not held by the
        running, sheddable, qualified load (``control.ancillary.mean_hold_shortfalls``: the
        obligation and the shortfall time-weighted over the interval, each award and deployment
        revision while it was held; ``reserve_hold_shortfalls`` per piece); a
        ``reserve_hold_short`` audit record per product short, with the clawback
        (``reserve_clawback_usd``, at the awards' price), so the report charges back what the
        backtest settles. Returns product -> kW short (also kept in ``reserve_hold_short_kw``; the
        obligation, product -> kW, in ``reserve_obligation_kw``, which the backtest settles).

        ``hold``: the interval's figures (:meth:`_reserve_hold_figures`, from the measured load:
        H1, units commanded but not drawing hold nothing); None: the fleet as commanded now,
        labelled ``reserve_hold_basis: "commanded"``. Each record carries them
        (``reserve_sheddable_kw`` per group, the figure used; ``reserve_sheddable_commanded_kw``;
        ``reserve_sheddable_metered_kw``; ``reserve_hold_basis``). ``at``: when the records are
        written (default the interval's end; the interval is in the payload)."""
        if self.profile.ancillary is None:
            return {}
        start = pd.Timestamp(interval_start)
        step = timedelta(hours=interval_h)
        with self._lock:
            # Time-weighted over the interval (H6): each award revision in force less the deployed MW
            # in force, each revision while it was held (``mean_hold_shortfalls``).
            awards, deployments = self._obligation_windows()
            if hold is None:
                hold = self._reserve_hold_figures(None)
        sheddable = dict(hold["reserve_sheddable_kw"])
        prices = mean_award_prices(awards, start.to_pydatetime(), (start + step).to_pydatetime())
        obligations, short = mean_hold_shortfalls(self.profile, [w[:4] for w in awards], deployments,
                                                  {g: kw for g, kw in sheddable.items() if kw > 0},
                                                  start.to_pydatetime(), (start + step).to_pydatetime())
        kept = self.__dict__.setdefault("reserve_obligation_kw", {})  # start -> product -> kW (the backtest settles it)
        kept[start] = obligations
        if len(kept) > 10_000:
            kept.pop(next(iter(kept)))
        if not any(v > 0 for v in obligations.values()):
            return {}
        short = {p: kw for p, kw in short.items() if obligations[p] > 0}
        self.reserve_hold_short_kw[start] = short
        if len(self.reserve_hold_short_kw) > 10_000:  # a few months of intervals (the trail keeps them all)
            self.reserve_hold_short_kw.pop(next(iter(self.reserve_hold_short_kw)))
        for product, kw in short.items():
            if kw <= _HOLD_SHORT_KW:
                continue
            price = prices.get(product)
            self._record("reserve_hold_short", lambda p=product, kw=kw, price=price: {**reserve_hold_short_payload(
                start.to_pydatetime(), interval_h, p, obligations[p], kw, price,
                None if price is None else reserve_clawback_usd(kw, price, interval_h)),
                **{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in hold.items()}},
                at or (start + step).to_pydatetime())
        return short

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
        control state not durable, the driver's transport down, more than 10 % of the fleet planned
        unavailable by health findings, more than 10 % of the fleet silent past the telemetry staleness
        window (``telemetry_freshness``)."""
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
        stopped = self._health_stopped()
        if len(stopped) > 0.1 * max(len(self.fleet.miners), 1):  # a fleet-wide finding is more likely a fault of ours
            causes.append(f"health: {len(stopped)} of {len(self.fleet.miners)} units planned unavailable "
                          "(critical findings); check telemetry and the detectors")
        silent = self._telemetry_cause(self.telemetry_freshness(now))  # issue 15 H7: a silent fleet
        if silent is not None:
            causes.append(silent)
        return causes

    def status(self, now: datetime) -> dict[str, Any]:
        """The ``/status`` document at ``now``: last solve, fallbacks, limits in force and their sources,
        DR events, units running, counters, noise calibration and compliance, AS performance, health.

        An AS deployment it shows held past its sustained duration (``overrun``) or released is
        audited and counted first, once (``_as_deployment_transitions``), so the trail never lags
        what ``/status`` says."""
        report = self.last_report
        age = None if self.last_good_tick is None else (now - self.last_good_tick).total_seconds()
        # The check that shows a deployment's overrun (limits.as_deployments[].overrun) audits it too,
        # once (issue 15, H2 finding 3: /status showed it at once, the trail only at the next tick).
        as_transitions = getattr(self, "_as_deployment_transitions", None)
        if as_transitions is not None:
            as_transitions(now)
        with self._lock:
            causes = self.unhealthy_causes(now)
            limits = self.book.summary(now)
            # Each deployment's limit as the book enforces it now (stacked, after the others' recalls:
            # second newcomer finding 6 showed the stored 689.4 kW while 889–939 kW was enforced); the
            # stored figure, from the load drawn at the instruction, stays as limit_at_instruction_kw.
            for shown in limits.get("as_deployments", []):
                held = self.book.as_deployments.get(shown.get("deployment_id"))
                if held is not None:
                    shown["limit_at_instruction_kw"] = shown.get("limit_kw")
                    shown["limit_kw"] = self.book.deployment_limit_kw(held, now)
            active = self.book.dr.active_ids(now)
        # The learned price model's block (issue 14), from the forecaster's hook, so `run` and `run --simulate`
        # show the same thing (the newcomer review found it only in `run`); None: the rules alone.
        model = getattr(getattr(self, "forecaster", None), "price_forecaster", None)
        price_model = model.status() if callable(getattr(model, "status", None)) else None
        counters = dict(self.counters)
        if price_model is not None:
            counters.update(price_model.get("counters", {}))
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
            "forecast_source": getattr(self, "forecast_source", "rules"),
            "active_dr_events": active,
            "limits": limits,
            "units_running": self.fleet.units_running(),
            "miners_unavailable": {m: u.reason for m, u in self.registry.unavailable().items()},
            # Miners silent past the telemetry staleness window (issue 15 H7; not planned unavailable).
            "telemetry": self.telemetry_freshness(now),
            "counters": counters,
            "price_model": price_model,
            "noise_offsets_db": dict(self.noise_offsets_db),
            "noise_compliance": self.noise_compliance(),
            # AS deployments of the last day: obligation vs delivered, shortfall, time to respond (issue 15).
            "as_performance": [dict(p) for p in self.as_performance.values()
                               if datetime.fromisoformat(p["issued_at"]) > now - timedelta(days=1)],
            # Fleet health (issue 17): current findings, and the units the plan leaves out or derates.
            "health": self._health_status(),
            "command_rejections": {k: dict(v) for k, v in self.command_rejections.items()},
            "last_tick_stability": "" if report is None else report.stability,
        }

    def _health_status(self) -> dict[str, Any]:
        findings = self.health.findings()
        factors = {m: self.health.derate_factor(m) for m in {f.miner_id for f in findings}}
        return {"findings": [f.as_alert() for f in findings[:200]], "finding_count": len(findings),
                "planned_unavailable": sorted(m for m, k in factors.items() if k <= 0.0),
                "derated": sorted(m for m, k in factors.items() if 0.0 < k < 1.0)}
