"""ERCOT's system load forecast into the store, with its publication time (issue 14).

Why: the learned price model (:mod:`hashflex.price_model`) has a ``load_forecast_mw`` feature, ERCOT's
system load forecast for the interval's hour. The backtest has it from the bundled ``dev2`` file; the
daemon had none, so its live model ran without the feature. This module brings it in through the same
machinery as prices: an HTTP poll (:class:`LoadForecastFeed`) and MQTT ``in/load_forecast``
(:class:`~hashflex.messages.inbound.LoadForecastMessage`, validated by pydantic at the boundary, checked
here for plausibility by the ingest), each posting stored with its ``published_at``
(:meth:`hashflex.store.Store.put_load_forecast`), read back one vintage per interval as known at a
time (:meth:`hashflex.store.Store.load_forecast`, :func:`store_load_forecast_history`).

Sources and shapes (one frame out: :data:`LOAD_FORECAST_COLUMNS`, MW, UTC):

- ERCOT **NP3-565-CD** "Seven-Day Load Forecast by Model and Weather Zone", posted hourly: one row per
  (model, operating day, hour ending) with the weather zones and ``SystemTotal``, an ``InUseFlag``
  marking the model ERCOT used, and ``DSTFlag``. MIS CSV columns ``DeliveryDate`` (MM/DD/YYYY),
  ``HourEnding`` (``"01:00"``..``"24:00"``), ..., ``SystemTotal``, ``Model``, ``InUseFlag`` (Y/N),
  ``DSTFlag``; the public API (``/np3-565-cd/lf_by_model_weather_zone``, queried by
  ``postedDatetimeFrom/To``) returns the same fields in camelCase plus ``postedDatetime`` (Central,
  naive). Field names as used by public clients; not checked against a captured response here (no
  key): verify on the first live call, as the project's format notes say of NP6-905-CD.
  :func:`parse_ercot_load_forecast` reads either (case-insensitive), keeps the in-use model's
  ``SystemTotal``; :func:`parse_ercot_api_load_forecast` turns API pages into those rows.
- The bundled **dev2** file (``ercot/dev2/system_load_forecast_da_hourly.csv``: ``interval_start_utc``,
  ``da_demand_forecast_mw``), ERCOT's forecast made day-ahead, without a publication time:
  :func:`parse_bundled_load_forecast` ASSUMES 13:00 Central the day before (as the price model does)
  and says so in ``attrs``.
- A relay's JSON: the ``in/load_forecast`` message shape (or a list of them), :func:`parse_load_forecast_json`.

Plausibility (:func:`check_load_forecast`): ``load_forecast_mw`` within ``[min_mw, max_mw]`` (default
10,000..150,000 MW: ERCOT's all-time peak is about 85.5 GW, its lowest hourly loads above 20 GW; set
other bounds for another region), ``published_at`` not in the future, an interval that ends after it
starts, and starts at most ``max_lead_days`` after publication. The HTTP feed drops implausible rows
and stores the rest, counting each by reason class (``out_of_bounds:load_forecast_mw``, ...), as the
price feed does; the MQTT ingest rejects the whole message with the first reason, naming the point's
field (``points.3.load_forecast_mw``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from hashflex.feeds.poll import PollingFeed
from hashflex.frames import utc_now
from hashflex.plausibility.load_forecast import (  # the one set of rules, re-exported
    MAX_MW,
    MIN_MW,
    check_load_forecast,
    load_forecast_fault,
    message_frame,
)

__all__ = [
    "CENTRAL_TZ",
    "LOAD_FORECAST_COLUMNS",
    "LOAD_FORECAST_PATH",
    "LoadForecastFeed",
    "LoadForecastFileError",
    "LoadForecastHistory",
    "check_load_forecast",
    "check_load_forecast_message",
    "load_forecast_feed_from_env",
    "message_frame",
    "parse_bundled_load_forecast",
    "parse_ercot_api_load_forecast",
    "parse_ercot_load_forecast",
    "parse_load_forecast_json",
    "store_load_forecast_history",
]

log = logging.getLogger(__name__)

CENTRAL_TZ = "America/Chicago"
LOAD_FORECAST_PATH = "/np3-565-cd/lf_by_model_weather_zone"
LOAD_FORECAST_COLUMNS: tuple[str, ...] = ("interval_start", "interval_end", "load_forecast_mw", "published_at")
_HOUR_RE = re.compile(r"^(\d{1,2})(?::00)?$")


class LoadForecastFileError(ValueError):
    """A load forecast report or payload of the wrong shape, naming the source, the row and the field."""


LoadForecastHistory = Callable[[pd.Timestamp, pd.Timedelta], pd.DataFrame]
"""(as_of, lookback) → ``interval_start``, ``interval_end``, ``load_forecast_mw``, ``published_at``: the
day-ahead vintage of each hour from ``as_of − lookback`` on whose cutoff has passed by ``as_of`` (so up
to the end of the next local day after 13:00 Central)
(the frame :class:`hashflex.price_model.LearnedPriceForecaster` takes as ``load_forecast``)."""


# ---------------------------------------------------------------------------------------------- parsing
def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="datetime64[us, UTC]") for c in LOAD_FORECAST_COLUMNS})
    frame["load_forecast_mw"] = frame["load_forecast_mw"].astype(float)
    return frame


def _day_ahead_publication(starts: pd.Series, tz: str = CENTRAL_TZ) -> pd.Series:
    """13:00 local on the day before each interval's local day, UTC (the DAM's publication time)."""
    day = pd.to_datetime(starts, utc=True).dt.tz_convert(tz).dt.tz_localize(None).dt.normalize()
    return (day - pd.Timedelta(hours=11)).dt.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").dt.tz_convert(
        "UTC")


def parse_bundled_load_forecast(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The bundled dev2 day-ahead system load forecast (``interval_start_utc``, ``da_demand_forecast_mw``).

    Parameters
    ----------
    path : str or path
        The CSV.

    Returns
    -------
    pandas.DataFrame
        :data:`LOAD_FORECAST_COLUMNS` (hourly, MW); ``published_at`` ASSUMED 13:00 Central the day
        before (the file has no publication time): ``attrs["published_at_assumed"]`` is True and
        ``attrs["source"]`` says so.

    Raises
    ------
    LoadForecastFileError
        A column is missing or a value is not a number (row and column named).
    """
    name = Path(path).name
    raw = pd.read_csv(path)
    for column in ("interval_start_utc", "da_demand_forecast_mw"):
        if column not in raw.columns:
            raise LoadForecastFileError(f"{name}: column {column!r} missing (have {list(raw.columns)})")
    mw = pd.to_numeric(raw["da_demand_forecast_mw"], errors="coerce")
    if mw.isna().any():
        line = int(mw.isna().to_numpy().argmax()) + 2
        raise LoadForecastFileError(f"{name} line {line}: da_demand_forecast_mw is not a number")
    starts = pd.to_datetime(raw["interval_start_utc"], utc=True)
    frame = pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(hours=1),
                          "load_forecast_mw": mw.astype(float), "published_at": _day_ahead_publication(starts)})
    frame.attrs = {"published_at_assumed": True,
                   "source": f"{name} (ERCOT day-ahead system load forecast; published_at ASSUMED 13:00 CT the day before)"}
    return frame


