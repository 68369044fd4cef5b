"""What a forecast is made of and what it gives: the :class:`Snapshot` of published frames, the
:class:`ForecastConfig`, typed :class:`Fallback` codes, and the :class:`Forecast` with its
``to_problem`` bridge to the optimizer.

Seam: the data contract between the inputs, the rules (:mod:`.rules`) and the optimizer; no rule
and no I/O here. Split from ``forecast.py`` (issue 11).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hashflex.optimize.problem import CarbonBudget, GroupState, Problem, problem_from_profile
from hashflex.profile import SiteProfile

__all__ = ["Fallback", "FallbackCode", "Forecast", "ForecastConfig", "PriceForecaster", "SNAPSHOT_COLUMNS", "Snapshot",
           "ScarcityState", "detect_scarcity", "has_fallback"]

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
        """Only rows published at or before ``now`` (the no-look-ahead filter), times as UTC.

        Parameters
        ----------
        now : pd.Timestamp
            The decision time, tz-aware.

        Returns
        -------
        Snapshot
            Every frame filtered to ``published_at <= now``; time columns converted to UTC.

        Raises
        ------
        ValueError
            A frame lacks a column of :data:`SNAPSHOT_COLUMNS` (named ``snapshot.<frame>``) or holds naive
            times (named ``snapshot.<frame>.<column>``).
        """
        out = {}
        for f in dataclasses.fields(self):
            frame = _utc_frame(f.name, getattr(self, f.name))
            out[f.name] = frame[frame["published_at"] <= now].reset_index(drop=True)
        return Snapshot(**out)


def _utc_frame(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (snapshot frame ``name``) checked for its columns, with its time columns as UTC: what
    :meth:`Snapshot.known_at` filters, and what ``RecordedForecaster`` converts once per history (issue 18).
    A frame whose times are all UTC already is returned as it is (no copy).

    Raises
    ------
    ValueError
        A missing column (named ``snapshot.<name>``) or naive times (``snapshot.<name>.<column>``).
    """
    missing = [c for c in SNAPSHOT_COLUMNS[name] if c not in frame.columns]
    if missing:
        raise ValueError(f"snapshot.{name}: missing column(s) {missing}")
    copied = False
    for col in frame.columns:
        if col in ("interval_start", "interval_end", "timestamp", "published_at"):
            dtype = frame[col].dtype
            if isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC":
                continue  # already UTC: nothing to convert (issue 18: the forecast's hot path)
            if pd.api.types.is_datetime64_dtype(frame[col]) and frame[col].dt.tz is None:
                raise ValueError(f"snapshot.{name}.{col}: naive times; a timezone is required")
            if not copied:  # the caller's frame is never changed
                frame, copied = frame.copy(), True
            frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


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
    # Blend the last RT price into intervals a learned price model priced too. Off, the model's own first hour
    # (it has the last RT price and the lead among its features) ran into the 8 May 2024 spike: west_texas
    # May 7-9 2024 mpc/oracle 0.9768 with the blend, 0.9282 without (gap_decompose.py, one run).
    rt_blend_learned: bool = True
    unknown_price_usd_mwh: float = 5000.0
    max_age_renewable_forecast_s: float = 6 * 3600.0
    max_age_renewable_obs_s: float = 1800.0
    persistence_h: float = 1.0
    renewable_history_days: int = 3
    # The diurnal profile of on-site output by local hour (True, the rule before issue 14's H4) instead of by
    # slot of the site's interval (False): an hour's mean is flat through a solar ramp (see forecast/rules.py).
    renewable_profile_hourly: bool = False
    max_age_carbon_s: float = 2 * 3600.0
    carbon_hold_h: float = 1.0
    carbon_profile_days: int = 7
    max_age_hashprice_s: float = 3 * 86400.0
    max_age_noise_s: float = 3600.0
    noise_window_s: float = 86400.0
    noise_ewma_alpha: float = 0.2
    # Scarcity regime (issue 14; Winter Storm Uri): the mean of the RT prices published in the last
    # scarcity_window_h at or above scarcity_rt_usd_mwh, or that mean that far above their DA prices, and the
    # next scarcity_hold_h are planned at no less than that recent RT mean (DA under-predicts scarcity:
    # ERCOT's ORDC adders and shed prices appear in RT only). The learned model applies the same test.
    scarcity_window_h: float = 2.0
    scarcity_rt_usd_mwh: float = 1000.0
    # The RT − DA spread test is off in the rules: measured on Feb 10–12 2020 (west_texas, 3 days,
    # the case of backtest_ratios.py) a 300 $/MWh spread floor cost $10.6k (−1.6 %) after short
    # spikes and bought nothing in Uri, where the absolute test already holds; the learned model keeps it.
    scarcity_spread_usd_mwh: float = math.inf
    scarcity_hold_h: float = 6.0
    # The floor is the lower of the window mean and the last published RT price (ScarcityState.floor_usd_mwh);
    # False: the window mean alone (before; it held the fleet off after a short spike had ended).
    scarcity_floor_follows_last: bool = True


