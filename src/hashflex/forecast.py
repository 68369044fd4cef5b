"""Horizon arrays at time ``now``: price, on-site renewables, grid carbon intensity, hashprice, import
limits (DR) and noise margins, from what was *published* by ``now``, and nothing else.

Why pure: ``hashflex run`` and ``hashflex backtest`` must plan identically; the backtest replays a
store with a simulated clock, so the forecast takes a plain :class:`Snapshot` of frames and a time,
never the store or the wall clock. :func:`snapshot_from_store` is the I/O edge that reads a store.

No look-ahead: every snapshot frame carries ``published_at`` (UTC); rows published after ``now``
are dropped first, so they cannot influence the result even when they are in the snapshot.

Rules (each interval t of the horizon; Δ = profile interval; every fallback is listed in
``Forecast.fallbacks`` and every input's age in seconds in ``Forecast.input_ages_s``):

Price ($/MWh, the site's settlement point)
  1. Day-ahead (DA) hourly price covering t, if published (NP4-190 posts ~13:00 CT the day before).
  2. Else the external forecaster hook (``price_forecaster``), where it returns a finite value. A hook
     with ``replaces_day_ahead`` (the learned model of :mod:`hashflex.price_model`, which reads the
     DA price as an input) comes *before* rule 1; its ``last_fallbacks`` (e.g. the scarcity regime,
     ``PRICE_SCARCITY``) are listed with the forecast's.
  3. Else real-time (RT) price of the same local wall-clock time yesterday (the day's load shape
     repeats; on DST days the wall clock, not UTC, is matched).
  4. Else **unknown → ``unknown_price_usd_mwh``** (default 5,000 $/MWh, ERCOT's offer cap): a careful
     operator runs only on known prices, so an unpriced interval is planned curtailed.
  Near now the latest RT price (if younger than ``max_age_rt_s``) is blended in:
  p = w·RT_last + (1−w)·p_base with w = max(0, 1 − (t − end of RT interval) / ``rt_blend_h``), so
  the interval right after the last settled one is pure RT and the weight decays linearly to 0
  after one hour (RT prices are strongly autocorrelated over minutes, much less over hours).
Renewables (kW, per profile source, then summed)
  1. The source's latest forecast posting (younger than ``max_age_renewable_forecast_s``) covering t.
  2. Else, in the first ``persistence_h`` hours, the latest measurement if younger than
     ``max_age_renewable_obs_s`` (wind only: solar's daily cycle beats persistence).
  3. Else the mean measured output at the same local hour over the last ``renewable_history_days``
     days (a diurnal profile; solar is therefore zero at night, and an hour never measured is 0).
  4. Else 0 kW (assume nothing on site: the import limit then binds on the full load).
Carbon intensity (kg CO2/MWh)
  1. A feed value valid at t (a value holds ``carbon_hold_h`` from its timestamp) published less than
     ``max_age_carbon_s`` ago. 2. Else the fuel-mix-derived mean at the same local hour over the last
  ``carbon_profile_days`` days. 3. Else the same-month, same-hour mean of all fuel-mix data
  published by now (climatology). 4. Else the profile's static ``default_intensity_kg_per_mwh``.
Hashprice ($/PH/day)
  The newest feed value younger than ``max_age_hashprice_s`` for the whole horizon, else the
  profile's ``hashprice_usd_per_ph_day`` (operator-set; listed as a fallback). A daily series
  (:func:`hashflex.feeds.hashprice.bundled_hashprice`) is published at the end of its UTC day.
Import limit (kW)
  Minimum over DR/limit rows in force at any moment of the interval (open end = until cancelled);
  inf where none (``problem_from_profile`` adds the interconnection and 4CP limits).
Noise margin (dB, per receptor)
  offset = EWMA (``noise_ewma_alpha`` per reading) of measured − modelled over readings in the last
  ``noise_window_s``; margin = max(profile ``model_margin_db``, offset) (calibration only tightens).
  No reading younger than ``max_age_noise_s`` → the profile margin alone (listed if the receptor has a
  sensor). The modelled level is supplied with each reading (same basis as the meter: total level);
  readings without one (no ``noise_model`` given to :func:`snapshot_from_store`) do not calibrate.
"""

from __future__ import annotations

import enum

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hashflex.optimize.problem import CarbonBudget, GroupState, Problem, problem_from_profile
from hashflex.profile import SiteProfile

if TYPE_CHECKING:
    from hashflex.store import Store

