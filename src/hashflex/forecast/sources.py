"""Where a forecast's snapshot comes from: recorded history (:class:`RecordedForecaster`, for
``run --simulate`` and the backtest) or the daemon's store (:func:`snapshot_from_store`,
:func:`store_forecaster`); both end in the one :func:`~hashflex.forecast.rules.build_forecast`.

Seam: the I/O edge of the forecast (reading a store, windowing recorded frames); the rules stay
pure. Split from ``forecast.py`` (issue 11).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hashflex.forecast.model import (
    SNAPSHOT_COLUMNS,
    Forecast,
    ForecastConfig,
    PriceForecaster,
    Snapshot,
    _empty,
    _utc_frame,
)
from hashflex.forecast.rules import _utc, build_forecast
from hashflex.profile import SiteProfile

if TYPE_CHECKING:
    from hashflex.store import Store

__all__ = ["NoiseModel", "RecordedForecaster", "snapshot_from_store", "store_forecaster"]


class RecordedForecaster:
    """The daemon's forecast (:func:`build_forecast`, the same rules and fallbacks) over recorded
    history instead of the store: ``hashflex run --simulate`` and the backtest plan with it, the
    daemon with :func:`store_forecaster`; both feed the one :func:`build_forecast`.

    Parameters
    ----------
    profile : the site
    prices : canonical price frame (RT and/or DA rows), optionally with ``published_at``; without it
        ERCOT's publication times are assumed (``feeds.ercot.publication_times``)
    renewable_observations : optional frame ``source_id, timestamp, power_kw, published_at`` of
        on-site output as it was measured (a simulation's meters); the forecast sees a row from its
        ``published_at`` on
    config : forecast settings

    Calling it ``(now, horizon_start, periods)`` returns a :class:`Forecast`; nothing published
    after ``now`` is read (``Snapshot.known_at``).
    """

    PRICE_LOOKBACK = pd.Timedelta(days=2)  # DA covering the horizon, RT of yesterday and the last RT price
    AHEAD = pd.Timedelta(days=3)

    def __init__(self, profile: SiteProfile, prices: pd.DataFrame,
                 renewable_observations: pd.DataFrame | None = None, config: ForecastConfig | None = None,
                 *, hashprice: pd.DataFrame | None = None, price_forecaster: PriceForecaster | None = None) -> None:
        from hashflex.feeds.ercot import publication_times

        self.profile = profile
        self.config = config
        # Daily hashprice rows (``SNAPSHOT_COLUMNS["hashprice"]``, e.g. feeds.hashprice.bundled_hashprice):
        # the forecast sees day D's value from its published_at (the end of D) on.
        self.hashprice = (None if hashprice is None
                          else hashprice[list(SNAPSHOT_COLUMNS["hashprice"])].sort_values("published_at")
                          .reset_index(drop=True))
        self.price_forecaster = price_forecaster
        frame = prices.copy()
        if "published_at" not in frame.columns:
            frame["published_at"] = publication_times(frame)
        self.prices = frame.sort_values("interval_start").reset_index(drop=True)
        self._starts = pd.DatetimeIndex(self.prices["interval_start"]).tz_convert("UTC")
        # Built once, sliced per call (issue 18): the snapshot's price columns and hashprice times.
        self._snapshot_prices = self.prices[list(SNAPSHOT_COLUMNS["prices"])]
        self._hashprice_published = (None if self.hashprice is None
                                     else pd.DatetimeIndex(self.hashprice["published_at"]))
        self.renewables = renewable_observations
        history_days = (config or ForecastConfig()).renewable_history_days
        self.renewable_lookback = pd.Timedelta(days=history_days + 1)
        self._renewable_times = (None if renewable_observations is None
                                 else pd.DatetimeIndex(renewable_observations["published_at"]))
        # The no-look-ahead filter on arrays (issue 18): each frame as Snapshot.known_at converts it, once,
        # with its publication times as int64 ns; per call a searchsorted window and one mask, not a frame
        # filter per call. None where a frame cannot be converted (e.g. naive times): the frame path then
        # raises its error at the call, as before.
        self._known = self._known_frames()

    def _known_frames(self) -> dict[str, tuple[pd.DataFrame, np.ndarray]] | None:
        """Per snapshot frame the UTC-converted frame and its ``published_at`` in int64 ns (NaT: int64 min)."""
        frames = {"prices": self._snapshot_prices}
        if self.renewables is not None:
            frames["renewable_observations"] = self.renewables
        if self.hashprice is not None:
            frames["hashprice"] = self.hashprice
        out = {}
        try:
            for name, frame in frames.items():
                utc = _utc_frame(name, frame)
                out[name] = (utc, utc["published_at"].array.as_unit("ns").asi8)
        except (ValueError, TypeError, AttributeError):
            return None
        return out

    def update(self, prices: pd.DataFrame) -> None:
        """Replace the price history (e.g. a live replay that learned more prices).

        Parameters
        ----------
        prices : pd.DataFrame
            Canonical price frame, optionally with ``published_at``.
        """
        self.__init__(self.profile, prices, self.renewables, self.config,  # type: ignore[misc]
                      hashprice=self.hashprice, price_forecaster=self.price_forecaster)

    def snapshot(self, now: pd.Timestamp) -> Snapshot:
        """The recorded frames around ``now`` as a :class:`Snapshot` (prices from two days before to three
        days after, renewables over the history window, hashprice over eight days); the no-look-ahead
        filter is applied later by :func:`build_forecast`.

        Parameters
        ----------
        now : pd.Timestamp
            The decision time, UTC.

        Returns
        -------
        Snapshot
        """
        lo, hi = self._starts.searchsorted(now - self.PRICE_LOOKBACK), self._starts.searchsorted(now + self.AHEAD)
        frames: dict[str, pd.DataFrame] = {"prices": self._snapshot_prices.iloc[lo:hi]}
        if self.renewables is not None and self._renewable_times is not None:
            a = self._renewable_times.searchsorted(now - self.renewable_lookback)
            b = self._renewable_times.searchsorted(now, "right")
            frames["renewable_observations"] = self.renewables.iloc[a:b]
        if self.hashprice is not None:
            published = self._hashprice_published
            a = published.searchsorted(now - pd.Timedelta(days=8))
            frames["hashprice"] = self.hashprice.iloc[a:published.searchsorted(now, "right")]
        return Snapshot(**{**_empty_known_frames(), **frames})

    def __call__(self, now: Any, horizon_start: pd.Timestamp, periods: int) -> Forecast:
        """The forecast at ``now`` for ``periods`` intervals from ``horizon_start`` (the loop's forecaster shape).

        Parameters
        ----------
        now : datetime or pd.Timestamp
            The decision time, tz-aware.
        horizon_start : pd.Timestamp
            Start of the first interval.
        periods : int
            Number of intervals.

        Returns
        -------
        Forecast
        """
        now_ts = _utc(now)
        snapshot = self.snapshot(now_ts) if self._known is None else self._known_snapshot(now_ts)
        return build_forecast(self.profile, snapshot, now_ts, horizon_start, periods, config=self.config,
                              price_forecaster=self.price_forecaster)

    def _known_snapshot(self, now: pd.Timestamp) -> Snapshot:
        """:meth:`snapshot` with the no-look-ahead filter already applied (``Snapshot.known_at(now)`` of it,
        frame for frame the same rows, columns and index), from the arrays built once (issue 18)."""
        assert self._known is not None
        cut = now.as_unit("ns").value
        nat = np.iinfo(np.int64).min
        windows = {"prices": (self._starts.searchsorted(now - self.PRICE_LOOKBACK),
                              self._starts.searchsorted(now + self.AHEAD))}
        if "renewable_observations" in self._known and self._renewable_times is not None:
            windows["renewable_observations"] = (self._renewable_times.searchsorted(now - self.renewable_lookback),
                                                 self._renewable_times.searchsorted(now, "right"))
        if "hashprice" in self._known and self._hashprice_published is not None:
            published = self._hashprice_published
            windows["hashprice"] = (published.searchsorted(now - pd.Timedelta(days=8)),
                                    published.searchsorted(now, "right"))
        frames: dict[str, pd.DataFrame] = {}
        for name, (lo, hi) in windows.items():
            frame, published_ns = self._known[name]
            window = published_ns[lo:hi]
            keep = (window <= cut) & (window != nat)  # NaT is never known (pandas: NaT <= now is False)
            rows = frame.iloc[lo:hi] if keep.all() else frame.take(lo + np.flatnonzero(keep))
            frames[name] = rows.reset_index(drop=True)
        return _KnownSnapshot(**{**_empty_known_frames(), **frames}, through=now)


@dataclasses.dataclass(frozen=True)
class _KnownSnapshot(Snapshot):
    """A snapshot already filtered to what was published by ``through`` (times UTC): its
    :meth:`known_at` at or after ``through`` is itself as a plain :class:`Snapshot` (nothing to filter);
    at an earlier time the frames are filtered as any snapshot's."""

    through: pd.Timestamp | None = None

    def known_at(self, now: pd.Timestamp) -> Snapshot:
        """See :meth:`Snapshot.known_at`."""
        plain = Snapshot(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Snapshot)})
        if self.through is not None and now >= self.through:
            return plain
        return plain.known_at(now)