class FallbackCode(enum.StrEnum):
    """What a forecast fell back to (stable codes for code; the sentence is for people)."""

    PRICE_SAME_TIME_YESTERDAY = "price_same_time_yesterday"
    PRICE_UNKNOWN = "price_unknown"  # priced at the curtailment price: the site is then not healthy
    PRICE_RT_STALE = "price_rt_stale"
    PRICE_SCARCITY = "price_scarcity"  # recent RT far above DA: planned at an upper quantile (risk-averse)
    PRICE_MODEL_UNTRAINED = "price_model_untrained"  # learned model lacks history: the rules alone
    PRICE_MODEL_FAILED = "price_model_failed"  # learned model raised or gave no finite price: the rules alone
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
        """A fallback: the sentence ``text`` (the ``str`` value) carrying ``code``.

        Parameters
        ----------
        code : FallbackCode
            The stable code.
        text : str
            The sentence for people.

        Returns
        -------
        Fallback
        """
        made = super().__new__(cls, text)
        made.code = FallbackCode(code)
        return made

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (the solver worker, multiprocessing)
        return (Fallback, (self.code, str(self)))


def has_fallback(fallbacks: Any, code: FallbackCode) -> bool:
    """True when ``fallbacks`` (a Forecast's, or any sequence) holds one with ``code``.

    Parameters
    ----------
    fallbacks : sequence of Fallback, or None
        Typically :attr:`Forecast.fallbacks`; plain strings never match.
    code : FallbackCode
        The code to look for.

    Returns
    -------
    bool
    """
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

    @property
    def forecast_source(self) -> str:
        """``learned`` when a learned price hook priced any interval of the horizon, else ``rules``.

        What ``/status`` and the stored schedule state (``forecast_source``): the daemon plans on its
        rules until the learned model (:mod:`hashflex.price_model`) has a fit, and on any model error.
        """
        return "learned" if any(s.startswith("learned") for s in self.price_source) else "rules"

    def to_problem(
        self,
        profile: SiteProfile,
        *,
        initial: dict[str, GroupState] | None = None,
        units_available: dict[str, np.ndarray] | None = None,
        carbon_budgets: tuple[CarbonBudget, ...] | None = None,
        four_cp_alert_days: set[pd.Timestamp] | None = None,
    ) -> Problem:
        """The optimizer's input: these arrays through :func:`problem_from_profile`.

        Parameters
        ----------
        profile : SiteProfile
            The site.
        initial : dict of str to GroupState, optional
            Per miner group: units on and minimum on/off times carried over (commitment state).
        units_available : dict of str to ndarray, optional
            Per miner group: units available per interval, shape (T,).
        carbon_budgets : tuple of CarbonBudget, optional
            Remaining daily/monthly carbon budgets over the horizon, kg CO2.
        four_cp_alert_days : set of pd.Timestamp, optional
            Site-local days with a 4CP alert (the profile's 4CP window limit applies).

        Returns
        -------
        hashflex.optimize.problem.Problem
            T intervals from :attr:`interval_start`.
        """
        return problem_from_profile(
            profile, self.interval_start, self.price_usd_mwh,
            renewable_kw=self.renewable_kw, import_limit_kw=self.import_limit_kw,
            import_limit_source=list(self.import_limit_source),
            intensity_kg_per_mwh=self.intensity_kg_per_mwh, hashprice_usd_per_ph_day=self.hashprice_usd_per_ph_day,
            units_available=units_available, initial=initial, noise_margin_db=self.noise_margin_db,
            carbon_budgets=carbon_budgets, four_cp_alert_days=four_cp_alert_days,
        )


