"""The ``mpc+as`` policy's day-ahead case (issue 15): reserve offers decided with what was known
before the day-ahead market closed, awards, SYNTHETIC deployments, settlement at the real
clearing prices.

Information rule (ERCOT's DAM closes at 10:00 the day before the operating day, Nodal Protocols
§4.4.7.2; results are published that afternoon): the offers for operating day D are decided from
the day-ahead energy SPP and AS clearing prices of day D−1, hour by hour (the last published
day); nothing of day D is used. Offers are price-taking ($0/MW-h), so every offered MW clears and
is paid day D's real MCPC ($/MW per hour, NP4-181-ER). Offered quantities are rounded down to
0.1 MW (ERCOT's offer granularity).

Operation of day D: the plan holds the awards as a minimum running load against the real-time
prices (``milp.define_reserve``); a shortfall (a noise cap, DR or import limit that wins) is
charged back at the MCPC (only held MW are paid). Deployments are **SYNTHETIC**: drawn per product
with the profile's ``expected_deployments_per_month`` (a Poisson process, seeded), each lasting
``expected_deployment_hours`` and shedding the whole award (a conservative draw); during one the
deployed MW are shed (no hashes, no energy bought) and the award still paid.

Pure functions over frames and arrays; :func:`run_day_ahead_as` drives one window day by day with
real HiGHS solves, energy-only (``mpc``'s plan without reserves, same execution rule) side by side:
a study outside the loop. The ``mpc+as`` policy of ``hashflex backtest`` runs the same offers
through the real control loop (:mod:`hashflex.backtest.ancillary_loop`); :func:`market_price_frame`
turns the hourly file into the price frame that backtest settles energy at.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.schedule import Schedule
from hashflex.optimize.solve import solve
from hashflex.profile import SiteProfile

__all__ = [
    "EXAMPLE_WEST_TEXAS_ANCILLARY",
    "SYNTHETIC_LABEL",
    "ASDayResult",
    "check_as_market",
    "day_ahead_offers_kw",
    "load_hourly_market",
    "market_price_frame",
    "run_day_ahead_as",
    "synthetic_deployments",
    "with_ancillary",
]

SYNTHETIC_LABEL = "SYNTHETIC deployments (Poisson, profile rate; not ERCOT's record)"
_AS_COLUMNS = {"RRS": "dam_mcpc_rrs", "ECRS": "dam_mcpc_ecrs", "NSPIN": "dam_mcpc_nspin"}
OFFER_STEP_KW = 100.0  # ERCOT AS offers are in 0.1 MW


def load_hourly_market(path: str | Path, settlement_point: str = "lz_west") -> pd.DataFrame:
    """The hourly file (``ercot/dev2/hourly_hubs_dam_rt_and_dam_as_mcpc.csv`` shape) as a frame indexed
    by UTC hour start: ``da_usd_mwh``, ``rt_usd_mwh`` for ``settlement_point`` and ``RRS``, ``ECRS``,
    ``NSPIN`` ($/MW-h). Hours without AS prices upstream stay NaN (the caller skips such days).
    Raises ValueError naming a missing column."""
    raw = pd.read_csv(path)
    columns = {"da_usd_mwh": f"dam_spp_{settlement_point}", "rt_usd_mwh": f"rtm_spp_hourly_{settlement_point}",
               **_AS_COLUMNS}
    missing = [c for c in ["interval_start_cpt_naive", *columns.values()] if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    local = pd.to_datetime(raw["interval_start_cpt_naive"])
    # Central prevailing time, fall-back hour collapsed upstream: the first reading of an ambiguous hour.
    stamps = local.dt.tz_localize("America/Chicago", ambiguous=True, nonexistent="shift_forward")
    frame = pd.DataFrame({name: raw[col].to_numpy(dtype=float) for name, col in columns.items()},
                         index=pd.DatetimeIndex(stamps).tz_convert("UTC"))
    return frame[~frame.index.duplicated()].sort_index()


def market_price_frame(market: pd.DataFrame, settlement_point: str) -> pd.DataFrame:
    """The hourly file's energy prices as a canonical price frame (RT and DA rows, one per hour).

    Parameters
    ----------
    market : pd.DataFrame
        :func:`load_hourly_market` output (``rt_usd_mwh``: the hour's mean real-time SPP, which is the
        time-weighted mean of its four 15-minute settlement prices; ``da_usd_mwh``: the DAM SPP).
    settlement_point : str
        Written into the frame (the profile's, e.g. ``LZ_WEST``).

    Returns
    -------
    pd.DataFrame
        ``frames.PRICE_COLUMNS``; hours without a price are dropped.
    """
    from hashflex.frames import check_price_frame

    parts = []
    for market_name, column in (("RT", "rt_usd_mwh"), ("DA", "da_usd_mwh")):
        values = market[column].dropna()
        starts = pd.DatetimeIndex(values.index).tz_convert("UTC")
        parts.append(pd.DataFrame({"interval_start": starts, "interval_end": starts + pd.Timedelta(hours=1),
                                   "settlement_point": settlement_point, "market": market_name,
                                   "price_usd_mwh": values.to_numpy(dtype=float)}))
    frame = pd.concat(parts, ignore_index=True).sort_values(
        ["interval_start", "settlement_point", "market"], kind="stable").reset_index(drop=True)
    check_price_frame(frame)
    return frame


def check_as_market(profile: SiteProfile, market: pd.DataFrame, index: pd.DatetimeIndex) -> list[str]:
    """Check that hourly AS prices fit a backtest window; notes on what is missing.

    Parameters
    ----------
    profile : SiteProfile
        Its ``ancillary`` products must be columns of ``market``.
    market : pd.DataFrame
        :func:`load_hourly_market` output.
    index : pd.DatetimeIndex
        [T] the window's UTC interval starts.

    Returns
    -------
    list of str
        Notes (hours of the window without a clearing price: those days get no awards).

    Raises
    ------
    ValueError
        ``as_market: ...`` naming a product column that is absent, or a window the prices do not
        reach at all.
    """
    products = list(profile.ancillary.products) if profile.ancillary is not None else list(_AS_COLUMNS)
    missing = [p for p in products if p not in market.columns]
    if missing:
        raise ValueError(f"as_market: no clearing prices for {missing} (columns {list(market.columns)})")
    hours = index.floor("h").unique()
    prices = market.reindex(hours)[products]
    if prices.isna().all().all():
        raise ValueError(f"as_market: no AS clearing price in the window {index[0].isoformat()} .. "
                         f"{index[-1].isoformat()} (the file covers {market.index.min().isoformat()} .. "
                         f"{market.index.max().isoformat()})")
    absent = int(prices.isna().any(axis=1).sum())
    return [f"as_market: {absent} hour(s) of the window without an AS clearing price (no awards on those days)"] \
        if absent else []


# An ASSUMED qualification of the bundled west_texas site, for the benchmark and tests (no real site's
# registration): the hydro containers on under-frequency relays carry RRS, the air halls (LuxOS
# sleeps in ~30 s) ECRS and Non-Spin. Deployment rates are assumptions, not ERCOT statistics.
EXAMPLE_WEST_TEXAS_ANCILLARY: dict = {
    "issuer": "qse",
    "groups": {"hydro_s21xp": {"response_s": 0.5, "under_frequency_relay": True},
               "air_s21": {"response_s": 30.0}, "air_s19jpro": {"response_s": 30.0}},
    "products": {"RRS": {"group_mw": {"hydro_s21xp": 10.0}, "expected_deployments_per_month": 1.0,
                         "expected_deployment_hours": 1.0},
                 "ECRS": {"group_mw": {"air_s21": 5.0}, "expected_deployments_per_month": 2.0,
                          "expected_deployment_hours": 1.0},
                 "NSPIN": {"group_mw": {"air_s19jpro": 5.0}, "expected_deployments_per_month": 1.0,
                           "expected_deployment_hours": 2.0}},
}


def with_ancillary(profile: SiteProfile, section: dict) -> SiteProfile:
    """``profile`` with an ``ancillary`` section.

    Parameters
    ----------
    profile : SiteProfile
    section : dict
        The ``ancillary`` section (``profile.AncillarySection`` fields).

    Returns
    -------
    SiteProfile

    Raises
    ------
    pydantic.ValidationError
        The section breaks the schema (naming the field).
    """
    return SiteProfile.model_validate({**profile.model_dump(mode="json"), "ancillary": section})


def _hourly_to_grid(hourly: pd.Series, index: pd.DatetimeIndex) -> np.ndarray:
    """Each interval takes the value of the hour it starts in (NaN where that hour is absent)."""
    return hourly.reindex(index.floor("h")).to_numpy(dtype=float)


def synthetic_deployments(profile: SiteProfile, index: pd.DatetimeIndex, seed: int = 0) -> dict[str, np.ndarray]:
    """SYNTHETIC: product -> [T] bool, True where a deployment is in force. Starts are a Poisson
    process at ``expected_deployments_per_month`` (per 730 h), each lasting ``expected_deployment_hours``."""
    rng = np.random.default_rng(seed)
    step_h = (index[1] - index[0]) / pd.Timedelta(hours=1) if len(index) > 1 else 0.25
    out = {}
    section = profile.ancillary
    for name, product in (section.products.items() if section is not None else []):
        rate = product.expected_deployments_per_month / 730.0 * step_h
        starts = np.flatnonzero(rng.random(len(index)) < rate)
        live = np.zeros(len(index), dtype=bool)
        length = max(math.ceil(product.expected_deployment_hours / step_h), 1)
        for s in starts:
            live[s:s + length] = True
        out[name] = live
    return out


def day_ahead_offers_kw(profile: SiteProfile, day_index: pd.DatetimeIndex, known_day: pd.DataFrame,
                        *, time_limit_s: float = 20.0) -> tuple[dict[str, np.ndarray], Schedule]:
    """Offers for one operating day from the last day published before the DAM closes.

    ``known_day``: 24 hourly rows (D−1) with ``da_usd_mwh`` and the product prices, laid hour by hour
    over ``day_index`` (D's intervals). Returns (product -> offered kW per interval, the plan)."""
    hours = day_index.tz_convert(profile.tz).hour
    by_hour = known_day.assign(hour=known_day.index.tz_convert(profile.tz).hour).groupby("hour").mean()
    by_hour = by_hour.reindex(range(24)).ffill().bfill()
    price = by_hour["da_usd_mwh"].to_numpy()[hours]
    products = list(profile.ancillary.products) if profile.ancillary is not None else []
    as_price = {p: by_hour[p].to_numpy()[hours] for p in products}
    problem = problem_from_profile(profile, day_index, price, as_price_usd_mw_h=as_price)
    schedule = solve(problem, time_limit_s=time_limit_s)
    offers = {p: np.floor(schedule.frame[f"reserve_{p}_kw"].to_numpy() / OFFER_STEP_KW + 1e-9) * OFFER_STEP_KW
              for p in products}
    return offers, schedule


@dataclass
class ASDayResult:
    """Totals over a window: energy-only vs with reserves, both settled at real prices."""

    days: int = 0
    skipped_days: list[str] = field(default_factory=list)
    profit_energy_only_usd: float = 0.0
    profit_with_as_usd: float = 0.0
    as_revenue_usd: float = 0.0
    as_clawback_usd: float = 0.0
    awarded_mwh: float = 0.0  # MW·h of reserve awarded
    held_mwh: float = 0.0
    deployed_mwh: float = 0.0
    deployments: int = 0
    solve_s_with_reserves: list[float] = field(default_factory=list)
    solve_s_without: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=lambda: [SYNTHETIC_LABEL])

    @property
    def obligations_met(self) -> float:
        """MW·h held / MW·h awarded (1.0 when nothing was awarded)."""
        return 1.0 if self.awarded_mwh == 0 else self.held_mwh / self.awarded_mwh


def _realised_profit(frame: pd.DataFrame) -> np.ndarray:
    """Hashes − energy − carbon − starts per interval (no AS terms: those are settled apart)."""
    return (frame["revenue_usd"] - frame["energy_cost_usd"] - frame["carbon_cost_usd"]
            - frame["start_cost_usd"]).to_numpy()


def run_day_ahead_as(profile: SiteProfile, market: pd.DataFrame, days: list[pd.Timestamp], *, seed: int = 0,
                     time_limit_s: float = 20.0, hashprice_usd_per_ph_day: float | None = None,
                     rel_gap: float | None = None) -> ASDayResult:
    """``mpc+as`` (day-ahead case) against energy-only over ``days`` (local dates). Per day D: offers
    from D−1 (:func:`day_ahead_offers_kw`); awards = offers; execution against D's hourly real-time
    price (both policies, the same perfect real-time response, so the difference is the reserve);
    SYNTHETIC deployments shed the award; AS settled at D's MCPC. Days lacking D−1 or D prices are
    skipped and listed. ``rel_gap``: the execution solves' MIP gap (default: the daemon's)."""
    from hashflex.optimize.milp import DEFAULT_REL_GAP

    gap = DEFAULT_REL_GAP if rel_gap is None else rel_gap
    result = ASDayResult()
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    products = list(profile.ancillary.products) if profile.ancillary is not None else []
    for day in days:
        start = pd.Timestamp(day).tz_localize(profile.tz) if pd.Timestamp(day).tzinfo is None else pd.Timestamp(day)
        index = pd.date_range(start, start + pd.Timedelta(days=1), freq=step, inclusive="left").tz_convert("UTC")
        known = market[(market.index >= (start - pd.Timedelta(days=1)).tz_convert("UTC")) & (market.index < start.tz_convert("UTC"))]
        today = market.reindex(index.floor("h"))
        if len(known) < 20 or known[["da_usd_mwh", *products]].isna().any().any() or today[["rt_usd_mwh", *products]].isna().any().any():
            result.skipped_days.append(str(start.date()))
            continue
        offers, _ = day_ahead_offers_kw(profile, index, known, time_limit_s=time_limit_s)
        rt = today["rt_usd_mwh"].to_numpy(dtype=float)
        mcpc = {p: today[p].to_numpy(dtype=float) for p in products}
        hp = hashprice_usd_per_ph_day
        started = time.perf_counter()
        energy_only = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp),
                            time_limit_s=time_limit_s, rel_gap=gap)
        result.solve_s_without.append(time.perf_counter() - started)
        # With the awards held; SYNTHETIC deployments shed the award: the obligation drops by it and
        # the site's import is held that much under what the plan without the deployment drew.
        deployed = synthetic_deployments(profile, index, seed=seed + result.days)
        award = {p: offers[p] for p in products}
        started = time.perf_counter()
        held_plan = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp,
                                               as_award_kw=award, as_price_usd_mw_h=mcpc), time_limit_s=time_limit_s,
                          rel_gap=gap)
        result.solve_s_with_reserves.append(time.perf_counter() - started)
        shed = sum(np.where(deployed[p], award[p], 0.0) for p in products) if products else np.zeros(len(index))
        final = held_plan
        if np.any(shed > 0):
            limit = np.where(shed > 0, np.maximum(held_plan.frame["grid_import_kw"].to_numpy() - shed, 0.0), np.inf)
            obligation = {p: np.where(deployed[p], 0.0, award[p]) for p in products}
            final = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp,
                                               import_limit_kw=limit,
                                               import_limit_source=["AS deployment (SYNTHETIC)"] * len(index),
                                               as_award_kw=obligation, as_price_usd_mw_h=mcpc),
                          time_limit_s=time_limit_s, rel_gap=gap)
            result.deployments += int(sum(np.count_nonzero(np.diff(deployed[p].astype(int), prepend=0) == 1)
                                          for p in products))
        dt_h = step / pd.Timedelta(hours=1)
        frame = final.frame
        for p in products:
            short = frame[f"reserve_{p}_short_kw"].to_numpy()
            paid = award[p] - short  # shed during a deployment counts as held: it was delivered
            result.as_revenue_usd += float((award[p] * mcpc[p]).sum() * dt_h / 1000.0)
            result.as_clawback_usd += float((short * mcpc[p]).sum() * dt_h / 1000.0)
            result.awarded_mwh += float(award[p].sum() * dt_h / 1000.0)
            result.held_mwh += float(paid.sum() * dt_h / 1000.0)
            result.deployed_mwh += float(np.where(deployed[p], award[p], 0.0).sum() * dt_h / 1000.0)
        result.profit_energy_only_usd += float(_realised_profit(energy_only.frame).sum())
        result.profit_with_as_usd += float(_realised_profit(frame).sum())
        result.days += 1
    result.profit_with_as_usd += result.as_revenue_usd - result.as_clawback_usd
    return result
