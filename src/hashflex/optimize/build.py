"""Building the optimizer's input from a site profile: `problem_from_profile`, the one builder the
loop, ``hashflex plan``, the backtest and ``evaluate`` use, with the per-interval rules it applies
(noise caps strictest in an interval, 4CP windows, daily and monthly carbon budgets, reserve
products). Split from `optimize.problem` (issue 11), which re-exports every name here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pandas as pd

from hashflex.optimize.problem import (
    LIMIT_SOURCE_INTERCONNECTION,
    CarbonBudget,
    Derate,
    Group,
    GroupState,
    Mode,
    PowerOff,
    Problem,
    Receptor,
    ReserveProduct,
)
from hashflex.profile import SiteProfile


def _as_array(value: float | np.ndarray | pd.Series | None, T: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(T, float(default))
    if isinstance(value, pd.Series):
        value = value.to_numpy()
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        return np.full(T, float(array))
    return array.copy()


def noise_caps_dba(profile: SiteProfile, interval_start: pd.DatetimeIndex,
                   interval: pd.Timedelta | None = None) -> dict[str, np.ndarray]:
    """The strictest cap in force at any moment of each interval, per receptor (inf if none).

    Parameters
    ----------
    interval_start : length T, tz-aware interval starts
    interval : interval length (default: the profile's ``site.interval_minutes``)

    Returns
    -------
    receptor id → array [T] of dB(A). Cap windows are read at every minute of the interval in site
    local time (windows are set to the minute), so a window starting at 21:10 binds the
    21:00–21:15 interval — the ``strictest_in_interval`` rule of :mod:`hashflex.frames`.
    """
    step = pd.Timedelta(interval) if interval is not None else pd.Timedelta(minutes=profile.site.interval_minutes)
    minutes = max(int(step / pd.Timedelta(minutes=1)), 1)
    windows = {r.id: _cap_windows(r) for r in profile.receptors}
    first = _contiguous_local_starts(interval_start, minutes, profile.tz)
    if first is not None:  # no clock change inside an interval: one lookup per interval (issue 18)
        return {rid: _week_of_interval_caps(w, minutes)[first] for rid, w in windows.items()}
    minute_of_week = _local_minutes_of_week(interval_start, minutes, profile.tz)
    return {rid: _week_of_caps(w)[minute_of_week].reshape(len(interval_start), minutes).min(axis=1)
            for rid, w in windows.items()}


def _cap_windows(receptor: Any) -> tuple[tuple[Any, ...], ...]:
    """A receptor's cap windows as the hashable key of :func:`_week_of_caps`: (start, end, days, cap_dba)."""
    return tuple((w.start, w.end, tuple(w.days), w.cap_dba) for w in receptor.caps)


def _contiguous_local_starts(interval_start: pd.DatetimeIndex, minutes: int, tz: Any) -> np.ndarray | None:
    """[T] local minute of the week of each interval start when every interval's ``minutes`` minutes
    are consecutive on the local clock (no clock change inside any interval), else None: the same
    test as :func:`_local_minutes_of_week`, whose row ``t`` is then ``start[t] + 0..minutes-1``."""
    first = local_wall_minutes(interval_start, tz)
    last = local_wall_minutes(interval_start, tz, minutes - 1)
    if first is None or last is None:  # not on whole minutes: pandas converts each stamp
        utc = interval_start.tz_convert("UTC")
        first = _minute_of_week(utc.tz_convert(tz))
        last = _minute_of_week((utc + pd.Timedelta(minutes=minutes - 1)).tz_convert(tz))
    else:  # the same conversions, read from the cached block
        first, last = (first + 3 * 1440) % (7 * 1440), (last + 3 * 1440) % (7 * 1440)
    return first if np.array_equal((first + minutes - 1) % (7 * 1440), last) else None


_LOCAL_BLOCK_DAYS = 9  # the ticks of a 24 h horizon over a week read one block
_UNIT_PER_MINUTE = {"s": 60, "ms": 60_000, "us": 60_000_000, "ns": 60_000_000_000}
# tz -> (first UTC minute since 1970, local wall minute since 1970 of every UTC minute from it)
_local_blocks: dict[Any, tuple[int, np.ndarray]] = {}


def local_wall_minutes(stamps: pd.DatetimeIndex, tz: Any, offset_minutes: int = 0) -> np.ndarray | None:
    """[T] the local wall clock in ``tz`` of each stamp plus ``offset_minutes``, as integer minutes
    since 1970-01-01 00:00 (``tz_convert(tz).tz_localize(None)`` floored to the minute); None when
    a stamp is not on a whole UTC minute or is NaT (the caller converts with pandas).

    Read from a cached block of every UTC minute of about ``_LOCAL_BLOCK_DAYS`` days, converted
    once by pandas, so each value is pandas' own conversion of that minute; a stamp outside the
    block converts a new block around it (one block per time zone is kept). Issue 18: two
    time-zone conversions of T stamps were ~0.5 ms of every tick of a 5-minute site.

    Parameters
    ----------
    stamps : pandas.DatetimeIndex
        Tz-aware stamps, shape [T].
    tz : tzinfo or str
        The local time zone (``profile.tz``).
    offset_minutes : int
        Minutes added to every stamp before conversion (an interval's last minute: minutes − 1).

    Returns
    -------
    numpy.ndarray of int64, shape [T], or None
    """
    per = _UNIT_PER_MINUTE.get(getattr(stamps, "unit", "ns"))
    if per is None or stamps.tz is None or stamps.hasnans:
        return None
    i8 = stamps.asi8
    if len(i8) == 0 or (i8 % per).any():
        return None
    utc_minutes = i8 // per + int(offset_minutes)
    lo, hi = int(utc_minutes.min()), int(utc_minutes.max())
    block = _local_blocks.get(tz)
    if block is None or lo < block[0] or hi >= block[0] + len(block[1]):
        first = lo - lo % 1440
        n = max(_LOCAL_BLOCK_DAYS * 1440, hi - first + 1)
        utc = pd.DatetimeIndex((np.arange(first, first + n, dtype=np.int64) * 60).astype("datetime64[s]")).tz_localize("UTC")
        wall = utc.tz_convert(tz).tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)
        wall.setflags(write=False)
        block = (first, wall)
        _local_blocks[tz] = block
    return block[1][utc_minutes - block[0]]


