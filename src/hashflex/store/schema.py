"""The store's schema: tables, SQL, time conversions and the writer's control items."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd


log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
DR_STATUSES = ("pending", "active", "modified", "cancelled", "completed")
TABLES = ("observations", "prices", "rejections", "dr_events", "schedules", "setpoints", "meta", "load_forecasts")

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
CREATE TABLE IF NOT EXISTS load_forecasts (
    region TEXT NOT NULL, interval_start_us INTEGER NOT NULL, published_at_us INTEGER NOT NULL,
    interval_end_us INTEGER NOT NULL, load_forecast_mw REAL NOT NULL, source TEXT NOT NULL,
    received_at_us INTEGER NOT NULL, day_ahead_cutoff_us INTEGER NOT NULL,
    PRIMARY KEY (region, interval_start_us, published_at_us)) WITHOUT ROWID;
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
    # Every posting is kept (a 7-day forecast is re-posted hourly): the reader picks the vintage it needs.
    "load_forecast": "INSERT INTO load_forecasts VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
}


DAY_AHEAD_CUTOFF = ("13:00", "America/Chicago")
"""A load forecast's day-ahead vintage: the newest posting published by 13:00 Central on the day before the
interval's local day (ERCOT's DAM results, NP4-190, ~13:00 CT; the learned price model assumes the same)."""


def day_ahead_cutoff_us(starts_us: list[int]) -> list[int]:
    """The day-ahead cutoff (:data:`DAY_AHEAD_CUTOFF`) of each interval start, UTC microseconds.

    Parameters
    ----------
    starts_us : list of int
        Interval starts, UTC microseconds since the epoch.

    Returns
    -------
    list of int
        Same length.
    """
    if not starts_us:
        return []
    clock, tz = DAY_AHEAD_CUTOFF
    hour, minute = (int(x) for x in clock.split(":"))
    day = pd.to_datetime(pd.Series(starts_us, dtype="int64"), unit="us", utc=True).dt.tz_convert(tz).dt.tz_localize(
        None).dt.normalize()
    cutoff = (day - pd.Timedelta(days=1) + pd.Timedelta(hours=hour, minutes=minute)).dt.tz_localize(
        tz, ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
    return (cutoff.astype("int64") // _unit_per_us(cutoff)).tolist()


class StoreUnavailable(RuntimeError):
    """A durable write (:meth:`Store.commit_state`) failed: nothing was committed."""


def to_us(moment: datetime) -> int:
    """A time as integer UTC microseconds since the epoch (how the store keeps times).

    Parameters
    ----------
    moment : datetime
        Timezone-aware.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        A naive datetime.
    """
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
