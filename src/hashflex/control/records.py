"""What the loop records: audit-trail entries (hash-chained, in the store's database) and the
per-interval measurements every report figure is computed from.

``AuditRecorder.record(kind, payload, at)`` never blocks its caller (the MQTT thread records DR
events): entries go onto a queue, and one thread appends them in order with
``audit.append_with_store``, each committed on the store's writer connection after every store
write queued before it. ``flush()`` waits for the queue to drain (tests, shutdown).

``IntervalMeter`` accumulates what the daemon measures during an interval (miner telemetry,
renewable output, noise readings) and turns it into the ``measurement`` payload when the
interval ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from hashflex.audit import append_with_store, noise_interval_summary
from hashflex.control.ancillary import UNCOVERED_MATERIAL_FRACTION
from hashflex.plausibility.bounds import STALENESS_S

log = logging.getLogger(__name__)


class AuditRecorder:
    """Appends audit-trail entries in order on one thread; :meth:`record` never blocks.

    A failed append is logged and counted in ``failures``, never raised: the audit must not stop
    control. The thread starts at construction.

    Parameters
    ----------
    store : hashflex.store.Store
        The store whose database holds the hash-chained trail (``audit.append_with_store``).
    paced : bool, default False
        Hold entries until :meth:`release` (or :meth:`flush` / :meth:`close`) hands them to the
        thread, in the order recorded. The backtest releases them as each solve starts, so the
        appends (canonical JSON, hash, SQLite) run while its loop waits on the solver worker
        instead of contending with the tick for the interpreter (issue 18). The trail is the same
        entries in the same order; only when they are appended changes. Not for the daemon, whose
        entries must reach the database as they happen.
    """

    def __init__(self, store: Any, *, paced: bool = False) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[str, Mapping[str, Any], datetime] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hashflex-audit", daemon=True)
        self.failures = 0
        self.paced = paced
        self._held: list[tuple[str, Mapping[str, Any], datetime]] = []
        self._held_lock = threading.Lock()
        self._thread.start()

    def record(self, kind: str, payload: Mapping[str, Any], at: datetime) -> None:
        """Queue one entry; it is appended after every entry queued before it.

        Parameters
        ----------
        kind : str
            One of :data:`hashflex.audit.KINDS`.
        payload : Mapping[str, Any]
            The entry's content (JSON-ready).
        at : datetime
            The entry's time, timezone-aware.
        """
        if self.paced:
            with self._held_lock:
                self._held.append((kind, payload, at))
            return
        self._queue.put((kind, payload, at))

    def release(self) -> None:
        """Hand every held entry to the appending thread, in the order recorded (paced only; a
        no-op otherwise)."""
        with self._held_lock:
            held, self._held = self._held, []
            for item in held:  # under the lock: a concurrent release cannot overtake these
                self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                kind, payload, at = item
                append_with_store(self.store, kind, payload, at)
            except Exception:  # the audit must never stop control; a failure is counted and logged
                self.failures += 1
                log.exception("audit append failed")
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every entry recorded so far was appended (or its failure counted); held
        entries (``paced``) are released first."""
        self.release()
        self._queue.join()

    def close(self) -> None:
        """Stop the thread after the entries already recorded (waits up to 30 s)."""
        self.release()
        self._queue.put(None)
        self._thread.join(30)


