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
  ``put_rejection(rejection, *, received_at=None)``, ``set_dr_status(event_id, status)``,
  ``put_schedule(schedule, *, created_at)``, ``put_setpoint(setpoint)``, ``set_meta(key, value)``,
  ``after_commit(callback)`` (e.g. acknowledge an MQTT message only once it is durable)
sync: ``commit_state(key, value, timeout_s=5.0)`` (durable, raises ``StoreUnavailable``), ``flush(timeout_s=30.0)``, ``prune(older_than) -> dict[table, rows deleted]``, ``close()``
reads (DataFrames, sorted by time):
  ``observations(kind, start=None, end=None, *, key=None)`` -> timestamp, key, <model fields>, received_at
  ``prices(start=None, end=None, *, settlement_point=None, market=None, as_of=None, with_published_at=False)``
      -> the canonical price frame: interval_start, interval_end, settlement_point, market, price_usd_mwh
         (+ published_at)
  ``dr_events(*, active_at=None, include_cancelled=True)`` -> event_id, modification_number, status, ...
  ``rejections()`` -> topic, reason, count, first_seen, last_seen, last_payload
  ``setpoints(start=None, end=None, *, miner_id=None)``, ``schedules(start=None, end=None)``
single values: ``latest(kind, key=None)``, ``dr_event(event_id)``, ``latest_schedule(as_of=None)``,
  ``get_meta(key, default=None)``, ``count(table)``, ``writer_stats()``
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from hashflex.frames import check_price_frame, utc_now
from hashflex.messages import (
    INBOUND_MODELS,
    DREventMessage,
    InboundMessage,
    PriceMessage,
    Rejection,
    SetpointMessage,
)

__all__ = ["Store", "StoreUnavailable", "DR_STATUSES", "TABLES"]

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
DR_STATUSES = ("pending", "active", "modified", "cancelled", "completed")
TABLES = ("observations", "prices", "rejections", "dr_events", "schedules", "setpoints", "meta")

