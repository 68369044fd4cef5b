"""Fleet health in the control loop (issue 17): the ratings the detectors judge each miner by, the units the
plan leaves out (must stop) or derates (hot), and alerts on ``out/alert``. A mixin of
:class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py`` along its seam.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hashflex.control.fleet import FleetArrays
from hashflex.health.detectors import Rating
from hashflex.profile import SiteProfile


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