__all__ = ["Fallback", "FallbackCode", "Forecast", "ForecastConfig", "PriceForecaster", "RecordedForecaster",
           "SNAPSHOT_COLUMNS", "Snapshot", "build_forecast", "has_fallback", "snapshot_from_store", "store_forecaster"]

SNAPSHOT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prices": ("interval_start", "interval_end", "settlement_point", "market", "price_usd_mwh", "published_at"),
    "renewable_observations": ("source_id", "timestamp", "power_kw", "published_at"),
    "renewable_forecasts": ("source_id", "interval_start", "power_kw", "published_at"),
    "noise": ("receptor_id", "timestamp", "laeq_dba", "modelled_dba", "published_at"),
    "carbon": ("timestamp", "intensity_kg_per_mwh", "published_at"),
    "fuelmix_intensity": ("interval_start", "intensity_kg_per_mwh", "published_at"),
    "hashprice": ("timestamp", "hashprice_usd_per_ph_day", "published_at"),
    "dr_limits": ("interval_start", "interval_end", "import_limit_kw", "source", "published_at"),
}
"""Columns each :class:`Snapshot` frame must have (extra columns are ignored). Times are tz-aware."""


def _empty(name: str) -> Callable[[], pd.DataFrame]:
    return lambda: pd.DataFrame({c: pd.Series(dtype=object) for c in SNAPSHOT_COLUMNS[name]})


@dataclass(frozen=True)
class Snapshot:
    """What the site knew, as plain frames (columns in :data:`SNAPSHOT_COLUMNS`), no store handle.

    Renewable forecast points hold until the next point of the same posting (same source and
    ``published_at``); the last one for the posting's typical spacing. ``dr_limits.interval_end``
    may be NaT (open-ended).
    """

    prices: pd.DataFrame = field(default_factory=_empty("prices"))
    renewable_observations: pd.DataFrame = field(default_factory=_empty("renewable_observations"))
    renewable_forecasts: pd.DataFrame = field(default_factory=_empty("renewable_forecasts"))
    noise: pd.DataFrame = field(default_factory=_empty("noise"))
    carbon: pd.DataFrame = field(default_factory=_empty("carbon"))
    fuelmix_intensity: pd.DataFrame = field(default_factory=_empty("fuelmix_intensity"))
    hashprice: pd.DataFrame = field(default_factory=_empty("hashprice"))
    dr_limits: pd.DataFrame = field(default_factory=_empty("dr_limits"))

    def known_at(self, now: pd.Timestamp) -> Snapshot:
        """Only rows published at or before ``now`` (the no-look-ahead filter), times as UTC."""
        out = {}
        for f in dataclasses.fields(self):
            frame = getattr(self, f.name)
            missing = [c for c in SNAPSHOT_COLUMNS[f.name] if c not in frame.columns]
            if missing:
                raise ValueError(f"snapshot.{f.name}: missing column(s) {missing}")
            frame = frame.copy()
            for col in frame.columns:
                if col in ("interval_start", "interval_end", "timestamp", "published_at"):
                    if pd.api.types.is_datetime64_dtype(frame[col]) and frame[col].dt.tz is None:
                        raise ValueError(f"snapshot.{f.name}.{col}: naive times; a timezone is required")
                    frame[col] = pd.to_datetime(frame[col], utc=True)
            out[f.name] = frame[frame["published_at"] <= now].reset_index(drop=True)
        return Snapshot(**out)


PriceForecaster = Callable[[pd.DatetimeIndex, Snapshot, pd.Timestamp], np.ndarray | None]
"""Hook: (interval starts, snapshot already filtered to ``now``, now) → $/MWh per interval, NaN where
it has no opinion. Used after day-ahead prices and before the yesterday fallback — unless the hook
has a true ``replaces_day_ahead`` attribute (a learned model that takes the day-ahead price as one of
its inputs, :class:`hashflex.price_model.LearnedPriceForecaster`): its finite values then come first.
A hook's ``last_fallbacks`` attribute (a sequence of :class:`Fallback`, read after each call) is
added to the forecast's fallbacks (e.g. ``PRICE_SCARCITY``)."""


