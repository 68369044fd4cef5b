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
  Scarcity regime: when the RT prices published in the last ``scarcity_window_h`` average at least
  ``scarcity_rt_usd_mwh`` (:func:`detect_scarcity`), the next ``scarcity_hold_h`` hours are planned at no
  less than the lower of that mean and the last published RT price (``scarcity_floor_follows_last``; the
  mean alone held a fleet off after a short spike had ended, measured on 7-9 May 2024).
Renewables (kW, per profile source, then summed)
  1. The source's latest forecast posting (younger than ``max_age_renewable_forecast_s``) covering t.
  2. Else, in the first ``persistence_h`` hours, the latest measurement if younger than
     ``max_age_renewable_obs_s`` (wind only: solar's daily cycle beats persistence).
  3. Else the mean measured output in the same slot of the site's interval (e.g. 17:45-18:00 local) over
     the last ``renewable_history_days`` days, the same local hour's mean where that slot was never
     measured (a diurnal profile; solar is therefore zero at night, and an hour never measured is 0;
     ``renewable_profile_hourly``: by hour only, the rule before issue 14's H4, flat through a solar ramp).
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

The module is split by seam (issue 11): :mod:`.model` (Snapshot, ForecastConfig, Fallback,
Forecast), :mod:`.rules` (the rules above and :func:`build_forecast`) and :mod:`.sources`
(:class:`RecordedForecaster`, :func:`snapshot_from_store`, :func:`store_forecaster`). Import from
``hashflex.forecast``: every name is re-exported.
"""

from __future__ import annotations

from hashflex.forecast.model import (
    SNAPSHOT_COLUMNS,
    Fallback,
    FallbackCode,
    Forecast,
    ForecastConfig,
    PriceForecaster,
    ScarcityState,
    Snapshot,
    detect_scarcity,
    has_fallback,
)
from hashflex.forecast.rules import build_forecast
from hashflex.forecast.sources import NoiseModel, RecordedForecaster, snapshot_from_store, store_forecaster

__all__ = ["Fallback", "FallbackCode", "Forecast", "ForecastConfig", "PriceForecaster", "RecordedForecaster",
           "SNAPSHOT_COLUMNS", "Snapshot", "build_forecast", "has_fallback", "snapshot_from_store", "store_forecaster",
           "NoiseModel", "ScarcityState", "detect_scarcity"]
