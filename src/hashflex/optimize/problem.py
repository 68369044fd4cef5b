"""The optimizer's input: plain arrays over T planning intervals, no I/O, no clock.

`Problem` is what `milp.solve` and `fallback.greedy_schedule` read. `problem_from_profile` turns a
site profile plus horizon series (prices, renewables, limits, intensity) into one; the forecast
module and `hashflex plan` both call it, so the daemon and the CLI plan the same problem.

Planning intervals may have different lengths (`duration_h`): `coarsen` merges the far part of
the horizon into hourly blocks, keeping the hard limits conservative (the minimum limit, cap and
renewable output inside a block), so a schedule that holds for the block holds in every interval
it covers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hashflex.profile import SiteProfile

LIMIT_SOURCE_INTERCONNECTION = "import limit"


@dataclass(frozen=True)
class Mode:
    name: str
    power_kw: float
    hashrate_th_s: float
    sound_power_dba: float


@dataclass(frozen=True)
class GroupState:
    """Where a group stands at the start of the horizon (from dispatch and telemetry).

    ``must_stay_on_until_h``: hours from horizon start until which recently started units must stay
    on (min-on), one entry per batch: ``[(hours_left, units)]``. ``must_stay_off_until_h`` likewise
    for recently stopped units (min-off).
    """

    units_on: int = 0
    load_kw: float | None = None
    must_stay_on: tuple[tuple[float, int], ...] = ()
    must_stay_off: tuple[tuple[float, int], ...] = ()
    units_off: int = 0  # powered off at the PDU (0 kW) at the start; only for a `PowerOff` group


@dataclass(frozen=True)
class Group:
    id: str
    units: int
    modes: tuple[Mode, ...]
    units_available: np.ndarray  # [T] int
    idle_power_kw: float = 0.0
    min_on_h: float = 0.0
    min_off_h: float = 0.0
    start_cost_usd: float = 0.0
    initial: GroupState = GroupState()


@dataclass(frozen=True)
class Receptor:
    id: str
    attenuation_db: dict[str, float]  # group id -> dB per unit
    cap_dba: np.ndarray  # [T], inf where no cap
    background_dba: float
    cap_applies_to: str = "total"  # or "site"
    margin_db: float = 0.0  # subtracted from the cap (model uncertainty, sensor calibration)

    def unit_energy(self, group_id: str, mode: Mode) -> float:
        """One unit's contribution at the receptor, in the energy domain 10^(L/10)."""
        attenuation = self.attenuation_db.get(group_id, math.inf)
        if math.isinf(attenuation):
            return 0.0
        return 10.0 ** ((mode.sound_power_dba - attenuation) / 10.0)

    def energy_budget(self) -> np.ndarray:
        """[T] noise energy the site may add: 10^((cap−margin)/10) − 10^(bg/10) (total cap), >= 0."""
        cap = self.cap_dba - self.margin_db
        with np.errstate(over="ignore"):
            budget = np.power(10.0, cap / 10.0)
        if self.cap_applies_to == "total":
            budget = budget - 10.0 ** (self.background_dba / 10.0)
        return np.maximum(budget, 0.0)


@dataclass(frozen=True)
class CarbonBudget:
    """At most ``remaining_kg`` over the intervals where ``mask`` is True (e.g. the rest of a day)."""

    name: str
    mask: np.ndarray  # [T] bool
    remaining_kg: float


@dataclass(frozen=True)
class ReserveProduct:
    """One ancillary service product over the horizon (issue 15; rules in ``profile.AS_PRODUCT_RULES``).

    ``price_usd_mw_h`` [T]: clearing price in $ per MW per hour (ERCOT MCPC) the reserve is paid;
    ``max_kw`` [T]: the most the site may hold (the offer cap, or the award when awards are known;
    0 where nothing is offered); ``obligation_kw`` [T]: awarded reserve that must be held (a minimum
    running load of qualified groups; a shortfall is penalised and reported, never forced past a
    hard limit); ``group_max_kw``: qualified group id -> kW the group may carry of this product;
    ``deployed_fraction``: expected share of held hours deployed (prices the hashes lost then);
    ``deadline_s``: seconds from a deployment instruction to the load being off."""

    name: str
    price_usd_mw_h: np.ndarray
    max_kw: np.ndarray
    obligation_kw: np.ndarray
    group_max_kw: dict[str, float]
    deployed_fraction: float = 0.0
    deadline_s: float = 600.0


