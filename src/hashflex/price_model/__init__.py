"""A learned real-time price forecaster (P10/P50/P90) and a scarcity-regime switch, plugged into the
one forecast through its ``price_forecaster`` hook (:data:`hashflex.forecast.PriceForecaster`).

Why: on real ERCOT months the price forecast error is most of the gap between the MPC and a
perfect-foresight oracle; day-ahead prices over-predict evening peaks and miss the first interval of
a rise. This model learns the real-time (RT) settlement point price of each 15-minute interval of
the horizon from what was published at the decision time:

==================  =====================================================================
feature             meaning (all known at the decision time ``now``; NaN where not)
==================  =====================================================================
lead_h              hours from ``now`` to the interval's start
da_usd_mwh          day-ahead price of the interval (NP4-190, published 13:00 CT the day before)
load_forecast_mw    ERCOT's day-ahead system load forecast for the interval's hour
hour_local          local hour of day (0..24, fractional)
weekday             local day of week (0 = Monday)
rt_last_usd_mwh     last published RT price
rt_mean_1h_usd_mwh  mean of the last 4 published RT intervals
rt_max_4h_usd_mwh   max of the last 16 published RT intervals
spread_1h_usd_mwh   mean RT − DA over the last 4 published RT intervals (ORDC adders show here)
rt_yesterday_usd    RT price of the same interval 24 h earlier, if published
==================  =====================================================================

Model: scikit-learn's ``HistGradientBoostingRegressor(loss="quantile")``, one per quantile (0.1, 0.5,
0.9). Chosen over LightGBM for: one well-kept BSD library already common in Python stacks, native
missing-value handling (the load forecast is bundled for some months only; DA is missing beyond its
publication), deterministic fits with a fixed seed (the no-look-ahead test compares decisions
exactly), and no separate native build. LightGBM would be faster on large sets; ours are ~10^4 rows.

Training is rolling and without look-ahead: at a decision time the model is (re)fitted, at most
every ``retrain_h`` hours, on samples whose *features* are reconstructed as of past decision times τ
(every ``train_stride_h`` hours over the last ``train_days`` days) and whose *targets* (RT prices)
were published by ``now``. Every input row is taken only if its ``published_at`` ≤ the time it is
used at, so anything published after ``now`` cannot change a decision made at ``now``.

Scarcity regime (Winter Storm Uri, Feb 2021): when the recent RT prices are far above normal — the
mean of the last ``scarcity_window_h`` hours of published RT ≥ ``scarcity_rt_usd_mwh``, or its mean
RT − DA spread ≥ ``scarcity_spread_usd_mwh`` (ERCOT's ORDC adders and scarcity pricing show up
as RT far above DA) — the plan is made at a risk-averse price: the P90 quantile, never below the
DA price, and for the next ``scarcity_hold_h`` hours never below the lower of the recent RT mean and the
last published RT price (so the floor falls as soon as a spike ends; a tree model
cannot extrapolate above the prices it was trained on, and a scarcity event persists for hours to
days). The forecast then lists :attr:`FallbackCode.PRICE_SCARCITY`. The switch works without a
trained model too (it needs only recent RT and DA), so it also guards a fresh install.

Degraded behaviour: a fault inside the model (fit or predict raising) is listed as
``PRICE_MODEL_UNTRAINED`` with the error and the rules take over for that call; too little history (< ``min_train_days`` of labelled intervals) → the hook
returns no opinion (NaN) and lists ``PRICE_MODEL_UNTRAINED``; the forecast then uses its rules (DA,
yesterday, the unknown-price cap). scikit-learn missing → :class:`ImportError` naming the extra
(``pip install 'hashflex[forecast]'``) when the forecaster is built, never during a tick.

In the daemon (``hashflex run`` and ``run --simulate``) :class:`OnlinePriceModel` wraps it: it (re)fits
in a background thread on the price history the site has stored (only rows published by the fit's
time; daily after the DAM publishes, :class:`RetrainSchedule`), so a tick never waits for training,
predicts with the last fit over the tick's own snapshot, and answers "no opinion" (the rules plan)
until a fit exists, when the fit is too old, and on any model error (counted).

The package is split along its seams: settings, loss, scarcity test and grid in
:mod:`hashflex.price_model.config`, the forecaster in :mod:`hashflex.price_model.forecaster`, the
daemon's training schedule in :mod:`hashflex.price_model.online`; every name is importable from
``hashflex.price_model`` as before.
"""

from __future__ import annotations

from hashflex.price_model.config import (  # noqa: F401 - STEP importable as before, not in __all__
    FEATURES,
    PLAN_ESTIMATES,
    QUANTILES,
    STEP,
    PriceModelConfig,
    ScarcityState,
    detect_scarcity,
    pinball_loss,
    quantile_at,
)
from hashflex.price_model.forecaster import FittedPriceModel, LearnedPriceForecaster
from hashflex.price_model.online import (
    OnlinePriceModel,
    RetrainSchedule,
    recorded_price_history,
    store_price_history,
)

__all__ = ["FEATURES", "PLAN_ESTIMATES", "QUANTILES", "FittedPriceModel", "LearnedPriceForecaster", "OnlinePriceModel",
           "PriceModelConfig", "RetrainSchedule", "ScarcityState", "detect_scarcity", "pinball_loss",
           "quantile_at", "recorded_price_history", "store_price_history"]
