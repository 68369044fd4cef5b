"""The breakeven ladder: the real-time price at which each group and mode stops paying, so a new
5-minute price can sleep the groups it puts under water within one message, without a solve.

ERCOT's real-time energy price is set by every SCED run (about every 5 minutes; Nodal Protocols
§6.5.7.3) and the 15-minute settlement point price is their time-weighted mean (§6.6.1). A plan
made on the forecast for the interval can be wrong by thousands of $/MWh within it: the guard
holds, per (group, mode), the price above which running loses money, and cuts at once.

Breakeven of one unit in mode m of group g, in $/MWh of grid energy::

    revenue_usd_per_h = hashrate_th_s · hashprice_usd_per_ph_day / 1000 / 24 · (1 − pool_fee)
    breakeven = revenue_usd_per_h / (power_kw / 1000) − adders − carbon_price_usd_per_t · intensity / 1000

(the same terms the MILP's objective prices per unit and hour: ``optimization/FORMULATION.md``,
objective). Not included: the noise and carbon-budget opportunity costs (shadow prices) the MILP
also charges; they only make running less attractive, so this ladder sleeps a unit no later than
the plan would have — it never keeps one running that the plan would stop.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hashflex.profile import SiteProfile

__all__ = ["Rung", "breakeven_ladder", "under_water"]


@dataclass(frozen=True)
class Rung:
    """One (group, mode) and its breakeven grid price, $/MWh.

    Parameters
    ----------
    group_id : str
        The miner group (``profile.miner_groups[*].id``).
    mode : str
        A mode name of that group.
    breakeven_usd_mwh : float
        The real-time grid price above which a unit of the group running in this mode loses money,
        $/MWh (the module docstring gives the formula).
    """

    group_id: str
    mode: str
    breakeven_usd_mwh: float


def breakeven_ladder(profile: SiteProfile, *, hashprice_usd_per_ph_day: float | None = None,
                     intensity_kg_per_mwh: float | None = None) -> list[Rung]:
    """Every (group, mode) with its breakeven, lowest first (the first to sleep as prices rise).

    The breakeven is the formula of the module docstring; the unit's idle draw is subtracted from its
    mode power, because a sleeping unit still draws it.

    Parameters
    ----------
    profile : SiteProfile
        The site: the modes' power (kW) and hashrate (TH/s), each group's idle power (kW), the pool
        fee (%), the grid adders ($/MWh) and the internal carbon price ($/t CO2).
    hashprice_usd_per_ph_day : float, optional
        The hashprice in force, $/PH/day (default: the profile's ``economics.hashprice_usd_per_ph_day``).
    intensity_kg_per_mwh : float, optional
        Grid carbon intensity now, kg CO2/MWh (default: the profile's
        ``carbon.default_intensity_kg_per_mwh``).

    Returns
    -------
    list of Rung
        One rung per (group, mode) of the profile, sorted by ``breakeven_usd_mwh`` ascending.
    """
    hashprice = profile.economics.hashprice_usd_per_ph_day if hashprice_usd_per_ph_day is None \
        else hashprice_usd_per_ph_day
    intensity = profile.carbon.default_intensity_kg_per_mwh if intensity_kg_per_mwh is None else intensity_kg_per_mwh
    fee = 1.0 - profile.economics.pool_fee_pct / 100.0
    carbon_usd_mwh = profile.carbon.internal_price_usd_per_t * intensity / 1000.0
    rungs = []
    for group in profile.miner_groups:
        for mode in group.modes:
            revenue_usd_per_h = mode.hashrate_th_s * hashprice / 1000.0 / 24.0 * fee
            power_mw = max(mode.power_kw - group.idle_power_kw, 1e-9) / 1000.0  # sleeping still draws idle
            breakeven = revenue_usd_per_h / power_mw - profile.grid.total_adder_usd_mwh - carbon_usd_mwh
            rungs.append(Rung(group.id, mode.name, breakeven))
    return sorted(rungs, key=lambda r: r.breakeven_usd_mwh)


def under_water(ladder: list[Rung], price_usd_mwh: float) -> Mapping[tuple[str, str], float]:
    """(group, mode) → breakeven for every rung the price is above (those lose money running).

    Parameters
    ----------
    ladder : list of Rung
        The ladder from :func:`breakeven_ladder`.
    price_usd_mwh : float
        The real-time price now, $/MWh (a SCED price, Nodal Protocols §6.5.7.3).

    Returns
    -------
    Mapping of (str, str) to float
        ``(group_id, mode)`` → breakeven, $/MWh, for every rung strictly below ``price_usd_mwh``;
        empty when the price is at or below every breakeven.
    """
    return {(r.group_id, r.mode): r.breakeven_usd_mwh for r in ladder if price_usd_mwh > r.breakeven_usd_mwh}