# The scalar each observation kind is indexed by (also kept in full in the JSON payload).
_VALUE_FIELD = {
    "renewable": "power_kw",
    "noise": "laeq_dba",
    "carbon": "intensity_kg_per_mwh",
    "hashprice": "hashprice_usd_per_ph_day",
    "telemetry": "power_kw",
    "limits": "import_limit_kw",
}
_TIME_FIELDS = {"timestamp", "issued_at", "valid_until", "start", "end", "published_at", "expires_at"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    kind TEXT NOT NULL, key TEXT NOT NULL, ts_us INTEGER NOT NULL, value REAL,
    payload TEXT NOT NULL, received_at_us INTEGER NOT NULL,
    PRIMARY KEY (kind, key, ts_us)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS observations_kind_ts ON observations (kind, ts_us);
CREATE TABLE IF NOT EXISTS prices (
    settlement_point TEXT NOT NULL, market TEXT NOT NULL, interval_start_us INTEGER NOT NULL,
    interval_end_us INTEGER NOT NULL, price_usd_mwh REAL NOT NULL, published_at_us INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL,
    PRIMARY KEY (settlement_point, market, interval_start_us)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS prices_start ON prices (interval_start_us);
CREATE TABLE IF NOT EXISTS rejections (
    topic TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    first_seen_us INTEGER NOT NULL, last_seen_us INTEGER NOT NULL, last_payload TEXT NOT NULL,
    PRIMARY KEY (topic, reason));
CREATE TABLE IF NOT EXISTS dr_events (
    event_id TEXT PRIMARY KEY, modification_number INTEGER NOT NULL, program TEXT NOT NULL,
    status TEXT NOT NULL, start_us INTEGER NOT NULL, end_us INTEGER, cancelled INTEGER NOT NULL,
    payload TEXT NOT NULL, first_received_us INTEGER NOT NULL, updated_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at_us INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS schedules_created ON schedules (created_at_us);
CREATE TABLE IF NOT EXISTS setpoints (
    miner_id TEXT NOT NULL, issued_at_us INTEGER NOT NULL, expires_at_us INTEGER NOT NULL,
    mode TEXT NOT NULL, power_target_kw REAL NOT NULL,
    PRIMARY KEY (miner_id, issued_at_us)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at_us INTEGER NOT NULL);
"""

_SQL = {
    "obs": "INSERT INTO observations VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "price": """INSERT INTO prices VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (settlement_point, market, interval_start_us) DO UPDATE SET
            interval_end_us = excluded.interval_end_us, price_usd_mwh = excluded.price_usd_mwh,
            published_at_us = excluded.published_at_us, received_at_us = excluded.received_at_us
        WHERE excluded.published_at_us > prices.published_at_us
          AND (excluded.price_usd_mwh != prices.price_usd_mwh
               OR excluded.interval_end_us != prices.interval_end_us)""",
    "rejection": """INSERT INTO rejections VALUES (?, ?, 1, ?, ?, ?)
        ON CONFLICT (topic, reason) DO UPDATE SET count = count + 1,
            last_seen_us = max(last_seen_us, excluded.last_seen_us), last_payload = excluded.last_payload""",
    "dr": """INSERT INTO dr_events VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN 'cancelled' ELSE 'pending' END,
            ?5, ?6, ?4, ?7, ?8, ?9)
        ON CONFLICT (event_id) DO UPDATE SET
            modification_number = excluded.modification_number, program = excluded.program,
            status = CASE WHEN excluded.cancelled THEN 'cancelled' ELSE 'modified' END,
            start_us = excluded.start_us, end_us = excluded.end_us, cancelled = excluded.cancelled,
            payload = excluded.payload, updated_us = excluded.updated_us
        WHERE excluded.modification_number > dr_events.modification_number""",
    "dr_status": "UPDATE dr_events SET status = ?, updated_us = ? WHERE event_id = ?",
    "schedule": "INSERT INTO schedules (created_at_us, payload) VALUES (?, ?)",
    "setpoint": "INSERT INTO setpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "meta": "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)",
}


class StoreUnavailable(RuntimeError):
    """A durable write (:meth:`Store.commit_state`) failed: nothing was committed."""


def to_us(moment: datetime) -> int:
    """UTC microseconds since the epoch; naive datetimes are refused."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: a timezone is required")
    return (moment - _EPOCH) // _US


def _unit_per_us(values: pd.Series) -> int:
    """How many ticks of a datetime64 series' unit make one microsecond (unit s/ms is refused)."""
    unit = values.dtype.unit
    if unit not in ("us", "ns"):
        raise ValueError(f"{values.name}: datetime unit {unit!r} not supported, use 'us' or 'ns'")
    return 1000 if unit == "ns" else 1


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, unit="us", utc=True)


@dataclass
class _Control:
    """A marker in the write queue: run ``action`` on the writer connection after what precedes it."""

    action: Callable[[sqlite3.Connection], Any] | None
    done: Future


_STOP = object()
_AFTER_COMMIT = "after_commit"


