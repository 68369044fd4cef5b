"""The optimizer's input: plain arrays over T planning intervals, no I/O, no clock.

`Problem` is what `milp.build_model` and `fallback.greedy_schedule` read. `problem_from_profile`
(in `optimize.build`, re-exported here) turns a site profile plus horizon series (prices,
renewables, limits, intensity) into one; the forecast module and `hashflex plan` both call it, so
the daemon and the CLI plan the same problem.

Planning intervals may have different lengths (`duration_h`): `coarsen` (in `optimize.coarsen`,
re-exported here) merges the far part of the horizon into hourly blocks, keeping the hard limits
conservative (the minimum limit, cap and renewable output inside a block), so a schedule that
holds for the block holds in every interval it covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from hashflex import acoustics

LIMIT_SOURCE_INTERCONNECTION = "import limit"


@dataclass(frozen=True)
class Mode:
    """One operating mode of a miner: ``power_kw`` per unit (kW), ``hashrate_th_s`` (TH/s), A-weighted
    sound power ``sound_power_dba`` (dB(A), Lw)."""

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
    """A miner group over the horizon: ``units`` identical miners in ``modes``; ``units_available`` [T]
    that may run; ``idle_power_kw`` per sleeping unit; min on/off times (h) and a start cost ($)
    for clustered unit commitment; ``initial`` state at the horizon start."""

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
    """A noise receptor: attenuation (dB) per group, cap [T] in dB(A) (inf where none), background
    level, whether the cap is on the total or the site's contribution, and the margin (dB) kept
    below it. Levels add in the energy domain (ISO 9613-2 point sources)."""

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
        return acoustics.energy(mode.sound_power_dba - attenuation)

    def energy_budget(self) -> np.ndarray:
        """[T] noise energy the site may add: 10^((cap−margin)/10) − 10^(bg/10) (total cap), >= 0."""
        with np.errstate(over="ignore"):
            budget = acoustics.energy(np.asarray(self.cap_dba - self.margin_db, dtype=float))
        if self.cap_applies_to == "total":
            budget = budget - acoustics.energy(self.background_dba)
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
    """Everything the schedule MILP and the greedy fallback read: arrays over T planning intervals
    (``duration_h`` [T] hours each), the fleet, limits, receptors, carbon, reserves and compute.
    Built by `problem_from_profile`; checked by `validate`. See optimization/FORMULATION.md."""

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
        """Number of planning intervals."""
        return len(self.interval_start)

    @property
    def energy_price_usd_mwh(self) -> np.ndarray:
        """[T] $/MWh paid for imported energy: the market price plus the profile's adders."""
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
        """[T] hashprice in $ per TH/s per hour (from $ per PH/s per day)."""
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


# Moved along their seams (issue 11): the builder to `optimize.build`, the multiresolution grid to
# `optimize.coarsen`. Re-exported here lazily (PEP 562: those modules import this one), so
# ``from hashflex.optimize.problem import problem_from_profile, coarsen`` keeps working.
_MOVED = {
    "problem_from_profile": "hashflex.optimize.build",
    "reserve_products": "hashflex.optimize.build",
    "noise_caps_dba": "hashflex.optimize.build",
    "four_cp_limits_kw": "hashflex.optimize.build",
    "daily_carbon_budgets": "hashflex.optimize.build",
    "monthly_carbon_budgets": "hashflex.optimize.build",
    "coarsen": "hashflex.optimize.coarsen",
}


def __getattr__(name: str) -> Any:
    """Names moved to `optimize.build` and `optimize.coarsen`, imported on first use."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
