"""What really happened over a backtest window, and the one accounting of any policy against it.

``load_prices`` reads every price file for the site's settlement point; ``build_actuals`` fixes
what really happened over the backtest window: real-time prices (what the site is settled at),
on-site renewable output (a recorded file, or the SYNTHETIC clear-sky shape the simulator uses,
labelled so), DR import limits, the settled hashprice and, for ``mpc+as``, the day-ahead AS
clearing prices. ``account`` turns any policy's per-interval unit counts into money, energy,
emissions and noise with the *actual* prices, through the optimizer's own
``schedule_from_counts``: the same formulas for every policy, so none is flattered.

(Split out of ``backtest.runner``, issue 11; ``runner`` re-exports every name for old imports.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hashflex.control.dr import DRBook
from hashflex.feeds.ercot import read_price_file
from hashflex.frames import time_weighted_mean
from hashflex.messages import DREventMessage
from hashflex.plan import renewables_on_grid
from hashflex.optimize.problem import GroupState, Problem, problem_from_profile
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, schedule_from_counts
from hashflex.profile import SiteProfile
from hashflex.sim.site import clear_sky_solar_kw

__all__ = ["Actuals", "Counts", "account", "actual_problem", "build_actuals", "load_prices"]

Counts = dict[tuple[int, int], np.ndarray]


def load_prices(profile: SiteProfile, paths: Sequence[str | Path], day_ahead: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Every price file for the profile's settlement point, concatenated into one canonical frame.

    An ``RTM-*.csv`` without a day-ahead file given picks up the ``DAM-*.csv`` beside it, as
    ``hashflex run --simulate`` does. A file passed as day-ahead is read as day-ahead.

    Parameters
    ----------
    profile : SiteProfile
        Its ``site.settlement_point`` (and type) selects the rows.
    paths : sequence of path
        Price files in any format ``feeds.ercot.read_price_file`` parses (RT and/or DA).
    day_ahead : sequence of path, optional
        Day-ahead price files (ERCOT NP4-190-CD shape or a simple CSV, labelled DA).

    Returns
    -------
    pd.DataFrame
        Canonical price frame (``frames.PRICE_COLUMNS``), one row per (market, interval_start),
        the last file winning; ``attrs["notes"]`` lists what the readers dropped.

    Raises
    ------
    ValueError
        No price for the settlement point, or a file the reader refuses (naming its line).
    """
    frames = []
    paths = [Path(p) for p in paths]
    day_ahead = [Path(p) for p in day_ahead]
    if not day_ahead:
        for path in paths:
            sibling = path.with_name(path.name.replace("RTM-", "DAM-"))
            if path.name.startswith("RTM-") and sibling.exists():
                day_ahead.append(sibling)
    notes: list[str] = []
    for path, market in [*((p, None) for p in paths), *((p, "DA") for p in day_ahead)]:
        # A file passed as day-ahead is day-ahead: a simple CSV without a market column is labelled
        # DA, and an ERCOT real-time report given there is refused (it used to be read as RT and
        # then overwrote the real-time prices in the de-duplication below).
        frame = read_price_file(path, settlement_point=profile.site.settlement_point,
                                settlement_point_type=profile.site.settlement_point_type, market=market)
        notes += frame.attrs.get("notes", [])
        report = frame.attrs.get("duplicates")
        if report:
            notes.append(f"{path}: {report.identical_rows_dropped} identical and {report.conflicting_rows_dropped} "
                         f"conflicting duplicate row(s) dropped (the last row of each kept)")
        frames.append(frame)
    prices = pd.concat(frames, ignore_index=True)
    if prices.empty:
        raise ValueError(f"no prices for {profile.site.settlement_point} in {', '.join(map(str, paths))}")
    prices = prices.drop_duplicates(["market", "interval_start"], keep="last").reset_index(drop=True)
    prices.attrs["notes"] = notes
    return prices


