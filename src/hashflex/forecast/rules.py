"""The forecast rules (module docstring of :mod:`hashflex.forecast`): price, renewables, carbon,
hashprice, import limits and noise margins at ``now``, and :func:`build_forecast`, the one entry.

Seam: pure functions of a :class:`~hashflex.forecast.model.Snapshot` and a time; where the
snapshot comes from (recorded history, the store) is :mod:`.sources`. Split from ``forecast.py``
(issue 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from hashflex.forecast.model import (
    Fallback,
    FallbackCode,
    Forecast,
    ForecastConfig,
    PriceForecaster,
    Snapshot,
    detect_scarcity,
    has_fallback,
)
from hashflex.profile import SiteProfile

__all__ = ["build_forecast"]


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    if ts.tzinfo is None:
        raise ValueError(f"naive time {moment!r}: a timezone is required")
    return ts.tz_convert("UTC")


def _age_s(now: pd.Timestamp, published: pd.Series | pd.api.extensions.ExtensionArray) -> float | None:
    return None if len(published) == 0 else float((now - published.max()).total_seconds())


def _us(values: pd.Series | pd.DatetimeIndex | Any) -> np.ndarray:
    """Tz-aware times (a Series, an index or a DatetimeArray) as int64 UTC microseconds (NaT → int64 min)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # the usual case, without a conversion (issue 18)
        return (values.array if isinstance(values, pd.Series) else values).as_unit("us").asi8
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("us").asi8


