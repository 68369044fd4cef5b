"""The store's reads: DataFrames of observations, prices, DR rows, rejections, setpoints and
schedules, and single values; each calling thread reads on its own connection (see ``Store``)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.messages import (
    INBOUND_MODELS,
    DREventMessage,
    InboundMessage,
)
from hashflex.store.schema import (  # noqa: F401
    TABLES,
    _TIME_FIELDS,
    _VALUE_FIELD,
    _unit_per_us,
    _utc,
    to_us,
)

log = logging.getLogger(__name__)


class StoreReads:
    """Read methods of :class:`hashflex.store.Store` (a mixin: the writer lives in the class itself)."""


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
        """Observations of one kind in a time range.

        Parameters
        ----------
        kind : str
            An observation kind (``renewable``, ``noise``, ``carbon``, ``hashprice``, ``telemetry``, ...).
        start, end : datetime, optional
            The half-open range ``[start, end)`` (aware); None: open.
        key : str, optional
            One series (source, receptor, miner id).

        Returns
        -------
        pandas.DataFrame
            ``timestamp`` (aware UTC), ``key``, the message's fields, ``received_at``; ordered by time, key.

        Raises
        ------
        ValueError
            ``kind`` is not an observation kind.
        """
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

    def load_forecast(self, start: datetime | None = None, end: datetime | None = None, *, region: str = "ERCOT",
                      as_of: datetime | None = None, vintage: str = "day_ahead") -> pd.DataFrame:
        """The stored system load forecast, one row per interval, as known at ``as_of`` (issue 14).

        Why a vintage: ERCOT re-posts its seven-day load forecast every hour, and the learned price model
        was trained (in the backtest, on the bundled ``dev2`` file) on the forecast *made the day
        before*, published by the DAM (13:00 Central). ``day_ahead`` gives, for each interval, the newest
        posting published at or before 13:00 Central on the day before the interval's local day
        (:data:`hashflex.store.schema.DAY_AHEAD_CUTOFF`, kept per row at write time), and not more than two
        days before it (a stalled feed gives no value rather than a stale one); with ``as_of``, only
        intervals whose cutoff has passed by then: the same feature in the daemon as in training, never
        a later or an earlier vintage. ``latest`` gives
        the newest posting published by ``as_of`` (for display). One indexed query (a daemon tick reads
        this; SYNTHETIC 138,240 stored rows: ~30 ms for 3 days back).

        Parameters
        ----------
        start, end : datetime, optional
            Interval starts in ``[start, end)`` (aware); None: open.
        region : str, default "ERCOT"
            The system total unless a relay stores regions.
        as_of : datetime, optional
            Only postings published at or before it (aware); None: all stored.
        vintage : {"day_ahead", "latest"}

        Returns
        -------
        pandas.DataFrame
            ``interval_start``, ``interval_end``, ``load_forecast_mw`` (MW), ``published_at`` (aware UTC),
            ``source``; sorted by ``interval_start``; intervals with no qualifying posting are absent.

        Raises
        ------
        ValueError
            ``vintage`` is not one of the two (named).
        """
        if vintage not in ("day_ahead", "latest"):
            raise ValueError(f"vintage {vintage!r}: expected 'day_ahead' or 'latest'")
        where, params = self._range("interval_start_us", start, end)
        where.insert(0, "region = ?")
        params.insert(0, region)
        if as_of is not None:
            where.append("published_at_us <= ?")
            params.append(to_us(as_of))
        if vintage == "day_ahead":
            # A "day-ahead" posting more than two days older than its cutoff is not one (the feed was down):
            # left out, the feature is missing rather than stale. The bound also keeps the scan short.
            where.append("published_at_us <= day_ahead_cutoff_us AND published_at_us >= day_ahead_cutoff_us - ?")
            params.append(2 * 86_400_000_000)
            if as_of is not None:
                # Before its cutoff an interval's day-ahead vintage is not settled (a later posting may still
                # come): absent, as it is when the model's training reconstructs that time.
                where.append("day_ahead_cutoff_us <= ?")
                params.append(to_us(as_of))
        # SQLite: with one max() aggregate, the bare columns come from the row holding the maximum.
        rows = self._query(
            "SELECT interval_start_us, interval_end_us, load_forecast_mw, max(published_at_us), source"
            f" FROM load_forecasts WHERE {' AND '.join(where)} GROUP BY interval_start_us ORDER BY interval_start_us",
            params)
        frame = pd.DataFrame(rows, columns=["interval_start", "interval_end", "load_forecast_mw", "published_at",
                                            "source"])
        for name in ("interval_start", "interval_end", "published_at"):
            frame[name] = _utc(frame[name].astype("int64"))
        frame["load_forecast_mw"] = frame["load_forecast_mw"].astype(float)
        return frame

    def latest(self, kind: str, key: str | None = None) -> InboundMessage | None:
        """The observation of ``kind`` (and ``key``) with the newest timestamp.

        Parameters
        ----------
        kind : str
        key : str, optional

        Returns
        -------
        InboundMessage or None
            As its message model; None when there is none.

        Raises
        ------
        ValueError
            ``kind`` is not an observation kind.
        """
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
        """Prices with ``interval_start`` in a range, as the canonical price frame.

        The frame passes :func:`hashflex.frames.check_price_frame`. Only the newest revision of a price
        is stored, so ``as_of`` hides prices first published later but cannot show a value a later
        correction replaced.

        Parameters
        ----------
        start, end : datetime, optional
            The half-open range ``[start, end)`` (aware); None: open.
        settlement_point : str, optional
        market : str, optional
            ``RT`` or ``DA``.
        as_of : datetime, optional
            Keep only prices published by then (what was known at a decision).
        with_published_at : bool, default False
            Append a ``published_at`` column.

        Returns
        -------
        pandas.DataFrame
            ``interval_start``, ``interval_end`` (aware UTC), ``settlement_point``, ``market``,
            ``price_usd_mwh`` ($/MWh).
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
        """DR events, the latest modification of each.

        Parameters
        ----------
        active_at : datetime, optional
            Keep those in force at that time (started, not ended, not cancelled, not completed).
        include_cancelled : bool, default True
            Without ``active_at``: keep cancelled events too.

        Returns
        -------
        pandas.DataFrame
            The ``DREventMessage`` fields, ``status``, ``first_received_at``, ``updated_at``.
        """
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
        """The latest modification of one DR event and its status.

        Parameters
        ----------
        event_id : str

        Returns
        -------
        tuple[DREventMessage, str] or None
        """
        rows = self._query("SELECT payload, status FROM dr_events WHERE event_id = ?", (event_id,))
        return (DREventMessage.model_validate_json(rows[0][0]), rows[0][1]) if rows else None

    def rejections(self) -> pd.DataFrame:
        """Rejected inbound messages, aggregated per topic and reason, newest first.

        Returns
        -------
        pandas.DataFrame
            ``topic``, ``reason``, ``count``, ``first_seen``, ``last_seen`` (aware UTC), ``last_payload``.
        """
        rows = self._query("SELECT topic, reason, count, first_seen_us, last_seen_us, last_payload FROM rejections"
                           " ORDER BY last_seen_us DESC")
        frame = pd.DataFrame(rows, columns=["topic", "reason", "count", "first_seen", "last_seen", "last_payload"])
        for column in ("first_seen", "last_seen"):
            frame[column] = _utc(frame[column].astype("int64"))
        return frame

    def setpoints(
        self, start: datetime | None = None, end: datetime | None = None, *, miner_id: str | None = None
    ) -> pd.DataFrame:
        """Setpoints issued in a time range.

        Parameters
        ----------
        start, end : datetime, optional
            The half-open range ``[start, end)`` (aware); None: open.
        miner_id : str, optional

        Returns
        -------
        pandas.DataFrame
            ``miner_id``, ``issued_at``, ``expires_at``, ``mode``, ``power_target_kw`` (kW).
        """
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
        """Schedules created in a time range.

        Parameters
        ----------
        start, end : datetime, optional
            The half-open range ``[start, end)`` (aware); None: open.

        Returns
        -------
        pandas.DataFrame
            ``created_at`` (aware UTC), ``schedule`` (decoded JSON).
        """
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
        """The newest schedule created by ``as_of``.

        Parameters
        ----------
        as_of : datetime, optional
            Default: the newest of all.

        Returns
        -------
        dict[str, Any] or None
            The decoded schedule document.
        """
        sql, params = "SELECT payload FROM schedules", []
        if as_of is not None:
            sql += " WHERE created_at_us <= ?"
            params.append(to_us(as_of))
        rows = self._query(sql + " ORDER BY created_at_us DESC, id DESC LIMIT 1", params)
        return json.loads(rows[0][0]) if rows else None

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key`` (``set_meta``, ``commit_state``).

        Parameters
        ----------
        key : str
        default : Any, optional
            Returned when there is none.

        Returns
        -------
        Any
        """
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def count(self, table: str) -> int:
        """Rows in one table.

        Parameters
        ----------
        table : str
            One of ``TABLES``.

        Returns
        -------
        int

        Raises
        ------
        ValueError
            ``table`` unknown.
        """
        if table not in TABLES:
            raise ValueError(f"table {table!r}: expected one of {TABLES}")
        return int(self._query(f"SELECT count(*) FROM {table}")[0][0])
