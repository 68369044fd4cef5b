"""The control loop's durable state: committing the limits book before an acknowledgement, what a failed commit
leaves (a hold, ``/healthz`` 503), the commitment state after each batch, and the restart that enforces what was
in force before any solve. A mixin of :class:`~hashflex.control.loop.ControlLoop`, split from ``loop.py``.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from hashflex.audit import AuditLog
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
            self.store.set_meta("fleet", self.fleet.to_compact(4))
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
        whose groups the PDU can power off keep the per-miner guard.

        The AS deployments' performance (``/status`` ``as_performance``) is rebuilt first from the
        store's audit trail (:meth:`_restore_as_performance`): after a kill -9 it was empty while a
        deployment was in force (issue 15, H2 finding 4)."""
        with self._lock:
            self._restore_as_performance()
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

    def _restore_as_performance(self) -> int:
        """Rebuild :attr:`as_performance` after a restart (call with the lock; issue 15, H2 finding 4).

        For each deployment in the limits book (in force, or ended within the book's 7 days), the
        latest ``as_performance`` record of its id in the store's audit trail (the ``event`` key of an
        overrun/release record dropped: it is that record's, not the deployment's state); one the
        trail lacks (its record was queued, not yet written, when the process died) is rebuilt from
        the book entry (obligation, baseline, limit, deadline; nothing measured), with
        ``restored_from`` naming the source either way. Entries already held are kept. A trail that
        cannot be read leaves the book-built entries (logged, never raised: a restart must enforce
        the limits whatever the trail says).

        Returns
        -------
        int
            How many entries were restored.
        """
        deployments = getattr(self.book, "as_deployments", {})
        wanted = [i for i in deployments if i not in self.as_performance]
        if not wanted:
            return 0
        latest: dict[str, dict[str, Any]] = {}
        path = getattr(self.store, "path", None)
        if path is not None:
            try:
                with AuditLog(path, readonly=True) as trail:
                    for record in trail.records("as_performance"):
                        deployment_id = record.payload.get("deployment_id")
                        if deployment_id in deployments:
                            latest[deployment_id] = record.payload
            except Exception:  # an unreadable trail must not stop the restart's cut
                log.exception("could not read the audit trail to restore AS performance")
        for deployment_id in wanted:
            held = deployments[deployment_id]
            if deployment_id in latest:
                entry = {k: v for k, v in latest[deployment_id].items() if k != "event"}
                entry["restored_from"] = "audit trail"
            else:
                entry = {"deployment_id": held.deployment_id, "product": held.product, "revision": held.revision,
                         "issued_at": held.issued_at.isoformat(), "deadline": held.deadline.isoformat(),
                         "obligation_kw": held.deployed_kw, "baseline_kw": held.baseline_kw,
                         "limit_kw": held.limit_kw, "sustain_until": held.sustain_until.isoformat(),
                         "release_at": held.end.isoformat(), "measured_import_kw": None,
                         "measured_shortfall_kw": None, "measured_response_s": None,
                         "measured_within_deadline": None, "restored_from": "limits book"}
                if held.recalled:
                    entry["ended_at"] = held.end.isoformat()
            self.as_performance[deployment_id] = entry
        return len(wanted)