def _ns(values: pd.Series | Any) -> np.ndarray:
    """Tz-aware times (a Series or a DatetimeArray) as int64 UTC nanoseconds (NaT → int64 min)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return (values.array if isinstance(values, pd.Series) else values).as_unit("ns").asi8
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


def _covering(times: pd.DatetimeIndex, starts: Any, ends: Any, values: Any, order: Any = None) -> np.ndarray:
    """Per time: the value of the row with start ≤ t < end (the highest ``order`` wins, the last
    such row on a tie); NaN if none."""
    out = np.full(len(times), np.nan)
    if len(starts) == 0:
        return out
    t, s, e = _us(times), _us(starts), _us(ends)
    key = _us(order).astype(float) if order is not None else np.zeros(len(s))
    # One (times × rows) comparison instead of a pass per row (issue 18); the same winner as the
    # row-by-row rule "a covering row at least as high as the one so far replaces it".
    cover = (t[:, None] >= s[None, :]) & (t[:, None] < e[None, :])
    ranked = np.where(cover, key[None, :], -np.inf)
    best = cover & (ranked == ranked.max(axis=1)[:, None])
    last = best.shape[1] - 1 - np.argmax(best[:, ::-1], axis=1)
    hit = cover.any(axis=1)
    out[hit] = np.asarray(values, dtype=float)[last[hit]]
    return out


def _last_row(frame: pd.DataFrame, first: str, second: str) -> pd.Series:
    """``frame.sort_values([first, second]).iloc[-1]`` (stable: the last of equal keys) without the sort."""
    a, b = _us(frame[first]), _us(frame[second])
    if (a == np.iinfo(np.int64).min).any() or (b == np.iinfo(np.int64).min).any():  # NaT sorts last in pandas
        return frame.sort_values([first, second]).iloc[-1]
    return frame.iloc[int(np.lexsort((b, a))[-1])]


def _same_wall_time_yesterday(times: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    naive = times.tz_convert(tz).tz_localize(None) - pd.Timedelta(days=1)
    return naive.tz_localize(tz, ambiguous=np.ones(len(naive), dtype=bool),
                             nonexistent="shift_forward").tz_convert("UTC")


# ------------------------------------------------------------------------------------------ price
@dataclass(frozen=True)
class _PriceRows:
    """One market's rows of the snapshot's prices at the site as arrays, in the frame's order: what
    ``prices[here & (market == X)]`` held, without building that frame per forecast (issue 18)."""

    interval_start: Any  # DatetimeArray, UTC
    interval_end: Any
    published_at: Any
    price_usd_mwh: np.ndarray  # float64

    @classmethod
    def of(cls, prices: pd.DataFrame, rows: np.ndarray) -> _PriceRows:
        """The rows ``rows`` (a boolean mask) of the (UTC) price frame."""
        take = np.flatnonzero(rows)
        return cls(prices["interval_start"].array[take], prices["interval_end"].array[take],
                   prices["published_at"].array[take], prices["price_usd_mwh"].to_numpy(dtype=float)[take])

    def __len__(self) -> int:
        return len(self.price_usd_mwh)

    def frame(self, rows: np.ndarray | None = None) -> pd.DataFrame:
        """The rows as a frame (all, or the positions ``rows``): the rare NaT paths sort frames as before."""
        take = np.arange(len(self)) if rows is None else rows
        return pd.DataFrame({"interval_start": self.interval_start[take], "interval_end": self.interval_end[take],
                             "price_usd_mwh": self.price_usd_mwh[take], "published_at": self.published_at[take]})


def _forecast_prices(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, times: pd.DatetimeIndex,
                     cfg: ForecastConfig, hook: PriceForecaster | None, ages: dict[str, float | None],
                     fallbacks: list[str]) -> tuple[np.ndarray, list[str]]:
    prices = snap.prices  # one mask per market and arrays, no frame filters (issue 18)
    here = prices["settlement_point"].to_numpy() == profile.site.settlement_point
    market = prices["market"].to_numpy()
    da, rt = _PriceRows.of(prices, here & (market == "DA")), _PriceRows.of(prices, here & (market == "RT"))
    ages["price_da"], ages["price_rt"] = _age_s(now, da.published_at), _age_s(now, rt.published_at)
    price = _covering(times, da.interval_start, da.interval_end, da.price_usd_mwh, da.published_at)
    source = ["DA" if np.isfinite(p) else "" for p in price]
    if hook is not None and getattr(hook, "replaces_day_ahead", False):
        # A learned model that reads the DA price itself: it overrides where it has an opinion.
        price[:] = np.nan
    if hook is not None and np.isnan(price).any():
        external = hook(times, snap, now)
        fallbacks.extend(getattr(hook, "last_fallbacks", ()) or ())
        if external is not None:
            external = np.asarray(external, dtype=float)
            use = np.isnan(price) & np.isfinite(external)
            price[use] = external[use]
            for k in np.flatnonzero(use):
                source[k] = getattr(hook, "source_label", "external")
        if getattr(hook, "replaces_day_ahead", False):  # where it had no opinion: the DA rule again
            again = _covering(times, da.interval_start, da.interval_end, da.price_usd_mwh, da.published_at)
            fill = np.isnan(price) & np.isfinite(again)
            price[fill] = again[fill]
            for k in np.flatnonzero(fill):
                source[k] = "DA"
    if np.isnan(price).any():
        yesterday = _same_wall_time_yesterday(times, profile.tz)
        past = _covering(yesterday, rt.interval_start, rt.interval_end, rt.price_usd_mwh, rt.published_at)
        use = np.isnan(price) & np.isfinite(past)
        price[use] = past[use]
        for k in np.flatnonzero(use):
            source[k] = "RT same time yesterday"
        if use.any():
            fallbacks.append(Fallback(FallbackCode.PRICE_SAME_TIME_YESTERDAY,
                                      f"price: {int(use.sum())} interval(s) without a day-ahead price use the "
                                      "real-time price of the same wall-clock time yesterday"))
    unknown = np.isnan(price)
    if unknown.any():
        price[unknown] = cfg.unknown_price_usd_mwh
        for k in np.flatnonzero(unknown):
            source[k] = "unknown: price cap"
        fallbacks.append(Fallback(FallbackCode.PRICE_UNKNOWN,
                                  f"price: {int(unknown.sum())} interval(s) with no known price are priced at "
                                  f"{cfg.unknown_price_usd_mwh:g} $/MWh (plan curtailed)"))
    _blend_rt(rt, now, times, cfg, price, source, fallbacks)
    if not has_fallback(fallbacks, FallbackCode.PRICE_SCARCITY):  # a learned hook may have judged it already
        _scarcity_floor(rt, da, now, times, cfg, price, source, fallbacks)
    return price, source


def _scarcity_floor(rt: _PriceRows, da: _PriceRows, now: pd.Timestamp, times: pd.DatetimeIndex,
                    cfg: ForecastConfig, price: np.ndarray, source: list[str], fallbacks: list[str]) -> None:
    """In a scarcity regime (`forecast.model.detect_scarcity` on the RT prices published in the last
    ``scarcity_window_h``), plan the next ``scarcity_hold_h`` at no less than the recent RT mean: in Winter
    Storm Uri DA prices under-predicted RT for days, and a plan at DA ran into $9,000/MWh."""
    # In integer nanoseconds, without frames (issue 18): the rows published by now whose interval ends
    # within the window; per interval start the newest publication (the last of equal ones).
    nat = np.iinfo(np.int64).min
    published_ns, end_ns, start_ns = (_ns(c) for c in (rt.published_at, rt.interval_end, rt.interval_start))
    cutoff = now - pd.Timedelta(hours=cfg.scarcity_window_h)
    within = ((published_ns != nat) & (published_ns <= now.as_unit("ns").value) & (end_ns != nat)
              & (end_ns > cutoff.as_unit("ns").value))
    if not within.any():
        return
    rows = np.flatnonzero(within)
    if (start_ns[rows] == nat).any():  # NaT sorts last in pandas: the frame path
        published = rt.frame(rows).sort_values(["interval_start", "published_at"]).drop_duplicates(
            "interval_start", keep="last")
        starts, values = pd.DatetimeIndex(published["interval_start"]), published["price_usd_mwh"].to_numpy(dtype=float)
    else:
        rows = rows[np.lexsort((published_ns[rows], start_ns[rows]))]
        rows = rows[np.append(start_ns[rows][1:] != start_ns[rows][:-1], True)]
        starts = pd.DatetimeIndex(rt.interval_start[rows])
        values = rt.price_usd_mwh[rows]
    da_same = _covering(starts, da.interval_start, da.interval_end, da.price_usd_mwh, da.published_at)
    state = detect_scarcity(values, da_same,
                            rt_threshold_usd_mwh=cfg.scarcity_rt_usd_mwh,
                            spread_threshold_usd_mwh=cfg.scarcity_spread_usd_mwh)
    if not state.active:
        return
    floor = state.floor_usd_mwh(cfg.scarcity_floor_follows_last)
    near = ((times - now).total_seconds().to_numpy() / 3600.0) < cfg.scarcity_hold_h
    raise_to = near & (price < floor)
    price[raise_to] = floor
    for k in np.flatnonzero(raise_to):
        source[k] = f"{source[k]} + scarcity floor"
    # The old rule keeps its old wording to the letter (tests/test_backtest_speed.py compares with that code).
    what = ("the lower of the recent real-time mean and the last real-time price," if cfg.scarcity_floor_follows_last
            else "the recent real-time mean")
    fallbacks.append(Fallback(FallbackCode.PRICE_SCARCITY,
                              f"price: scarcity regime ({state.reason}); the next {cfg.scarcity_hold_h:g} h planned at "
                              f"no less than {what} {floor:,.0f} $/MWh"))


def _blend_rt(rt: _PriceRows, now: pd.Timestamp, times: pd.DatetimeIndex, cfg: ForecastConfig,
              price: np.ndarray, source: list[str], fallbacks: list[str]) -> None:
    if len(rt) == 0:
        return
    end_us, published_us = _us(rt.interval_end), _us(rt.published_at)
    if (end_us == np.iinfo(np.int64).min).any() or (published_us == np.iinfo(np.int64).min).any():
        last = _last_row(rt.frame(), "interval_end", "published_at")  # NaT sorts last in pandas: the frame path
    else:  # the row _last_row picks (the last of equal keys), read from the arrays
        k = int(np.lexsort((published_us, end_us))[-1])
        last = {"interval_end": rt.interval_end[k], "published_at": rt.published_at[k],
                "price_usd_mwh": rt.price_usd_mwh[k]}
    if (now - last["published_at"]).total_seconds() > cfg.max_age_rt_s:
        fallbacks.append(Fallback(FallbackCode.PRICE_RT_STALE,
                                  f"price: latest real-time price is older than {cfg.max_age_rt_s:g} s; not blended"))
        return
    lag_h = (times - last["interval_end"]).total_seconds().to_numpy() / 3600.0
    weight = np.clip(1.0 - lag_h / cfg.rt_blend_h, 0.0, 1.0) if cfg.rt_blend_h > 0 else np.zeros(len(times))
    weight[lag_h < 0] = 0.0  # intervals already settled are not forecast by their own RT price
    if not cfg.rt_blend_learned:  # a learned model reads the last RT price itself (its rt_last feature)
        weight[[s.startswith("learned") for s in source]] = 0.0
    for k in np.flatnonzero(weight > 0):
        price[k] = weight[k] * float(last["price_usd_mwh"]) + (1.0 - weight[k]) * price[k]
        source[k] = f"{source[k]} + RT blend"


# ------------------------------------------------------------------------------------- renewables
def _posting_ends(forecasts: pd.DataFrame) -> pd.Series:
    """End of each forecast point: the next point of its posting, the last one + typical spacing."""
    parts = []
    for _, posting in forecasts.groupby(["source_id", "published_at"]):
        starts = posting["interval_start"].sort_values()
        step = starts.diff().median() if len(starts) > 1 else pd.Timedelta(hours=1)
        parts.append(starts.shift(-1).fillna(starts.iloc[-1] + step))
    return pd.concat(parts).reindex(forecasts.index)


def _forecast_renewables(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, times: pd.DatetimeIndex,
                         cfg: ForecastConfig, ages: dict[str, float | None],
                         fallbacks: list[str]) -> tuple[np.ndarray, dict[str, tuple[str, ...]]]:
    total = np.zeros(len(times))
    sources: dict[str, tuple[str, ...]] = {}
    local_times = times.tz_convert(profile.tz)
    local_hour, local_minute = local_times.hour.to_numpy(), local_times.minute.to_numpy()
    no_forecasts = snap.renewable_forecasts.empty  # e.g. a backtest: no filtering of an empty frame (issue 18)
    observed = snap.renewable_observations
    # The observations as arrays, once for every source (issue 18): a mask per source instead of frame filters.
    nat = np.iinfo(np.int64).min
    obs_ns = _ns(observed["timestamp"])
    obs_known = (obs_ns != nat) & (obs_ns <= now.as_unit("ns").value)  # NaT is never "<= now"
    obs_source = observed["source_id"].to_numpy()
    history_from = (now - pd.Timedelta(days=cfg.renewable_history_days)).as_unit("ns").value
    for src in profile.renewables:
        mine = obs_known & (obs_source == src.id)
        if no_forecasts:
            ages[f"renewable:{src.id}:forecast"] = None
        else:
            fc = snap.renewable_forecasts[snap.renewable_forecasts["source_id"] == src.id]
            ages[f"renewable:{src.id}:forecast"] = _age_s(now, fc["published_at"])
        ages[f"renewable:{src.id}:observation"] = _age_s(now, observed["published_at"].array[mine])
        kw = np.full(len(times), np.nan)
        label = [""] * len(times)
        if not no_forecasts:
            fc = fc[(now - fc["published_at"]).dt.total_seconds() <= cfg.max_age_renewable_forecast_s]
        if not no_forecasts and not fc.empty:
            kw = _covering(times, fc["interval_start"], _posting_ends(fc), fc["power_kw"], fc["published_at"])
            label = ["forecast" if np.isfinite(v) else "" for v in kw]
        if src.kind == "wind":  # persistence reads the latest fresh row (solar never does)
            rows = np.flatnonzero(mine)
            fresh = rows[(now - observed["published_at"].array[rows]).total_seconds() <= cfg.max_age_renewable_obs_s]
            if len(fresh):
                stamps = obs_ns[fresh]  # known rows: no NaT
                if (stamps == stamps.max()).sum() == 1:  # a single latest row: the one any sort puts last
                    latest = float(observed["power_kw"].iloc[int(fresh[np.argmax(stamps)])])
                else:  # ties: the frame path's own (unstable) sort decides, as before
                    latest = float(observed.iloc[fresh].sort_values("timestamp")["power_kw"].iloc[-1])
                near = np.isnan(kw) & ((times - now).total_seconds().to_numpy() < cfg.persistence_h * 3600.0)
                kw[near] = latest
                for k in np.flatnonzero(near):
                    label[k] = "persistence"
        history = mine & (obs_ns >= history_from)
        if np.isnan(kw).any():
            # The same grouped mean as on the frame (pandas' own, compensated sum), on two arrays.
            seen = pd.DatetimeIndex(obs_ns[history], tz="UTC").tz_convert(profile.tz)
            power = pd.Series(observed["power_kw"].to_numpy()[history])
            diurnal = power.groupby(seen.hour).mean().reindex(local_hour).to_numpy(dtype=float)
            if not cfg.renewable_profile_hourly:
                # Per slot of the plan's interval, the hourly mean where a slot was never measured. One
                # hour's mean holds flat through a solar ramp: 760 kW high at 18:45 CDT on 7-9 May 2024
                # (SYNTHETIC clear sky), which the plan bought at 1,912 $/MWh (gap_decompose.py, issue 14).
                slot = profile.site.interval_minutes
                fine = power.groupby((seen.hour * 60 + seen.minute) // slot).mean()
                at = fine.reindex((local_hour * 60 + local_minute) // slot).to_numpy(dtype=float)
                diurnal = np.where(np.isfinite(at), at, diurnal)
            gap = np.isnan(kw)
            kw[gap] = np.nan_to_num(diurnal[gap], nan=0.0)
            marks = np.array(label, dtype=object)
            marks[gap] = np.where(np.isfinite(diurnal[gap]), "diurnal profile", "no data: 0 kW")
            label = [str(m) for m in marks]
            what = "diurnal profile of recent measurements" if history.any() else "0 kW (no data)"
            fallbacks.append(Fallback(FallbackCode.RENEWABLE_NO_FORECAST,
                                      f"renewable {src.id}: {int(gap.sum())} interval(s) without a fresh forecast "
                                      f"use {what}"))
        total += np.clip(kw, 0.0, src.capacity_kw)
        sources[src.id] = tuple(label)
    return total, sources


# ----------------------------------------------------------------------------------------- carbon
def _forecast_intensity(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, times: pd.DatetimeIndex,
                        cfg: ForecastConfig, ages: dict[str, float | None],
                        fallbacks: list[str]) -> tuple[np.ndarray, list[str]]:
    feed, mix = snap.carbon, snap.fuelmix_intensity
    ages["carbon_feed"], ages["carbon_fuelmix"] = _age_s(now, feed["published_at"]), _age_s(now, mix["published_at"])
    if not feed.empty:  # an empty feed (e.g. a backtest's) covers nothing: no filter to build (issue 18)
        feed = feed[(now - feed["published_at"]).dt.total_seconds() <= cfg.max_age_carbon_s]
    if feed.empty:
        value, source = np.full(len(times), np.nan), [""] * len(times)
    else:
        value = _covering(times, feed["timestamp"], feed["timestamp"] + pd.Timedelta(hours=cfg.carbon_hold_h),
                          feed["intensity_kg_per_mwh"], feed["published_at"])
        source = ["feed" if np.isfinite(v) else "" for v in value]
    steps = []
    if not mix.empty and np.isnan(value).any():  # without fuel-mix rows (or gaps) both tables are empty: skipped
        local = times.tz_convert(profile.tz)
        mix_local = mix["interval_start"].dt.tz_convert(profile.tz)
        recent = mix[mix["interval_start"] >= now - pd.Timedelta(days=cfg.carbon_profile_days)]
        steps = [
            ("fuel-mix profile (recent days)",
             recent.groupby(mix_local[recent.index].dt.hour)["intensity_kg_per_mwh"].mean(), local.hour),
            ("fuel-mix climatology (same month)",
             mix.groupby([mix_local.dt.month, mix_local.dt.hour])["intensity_kg_per_mwh"].mean(),
             pd.MultiIndex.from_arrays([local.month, local.hour])),
        ]
    for name, table, keys in steps:
        gap = np.isnan(value)
        if not gap.any() or table.empty:
            continue
        filled = table.reindex(keys).to_numpy(dtype=float)
        use = gap & np.isfinite(filled)
        value[use] = filled[use]
        for k in np.flatnonzero(use):
            source[k] = name
        if use.any():
            fallbacks.append(Fallback(FallbackCode.CARBON_NO_FEED,
                                      f"carbon: {int(use.sum())} interval(s) without a fresh feed value use the {name}"))
    gap = np.isnan(value)
    if gap.any():
        value[gap] = profile.carbon.default_intensity_kg_per_mwh
        for k in np.flatnonzero(gap):
            source[k] = "profile default"
        fallbacks.append(Fallback(FallbackCode.CARBON_PROFILE_DEFAULT,
                                  f"carbon: {int(gap.sum())} interval(s) use the profile's static "
                                  f"{profile.carbon.default_intensity_kg_per_mwh:g} kg/MWh"))
    return value, source


# ------------------------------------------------------------------------- hashprice, DR, noise
def _forecast_hashprice(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, cfg: ForecastConfig,
                        ages: dict[str, float | None], fallbacks: list[str]) -> tuple[float, str]:
    # On the columns' arrays, not frame filters (issue 18): the same rows, ages and pick.
    frame = snap.hashprice
    nat = np.iinfo(np.int64).min
    stamp_ns = _ns(frame["timestamp"])
    known = np.flatnonzero((stamp_ns != nat) & (stamp_ns <= now.as_unit("ns").value))  # NaT is never "<= now"
    published = frame["published_at"].array[known]
    ages["hashprice"] = _age_s(now, published)
    fresh = known[(now - published).total_seconds() <= cfg.max_age_hashprice_s] if len(known) else known
    if len(fresh):
        stamp_us, published_us = _us(frame["timestamp"].array[fresh]), _us(frame["published_at"].array[fresh])
        if (published_us == nat).any():  # NaT sorts last in pandas: the frame path
            row = _last_row(frame.iloc[fresh], "timestamp", "published_at")
            value, stamp = row["hashprice_usd_per_ph_day"], row["timestamp"]
        else:  # the row _last_row picks (the last of equal keys)
            k = int(fresh[np.lexsort((published_us, stamp_us))[-1]])
            value, stamp = frame["hashprice_usd_per_ph_day"].iloc[k], frame["timestamp"].iloc[k]
        return float(value), f"feed ({stamp:%Y-%m-%d})"
    value = profile.economics.hashprice_usd_per_ph_day
    fallbacks.append(Fallback(FallbackCode.HASHPRICE_PROFILE,
                              f"hashprice: no value younger than {cfg.max_age_hashprice_s:g} s; profile {value:g} $/PH/day"))
    return value, "profile"


def _import_limits(snap: Snapshot, now: pd.Timestamp, times: pd.DatetimeIndex, step: pd.Timedelta,
                   ages: dict[str, float | None]) -> tuple[np.ndarray, list[str]]:
    rows = snap.dr_limits
    ages["dr"] = _age_s(now, rows["published_at"])
    limit = np.full(len(times), np.inf)
    label = [""] * len(times)
    far = times[-1] + step if len(times) else now
    for _, row in rows.iterrows():
        end = row["interval_end"] if pd.notna(row["interval_end"]) else far
        hit = (times < end) & (times + step > row["interval_start"])
        for k in np.flatnonzero(hit & (float(row["import_limit_kw"]) < limit)):
            limit[k], label[k] = float(row["import_limit_kw"]), str(row["source"])
    return limit, label


def _noise_margins(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, cfg: ForecastConfig,
                   ages: dict[str, float | None],
                   fallbacks: list[str]) -> tuple[dict[str, float], dict[str, float | None]]:
    margins: dict[str, float] = {}
    offsets: dict[str, float | None] = {}
    no_readings = snap.noise.empty  # e.g. a backtest's forecast: no filtering of an empty frame (issue 18)
    for receptor in profile.receptors:
        if no_readings:
            ages[f"noise:{receptor.id}"] = None
            fresh = False
        else:
            readings = snap.noise[(snap.noise["receptor_id"] == receptor.id) & (snap.noise["timestamp"] <= now)]
            ages[f"noise:{receptor.id}"] = _age_s(now, readings["published_at"])
            window = readings[(now - readings["timestamp"]).dt.total_seconds() <= cfg.noise_window_s]
            window = window.dropna(subset=["laeq_dba", "modelled_dba"]).sort_values("timestamp")
            fresh = not window.empty and (now - window["published_at"].max()).total_seconds() <= cfg.max_age_noise_s
        if not fresh:
            offsets[receptor.id] = None
            margins[receptor.id] = receptor.model_margin_db
            if receptor.sensor_topic is not None:
                fallbacks.append(Fallback(FallbackCode.NOISE_UNCALIBRATED,
                                          f"noise {receptor.id}: no calibrated reading younger than "
                                          f"{cfg.max_age_noise_s:g} s; model with the profile margin "
                                          f"{receptor.model_margin_db:g} dB"))
            continue
        error = (window["laeq_dba"].astype(float) - window["modelled_dba"].astype(float))
        offset = float(error.ewm(alpha=cfg.noise_ewma_alpha, adjust=False).mean().iloc[-1])
        offsets[receptor.id] = offset
        margins[receptor.id] = max(receptor.model_margin_db, offset)
    return margins, offsets


# ------------------------------------------------------------------------------------------ entry
def build_forecast(
    profile: SiteProfile,
    snapshot: Snapshot,
    now: datetime | pd.Timestamp,
    horizon_start: datetime | pd.Timestamp,
    T: int | None = None,  # noqa: N803 - the optimizer's symbol
    *,
    config: ForecastConfig | None = None,
    price_forecaster: PriceForecaster | None = None,
) -> Forecast:
    """The horizon arrays at ``now`` for T intervals of the profile's length from ``horizon_start``.

    Pure: reads only ``snapshot`` rows published at or before ``now``. ``T`` defaults to the
    profile's horizon. See the module docstring for every rule and fallback.

    Parameters
    ----------
    profile : SiteProfile
        The site (settlement point, renewables, receptors, interval length, time zone).
    snapshot : Snapshot
        What was recorded; rows published after ``now`` are ignored.
    now : datetime or pd.Timestamp
        The decision time, tz-aware.
    horizon_start : datetime or pd.Timestamp
        Start of the first interval, tz-aware.
    T : int, optional
        Number of intervals; default the profile's ``horizon_hours``.
    config : ForecastConfig, optional
        Staleness limits and blend parameters.
    price_forecaster : PriceForecaster, optional
        The external price hook (e.g. :class:`hashflex.price_model.LearnedPriceForecaster`).

    Returns
    -------
    Forecast
        Arrays of shape (T,) for price ($/MWh), renewables (kW), intensity (kg CO2/MWh), hashprice
        ($/PH/day) and import limit (kW, inf where none); noise margins (dB) per receptor; every
        fallback used.

    Raises
    ------
    ValueError
        A naive ``now`` or ``horizon_start``, or a malformed snapshot frame.
    """
    cfg = config or ForecastConfig()
    now_ts, start = _utc(now), _utc(horizon_start)
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    if T is None:
        T = int(round(profile.site.horizon_hours * 60 / profile.site.interval_minutes))  # noqa: N806
    times = pd.date_range(start, periods=T, freq=step, tz="UTC", unit="us")
    snap = snapshot.known_at(now_ts)
    ages: dict[str, float | None] = {}
    fallbacks: list[Fallback] = []
    price, price_source = _forecast_prices(profile, snap, now_ts, times, cfg, price_forecaster, ages, fallbacks)
    renewable, renewable_source = _forecast_renewables(profile, snap, now_ts, times, cfg, ages, fallbacks)
    intensity, intensity_source = _forecast_intensity(profile, snap, now_ts, times, cfg, ages, fallbacks)
    hashprice, hashprice_source = _forecast_hashprice(profile, snap, now_ts, cfg, ages, fallbacks)
    limit, limit_source = _import_limits(snap, now_ts, times, step, ages)
    margins, offsets = _noise_margins(profile, snap, now_ts, cfg, ages, fallbacks)
    return Forecast(
        now=now_ts, interval_start=times, price_usd_mwh=price, price_source=tuple(price_source),
        renewable_kw=renewable, renewable_source=renewable_source, intensity_kg_per_mwh=intensity,
        intensity_source=tuple(intensity_source), hashprice_usd_per_ph_day=np.full(T, hashprice),
        hashprice_source=hashprice_source, import_limit_kw=limit, import_limit_source=tuple(limit_source),
        noise_margin_db=margins, noise_offset_db=offsets, input_ages_s=ages, fallbacks=fallbacks,
    )