@dataclass(frozen=True)
class PowerOff:
    """A miner group whose sleeping units a PDU or breaker can power off entirely (issue 17).

    A powered-off unit draws 0 kW instead of the group's ``idle_power_kw``; waking it is a cold
    boot: it costs ``cold_start_cost_usd`` and the unit cannot hash for ``cold_boot_h`` hours
    (rounded up to whole intervals). The count starts from ``GroupState.units_off``.

    Parameters
    ----------
    group : id of the miner group
    cold_boot_h : hours from power-on to hashing (PDU outlet closed, firmware booted)
    cold_start_cost_usd : $ per unit woken from off (wear, counted power cycles)
    """

    group: str
    cold_boot_h: float = 0.0
    cold_start_cost_usd: float = 0.0


@dataclass(frozen=True)
class Derate:
    """Derated (hot, unhealthy) units of a miner group that may only run modes drawing at most
    ``max_power_kw`` (issue 17): the plan does not count on them at full power.

    Parameters
    ----------
    group : id of the miner group
    units : [T] int, derated units among the group's available units in each interval
    max_power_kw : highest mode power a derated unit may run, kW per unit (0: they may only sleep)
    """

    group: str
    units: np.ndarray
    max_power_kw: float


@dataclass(frozen=True)
class Problem:
    interval_start: pd.DatetimeIndex  # [T] tz-aware UTC
    duration_h: np.ndarray  # [T]
    price_usd_mwh: np.ndarray  # [T] market price (reported)
    price_adder_usd_mwh: float
    hashprice_usd_per_ph_day: np.ndarray  # [T]
    pool_fee: float  # fraction
    groups: tuple[Group, ...]
    renewable_kw: np.ndarray  # [T] forecast on-site output
    import_limit_kw: np.ndarray  # [T]
    import_limit_source: tuple[str, ...]  # [T] why the limit is what it is (for reasons)
    export_limit_kw: float
    receptors: tuple[Receptor, ...]
    intensity_kg_per_mwh: np.ndarray  # [T]
    carbon_price_usd_per_t: float = 0.0
    carbon_budgets: tuple[CarbonBudget, ...] = ()
    ramp_limit_kw_per_h: float | None = None
    initial_load_kw: float | None = None
    base_interval_h: float = 0.25
    reserves: tuple[ReserveProduct, ...] = ()  # ancillary services (issue 15)
    notes: tuple[str, ...] = field(default_factory=tuple)
    compute: Any = None  # compute_problem.ComputeProblem: GPU clusters and workloads (issue 16)
    # Issue 17: groups a PDU can power off, and derated units per group. Problem-level (not Group)
    # fields so that `highs_compile.template_key` sees them and such a problem is built afresh.
    power_off: tuple[PowerOff, ...] = ()
    derates: tuple[Derate, ...] = ()

    @property
    def T(self) -> int:  # noqa: N802 - the conventional symbol
        return len(self.interval_start)

    @property
    def energy_price_usd_mwh(self) -> np.ndarray:
        return self.price_usd_mwh + self.price_adder_usd_mwh

    @property
    def standby_floor_kw(self) -> np.ndarray:
        """[T] grid import with every available unit asleep, except the units of `PowerOff` groups,
        which the plan may power off (0 kW): the least the site can draw. A limit below it (a DR
        limit of 0 kW on a site without PDU control) can only be met by the guard; the optimizer
        plans the floor and says so."""
        off_capable = {p.group for p in self.power_off}
        standby = sum(g.units_available * g.idle_power_kw for g in self.groups if g.id not in off_capable)
        if self.compute is not None:  # every GPU idle, cooling included
            standby = standby + self.compute.idle_site_kw()
        return np.maximum(standby - self.renewable_kw, 0.0)

    @property
    def effective_import_limit_kw(self) -> np.ndarray:
        """[T] the import limit the optimizer can honour: the limit, or the standby floor if higher."""
        return np.maximum(self.import_limit_kw, self.standby_floor_kw)

    def effective_carbon_budget_kg(self, budget: CarbonBudget) -> float:
        """A budget the optimizer can honour: at least the emissions of the standby floor."""
        floor_kg = float((self.standby_floor_kw * self.duration_h * self.intensity_kg_per_mwh / 1000.0)[budget.mask].sum())
        return max(budget.remaining_kg, floor_kg)

    @property
    def hashprice_usd_per_th_h(self) -> np.ndarray:
        return self.hashprice_usd_per_ph_day / 1000.0 / 24.0

    def validate(self) -> None:
        """Consistency checks before a model is built; raise ValueError naming the array."""
        T = self.T
        for name in ("duration_h", "price_usd_mwh", "hashprice_usd_per_ph_day", "renewable_kw",
                     "import_limit_kw", "intensity_kg_per_mwh"):
            array = getattr(self, name)
            if array.shape != (T,):
                raise ValueError(f"{name} has shape {array.shape}, expected ({T},)")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} has non-finite values")
        if np.any(self.duration_h <= 0):
            raise ValueError("duration_h must be positive")
        if np.any(self.import_limit_kw < 0) or np.any(self.renewable_kw < 0):
            raise ValueError("import_limit_kw and renewable_kw must be >= 0")
        if len(self.import_limit_source) != T:
            raise ValueError("import_limit_source must have one entry per interval")
        for group in self.groups:
            if group.units_available.shape != (T,):
                raise ValueError(f"group {group.id}: units_available has the wrong shape")
            if np.any(group.units_available > group.units) or np.any(group.units_available < 0):
                raise ValueError(f"group {group.id}: units_available outside 0..{group.units}")
        for receptor in self.receptors:
            if receptor.cap_dba.shape != (T,):
                raise ValueError(f"receptor {receptor.id}: cap_dba has the wrong shape")
        for budget in self.carbon_budgets:
            if budget.mask.shape != (T,):
                raise ValueError(f"carbon budget {budget.name}: mask has the wrong shape")
        if self.compute is not None:
            self.compute.validate(T)
        group_ids = {g.id for g in self.groups}
        groups = {g.id: g for g in self.groups}
        for item in self.power_off:
            if item.group not in group_ids:
                raise ValueError(f"power_off names unknown group {item.group!r}")
            if item.cold_boot_h < 0 or item.cold_start_cost_usd < 0:
                raise ValueError(f"power_off {item.group}: cold_boot_h and cold_start_cost_usd must be >= 0")
            if any(m.name == "off" for m in groups[item.group].modes):
                raise ValueError(f"power_off {item.group}: a mode named 'off' collides with the powered-off count")
            if not 0 <= groups[item.group].initial.units_off <= groups[item.group].units:
                raise ValueError(f"group {item.group}: initial.units_off outside 0..{groups[item.group].units}")
        if len({p.group for p in self.power_off}) != len(self.power_off):
            raise ValueError("power_off names a group twice")
        for group in self.groups:
            if group.initial.units_off and group.id not in {p.group for p in self.power_off}:
                raise ValueError(f"group {group.id}: initial.units_off without a power_off entry")
        for derate in self.derates:
            if derate.group not in group_ids:
                raise ValueError(f"derates names unknown group {derate.group!r}")
            if derate.units.shape != (T,) or np.any(derate.units < 0):
                raise ValueError(f"derates {derate.group}: units must be {T} values >= 0")
            if not np.isfinite(derate.max_power_kw) or derate.max_power_kw < 0:
                raise ValueError(f"derates {derate.group}: max_power_kw must be finite and >= 0")
        for reserve in self.reserves:
            for name in ("price_usd_mw_h", "max_kw", "obligation_kw"):
                array = getattr(reserve, name)
                if array.shape != (T,):
                    raise ValueError(f"reserve {reserve.name}: {name} has shape {array.shape}, expected ({T},)")
                if name != "max_kw" and not np.all(np.isfinite(array)):
                    raise ValueError(f"reserve {reserve.name}: {name} has non-finite values")
            if np.any(reserve.max_kw < 0) or np.any(reserve.obligation_kw < 0):
                raise ValueError(f"reserve {reserve.name}: max_kw and obligation_kw must be >= 0")
            unknown = set(reserve.group_max_kw) - group_ids
            if unknown:
                raise ValueError(f"reserve {reserve.name}: group_max_kw names unknown groups {sorted(unknown)}")


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
    offsets = pd.to_timedelta(np.arange(minutes), unit="min")
    # Every minute of every interval, in local time, as a minute of the week (Monday 00:00 = 0).
    moments = (interval_start.tz_convert("UTC").tz_convert(None).to_numpy()[:, None] + offsets.values[None, :]).ravel()
    local = pd.DatetimeIndex(moments).tz_localize("UTC").tz_convert(profile.tz)
    minute_of_week = np.asarray(local.day_of_week * 1440 + local.hour * 60 + local.minute)
    return {r.id: _week_of_caps(tuple((w.start, w.end, tuple(w.days), w.cap_dba) for w in r.caps))[minute_of_week]
            .reshape(len(interval_start), minutes).min(axis=1) for r in profile.receptors}


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
    local = interval_start.tz_convert(profile.tz)
    days = {pd.Timestamp(d).date() for d in (alert_days or set())}
    in_month = np.isin(local.month, cp.months)
    in_window = (local.hour >= cp.window_start_hour) & (local.hour < cp.window_end_hour)
    on_alert = np.array([ts.date() in days for ts in local]) | cp.hold_without_alert
    limits[in_month & in_window & on_alert] = cp.alert_import_limit_kw
    return limits


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
    months = interval_start.tz_convert(profile.tz).strftime("%Y-%m")
    budgets = []
    for i, month in enumerate(pd.unique(months)):
        used = emitted_this_month_kg if i == 0 else 0.0
        budgets.append(CarbonBudget(name=f"monthly {month}", mask=np.asarray(months == month),
                                    remaining_kg=max(budget_kg - used, 0.0)))
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

    limit = np.full(T, profile.grid.import_limit_kw)
    source = [LIMIT_SOURCE_INTERCONNECTION] * T
    cp = four_cp_limits_kw(profile, interval_start, four_cp_alert_days)
    external = _as_array(import_limit_kw, T, np.inf)
    external_sources = import_limit_source or ["DR"] * T
    for t in range(T):
        if cp[t] < limit[t]:
            limit[t], source[t] = cp[t], "4CP window"
        if external[t] < limit[t]:
            limit[t], source[t] = external[t], external_sources[t]

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