@functools.lru_cache(maxsize=256)
def _week_of_interval_caps(windows: tuple[tuple[Any, ...], ...], minutes: int) -> np.ndarray:
    """[10,080] per local minute of the week k: the strictest cap at minutes k .. k+minutes-1 of the
    week (wrapping past Sunday 23:59), i.e. of an interval of ``minutes`` minutes starting at k on a
    clock that does not change inside it. The minimum of exactly the values
    ``_week_of_caps(windows)[(k + 0..minutes-1) % 10,080]``, computed once per receptor and
    interval length instead of gathering T·minutes values every tick (issue 18)."""
    week = _week_of_caps(windows)
    out = week.copy()
    for shift in range(1, min(minutes, 7 * 1440)):
        np.minimum(out, np.roll(week, -shift), out=out)
    out.setflags(write=False)
    return out


def _minute_of_week(local: pd.DatetimeIndex) -> np.ndarray:
    """[N] minute of the week (Monday 00:00 = 0) of tz-aware stamps, by their local wall clock:
    integer arithmetic on the local nanoseconds (1970-01-01 was a Thursday, 3 days after a Monday),
    not pandas' field accessors (three index operations each)."""
    minutes = local.tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)  # any unit (pandas 3: us)
    return (minutes + 3 * 1440) % (7 * 1440)


