"""Repair or replace failing units, valued over the site's own price history (issue 17).

``health.economics.repair_or_replace`` answers the question at one flat energy price and hashprice.
A site does not run at one price: it curtails. Here the failing units of one group are valued the
way ``evaluate-mix`` values new ones (:func:`hashflex.backtest.mix.plan_window`: each variant planned
day by day with perfect foresight of the actual prices, limits, noise caps and renewables, and
settled at those actuals), so a repaired unit that sleeps through more price spikes than a new
one is worth what it really earns. Three variants of the site:

- ``down``: the failing units out of service (the group less K units) — what doing nothing earns;
- ``repaired``: plus K units at the post-repair hashrate and power (a board swap rarely restores the
  rating), at the failing group's place (same attenuation to each receptor, same sound power);
- ``replaced``: plus K new units of the candidate model at the same place.

Added margin per day of a variant = (its profit − ``down``'s profit) / window days. Then, per option
(K units together):

- repair:  cost C = K × repair cost, downtime d days, then the repaired margin m per day until
  the repaired units' remaining life or the horizon H ends;
- replace: cost C = K × (unit price × (1 + import tariff) − salvage of the old unit), lead time d
  days, then the new margin m per day until H.

Simple payback = d + C / m days (never when m ≤ 0); NPV = −C + Σ_{t = d}^{end − 1} m / (1 + r)^{t / 365}
for days t from now, r the annual discount rate. Perfect foresight overstates every variant alike;
the comparison is the point, and the window's margins are assumed to hold over the horizon (a
stated simplification: hashprice and difficulty drift are not forecast).

Inputs from the fleet's records are read-only: :func:`failing_units` counts the open tickets of the
repair log (``health.repairs.RepairLog``) per group by the profile's miner-naming rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashflex.backtest.mix import plan_window, summarise
from hashflex.profile import SiteProfile

__all__ = ["RepairCase", "add_repair_parser", "evaluate_repair", "failing_units", "npv_usd", "option_figures",
           "profile_variants", "repair_table"]

DAYS_PER_YEAR = 365.0


@dataclass(frozen=True)
class RepairCase:
    """The repair-vs-replace question for K failing units of one group.

    Attributes
    ----------
    group_id : str
        The group the failing units belong to.
    units : int
        K, failing units (1 ≤ K ≤ the group's units).
    repair_cost_usd : float
        Parts and labour per unit, $.
    repair_downtime_days : float
        Days from the decision until the repaired units run again.
    repaired_hashrate_th_s, repaired_power_kw : float
        A repaired unit's hashrate (TH/s) and power (kW) in its stock mode.
    repaired_life_days : float
        Remaining life of a repaired unit, days from now.
    new_model : str
        The candidate's name.
    new_hashrate_th_s, new_power_kw, new_sound_dba : float
        A new unit's hashrate (TH/s), power (kW) and sound power level Lw (dB(A)).
    new_unit_price_usd : float
        A new unit's price before the import tariff, $.
    tariff_rate : float
        Import tariff as a fraction of the price (0.25 = 25 %).
    replace_lead_days : float
        Days until a new unit runs.
    salvage_usd : float
        What a failing unit sells for, per unit, $.
    horizon_days : float
        The decision's horizon, days.
    discount_rate : float
        Annual discount rate of the NPV (0.10 = 10 %/year).
    """

    group_id: str
    units: int
    repair_cost_usd: float
    repair_downtime_days: float
    repaired_hashrate_th_s: float
    repaired_power_kw: float
    repaired_life_days: float
    new_model: str
    new_hashrate_th_s: float
    new_power_kw: float
    new_sound_dba: float
    new_unit_price_usd: float
    tariff_rate: float = 0.0
    replace_lead_days: float = 0.0
    salvage_usd: float = 0.0
    horizon_days: float = 3 * DAYS_PER_YEAR
    discount_rate: float = 0.0

    def check(self, profile: SiteProfile) -> None:
        """Raise ``ValueError`` naming the first field that is wrong for ``profile``."""
        groups = {g.id: g for g in profile.miner_groups}
        if self.group_id not in groups:
            raise ValueError(f"group_id: no group {self.group_id!r} in the profile ({', '.join(groups)})")
        if not 1 <= self.units <= groups[self.group_id].units:
            raise ValueError(f"units: {self.units} is not between 1 and the {groups[self.group_id].units} units of "
                             f"{self.group_id}")
        for name in ("repair_cost_usd", "repair_downtime_days", "repaired_life_days", "new_unit_price_usd",
                     "tariff_rate", "replace_lead_days", "salvage_usd", "horizon_days", "discount_rate"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        for name in ("repaired_hashrate_th_s", "repaired_power_kw", "new_hashrate_th_s", "new_power_kw"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a finite number > 0, got {value}")


def failing_units(repair_log: str | Path, profile: SiteProfile) -> dict[str, list[str]]:
    """Miners with an open repair ticket, by group (read-only).

    Parameters
    ----------
    repair_log : path
        The SQLite repair log of ``health.repairs.RepairLog``.
    profile : SiteProfile
        Miner ids map to groups by its one naming rule (``SiteProfile.miner_ids``).

    Returns
    -------
    dict of str to list of str
        Group id -> sorted miner ids with an ``open`` or ``in_progress`` ticket (one miner counted
        once however many tickets it has). Miners the profile does not name are left out.

    Raises
    ------
    ValueError
        ``repair_log: ...`` when the file does not exist (opening would create an empty log).
    """
    import sqlite3

    path = Path(repair_log)
    if not path.exists():
        raise ValueError(f"repair_log: {path} does not exist")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # read-only: never create or change the log
    try:
        rows = db.execute("SELECT DISTINCT miner_id FROM repair_tickets WHERE status IN ('open', 'in_progress')"
                          ).fetchall()
    finally:
        db.close()
    group_of = profile.miner_ids()
    out: dict[str, list[str]] = {}
    for (miner_id,) in rows:
        if miner_id in group_of:
            out.setdefault(group_of[miner_id], []).append(miner_id)
    return {g: sorted(ids) for g, ids in out.items()}


def profile_variants(profile: SiteProfile, case: RepairCase) -> dict[str, SiteProfile]:
    """The site with the failing units down, repaired, and replaced (see the module docstring).

    Parameters
    ----------
    profile : SiteProfile
    case : RepairCase

    Returns
    -------
    dict of str to SiteProfile
        ``down``, ``repaired``, ``replaced``.

    Raises
    ------
    ValueError
        A field of ``case`` is wrong for the profile (:meth:`RepairCase.check`), or all of a group's
        units fail while its id is named in the profile's ancillary section.
    """
    case.check(profile)
    data = profile.model_dump(mode="json")
    index = next(i for i, g in enumerate(data["miner_groups"]) if g["id"] == case.group_id)
    group = data["miner_groups"][index]
    stock = next((m for m in group["modes"] if m["name"] == "stock"), max(group["modes"], key=lambda m: m["power_kw"]))
    attenuation = {r["id"]: (r.get("attenuation_db") or {}).get(case.group_id) for r in data["receptors"]}
    down = {**data, "miner_groups": [dict(g) for g in data["miner_groups"]],
            "receptors": [dict(r, attenuation_db=dict(r.get("attenuation_db") or {})) for r in data["receptors"]]}
    if case.units == group["units"]:
        if data.get("ancillary") and case.group_id in str(data["ancillary"]):
            raise ValueError(f"units: all of {case.group_id} would be out, but the ancillary section names it")
        down["miner_groups"].pop(index)
        for receptor in down["receptors"]:
            receptor["attenuation_db"].pop(case.group_id, None)
    else:
        down["miner_groups"][index] = dict(group, units=group["units"] - case.units)

    def plus(group_id: str, model: str, power_kw: float, hashrate_th_s: float, sound_dba: float) -> SiteProfile:
        variant = {**down, "miner_groups": [*down["miner_groups"], {
            "id": group_id, "model": model, "units": case.units, "idle_power_kw": group["idle_power_kw"],
            "modes": [{"name": "stock", "power_kw": power_kw, "hashrate_th_s": hashrate_th_s,
                       "sound_power_dba": sound_dba}]}],
            "receptors": [dict(r, attenuation_db=dict(r["attenuation_db"])) for r in down["receptors"]]}
        for receptor in variant["receptors"]:  # the same place as the failing units
            if attenuation.get(receptor["id"]) is not None:
                receptor["attenuation_db"][group_id] = attenuation[receptor["id"]]
        return SiteProfile.model_validate(variant)

    safe = "".join(c if c.isalnum() else "_" for c in case.new_model.lower()).strip("_") or "candidate"
    return {"down": SiteProfile.model_validate(down),
            "repaired": plus(f"repaired_{case.group_id}", f"{group['model']} (repaired)", case.repaired_power_kw,
                             case.repaired_hashrate_th_s, stock["sound_power_dba"]),
            "replaced": plus(f"new_{safe}", case.new_model, case.new_power_kw, case.new_hashrate_th_s,
                             case.new_sound_dba)}


def npv_usd(cost_usd: float, margin_usd_per_day: float, start_day: float, end_day: float,
            discount_rate: float) -> float:
    """Net present value of paying ``cost_usd`` now and earning a daily margin from ``start_day`` to ``end_day``.

    Parameters
    ----------
    cost_usd : float
        Paid at day 0, $.
    margin_usd_per_day : float
        Earned on each whole day t with ``start_day`` ≤ t < ``end_day``, $/day.
    start_day, end_day : float
        Days from now (rounded up and down to whole days).
    discount_rate : float
        Annual rate; day t is discounted by (1 + r)^(−t/365).

    Returns
    -------
    float
        −cost + Σ_t margin·(1 + r)^(−t/365), $.
    """
    days = np.arange(math.ceil(start_day), max(math.floor(end_day), math.ceil(start_day)))
    return float(-cost_usd + (margin_usd_per_day * (1.0 + discount_rate) ** (-days / DAYS_PER_YEAR)).sum())


def option_figures(cost_usd: float, margin_usd_per_day: float, start_day: float, end_day: float,
                   discount_rate: float) -> dict[str, float]:
    """Payback and NPV of one option (see the module docstring).

    Parameters
    ----------
    cost_usd : float
        Up-front cost, $.
    margin_usd_per_day : float
        Added margin per day once running, $/day.
    start_day, end_day : float
        Running from ``start_day`` (downtime or lead time) until ``end_day`` (life or horizon).
    discount_rate : float
        Annual.

    Returns
    -------
    dict
        ``cost_usd``, ``margin_usd_per_day``, ``running_days``, ``payback_days`` (inf when the
        margin is not positive), ``npv_usd``.
    """
    payback = start_day + cost_usd / margin_usd_per_day if margin_usd_per_day > 0 else math.inf
    return {"cost_usd": cost_usd, "margin_usd_per_day": margin_usd_per_day,
            "running_days": max(math.floor(end_day) - math.ceil(start_day), 0), "payback_days": payback,
            "npv_usd": npv_usd(cost_usd, margin_usd_per_day, start_day, end_day, discount_rate)}


def evaluate_repair(profile: SiteProfile, actuals: Any, case: RepairCase, *,
                    time_limit_s: float = 30.0) -> dict[str, Any]:
    """Repair vs replace for ``case``, valued over ``actuals`` with the site's curtailment.

    Parameters
    ----------
    profile : SiteProfile
    actuals : backtest.actuals.Actuals
        The price history (and limits, renewables) every variant is planned and settled on.
    case : RepairCase
    time_limit_s : float
        HiGHS time limit per daily MILP, s.

    Returns
    -------
    dict
        ``variants``: per variant (``down``, ``repaired``, ``replaced``) the ``mix.summarise``
        figures; ``repair`` and ``replace``: :func:`option_figures`; ``choice``: the option with the
        higher NPV (``repair`` on a tie); ``window_days``.

    Raises
    ------
    ValueError
        A field of ``case`` is wrong (named).
    """
    variants = profile_variants(profile, case)
    figures = {}
    for name, variant in variants.items():
        frame, seconds = plan_window(variant, actuals, time_limit_s=time_limit_s)
        figures[name] = {**summarise(variant, frame), "solve_seconds": seconds}
    days = figures["down"]["days"]
    base = figures["down"]["profit_usd"]
    repaired_margin = (figures["repaired"]["profit_usd"] - base) / days
    new_margin = (figures["replaced"]["profit_usd"] - base) / days
    repair = option_figures(case.units * case.repair_cost_usd, repaired_margin, case.repair_downtime_days,
                            min(case.repaired_life_days, case.horizon_days), case.discount_rate)
    replace = option_figures(case.units * (case.new_unit_price_usd * (1.0 + case.tariff_rate) - case.salvage_usd),
                             new_margin, case.replace_lead_days, case.horizon_days, case.discount_rate)
    return {"window_days": days, "variants": figures, "repair": repair, "replace": replace,
            "choice": "repair" if repair["npv_usd"] >= replace["npv_usd"] else "replace"}


def repair_table(result: dict[str, Any], case: RepairCase) -> str:
    """The side-by-side answer an operator reads (payback and NPV of each option)."""
    lines = [f"{'option':<10}{'cost $':>12}{'margin $/day':>14}{'J/TH':>8}{'starts after d':>16}{'runs d':>8}"
             f"{'payback d':>11}{'NPV $':>14}"]
    rows = (("repair", result["repair"], case.repaired_power_kw * 1000 / case.repaired_hashrate_th_s,
             case.repair_downtime_days),
            ("replace", result["replace"], case.new_power_kw * 1000 / case.new_hashrate_th_s, case.replace_lead_days))
    for name, f, j_th, start in rows:
        payback = "never" if math.isinf(f["payback_days"]) else f"{f['payback_days']:,.0f}"
        lines.append(f"{name:<10}{f['cost_usd']:>12,.0f}{f['margin_usd_per_day']:>14,.2f}{j_th:>8.1f}{start:>16g}"
                     f"{f['running_days']:>8}{payback:>11}{f['npv_usd']:>14,.0f}")
    lines.append(f"choice: {result['choice']} (higher NPV at {case.discount_rate:.0%}/year over "
                 f"{case.horizon_days:g} days)")
    return "\n".join(lines)


def add_repair_parser(subparsers: Any) -> None:
    """Register ``hashflex evaluate-repair`` (called by ``backtest.cli.add_backtest_parsers``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
    """
    from hashflex.backtest.cli import _common_arguments

    parser = subparsers.add_parser("evaluate-repair", help="repair or replace failing miners, valued over this "
                                                           "site's price history with its curtailment: payback "
                                                           "and NPV side by side")
    _common_arguments(parser)
    parser.add_argument("--group", required=True, help="the failing units' group id")
    parser.add_argument("--units", type=int, help="failing units (default: the group's miners with an open "
                                                  "ticket in --repair-log)")
    parser.add_argument("--repair-log", help="health repair log (SQLite), read-only: counts the failing units")
    parser.add_argument("--repair-cost-usd", type=float, required=True, help="parts and labour per unit")
    parser.add_argument("--repair-downtime-days", type=float, required=True)
    parser.add_argument("--repaired-hashrate-th-s", type=float, help="after repair (default the group's stock rating)")
    parser.add_argument("--repaired-power-kw", type=float, help="after repair (default the group's stock rating)")
    parser.add_argument("--repaired-life-days", type=float, required=True, help="remaining life of a repaired unit")
    parser.add_argument("--new-model", default="candidate")
    parser.add_argument("--new-hashrate-th-s", type=float, required=True)
    parser.add_argument("--new-power-kw", type=float, required=True)
    parser.add_argument("--new-sound-dba", type=float, required=True, help="sound power level Lw per unit")
    parser.add_argument("--new-unit-price-usd", type=float, required=True, help="before the import tariff")
    parser.add_argument("--tariff-rate", type=float, default=0.0, help="import tariff, fraction of the price")
    parser.add_argument("--replace-lead-days", type=float, default=0.0)
    parser.add_argument("--salvage-usd", type=float, default=0.0, help="per failing unit sold")
    parser.add_argument("--horizon-days", type=float, default=3 * DAYS_PER_YEAR)
    parser.add_argument("--discount-rate", type=float, default=0.10, help="annual, fraction (default 0.10)")
    parser.set_defaults(handler=cmd_evaluate_repair)


def cmd_evaluate_repair(args: Any) -> int:
    """``hashflex evaluate-repair``: print the variants' window figures and the two options side by side.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        0; 2 when no failing unit is given or found.
    """
    from hashflex.backtest.cli import _inputs
    from hashflex.profile import load_profile

    profile = load_profile(args.profile)
    units = args.units
    if units is None:
        if not args.repair_log:
            print("error: give --units or --repair-log", flush=True)
            return 2
        found = failing_units(args.repair_log, profile).get(args.group, [])
        units = len(found)
        print(f"repair log {args.repair_log}: {units} unit(s) of {args.group} with an open ticket"
              + (f" ({', '.join(found[:5])}{' ...' if units > 5 else ''})" if found else ""))
        if units == 0:
            return 2
    stock = profile.group(args.group).modes
    rated = next((m for m in stock if m.name == "stock"), max(stock, key=lambda m: m.power_kw))
    case = RepairCase(group_id=args.group, units=units, repair_cost_usd=args.repair_cost_usd,
                      repair_downtime_days=args.repair_downtime_days,
                      repaired_hashrate_th_s=args.repaired_hashrate_th_s or rated.hashrate_th_s,
                      repaired_power_kw=args.repaired_power_kw or rated.power_kw,
                      repaired_life_days=args.repaired_life_days, new_model=args.new_model,
                      new_hashrate_th_s=args.new_hashrate_th_s, new_power_kw=args.new_power_kw,
                      new_sound_dba=args.new_sound_dba, new_unit_price_usd=args.new_unit_price_usd,
                      tariff_rate=args.tariff_rate, replace_lead_days=args.replace_lead_days,
                      salvage_usd=args.salvage_usd, horizon_days=args.horizon_days, discount_rate=args.discount_rate)
    actuals = _inputs(args, profile)
    result = evaluate_repair(profile, actuals, case, time_limit_s=args.time_limit)
    print(f"{profile.site.name}: {units} failing unit(s) of {args.group}, valued over {result['window_days']:g} days of "
          f"{profile.site.settlement_point} prices (perfect foresight, one MILP per local day, the site's curtailment)")
    for name, f in result["variants"].items():
        print(f"  {name:<9} profit ${f['profit_usd']:,.0f}, energy {f['energy_mwh']:,.1f} MWh")
    print(repair_table(result, case))
    for note in actuals.notes:
        print(f"note: {note}")
    return 0
