"""The learned real-time price forecaster (:class:`LearnedPriceForecaster`), the forecast's ``price_forecaster`` hook.

Part of :mod:`hashflex.price_model` (which describes the model and re-exports every public name).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hashflex.forecast import Fallback, FallbackCode, ScarcityState, Snapshot
from hashflex.price_model.config import (
    _H_NS,
    _STEP_NS,
    FEATURES,
    QUANTILES,
    PriceModelConfig,
    _Grid,
    _ns,
    detect_scarcity,
    quantile_at,
)

__all__ = ["FittedPriceModel", "LearnedPriceForecaster"]


@dataclass(frozen=True)
class FittedPriceModel:
    """The fitted part of a :class:`LearnedPriceForecaster`, to predict with over newer data without a refit.

    The daemon fits in a background thread and hands the result to the tick
    (:class:`hashflex.price_model.online.OnlinePriceModel`); a forecaster that adopts it
    (:meth:`LearnedPriceForecaster.adopt`) answers only at decision times at or after ``trained_at``.

    Attributes
    ----------
    models : dict[float, Any]
        Quantile -> fitted scikit-learn regressor (read-only after the fit).
    columns : numpy.ndarray
        Indices into :data:`FEATURES` the models were fitted on.
    trained_at : pandas.Timestamp
        The decision time of the fit (UTC): nothing published after it was used.
    config : PriceModelConfig
        The settings it was fitted with.
    labelled_days : float
        Days of published RT history the fit saw.
    mean_model : Any, optional
        The squared-error (conditional mean) regressor, fitted only when ``config.plan_estimate`` is ``"mean"``.
    """

    models: dict[float, Any]
    columns: np.ndarray
    trained_at: pd.Timestamp
    config: PriceModelConfig
    labelled_days: float
    mean_model: Any = None


class LearnedPriceForecaster:
    """The learned RT price forecaster as a ``price_forecaster`` hook (P50 in normal times, the
    risk-averse scarcity price in a scarcity regime), over a price history it is given.

    Parameters
    ----------
    prices : canonical price frame (``interval_start``, ``interval_end``, ``settlement_point``,
        ``market`` RT/DA, ``price_usd_mwh``, optional ``published_at``; without it ERCOT's publication
        times are assumed, :func:`hashflex.feeds.ercot.publication_times`), any interval length
    settlement_point : the site's point (other rows are ignored)
    timezone : the site's time zone (for hour and weekday features)
    load_forecast : optional frame ``interval_start`` (hour start, tz-aware), ``load_forecast_mw``,
        optional ``interval_end`` (default +1 h) and ``published_at`` (default: 13:00 Central the day
        before, like the DA prices it is made for)
    config : :class:`PriceModelConfig`

    Raises
    ------
    ImportError : scikit-learn is not installed (``pip install 'hashflex[forecast]'``).
    ValueError : a required price column is missing (named).

    Calling it ``(times, snapshot, now)`` returns $/MWh per interval start in ``times`` (NaN where
    it has no opinion); :attr:`last_fallbacks` then holds the fallbacks of that call. The snapshot is
    not read (the forecaster keeps its own, longer history, filtered to ``published_at`` ≤ ``now``).
    """

    replaces_day_ahead = True
    source_label = "learned"

    def __init__(self, prices: pd.DataFrame, settlement_point: str, timezone: str, *,
                 load_forecast: pd.DataFrame | None = None, config: PriceModelConfig | None = None) -> None:
        try:
            from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the learned price forecaster needs scikit-learn: pip install 'hashflex[forecast]'") from exc
        from hashflex.feeds.ercot import publication_times

        self.config = config or PriceModelConfig()
        self.timezone = timezone
        missing = [c for c in ("interval_start", "interval_end", "settlement_point", "market", "price_usd_mwh")
                   if c not in prices.columns]
        if missing:
            raise ValueError(f"prices: missing column(s) {missing}")
        frame = prices[prices["settlement_point"] == settlement_point].copy()
        if frame.empty:
            raise ValueError(f"prices: no rows for settlement_point {settlement_point!r}")
        if "published_at" not in frame.columns:
            frame["published_at"] = publication_times(frame)
        starts, ends = _ns(frame["interval_start"]), _ns(frame["interval_end"])
        origin = int(pd.Timestamp(starts.min(), tz="UTC").floor("D").value) - 2 * 86400 * 10**9
        n = int((ends.max() - origin) // _STEP_NS) + 4 * 24 * 3  # room for horizons past the data
        self.origin_ns, self.n = origin, n
        self.slot_start_ns = origin + np.arange(n, dtype=np.int64) * _STEP_NS
        self.rt, self.da, self.load = _Grid(origin, n), _Grid(origin, n), _Grid(origin, n)
        for grid, market in ((self.rt, "RT"), (self.da, "DA")):
            rows = frame[frame["market"] == market]
            grid.fill(_ns(rows["interval_start"]), _ns(rows["interval_end"]),
                      rows["price_usd_mwh"].to_numpy(dtype=float), _ns(rows["published_at"]))
        if load_forecast is not None:
            if "load_forecast_mw" not in load_forecast.columns or "interval_start" not in load_forecast.columns:
                raise ValueError("load_forecast: needs columns interval_start, load_forecast_mw")
            lf = load_forecast.copy()
            if "interval_end" not in lf.columns:
                lf["interval_end"] = pd.to_datetime(lf["interval_start"], utc=True) + pd.Timedelta(hours=1)
            if "published_at" not in lf.columns:
                lf["market"] = "DA"
                lf["published_at"] = publication_times(lf.assign(interval_start=pd.to_datetime(lf["interval_start"],
                                                                                               utc=True)))
            self.load.fill(_ns(lf["interval_start"]), _ns(lf["interval_end"]),
                           lf["load_forecast_mw"].to_numpy(dtype=float), _ns(lf["published_at"]))
        local = pd.DatetimeIndex(self.slot_start_ns, tz="UTC").tz_convert(timezone)
        self.hour_local = (local.hour + local.minute / 60.0).to_numpy(dtype=float)
        self.weekday = local.day_of_week.to_numpy(dtype=float)
        self._models: dict[float, Any] | None = None
        self._mean_model: Any = None  # squared-error regressor (plan_estimate "mean" only)
        self._columns = np.arange(len(FEATURES))
        self._trained_at_ns: int | None = None
        self._trained_until_ns: int | None = None
        self.last_fallbacks: list[Fallback] = []
        self.last_scarcity: ScarcityState | None = None
        self.last_error: Exception | None = None  # the model fault of the last call (None: none)
        self.auto_fit = True  # False after adopt(): predict with the adopted fit, never refit here
        self.fits = 0

    # ------------------------------------------------------------------------------ features
    def _recent(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots of the last published RT intervals (newest last, at most 16) and all known RT slots' mask."""
        known = self.rt.published <= now_ns
        hi = min(self.n, int((now_ns - self.origin_ns) // _STEP_NS) + 1)
        idx = np.flatnonzero(known[:max(hi, 0)])
        return idx[-16:], known

    def _features(self, now_ns: int, slots: np.ndarray) -> np.ndarray:
        """Feature matrix (len(slots) × len(FEATURES)) as of ``now_ns``: only rows published by then."""
        recent, known = self._recent(now_ns)
        rt_recent = self.rt.value[recent]
        da_known = self.da.published[recent] <= now_ns
        da_recent = np.where(da_known, self.da.value[recent], np.nan)
        last4 = slice(-4, None)
        with np.errstate(invalid="ignore"):
            rt_last = rt_recent[-1] if rt_recent.size else np.nan
            rt_mean = float(np.mean(rt_recent[last4])) if rt_recent.size else np.nan
            rt_max = float(np.max(rt_recent)) if rt_recent.size else np.nan
            spreads = rt_recent[last4] - da_recent[last4]
            spread = float(np.nanmean(spreads)) if np.isfinite(spreads).any() else np.nan
        slots = np.asarray(slots, dtype=np.int64)
        inside = (slots >= 0) & (slots < self.n)
        safe = np.clip(slots, 0, self.n - 1)
        lead_h = (self.slot_start_ns[safe] - now_ns) / _H_NS
        da = np.where(inside & (self.da.published[safe] <= now_ns), self.da.value[safe], np.nan)
        load = np.where(inside & (self.load.published[safe] <= now_ns), self.load.value[safe], np.nan)
        yday = np.clip(slots - 96, 0, self.n - 1)
        rt_yday = np.where(inside & (slots >= 96) & known[yday], self.rt.value[yday], np.nan)
        n = len(slots)
        return np.column_stack([lead_h, da, load, self.hour_local[safe], self.weekday[safe], np.full(n, rt_last),
                                np.full(n, rt_mean), np.full(n, rt_max), np.full(n, spread), rt_yday])

    @staticmethod
    def _base(X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The naive forecast the model corrects: DA where published, else RT of the same interval
        yesterday, else the last RT price (columns of :data:`FEATURES`)."""
        da, yday, last = X[:, 1], X[:, 9], X[:, 5]
        return np.where(np.isfinite(da), da, np.where(np.isfinite(yday), yday, last))

    def _slots_of(self, times: pd.DatetimeIndex) -> np.ndarray:
        return (_ns(times) - self.origin_ns) // _STEP_NS

    # ------------------------------------------------------------------------------ training
    def _training_set(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        labelled = self.rt.published <= now_ns
        if not labelled.any():
            return np.empty((0, len(FEATURES))), np.empty(0)
        first_ns = max(int(self.slot_start_ns[np.flatnonzero(labelled)[0]]) + 86400 * 10**9,  # a day of history
                       now_ns - int(cfg.train_days * 86400 * 10**9))
        stride = int(cfg.train_stride_h * _H_NS)
        decisions = np.arange(now_ns - stride, first_ns - 1, -stride, dtype=np.int64)[::-1]
        horizon = int(cfg.horizon_h * 4)
        xs, ys = [], []
        for tau in decisions:
            start = int((tau - self.origin_ns) // _STEP_NS)
            slots = np.arange(start, min(start + horizon, self.n))
            slots = slots[labelled[slots]]  # targets published by now (not by tau: that is the label)
            if slots.size == 0:
                continue
            xs.append(self._features(int(tau), slots))
            ys.append(self.rt.value[slots])
        if not xs:
            return np.empty((0, len(FEATURES))), np.empty(0)
        return np.vstack(xs), np.concatenate(ys)

    def _labelled_days(self, now_ns: int) -> float:
        return float((self.rt.published <= now_ns).sum()) * 15 / 1440

    def fit(self, now: pd.Timestamp) -> bool:
        """(Re)fit the quantile models on what was published by ``now``.

        Parameters
        ----------
        now : pandas.Timestamp
            The decision time (aware); nothing published after it is used.

        Returns
        -------
        bool
            False when there is too little history (fewer than ``min_train_days`` of published RT, or
            fewer than 200 training rows).

        Raises
        ------
        ImportError
            scikit-learn or threadpoolctl missing.
        """
        from sklearn.ensemble import HistGradientBoostingRegressor
        from threadpoolctl import threadpool_limits

        now_ns = int(pd.Timestamp(now).value)
        if self._labelled_days(now_ns) < self.config.min_train_days:
            return False
        X, y = self._training_set(now_ns)  # noqa: N806 - the estimator's convention
        cfg = self.config
        if cfg.residual:
            # Trees cannot extrapolate: learning the correction to DA keeps DA's level (a storm's DA at
            # 1,000s) where the training weeks never saw such prices.
            y = y - self._base(X)
            keep = np.isfinite(y)
            X, y = X[keep], y[keep]  # noqa: N806
        if len(y) < 200:
            return False
        # A column with no finite value or a single one (e.g. no load forecast bundled for the month)
        # carries no information, and scikit-learn's binning refuses an all-NaN column: leave it out.
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is the case handled here
            spread = np.nanmax(X, axis=0) - np.nanmin(X, axis=0) if len(X) else np.zeros(X.shape[1])
        self._columns = np.flatnonzero(np.isfinite(spread) & (spread > 0))
        X = X[:, self._columns]  # noqa: N806
        models = {}
        for q in sorted(set(QUANTILES) | {cfg.plan_quantile, cfg.scarcity_quantile}):
            model = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=cfg.max_iter,
                                                  learning_rate=cfg.learning_rate, max_leaf_nodes=cfg.max_leaf_nodes,
                                                  min_samples_leaf=cfg.min_samples_leaf, early_stopping=False,
                                                  random_state=cfg.seed)
            # One OpenMP thread: on a small shared machine (and inside the daemon next to the MILP
            # solver) more threads oversubscribe the cores and fit ~10x slower.
            with threadpool_limits(1):
                models[q] = model.fit(X, y)
        mean_model = None
        if cfg.plan_estimate == "mean":
            # The conditional mean (squared error): what a risk-neutral plan needs. Same trees and seed as the
            # quantile models; its spikes are averaged over min_samples_leaf rows, not dropped as a median drops them.
            mean_model = HistGradientBoostingRegressor(loss="squared_error", max_iter=cfg.max_iter,
                                                       learning_rate=cfg.learning_rate,
                                                       max_leaf_nodes=cfg.max_leaf_nodes,
                                                       min_samples_leaf=cfg.min_samples_leaf, early_stopping=False,
                                                       random_state=cfg.seed)
            with threadpool_limits(1):
                mean_model.fit(X, y)
        self._models, self._mean_model, self._trained_at_ns = models, mean_model, now_ns
        self.fits += 1
        return True

    def fitted(self) -> FittedPriceModel | None:
        """The current fit, to hand to another forecaster (:meth:`adopt`).

        Returns
        -------
        FittedPriceModel or None
            None before a successful :meth:`fit`.
        """
        if self._models is None or self._trained_at_ns is None:
            return None
        return FittedPriceModel(dict(self._models), self._columns.copy(), pd.Timestamp(self._trained_at_ns, tz="UTC"),
                                self.config, self._labelled_days(self._trained_at_ns), self._mean_model)

    def adopt(self, fitted: FittedPriceModel) -> None:
        """Predict with ``fitted`` from now on, and never refit (:attr:`auto_fit` becomes False).

        The forecaster answers only at decision times at or after ``fitted.trained_at`` (an earlier
        decision gets no opinion: the fit may have seen data published after it).

        Parameters
        ----------
        fitted : FittedPriceModel
            From :meth:`fitted` of a forecaster built with the same settings.

        Raises
        ------
        ValueError
            ``fitted`` was made with other settings (``config``).
        """
        if fitted.config != self.config:
            raise ValueError("fitted: made with another PriceModelConfig than this forecaster's config")
        self._models, self._columns = dict(fitted.models), np.asarray(fitted.columns)
        self._mean_model = fitted.mean_model
        self._trained_at_ns = int(fitted.trained_at.value)
        self.auto_fit = False

    def _ensure_model(self, now_ns: int) -> bool:
        """Fit when never fitted or older than ``retrain_h``; never with data newer than ``now``. A
        decision *before* the last fit (a test replaying an earlier time) refits as of that time.
        With an adopted fit (``auto_fit`` False) nothing is fitted: the fit answers from its time on."""
        if not self.auto_fit:
            return self._models is not None and self._trained_at_ns is not None and now_ns >= self._trained_at_ns
        stale = (self._trained_at_ns is None or now_ns < self._trained_at_ns
                 or now_ns - self._trained_at_ns >= self.config.retrain_h * _H_NS)
        if stale:
            self._models, self._mean_model, self._trained_at_ns = None, None, None
            if not self.fit(pd.Timestamp(now_ns, tz="UTC")):
                return False
        return self._models is not None

    # ------------------------------------------------------------------------------ answers
    def scarcity(self, now: pd.Timestamp) -> ScarcityState:
        """The regime at ``now`` from the last ``scarcity_window_h`` of published RT (and their DA).

        Parameters
        ----------
        now : pandas.Timestamp
            Aware.

        Returns
        -------
        ScarcityState
        """
        now_ns = int(pd.Timestamp(now).value)
        recent, _ = self._recent(now_ns)
        window = int(round(self.config.scarcity_window_h * 4))
        recent = recent[-window:]
        recent = recent[self.slot_start_ns[recent] >= now_ns - (window + 4) * _STEP_NS]  # stale RT is not "recent"
        da = np.where(self.da.published[recent] <= now_ns, self.da.value[recent], np.nan)
        return detect_scarcity(self.rt.value[recent], da, self.config)

    def quantiles(self, times: pd.DatetimeIndex, now: pd.Timestamp) -> dict[float, np.ndarray] | None:
        """Forecast quantiles per interval as of ``now`` (refitting when stale).

        Parameters
        ----------
        times : pandas.DatetimeIndex, length n
            Interval starts.
        now : pandas.Timestamp
            Aware decision time.

        Returns
        -------
        dict[float, numpy.ndarray] or None
            quantile -> $/MWh, shape ``(n,)``, sorted per interval (no crossing); None when there is
            not enough history to train.
        """
        now_ns = int(pd.Timestamp(now).value)
        if not self._ensure_model(now_ns):
            return None
        assert self._models is not None
        full = self._features(now_ns, self._slots_of(pd.DatetimeIndex(times)))
        X = full[:, self._columns]  # noqa: N806
        from threadpoolctl import threadpool_limits

        qs = sorted(self._models)
        with threadpool_limits(1):
            stacked = np.vstack([self._models[q].predict(X) for q in qs])
        if self.config.residual:
            stacked = stacked + self._base(full)
        stacked = np.sort(stacked, axis=0)
        return {q: stacked[i] for i, q in enumerate(qs)}

    def mean(self, times: pd.DatetimeIndex, now: pd.Timestamp) -> np.ndarray | None:
        """The conditional mean RT price per interval as of ``now`` (the squared-error model; refitting when stale).

        Parameters
        ----------
        times : pandas.DatetimeIndex, length n
            Interval starts.
        now : pandas.Timestamp
            Aware decision time.

        Returns
        -------
        numpy.ndarray or None
            $/MWh, shape ``(n,)``; None when there is not enough history to train, or when the fit has no
            mean model (``plan_estimate`` is not ``"mean"``).
        """
        now_ns = int(pd.Timestamp(now).value)
        if not self._ensure_model(now_ns) or self._mean_model is None:
            return None
        full = self._features(now_ns, self._slots_of(pd.DatetimeIndex(times)))
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            predicted = self._mean_model.predict(full[:, self._columns])
        return predicted + self._base(full) if self.config.residual else predicted

    def _breakeven_probabilities(self, times: pd.DatetimeIndex, now_ns: int) -> np.ndarray:
        """p* per interval (``plan_estimate="breakeven"``): ``breakeven_probability_near`` for intervals
        starting within ``near_h`` of ``now``, ``breakeven_probability`` after."""
        cfg = self.config
        p = np.full(len(times), cfg.breakeven_probability)
        if cfg.breakeven_probability_near is not None:
            p[(_ns(times) - now_ns) < cfg.near_h * _H_NS] = cfg.breakeven_probability_near
        return p

    def __call__(self, times: pd.DatetimeIndex, snapshot: Snapshot | None, now: pd.Timestamp) -> np.ndarray:
        """The planning price per interval (the ``price_forecaster`` hook of :mod:`hashflex.forecast`).

        P50 (or a mean, or the breakeven-probability price :func:`~hashflex.price_model.config.quantile_at`
        at p*, ``plan_estimate``) in normal times; in a scarcity regime the ``scarcity_quantile``
        price, at least DA, and at least the recent RT mean for ``scarcity_hold_h``. A fault inside the
        model is listed in :attr:`last_fallbacks` (``PRICE_MODEL_UNTRAINED``) and the rules plan.

        Parameters
        ----------
        times : pandas.DatetimeIndex, length n
            Interval starts.
        snapshot : Snapshot or None
            Not read (the forecaster keeps its own, longer history, filtered to ``published_at`` <= ``now``).
        now : pandas.Timestamp
            Aware decision time.

        Returns
        -------
        numpy.ndarray
            Shape ``(n,)``, $/MWh; NaN where it has no opinion.
        """
        cfg = self.config
        now_ts = pd.Timestamp(now).tz_convert("UTC")
        now_ns = int(now_ts.value)
        times = pd.DatetimeIndex(times)
        fallbacks: list[Fallback] = []
        self.last_error = None
        mean = None
        try:
            q = self.quantiles(times, now_ts)
            if q is not None and cfg.plan_estimate == "mean":
                mean = self.mean(times, now_ts)
        except Exception as exc:  # noqa: BLE001 - a model fault must not stop the plan: the rules take over
            q = None
            self.last_error = exc
            fallbacks.append(Fallback(FallbackCode.PRICE_MODEL_UNTRAINED,
                                      f"price: learned model failed ({type(exc).__name__}: {exc}); the rules alone"))
        state = self.scarcity(now_ts)
        self.last_scarcity = state
        if q is None and fallbacks:
            price = np.full(len(times), np.nan)
        elif q is None:
            price = np.full(len(times), np.nan)
            fallbacks.append(Fallback(FallbackCode.PRICE_MODEL_UNTRAINED,
                                      f"price: learned model has {self._labelled_days(now_ns):.1f} day(s) of "
                                      f"published RT history (< {cfg.min_train_days:g}); the rules alone"))
        else:
            if state.active:
                price = q[cfg.scarcity_quantile].copy()
            elif cfg.plan_estimate == "quantile_mean":
                price = np.mean([q[k] for k in QUANTILES], axis=0)
            elif cfg.plan_estimate == "mean" and mean is not None:
                price = mean
            elif cfg.plan_estimate == "breakeven":
                price = quantile_at(q, self._breakeven_probabilities(times, now_ns))
            else:
                price = q[cfg.plan_quantile].copy()
        if state.active:
            slots = self._slots_of(times)
            safe = np.clip(slots, 0, self.n - 1)
            da = np.where((slots >= 0) & (slots < self.n) & (self.da.published[safe] <= now_ns),
                          self.da.value[safe], np.nan)
            price = np.fmax(price, da)  # never below the DA price (fmax: NaN only where both are)
            near = (_ns(times) - now_ns) < cfg.scarcity_hold_h * _H_NS
            floor = state.floor_usd_mwh(cfg.scarcity_floor_follows_last)
            price[near] = np.fmax(price[near], floor)
            what = ("the lower of the recent real-time mean and the last real-time price"
                    if cfg.scarcity_floor_follows_last else "the recent real-time mean")
            fallbacks.append(Fallback(FallbackCode.PRICE_SCARCITY,
                                      f"price: scarcity regime ({state.reason}); planned at the "
                                      f"P{cfg.scarcity_quantile * 100:g} price, at least DA, and at least {what} "
                                      f"({floor:,.0f} $/MWh) for {cfg.scarcity_hold_h:g} h"))
        self.last_fallbacks = fallbacks
        return price