def _local_minutes_of_week(interval_start: pd.DatetimeIndex, minutes: int, tz: Any) -> np.ndarray:
    """[T·minutes] every minute of every interval in local time, as a minute of the week (Monday
    00:00 = 0). Unless a clock change falls inside an interval, an interval's minutes are its local
    start's plus 0..minutes−1: two conversions of T stamps instead of one of T·minutes (a 5-minute
    site's 24 h horizon is 1,440 stamps a tick, issue 18); otherwise every minute is converted."""
    offsets = np.arange(minutes)
    utc = interval_start.tz_convert("UTC")
    first = _minute_of_week(utc.tz_convert(tz))
    last = _minute_of_week((utc + pd.Timedelta(minutes=minutes - 1)).tz_convert(tz))
    if np.array_equal((first + minutes - 1) % (7 * 1440), last):
        return ((first[:, None] + offsets[None, :]) % (7 * 1440)).ravel()
    moments = (utc.tz_convert(None).to_numpy()[:, None] + pd.to_timedelta(offsets, unit="min").values[None, :]).ravel()
    return _minute_of_week(pd.DatetimeIndex(moments).tz_localize("UTC").tz_convert(tz))


@functools.lru_cache(maxsize=256)
def _week_of_caps(windows: tuple[tuple[Any, ...], ...]) -> np.ndarray:
    """The cap in force at each minute of a week (10,080 values, inf where no window applies), for
    windows given as (start, end, days, cap_dba); the same rule as ``profile.CapWindow.applies``."""
    import datetime as dt

    from hashflex.profile import CapWindow

    parsed = [CapWindow(name="w", start=a, end=b, days=list(days), cap_dba=cap) for a, b, days, cap in windows]
    monday = dt.datetime(2024, 1, 1)  # a Monday; only weekday and clock time matter to a window
    out = np.full(7 * 1440, np.inf)
    for k in range(7 * 1440):
        moment = monday + dt.timedelta(minutes=k)
        caps = [w.cap_dba for w in parsed if w.applies(moment)]
        if caps:
            out[k] = min(caps)
    return out


def four_cp_limits_kw(
    profile: SiteProfile, interval_start: pd.DatetimeIndex, alert_days: set[pd.Timestamp] | None = None
) -> np.ndarray:
    """Import limit from the 4CP section: the alert limit inside a window on an alert day (or every
    window day of the months when ``hold_without_alert``); inf elsewhere."""
    limits = np.full(len(interval_start), np.inf)
    cp = profile.grid.four_cp
    if cp is None or not cp.enabled:
        return limits
    if not cp.hold_without_alert and not alert_days:
        return limits  # no alert day, nothing held: no window binds (the common case, asked every tick)
    local = interval_start.tz_convert(profile.tz)
    window = np.isin(local.month, cp.months) & (local.hour >= cp.window_start_hour) & (local.hour < cp.window_end_hour)
    if not cp.hold_without_alert:
        # Only the intervals in a window are looked up by date (a Python call per timestamp: this
        # ran for every interval of every horizon, ~20 ms a tick of a 5-minute site, issue 18).
        days = {pd.Timestamp(d).date() for d in alert_days}
        window[window] = [ts.date() in days for ts in local[window]]
    limits[window] = cp.alert_import_limit_kw
    return limits


