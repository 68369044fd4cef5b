"""The control loop's durable state: committing the limits book before an acknowledgement, what a failed commit
leaves (a hold, ``/healthz`` 503), the commitment state after each batch, and the restart that enforces what was
in force before any solve. A mixin of :class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py``.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from datetime import datetime

from hashflex.control.dispatch import ArrayDispatch
from hashflex.control.fleet import FleetArrays
from hashflex.control.limits import LimitsBook

log = logging.getLogger(__name__)


class ControlStateMixin:
    """Durable control state of the loop (a mixin of :class:`~hashflex.control.loop.ControlLoop`)."""

    def _save_commitment(self) -> None:
        """Persist which miners run and their last start/stop (min on/off across a restart).

        Saved in the compact form (`FleetState.to_compact`, format 3: binary columns per group; at
        100,000 miners about 0.9 MB and 30 ms instead of 8.7 MB and 270 ms for the format-2 columns),
        since this runs on the fast path of every batch that changes a mode. A restart reads any
        of the three forms (`FleetState.from_dict`), so a state saved before an upgrade restores."""
        if self.store is None:
            return
        try:
            self.store.set_meta("fleet", self.fleet.to_compact())
        except Exception:  # noqa: BLE001 - a closed or failing store must not stop control
            log.exception("could not save the commitment state")

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
        reached them. Returns the future of the driver's results.

        Decided in counts and sent as columns as the DR fast path is (issue 18: at 100,000 miners the
        per-miner batch, guard and record took about a second before anything was sent); sites
        whose groups the PDU can power off keep the per-miner guard."""
        with self._lock:
            self._record("restart", lambda: {"limits": self.book.summary(now),
                                             "units_running": self.fleet.units_running()},
                         now)
            self._record_transitions(now)
            imports = self.book.import_limits_at(now)
            limit = min(imports.values(), default=math.inf)
            if self._pdu_site():
                batch = self.fleet.as_setpoints(now, self.expiry_s)
                result = self.guard.emergency_dr_cut(batch, limit, self.measurements, now=now)
                if result.changed:
                    self.counters["fast_path_actions"] += 1
                    self._record_guard(result, now, None)
                return self._dispatch(result.batch, now)
            if math.isfinite(limit):
                result, modes = self._emergency_cut_modes(limit, now)
                if result.changed:
                    self.counters["fast_path_actions"] += 1
                    self._record_guard(result, now, None)
                    return self._dispatch(result.batch, now, modes=modes)
            # nothing to cut: the fleet as it was commanded, whole, with fresh expiry
            arrays = FleetArrays.from_fleet(self.fleet)
            modes = {group_id: cols.mode for group_id, cols in arrays.groups.items()}
            return self._dispatch(ArrayDispatch(modes).to_batch(arrays, now, self.expiry_s), now, modes=modes)
