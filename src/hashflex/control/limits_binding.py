"""What binds the site, read from the limits book: import limits and noise caps at a moment and strictest-in-
interval over a horizon, carbon budget overrides, managers' limits expiring, and the ``/status`` summary.
A mixin of :class:`~hashflex.control.limits.LimitsBook`, split from :mod:`hashflex.control.limits` along its
seam; pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.control.limits_values import ManagerLimit, limits_source
from hashflex.optimize.problem import four_cp_limits_kw


class BindingMixin:
    """What binds the site now and over a horizon (a mixin of :class:`~hashflex.control.limits.LimitsBook`).

    An AS deployment's limit is ``self.deployment_limit_kw``, the book's stacked rule from
    :class:`~hashflex.control.limits_ancillary.AncillaryBookMixin` (one definition: the own-limit
    version that was here was shadowed by it)."""

    # ------------------------------------------------------------------ what binds

    def import_limits_at(self, t: datetime) -> dict[str, float]:
        """Every import limit in force at ``t`` by source label (DR:<id>, limits:<issuer>, 4CP window,
        hold:<key>), finite values only; the site is held to the minimum.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            Source label → import limit, kW: the binding DR event, each manager's import limit, each
            hold, the 4CP window (``optimize.problem.four_cp_limits_kw``) and each AS deployment
            (``AS:<product>:<id>``).
        """
        out: dict[str, float] = {}
        limit, label = self.dr.limit_at(t)
        if math.isfinite(limit):
            out[label] = limit
        for (issuer, part), held in self.manager.items():
            if part == "import" and held.in_force(t) and held.import_limit_kw is not None:
                out[limits_source(issuer)] = held.import_limit_kw
        for hold in self.holds.values():
            if hold.in_force(t):
                out[f"hold:{hold.key}"] = min(hold.limit_kw, out.get(f"hold:{hold.key}", math.inf))
        cp = four_cp_limits_kw(self.profile, pd.DatetimeIndex([pd.Timestamp(t)]), self.four_cp_alert_days)[0]
        if math.isfinite(cp):
            out["4CP window"] = float(cp)
        for deployment in self.as_deployments.values():
            if deployment.in_force(t):
                out[deployment.source] = self.deployment_limit_kw(deployment, t)
        return out

    def noise_caps_at(self, t: datetime) -> dict[str, float]:
        """Receptor id → the lowest manager cap override in force at ``t``.

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            Receptor id → cap, dB(A), for receptors with an override window containing ``t``.
        """
        caps: dict[str, float] = {}
        for (_, part), held in self.manager.items():
            if part != "noise" or not held.in_force(t):
                continue
            for cap in held.noise_caps:
                if cap.window_start <= t < cap.window_end:
                    caps[cap.receptor_id] = min(cap.cap_dba, caps.get(cap.receptor_id, math.inf))
        return caps

    def import_limits_over(self, interval_start: Sequence[datetime] | pd.DatetimeIndex,
                           interval: timedelta) -> tuple[np.ndarray, list[str]]:
        """Per interval ``[start, start + interval)``: the lowest import limit in force at any moment
        inside it and its source label (inf and "" where none). 4CP is left to the problem builder,
        which applies the same windows (``optimize.problem.four_cp_limits_kw``).

        Parameters
        ----------
        interval_start : sequence of datetime or pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        limits : numpy.ndarray
            Shape (T,), the binding import limit per interval, kW (inf where none).
        labels : list of str
            Length T, the binding source's label per interval ("" where none).

        Raises
        ------
        ValueError
            If a start is timezone-naive (:meth:`DRBook.limits_over`).
        """
        candidates: list[tuple[float, str, Any]] = [
            (h.import_limit_kw, limits_source(i), h) for (i, p), h in self.manager.items()
            if p == "import" and h.import_limit_kw is not None]
        candidates += [(h.limit_kw, f"hold:{h.key}", h) for h in self.holds.values()]
        if (isinstance(interval_start, pd.DatetimeIndex) and len(interval_start) and not interval_start.hasnans
                and interval_start.tz is not None and not self.as_deployments):
            # Issue 18: no stamp converted unless a manager's limit or a hold touches the horizon (the
            # DR book skips its events the same way); the hull test is frames.in_force's overlap rule.
            limits, labels = self.dr.limits_over(interval_start, interval)
            first, last = interval_start.min().to_pydatetime(), interval_start.max().to_pydatetime()
            until = last + interval if interval > timedelta(0) else last + timedelta(microseconds=1)
            candidates = [c for c in candidates if c[2].in_force(first, until)]
            if not candidates:
                return np.asarray(limits, dtype=float).copy(), list(labels)
        starts = [pd.Timestamp(t).to_pydatetime() for t in interval_start]
        limits, labels = self.dr.limits_over(starts, interval) if starts else (np.zeros(0), [])
        limits = np.asarray(limits, dtype=float).copy()
        labels = list(labels)
        for value, label, item in candidates:
            for k, start in enumerate(starts):
                if value < limits[k] and item.in_force(start, start + interval):
                    limits[k], labels[k] = value, label
        for deployment in self.as_deployments.values():
            for k, start in enumerate(starts):
                if deployment.in_force(start, start + interval):
                    value = self.deployment_limit_kw(deployment, start, start + interval)
                    if value < limits[k]:
                        limits[k], labels[k] = value, deployment.source
        return limits, labels

    def noise_caps_over(self, interval_start: pd.DatetimeIndex, interval: timedelta) -> dict[str, np.ndarray]:
        """Receptor id → per interval the lowest override cap whose window overlaps the interval (inf
        where none): a window starting mid-interval binds the whole interval.

        Parameters
        ----------
        interval_start : pandas.DatetimeIndex
            The intervals' starts, shape (T,), timezone-aware.
        interval : datetime.timedelta
            The intervals' length.

        Returns
        -------
        dict of str to numpy.ndarray
            Receptor id → shape (T,) cap, dB(A) (inf where none); receptors without an override are
            absent.
        """
        out: dict[str, np.ndarray] = {}
        noise = [held for (_, part), held in self.manager.items() if part == "noise"]
        if not noise:  # issue 18: nothing held, no per-tick index arithmetic
            return out
        starts = pd.DatetimeIndex(interval_start)
        ends = starts + pd.Timedelta(interval)
        for held in noise:
            active = np.array([held.in_force(s.to_pydatetime(), e.to_pydatetime()) for s, e in zip(starts, ends)],
                              dtype=bool)
            for cap in held.noise_caps:
                overlap = active & (starts < pd.Timestamp(cap.window_end)) & (ends > pd.Timestamp(cap.window_start))
                row = out.setdefault(cap.receptor_id, np.full(len(starts), np.inf))
                row[overlap] = np.minimum(row[overlap], cap.cap_dba)
        return out

    def carbon_budget_overrides_kg(self, t: datetime) -> dict[str, float]:
        """"day" / "month" → the lowest manager budget in force at ``t`` (kg CO2).

        Parameters
        ----------
        t : datetime
            The moment, timezone-aware.

        Returns
        -------
        dict of str to float
            ``day`` and/or ``month`` → budget, kg CO2 per period; empty when no manager set one.
        """
        out: dict[str, float] = {}
        for (_, part), held in self.manager.items():
            if part == "carbon" and held.in_force(t) and held.carbon_period and held.carbon_budget_kg is not None:
                out[held.carbon_period] = min(held.carbon_budget_kg, out.get(held.carbon_period, math.inf))
        return out

    def expire(self, now: datetime) -> list[ManagerLimit]:
        """Drop manager limits and holds whose ``valid_until`` / end has passed; returns the limits
        dropped (the caller records them and commits).

        AS awards that ended more than a day ago and deployments that ended more than 7 days ago are
        dropped too, so the durable book stays bounded.

        Parameters
        ----------
        now : datetime
            The time, timezone-aware.

        Returns
        -------
        list of ManagerLimit
            The manager limits dropped (holds and AS entries are not listed).
        """
        gone = [h for h in self.manager.values() if h.valid_until is not None and h.valid_until <= now]
        for held in gone:
            del self.manager[held.issuer, held.part]
        self.holds = {k: h for k, h in self.holds.items() if h.end is None or h.end > now}
        # Awards and deployments long over are dropped so the durable book stays bounded.
        self.as_awards = {k: a for k, a in self.as_awards.items()
                          if datetime.fromisoformat(a["end"]) > now - timedelta(days=1)}
        self.as_deployments = {k: d for k, d in self.as_deployments.items() if d.end > now - timedelta(days=7)}
        return gone

    def summary(self, now: datetime) -> dict[str, Any]:
        """JSON-ready view for /status: limits in force now, DR events, manager limits, holds.

        Parameters
        ----------
        now : datetime
            The time, timezone-aware.

        Returns
        -------
        dict
            ``import_limit_kw`` and ``import_limit_source`` (the binding one, or None),
            ``import_limits_kw`` (:meth:`import_limits_at`), ``noise_caps_dba``,
            ``carbon_budget_overrides_kg``, ``dr_events`` (pending and active), ``manager_limits``,
            ``holds``, ``as_awards_kw`` and ``as_deployments`` (those in force, each with its
            ``sustain_until`` and whether it is held past it without a recall, ``overrun``).
        """
        imports = self.import_limits_at(now)
        binding = min(imports.items(), key=lambda kv: kv[1]) if imports else None
        return {
            "import_limit_kw": None if binding is None else binding[1],
            "import_limit_source": None if binding is None else binding[0],
            "import_limits_kw": imports,
            "noise_caps_dba": self.noise_caps_at(now),
            "carbon_budget_overrides_kg": self.carbon_budget_overrides_kg(now),
            "dr_events": [{"event_id": i, "status": self.dr.status(i), "issuer": self.dr.message(i).issuer,
                           "limit_kw": None if not math.isfinite(self.dr.limit_kw(i)) else self.dr.limit_kw(i),
                           "start": self.dr.message(i).start.isoformat(),
                           "end": None if self.dr.message(i).end is None else self.dr.message(i).end.isoformat()}
                          for i in self.dr.event_ids() if self.dr.status(i) in ("pending", "active")],
            "manager_limits": [h.to_json() for h in self.manager.values()],
            "holds": [{"key": h.key, "limit_kw": h.limit_kw, "start": h.start.isoformat(),
                       "end": None if h.end is None else h.end.isoformat()} for h in self.holds.values()],
            "as_awards_kw": self.reserve_awards_at(now),
            "as_deployments": [{**d.to_json(), "sustain_until": d.sustain_until.isoformat(), "overrun": d.overrun_at(now)}
                               for d in self.as_deployments.values() if d.in_force(now)],
        }
