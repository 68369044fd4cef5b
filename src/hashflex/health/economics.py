"""Repair or replace a failing unit: the cost of each over the unit's remaining life.

For a miner with a failed part (a hashboard, a PSU, a fan set), compare over ``horizon_days``:

- **repair**: the part and labour cost, ``repair_downtime_days`` without revenue, then the repaired unit
  at its own efficiency (J/TH) and hashrate for the rest of the horizon (or its remaining life);
- **replace**: a new unit's price, with the import tariff on it (US Section 301/IEEPA tariffs on miners
  are a site's real cost; the rate is an input), ``replace_lead_days`` to arrive, then the new unit's
  better efficiency for the horizon, minus the old unit's salvage value.

Daily margin of a unit = hashrate (TH/s) × hashprice ($/TH/day) − power (kW) × 24 × energy price ($/MWh) / 1000,
floored at 0 (a unit that loses money is curtailed, not run). All inputs in the units their names say;
the answer names the cheaper option and both totals so an operator sees the margin.

API: ``UnitEconomics(hashrate_th_s, power_kw)``; ``repair_or_replace(failing, new, *, repair_cost_usd,
repair_downtime_days, new_price_usd, tariff_rate, replace_lead_days, salvage_usd, remaining_life_days,
horizon_days, hashprice_usd_th_day, energy_usd_mwh) -> Verdict``. ValueError names a bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["UnitEconomics", "Verdict", "daily_margin_usd", "repair_or_replace"]


@dataclass(frozen=True)
class UnitEconomics:
    """One miner's economics: its hashrate and power.

    Attributes
    ----------
    hashrate_th_s : float
        Hashrate (TH/s, > 0).
    power_kw : float
        Power draw (kW, > 0).
    """
    hashrate_th_s: float
    power_kw: float

    @property
    def j_th(self) -> float:
        """Efficiency (J/TH): W per TH/s."""
        return self.power_kw * 1000.0 / self.hashrate_th_s


@dataclass(frozen=True)
class Verdict:
    """The answer of :func:`repair_or_replace`.

    Attributes
    ----------
    choice : str
        ``repair`` or ``replace`` (the larger net value; repair on a tie).
    repair_net_usd, replace_net_usd : float
        Net value of each option over the horizon ($).
    detail : str
        Both totals and their parts, readable.
    """
    choice: str  # "repair" | "replace"
    repair_net_usd: float
    replace_net_usd: float
    detail: str


def daily_margin_usd(unit: UnitEconomics, hashprice_usd_th_day: float, energy_usd_mwh: float) -> float:
    """Revenue minus energy per day, floored at 0 (a unit under water is curtailed).

    Parameters
    ----------
    unit : UnitEconomics
    hashprice_usd_th_day : float
        Revenue per TH/s per day ($/TH/day, after pool fees).
    energy_usd_mwh : float
        All-in energy price ($/MWh).

    Returns
    -------
    float
        $ per day, >= 0.
    """
    return max(0.0, unit.hashrate_th_s * hashprice_usd_th_day - unit.power_kw * 24 * energy_usd_mwh / 1000.0)


def repair_or_replace(failing: UnitEconomics, new: UnitEconomics, *, repair_cost_usd: float,
                      repair_downtime_days: float, new_price_usd: float, tariff_rate: float,
                      replace_lead_days: float, salvage_usd: float, remaining_life_days: float,
                      horizon_days: float, hashprice_usd_th_day: float, energy_usd_mwh: float) -> Verdict:
    """Net value of repairing a failing unit vs replacing it, over ``horizon_days``.

    See the module docstring for the two cash flows.

    Parameters
    ----------
    failing, new : UnitEconomics
        The repaired unit (its own efficiency) and the replacement.
    repair_cost_usd : float
        Part and labour ($).
    repair_downtime_days : float
        Days without revenue while repaired.
    new_price_usd : float
        The new unit's price before tariff ($).
    tariff_rate : float
        Import tariff on the new unit (fraction, e.g. 0.25).
    replace_lead_days : float
        Days until the new unit hashes.
    salvage_usd : float
        What the old unit fetches when replaced ($).
    remaining_life_days : float
        How long the repaired unit lasts (days).
    horizon_days : float
        The comparison window (days).
    hashprice_usd_th_day : float
        $/TH/day.
    energy_usd_mwh : float
        $/MWh.

    Returns
    -------
    Verdict

    Raises
    ------
    ValueError
        Naming the input that is negative or not finite, or a unit with hashrate or power <= 0.
    """
    checks = {"repair_cost_usd": repair_cost_usd, "repair_downtime_days": repair_downtime_days,
              "new_price_usd": new_price_usd, "tariff_rate": tariff_rate, "replace_lead_days": replace_lead_days,
              "salvage_usd": salvage_usd, "remaining_life_days": remaining_life_days, "horizon_days": horizon_days,
              "hashprice_usd_th_day": hashprice_usd_th_day, "energy_usd_mwh": energy_usd_mwh}
    for name, value in checks.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
    for label, unit in (("failing", failing), ("new", new)):
        if unit.hashrate_th_s <= 0 or unit.power_kw <= 0:
            raise ValueError(f"{label}: hashrate_th_s and power_kw must be > 0")
    old_days = max(0.0, min(horizon_days, remaining_life_days) - repair_downtime_days)
    repair = daily_margin_usd(failing, hashprice_usd_th_day, energy_usd_mwh) * old_days - repair_cost_usd
    new_days = max(0.0, horizon_days - replace_lead_days)
    replace = (daily_margin_usd(new, hashprice_usd_th_day, energy_usd_mwh) * new_days
               - new_price_usd * (1 + tariff_rate) + salvage_usd)
    choice = "repair" if repair >= replace else "replace"
    detail = (f"repair: ${repair:,.0f} ({failing.j_th:.1f} J/TH for {old_days:.0f} d after "
              f"{repair_downtime_days:g} d down, part ${repair_cost_usd:,.0f}); replace: ${replace:,.0f} "
              f"({new.j_th:.1f} J/TH for {new_days:.0f} d, ${new_price_usd:,.0f} + {tariff_rate:.0%} tariff, "
              f"salvage ${salvage_usd:,.0f})")
    return Verdict(choice, repair, replace, detail)