class IntervalMeter:
    """Running means of one interval's measurements (daemon side), and how much of the interval each
    miner's reports cover.

    Parameters
    ----------
    report_allowance_s : float, optional
        How long one report stands for a miner's draw, s, before and after it (default the telemetry
        staleness window, ``plausibility.bounds.STALENESS_S["telemetry"]``, 600 s: the age past which
        a telemetry reading is not believed, and what /status calls stale). The profile sets no
        telemetry cadence, so this is the longest gap between a steady miner's reports it allows.
    """

    def __init__(self, report_allowance_s: float | None = None) -> None:
        self.report_allowance_s = float(STALENESS_S["telemetry"] if report_allowance_s is None else report_allowance_s)
        self.reset()

    def reset(self) -> None:
        """Forget every sample (the start of a new interval)."""
        # Per miner: [Σ power kW, Σ hashrate TH/s, samples]. The interval's load is each miner's mean
        # over its reports, summed: a snapshot of the latest (as before) made an interval whose load fell
        # in its last minute look as if the site drew that all along (newcomer, issue 15: 92 kW recorded
        # for 05:45-06:00 while the site drew 17.6-19.6 MW for 14 of the 15 minutes).
        self.power_samples_kw: dict[str, list[float]] = {}
        # Per miner: [first, last] report time, POSIX s (issue 15, H7): one report at the start of an
        # interval and silence after it made the whole interval count as metered.
        self.report_times_s: dict[str, list[float]] = {}
        self.renewable_samples_kw: list[float] = []
        self.noise: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def telemetry(self, miner_id: str, power_kw: float, hashrate_th_s: float, at: datetime | None = None) -> None:
        """Add one miner's telemetry to its running mean over the interval.

        Parameters
        ----------
        miner_id : str
            The miner, as named by ``SiteProfile.miner_ids``.
        power_kw : float
            Its measured power draw, kW.
        hashrate_th_s : float
            Its measured hashrate, TH/s.
        at : datetime, optional
            When it was received, timezone-aware, on the clock the interval's bounds are on (the
            daemon passes the receipt time). None: untimed, the miner is taken to cover the interval.
        """
        sums = self.power_samples_kw.setdefault(miner_id, [0.0, 0.0, 0])
        sums[0] += power_kw
        sums[1] += hashrate_th_s
        sums[2] += 1
        if at is not None:
            t = at.timestamp()
            times = self.report_times_s.get(miner_id)
            if times is None:
                self.report_times_s[miner_id] = [t, t]
            else:  # receipt order is nearly time order; min/max keeps it right when not
                times[0], times[1] = min(times[0], t), max(times[1], t)

    def renewable(self, power_kw: float) -> None:
        """Add one on-site renewable output sample.

        Parameters
        ----------
        power_kw : float
            Renewable output, kW.
        """
        self.renewable_samples_kw.append(power_kw)

    def noise_reading(self, receptor_id: str, laeq_dba: float, averaging_s: float) -> None:
        """Add one noise meter reading at a receptor.

        Parameters
        ----------
        receptor_id : str
            The receptor (``profile.receptors[*].id``).
        laeq_dba : float
            The reading's equivalent continuous A-weighted level, dB(A).
        averaging_s : float
            The reading's averaging time, s (its weight in the interval's LAeq).
        """
        self.noise[receptor_id].append((laeq_dba, averaging_s))

    def summary(self, caps: Mapping[str, float | None], start: datetime | None = None,
                end: datetime | None = None) -> dict[str, Any]:
        """Load (telemetry sum), renewable (mean), hashrate, per receptor (LAeq, minutes over cap), and
        per miner the share of ``[start, end)`` its reports cover.

        Parameters
        ----------
        caps : Mapping[str, float or None]
            Receptor id → the noise cap in force over the interval, dB(A) (None or absent: no cap).
        start, end : datetime, optional
            The span the meter covered (the interval, or its part after the process started),
            timezone-aware. Either None: coverage is not judged (every reporter covers it all).

        Returns
        -------
        dict
            ``load_kw`` (sum over miners of each one's mean reported power in the interval, kW; miners
            report at a steady cadence, so the mean of its reports is its time mean), ``renewable_kw``
            (mean of the samples, kW; 0.0 without samples), ``hashrate_th_s`` (the same sum of means, TH/s), ``noise`` (receptor id →
            ``(LAeq dB(A), minutes over cap)``, ``audit.noise_interval_summary``),
            ``telemetry_miners`` (how many miners reported), ``miner_power_kw`` (miner id → its mean
            reported power, kW, for every miner that reported and no other: the reserve hold counts
            each miner, issue 15 H1b, ``ControlLoop._reserve_hold_figures``),
            ``miner_covered_fraction`` (the same ids → the share of the span in
            [max(start, first report − allowance), min(end, last report + allowance)], in [0, 1];
            1.0 for an untimed miner or without a span; issue 15 H7: the rest counts as unreported)
            and ``telemetry_uncovered_miners`` (how many leave more than
            ``control.ancillary.UNCOVERED_MATERIAL_FRACTION`` of the span uncovered: counted unreported).
        """
        renewable = sum(self.renewable_samples_kw) / len(self.renewable_samples_kw) if self.renewable_samples_kw else 0.0
        noise = {r: noise_interval_summary(readings, caps.get(r)) for r, readings in self.noise.items() if readings}
        # One pass over the miners that reported (100k at most, once an interval), the sums from it.
        means = {m: p / n for m, (p, _, n) in self.power_samples_kw.items()}
        covered = dict.fromkeys(means, 1.0)
        uncovered_miners = 0
        if start is not None and end is not None and end > start and self.report_times_s:
            t0, t1 = start.timestamp(), end.timestamp()
            span_s = t1 - t0
            ids = list(self.report_times_s)
            times = np.array(list(self.report_times_s.values()), dtype=float).reshape(-1, 2)
            lo = np.maximum(times[:, 0] - self.report_allowance_s, t0)
            hi = np.minimum(times[:, 1] + self.report_allowance_s, t1)
            covered_s = np.clip(hi - lo, 0.0, span_s)
            covered.update(zip(ids, (covered_s / span_s).tolist(), strict=True))
            uncovered_miners = int((covered_s < (1.0 - UNCOVERED_MATERIAL_FRACTION) * span_s).sum())
        return {"load_kw": sum(means.values()), "renewable_kw": renewable,
                "hashrate_th_s": sum(h / n for _, h, n in self.power_samples_kw.values()), "noise": noise,
                "telemetry_miners": len(self.power_samples_kw), "miner_power_kw": means,
                "miner_covered_fraction": covered, "telemetry_uncovered_miners": uncovered_miners}