@dataclass(frozen=True)
class Actuals:
    """What really happened over the backtest window, one entry per base interval.

    Attributes
    ----------
    index : pd.DatetimeIndex
        [T] UTC interval starts on the profile's grid.
    price_usd_mwh : np.ndarray
        [T] settled real-time price, $/MWh (time-weighted mean of finer prices, Nodal Protocols §6.6.1).
    renewable_kw : np.ndarray
        [T] on-site renewable output, kW.
    renewable_synthetic : bool
        True when ``renewable_kw`` is the SYNTHETIC clear-sky shape.
    import_limit_kw : np.ndarray
        [T] DR import limits, kW (inf where none); ``import_limit_source`` their labels.
    prices : pd.DataFrame
        The whole price history (RT and DA) the forecaster replays.
    hashprice_usd_per_ph_day : np.ndarray or None
        [T] settlement hashprice ($/PH/day, that UTC day's value); None: the profile's constant.
    as_market : pd.DataFrame or None
        Hourly AS clearing prices for ``mpc+as`` (``ancillary.load_hourly_market`` shape: UTC hour
        index; ``da_usd_mwh``, ``rt_usd_mwh``, ``RRS``, ``ECRS``, ``NSPIN`` in $/MW-h); None: no AS market.
    """

    index: pd.DatetimeIndex  # UTC interval starts
    price_usd_mwh: np.ndarray  # settled real-time price
    renewable_kw: np.ndarray
    renewable_synthetic: bool
    import_limit_kw: np.ndarray  # DR limits (inf where none)
    import_limit_source: tuple[str, ...]
    prices: pd.DataFrame  # the whole price history (RT and DA) the forecaster replays
    renewables: pd.Series | None = None  # the recorded on-site output as given (None: synthetic)
    dr_events: tuple[DREventMessage, ...] = ()
    notes: tuple[str, ...] = ()
    # Settlement hashprice per interval ($/PH/day, that UTC day's value; None: the profile's constant)
    # and the daily series it came from (the forecast sees day D's row only after D ends).
    hashprice_usd_per_ph_day: np.ndarray | None = None
    hashprice: pd.DataFrame | None = None
    # Issue 15: the hourly day-ahead AS clearing prices (MCPC) that mpc+as is awarded and settled at.
    as_market: pd.DataFrame | None = None

    @property
    def days(self) -> float:
        """Length of the window in days."""
        return len(self.index) * float(self.step / pd.Timedelta(days=1))

    @property
    def step(self) -> pd.Timedelta:
        """The base interval (the profile's ``interval_minutes``)."""
        return pd.Timedelta(self.index.freq) if self.index.freq else self.index[1] - self.index[0]


def _local_midnight(day: pd.Timestamp | str, profile: SiteProfile) -> pd.Timestamp:
    stamp = pd.Timestamp(day)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(profile.site.timezone)
    return stamp.tz_convert("UTC")


def build_actuals(profile: SiteProfile, prices: pd.DataFrame, start: pd.Timestamp | str | None = None,
                  end: pd.Timestamp | str | None = None, *, renewables: pd.Series | None = None,
                  dr_events: Iterable[DREventMessage] = (), hashprice: pd.DataFrame | None = None,
                  as_market: pd.DataFrame | None = None) -> Actuals:
    """What really happened over the window [start, end) on the profile's interval grid.

    Parameters
    ----------
    profile : SiteProfile
    prices : pd.DataFrame
        Canonical price frame (:func:`load_prices`); its RT rows settle the site.
    start, end : timestamp or str, optional
        A naive date is local midnight. Default: from the second full local day of real-time
        prices (so the forecast has a day of published history) to the end of the last full day.
    renewables : pd.Series, optional
        Recorded on-site output, kW, by time; default the SYNTHETIC clear-sky shape (labelled).
    dr_events : iterable of DREventMessage
        Replayed through a DR book to the per-interval import limits.
    hashprice : pd.DataFrame, optional
        Daily series (``feeds.hashprice.bundled_hashprice`` shape): each interval is settled at its
        UTC day's hashprice and the mpc forecast sees each day's value once published. Without it
        every policy is settled at the profile's constant ``hashprice_usd_per_ph_day``.
    as_market : pd.DataFrame, optional
        Hourly AS clearing prices (``ancillary.load_hourly_market``) for the ``mpc+as`` policy; it
        must cover every hour of the window and the day before (the offers' information).

    Returns
    -------
    Actuals

    Raises
    ------
    ValueError
        An empty window, RT prices not covering it, a day the hashprice series lacks (message
        starts ``hashprice:``), or AS prices not covering the window (starts ``as_market:``).
    """
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    rt = prices[prices["market"] == "RT"].sort_values("interval_start")
    if rt.empty:
        raise ValueError("no real-time prices: a backtest settles at the RT price")
    first, last = rt["interval_start"].min(), rt["interval_end"].max()
    if start is None:  # the second full local day: the forecast gets a day of published history
        first_local = first.tz_convert(profile.tz)
        start = first_local.normalize() + pd.Timedelta(days=1 if first_local == first_local.normalize() else 2)
    if end is None:
        end = last.tz_convert(profile.tz).floor("D")
    start, end = _local_midnight(start, profile), _local_midnight(end, profile)
    if end <= start:
        raise ValueError(f"empty window: {start.isoformat()} .. {end.isoformat()}")
    index = pd.date_range(start, end, freq=step, inclusive="left")
    rt = rt.drop_duplicates("interval_start", keep="last")
    # RT may be finer than the grid (5-minute SCED prices): each interval settles at the
    # time-weighted mean of the prices inside it, as ERCOT settles (Nodal Protocols §6.6.1).
    price = pd.Series(time_weighted_mean(rt["interval_start"], rt["interval_end"], rt["price_usd_mwh"], index, step),
                      index=index)
    notes = []
    outside = (index < first) | (index >= last)
    if outside.any():
        raise ValueError(f"real-time prices cover {first.isoformat()} .. {last.isoformat()}, not the whole window "
                         f"{start.isoformat()} .. {end.isoformat()}")
    if price.isna().any():
        notes.append(f"{int(price.isna().sum())} intervals without an RT price: the previous price is carried")
        price = price.ffill().bfill()
    solar_kw = sum(r.capacity_kw for r in profile.renewables if r.kind == "solar")
    if renewables is not None:
        renewable_kw, synthetic = renewables_on_grid(renewables.sort_index(), index, step), False
    else:
        renewable_kw, synthetic = clear_sky_solar_kw(index, profile, solar_kw), True
        if solar_kw:
            notes.append("on-site solar: SYNTHETIC clear-sky shape (give --renewables for recorded output)")
    events = tuple(sorted(dr_events, key=lambda e: (e.start, e.modification_number)))
    book = DRBook()
    for event in events:
        decision = book.apply(event, min(event.start, start.to_pydatetime()), profile)
        if not decision.accepted:
            notes.append(f"DR event {event.event_id} rejected: {decision.reason}")
    limit, sources = book.limits_over(index, step.to_pytimedelta())
    settle_hp = None
    if hashprice is not None:
        from hashflex.feeds.hashprice import hashprice_by_day

        settle_hp = hashprice_by_day(hashprice, index)
        days = sorted({f"{d:%Y-%m-%d}" for d in index.floor("D")})
        notes.append(f"hashprice: each UTC day's own value ({days[0]} .. {days[-1]}: "
                     f"{settle_hp.min():.1f} .. {settle_hp.max():.1f} $/PH/day), not the profile's "
                     f"{profile.economics.hashprice_usd_per_ph_day:g}")
    if as_market is not None:
        from hashflex.backtest.ancillary import check_as_market

        notes += check_as_market(profile, as_market, index)
    return Actuals(index, price.to_numpy(dtype=float), renewable_kw, synthetic, np.asarray(limit, dtype=float),
                   tuple(s or "import limit" for s in sources), prices, renewables, events, tuple(notes),
                   settle_hp, hashprice, as_market)


