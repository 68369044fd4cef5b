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

__all__ = ["FEATURES", "PLAN_ESTIMATES", "QUANTILES", "STEP", "PriceModelConfig", "ScarcityState", "detect_scarcity",
           "pinball_loss", "quantile_at"]

QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
FEATURES: tuple[str, ...] = ("lead_h", "da_usd_mwh", "load_forecast_mw", "hour_local", "weekday", "rt_last_usd_mwh",
                             "rt_mean_1h_usd_mwh", "rt_max_4h_usd_mwh", "spread_1h_usd_mwh", "rt_yesterday_usd")
PLAN_ESTIMATES: tuple[str, ...] = ("quantile", "quantile_mean", "mean", "breakeven")
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
        profit, which is linear in the price, so it needs E[price], not the median of a right-skewed price),
        or ``"breakeven"``: a group runs in an interval when the forecast probability that the price is below
        its breakeven is at least ``breakeven_probability`` (p*). The forecast CDF F is monotone, so for every
        group g at once P(price < b_g) >= p* holds exactly when b_g >= F^-1(p*): the one price vector the MILP
        plans on is the p* quantile, interpolated linearly in probability between the fitted quantiles
        (:func:`quantile_at`), and the MILP applies the rule to each group's own breakeven (less what its
        start costs, minimum on/off times, carbon and noise terms change).
    breakeven_probability : float
        p* of ``plan_estimate="breakeven"``, in [min(QUANTILES), max(QUANTILES)] (0.1..0.9): the least
        probability of a price below a group's breakeven for it to run. In newsvendor terms
        p* = C_spike / (C_spike + C_idle), with C_spike the cost of running through an interval above
        breakeven and C_idle the margin lost by idling through one below it (per interval, $); 0.5: P50.
    breakeven_probability_near : float or None
        p* for intervals starting within ``near_h`` hours of the decision (None: ``breakeven_probability``).
    near_h : float
        Hours from the decision time that ``breakeven_probability_near`` covers.
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
    plan_estimate: str = "quantile"  # "quantile" | "quantile_mean" | "mean" (squared-error model) | "breakeven"
    breakeven_probability: float = 0.5  # p* of plan_estimate "breakeven": run when P(price < breakeven) >= p*
    breakeven_probability_near: float | None = None  # p* for the first near_h hours (None: breakeven_probability)
    near_h: float = 1.0
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
        low, high = min(QUANTILES), max(QUANTILES)
        for name in ("breakeven_probability", "breakeven_probability_near"):
            value = getattr(self, name)
            if value is None and name.endswith("_near"):
                continue
            if not (isinstance(value, (int, float)) and low <= value <= high):
                raise ValueError(f"{name}: {value!r} must be a probability in [{low:g}, {high:g}] "
                                 "(the range of the fitted quantiles)")
        if not (isinstance(self.near_h, (int, float)) and math.isfinite(self.near_h) and self.near_h >= 0):
            raise ValueError(f"near_h: {self.near_h!r} must be a finite number of hours >= 0")


def quantile_at(quantiles: dict[float, np.ndarray], probability: float | np.ndarray) -> np.ndarray:
    """The price at ``probability`` of the forecast CDF, linear in probability between fitted quantiles.

    Parameters
    ----------
    quantiles : dict[float, numpy.ndarray]
        Quantile level -> $/MWh, each shape ``(n,)``, non-crossing per interval
        (:meth:`hashflex.price_model.LearnedPriceForecaster.quantiles`).
    probability : float or numpy.ndarray
        p in [min level, max level]; a scalar or one per interval, shape ``(n,)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, $/MWh: Q(p) = Q(l_k) + (p − l_k)/(l_{k+1} − l_k)·(Q(l_{k+1}) − Q(l_k)) for
        l_k <= p <= l_{k+1}; exactly Q(l_k) at a fitted level.

    Raises
    ------
    ValueError
        No quantiles, or ``probability`` outside the fitted levels (named).
    """
    if not quantiles:
        raise ValueError("quantiles: none given")
    levels = np.array(sorted(quantiles), dtype=float)
    values = np.vstack([np.asarray(quantiles[q], dtype=float) for q in levels])  # (levels, n)
    p = np.broadcast_to(np.asarray(probability, dtype=float), values.shape[1:])
    if not np.all((p >= levels[0]) & (p <= levels[-1])):
        raise ValueError(f"probability: must lie in [{levels[0]:g}, {levels[-1]:g}] (the fitted quantile levels)")
    if len(levels) == 1:
        return values[0].copy()
    k = np.clip(np.searchsorted(levels, p, side="right") - 1, 0, len(levels) - 2)
    low, high = levels[k], levels[k + 1]
    cols = np.arange(values.shape[1])
    weight = (p - low) / (high - low)
    return values[k, cols] + weight * (values[k + 1, cols] - values[k, cols])


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