@dataclass(frozen=True)
class ForecastConfig:
    """Staleness limits and blend parameters (seconds / hours in the names)."""

    max_age_rt_s: float = 3600.0
    rt_blend_h: float = 1.0
    unknown_price_usd_mwh: float = 5000.0
    max_age_renewable_forecast_s: float = 6 * 3600.0
    max_age_renewable_obs_s: float = 1800.0
    persistence_h: float = 1.0
    renewable_history_days: int = 3
    max_age_carbon_s: float = 2 * 3600.0
    carbon_hold_h: float = 1.0
    carbon_profile_days: int = 7
    max_age_hashprice_s: float = 3 * 86400.0
    max_age_noise_s: float = 3600.0
    noise_window_s: float = 86400.0
    noise_ewma_alpha: float = 0.2


class FallbackCode(enum.StrEnum):
    """What a forecast fell back to (stable codes for code; the sentence is for people)."""

    PRICE_SAME_TIME_YESTERDAY = "price_same_time_yesterday"
    PRICE_UNKNOWN = "price_unknown"  # priced at the curtailment price: the site is then not healthy
    PRICE_RT_STALE = "price_rt_stale"
    PRICE_SCARCITY = "price_scarcity"  # recent RT far above DA: planned at an upper quantile (risk-averse)
    PRICE_MODEL_UNTRAINED = "price_model_untrained"  # learned model lacks history: the rules alone
    RENEWABLE_NO_FORECAST = "renewable_no_forecast"
    RENEWABLE_SYNTHETIC = "renewable_synthetic"
    CARBON_NO_FEED = "carbon_no_feed"
    CARBON_PROFILE_DEFAULT = "carbon_profile_default"
    HASHPRICE_PROFILE = "hashprice_profile"
    NOISE_UNCALIBRATED = "noise_uncalibrated"


class Fallback(str):
    """One fallback in use: the human sentence (the ``str`` value, as before) with a :attr:`code`."""

    code: FallbackCode

    def __new__(cls, code: FallbackCode, text: str) -> Fallback:
        made = super().__new__(cls, text)
        made.code = FallbackCode(code)
        return made

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (the solver worker, multiprocessing)
        return (Fallback, (self.code, str(self)))


def has_fallback(fallbacks: Any, code: FallbackCode) -> bool:
    """True when ``fallbacks`` (a Forecast's, or any sequence) holds one with ``code``."""
    return any(getattr(f, "code", None) == code for f in fallbacks or ())


@dataclass(frozen=True)
class Forecast:
    """Horizon arrays at ``now`` (one entry per interval), with per-interval sources and diagnostics."""

    now: pd.Timestamp
    interval_start: pd.DatetimeIndex
    price_usd_mwh: np.ndarray
    price_source: tuple[str, ...]
    renewable_kw: np.ndarray
    renewable_source: dict[str, tuple[str, ...]]
    intensity_kg_per_mwh: np.ndarray
    intensity_source: tuple[str, ...]
    hashprice_usd_per_ph_day: np.ndarray
    hashprice_source: str
    import_limit_kw: np.ndarray  # inf where no DR/limit row applies
    import_limit_source: tuple[str, ...]
    noise_margin_db: dict[str, float]
    noise_offset_db: dict[str, float | None]
    input_ages_s: dict[str, float | None]
    fallbacks: list[Fallback]

    def to_problem(
        self,
        profile: SiteProfile,
        *,
        initial: dict[str, GroupState] | None = None,
        units_available: dict[str, np.ndarray] | None = None,
        carbon_budgets: tuple[CarbonBudget, ...] | None = None,
        four_cp_alert_days: set[pd.Timestamp] | None = None,
    ) -> Problem:
        """The optimizer's input: these arrays through :func:`problem_from_profile`."""
        return problem_from_profile(
            profile, self.interval_start, self.price_usd_mwh,
            renewable_kw=self.renewable_kw, import_limit_kw=self.import_limit_kw,
            import_limit_source=list(self.import_limit_source),
            intensity_kg_per_mwh=self.intensity_kg_per_mwh, hashprice_usd_per_ph_day=self.hashprice_usd_per_ph_day,
            units_available=units_available, initial=initial, noise_margin_db=self.noise_margin_db,
            carbon_budgets=carbon_budgets, four_cp_alert_days=four_cp_alert_days,
        )


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    if ts.tzinfo is None:
        raise ValueError(f"naive time {moment!r}: a timezone is required")
    return ts.tz_convert("UTC")


def _age_s(now: pd.Timestamp, published: pd.Series) -> float | None:
    return None if published.empty else float((now - published.max()).total_seconds())