def combined_import_limits(interconnection_kw: float, four_cp_kw: np.ndarray, external_kw: np.ndarray,
                           external_sources: list[str] | tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    """Per interval the lowest of the interconnection limit, the 4CP window's and the external
    (DR, managers', holds') limit, and which one binds: the 4CP window replaces the interconnection
    where strictly lower, then the external limit replaces what stands where strictly lower (a NaN
    never binds), as the per-interval loop it replaces did, in two vector steps (issue 18).

    Parameters
    ----------
    interconnection_kw : float
        The site's import limit, kW.
    four_cp_kw : numpy.ndarray
        [T] the 4CP window's limit, kW (inf outside it).
    external_kw : numpy.ndarray
        [T] the external limit, kW (inf where none).
    external_sources : sequence of str
        [T] the external limit's source label per interval.

    Returns
    -------
    limit : numpy.ndarray
        [T] kW.
    source : list of str
        [T] ``interconnection`` (``LIMIT_SOURCE_INTERCONNECTION``), ``4CP window`` or the external label.

    Raises
    ------
    IndexError
        If ``external_sources`` is shorter than T where an external limit binds (as the loop did).
    """
    T = len(external_kw)
    limit = np.full(T, interconnection_kw)
    source = np.full(T, LIMIT_SOURCE_INTERCONNECTION, dtype=object)
    take = four_cp_kw < limit
    limit[take] = four_cp_kw[take]
    source[take] = "4CP window"
    take = external_kw < limit
    if take.any():
        labels = np.asarray(list(external_sources), dtype=object)
        if len(labels) != T:  # the loop's own lookup (and its IndexError) for a short list
            for t in np.flatnonzero(take):
                source[t] = external_sources[t]
        else:
            source[take] = labels[take]
        limit[take] = external_kw[take]
    return limit, source.tolist()


def _tightest(configured: float | None, override: float | None) -> float | None:
    values = [v for v in (configured, override) if v is not None]
    return min(values) if values else None


def daily_carbon_budgets(
    profile: SiteProfile, interval_start: pd.DatetimeIndex, emitted_today_kg: float = 0.0,
    override_kg: float | None = None,
) -> tuple[CarbonBudget, ...]:
    """One budget per local calendar day touched by the horizon; the first day net of what was
    already emitted. ``override_kg`` (a site manager's runtime change) can only tighten it."""
    budget_kg = _tightest(profile.carbon.daily_budget_kg, override_kg)
    if budget_kg is None:
        return ()
    local_days = interval_start.tz_convert(profile.tz).normalize()
    budgets = []
    for i, day in enumerate(pd.unique(local_days)):
        used = emitted_today_kg if i == 0 else 0.0
        budgets.append(CarbonBudget(
            name=f"daily {day.date()}",
            mask=np.asarray(local_days == day),
            remaining_kg=max(budget_kg - used, 0.0),
        ))
    return tuple(budgets)


def monthly_carbon_budgets(
    profile: SiteProfile, interval_start: pd.DatetimeIndex, emitted_this_month_kg: float = 0.0,
    override_kg: float | None = None,
) -> tuple[CarbonBudget, ...]:
    """The monthly budget, net of this month's emissions so far, over the horizon's intervals in the
    current local month (a later month starts afresh); ``override_kg`` can only tighten it."""
    budget_kg = _tightest(profile.carbon.monthly_budget_kg, override_kg)
    if budget_kg is None:
        return ()
    # The local calendar month of each interval as an integer (months since 1970-01) from the local
    # wall clock, named as strftime("%Y-%m") would: no per-stamp formatting each tick (issue 18).
    wall = local_wall_minutes(interval_start, profile.tz)
    if wall is None:
        wall = interval_start.tz_convert(profile.tz).tz_localize(None).to_numpy().astype("datetime64[m]").astype(np.int64)
    months = wall.astype("datetime64[m]").astype("datetime64[M]").astype(np.int64)
    budgets = []
    for i, month in enumerate(pd.unique(months)):
        used = emitted_this_month_kg if i == 0 else 0.0
        name = np.datetime_as_string(np.datetime64(int(month), "M"), unit="M")  # "YYYY-MM"
        budgets.append(CarbonBudget(name=f"monthly {name}",
                                    mask=np.asarray(months == month), remaining_kg=max(budget_kg - used, 0.0)))
    return tuple(budgets)


def problem_from_profile(
    profile: SiteProfile,
    interval_start: pd.DatetimeIndex,
    price_usd_mwh: np.ndarray | pd.Series,
    *,
    renewable_kw: np.ndarray | pd.Series | None = None,
    import_limit_kw: np.ndarray | None = None,
    import_limit_source: list[str] | None = None,
    intensity_kg_per_mwh: np.ndarray | pd.Series | None = None,
    hashprice_usd_per_ph_day: np.ndarray | float | None = None,
    units_available: dict[str, np.ndarray] | None = None,
    initial: dict[str, GroupState] | None = None,
    noise_margin_db: dict[str, float] | None = None,
    carbon_budgets: tuple[CarbonBudget, ...] | None = None,
    four_cp_alert_days: set[pd.Timestamp] | None = None,
    as_price_usd_mw_h: dict[str, np.ndarray | pd.Series | float] | None = None,
    as_award_kw: dict[str, np.ndarray | pd.Series | float] | None = None,
    derated_units: dict[str, np.ndarray | int] | None = None,
    derated_max_power_kw: dict[str, float] | None = None,
) -> Problem:
    """Assemble a Problem at the site's base interval from the profile and horizon series: the one
    builder the loop, ``hashflex plan``, the backtest and ``evaluate`` use.

    ``import_limit_kw`` (e.g. from DR events) is combined with the interconnection limit and 4CP
    windows by taking the minimum; ``import_limit_source`` says which one binds at each interval.
    ``carbon_budgets`` default: the profile's daily **and** monthly budgets, nothing emitted yet
    (the loop passes them net of what was measured). Noise caps are the strictest in force at any
    moment of each interval (:func:`noise_caps_dba`).

    Reserves (issue 15, only with a profile ``ancillary`` section): a product gets reserve columns
    when ``as_price_usd_mw_h`` (its $/MW-h clearing price or forecast, [T]) or ``as_award_kw`` (its
    award, [T] kW) names it. With an award the site holds exactly the award (obligation = cap =
    award); with a price alone it may offer up to its qualified MW. See :func:`reserve_products`.

    Fleet health (issue 17, a pure input; the caller maps health to it): ``units_available`` group
    id → [T] units that may run at all; ``derated_units`` group id → [T] (or one int) units that
    may only run modes of at most ``derated_max_power_kw[group]`` kW. Groups with
    ``pdu_power_off`` in the profile get a `PowerOff` entry (cold boot and cost from the profile).

    Raises ValueError naming the field for a derate without its ``derated_max_power_kw``, or for an
    unknown group.
    """
    if interval_start.tz is None:
        raise ValueError("interval_start must be tz-aware")
    interval_start = interval_start.tz_convert("UTC")
    T = len(interval_start)
    base_h = profile.site.interval_minutes / 60.0
    initial = initial or {}
    units_available = units_available or {}

    limit, source = combined_import_limits(profile.grid.import_limit_kw,
                                           four_cp_limits_kw(profile, interval_start, four_cp_alert_days),
                                           _as_array(import_limit_kw, T, np.inf), import_limit_source or ["DR"] * T)

    groups = tuple(
        Group(
            id=g.id,
            units=g.units,
            modes=tuple(Mode(m.name, m.power_kw, m.hashrate_th_s, m.sound_power_dba) for m in g.modes),
            units_available=np.asarray(units_available.get(g.id, np.full(T, g.units)), dtype=int),
            idle_power_kw=g.idle_power_kw,
            min_on_h=g.min_on_minutes / 60.0,
            min_off_h=g.min_off_minutes / 60.0,
            start_cost_usd=g.start_cost_usd,
            initial=initial.get(g.id, GroupState()),
        )
        for g in profile.miner_groups
    )
    spacing = (interval_start[1] - interval_start[0]) if len(interval_start) > 1 else None
    caps = noise_caps_dba(profile, interval_start, spacing)
    margins = noise_margin_db or {}
    receptors = tuple(
        Receptor(
            id=r.id,
            attenuation_db={g.id: r.attenuation_from(g.id) for g in profile.miner_groups},
            cap_dba=caps[r.id],
            background_dba=r.background_dba,
            cap_applies_to=r.cap_applies_to,
            margin_db=margins.get(r.id, r.model_margin_db),
        )
        for r in profile.receptors
    )
    ramp = profile.grid.ramp_limit_kw_per_min
    # A measured 0 kW (everything asleep) is a load like any other: the ramp holds from it at t = 0.
    known = [s.load_kw for s in (initial or {}).values() if s.load_kw is not None]
    initial_load = float(sum(known)) if known else None
    problem = Problem(
        interval_start=interval_start,
        duration_h=np.full(T, base_h),
        price_usd_mwh=_as_array(price_usd_mwh, T, np.nan),
        price_adder_usd_mwh=profile.grid.total_adder_usd_mwh,
        hashprice_usd_per_ph_day=_as_array(hashprice_usd_per_ph_day, T,
                                           profile.economics.hashprice_usd_per_ph_day),
        pool_fee=profile.economics.pool_fee_pct / 100.0,
        groups=groups,
        renewable_kw=_as_array(renewable_kw, T, 0.0),
        import_limit_kw=limit,
        import_limit_source=tuple(source),
        export_limit_kw=profile.grid.export_limit_kw,
        receptors=receptors,
        intensity_kg_per_mwh=_as_array(intensity_kg_per_mwh, T, profile.carbon.default_intensity_kg_per_mwh),
        carbon_price_usd_per_t=profile.carbon.internal_price_usd_per_t,
        carbon_budgets=(carbon_budgets if carbon_budgets is not None
                        else daily_carbon_budgets(profile, interval_start)
                        + monthly_carbon_budgets(profile, interval_start)),
        ramp_limit_kw_per_h=None if ramp is None else ramp * 60.0,
        initial_load_kw=initial_load,
        base_interval_h=base_h,
        reserves=reserve_products(profile, T, as_price_usd_mw_h, as_award_kw),
    )
    derated_units, derated_max_power_kw = derated_units or {}, derated_max_power_kw or {}
    known = {g.id for g in profile.miner_groups}
    for name, mapping in (("derated_units", derated_units), ("derated_max_power_kw", derated_max_power_kw)):
        unknown = set(mapping) - known
        if unknown:
            raise ValueError(f"{name} names unknown miner groups {sorted(unknown)}")
    missing = set(derated_units) - set(derated_max_power_kw)
    if missing:
        raise ValueError(f"derated_max_power_kw: no cap for derated groups {sorted(missing)}")
    problem = dataclasses.replace(
        problem,
        power_off=tuple(PowerOff(g.id, g.cold_boot_s / 3600.0, g.cold_start_cost_usd)
                        for g in profile.miner_groups if g.pdu_power_off),
        derates=tuple(Derate(g, np.asarray(_as_array(units, T, 0.0), dtype=int), float(derated_max_power_kw[g]))
                      for g, units in derated_units.items()),
    )
    if profile.compute is not None:
        from hashflex.optimize.compute_problem import compute_from_profile

        problem = dataclasses.replace(problem, compute=compute_from_profile(profile, interval_start, problem.duration_h))
    problem.validate()
    return problem



def reserve_products(
    profile: SiteProfile, T: int,
    price_usd_mw_h: dict[str, np.ndarray | pd.Series | float] | None,
    award_kw: dict[str, np.ndarray | pd.Series | float] | None,
) -> tuple[ReserveProduct, ...]:
    """The profile's qualified AS products as ReserveProducts over T intervals.

    Raises ValueError naming the product when a price or award is given for a product the profile
    does not qualify (or without an ``ancillary`` section): an award the site cannot carry must be
    seen, not dropped."""
    from hashflex.profile import AS_PRODUCT_RULES

    prices, awards = dict(price_usd_mw_h or {}), dict(award_kw or {})
    section = profile.ancillary
    qualified = dict(section.products) if section is not None else {}
    unknown = (set(prices) | set(awards)) - set(qualified)
    if unknown:
        raise ValueError(f"ancillary: no qualified product {sorted(unknown)} in the profile's ancillary section")
    out = []
    for name, product in qualified.items():
        if name not in prices and name not in awards:
            continue
        group_max_kw = {g: mw * 1000.0 for g, mw in product.group_mw.items()}
        offer_kw = sum(group_max_kw.values())
        if product.max_mw is not None:
            offer_kw = min(offer_kw, product.max_mw * 1000.0)
        price = _as_array(prices.get(name), T, 0.0)
        if name in awards:
            obligation = np.maximum(_as_array(awards[name], T, 0.0), 0.0)
            cap = obligation.copy()
        else:
            obligation, cap = np.zeros(T), np.full(T, offer_kw)
        out.append(ReserveProduct(name=name, price_usd_mw_h=price, max_kw=cap, obligation_kw=obligation,
                                  group_max_kw=group_max_kw, deployed_fraction=product.expected_deployed_fraction,
                                  deadline_s=float(AS_PRODUCT_RULES[name]["deadline_s"])))
    return tuple(out)