def _column(frame: pd.DataFrame, *names: str) -> str | None:
    lower = {str(c).strip().lower(): c for c in frame.columns}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.upper().isin(["Y", "TRUE", "1"])


def parse_ercot_load_forecast(data: pd.DataFrame | str | os.PathLike[str], *, posted_at: datetime | None = None,
                              source: str | None = None, tz: str = CENTRAL_TZ) -> pd.DataFrame:
    """One or more NP3-565-CD postings (MIS CSV or API rows) → the in-use model's system total per hour.

    Parameters
    ----------
    data : DataFrame, str or path
        Rows with ``DeliveryDate``, ``HourEnding``, ``SystemTotal`` and, optionally, ``Model``,
        ``InUseFlag``, ``DSTFlag``, ``postedDatetime`` (any case).
    posted_at : datetime, optional
        The posting time for rows without ``postedDatetime`` (aware; e.g. from the MIS file's
        publish date). One of the two is required: a forecast without its publication time cannot be
        used without look-ahead.
    source : str, optional
        Name in error messages.
    tz : str
        The report's time zone (Central prevailing time).

    Returns
    -------
    pandas.DataFrame
        :data:`LOAD_FORECAST_COLUMNS`, sorted by ``published_at``, ``interval_start``.

    Raises
    ------
    LoadForecastFileError
        A column is missing, a date, hour or number does not parse, several models are in use for
        one hour, or no publication time is known (row and field named).
    """
    if isinstance(data, pd.DataFrame):
        frame, name = data.copy(), source or "<rows>"
    else:
        frame = pd.read_csv(data, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        name = source or Path(data).name
    if frame.empty:
        return _empty()
    date_col = _column(frame, "DeliveryDate", "deliveryDate", "Delivery Date", "OperDay")
    hour_col = _column(frame, "HourEnding", "hourEnding", "Hour Ending")
    total_col = _column(frame, "SystemTotal", "systemTotal", "System Total")
    for label, col in (("DeliveryDate", date_col), ("HourEnding", hour_col), ("SystemTotal", total_col)):
        if col is None:
            raise LoadForecastFileError(f"{name}: column {label} missing (have {list(frame.columns)[:16]})")
    in_use_col = _column(frame, "InUseFlag", "inUseFlag")
    if in_use_col is not None:
        frame = frame[_truthy(frame[in_use_col])]
    text = frame[date_col].astype(str).str.strip()
    dates = pd.to_datetime(text, format="%m/%d/%Y", errors="coerce").fillna(
        pd.to_datetime(text, format="%Y-%m-%d", errors="coerce"))
    if dates.isna().any():
        i = int(dates.isna().to_numpy().argmax())
        raise LoadForecastFileError(f"{name} row {i + 1}: DeliveryDate {text.iloc[i]!r} is not MM/DD/YYYY or YYYY-MM-DD")
    hours = pd.to_numeric(frame[hour_col].astype(str).str.strip().str.extract(_HOUR_RE)[0], errors="coerce")
    bad = hours.isna() | ~hours.between(1, 24)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise LoadForecastFileError(f"{name} row {i + 1}: HourEnding {frame[hour_col].iloc[i]!r} is not 1..24")
    totals = pd.to_numeric(frame[total_col].astype(str).str.strip().str.replace(",", ""), errors="coerce")
    if totals.isna().any():
        i = int(totals.isna().to_numpy().argmax())
        raise LoadForecastFileError(f"{name} row {i + 1}: SystemTotal {frame[total_col].iloc[i]!r} is not a number")
    dst_col = _column(frame, "DSTFlag", "dstFlag")
    repeated = _truthy(frame[dst_col]).to_numpy() if dst_col is not None else None
    naive = dates + pd.to_timedelta(hours - 1, unit="h")
    try:
        local = naive.dt.tz_localize(tz, ambiguous=~repeated if repeated is not None else "NaT",
                                     nonexistent="raise")
    except Exception as exc:
        raise LoadForecastFileError(f"{name}: an hour that does not exist in {tz} ({exc})") from exc
    if local.isna().any():
        i = int(local.isna().to_numpy().argmax())
        raise LoadForecastFileError(f"{name} row {i + 1}: HourEnding {frame[hour_col].iloc[i]!r} on the fall-back day "
                                    "needs DSTFlag")
    starts = local.dt.tz_convert("UTC")
    posted_col = _column(frame, "postedDatetime", "PostedDatetime", "Posted Datetime")
    if posted_col is not None:
        posted_text = frame[posted_col].astype(str).str.strip()
        posted = pd.to_datetime(posted_text, errors="coerce", format="ISO8601")
        if posted.isna().any():
            i = int(posted.isna().to_numpy().argmax())
            raise LoadForecastFileError(f"{name} row {i + 1}: postedDatetime {posted_text.iloc[i]!r} is not a time")
        published = (posted.dt.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
                     if posted.dt.tz is None else posted.dt.tz_convert("UTC"))
    elif posted_at is not None:
        if posted_at.tzinfo is None:
            raise LoadForecastFileError(f"{name}: posted_at {posted_at!r} must be timezone-aware")
        published = pd.Series(pd.Timestamp(posted_at).tz_convert("UTC"), index=frame.index)
    else:
        raise LoadForecastFileError(f"{name}: no postedDatetime column and no posted_at given: the publication time "
                                    "is required (a forecast used before it was published is look-ahead)")
    out = pd.DataFrame({"interval_start": starts.to_numpy(), "interval_end": (starts + pd.Timedelta(hours=1)).to_numpy(),
                        "load_forecast_mw": totals.astype(float).to_numpy(), "published_at": published.to_numpy()})
    for c in ("interval_start", "interval_end", "published_at"):
        out[c] = pd.to_datetime(out[c], utc=True)
    doubled = out.duplicated(["interval_start", "published_at"], keep=False)
    if doubled.any():
        row = out[doubled].iloc[0]
        raise LoadForecastFileError(f"{name}: {int(doubled.sum())} rows for one hour and posting (e.g. "
                                    f"{row['interval_start']} posted {row['published_at']}): more than one model "
                                    "in use, or no InUseFlag column")
    out = out.sort_values(["published_at", "interval_start"], ignore_index=True)
    out.attrs = {"source": name, "published_at_assumed": False}
    return out


def parse_ercot_api_load_forecast(pages: Iterable[Mapping[str, Any]], *, source: str = "ERCOT API NP3-565-CD",
                                  tz: str = CENTRAL_TZ) -> pd.DataFrame:
    """Pages of the ERCOT public API's NP3-565-CD report → :func:`parse_ercot_load_forecast`.

    Parameters
    ----------
    pages : iterable of dict
        Decoded JSON pages: ``fields`` (``[{"name": ...}, ...]``) and ``data`` (row arrays in that order).
    source : str
        Name in error messages.
    tz : str
        Central prevailing time.

    Returns
    -------
    pandas.DataFrame
        :data:`LOAD_FORECAST_COLUMNS`.

    Raises
    ------
    LoadForecastFileError
        A page without ``fields``, a row of the wrong length, or what the row parser refuses.
    """
    rows: list[list[Any]] = []
    names: list[str] | None = None
    for number, page in enumerate(pages, start=1):
        fields = page.get("fields") if isinstance(page, Mapping) else None
        if not isinstance(fields, list) or not all(isinstance(f, Mapping) and "name" in f for f in fields):
            raise LoadForecastFileError(f"{source} page {number}: fields: expected a list of {{name: ...}}")
        page_names = [str(f["name"]) for f in fields]
        if names is not None and page_names != names:
            raise LoadForecastFileError(f"{source} page {number}: fields differ from page 1")
        names = page_names
        for i, row in enumerate(page.get("data") or []):
            if not isinstance(row, list) or len(row) != len(names):
                raise LoadForecastFileError(f"{source} page {number} data.{i}: expected {len(names)} values")
            rows.append(row)
    if not rows or names is None:
        return _empty()
    return parse_ercot_load_forecast(pd.DataFrame(rows, columns=names).astype(str), source=source, tz=tz)


def parse_load_forecast_json(body: Any, *, source: str = "load forecast JSON") -> pd.DataFrame:
    """A relay's JSON: one ``in/load_forecast`` message document, or a list of them.

    Parameters
    ----------
    body : dict or list of dict
        Decoded JSON in the :class:`~hashflex.messages.inbound.LoadForecastMessage` shape.
    source : str
        Name in error messages.

    Returns
    -------
    pandas.DataFrame
        :data:`LOAD_FORECAST_COLUMNS`.

    Raises
    ------
    LoadForecastFileError
        A document that is not the message shape (the pydantic error's field path named).
    """
    from pydantic import ValidationError

    from hashflex.messages.inbound import LoadForecastMessage

    documents = body if isinstance(body, list) else [body]
    frames = []
    for i, document in enumerate(documents):
        try:
            message = LoadForecastMessage.model_validate_json(json.dumps(document), strict=True)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            prefix = f"{source}" + (f" [{i}]" if isinstance(body, list) else "")
            raise LoadForecastFileError(f"{prefix}: {where}: {first['msg']}") from None
        frames.append(message_frame(message))
    return pd.concat(frames, ignore_index=True) if frames else _empty()


# ---------------------------------------------------------------------------------------------- plausibility
def check_load_forecast_message(message: Any, now: datetime, topic: str, *, min_mw: float = MIN_MW,
                                max_mw: float = MAX_MW) -> Any:
    """The ingest's plausibility check of one ``in/load_forecast`` message (all points or none), as
    :func:`hashflex.plausibility.check_plausible` reports it: None, or a rejection whose reason names the
    point's field (``load_forecast: points.3.load_forecast_mw: ...``) and whose rule is the reason class.
    The rules are :mod:`hashflex.plausibility.load_forecast`'s."""
    from hashflex.messages.parse import Rejection, payload_preview

    fault = load_forecast_fault(message, now, min_mw=min_mw, max_mw=max_mw)
    if fault is None:
        return None
    rule, field, reason = fault
    return Rejection(topic, f"load_forecast: {reason}", payload_preview(message.model_dump_json()),
                     "load_forecast", f"{rule}:{field}")


# ---------------------------------------------------------------------------------------------- reading back
def store_load_forecast_history(store: Any, region: str = "ERCOT") -> LoadForecastHistory:
    """The stored load forecast as the price model reads it: each hour's day-ahead vintage, published by a time.

    Parameters
    ----------
    store : hashflex.store.Store
        Reads are safe from any thread (one reader connection per thread).
    region : str, default "ERCOT"

    Returns
    -------
    LoadForecastHistory
        ``history(as_of, lookback)``: intervals from ``as_of − lookback`` to ``as_of + 2 days``
        (:meth:`hashflex.store.Store.load_forecast`, ``vintage="day_ahead"``, ``as_of``: only hours whose
        day-ahead cutoff has passed).
    """

    def history(as_of: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame:
        as_of = pd.Timestamp(as_of).tz_convert("UTC")
        # Intervals whose day-ahead cutoff has passed start before the end of tomorrow (local): 2 days bound it.
        frame = store.load_forecast((as_of - lookback).to_pydatetime(), (as_of + pd.Timedelta(days=2)).to_pydatetime(),
                                    region=region, as_of=as_of.to_pydatetime(), vintage="day_ahead")
        return frame[list(LOAD_FORECAST_COLUMNS)]

    return history


# ---------------------------------------------------------------------------------------------- the feed
class LoadForecastFeed(PollingFeed):
    """``poll_once()`` fetches and stores the plausible rows; ``start()`` polls every ``period_s`` until ``stop()``.

    Parameters
    ----------
    store : hashflex.store.Store
        Where the rows go (:meth:`~hashflex.store.Store.put_load_forecast`).
    fetch : callable
        ``fetch(now, since) -> DataFrame`` of :data:`LOAD_FORECAST_COLUMNS`; ``since`` is the earliest
        publication time wanted (two days back on the first poll, so the day-ahead vintage of today and
        tomorrow is there after a restart; then the last good poll minus two hours).
    period_s : float
        Seconds between polls (ERCOT posts hourly; default 3600 / 4).
    clock : callable
        ``clock() -> datetime``, aware UTC.
    name : str
        The feed's name in logs and ``/status``.
    min_mw, max_mw : float
        Plausible load (:func:`check_load_forecast`).
    """

    def __init__(self, store: Any, fetch: Callable[[datetime, datetime], pd.DataFrame], *, period_s: float = 900.0,
                 clock: Callable[[], datetime] = utc_now, name: str = "load forecast feed",
                 min_mw: float = MIN_MW, max_mw: float = MAX_MW) -> None:
        super().__init__("load_forecast", period_s, name)
        self.store, self.fetch, self.clock = store, fetch, clock
        self.min_mw, self.max_mw = min_mw, max_mw
        self.last_success: datetime | None = None
        self.last_published_at: datetime | None = None

    def poll_once(self) -> int:
        """Fetch once and store the plausible rows; returns how many were stored (0 on failure, never raises).

        Returns
        -------
        int
            Rows stored.
        """
        from hashflex.feeds.http import PriceFeedError

        now = self.clock()
        since = (now - timedelta(days=2)) if self.last_success is None else self.last_success - timedelta(hours=2)
        self.polls += 1
        try:
            frame = self.fetch(now, since)
        except (PriceFeedError, ValueError) as exc:  # the HTTP layer's typed errors and bad payloads
            self.failures += 1
            self.last_error = str(exc)
            log.warning("%s: poll failed: %s", self.name, exc)
            return 0
        self.last_error = None
        self.last_success = now
        if frame.empty:
            return 0
        kept, dropped, reasons, _ = check_load_forecast(frame, now, min_mw=self.min_mw, max_mw=self.max_mw)
        if dropped:
            counts = self.rejections["load_forecast"]
            for rule, n in dropped.items():
                counts[rule] = counts.get(rule, 0) + n
            self.rejected_rows += sum(dropped.values())
            log.warning("%s: %d implausible row(s) dropped, e.g. %s", self.name, sum(dropped.values()),
                        "; ".join(reasons))
        if kept.empty:
            return 0
        stored = self.store.put_load_forecast(kept, source=str(frame.attrs.get("source", self.name)), received_at=now)
        self.rows += stored
        newest = kept["published_at"].max()
        self.last_published_at = newest.to_pydatetime() if self.last_published_at is None else max(
            self.last_published_at, newest.to_pydatetime())
        return stored

    def stats(self) -> dict[str, Any]:
        """Counters for ``/status`` and ``/metrics`` (the price feed's shape, plus the newest posting stored).

        Returns
        -------
        dict
            ``feed``, ``polls``, ``failures``, ``rows``, ``rejected_rows``, ``rejections``
            (``{"load_forecast": {reason: n}}``), ``last_error``, ``last_published_at`` (ISO or None).
        """
        return {**super().stats(),
                "last_published_at": None if self.last_published_at is None else self.last_published_at.isoformat()}


def load_forecast_feed_from_env(store: Any, env: Mapping[str, str] | None = None, *,
                                clock: Callable[[], datetime] = utc_now, api_config: Any = None) -> LoadForecastFeed | None:
    """The configured load forecast feed, or None (the forecast may still come on ``in/load_forecast``).

    ``HASHFLEX_LOAD_FORECAST_URL``: a relay's JSON endpoint (:func:`parse_load_forecast_json`), asked with
    ``?since=<ISO time>``; else ``ERCOT_API_KEY`` (+ ``ERCOT_ID_TOKEN``): the ERCOT public API's NP3-565-CD
    by ``postedDatetimeFrom/To``. ``HASHFLEX_LOAD_FORECAST_POLL_S`` sets the period (default 900 s).

    Parameters
    ----------
    store : hashflex.store.Store
    env : mapping, optional
        Default ``os.environ``.
    clock : callable
        ``clock() -> datetime``.
    api_config : hashflex.feeds.http.ErcotApiConfig, optional
        Where the ERCOT API is (default: api.ercot.com; tests point it at 127.0.0.1).

    Returns
    -------
    LoadForecastFeed or None
    """
    from hashflex.feeds.http import (
        _USER_AGENT,
        ErcotApiConfig,
        PriceFeedResponseError,
        PricePoller,
        RetryPolicy,
        _get_json,
    )

    env = dict(os.environ if env is None else env)
    period_s = float(env.get("HASHFLEX_LOAD_FORECAST_POLL_S", "900"))
    url = env.get("HASHFLEX_LOAD_FORECAST_URL")
    if url:
        import time

        import requests

        session = requests.Session()

        def fetch_json(now: datetime, since: datetime) -> pd.DataFrame:
            body = _get_json(session, url, params={"since": since.isoformat()},
                             headers={"Accept": "application/json", "User-Agent": _USER_AGENT}, timeout_s=(10.0, 30.0),
                             retry=RetryPolicy(), sleep=time.sleep)
            try:
                frame = parse_load_forecast_json(body, source=url)
            except LoadForecastFileError as exc:
                raise PriceFeedResponseError(str(exc)) from exc
            frame.attrs["source"] = url
            return frame

        return LoadForecastFeed(store, fetch_json, period_s=period_s, clock=clock, name=f"load forecast JSON {url}")
    if env.get("ERCOT_API_KEY"):
        poller = PricePoller(api_config or ErcotApiConfig(), environ=env)

        def fetch_api(now: datetime, since: datetime) -> pd.DataFrame:
            central = pd.Timestamp(since).tz_convert(CENTRAL_TZ).tz_localize(None)
            until = pd.Timestamp(now).tz_convert(CENTRAL_TZ).tz_localize(None)
            pages = poller.fetch_pages(LOAD_FORECAST_PATH, {"postedDatetimeFrom": central.strftime("%Y-%m-%dT%H:%M:%S"),
                                                            "postedDatetimeTo": until.strftime("%Y-%m-%dT%H:%M:%S")})
            try:
                return parse_ercot_api_load_forecast(pages)
            except LoadForecastFileError as exc:
                raise PriceFeedResponseError(str(exc)) from exc

        return LoadForecastFeed(store, fetch_api, period_s=period_s, clock=clock, name="ERCOT public API NP3-565-CD")
    return None