def coarsen(problem: Problem, fine_intervals: int, block_h: float = 1.0) -> tuple[Problem, np.ndarray]:
    """Merge intervals after the first ``fine_intervals`` into blocks of ``block_h`` hours.

    Returns the coarse problem and ``block_of`` ([T_fine] -> coarse index) to expand a schedule
    back. Prices, intensity and hashprice are duration-weighted means; limits, caps, renewable
    output and availability take the block minimum, so the coarse plan is safe in every interval.
    """
    from hashflex.optimize.compute_problem import coarsen_compute

    T = problem.T
    per_block = max(int(round(block_h / problem.base_interval_h)), 1)
    block_of = np.empty(T, dtype=int)
    block_of[:fine_intervals] = np.arange(min(fine_intervals, T))
    if T > fine_intervals:
        block_of[fine_intervals:] = fine_intervals + (np.arange(T - fine_intervals) // per_block)
    n_blocks = int(block_of[-1]) + 1 if T else 0
    if n_blocks == T:
        return problem, block_of

    def weighted_mean(values: np.ndarray) -> np.ndarray:
        sums = np.bincount(block_of, weights=values * problem.duration_h, minlength=n_blocks)
        return sums / np.bincount(block_of, weights=problem.duration_h, minlength=n_blocks)

    def block_min(values: np.ndarray) -> np.ndarray:
        out = np.full(n_blocks, np.inf)
        np.minimum.at(out, block_of, values)
        return out

    first = np.array([np.flatnonzero(block_of == b)[0] for b in range(n_blocks)])
    limit = block_min(problem.import_limit_kw)
    sources = []
    for b in range(n_blocks):
        members = np.flatnonzero(block_of == b)
        sources.append(problem.import_limit_source[members[np.argmin(problem.import_limit_kw[members])]])
    coarse = dataclasses.replace(
        problem,
        interval_start=problem.interval_start[first],
        duration_h=np.bincount(block_of, weights=problem.duration_h, minlength=n_blocks),
        price_usd_mwh=weighted_mean(problem.price_usd_mwh),
        hashprice_usd_per_ph_day=weighted_mean(problem.hashprice_usd_per_ph_day),
        renewable_kw=block_min(problem.renewable_kw),
        import_limit_kw=limit,
        import_limit_source=tuple(sources),
        intensity_kg_per_mwh=weighted_mean(problem.intensity_kg_per_mwh),
        groups=tuple(dataclasses.replace(g, units_available=block_min(g.units_available).astype(int))
                     for g in problem.groups),
        receptors=tuple(dataclasses.replace(r, cap_dba=block_min(r.cap_dba)) for r in problem.receptors),
        carbon_budgets=tuple(
            dataclasses.replace(c, mask=np.bincount(block_of, weights=c.mask.astype(float),
                                                    minlength=n_blocks) > 0)
            for c in problem.carbon_budgets
        ),
        # Reserve held through a block: the least cap, the largest obligation (conservative both ways).
        reserves=tuple(dataclasses.replace(r, price_usd_mw_h=weighted_mean(r.price_usd_mw_h),
                                           max_kw=block_min(r.max_kw), obligation_kw=-block_min(-r.obligation_kw))
                       for r in problem.reserves),
        compute=None if problem.compute is None else coarsen_compute(problem.compute, block_of, problem.duration_h),
        # Derated units through a block: the most of any interval in it (conservative).
        derates=tuple(dataclasses.replace(d, units=-block_min(-d.units).astype(int)) for d in problem.derates),
    )
    return coarse, block_of
