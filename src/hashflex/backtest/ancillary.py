"""The ``mpc+as`` policy's day-ahead case (issue 15): reserve offers decided with what was known
before the day-ahead market closed, awards, SYNTHETIC deployments, settlement at the real
clearing prices.

Information rule (ERCOT's DAM closes at 10:00 the day before the operating day, Nodal Protocols
§4.4.7.2; results are published that afternoon): the offers for operating day D are decided from
the day-ahead energy SPP and AS clearing prices of day D−1, hour by hour (the last published
day); nothing of day D is used. Offers are price-taking ($0/MW-h), so every offered MW clears and
is paid day D's real MCPC ($/MW per hour, NP4-181-ER). Offered quantities are rounded down to
0.1 MW (ERCOT's offer granularity).

Offer rule (:data:`OFFER_RULES`, :func:`offers_for_day`): what the offer plan values one MW of
reserve at. ``price-taking`` (the default, :data:`DEFAULT_OFFER_RULE`): D−1's MCPC. ``rt-risk``: a
reserve award is a minimum running load, so in a real-time spike the site runs the reserved MW
where the energy-only plan would have slept them; :func:`reserve_value_usd_mw_h` values the MW at the expected MCPC (max of
D−1's and the mean of the 28 days before) less the mean cost of running it through real-time prices
above the carrying groups' breakeven over those days (:func:`rt_risk_usd_mw_h`), all published
before the DAM close (10:00 on D−1; a test rewrites everything after it and the offers stay).

Operation of day D: the plan holds the awards as a minimum running load against the real-time
prices (``milp.define_reserve``); a shortfall (a noise cap, DR or import limit that wins) is
charged back at the MCPC (only held MW are paid). Deployments are **SYNTHETIC**: drawn per product
with the profile's ``expected_deployments_per_month`` (a Poisson process, seeded), each lasting
``expected_deployment_hours`` and shedding the whole award in force at its start (a conservative
draw); during one the deployed MW are shed (no hashes, no energy bought) and the award still paid.
The limit is the limits book's rule (:func:`deployment_limits_kw`): measured from the pre-deployment
load only, constant until the deployment ends; reserve awarded beyond the deployed MW during it (an
hourly award that steps up) must still be held, and what cannot be held under the limit is short and
clawed back.

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
from hashflex.optimize.schedule import Schedule, unit_column
from hashflex.profile import SiteProfile

__all__ = [
    "DEFAULT_OFFER_RULE",
    "EXAMPLE_WEST_TEXAS_ANCILLARY",
    "OFFER_RULES",
    "SYNTHETIC_LABEL",
    "ASDayResult",
    "breakeven_usd_mwh",
    "check_as_market",
    "compare_offer_rules",
    "day_ahead_offers_kw",
    "deployment_limits_kw",
    "load_hourly_market",
    "market_price_frame",
    "offers_for_day",
    "reserve_value_usd_mw_h",
    "rt_risk_usd_mw_h",
    "run_day_ahead_as",
    "synthetic_deployments",
    "with_ancillary",
]

def solve(*args, **kwargs):
    """`hashflex.optimize.solve.solve`, imported on the first call: Pyomo costs the CLI ~0.3-0.8 s of imports in
    the main process, where ``hashflex backtest --policy mpc`` never solves (its solves run in the worker)."""
    from hashflex.optimize.solve import solve as _solve

    return _solve(*args, **kwargs)


SYNTHETIC_LABEL = "SYNTHETIC deployments (Poisson, profile rate; not ERCOT's record)"
_AS_COLUMNS = {"RRS": "dam_mcpc_rrs", "ECRS": "dam_mcpc_ecrs", "NSPIN": "dam_mcpc_nspin"}
OFFER_STEP_KW = 100.0  # ERCOT AS offers are in 0.1 MW
OFFER_RULES = ("price-taking", "rt-risk")
"""``price-taking``: the offer plan values reserve at D−1's MCPC; ``rt-risk``: at the expected MCPC less
the expected cost of running the reserved MW through real-time prices above breakeven
(:func:`reserve_value_usd_mw_h`)."""
DEFAULT_OFFER_RULE = "price-taking"
"""The offer rule of :func:`run_day_ahead_as` and of the ``mpc+as`` policy (``ancillary_loop``) when none
is given. Measured (``optimization/benchmarks/ancillary_value.py``, added profit, ``price-taking`` vs
``rt-risk``): Feb–May 2024 study +$89,591 vs +$94,402 over energy-only; through the loop against
``mpc`` 1–10 May 2024 −$10,078 vs +$14,880 (8 May alone −$36,412 vs −$9,646) but 11–31 May
+$130,702 vs +$86,257, so the whole of May +$120,624 vs +$101,137: ``rt-risk`` cuts the spike
day's loss and gives up more reserve payment than that over a month; price-taking stays the
default."""
DAM_CLOSE_LOCAL_HOUR = 10  # the DAM closes at 10:00 CPT on D−1 (Nodal Protocols §4.4.7.2)
RT_RISK_LOOKBACK_DAYS = 28


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
                        *, time_limit_s: float = 20.0, value_usd_mw_h: dict[str, np.ndarray] | None = None
                        ) -> tuple[dict[str, np.ndarray], Schedule]:
    """Offers for one operating day from the last day published before the DAM closes.

    Parameters
    ----------
    profile : SiteProfile
        With an ``ancillary`` section.
    day_index : pd.DatetimeIndex
        [T] UTC interval starts of operating day D.
    known_day : pd.DataFrame
        24 hourly rows (D−1) with ``da_usd_mwh`` and the product prices ($/MW-h), laid hour by hour
        over ``day_index``.
    time_limit_s : float
        HiGHS time limit of the offer solve, s.
    value_usd_mw_h : dict of str to np.ndarray, optional
        Product -> [24] by site-local hour: what the plan values one MW of reserve at, $/MW-h
        (:func:`reserve_value_usd_mw_h`; floored at 0). None: D−1's MCPC (price-taking).

    Returns
    -------
    tuple of (dict of str to np.ndarray, Schedule)
        Product -> [T] offered kW (0.1 MW steps, rounded down), and the plan.
    """
    hours = day_index.tz_convert(profile.tz).hour
    by_hour = known_day.assign(hour=known_day.index.tz_convert(profile.tz).hour).groupby("hour").mean()
    by_hour = by_hour.reindex(range(24)).ffill().bfill()
    price = by_hour["da_usd_mwh"].to_numpy()[hours]
    products = list(profile.ancillary.products) if profile.ancillary is not None else []
    value = value_usd_mw_h or {}
    as_price = {p: np.maximum(np.asarray(value[p], dtype=float) if p in value else by_hour[p].to_numpy(), 0.0)[hours]
                for p in products}
    problem = problem_from_profile(profile, day_index, price, as_price_usd_mw_h=as_price)
    schedule = solve(problem, time_limit_s=time_limit_s)
    offers = {p: np.floor(schedule.frame[f"reserve_{p}_kw"].to_numpy() / OFFER_STEP_KW + 1e-9) * OFFER_STEP_KW
              for p in products}
    return offers, schedule


def breakeven_usd_mwh(profile: SiteProfile, group_id: str, hashprice_usd_per_ph_day: float | None = None) -> float:
    """The real-time settlement point price above which a running unit of ``group_id`` loses money.

    Hash revenue per MWh of the group's best mode above idle (TH/s per kW × hashprice, less the pool
    fee) less the profile's adders on the energy price.

    Parameters
    ----------
    profile : SiteProfile
    group_id : str
        A miner group of the profile.
    hashprice_usd_per_ph_day : float, optional
        $ per PH/s per day (default: the profile's ``economics.hashprice_usd_per_ph_day``).

    Returns
    -------
    float
        $/MWh of the settlement point price.

    Raises
    ------
    KeyError
        ``group_id`` is not a miner group of the profile.
    """
    groups = {g.id: g for g in profile.miner_groups}
    if group_id not in groups:
        raise KeyError(f"miner_groups: no group {group_id!r}")
    group = groups[group_id]
    hashprice = profile.economics.hashprice_usd_per_ph_day if hashprice_usd_per_ph_day is None else hashprice_usd_per_ph_day
    usd_per_th_h = hashprice / 1000.0 / 24.0 * (1.0 - profile.economics.pool_fee_pct / 100.0)
    th_per_kw = max((m.hashrate_th_s / (m.power_kw - group.idle_power_kw) for m in group.modes
                     if m.power_kw > group.idle_power_kw), default=0.0)
    return th_per_kw * usd_per_th_h * 1000.0 - profile.grid.total_adder_usd_mwh


def _known_before_close(profile: SiteProfile, market: pd.DataFrame, day: pd.Timestamp, lookback_days: int
                        ) -> tuple[pd.Timestamp, pd.DataFrame, pd.DataFrame]:
    """(D's local midnight, the hours whose RT price was published before the DAM close of D within
    the lookback, the hours of the days up to D−1 within the lookback: their DAM prices were out by
    then)."""
    start = pd.Timestamp(day)
    start = start.tz_localize(profile.tz) if start.tzinfo is None else start.tz_convert(profile.tz)
    close = (start - pd.Timedelta(days=1) + pd.Timedelta(hours=DAM_CLOSE_LOCAL_HOUR)).tz_convert("UTC")
    begin = close - pd.Timedelta(days=lookback_days)
    stamps = pd.DatetimeIndex(market.index)
    # An hour's RT price is known once it has ended; a day's DAM prices at about 13:00 the day before.
    rt_known = market[(stamps >= begin) & (stamps + pd.Timedelta(hours=1) <= close)]
    da_known = market[(stamps >= begin) & (stamps < start.tz_convert("UTC"))]
    return start, rt_known, da_known


def rt_risk_usd_mw_h(profile: SiteProfile, market: pd.DataFrame, day: pd.Timestamp, *,
                     lookback_days: int = RT_RISK_LOOKBACK_DAYS) -> dict[str, np.ndarray]:
    """The expected cost of holding one MW of reserve through real-time prices above breakeven, per
    product and site-local hour of operating day D, from what was published before the DAM closed.

    A reserve award is a minimum running load (Nodal Protocols §3.18, §8.1.1: a Load Resource keeps
    the awarded MW running and sheddable): in a real-time spike the site must run it where the
    energy-only plan would sleep it. For hour h of D:

        risk[p, h] = Σ_g w[p, g] · mean_d max(RT[d, h] − BE_g, 0)

    over the hours h of the ``lookback_days`` before the DAM close (10:00 on D−1, §4.4.7.2; an hour's
    real-time price counts once it has ended); BE_g :func:`breakeven_usd_mwh` of carrying group g;
    w[p, g] the product's MW per group (``group_mw``), normalised. Nothing published after the
    close is read (a test perturbs it).

    Parameters
    ----------
    profile : SiteProfile
        With an ``ancillary`` section.
    market : pd.DataFrame
        :func:`load_hourly_market` output (UTC hour index, ``rt_usd_mwh``).
    day : pd.Timestamp
        Local midnight starting D (tz-aware, or naive local).
    lookback_days : int
        Days before the close.

    Returns
    -------
    dict of str to np.ndarray
        Product -> [24] $ per MW per hour by local hour 0..23 (0 where no price is known).
    """
    _, rt_known, _ = _known_before_close(profile, market, day, lookback_days)
    rt = rt_known["rt_usd_mwh"].dropna()
    hour_of = np.asarray(rt.index.tz_convert(profile.tz).hour)
    section = profile.ancillary
    out: dict[str, np.ndarray] = {}
    for name, product in (section.products.items() if section is not None else []):
        total_mw = sum(product.group_mw.values()) or 1.0
        excess = sum(mw / total_mw * np.maximum(rt.to_numpy() - breakeven_usd_mwh(profile, group_id), 0.0)
                     for group_id, mw in product.group_mw.items())
        risk = np.zeros(24)
        for hour in range(24):
            inside = hour_of == hour
            if inside.any():
                risk[hour] = float(np.mean(np.asarray(excess)[inside]))
        out[name] = risk
    return out


def reserve_value_usd_mw_h(profile: SiteProfile, market: pd.DataFrame, day: pd.Timestamp, *,
                           lookback_days: int = RT_RISK_LOOKBACK_DAYS) -> dict[str, np.ndarray]:
    """What the ``rt-risk`` offer rule values one MW of reserve at, per product and local hour of D:
    the expected clearing price less the real-time risk, both from what was published before the
    DAM closed.

        value[p, h] = max(MCPC[D−1, h], mean_d MCPC[d, h]) − risk[p, h]

    ``mean_d`` over the days of the lookback up to D−1 (their DAM results are out), ``risk``
    :func:`rt_risk_usd_mw_h` over the same days. The MCPC rises with the scarcity that makes the
    real-time risk (8 May 2024: $1,000/MW-h RRS in the hours of a $3,000/MWh real-time price), so
    the risk is weighed against the clearing price of the same history, not against D−1's alone
    (which, on the development months, dropped more payment than it saved energy cost).

    Parameters
    ----------
    profile : SiteProfile
        With an ``ancillary`` section.
    market : pd.DataFrame
        :func:`load_hourly_market` output.
    day : pd.Timestamp
        Local midnight starting D.
    lookback_days : int
        Days before the close.

    Returns
    -------
    dict of str to np.ndarray
        Product -> [24] $/MW-h by local hour (may be negative: then nothing is offered).
    """
    start, _, da_known = _known_before_close(profile, market, day, lookback_days)
    prior = da_known[da_known.index >= (start - pd.Timedelta(days=1)).tz_convert("UTC")]
    risk = rt_risk_usd_mw_h(profile, market, start, lookback_days=lookback_days)
    hour_known = da_known.index.tz_convert(profile.tz).hour
    hour_prior = prior.index.tz_convert(profile.tz).hour
    out = {}
    for name in risk:
        mean = da_known[name].groupby(hour_known).mean().reindex(range(24)).to_numpy(dtype=float)
        last = prior[name].groupby(hour_prior).mean().reindex(range(24)).to_numpy(dtype=float)
        expected = np.fmax(np.nan_to_num(last, nan=0.0), np.nan_to_num(mean, nan=0.0))
        out[name] = expected - risk[name]
    return out


def offers_for_day(profile: SiteProfile, market: pd.DataFrame, day: pd.Timestamp, day_index: pd.DatetimeIndex, *,
                   offer_rule: str = "price-taking", time_limit_s: float = 20.0
                   ) -> tuple[dict[str, np.ndarray], Schedule] | None:
    """The day-ahead offers for operating day D by ``offer_rule`` (:data:`OFFER_RULES`), or None
    when D−1's day-ahead energy or AS prices are missing.

    Parameters
    ----------
    profile : SiteProfile
    market : pd.DataFrame
        :func:`load_hourly_market` output; only what was published before the DAM close is read.
    day : pd.Timestamp
        Local midnight starting D (tz-aware).
    day_index : pd.DatetimeIndex
        [T] UTC interval starts of D.
    offer_rule : str
        ``price-taking`` or ``rt-risk``.
    time_limit_s : float
        HiGHS time limit of the offer solve, s.

    Returns
    -------
    tuple of (dict of str to np.ndarray, Schedule) or None
        :func:`day_ahead_offers_kw`'s result.

    Raises
    ------
    ValueError
        ``offer_rule`` unknown (naming it).
    """
    if offer_rule not in OFFER_RULES:
        raise ValueError(f"offer_rule: {offer_rule!r} is not one of {', '.join(OFFER_RULES)}")
    start_utc = pd.Timestamp(day).tz_convert("UTC")
    products = list(profile.ancillary.products) if profile.ancillary is not None else []
    known = market[(market.index >= start_utc - pd.Timedelta(days=1)) & (market.index < start_utc)]
    if len(known) < 20 or known[["da_usd_mwh", *products]].isna().any().any():
        return None
    value = reserve_value_usd_mw_h(profile, market, day) if offer_rule == "rt-risk" else None
    return day_ahead_offers_kw(profile, day_index, known[["da_usd_mwh", *products]], time_limit_s=time_limit_s,
                               value_usd_mw_h=value)


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
    # Every interval an award was left short: dicts with day (local date), interval_utc, product,
    # awarded_kw, short_kw, deployed (a SYNTHETIC deployment of any product binds it), status, gap and
    # message of the final schedule's solve, solve ("held" plan or the "deployment" re-solve)
    short_intervals: list[dict] = field(default_factory=list)

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
                     rel_gap: float | None = None, offer_rule: str = DEFAULT_OFFER_RULE) -> ASDayResult:
    """``mpc+as`` (day-ahead case) against energy-only over ``days`` (local dates) with one offer rule:
    :func:`compare_offer_rules` with ``rules=(offer_rule,)``.

    Parameters
    ----------
    profile, market, days, seed, time_limit_s, hashprice_usd_per_ph_day, rel_gap
        As :func:`compare_offer_rules`.
    offer_rule : str
        One of :data:`OFFER_RULES`.

    Returns
    -------
    ASDayResult
    """
    return compare_offer_rules(profile, market, days, rules=(offer_rule,), seed=seed, time_limit_s=time_limit_s,
                               hashprice_usd_per_ph_day=hashprice_usd_per_ph_day, rel_gap=rel_gap)[offer_rule]


def compare_offer_rules(profile: SiteProfile, market: pd.DataFrame, days: list[pd.Timestamp], *,
                        rules: tuple[str, ...] = OFFER_RULES, seed: int = 0, time_limit_s: float = 20.0,
                        hashprice_usd_per_ph_day: float | None = None, rel_gap: float | None = None
                        ) -> dict[str, ASDayResult]:
    """``mpc+as`` (day-ahead case) with each offer rule against energy-only over ``days`` (local
    dates), the energy-only solve shared. Per day D: offers from what was known before the DAM
    closed (:func:`offers_for_day`); awards = offers; execution against D's hourly real-time price
    (every policy the same perfect real-time response, so the difference is the reserve); SYNTHETIC
    deployments (the same draws for every rule) shed the award; AS settled at D's MCPC. Days
    lacking D−1 or D prices are skipped and listed.

    Parameters
    ----------
    profile : SiteProfile
        With an ``ancillary`` section.
    market : pd.DataFrame
        :func:`load_hourly_market` output.
    days : list of pd.Timestamp
        Local dates (naive or tz-aware midnights).
    rules : tuple of str
        Offer rules (:data:`OFFER_RULES`).
    seed : int
        Seed of the SYNTHETIC deployments (day k draws with ``seed + k``).
    time_limit_s : float
        HiGHS time limit per solve, s.
    hashprice_usd_per_ph_day : float, optional
        Execution hashprice (default: the profile's).
    rel_gap : float, optional
        The execution solves' MIP gap (default: the daemon's).

    Returns
    -------
    dict of str to ASDayResult
        Rule -> totals (``profit_energy_only_usd`` and ``solve_s_without`` are the same shared solves).

    Raises
    ------
    ValueError
        An unknown rule (naming it).
    """
    from hashflex.optimize.milp import DEFAULT_REL_GAP

    for rule in rules:
        if rule not in OFFER_RULES:
            raise ValueError(f"offer_rule: {rule!r} is not one of {', '.join(OFFER_RULES)}")
    gap = DEFAULT_REL_GAP if rel_gap is None else rel_gap
    results = {rule: ASDayResult() for rule in rules}
    step = pd.Timedelta(minutes=profile.site.interval_minutes)
    products = list(profile.ancillary.products) if profile.ancillary is not None else []
    dt_h = step / pd.Timedelta(hours=1)
    hp = hashprice_usd_per_ph_day
    done = 0
    for day in days:
        start = pd.Timestamp(day).tz_localize(profile.tz) if pd.Timestamp(day).tzinfo is None else pd.Timestamp(day)
        index = pd.date_range(start, start + pd.Timedelta(days=1), freq=step, inclusive="left").tz_convert("UTC")
        today = market.reindex(index.floor("h"))
        offers_by_rule = {}
        if not today[["rt_usd_mwh", *products]].isna().any().any():
            for rule in rules:
                made = offers_for_day(profile, market, start, index, offer_rule=rule, time_limit_s=time_limit_s)
                if made is None:
                    break
                offers_by_rule[rule] = made[0]
        if len(offers_by_rule) < len(rules):
            for result in results.values():
                result.skipped_days.append(str(start.date()))
            continue
        rt = today["rt_usd_mwh"].to_numpy(dtype=float)
        mcpc = {p: today[p].to_numpy(dtype=float) for p in products}
        started = time.perf_counter()
        energy_only = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp),
                            time_limit_s=time_limit_s, rel_gap=gap)
        energy_only_s = time.perf_counter() - started
        energy_only_profit = float(_realised_profit(energy_only.frame).sum())
        deployed = synthetic_deployments(profile, index, seed=seed + done)
        for rule, result in results.items():
            result.solve_s_without.append(energy_only_s)
            result.profit_energy_only_usd += energy_only_profit
            _settle_day(profile, index, rt, mcpc, offers_by_rule[rule], deployed, result, hp=hp,
                        time_limit_s=time_limit_s, gap=gap, dt_h=dt_h)
            result.days += 1
        done += 1
    for result in results.values():
        result.profit_with_as_usd += result.as_revenue_usd - result.as_clawback_usd
    return results


def _running_at_start(profile: SiteProfile, plan: Schedule) -> dict:
    """Group id -> ``GroupState`` with the units ``plan`` runs in its first interval already on (no
    min-on lock, load unknown): the site is running when the day starts. The deployment re-solve
    otherwise planned from a cold start, every unit at 00:00 a start with its minimum on time, so a
    SYNTHETIC deployment from 00:15 broke min-on ($1,000 a unit) and the plan ran fewer award units
    at 00:00 instead (27 Feb 2024: RRS 2,143.6 kW and ECRS 639 kW short, a 20 s time-limited solve;
    tests/test_as_study_shortfall.py)."""
    from hashflex.optimize.problem import GroupState

    first = plan.frame.iloc[0]
    return {g.id: GroupState(units_on=round(sum(float(first[unit_column(g.id, m.name)]) for m in g.modes)))
            for g in profile.miner_groups}


def deployment_limits_kw(award: dict[str, np.ndarray], deployed: dict[str, np.ndarray], import_kw: np.ndarray
                         ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The SYNTHETIC deployments' import limit, MW deployed and reserve still to hold per interval, by
    the limits book's rule (``LimitsBook.deployment_limit_kw``): a deployment's limit is measured from
    the pre-deployment load only, constant from its instruction until it ends (issue 15, the project
    lead's decision: ERCOT measures a Load Resource's response from its consumption before the
    instruction, Nodal Protocols §8.1.1.4.x; the former rule followed the plan's import interval by
    interval, so an award that stepped up during a deployment brought load back).

    Each run of ``deployed[p]`` sheds ``award[p]`` at its first interval, X, for the whole run. While
    any deployment is in force the site's limit is the import ``import_kw`` of the first interval of
    that spell (the load without any deployment: the plan that holds the awards) less the MW of every
    deployment in force (stacked deployments add up; one ending gives back its MW, as the book's
    stacked rule does). Reserve awarded beyond X during the run, ``award[p] − X``, is still an
    obligation (what the site cannot hold under the limit is short).

    Parameters
    ----------
    award : dict of str to numpy.ndarray
        Product -> [T] reserve awarded, kW.
    deployed : dict of str to numpy.ndarray
        Product -> [T] bool, a SYNTHETIC deployment in force (:func:`synthetic_deployments`).
    import_kw : numpy.ndarray
        [T] grid import of the plan that holds the awards without any deployment, kW.

    Returns
    -------
    limit_kw : numpy.ndarray
        [T] import limit, kW (inf where no deployment sheds anything).
    deployed_kw : dict of str to numpy.ndarray
        Product -> [T] MW deployed, kW.
    obligation_kw : dict of str to numpy.ndarray
        Product -> [T] reserve to hold, max(award − deployed, 0), kW.
    """
    T = len(import_kw)
    deployed_kw = {}
    for p, flags in deployed.items():
        row = np.zeros(T)
        for k in range(T):
            if flags[k]:
                row[k] = row[k - 1] if k > 0 and flags[k - 1] else float(award[p][k])
        deployed_kw[p] = row
    total = sum(deployed_kw.values()) if deployed_kw else np.zeros(T)
    limit = np.full(T, np.inf)
    baseline = None
    for k in range(T):
        if total[k] > 0:
            baseline = float(import_kw[k]) if baseline is None else baseline
            limit[k] = max(baseline - float(total[k]), 0.0)
        else:
            baseline = None
    obligation = {p: np.maximum(award[p] - deployed_kw[p], 0.0) for p in award}
    return limit, deployed_kw, obligation


def _settle_day(profile: SiteProfile, index: pd.DatetimeIndex, rt: np.ndarray, mcpc: dict[str, np.ndarray],
                award: dict[str, np.ndarray], deployed: dict[str, np.ndarray], result: ASDayResult, *,
                hp: float | None, time_limit_s: float, gap: float, dt_h: float) -> None:
    """One day of ``mpc+as`` with the awards held; SYNTHETIC deployments shed the award in force at their
    start: the obligation drops by it and the site's import is held that much under what the plan
    without the deployment drew at the deployment's start, constant until it ends
    (:func:`deployment_limits_kw`); that re-solve starts from the units the held plan runs at the day's start
    (`_running_at_start`), their start cost still charged (every day of the study is a cold start).
    Adds into ``result`` (profit without the AS terms; AS paid and clawed back)."""
    products = list(award)
    started = time.perf_counter()
    held_plan = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp,
                                           as_award_kw=award, as_price_usd_mw_h=mcpc), time_limit_s=time_limit_s,
                      rel_gap=gap)
    result.solve_s_with_reserves.append(time.perf_counter() - started)
    limit, deployed_kw, obligation = deployment_limits_kw(award, deployed, held_plan.frame["grid_import_kw"].to_numpy())
    final = held_plan
    if np.any(np.isfinite(limit)):
        initial = _running_at_start(profile, held_plan)
        final = solve(problem_from_profile(profile, index, rt, hashprice_usd_per_ph_day=hp,
                                           initial=initial,
                                           import_limit_kw=limit,
                                           import_limit_source=["AS deployment (SYNTHETIC)"] * len(index),
                                           as_award_kw=obligation, as_price_usd_mw_h=mcpc),
                      time_limit_s=time_limit_s, rel_gap=gap)
        result.deployments += int(sum(np.count_nonzero(np.diff(deployed[p].astype(int), prepend=0) == 1)
                                      for p in products))
    frame = final.frame
    any_deployed = np.any([deployed[p] for p in products], axis=0) if products else np.zeros(len(index), bool)
    for p in products:
        short = frame[f"reserve_{p}_short_kw"].to_numpy()
        for t in np.flatnonzero(short > 1e-6):
            result.short_intervals.append({
                "day": str(index[0].tz_convert(profile.tz).date()), "interval_utc": str(index[t]), "product": p,
                "awarded_kw": float(award[p][t]), "short_kw": float(short[t]), "deployed": bool(any_deployed[t]),
                "status": final.status.value, "solve": "deployment" if final is not held_plan else "held",
                "gap": final.info.gap, "message": final.info.message[:200]})
        paid = award[p] - short  # shed during a deployment counts as held: it was delivered
        result.as_revenue_usd += float((award[p] * mcpc[p]).sum() * dt_h / 1000.0)
        result.as_clawback_usd += float((short * mcpc[p]).sum() * dt_h / 1000.0)
        result.awarded_mwh += float(award[p].sum() * dt_h / 1000.0)
        result.held_mwh += float(paid.sum() * dt_h / 1000.0)
        result.deployed_mwh += float(deployed_kw[p].sum() * dt_h / 1000.0)
    result.profit_with_as_usd += float(_realised_profit(frame).sum())
    if final is not held_plan:
        # Every day of the study is a cold start (energy-only pays its 00:00 starts too): charge the
        # units the re-solve took as already on at 00:00 their start cost, as the held plan did.
        first = frame.iloc[0]
        result.profit_with_as_usd -= sum(
            g.start_cost_usd * min(initial[g.id].units_on, round(sum(float(first[unit_column(g.id, m.name)])
                                                                     for m in g.modes)))
            for g in profile.miner_groups)
