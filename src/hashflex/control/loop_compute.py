"""GPU clusters in the control loop (issue 16): the plan's first interval as compute commands on their own sender
thread, the clusters' modelled draw counted by the guard, and the drivers' answers. A mixin of
:class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py`` along its seam.
"""

from __future__ import annotations

import logging
from datetime import datetime

from hashflex.control.compute_commands import ComputeState, plan_commands
from hashflex.control.fastpath import _replace
from hashflex.drivers.compute import ComputeCommand, ComputeResult
from hashflex.optimize.schedule import Schedule

log = logging.getLogger(__name__)


class ComputeMixin:
    """GPU-cluster commands from the control loop (a mixin of :class:`~hashflex.control.loop.ControlLoop`)."""

    def _command_compute(self, schedule: Schedule, now: datetime) -> None:
        """Queue the GPU plan's first interval as compute commands (call with the lock held) and count the
        clusters' modelled draw as non-miner load in the guard's measurements."""
        if self.profile.compute is None:
            return
        row = schedule.frame.iloc[0]
        gpus = {c[len("gpus_"):]: float(row[c]) for c in schedule.frame.columns if c.startswith("gpus_")}
        it_kw = {c[len("it_kw_"):]: float(row[c]) for c in schedule.frame.columns if c.startswith("it_kw_")}
        commands, state = plan_commands(self.profile, gpus, it_kw, now, self.expiry_s)
        self._send_compute(commands, state)

    def _send_compute(self, commands: list[ComputeCommand], state: ComputeState) -> None:
        self.compute_state = state
        self.measurements = _replace(self.measurements, auxiliary_kw=state.site_kw)
        if self.compute_driver is not None and commands:
            self._compute_sender.submit(commands, self._after_compute)

    def _apply_compute(self, commands: list[ComputeCommand] | None) -> list[ComputeResult]:
        if commands is None:  # a flush marker (flush_sends)
            return []
        return self.compute_driver.apply(commands)

    def _after_compute(self, commands: list[ComputeCommand], results: list[ComputeResult]) -> None:
        with self._lock:
            self.compute_results = results
            failed = sum(1 for r in results if not r.ok)
            self.counters["compute_commands"] = self.counters.get("compute_commands", 0) + len(results)
            self.counters["compute_command_failures"] = self.counters.get("compute_command_failures", 0) + failed
            if failed:
                log.warning("%d of %d compute commands not applied: %s", failed, len(results),
                            "; ".join(f"{r.command_id}: {r.status} {r.reason}" for r in results if not r.ok)[:500])