def actual_problem(profile: SiteProfile, actuals: Actuals, index: pd.DatetimeIndex | None = None,
                   initial: dict[str, GroupState] | None = None, **reserves: Any) -> Problem:
    """The optimizer's Problem over (part of) the window with the *actual* series.

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    index : pd.DatetimeIndex, optional
        A sub-window of ``actuals.index`` (default the whole window).
    initial : dict of str to GroupState, optional
        Units on and load at the start (default: the profile's, all off).
    **reserves
        ``as_award_kw`` and ``as_price_usd_mw_h`` (product -> [T]) passed to
        ``optimize.problem.problem_from_profile`` (issue 15), aligned with ``index``.

    Returns
    -------
    Problem
    """
    index = actuals.index if index is None else index
    pos = actuals.index.get_indexer(index)
    sources = [actuals.import_limit_source[i] for i in pos]
    hashprice = None if actuals.hashprice_usd_per_ph_day is None else actuals.hashprice_usd_per_ph_day[pos]
    return problem_from_profile(profile, index, actuals.price_usd_mwh[pos], renewable_kw=actuals.renewable_kw[pos],
                                import_limit_kw=actuals.import_limit_kw[pos], import_limit_source=sources,
                                initial=initial, hashprice_usd_per_ph_day=hashprice, **reserves)


def account(profile: SiteProfile, actuals: Actuals, counts: Counts, info: SolveInfo | None = None, *,
            ancillary: Any = None) -> Schedule:
    """THE economics of a policy: its unit counts priced at what really happened.

    The per-interval unit counts n[g,m,t] over the window are priced at the actual RT price (plus
    the profile's adders) with the actual renewables and limits, by the optimizer's
    ``schedule_from_counts``. Every policy's figures come from here.

    Parameters
    ----------
    profile : SiteProfile
    actuals : Actuals
    counts : dict of (g, m) to np.ndarray
        [T] units of group g running in mode m per interval.
    info : SolveInfo, optional
        Carried into the schedule (default "accounting").
    ancillary : ancillary_loop.ASOutcome, optional
        What ``mpc+as`` was awarded and deployed (issue 15): then the reserve is settled too, at the
        day-ahead MCPC (see :func:`hashflex.backtest.ancillary_loop.settle_reserve`).

    Returns
    -------
    Schedule
        One row per interval; ``profit_usd`` = revenue − energy − carbon − starts (+ AS net payment).
    """
    if ancillary is not None:
        from hashflex.backtest.ancillary_loop import settle_reserve

        return settle_reserve(profile, actuals, counts, ancillary, info)
    problem = actual_problem(profile, actuals)
    return schedule_from_counts(problem, counts, info or SolveInfo(status=SolveStatus.OPTIMAL, message="accounting"))

