"""SQLite time-series and event store: the single source of truth for the loop and the reports.

One database file in WAL mode. All writes go through one writer thread fed by a queue, which batches
them into transactions (``executemany``), so a producer such as the MQTT network thread only enqueues
and never waits on disk; ``flush()`` waits until everything enqueued so far is committed. Reads run on
the calling thread's own connection and see committed data. Timestamps are stored as integer UTC
microseconds and come back as tz-aware UTC pandas timestamps. Time ranges are half-open ``[start, end)``.

Idempotency and supersession
----------------------------
- observation (kind, key, timestamp): the first value stored wins; a repeat is a no-op.
- price (settlement_point, market, interval_start): a later ``published_at`` with a different price
  or interval end supersedes; an identical repeat is a no-op. ``published_at`` defaults to receipt time.
- DR event (event_id): a higher ``modification_number`` supersedes (status becomes ``modified``, or
  ``cancelled``); an equal or lower one is a no-op.
- rejections are aggregated per (topic, reason) with a count and first/last seen.
- load forecast (region, interval_start, published_at): every posting is kept (the first copy of a
  posting wins); :meth:`load_forecast` picks one vintage per interval.

Only the newest revision of a price is kept, so ``prices(as_of=t)`` hides prices first published
after t but cannot show a value that a later correction replaced.

Limits: ``synchronous=NORMAL`` (WAL): a power cut may lose the last commits, never corrupts. A full
queue (``queue_max``) blocks the producer, which is the back-pressure. Writes after ``close()`` raise.

API
---
``Store(path, *, batch_max=5000, queue_max=200_000, linger_s=0.005, clock=utc_now)`` (also a context manager)

writes (asynchronous, ordered per table):
  ``put(message, *, received_at=None)``, ``put_many(messages, *, received_at=None)``,
  ``put_price_frame(frame, *, published_at=None, received_at=None)`` (canonical frame, see hashflex.frames),
  ``put_price_history(frame, *, received_at=None)`` (canonical columns + each row's ``published_at``: one check),
  ``put_load_forecast(frame, *, source, region="ERCOT", received_at=None)`` (issue 14: every posting kept),
  ``put_rejection(rejection, *, received_at=None)``, ``set_dr_status(event_id, status)``,
  ``put_schedule(schedule, *, created_at)``, ``put_setpoint(setpoint)``, ``set_meta(key, value)``,
  ``after_commit(callback)`` (e.g. acknowledge an MQTT message only once it is durable)
sync: ``commit_state(key, value, timeout_s=5.0)`` (durable, raises ``StoreUnavailable``), ``flush(timeout_s=30.0)``, ``prune(older_than) -> dict[table, rows deleted]``, ``close()``
reads (DataFrames, sorted by time):
  ``observations(kind, start=None, end=None, *, key=None)`` -> timestamp, key, <model fields>, received_at
  ``prices(start=None, end=None, *, settlement_point=None, market=None, as_of=None, with_published_at=False)``
      -> the canonical price frame: interval_start, interval_end, settlement_point, market, price_usd_mwh
         (+ published_at)
  ``load_forecast(start=None, end=None, *, region="ERCOT", as_of=None, vintage="day_ahead")``
      -> interval_start, interval_end, load_forecast_mw, published_at (one row per interval)
  ``dr_events(*, active_at=None, include_cancelled=True)`` -> event_id, modification_number, status, ...
  ``rejections()`` -> topic, reason, count, first_seen, last_seen, last_payload
  ``setpoints(start=None, end=None, *, miner_id=None)``, ``schedules(start=None, end=None)``
single values: ``latest(kind, key=None)``, ``dr_event(event_id)``, ``latest_schedule(as_of=None)``,
  ``get_meta(key, default=None)``, ``count(table)``, ``writer_stats()``
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from hashflex.frames import utc_now  # noqa: F401 - also re-exported (importers use hashflex.store.utc_now)
from hashflex.store.reads import StoreReads
from hashflex.store.writes import StoreWrites
from hashflex.store.schema import (  # noqa: F401 - re-exported: the store's public names
    _AFTER_COMMIT,
    _SCHEMA,
    _SQL,
    _STOP,
    _VALUE_FIELD,
    DR_STATUSES,
    TABLES,
    StoreUnavailable,
    _Control,
    _unit_per_us,
    to_us,
)

__all__ = ["Store", "StoreUnavailable", "DR_STATUSES", "TABLES"]

log = logging.getLogger(__name__)
_SAMPLE_S = 0.05


class Store(StoreWrites, StoreReads):
    """SQLite (WAL) store with a single batching writer thread; see the module docstring.

    Parameters
    ----------
    path : str or Path
        The database file (created with its schema if missing).
    batch_max : int, default 5000
        Most writes per transaction.
    queue_max : int, default 200000
        Most writes queued; a producer blocks beyond it.
    linger_s : float, default 0.005
        How long the writer waits for more writes to batch (s).
    clock : Callable[[], datetime], default utc_now
        Receipt times and state update times.

    Raises
    ------
    RuntimeError
        WAL could not be enabled (e.g. a network file system).
    sqlite3.Error
        The file cannot be opened or its schema created.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_max: int = 5000,
        queue_max: int = 200_000,
        linger_s: float = 0.005,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_max)
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._stats = {"rows": 0, "batches": 0, "errors": 0}
        # Writer backlog age: items put and taken, and (put count, monotonic time) samples at most every
        # _SAMPLE_S, so the age of the oldest waiting item is known to within _SAMPLE_S at no per-item cost.
        self._put = self._taken = 0
        self._samples: collections.deque[tuple[int, float]] = collections.deque()
        self._backlog_lock = threading.Lock()
        self._closed = False
        self.failure: str | None = None  # the last commit_state failure, until one succeeds
        self._fail_commits: str | None = None
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: could not enable WAL (journal_mode={mode})")
        conn.executescript(_SCHEMA)
        self._writer = threading.Thread(target=self._run, args=(conn,), name="hashflex-store-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ lifecycle

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit pending writes, stop the writer, close all connections. Idempotent.

        Parameters
        ----------
        timeout_s : float, default 30.0
            Longest wait for the writer (s).
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout_s)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every write enqueued before this call is committed.

        Parameters
        ----------
        timeout_s : float, default 30.0

        Raises
        ------
        TimeoutError
            Not committed within ``timeout_s``.
        RuntimeError
            The store is closed.
        """
        self._call(None, timeout_s)

    def prune(self, older_than: datetime, timeout_s: float = 60.0) -> dict[str, int]:
        """Delete data older than ``older_than``, in one transaction.

        Keeps meta, the newest schedule, open-ended DR events that are not cancelled, and prices whose
        interval ends after the cutoff.

        Parameters
        ----------
        older_than : datetime
            The cutoff (timezone-aware).
        timeout_s : float, default 60.0

        Returns
        -------
        dict[str, int]
            Rows deleted per table.

        Raises
        ------
        TimeoutError
            Not done within ``timeout_s``.
        RuntimeError
            The store is closed.
        """
        cutoff = to_us(older_than)

        def action(conn: sqlite3.Connection) -> dict[str, int]:
            statements = {
                "observations": ("DELETE FROM observations WHERE ts_us < ?", (cutoff,)),
                "prices": ("DELETE FROM prices WHERE interval_end_us <= ?", (cutoff,)),
                "rejections": ("DELETE FROM rejections WHERE last_seen_us < ?", (cutoff,)),
                "dr_events": (
                    "DELETE FROM dr_events WHERE (end_us IS NOT NULL AND end_us < ?)"
                    " OR (cancelled AND updated_us < ?)",
                    (cutoff, cutoff),
                ),
                "schedules": (
                    "DELETE FROM schedules WHERE created_at_us < ? AND id != (SELECT max(id) FROM schedules)",
                    (cutoff,),
                ),
                "setpoints": ("DELETE FROM setpoints WHERE expires_at_us < ?", (cutoff,)),
                "load_forecasts": ("DELETE FROM load_forecasts WHERE interval_end_us <= ?", (cutoff,)),
            }
            deleted = {}
            conn.execute("BEGIN")
            try:
                for table, (sql, params) in statements.items():
                    deleted[table] = conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return deleted

        return self._call(action, timeout_s)

    def writer_stats(self) -> dict[str, int]:
        """The writer's counters.

        Returns
        -------
        dict[str, int]
            ``rows`` written, ``batches`` committed, write ``errors``, the ``queued`` depth now, and
            ``oldest_queued_s``: how long the oldest waiting write has waited (s, to within 0.05 s; None
            when nothing waits).
        """
        return {**self._stats, "queued": self._queue.qsize(), "oldest_queued_s": self._oldest_queued_s()}

    def _note_put(self) -> None:
        now = time.monotonic()
        with self._backlog_lock:
            self._put += 1
            if not self._samples or now - self._samples[-1][1] >= _SAMPLE_S:
                self._samples.append((self._put, now))

    def _oldest_queued_s(self) -> float | None:
        """Seconds the oldest waiting write has waited (to within ``_SAMPLE_S``); None when none waits."""
        with self._backlog_lock:
            while self._samples and self._samples[0][0] <= self._taken:
                self._samples.popleft()
            if self._put <= self._taken or not self._samples:
                return None
            return round(time.monotonic() - self._samples[0][1], 3)

    def commit_state(self, key: str, value: Any, timeout_s: float = 5.0) -> None:
        """Durably replace the JSON state under ``key`` (in ``meta``) and return only once committed.

        The control state (the limits book, commitment) goes through here: the caller may say
        "accepted" only after this returns. The transaction runs with ``synchronous=FULL`` (an fsync
        at commit, so it survives a power cut too, not only a crash of the process).

        Parameters
        ----------
        key : str
        value : Any
            JSON-serialisable (others via ``str``).
        timeout_s : float, default 5.0

        Raises
        ------
        StoreUnavailable
            The write failed (disk full, I/O error, read-only file system, a closed store) or did
            not commit within ``timeout_s``; nothing was changed. :attr:`failure` keeps the reason
            until a later commit succeeds.
        """
        text = json.dumps(value, default=str)
        updated_us = to_us(self._clock())

        def action(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA synchronous=FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(_SQL["meta"], (key, text, updated_us))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.execute("PRAGMA synchronous=NORMAL")

        try:
            if self._fail_commits is not None:  # fault injection (tests and drills): as a full disk
                raise sqlite3.OperationalError(self._fail_commits)
            self._call(action, timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure means "not durable"
            self.failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._stats["errors"] += 1
            raise StoreUnavailable(f"{key}: {self.failure}") from exc
        self.failure = None

    def fail_commits(self, reason: str | None) -> None:
        """Fault injection: make :meth:`commit_state` fail with ``reason``.

        Used by drills and tests alongside a real full disk; asynchronous writes are unaffected.

        Parameters
        ----------
        reason : str or None
            The error text; None stops failing.
        """
        self._fail_commits = reason

    def _enqueue(self, item: tuple[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
        self._note_put()
        self._queue.put(item)

    def _call(self, action: Callable[[sqlite3.Connection], Any] | None, timeout_s: float) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        done: Future = Future()
        self._note_put()
        self._queue.put(_Control(action, done))
        return done.result(timeout=timeout_s)

    # ------------------------------------------------------------------ writer thread

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                if self._linger_s > 0 and isinstance(batch[0], tuple):
                    time.sleep(self._linger_s)  # let a burst accumulate: fewer, larger transactions
                while len(batch) < self._batch_max:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if not self._apply(conn, batch):
                        return
                except Exception:  # noqa: BLE001 - the writer must outlive any one bad batch
                    self._stats["errors"] += 1
                    log.exception("store: writer failed on a batch of %d items", len(batch))
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                with self._backlog_lock:  # done with, written or not: no longer waiting
                    self._taken += len(batch)
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[Any]) -> bool:
        """Commit the batch in order around control items; False once told to stop."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        callbacks: list[Callable[[], None]] = []
        for item in batch:
            if isinstance(item, tuple):
                if item[0] == _AFTER_COMMIT:
                    callbacks.append(item[1])
                else:
                    groups.setdefault(item[0], []).append(item[1])
                continue
            self._commit(conn, groups, callbacks)
            groups, callbacks = {}, []
            if item is _STOP:
                return False
            try:
                item.done.set_result(item.action(conn) if item.action else None)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                item.done.set_exception(exc)
        self._commit(conn, groups, callbacks)
        return True

    def _commit(
        self, conn: sqlite3.Connection, groups: dict[str, list[tuple[Any, ...]]], callbacks: list[Callable[[], None]]
    ) -> None:
        if groups:
            self._write(conn, groups)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a caller's bug must not stop the writer
                log.exception("store: after-commit callback %r failed", callback)

    def _write(self, conn: sqlite3.Connection, groups: dict[str, list[tuple[Any, ...]]]) -> None:
        try:
            conn.execute("BEGIN")
            for op, rows in groups.items():
                conn.executemany(_SQL[op], rows)
            conn.execute("COMMIT")
            self._stats["rows"] += sum(len(rows) for rows in groups.values())
            self._stats["batches"] += 1
        except Exception:  # noqa: BLE001 - sqlite3.Error, or OverflowError for an out-of-range int
            log.exception("store: batch write failed, retrying row by row")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for op, rows in groups.items():
                for row in rows:
                    try:
                        conn.execute(_SQL[op], row)  # autocommit: one row, one transaction
                        self._stats["rows"] += 1
                    except Exception as exc:  # noqa: BLE001
                        self._stats["errors"] += 1
                        log.error("store: dropped %s row %r: %s", op, row[:3], exc)