class Store:
    """SQLite (WAL) store with a single batching writer thread; see the module docstring."""

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
        """Commit pending writes, stop the writer, close all connections. Idempotent."""
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
        """Wait until every write enqueued before this call is committed (TimeoutError otherwise)."""
        self._call(None, timeout_s)

    def prune(self, older_than: datetime, timeout_s: float = 60.0) -> dict[str, int]:
        """Delete data older than ``older_than``; return rows deleted per table.

        Keeps meta, the newest schedule, open-ended DR events that are not cancelled, and prices
        whose interval ends after the cutoff.
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
        """Rows written, batches committed, write errors, and the current queue depth."""
        return {**self._stats, "queued": self._queue.qsize()}

    def commit_state(self, key: str, value: Any, timeout_s: float = 5.0) -> None:
        """Durably replace the JSON state under ``key`` (in ``meta``) and return only once committed.

        The control state (the limits book, commitment) goes through here: the caller may say
        "accepted" only after this returns. The transaction runs with ``synchronous=FULL`` (an fsync
        at commit, so it survives a power cut too, not only a crash of the process).

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
        """Fault injection: make :meth:`commit_state` fail with ``reason`` (None: stop failing). Used
        by drills and tests alongside a real full disk; asynchronous writes are unaffected."""
        self._fail_commits = reason

    # ------------------------------------------------------------------ writes

    def put(self, message: InboundMessage, *, received_at: datetime | None = None) -> None:
        """Enqueue one validated inbound message for storage."""
        received_us = to_us(received_at or self._clock())
        self._enqueue(self._row(message, received_us))

    def put_many(self, messages: Iterable[InboundMessage], *, received_at: datetime | None = None) -> None:
        received_us = to_us(received_at or self._clock())
        for message in messages:
            self._enqueue(self._row(message, received_us))

    def put_price_frame(
        self, frame: pd.DataFrame, *, published_at: datetime | None = None, received_at: datetime | None = None
    ) -> int:
        """Enqueue a canonical price frame (checked with ``check_price_frame``); returns rows enqueued.

        ``published_at`` applies to every row and defaults to ``received_at`` (default: now).
        """
        check_price_frame(frame)
        received_us = to_us(received_at or self._clock())
        published_us = to_us(published_at) if published_at is not None else received_us
        starts = (frame["interval_start"].astype("int64") // _unit_per_us(frame["interval_start"])).tolist()
        ends = (frame["interval_end"].astype("int64") // _unit_per_us(frame["interval_end"])).tolist()
        rows = zip(frame["settlement_point"].tolist(), frame["market"].tolist(), starts, ends,
                   frame["price_usd_mwh"].tolist(), strict=True)
        for point, market, start_us, end_us, price in rows:
            self._enqueue(("price", (point, market, start_us, end_us, price, published_us, received_us)))
        return len(frame)

    def put_rejection(self, rejection: Rejection, *, received_at: datetime | None = None) -> None:
        seen_us = to_us(received_at or self._clock())
        self._enqueue(("rejection", (rejection.topic, rejection.reason, seen_us, seen_us, rejection.payload)))

    def set_dr_status(self, event_id: str, status: str) -> None:
        """Record a status the control loop decided (e.g. ``active``, ``completed``)."""
        if status not in DR_STATUSES:
            raise ValueError(f"status {status!r}: expected one of {DR_STATUSES}")
        self._enqueue(("dr_status", (status, to_us(self._clock()), event_id)))

    def put_schedule(self, schedule: Mapping[str, Any] | BaseModel, *, created_at: datetime) -> None:
        payload = schedule.model_dump_json() if isinstance(schedule, BaseModel) else json.dumps(schedule, default=str)
        self._enqueue(("schedule", (to_us(created_at), payload)))

    def put_setpoint(self, setpoint: SetpointMessage) -> None:
        row = (setpoint.miner_id, to_us(setpoint.issued_at), to_us(setpoint.expires_at), setpoint.mode,
               setpoint.power_target_kw)
        self._enqueue(("setpoint", row))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` on the writer thread once every write enqueued before it is committed
        (without forcing a commit of its own). Keep it fast; exceptions are logged. Not run after close."""
        self._enqueue((_AFTER_COMMIT, callback))

    def set_meta(self, key: str, value: Any) -> None:
        """Store any JSON-serialisable value under ``key`` (replacing the old one)."""
        self._enqueue(("meta", (key, json.dumps(value, default=str), to_us(self._clock()))))

    @staticmethod
    def _row(message: InboundMessage, received_us: int) -> tuple[str, tuple[Any, ...]]:
        if isinstance(message, PriceMessage):
            published = message.published_at
            return ("price", (message.settlement_point, message.market, to_us(message.interval_start),
                              to_us(message.interval_end), message.price_usd_mwh,
                              to_us(published) if published else received_us, received_us))
        if isinstance(message, DREventMessage):
            return ("dr", (message.event_id, message.modification_number, message.program.value,
                           int(message.cancelled), to_us(message.start),
                           to_us(message.end) if message.end else None, message.model_dump_json(),
                           received_us, received_us))
        if message.kind not in _VALUE_FIELD:
            raise TypeError(f"cannot store {type(message).__name__}")
        value = getattr(message, _VALUE_FIELD[message.kind])
        return ("obs", (message.kind, message.key, to_us(message.observed_at), value,
                        message.model_dump_json(), received_us))

    def _enqueue(self, item: tuple[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
        self._queue.put(item)

    def _call(self, action: Callable[[sqlite3.Connection], Any] | None, timeout_s: float) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        done: Future = Future()
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

    # ------------------------------------------------------------------ reads

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("store is closed")
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, tuple(params)).fetchall()

    @staticmethod
    def _range(column: str, start: datetime | None, end: datetime | None) -> tuple[list[str], list[Any]]:
        where, params = [], []
        if start is not None:
            where.append(f"{column} >= ?")
            params.append(to_us(start))
        if end is not None:
            where.append(f"{column} < ?")
            params.append(to_us(end))
        return where, params

    def observations(
        self, kind: str, start: datetime | None = None, end: datetime | None = None, *, key: str | None = None
    ) -> pd.DataFrame:
        """Observations of one kind in ``[start, end)``: timestamp, key, the message's fields, received_at."""
        if kind not in _VALUE_FIELD:
            raise ValueError(f"kind {kind!r}: expected one of {sorted(_VALUE_FIELD)}")
        where, params = self._range("ts_us", start, end)
        where.insert(0, "kind = ?")
        params.insert(0, kind)
        if key is not None:
            where.append("key = ?")
            params.append(key)
        rows = self._query(
            f"SELECT ts_us, key, payload, received_at_us FROM observations WHERE {' AND '.join(where)}"
            " ORDER BY ts_us, key",
            params,
        )
        model = INBOUND_MODELS[kind]
        fields = [f.alias or name for name, f in model.model_fields.items()]
        time_field = "issued_at" if kind == "limits" else "timestamp"
        fields = [f for f in fields if f != time_field]
        records = [json.loads(r[2]) for r in rows]
        frame = pd.DataFrame.from_records(records, columns=fields) if records else pd.DataFrame(columns=fields)
        for name in fields:
            if name in _TIME_FIELDS:
                frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
        frame.insert(0, "key", [r[1] for r in rows])
        frame.insert(0, "timestamp", _utc(pd.Series([r[0] for r in rows], dtype="int64")))
        frame["received_at"] = _utc(pd.Series([r[3] for r in rows], dtype="int64"))
        return frame

    def latest(self, kind: str, key: str | None = None) -> InboundMessage | None:
        """The observation of ``kind`` (and ``key``) with the newest timestamp, as its message model."""
        if kind not in _VALUE_FIELD:
            raise ValueError(f"kind {kind!r}: expected one of {sorted(_VALUE_FIELD)}")
        sql = "SELECT payload FROM observations WHERE kind = ?"
        params: list[Any] = [kind]
        if key is not None:
            sql += " AND key = ?"
            params.append(key)
        rows = self._query(sql + " ORDER BY ts_us DESC LIMIT 1", params)
        return INBOUND_MODELS[kind].model_validate_json(rows[0][0]) if rows else None  # type: ignore[return-value]

    def prices(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        settlement_point: str | None = None,
        market: str | None = None,
        as_of: datetime | None = None,
        with_published_at: bool = False,
    ) -> pd.DataFrame:
        """Prices with interval_start in ``[start, end)``; ``as_of`` keeps only those published by then.

        The frame is the canonical price frame of :mod:`hashflex.frames` (it passes
        ``check_price_frame``); ``with_published_at`` appends a ``published_at`` column.
        """
        where, params = self._range("interval_start_us", start, end)
        for column, value in (("settlement_point", settlement_point), ("market", market)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if as_of is not None:
            where.append("published_at_us <= ?")
            params.append(to_us(as_of))
        sql = ("SELECT interval_start_us, interval_end_us, settlement_point, market, price_usd_mwh, published_at_us"
               " FROM prices")
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY interval_start_us, settlement_point, market", params)
        frame = pd.DataFrame(rows, columns=["interval_start", "interval_end", "settlement_point", "market",
                                            "price_usd_mwh", "published_at"])
        for column in ("interval_start", "interval_end", "published_at"):
            frame[column] = _utc(frame[column].astype("int64"))
        frame["price_usd_mwh"] = frame["price_usd_mwh"].astype("float64")
        return frame if with_published_at else frame.drop(columns="published_at")

    def dr_events(self, *, active_at: datetime | None = None, include_cancelled: bool = True) -> pd.DataFrame:
        """DR events (latest modification each); ``active_at`` keeps those in force at that time."""
        where, params = [], []
        if active_at is not None:
            moment = to_us(active_at)
            where += ["start_us <= ?", "(end_us IS NULL OR end_us > ?)", "NOT cancelled", "status != 'completed'"]
            params += [moment, moment]
        elif not include_cancelled:
            where.append("NOT cancelled")
        sql = "SELECT payload, status, first_received_us, updated_us FROM dr_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY start_us, event_id", params)
        fields = list(DREventMessage.model_fields)
        frame = pd.DataFrame([json.loads(r[0]) for r in rows], columns=fields)
        frame.insert(2, "status", [r[1] for r in rows])
        for column in ("start", "end"):
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
        frame["first_received_at"] = _utc(pd.Series([r[2] for r in rows], dtype="int64"))
        frame["updated_at"] = _utc(pd.Series([r[3] for r in rows], dtype="int64"))
        return frame

    def dr_event(self, event_id: str) -> tuple[DREventMessage, str] | None:
        """The latest modification of one event and its status."""
        rows = self._query("SELECT payload, status FROM dr_events WHERE event_id = ?", (event_id,))
        return (DREventMessage.model_validate_json(rows[0][0]), rows[0][1]) if rows else None

    def rejections(self) -> pd.DataFrame:
        rows = self._query("SELECT topic, reason, count, first_seen_us, last_seen_us, last_payload FROM rejections"
                           " ORDER BY last_seen_us DESC")
        frame = pd.DataFrame(rows, columns=["topic", "reason", "count", "first_seen", "last_seen", "last_payload"])
        for column in ("first_seen", "last_seen"):
            frame[column] = _utc(frame[column].astype("int64"))
        return frame

    def setpoints(
        self, start: datetime | None = None, end: datetime | None = None, *, miner_id: str | None = None
    ) -> pd.DataFrame:
        """Setpoints issued in ``[start, end)``."""
        where, params = self._range("issued_at_us", start, end)
        if miner_id is not None:
            where.append("miner_id = ?")
            params.append(miner_id)
        sql = "SELECT miner_id, issued_at_us, expires_at_us, mode, power_target_kw FROM setpoints"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY issued_at_us, miner_id", params)
        frame = pd.DataFrame(rows, columns=["miner_id", "issued_at", "expires_at", "mode", "power_target_kw"])
        for column in ("issued_at", "expires_at"):
            frame[column] = _utc(frame[column].astype("int64"))
        return frame

    def schedules(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Schedules created in ``[start, end)``: created_at, schedule (decoded JSON)."""
        where, params = self._range("created_at_us", start, end)
        sql = "SELECT created_at_us, payload FROM schedules"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY created_at_us, id", params)
        return pd.DataFrame({
            "created_at": _utc(pd.Series([r[0] for r in rows], dtype="int64")),
            "schedule": pd.Series([json.loads(r[1]) for r in rows], dtype="object"),
        })

    def latest_schedule(self, as_of: datetime | None = None) -> dict[str, Any] | None:
        sql, params = "SELECT payload FROM schedules", []
        if as_of is not None:
            sql += " WHERE created_at_us <= ?"
            params.append(to_us(as_of))
        rows = self._query(sql + " ORDER BY created_at_us DESC, id DESC LIMIT 1", params)
        return json.loads(rows[0][0]) if rows else None

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def count(self, table: str) -> int:
        if table not in TABLES:
            raise ValueError(f"table {table!r}: expected one of {TABLES}")
        return int(self._query(f"SELECT count(*) FROM {table}")[0][0])

