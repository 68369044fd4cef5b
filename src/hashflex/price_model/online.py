"""The learned price model in the daemon: fitted in a background thread on the price history the site
has stored, used by the tick once fitted, the rules otherwise (:class:`OnlinePriceModel`).

Why a separate object: :class:`~hashflex.price_model.forecaster.LearnedPriceForecaster` refits inside
the call when its fit is stale, which is right for a backtest (deterministic, the clock waits) and wrong
for a daemon, where a tick must never wait seconds for scikit-learn. Here the tick only predicts with
the last fit (:class:`~hashflex.price_model.forecaster.FittedPriceModel`) over the tick's own snapshot
(already filtered to what was published by ``now``), and training runs in one background thread:

- **when**: at the first tick, then daily at ``RetrainSchedule.local_time`` (13:30 Central by default:
  ERCOT publishes the day-ahead market results, NP4-190, around 13:00 Central, so the fit sees
  tomorrow's DA prices as the features of the next day's decisions); after too little history or a
  failed fit, again ``retry_h`` later;
- **on what**: ``history(τ)``, the stored prices *published by τ* (the fit's decision time), over the
  last ``train_days`` (+ 2 days of DA ahead): :func:`store_price_history` reads the daemon's store with
  ``as_of=τ``, :func:`recorded_price_history` filters a recorded frame (``run --simulate``);
- **used**: from the first tick at or after the fit's time ``τ`` (never before: no look-ahead), while
  the fit is younger than ``max_model_age_h``; otherwise no opinion (NaN) and the rules plan
  (:mod:`hashflex.forecast`: DA, yesterday, the scarcity floor), stated as ``forecast_source`` ``rules``
  with the reason in :meth:`OnlinePriceModel.status`.
- **faults**: a fit that raises keeps the previous fit (if young enough) and is counted
  (``price_model_fit_failures``); a prediction that raises or returns a non-finite price makes that
  tick plan on the rules, listed as :attr:`~hashflex.forecast.FallbackCode.PRICE_MODEL_FAILED` and
  counted (``price_model_failures``). The counters go to ``/metrics`` as
  ``hashflex_events_total{counter=...}``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hashflex.forecast import Fallback, FallbackCode, Snapshot
from hashflex.price_model.config import PriceModelConfig
from hashflex.price_model.forecaster import FittedPriceModel, LearnedPriceForecaster

if TYPE_CHECKING:
    from hashflex.store import Store

__all__ = ["OnlinePriceModel", "PriceHistory", "RetrainSchedule", "recorded_price_history", "store_price_history"]

log = logging.getLogger(__name__)

PriceHistory = Callable[[pd.Timestamp, pd.Timedelta], pd.DataFrame]
"""(as_of, lookback) → canonical price frame with ``published_at``: the rows published by ``as_of`` whose
interval starts from ``as_of − lookback`` on (DA rows ahead of ``as_of`` included)."""


def store_price_history(store: Store, settlement_point: str) -> PriceHistory:
    """The daemon's stored prices at the site's point, as known at a time (``Store.prices(as_of=...)``).

    Parameters
    ----------
    store : hashflex.store.Store
        The daemon's store (reads are safe from any thread: one reader connection per thread).
    settlement_point : str
        The site's settlement point.

    Returns
    -------
    PriceHistory
        ``history(as_of, lookback)``: rows with ``published_at`` ≤ ``as_of``, intervals from
        ``as_of − lookback`` to ``as_of + 3 days``.
    """

    def history(as_of: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame:
        as_of = pd.Timestamp(as_of).tz_convert("UTC")
        return store.prices((as_of - lookback).to_pydatetime(), (as_of + pd.Timedelta(days=3)).to_pydatetime(),
                            settlement_point=settlement_point, as_of=as_of.to_pydatetime(), with_published_at=True)

    return history


def recorded_price_history(prices: pd.DataFrame) -> PriceHistory:
    """A recorded price frame as the site would have stored it: each row from its ``published_at`` on.

    Parameters
    ----------
    prices : pandas.DataFrame
        Canonical price frame, optionally with ``published_at`` (default: ERCOT's publication times,
        :func:`hashflex.feeds.ercot.publication_times`).

    Returns
    -------
    PriceHistory
    """
    from hashflex.feeds.ercot import publication_times

    frame = prices.copy()
    if "published_at" not in frame.columns:
        frame["published_at"] = publication_times(frame)
    frame["published_at"] = pd.to_datetime(frame["published_at"], utc=True)
    frame["interval_start"] = pd.to_datetime(frame["interval_start"], utc=True)
    frame["interval_end"] = pd.to_datetime(frame["interval_end"], utc=True)
    frame = frame.sort_values("published_at", kind="stable").reset_index(drop=True)
    published = pd.DatetimeIndex(frame["published_at"])

    def history(as_of: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame:
        as_of = pd.Timestamp(as_of).tz_convert("UTC")
        known = frame.iloc[:published.searchsorted(as_of, "right")]
        return known[known["interval_start"] >= as_of - lookback].reset_index(drop=True)

    return history


def _known(load_forecast: Any, now: pd.Timestamp, lookback: pd.Timedelta) -> pd.DataFrame | None:
    """The load forecast frame as known at ``now``: a frame as given, or a reader's answer
    (:func:`hashflex.feeds.load_forecast.store_load_forecast_history`, the daemon's store)."""
    return load_forecast(now, lookback) if callable(load_forecast) else load_forecast


@dataclass(frozen=True)
class RetrainSchedule:
    """When the daemon refits the learned price model (times local to ``timezone``).

    Attributes
    ----------
    local_time : str
        Daily refit time, ``HH:MM`` (default 13:30: after ERCOT's DAM results, NP4-190, ~13:00 Central).
    timezone : str
        Of ``local_time`` (ERCOT publishes on Central time).
    retry_h : float
        After a fit that found too little history or failed: try again this much later (h).
    max_model_age_h : float
        A fit older than this is not used (the rules plan): a day of missed refits is tolerated, a week not.
    """

    local_time: str = "13:30"
    timezone: str = "America/Chicago"
    retry_h: float = 1.0
    max_model_age_h: float = 72.0

    def __post_init__(self) -> None:
        """Check the fields.

        Raises
        ------
        ValueError
            ``local_time`` is not ``HH:MM``, or ``retry_h`` / ``max_model_age_h`` is not positive (named).
        """
        try:
            time.fromisoformat(self.local_time)
        except ValueError:
            raise ValueError(f"local_time {self.local_time!r}: expected HH:MM") from None
        for name in ("retry_h", "max_model_age_h"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} {getattr(self, name)!r}: must be > 0 hours")

    def last_due(self, now: pd.Timestamp) -> pd.Timestamp:
        """The latest scheduled refit time at or before ``now`` (UTC).

        Parameters
        ----------
        now : pandas.Timestamp
            Aware.

        Returns
        -------
        pandas.Timestamp
        """
        local = pd.Timestamp(now).tz_convert(self.timezone)
        at = time.fromisoformat(self.local_time)
        today = pd.Timestamp(datetime.combine(local.date(), at)).tz_localize(self.timezone, ambiguous=True,
                                                                           nonexistent="shift_forward")
        due = today if today <= local else (
            pd.Timestamp(datetime.combine(local.date() - timedelta(days=1), at)).tz_localize(
                self.timezone, ambiguous=True, nonexistent="shift_forward"))
        return due.tz_convert("UTC")


class OnlinePriceModel:
    """The learned price model as the daemon's ``price_forecaster`` hook: fitted in the background on
    stored history, used once fitted, the rules otherwise (module docstring).

    Parameters
    ----------
    history : PriceHistory
        The stored prices as known at a time (:func:`store_price_history`, :func:`recorded_price_history`).
    settlement_point : str
        The site's point.
    timezone : str
        The site's time zone (the model's hour and weekday features).
    config : PriceModelConfig, optional
        The model's settings (default ``PriceModelConfig()``); ``train_days`` + 2 days of history are read.
    schedule : RetrainSchedule, optional
        When to refit (default daily at 13:30 Central).
    background : bool, default True
        Fit in a background thread (the daemon); False: fit inside the call that finds a fit due
        (deterministic: tests, replays).
    load_forecast : pandas.DataFrame or callable, optional
        ERCOT's system load forecast (see :class:`LearnedPriceForecaster`), or a reader ``(as_of, lookback) ->
        frame`` asked at each fit and prediction (the daemon's store:
        :func:`hashflex.feeds.load_forecast.store_load_forecast_history`); None: the feature is left out.

    Raises
    ------
    ImportError
        scikit-learn is not installed (``pip install 'hashflex[forecast]'``).

    Calling it ``(times, snapshot, now)`` returns $/MWh per interval start (NaN: no opinion, the rules
    plan); :attr:`last_fallbacks` holds that call's fallbacks, :attr:`last_source` ``learned`` or
    ``rules``, :attr:`counters` the fits, fit failures, prediction failures and ticks per source.
    """

    replaces_day_ahead = True
    source_label = "learned"

    def __init__(self, history: PriceHistory, settlement_point: str, timezone: str, *,
                 config: PriceModelConfig | None = None, schedule: RetrainSchedule | None = None,
                 background: bool = True, load_forecast: Any = None) -> None:
        try:
            import sklearn  # noqa: F401
            import threadpoolctl  # noqa: F401
        except ImportError as exc:
            raise ImportError("the learned price model needs scikit-learn: pip install 'hashflex[forecast]'") from exc
        self.history = history
        self.settlement_point = settlement_point
        self.timezone = timezone
        self.config = config or PriceModelConfig()
        self.schedule = schedule or RetrainSchedule()
        self.background = background
        self.load_forecast = load_forecast
        self.lookback = pd.Timedelta(days=self.config.train_days + 2)
        self._lock = threading.Lock()
        self._fitted: FittedPriceModel | None = None
        self._thread: threading.Thread | None = None
        self._last_attempt: pd.Timestamp | None = None
        self._last_attempt_ok = False
        self.last_fallbacks: list[Fallback] = []
        self.last_source = "rules"
        self.last_reason = "no tick yet"
        self.last_fit_error: str | None = None
        self.short_history: str | None = None  # why the last attempt found too little history
        self.last_predict_error: str | None = None
        self.counters: dict[str, int] = {"price_model_fits": 0, "price_model_fit_failures": 0,
                                         "price_model_failures": 0, "price_model_learned_ticks": 0,
                                         "price_model_rules_ticks": 0}

    # ------------------------------------------------------------------------------ training
    @property
    def fitted(self) -> FittedPriceModel | None:
        """The fit in use (None: none yet)."""
        return self._fitted

    @property
    def training(self) -> bool:
        """True while a background fit runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def due(self, now: pd.Timestamp) -> bool:
        """Whether a fit is due at ``now``: none yet (retrying ``retry_h`` after a failed or short attempt),
        or the last fit is older than the latest scheduled refit time.

        Parameters
        ----------
        now : pandas.Timestamp
            Aware decision time.

        Returns
        -------
        bool
        """
        now = pd.Timestamp(now).tz_convert("UTC")
        attempt = self._last_attempt
        if attempt is not None and now < attempt:  # a replay of an earlier time: not a reason to refit
            return False
        retry_ok = attempt is None or now - attempt >= pd.Timedelta(hours=self.schedule.retry_h)
        if attempt is not None and not self._last_attempt_ok:
            return retry_ok
        fitted = self._fitted
        if fitted is None:
            return retry_ok
        return fitted.trained_at < self.schedule.last_due(now) <= now

    def train(self, now: pd.Timestamp) -> bool:
        """Fit now, on the history published by ``now`` (blocking; the background thread calls this).

        Parameters
        ----------
        now : pandas.Timestamp
            Aware; the fit's decision time: nothing published after it is read.

        Returns
        -------
        bool
            True when a new fit is in use; False with too little history or a failed fit (the previous
            fit stays; a failure is counted and logged).
        """
        now = pd.Timestamp(now).tz_convert("UTC")
        ok = False
        try:
            frame = self.history(now, self.lookback)
            rt = frame[frame["market"] == "RT"] if len(frame) else frame
            if rt.empty:
                self.last_fit_error = None
                self._note_short(now, "no real-time price history stored yet")
            else:
                model = LearnedPriceForecaster(frame, self.settlement_point, self.timezone,
                                               load_forecast=_known(self.load_forecast, now, self.lookback), config=self.config)
                if model.fit(now) and (fitted := model.fitted()) is not None:
                    with self._lock:
                        self._fitted = fitted
                    self.counters["price_model_fits"] += 1
                    self.last_fit_error, self.short_history = None, None
                    ok = True
                    log.info("price model fitted at %s on %.1f day(s) of history", now, fitted.labelled_days)
                else:
                    self._note_short(now, f"{model._labelled_days(int(now.value)):.1f} day(s) of real-time "
                                          f"history (< {self.config.min_train_days:g} needed)")
        except Exception as exc:  # noqa: BLE001 - a failed fit must not stop control: keep the old fit or the rules
            self.counters["price_model_fit_failures"] += 1
            self.last_fit_error = f"{type(exc).__name__}: {exc}"
            log.warning("price model fit at %s failed: %s", now, self.last_fit_error)
        with self._lock:
            self._last_attempt, self._last_attempt_ok = now, ok
        return ok

    def _note_short(self, now: pd.Timestamp, why: str) -> None:
        self.short_history = f"{why} at {now.isoformat()}"

    def request_training(self, now: pd.Timestamp) -> bool:
        """Start a fit at ``now`` if none is running: in the background thread, or inline when
        ``background`` is False.

        Parameters
        ----------
        now : pandas.Timestamp
            Aware.

        Returns
        -------
        bool
            True when a fit was started (or, inline, ran).
        """
        with self._lock:
            if self.training:
                return False
            if not self.background:
                self._thread = None
            else:
                # Marked as attempted now, so the ticks until it ends do not start another.
                self._last_attempt, self._last_attempt_ok = pd.Timestamp(now).tz_convert("UTC"), True
                self._thread = threading.Thread(target=self.train, args=(now,), name="hashflex-price-model",
                                                daemon=True)
                self._thread.start()
                return True
        self.train(now)
        return True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a running background fit (tests, shutdown).

        Parameters
        ----------
        timeout_s : float, optional
            Seconds; None: as long as it takes.

        Returns
        -------
        bool
            True when no fit is running any more.
        """
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        return not self.training

    # ------------------------------------------------------------------------------ answers
    def _rules(self, n: int, code: FallbackCode, reason: str) -> np.ndarray:
        self.last_source, self.last_reason = "rules", reason
        self.last_fallbacks = [Fallback(code, f"price: {reason}; the rules alone")]
        self.counters["price_model_rules_ticks"] += 1
        return np.full(n, np.nan)

    def _predictor(self, fitted: FittedPriceModel, snapshot: Snapshot | None,
                   now: pd.Timestamp) -> LearnedPriceForecaster | None:
        """A forecaster over the prices published by ``now`` (the snapshot's, else ``history``) predicting
        with ``fitted``; None when no RT price is among them."""
        prices = snapshot.prices if snapshot is not None else self.history(now, pd.Timedelta(days=3))
        prices = prices[(pd.to_datetime(prices["published_at"], utc=True) <= now)
                        & (prices["settlement_point"] == self.settlement_point)]
        if not (prices["market"] == "RT").any():
            return None
        predictor = LearnedPriceForecaster(prices, self.settlement_point, self.timezone,
                                           load_forecast=_known(self.load_forecast, now, pd.Timedelta(days=3)), config=self.config)
        predictor.adopt(fitted)
        return predictor

    def quantiles(self, times: pd.DatetimeIndex, now: pd.Timestamp,
                  snapshot: Snapshot | None = None) -> dict[float, np.ndarray] | None:
        """Forecast quantiles per interval with the fit in use (no fit is started here; for scoring).

        Parameters
        ----------
        times : pandas.DatetimeIndex, length n
            Interval starts.
        now : pandas.Timestamp
            Aware decision time.
        snapshot : Snapshot, optional
            Its prices (else ``history(now)``), filtered to ``published_at`` ≤ ``now``.

        Returns
        -------
        dict[float, numpy.ndarray] or None
            quantile -> $/MWh, shape ``(n,)``; None without a fit usable at ``now``.
        """
        now_ts = pd.Timestamp(now).tz_convert("UTC")
        fitted = self._fitted
        if fitted is None or fitted.trained_at > now_ts:
            return None
        predictor = self._predictor(fitted, snapshot, now_ts)
        return None if predictor is None else predictor.quantiles(pd.DatetimeIndex(times), now_ts)

    def __call__(self, times: pd.DatetimeIndex, snapshot: Snapshot | None, now: pd.Timestamp) -> np.ndarray:
        """The planning price per interval (the ``price_forecaster`` hook of :mod:`hashflex.forecast`).

        Starts a fit when one is due (:meth:`due`), then predicts with the fit in use over the prices of
        ``snapshot`` published by ``now`` (or, without a snapshot, ``history(now)``).

        Parameters
        ----------
        times : pandas.DatetimeIndex, length n
            Interval starts.
        snapshot : Snapshot or None
            What the forecast knows at ``now`` (its prices are filtered to ``published_at`` ≤ ``now`` again here).
        now : pandas.Timestamp
            Aware decision time.

        Returns
        -------
        numpy.ndarray
            Shape ``(n,)``, $/MWh; all NaN (no opinion: the rules plan) without a usable fit or on a model error.
        """
        now_ts = pd.Timestamp(now).tz_convert("UTC")
        times = pd.DatetimeIndex(times)
        if self.due(now_ts):
            self.request_training(now_ts)
        fitted = self._fitted
        if fitted is None:
            why = self.short_history or ("first fit running" if self.training else "not fitted yet")
            if self.last_fit_error:
                why = f"fit failed ({self.last_fit_error})"
            return self._rules(len(times), FallbackCode.PRICE_MODEL_UNTRAINED, f"learned model not in use: {why}")
        if fitted.trained_at > now_ts:
            return self._rules(len(times), FallbackCode.PRICE_MODEL_UNTRAINED,
                               f"learned model fitted at {fitted.trained_at.isoformat()}, after this decision")
        age_h = (now_ts - fitted.trained_at).total_seconds() / 3600.0
        if age_h > self.schedule.max_model_age_h:
            return self._rules(len(times), FallbackCode.PRICE_MODEL_UNTRAINED,
                               f"learned model is {age_h:.0f} h old (> {self.schedule.max_model_age_h:g} h)")
        try:
            predictor = self._predictor(fitted, snapshot, now_ts)
            if predictor is None:
                return self._rules(len(times), FallbackCode.PRICE_MODEL_UNTRAINED,
                                   "learned model not in use: no real-time price published recently")
            price = np.asarray(predictor(times, snapshot, now_ts), dtype=float)
            if predictor.last_error is not None:
                raise predictor.last_error
            if price.shape != (len(times),) or not np.isfinite(price).all():
                bad = int((~np.isfinite(price)).sum()) if price.shape == (len(times),) else len(times)
                raise ValueError(f"price: {bad} non-finite value(s) of {len(times)} from the learned model")
        except Exception as exc:  # noqa: BLE001 - any model error: the rules plan this tick, counted
            self.counters["price_model_failures"] += 1
            self.last_predict_error = f"{type(exc).__name__}: {exc}"
            log.warning("learned price model failed at %s: %s; the rules plan", now_ts, self.last_predict_error)
            return self._rules(len(times), FallbackCode.PRICE_MODEL_FAILED,
                               f"learned model failed ({self.last_predict_error})")
        self.last_source = "learned"
        self.last_reason = (f"fitted at {fitted.trained_at.isoformat()} on {fitted.labelled_days:.1f} day(s) "
                            "of real-time history")
        self.last_fallbacks = list(predictor.last_fallbacks)
        self.counters["price_model_learned_ticks"] += 1
        return price

    def status(self) -> dict[str, Any]:
        """What ``/status`` says of the price model.

        Returns
        -------
        dict
            ``forecast_source`` (``learned`` or ``rules``, of the last tick), ``reason``, ``trained_at`` (ISO or
            None), ``history_days`` of the fit, ``training`` (a fit running), ``last_fit_error``,
            ``last_predict_error``, ``counters``.
        """
        fitted = self._fitted
        return {"forecast_source": self.last_source, "reason": self.last_reason,
                "trained_at": None if fitted is None else fitted.trained_at.isoformat(),
                "history_days": None if fitted is None else round(fitted.labelled_days, 2),
                "training": self.training, "retrain_local_time": f"{self.schedule.local_time} {self.schedule.timezone}",
                "last_fit_error": self.last_fit_error, "last_predict_error": self.last_predict_error,
                "counters": dict(self.counters)}

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for a running fit (its thread is a daemon thread: it never blocks exit).

        Parameters
        ----------
        timeout_s : float
            Seconds.
        """
        self.wait(timeout_s)
