"""Fleet health in the control loop (issue 17): the ratings the detectors judge each miner by, the units the
plan leaves out (must stop) or derates (hot), and alerts on ``out/alert``. A mixin of
:class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py`` along its seam.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

from hashflex.control.fleet import FleetArrays
from hashflex.health.detectors import Rating
from hashflex.plausibility.bounds import STALENESS_S
from hashflex.profile import SiteProfile

SILENT_SHARE_DEGRADED = 0.1
"""More than this share of the fleet silent past the telemetry staleness window makes the controller not
healthy (issue 15, H7): the same tenth as for units planned unavailable by health findings; a fleet-wide
silence is more likely the network, the broker or the miners' agent than the miners."""

_SILENT_SAMPLE = 50  # ids listed in /status (the count is exact); 100k ids would swamp the document


def health_ratings(profile: SiteProfile) -> dict[str, Rating]:
    """Each miner's rating for the health detectors: its group's least efficient mode (J/TH), so that
    running a turbo mode is not read as efficiency drift."""
    j_th = {group.id: max(mode.power_kw * 1000.0 / mode.hashrate_th_s for mode in group.modes
                          if mode.hashrate_th_s > 0) for group in profile.miner_groups}
    return {miner_id: Rating(j_th=j_th[group_id]) for miner_id, group_id in profile.miner_ids().items()}


class HealthMixin:
    """Fleet health in the control loop (a mixin of :class:`~hashflex.control.loop.ControlLoop`)."""

    def _health_stopped(self) -> set[str]:
        """Miners health says must not run (derate factor 0): planned as unavailable this tick."""
        ids = {f.miner_id for f in self.health.findings()}
        return {m for m in ids if m in self.fleet.miners and self.health.derate_factor(m) <= 0.0}

    def _health_derates(self, periods: int) -> dict[str, Any]:
        """Hot units (derate factor in (0, 1)) as ``problem_from_profile``'s derates: per group, how many,
        and the highest mode power they may run, factor × the group's top mode power (kW)."""
        units: dict[str, int] = {}
        cap_kw: dict[str, float] = {}
        for miner_id in {f.miner_id for f in self.health.findings()}:
            miner = self.fleet.miners.get(miner_id)
            factor = self.health.derate_factor(miner_id) if miner is not None else 1.0
            if miner is None or not (0.0 < factor < 1.0) or not miner.available:
                continue
            group = self.profile.group(miner.group_id)
            units[group.id] = units.get(group.id, 0) + 1
            top_kw = max(mode.power_kw for mode in group.modes)
            cap_kw[group.id] = min(cap_kw.get(group.id, math.inf), factor * top_kw)
        if not units:
            return {}
        return {"derated_units": {g: np.full(periods, n, dtype=int) for g, n in units.items()},
                "derated_max_power_kw": cap_kw}

    def _alert(self, finding: Any) -> None:
        """A new health finding: ``out/alert`` (MQTT) and the audit-free counter; never raises."""
        self.counters["health_alerts"] = self.counters.get("health_alerts", 0) + 1
        self._publish("out/alert", finding.as_alert())

    def telemetry_freshness(self, now: datetime) -> dict[str, Any]:
        """Miners silent past the telemetry staleness window at ``now``, for /status (issue 15, H7).

        A miner that stops reporting produces no reading, so no health detector flags it, and the
        staleness window (600 s) only refused old messages: /status stayed healthy with 570 of 720
        miners silent. A silent miner is not planned unavailable here: it may still run and draw
        (its last command stands), so leaving it out of the plan could plan load the site already
        has; the hold check counts its silent time as commanded (``IntervalMeter``, H7).

        Parameters
        ----------
        now : datetime
            The time judged at, timezone-aware.

        Returns
        -------
        dict
            ``max_age_s`` (the window, s), ``reporting_miners`` (miners that have reported since the
            start), ``stale_miners`` (of those, how many are silent longer than the window, and,
            once the process is older than the window, the running miners that never reported:
            issue 15 H9, a fleet silent since a restart read 0 stale and healthy),
            ``stale_running_miners`` (of those, how many the fleet has running), ``stale_sample``
            (up to 50 of their ids, sorted) and ``degraded`` (True when more than
            :data:`SILENT_SHARE_DEGRADED` of the fleet is silent).
        """
        max_age_s = float(self._plausibility.staleness_s.get("telemetry") or STALENESS_S["telemetry"])
        silent = self.health.silent(now, max_age_s)
        miners = self.fleet.miners
        silent = [m for m in silent if m in miners]
        # A running miner that never reported since the process started: silent too once the
        # process has run longer than the window (before that it may not have had its chance to
        # report). Only for a loop that takes telemetry (a meter): without one (simulation,
        # backtest) the load is modelled and no miner is expected to report.
        since = self.__dict__.get("_telemetry_watch_from")
        if (self.meter is not None and since is not None
                and now.timestamp() - since.timestamp() > max_age_s):
            never = self.health.unreported(m for m, miner in miners.items() if miner.running)
            if never:
                silent = sorted({*silent, *never})
        running = sum(1 for m in silent if miners[m].running)
        return {"max_age_s": max_age_s, "reporting_miners": self.health.reporting_count(),
                "stale_miners": len(silent), "stale_running_miners": running,
                "stale_sample": silent[:_SILENT_SAMPLE],
                "degraded": len(silent) > SILENT_SHARE_DEGRADED * max(len(miners), 1)}

    def _telemetry_cause(self, freshness: dict[str, Any]) -> str | None:
        """The unhealthy cause for :meth:`telemetry_freshness`'s figures, or None when not degraded."""
        if not freshness["degraded"]:
            return None
        return (f"telemetry: {freshness['stale_miners']} of {len(self.fleet.miners)} miners silent for more than "
                f"{freshness['max_age_s']:.0f} s ({freshness['stale_running_miners']} commanded to run, counted as "
                "commanded); check the miners' network, agent and the broker")

    def _dispatch_hints(self, arrays: FleetArrays) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Health for the dispatcher (call with the lock held): per group, each miner's score (1 healthy;
        :func:`hashflex.health.detectors.health_score`) and whether it is hot (derate factor in (0, 1)).
        Units that must stop (factor 0) are marked unavailable in ``arrays`` (this tick's copy only).

        Parameters
        ----------
        arrays : FleetArrays
            This tick's copy of the fleet; changed in place for units that must stop.

        Returns
        -------
        (dict[str, np.ndarray], dict[str, np.ndarray])
            ``health_score`` and ``hot`` as :func:`hashflex.control.dispatch.plan_dispatch_arrays` takes them.
        """
        scores = self.health.scores()
        score = {g: np.ones(len(a.miner_id)) for g, a in arrays.groups.items()}
        hot = {g: np.zeros(len(a.miner_id), dtype=bool) for g, a in arrays.groups.items()}
        for miner_id, value in scores.items():
            try:
                group_id, i = arrays.locate(miner_id)
            except KeyError:
                continue
            score[group_id][i] = value
            factor = self.health.derate_factor(miner_id)
            if factor <= 0.0:
                arrays.groups[group_id].available[i] = False
            elif factor < 1.0:
                hot[group_id][i] = True
        return score, hot
