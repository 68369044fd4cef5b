"""The learned price model's settings, its loss, the scarcity test, and the 15-minute grid it works on.

Part of :mod:`hashflex.price_model` (which describes the model and re-exports every public name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hashflex.forecast import ScarcityState
from hashflex.forecast import detect_scarcity as _detect

__all__ = ["FEATURES", "PLAN_ESTIMATES", "QUANTILES", "STEP", "PriceModelConfig", "ScarcityState", "detect_scarcity", "pinball_loss"]

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
FEATURES: tuple[str, ...] = ("lead_h", "da_usd_mwh", "load_forecast_mw", "hour_local", "weekday", "rt_last_usd_mwh",
                             "rt_mean_1h_usd_mwh", "rt_max_4h_usd_mwh", "spread_1h_usd_mwh", "rt_yesterday_usd")
PLAN_ESTIMATES: tuple[str, ...] = ("quantile", "quantile_mean", "mean")
STEP = pd.Timedelta(minutes=15)
_STEP_NS = STEP.value
_H_NS = pd.Timedelta(hours=1).value


@dataclass(frozen=True)
class PriceModelConfig:
    """Training window, model settings and scarcity thresholds (units in the names).

    Attributes
    ----------
    train_days, min_train_days : float
        Training window and the least published RT history before the model answers (days).
    train_stride_h, retrain_h, horizon_h : float
        Decision times sampled every ``train_stride_h`` for training; refit every ``retrain_h``;
        targets up to ``horizon_h`` ahead (DA covers up to ~35 h ahead).
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf
        scikit-learn ``HistGradientBoostingRegressor`` settings.
    plan_quantile : float
        The price the MILP plans with in normal times (0.5: P50) when ``plan_estimate`` is ``"quantile"``.
    plan_estimate : str
        What the MILP plans on in normal times: ``"quantile"`` (the ``plan_quantile`` model, default),
        ``"quantile_mean"`` (the mean of P10/P50/P90, a crude mean) or ``"mean"`` (a squared-error model of
        the conditional mean, fitted beside the quantile ones: a risk-neutral plan maximises expected
        profit, which is linear in the price, so it needs E[price], not the median of a right-skewed price).
    residual : bool
        Learn RT − base (DA, else RT yesterday, else last RT) rather than RT itself.
    scarcity_window_h, scarcity_rt_usd_mwh, scarcity_spread_usd_mwh : float
        The scarcity test (:func:`hashflex.forecast.detect_scarcity`): recent published RT mean
        (over the window, h) at or above the threshold ($/MWh), or that far above DA.
    scarcity_quantile, scarcity_hold_h : float
        In a scarcity regime: plan at this quantile, and at least the scarcity floor for this long (h).
    scarcity_floor_follows_last : bool
        The floor is the lower of the recent RT mean and the last published RT price (True), or the mean alone.
    seed : int
    """

    train_days: float = 28.0
    min_train_days: float = 2.0
    train_stride_h: float = 2.0
    retrain_h: float = 24.0
    horizon_h: float = 36.0  # training targets up to this lead (DA covers up to ~35 h ahead)
    max_iter: int = 100
    learning_rate: float = 0.08
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 40
    plan_quantile: float = 0.5  # the price the MILP plans with in normal times
    plan_estimate: str = "quantile"  # "quantile" | "quantile_mean" | "mean" (squared-error model): see above
    residual: bool = True  # learn RT − base (DA, else RT yesterday, else last RT) rather than RT itself
    scarcity_window_h: float = 2.0
    scarcity_rt_usd_mwh: float = 1000.0
    scarcity_spread_usd_mwh: float = 300.0
    scarcity_quantile: float = 0.9
    scarcity_hold_h: float = 6.0
    scarcity_floor_follows_last: bool = True  # floor = min(window mean, last RT) (ScarcityState.floor_usd_mwh)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.plan_estimate not in PLAN_ESTIMATES:
            raise ValueError(f"plan_estimate: {self.plan_estimate!r} is not one of {PLAN_ESTIMATES}")


def pinball_loss(actual: np.ndarray, predicted: np.ndarray, quantile: float) -> float:
    """Mean pinball (quantile) loss: q·(y−ŷ) where y ≥ ŷ, (1−q)·(ŷ−y) otherwise.

    At q = 0.5 it is half the mean absolute error (Koenker and Bassett, "Regression Quantiles",
    Econometrica 46(1), 1978).

    Parameters
    ----------
    actual, predicted : numpy.ndarray, shape (n,)
        $/MWh; pairs with a NaN are skipped.
    quantile : float
        q in (0, 1).

    Returns
    -------
    float
        $/MWh; NaN when no pair remains.
    """
    y, p = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    ok = np.isfinite(y) & np.isfinite(p)
    if not ok.any():
        return math.nan
    diff = y[ok] - p[ok]
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def detect_scarcity(rt_recent_usd_mwh: np.ndarray, da_recent_usd_mwh: np.ndarray,
                    config: PriceModelConfig | None = None) -> ScarcityState:
    """The scarcity regime from recent published prices, at ``config``'s thresholds.

    The one test, :func:`hashflex.forecast.detect_scarcity`, which the rule forecast applies too.

    Parameters
    ----------
    rt_recent_usd_mwh : numpy.ndarray, shape (k,)
        The last window of published RT prices ($/MWh), oldest first.
    da_recent_usd_mwh : numpy.ndarray, shape (k,)
        The DA prices of the same intervals ($/MWh); NaN where unknown.
    config : PriceModelConfig, optional
        Thresholds (default ``PriceModelConfig()``).

    Returns
    -------
    ScarcityState
    """
    cfg = config or PriceModelConfig()
    return _detect(rt_recent_usd_mwh, da_recent_usd_mwh, rt_threshold_usd_mwh=cfg.scarcity_rt_usd_mwh,
                   spread_threshold_usd_mwh=cfg.scarcity_spread_usd_mwh)


def _ns(values: Any) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).as_unit("ns").asi8


class _Grid:
    """A series on a fixed 15-minute UTC grid: value and published time (ns; int64 max = never)."""

    NEVER = np.iinfo(np.int64).max

    def __init__(self, origin_ns: int, n: int) -> None:
        self.origin_ns, self.n = origin_ns, n
        self.value = np.full(n, np.nan)
        self.published = np.full(n, self.NEVER, dtype=np.int64)

    def fill(self, starts_ns: np.ndarray, ends_ns: np.ndarray, values: np.ndarray, published_ns: np.ndarray) -> None:
        """Rows of any length on the grid: a row as long as a slot or longer covers every slot in it;
        shorter rows (5-min SCED) are averaged into their slot (time-weighted for equal lengths)."""
        if len(starts_ns) == 0:
            return
        first = (starts_ns - self.origin_ns) // _STEP_NS
        count = np.maximum(1, (ends_ns - starts_ns) // _STEP_NS)
        slot = np.repeat(first, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        frame = pd.DataFrame({"slot": slot, "value": np.repeat(values, count), "pub": np.repeat(published_ns, count)})
        frame = frame[(frame["slot"] >= 0) & (frame["slot"] < self.n) & np.isfinite(frame["value"])]
        grouped = frame.groupby("slot").agg(value=("value", "mean"), pub=("pub", "max"))
        index = grouped.index.to_numpy()
        self.value[index] = grouped["value"].to_numpy()
        self.published[index] = grouped["pub"].to_numpy()