def _empty_known_frames() -> dict[str, pd.DataFrame]:
    """Every snapshot frame empty, as :meth:`Snapshot.known_at` returns it (times already UTC):
    built once, so the no-look-ahead filter has nothing to convert per call (issue 18)."""
    global _EMPTY_KNOWN
    if _EMPTY_KNOWN is None:
        empty = Snapshot().known_at(pd.Timestamp(0, tz="UTC"))
        _EMPTY_KNOWN = {name: getattr(empty, name) for name in SNAPSHOT_COLUMNS}
    return _EMPTY_KNOWN


_EMPTY_KNOWN: dict[str, pd.DataFrame] | None = None


# ------------------------------------------------------------------------------------ I/O edge
NoiseModel = Callable[[str, pd.Timestamp], float]
"""(receptor id, reading time) → modelled total level in dB(A) for what ran then (from the loop)."""


def snapshot_from_store(
    store: Store,
    now: datetime | pd.Timestamp,
    profile: SiteProfile | None = None,
    *,
    lookback: timedelta = timedelta(days=8),
    ahead: timedelta = timedelta(days=3),
    forecast_lookback: timedelta = timedelta(hours=24),
    carbon_kind: str = "average",
    noise_model: NoiseModel | None = None,
    fuelmix_intensity: pd.DataFrame | None = None,
    hashprice: pd.DataFrame | None = None,
    dr_limits: pd.DataFrame | None = None,
) -> Snapshot:
    """Read what the forecast needs from ``store`` as of ``now`` (rows published later are left out).

    ``forecast_lookback`` bounds which renewable messages' forecast points are read (older postings
    are stale anyway); ``carbon_kind`` picks the ``average`` or ``marginal`` intensity series.
    Published times: prices carry their own ``published_at``; observations are known when received
    (``received_at``); a renewable message's forecast points when the message was received.
    DR events and limits are not read from the store: the limits book
    (:mod:`hashflex.control.limits`) is their only source, and the loop applies it; ``dr_limits``
    (a ``Snapshot.dr_limits`` frame) may be passed by callers that plan without a loop.
    ``fuelmix_intensity`` / ``hashprice`` frames (e.g. from
    :mod:`hashflex.feeds.fuelmix` / :mod:`hashflex.feeds.hashprice`) are appended; a fuel-mix frame
    without ``published_at`` is taken as published at each interval's end.

    Parameters
    ----------
    store : hashflex.store.Store
        The daemon's store.
    now : datetime or pd.Timestamp
        The decision time, tz-aware.
    profile : SiteProfile, optional
        Restricts prices to the site's settlement point.
    lookback, ahead : timedelta
        Window of rows read before and after ``now``.
    forecast_lookback : timedelta
        Oldest renewable forecast posting read.
    carbon_kind : str
        ``average`` or ``marginal``.
    noise_model : NoiseModel, optional
        Modelled level per reading (without it, readings do not calibrate the noise margin).
    fuelmix_intensity, hashprice, dr_limits : pd.DataFrame, optional
        Extra frames (columns of :data:`SNAPSHOT_COLUMNS`).

    Returns
    -------
    Snapshot
    """
    now_ts = _utc(now)
    start, end = (now_ts - lookback).to_pydatetime(), (now_ts + ahead).to_pydatetime()
    point = profile.site.settlement_point if profile is not None else None
    prices = store.prices(start, end, settlement_point=point, as_of=now_ts.to_pydatetime(), with_published_at=True)

    def obs(kind: str, until: datetime | None) -> pd.DataFrame:
        frame = store.observations(kind, start, until)
        frame = frame.rename(columns={"received_at": "published_at"})
        return frame[frame["published_at"] <= now_ts]

    ren = obs("renewable", now_ts.to_pydatetime() + timedelta(microseconds=1))
    recent = ren[ren["published_at"] >= now_ts - forecast_lookback]
    points = [(row.source_id, pd.Timestamp(p["interval_start"]), float(p["power_kw"]), row.published_at)
              for row in recent.itertuples() if isinstance(row.forecast, list) for p in row.forecast]
    forecasts = pd.DataFrame(points, columns=list(SNAPSHOT_COLUMNS["renewable_forecasts"]))
    noise = obs("noise", now_ts.to_pydatetime() + timedelta(microseconds=1))
    noise["modelled_dba"] = [noise_model(r, pd.Timestamp(t)) if noise_model else math.nan
                             for r, t in zip(noise["receptor_id"], noise["timestamp"], strict=True)]
    carbon = obs("carbon", end)
    carbon = carbon[carbon["key"] == carbon_kind]
    hp = obs("hashprice", now_ts.to_pydatetime() + timedelta(microseconds=1))
    if hashprice is not None:
        hp = pd.concat([hp[list(SNAPSHOT_COLUMNS["hashprice"])], hashprice[list(SNAPSHOT_COLUMNS["hashprice"])]])
    mix = _empty("fuelmix_intensity")()
    if fuelmix_intensity is not None:
        mix = fuelmix_intensity.copy()
        if "published_at" not in mix.columns:
            mix["published_at"] = mix["interval_end"]
    return Snapshot(
        prices=prices,
        renewable_observations=ren[list(SNAPSHOT_COLUMNS["renewable_observations"])],
        renewable_forecasts=forecasts,
        noise=noise[list(SNAPSHOT_COLUMNS["noise"])],
        carbon=carbon[list(SNAPSHOT_COLUMNS["carbon"])],
        fuelmix_intensity=mix[list(SNAPSHOT_COLUMNS["fuelmix_intensity"])],
        hashprice=hp[list(SNAPSHOT_COLUMNS["hashprice"])],
        dr_limits=dr_limits if dr_limits is not None else _empty("dr_limits")(),
    )


def store_forecaster(
    profile: SiteProfile,
    store: Store,
    *,
    config: ForecastConfig | None = None,
    price_forecaster: PriceForecaster | None = None,
    **snapshot_kwargs: Any,
) -> Callable[[datetime, pd.Timestamp, int], Forecast]:
    """A ``(now, horizon_start, periods) -> Forecast`` callable over a store (the control loop's
    forecaster shape): :func:`snapshot_from_store` then :func:`build_forecast` on every call.

    Parameters
    ----------
    profile : SiteProfile
        The site.
    store : hashflex.store.Store
        The daemon's store.
    config : ForecastConfig, optional
        Forecast settings.
    price_forecaster : PriceForecaster, optional
        The external price hook.
    **snapshot_kwargs
        Passed to :func:`snapshot_from_store`.

    Returns
    -------
    callable
        ``forecaster(now, horizon_start, periods) -> Forecast``.
    """

    def forecaster(now: datetime, horizon_start: pd.Timestamp, periods: int) -> Forecast:
        snapshot = snapshot_from_store(store, now, profile, **snapshot_kwargs)
        return build_forecast(profile, snapshot, now, horizon_start, periods, config=config,
                              price_forecaster=price_forecaster)

    return forecaster
