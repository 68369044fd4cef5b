"""The store's asynchronous writes: each enqueues rows for the one writer thread (see ``Store``).

A mixin of :class:`hashflex.store.Store`, which provides ``_enqueue`` (raises RuntimeError once the
store is closed) and ``_clock``. Writes are ordered per table and committed in batches; ``flush()``
waits for them, ``after_commit(callback)`` runs a callback once they are durable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel

from hashflex.frames import check_price_frame
from hashflex.messages import (
    DREventMessage,
    InboundMessage,
    PriceMessage,
    Rejection,
    SetpointMessage,
)
from hashflex.messages.inbound import LoadForecastMessage
from hashflex.store.schema import _AFTER_COMMIT, _VALUE_FIELD, DR_STATUSES, _unit_per_us, day_ahead_cutoff_us, to_us

__all__ = ["StoreWrites"]


class StoreWrites:
    """Write methods of :class:`hashflex.store.Store` (a mixin: the queue and writer thread live in the class itself)."""

    _clock: Callable[[], datetime]  # provided by Store, with _enqueue(item) (RuntimeError once closed)
    _enqueue: Callable[[tuple[str, Any]], None]

    def put(self, message: InboundMessage, *, received_at: datetime | None = None) -> None:
        """Enqueue one validated inbound message for storage (the first value per kind, key and time wins).

        Parameters
        ----------
        message : InboundMessage
            Checked by ``messages.parse_message`` and ``plausibility.check_plausible`` already.
        received_at : datetime, optional
            Receipt time (default now).

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        received_us = to_us(received_at or self._clock())
        if isinstance(message, LoadForecastMessage):  # one posting, one row per interval
            for row in self._load_forecast_rows(message, received_us):
                self._enqueue(row)
            return
        self._enqueue(self._row(message, received_us))

    def put_many(self, messages: Iterable[InboundMessage], *, received_at: datetime | None = None) -> None:
        """Enqueue several validated inbound messages, all with one receipt time.

        Parameters
        ----------
        messages : Iterable[InboundMessage]
        received_at : datetime, optional
            Default now.

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        received_us = to_us(received_at or self._clock())
        for message in messages:
            if isinstance(message, LoadForecastMessage):
                for row in self._load_forecast_rows(message, received_us):
                    self._enqueue(row)
            else:
                self._enqueue(self._row(message, received_us))

    def put_load_forecast(self, frame: pd.DataFrame, *, source: str, region: str = "ERCOT",
                          received_at: datetime | None = None) -> int:
        """Enqueue system load forecast rows, each with its publication time (issue 14). Every posting is
        kept (ERCOT re-posts its seven-day forecast hourly); the first copy of a (region, interval,
        publication) wins, so a re-fetched posting is a no-op.

        Parameters
        ----------
        frame : pandas.DataFrame
            ``interval_start``, ``interval_end``, ``published_at`` (aware datetimes) and ``load_forecast_mw``
            (MW), one row per interval and posting; an optional ``region`` column overrides ``region``.
            Checked for plausibility already (:func:`hashflex.feeds.load_forecast.check_load_forecast`).
        source : str
            Where it came from (e.g. ``ERCOT API NP3-565-CD``), kept with each row.
        region : str, default "ERCOT"
            The region when the frame has no ``region`` column (``ERCOT``: the system total).
        received_at : datetime, optional
            Receipt time; default now.

        Returns
        -------
        int
            Rows enqueued.

        Raises
        ------
        ValueError
            A column is missing (named), a time column is not tz-aware, or a value is missing.
        RuntimeError
            The store is closed.
        """
        missing = [c for c in ("interval_start", "interval_end", "published_at", "load_forecast_mw")
                   if c not in frame.columns]
        if missing:
            raise ValueError(f"load forecast: column(s) {missing} missing")
        if frame.empty:
            return 0
        columns = {}
        for name in ("interval_start", "interval_end", "published_at"):
            values = frame[name]
            if not isinstance(values.dtype, pd.DatetimeTZDtype):
                raise ValueError(f"load forecast: {name} must be tz-aware datetime64, got {values.dtype}")
            if values.isna().any():
                raise ValueError(f"load forecast: {name} has missing values")
            columns[name] = (values.astype("int64") // _unit_per_us(values)).tolist()
        mw = frame["load_forecast_mw"].astype(float)
        if mw.isna().any():
            raise ValueError("load forecast: load_forecast_mw has missing values")
        regions = frame["region"].astype(str).tolist() if "region" in frame.columns else [region] * len(frame)
        received_us = to_us(received_at or self._clock())
        rows = zip(regions, columns["interval_start"], columns["published_at"], columns["interval_end"],
                   mw.tolist(), day_ahead_cutoff_us(columns["interval_start"]), strict=True)
        for reg, start_us, published_us, end_us, value, cutoff_us in rows:
            self._enqueue(("load_forecast", (reg, start_us, published_us, end_us, value, source, received_us,
                                             cutoff_us)))
        return len(frame)

    @staticmethod
    def _load_forecast_rows(message: LoadForecastMessage, received_us: int) -> list[tuple[str, tuple[Any, ...]]]:
        step_us = message.interval_minutes * 60_000_000
        published_us = to_us(message.published_at)
        starts = [to_us(p.interval_start) for p in message.points]
        return [("load_forecast", (message.region, start_us, published_us, start_us + step_us, p.load_forecast_mw,
                                   message.source, received_us, cutoff_us))
                for p, start_us, cutoff_us in zip(message.points, starts, day_ahead_cutoff_us(starts), strict=True)]

    def put_price_frame(
        self, frame: pd.DataFrame, *, published_at: datetime | None = None, received_at: datetime | None = None
    ) -> int:
        """Enqueue a canonical price frame.

        Parameters
        ----------
        frame : pandas.DataFrame
            The canonical price frame (:func:`hashflex.frames.check_price_frame`): ``settlement_point``,
            ``market``, ``interval_start``, ``interval_end`` (aware UTC), ``price_usd_mwh``.
        published_at : datetime, optional
            When ERCOT published these prices, for every row (default ``received_at``); a later
            ``published_at`` with a different price supersedes.
        received_at : datetime, optional
            Default now.

        Returns
        -------
        int
            Rows enqueued.

        Raises
        ------
        ValueError
            The frame breaks the contract (naming the column or row).
        RuntimeError
            The store is closed.
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

    def put_price_history(self, frame: pd.DataFrame, *, received_at: datetime | None = None) -> int:
        """Enqueue a price history whose rows carry their own publication times (one check for all).

        The same rows as one :meth:`put_price_frame` call per distinct ``published_at`` (the
        backtest's recorded prices, each published when ERCOT published it), without a contract
        check and a frame per publication time (issue 18: 2,785 checks for a month of 15-minute
        prices). The writer thread commits them in its usual ``executemany`` batches.

        Parameters
        ----------
        frame : pandas.DataFrame
            The canonical price frame's columns (:data:`hashflex.frames.PRICE_COLUMNS`, any row
            order) plus ``published_at`` (aware), when each row was published.
        received_at : datetime, optional
            Receipt time of every row; default each row's ``published_at`` (as a feed that
            received each price when it was published).

        Returns
        -------
        int
            Rows enqueued.

        Raises
        ------
        ValueError
            ``published_at`` missing or not aware, or the canonical part breaks the contract
            (:func:`hashflex.frames.check_price_frame`, naming the column or row).
        RuntimeError
            The store is closed.
        """
        from hashflex.frames import KEY_COLUMNS, PRICE_COLUMNS

        missing = [c for c in (*PRICE_COLUMNS, "published_at") if c not in frame.columns]
        if missing:
            raise ValueError(f"price history: column(s) {missing} missing (the canonical price columns and "
                             f"published_at, when each row was published)")
        published = frame["published_at"]
        if not isinstance(published.dtype, pd.DatetimeTZDtype):
            raise ValueError(f"price history: published_at must be tz-aware datetime64, got {published.dtype}")
        if published.isna().any():
            raise ValueError(f"price history: published_at has missing values "
                             f"(first at row {int(published.isna().to_numpy().argmax())})")
        ordered = frame.sort_values([*KEY_COLUMNS, "published_at"], kind="stable")
        repeated = ordered.duplicated([*KEY_COLUMNS, "published_at"])
        if repeated.any():
            row = ordered[repeated].iloc[0]
            raise ValueError(f"price history: duplicate (interval_start, settlement_point, market, published_at): "
                             f"{row['interval_start']} {row['settlement_point']} {row['market']} "
                             f"{row['published_at']}")
        # Revisions (a key again, published later) are allowed, as in separate put_price_frame calls;
        # the contract is checked on the newest revision of each key.
        newest = ordered.drop_duplicates(list(KEY_COLUMNS), keep="last")
        check_price_frame(newest[list(PRICE_COLUMNS)].reset_index(drop=True))
        if len(newest) < len(ordered):  # the older revisions: their values too
            older = ordered[ordered.duplicated(list(KEY_COLUMNS), keep="last")]
            check_price_frame(older.drop_duplicates(list(KEY_COLUMNS))[list(PRICE_COLUMNS)].reset_index(drop=True))
            if older.duplicated(list(KEY_COLUMNS)).any():
                for _, block in older.groupby("published_at"):
                    check_price_frame(block[list(PRICE_COLUMNS)].reset_index(drop=True))
        published_us = (ordered["published_at"].astype("int64") // _unit_per_us(ordered["published_at"])).tolist()
        received = ([to_us(received_at)] * len(ordered) if received_at is not None else published_us)
        starts = (ordered["interval_start"].astype("int64") // _unit_per_us(ordered["interval_start"])).tolist()
        ends = (ordered["interval_end"].astype("int64") // _unit_per_us(ordered["interval_end"])).tolist()
        rows = zip(ordered["settlement_point"].tolist(), ordered["market"].tolist(), starts, ends,
                   ordered["price_usd_mwh"].tolist(), published_us, received, strict=True)
        for row in rows:
            self._enqueue(("price", row))
        return len(ordered)

    def put_rejection(self, rejection: Rejection, *, received_at: datetime | None = None) -> None:
        """Enqueue a rejected inbound message (aggregated per topic and reason, with a count).

        Parameters
        ----------
        rejection : Rejection
        received_at : datetime, optional
            Default now.

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        seen_us = to_us(received_at or self._clock())
        self._enqueue(("rejection", (rejection.topic, rejection.reason, seen_us, seen_us, rejection.payload)))

    def set_dr_status(self, event_id: str, status: str) -> None:
        """Record a DR event status the control loop decided.

        Parameters
        ----------
        event_id : str
        status : str
            One of ``DR_STATUSES`` (e.g. ``active``, ``completed``).

        Raises
        ------
        ValueError
            ``status`` not one of ``DR_STATUSES``.
        RuntimeError
            The store is closed.
        """
        if status not in DR_STATUSES:
            raise ValueError(f"status {status!r}: expected one of {DR_STATUSES}")
        self._enqueue(("dr_status", (status, to_us(self._clock()), event_id)))

    def put_schedule(self, schedule: Mapping[str, Any] | BaseModel, *, created_at: datetime) -> None:
        """Enqueue a schedule document.

        Parameters
        ----------
        schedule : Mapping[str, Any] or pydantic.BaseModel
            Stored as JSON.
        created_at : datetime
            When it was made (aware).

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        payload = schedule.model_dump_json() if isinstance(schedule, BaseModel) else json.dumps(schedule, default=str)
        self._enqueue(("schedule", (to_us(created_at), payload)))

    def put_setpoint(self, setpoint: SetpointMessage) -> None:
        """Enqueue a setpoint sent to a miner.

        Parameters
        ----------
        setpoint : SetpointMessage
            Its miner, issue and expiry times, mode and power target (kW).

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        row = (setpoint.miner_id, to_us(setpoint.issued_at), to_us(setpoint.expires_at), setpoint.mode,
               setpoint.power_target_kw)
        self._enqueue(("setpoint", row))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` on the writer thread once every write enqueued before it is committed.

        It forces no commit of its own. Keep it fast; exceptions are logged. Not run after close.

        Parameters
        ----------
        callback : Callable[[], None]

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        self._enqueue((_AFTER_COMMIT, callback))

    def set_meta(self, key: str, value: Any) -> None:
        """Store any JSON-serialisable value under ``key`` (replacing the old one), asynchronously.

        Parameters
        ----------
        key : str
        value : Any

        Raises
        ------
        RuntimeError
            The store is closed.
        """
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