@dataclass(frozen=True)
class ScarcityState:
    """The price regime at a decision time, from published RT (and DA) prices only.

    Attributes
    ----------
    active : bool
        True in a scarcity regime.
    rt_mean_usd_mwh : float
        Mean of the last window of published RT prices, $/MWh (NaN: none published).
    spread_usd_mwh : float
        Mean RT − DA over that window, $/MWh (NaN where DA is unknown).
    reason : str
        Why, for people.
    """

    active: bool
    rt_mean_usd_mwh: float
    spread_usd_mwh: float
    reason: str
    rt_last_usd_mwh: float = math.nan

    def floor_usd_mwh(self, follow_last: bool = True) -> float:
        """The price the near term is planned at no less than in this regime, $/MWh.

        ``follow_last`` (the default): the lower of the window mean and the last published RT price, so
        the floor falls with the price as soon as a spike ends. Measured on 7-9 May 2024 (HB_HUBAVG, a
        normal month): the window mean alone held the fleet off for an hour after a 2-hour evening spike
        (RT back at 35-83 $/MWh, the 2-hour mean still above 1,000) and cost the MPC about $1.4k, 0.9 % of
        the oracle; in Winter Storm Uri the last price stayed at the cap, so the floor is the same there.
        False: the window mean alone (the rule before).
        """
        if follow_last and math.isfinite(self.rt_last_usd_mwh):
            return min(self.rt_mean_usd_mwh, self.rt_last_usd_mwh)
        return self.rt_mean_usd_mwh


def detect_scarcity(rt_recent_usd_mwh: np.ndarray, da_recent_usd_mwh: np.ndarray, *, rt_threshold_usd_mwh: float,
                    spread_threshold_usd_mwh: float) -> ScarcityState:
    """Scarcity regime from the last window of published RT prices and the DA prices of the same intervals.

    Parameters
    ----------
    rt_recent_usd_mwh, da_recent_usd_mwh : np.ndarray
        [n] $/MWh, oldest first, the same intervals; DA may hold NaN (or be empty).
    rt_threshold_usd_mwh : float
        A recent RT mean at or above this is scarcity (ERCOT's ORDC adders lift RT in scarcity).
    spread_threshold_usd_mwh : float
        A recent mean RT − DA at or above this is scarcity (the day-ahead market did not see it coming).

    Returns
    -------
    ScarcityState
    """
    raw = np.asarray(rt_recent_usd_mwh, dtype=float)
    rt = raw[np.isfinite(raw)]
    if rt.size == 0:
        return ScarcityState(False, math.nan, math.nan, "no recent real-time price")
    mean = float(rt.mean())
    last = float(rt[-1])
    da = np.asarray(da_recent_usd_mwh, dtype=float)[-raw.size:] if len(da_recent_usd_mwh) else np.array([])
    pairs = raw[-da.size:] - da if da.size else np.array([])
    spread = float(np.nanmean(pairs)) if pairs.size and np.isfinite(pairs).any() else math.nan
    if mean >= rt_threshold_usd_mwh:
        return ScarcityState(True, mean, spread, f"recent real-time mean {mean:,.0f} $/MWh >= {rt_threshold_usd_mwh:,.0f}",
                             last)
    if math.isfinite(spread) and spread >= spread_threshold_usd_mwh:
        return ScarcityState(True, mean, spread, f"recent real-time {spread:,.0f} $/MWh above day-ahead >= "
                                                 f"{spread_threshold_usd_mwh:,.0f}", last)
    return ScarcityState(False, mean, spread, "normal", last)