def _us(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Tz-aware times as int64 UTC microseconds (NaT → int64 min)."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("us").asi8


def _covering(times: pd.DatetimeIndex, starts: pd.Series, ends: pd.Series, values: pd.Series,
              order: pd.Series | None = None) -> np.ndarray:
    """Per time: the value of the row with start ≤ t < end (the highest ``order`` wins); NaN if none."""
    out = np.full(len(times), np.nan)
    if len(starts) == 0:
        return out
    t, s, e = _us(times), _us(starts), _us(ends)
    key = _us(order).astype(float) if order is not None else np.zeros(len(s))
    v = values.to_numpy(dtype=float)
    rank = np.full(len(times), -np.inf)
    for i in range(len(s)):
        hit = (t >= s[i]) & (t < e[i]) & (key[i] >= rank)
        out[hit], rank[hit] = v[i], key[i]
    return out


def _same_wall_time_yesterday(times: pd.DatetimeIndex, tz: Any) -> pd.DatetimeIndex:
    naive = times.tz_convert(tz).tz_localize(None) - pd.Timedelta(days=1)
    return naive.tz_localize(tz, ambiguous=np.ones(len(naive), dtype=bool),
                             nonexistent="shift_forward").tz_convert("UTC")


# ------------------------------------------------------------------------------------------ price
def _forecast_prices(profile: SiteProfile, snap: Snapshot, now: pd.Timestamp, times: pd.DatetimeIndex,
                     cfg: ForecastConfig, hook: PriceForecaster | None, ages: dict[str, float | None],
                     fallbacks: list[str]) -> tuple[np.ndarray, list[str]]:
    point = snap.prices[snap.prices["settlement_point"] == profile.site.settlement_point]
    da, rt = point[point["market"] == "DA"], point[point["market"] == "RT"]
    ages["price_da"], ages["price_rt"] = _age_s(now, da["published_at"]), _age_s(now, rt["published_at"])
    price = _covering(times, da["interval_start"], da["interval_end"], da["price_usd_mwh"], da["published_at"])
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
            again = _covering(times, da["interval_start"], da["interval_end"], da["price_usd_mwh"], da["published_at"])
            fill = np.isnan(price) & np.isfinite(again)
            price[fill] = again[fill]
            for k in np.flatnonzero(fill):
                source[k] = "DA"
    if np.isnan(price).any():
        yesterday = _same_wall_time_yesterday(times, profile.tz)
        past = _covering(yesterday, rt["interval_start"], rt["interval_end"], rt["price_usd_mwh"], rt["published_at"])
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
    return price, source


def _blend_rt(rt: pd.DataFrame, now: pd.Timestamp, times: pd.DatetimeIndex, cfg: ForecastConfig,
              price: np.ndarray, source: list[str], fallbacks: list[str]) -> None:
    if rt.empty:
        return
    last = rt.sort_values(["interval_end", "published_at"]).iloc[-1]
    if (now - last["published_at"]).total_seconds() > cfg.max_age_rt_s:
        fallbacks.append(Fallback(FallbackCode.PRICE_RT_STALE,
                                  f"price: latest real-time price is older than {cfg.max_age_rt_s:g} s; not blended"))
        return
    lag_h = (times - last["interval_end"]).total_seconds().to_numpy() / 3600.0
    weight = np.clip(1.0 - lag_h / cfg.rt_blend_h, 0.0, 1.0) if cfg.rt_blend_h > 0 else np.zeros(len(times))
    weight[lag_h < 0] = 0.0  # intervals already settled are not forecast by their own RT price
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
    local_hour = times.tz_convert(profile.tz).hour.to_numpy()
    for src in profile.renewables:
        fc = snap.renewable_forecasts[snap.renewable_forecasts["source_id"] == src.id]
        obs = snap.renewable_observations[(snap.renewable_observations["source_id"] == src.id)
                                          & (snap.renewable_observations["timestamp"] <= now)]
        ages[f"renewable:{src.id}:forecast"] = _age_s(now, fc["published_at"])
        ages[f"renewable:{src.id}:observation"] = _age_s(now, obs["published_at"])
        fc = fc[(now - fc["published_at"]).dt.total_seconds() <= cfg.max_age_renewable_forecast_s]
        kw = np.full(len(times), np.nan)
        label = [""] * len(times)
        if not fc.empty:
            kw = _covering(times, fc["interval_start"], _posting_ends(fc), fc["power_kw"], fc["published_at"])
            label = ["forecast" if np.isfinite(v) else "" for v in kw]
        fresh = obs[(now - obs["published_at"]).dt.total_seconds() <= cfg.max_age_renewable_obs_s]
        if src.kind == "wind" and not fresh.empty:
            latest = float(fresh.sort_values("timestamp")["power_kw"].iloc[-1])
            near = np.isnan(kw) & ((times - now).total_seconds().to_numpy() < cfg.persistence_h * 3600.0)
            kw[near] = latest
            for k in np.flatnonzero(near):
                label[k] = "persistence"
        history = obs[obs["timestamp"] >= now - pd.Timedelta(days=cfg.renewable_history_days)]
        if np.isnan(kw).any():
            by_hour = history.groupby(history["timestamp"].dt.tz_convert(profile.tz).dt.hour)["power_kw"].mean()
            diurnal = by_hour.reindex(local_hour).to_numpy(dtype=float)
            gap = np.isnan(kw)
            kw[gap] = np.nan_to_num(diurnal[gap], nan=0.0)
            for k in np.flatnonzero(gap):
                label[k] = "diurnal profile" if np.isfinite(diurnal[k]) else "no data: 0 kW"
            what = "diurnal profile of recent measurements" if not history.empty else "0 kW (no data)"
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
    feed = feed[(now - feed["published_at"]).dt.total_seconds() <= cfg.max_age_carbon_s]
    value = _covering(times, feed["timestamp"], feed["timestamp"] + pd.Timedelta(hours=cfg.carbon_hold_h),
                      feed["intensity_kg_per_mwh"], feed["published_at"])
    source = ["feed" if np.isfinite(v) else "" for v in value]
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
    feed = snap.hashprice[snap.hashprice["timestamp"] <= now]
    ages["hashprice"] = _age_s(now, feed["published_at"])
    fresh = feed[(now - feed["published_at"]).dt.total_seconds() <= cfg.max_age_hashprice_s]
    if not fresh.empty:
        row = fresh.sort_values(["timestamp", "published_at"]).iloc[-1]
        return float(row["hashprice_usd_per_ph_day"]), f"feed ({row['timestamp']:%Y-%m-%d})"
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
    for receptor in profile.receptors:
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
        self.renewables = renewable_observations
        history_days = (config or ForecastConfig()).renewable_history_days
        self.renewable_lookback = pd.Timedelta(days=history_days + 1)
        self._renewable_times = (None if renewable_observations is None
                                 else pd.DatetimeIndex(renewable_observations["published_at"]))

    def update(self, prices: pd.DataFrame) -> None:
        """Replace the price history (e.g. a live replay that learned more prices)."""
        self.__init__(self.profile, prices, self.renewables, self.config,  # type: ignore[misc]
                      hashprice=self.hashprice, price_forecaster=self.price_forecaster)

    def snapshot(self, now: pd.Timestamp) -> Snapshot:
        lo, hi = self._starts.searchsorted(now - self.PRICE_LOOKBACK), self._starts.searchsorted(now + self.AHEAD)
        frames: dict[str, pd.DataFrame] = {"prices": self.prices.iloc[lo:hi][list(SNAPSHOT_COLUMNS["prices"])]}
        if self.renewables is not None and self._renewable_times is not None:
            a = self._renewable_times.searchsorted(now - self.renewable_lookback)
            b = self._renewable_times.searchsorted(now, "right")
            frames["renewable_observations"] = self.renewables.iloc[a:b]
        if self.hashprice is not None:
            published = pd.DatetimeIndex(self.hashprice["published_at"])
            a = published.searchsorted(now - pd.Timedelta(days=8))
            frames["hashprice"] = self.hashprice.iloc[a:published.searchsorted(now, "right")]
        return Snapshot(**frames)

    def __call__(self, now: Any, horizon_start: pd.Timestamp, periods: int) -> Forecast:
        now_ts = _utc(now)
        return build_forecast(self.profile, self.snapshot(now_ts), now_ts, horizon_start, periods, config=self.config,
                              price_forecaster=self.price_forecaster)


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
    forecaster shape): :func:`snapshot_from_store` then :func:`build_forecast` on every call."""

    def forecaster(now: datetime, horizon_start: pd.Timestamp, periods: int) -> Forecast:
        snapshot = snapshot_from_store(store, now, profile, **snapshot_kwargs)
        return build_forecast(profile, snapshot, now, horizon_start, periods, config=config,
                              price_forecaster=price_forecaster)

    return forecaster
