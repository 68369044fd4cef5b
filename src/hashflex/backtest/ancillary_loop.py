"""``mpc+as`` through the real control loop (issue 15): the site's QSE played by the backtest.

``mpc+as`` is ``mpc`` — the same ``ControlLoop``, forecast, planner, guard and simulated fleet — with
the market around it. :class:`ASParticipant` stands where the QSE stands in a live site and talks to
the loop only through its AS handlers:

- **Day-ahead case** (``as_mode="day-ahead"``, the default). ERCOT's DAM closes at 10:00 the day
  before the operating day (Nodal Protocols §4.4.7.2) and publishes at about 13:00. Offers for
  operating day D are decided from the day-ahead energy SPP and AS clearing prices of D−1, hour by
  hour (``ancillary.offers_for_day``: the same co-optimising MILP, run on what was known), the
  reserve valued by the offer rule (``offer_rule``: ``price-taking`` at D−1's MCPC, or ``rt-risk`` at
  the expected MCPC less the real-time risk of holding it, ``ancillary.reserve_value_usd_mw_h``);
  price-taking offers clear in full, so the awards are the offers, hourly, floored to 0.1 MW, at D's
  real MCPC ($/MW per hour, NP4-181-ER). They reach ``ControlLoop.handle_as_award`` at the first tick
  at or after 13:00 local on D−1 (for the window's first day: at its first tick), one
  ``ASAwardMessage`` per product and hour. The limits book then holds them, and every tick's plan
  keeps the awarded reserve as a minimum running load (``milp.define_reserve``).
- **Real-time case** (``as_mode="real-time"``). Since RTC+B (December 2025) ERCOT co-optimises energy
  and reserves in every SCED run. Each tick's plan is offered the AS price over its horizon
  (:class:`ReserveOfferRunner` adds the priced products to the problem) and the reserve it holds in
  the interval being dispatched is awarded for that interval (price-taking, 0.1 MW steps) through the
  same ``handle_as_award``. **Only day-ahead AS prices are bundled** (no real-time MCPC series):
  the real-time AS price is a STAND-IN — each hour's day-ahead MCPC, used as the forecast (as published
  by then; later hours repeat the last published day's same hour) and for settlement. The output
  says so in its notes (:data:`RT_STAND_IN_NOTE`).

Deployments are **SYNTHETIC** (``ancillary.synthetic_deployments``: Poisson starts at the profile's
``expected_deployments_per_month``, each lasting ``expected_deployment_hours``; seeded; labelled so
in every output). A drawn deployment of product P at interval k, if P is awarded then, is sent to
``ControlLoop.handle_as_deploy`` at that interval's tick (after the tick's dispatch; the fast path
cuts at once, so the interval's counts are those after the cut) for the whole award in force; it is
recalled at the interval its draw ends (or lapses at ``ancillary.max_hold_h``). The simulated
fleet obeys at once; the loop's ``measure_as_deployments`` is given the site's import after the cut
dated by the slowest qualified group's ``response_s`` (the hardware's declared response).

Settlement (:func:`settle_reserve`, through :func:`hashflex.backtest.actuals.account`): energy at the
real-time price as for every policy; reserve paid award × MCPC; the hold shortfall (awarded reserve
not carried by running, sheddable, qualified load, as the loop recorded it per interval in the audit
trail, ``reserve_hold_short``) charged back at the MCPC by the one definition the report uses too
(:func:`hashflex.control.ancillary.reserve_clawback_usd`: ERCOT's failure to provide, Nodal
Protocols §6.4.9.1.3, §6.7.3). A deployment shortfall (import above the deployment's limit) is
reported (``as_deployment_short_kw``, obligations met) and not charged (a performance figure, §8.1.1.4). The deployment
cost is measured, not modelled: the shed kWh × the carrying groups' margin per kWh (hashes at the
settled hashprice less the real-time energy price, floored at 0) — already inside the hash revenue
the counts earn, so it is reported, not subtracted twice.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from hashflex.backtest import ancillary
from hashflex.backtest.ancillary import (  # noqa: F401 - DEFAULT_OFFER_RULE re-exported: ancillary_loop.<name>
    DEFAULT_OFFER_RULE,
    OFFER_RULES,
    OFFER_STEP_KW,
    SYNTHETIC_LABEL,
    offers_for_day,
    synthetic_deployments,
)
from hashflex.control.ancillary import reserve_clawback_usd
from hashflex.control.as_shortfall import deployment_shortfall_kw
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.optimize.problem import reserve_products
from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus, reserve_column, schedule_from_counts
from hashflex.profile import SiteProfile

__all__ = ["AS_MODES", "AS_POLICY", "DEFAULT_OFFER_RULE", "RT_STAND_IN_NOTE", "ASOutcome", "ASParticipant",
           "ReserveOfferRunner", "as_price_forecast", "check_as_inputs", "settle_reserve"]

AS_POLICY = "mpc+as"
AS_MODES = ("day-ahead", "real-time")
DAM_PUBLISHED_LOCAL_HOUR = 13  # DAM results (energy and AS awards, MCPCs) are out by about 13:00 CPT on D−1
RT_STAND_IN_NOTE = ("mpc+as real-time case: only DAY-AHEAD AS prices are bundled (ERCOT NP4-181-ER MCPC); "
                    "the real-time AS price is a STAND-IN: each hour's day-ahead MCPC, used as the forecast and "
                    "for settlement, not ERCOT's real-time (RTC+B) AS prices")
DA_NOTE = ("mpc+as day-ahead case: offers for day D from D−1's day-ahead energy and AS prices (DAM closes 10:00 "
           "D−1, Nodal Protocols §4.4.7.2), price-taking, awarded in full at D's DAM MCPC per hour and sent to the "
           "control loop at 13:00 D−1 (handle_as_award)")



def check_as_inputs(profile: SiteProfile, actuals: Any, mode: str) -> None:
    """Refuse an ``mpc+as`` run that lacks what it needs, naming the field.

    Parameters
    ----------
    profile : SiteProfile
    actuals : backtest.actuals.Actuals
    mode : str
        ``day-ahead`` or ``real-time``.

    Raises
    ------
    ValueError
        ``as_mode`` unknown, the profile has no ``ancillary`` section (or no product), or
        ``actuals.as_market`` is None.
    """
    if mode not in AS_MODES:
        raise ValueError(f"as_mode: {mode!r} is not one of {', '.join(AS_MODES)}")
    if profile.ancillary is None or not profile.ancillary.products:
        raise ValueError("ancillary: mpc+as needs a profile with an ancillary section and at least one product "
                         "(hashflex backtest --ancillary example gives the west_texas example, ASSUMED)")
    if actuals.as_market is None:
        raise ValueError("as_market: mpc+as needs hourly AS clearing prices (build_actuals(..., as_market=...), "
                         "hashflex backtest --as-prices)")


@dataclass
class ASOutcome:
    """What ``mpc+as`` was awarded and deployed, per interval of the window.

    Attributes
    ----------
    mode : str
        ``day-ahead`` or ``real-time``.
    award_kw : dict of str to np.ndarray
        Product -> [T] reserve awarded in force at the interval's start, kW.
    mcpc_usd_mw_h : dict of str to np.ndarray
        Product -> [T] the price the award is settled at, $ per MW per hour (the DAM MCPC).
    deployed_kw : dict of str to np.ndarray
        Product -> [T] SYNTHETIC deployment in force (kW ordered shed; 0 where none).
    deployment_limit_kw : np.ndarray
        [T] the lowest import limit of the deployments due (in force at the interval's start and
        past their deadline, the report's rule: ``control.as_shortfall``), kW (inf where none).
    deployments : list of dict
        The loop's ``as_performance`` entries (obligation, delivered, shortfall, response), one per
        deployment.
    notes : list of str
        Labels (SYNTHETIC, the AS price source) and skipped days.
    hold_short_kw : dict of str to np.ndarray, optional
        Product -> [T] reserve awarded and not held, kW, as the loop recorded it per interval
        (``ControlLoop.record_reserve_hold``, the ``reserve_hold_short`` audit records); None: the
        settlement recomputes it from the counts.
    deployment_due_kw : np.ndarray, optional
        [T] the MW of the deployments due (the shortfall's cap), kW; None: all deployments in force.
    obligation_kw : dict of str to np.ndarray, optional
        Product -> [T] the reserve to hold, kW, as the loop's hold check found it per interval
        (``control.ancillary.mean_obligations_kw``: award less the MW deployed, time-weighted over
        the interval, issue 15 H6); NaN where the loop checked no hold. None: award − deployed at the
        interval's start.
    """

    mode: str
    award_kw: dict[str, np.ndarray]
    mcpc_usd_mw_h: dict[str, np.ndarray]
    deployed_kw: dict[str, np.ndarray]
    deployment_limit_kw: np.ndarray
    deployments: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hold_short_kw: dict[str, np.ndarray] | None = None
    deployment_due_kw: np.ndarray | None = None
    obligation_kw: dict[str, np.ndarray] | None = None


def _hourly_on_grid(market: pd.DataFrame, column: str, index: pd.DatetimeIndex) -> np.ndarray:
    """Each interval takes its hour's value (NaN where the hour is absent)."""
    return market[column].reindex(index.floor("h")).to_numpy(dtype=float)


def as_price_forecast(market: pd.DataFrame, products: list[str], index: pd.DatetimeIndex, now: datetime,
                      tz: Any) -> dict[str, np.ndarray]:
    """The AS price over a horizon as known at ``now`` (the real-time case's forecast).

    Each hour's day-ahead MCPC where the DAM had published it by ``now`` (13:00 local on the day
    before); a later hour repeats the same local hour of the last published day; 0 where nothing is
    known (no reserve is offered at an unknown price).

    Parameters
    ----------
    market : pd.DataFrame
        ``ancillary.load_hourly_market`` frame (UTC hour index, one column per product, $/MW-h).
    products : list of str
    index : pd.DatetimeIndex
        [T] UTC interval starts of the horizon.
    now : datetime
        The decision time (tz-aware).
    tz : tzinfo
        The site's time zone (the DAM's operating days are local).

    Returns
    -------
    dict of str to np.ndarray
        Product -> [T] $/MW-h.
    """
    local = index.tz_convert(tz)
    day = local.normalize()
    now_local = pd.Timestamp(now).tz_convert(tz)
    # The last operating day whose DAM results are out at `now`.
    published_day = (now_local - pd.Timedelta(hours=DAM_PUBLISHED_LOCAL_HOUR)).normalize() + pd.Timedelta(days=1)
    hour = index.floor("h")
    fallback_hour = (pd.DatetimeIndex([published_day.tz_localize(None)] * len(index))
                     + pd.to_timedelta(local.hour, unit="h")).tz_localize(tz, ambiguous=True,
                                                                          nonexistent="shift_forward").tz_convert("UTC")
    known = np.asarray(day.tz_localize(None) <= published_day.tz_localize(None))
    out = {}
    for product in products:
        direct = market[product].reindex(hour).to_numpy(dtype=float)
        repeat = market[product].reindex(fallback_hour.floor("h")).to_numpy(dtype=float)
        value = np.where(known, direct, repeat)
        out[product] = np.where(np.isfinite(value), value, 0.0)
    return out


class ReserveOfferRunner:
    """The real-time case's solve: the loop's problem with every qualified product offered at its price.

    Wraps the loop's :class:`~hashflex.control.solver.SolveRunner` (deadline, fallback) and adds, before
    each solve, the profile's qualified products priced by ``price_at(index, now)`` with their offer
    caps; an obligation the book already holds (an award in force) is kept.

    Parameters
    ----------
    inner : SolveRunner
    profile : SiteProfile
    price_at : callable
        ``(index, now) -> {product: [T] $/MW-h}`` (:func:`as_price_forecast`).
    """

    def __init__(self, inner: Any, profile: SiteProfile, price_at: Any) -> None:
        self.inner, self.profile, self.price_at = inner, profile, price_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # last_seconds, timeouts, deadline_s, solve, ...

    def run(self, problem: Any, fine_intervals: int) -> Schedule:
        """Solve ``problem`` with the priced reserve products (see the class docstring)."""
        index = pd.DatetimeIndex(problem.interval_start)
        prices = self.price_at(index, index[0].to_pydatetime())
        held = {r.name: r.obligation_kw for r in problem.reserves}
        offered = []
        for product in reserve_products(self.profile, problem.T, prices, None):
            obligation = np.asarray(held.get(product.name, np.zeros(problem.T)), dtype=float)
            offered.append(dataclasses.replace(product, obligation_kw=obligation,
                                               max_kw=np.maximum(product.max_kw, obligation)))
        return self.inner.run(dataclasses.replace(problem, reserves=tuple(offered)), fine_intervals)


class ASParticipant:
    """The site's QSE in a backtest: awards and SYNTHETIC deployments to the loop's AS handlers.

    See the module docstring for the rules. The runner calls :meth:`before_tick`, the loop ticks,
    then :meth:`after_tick`, then :meth:`measure` with the interval's import; :meth:`outcome` at the end.

    Parameters
    ----------
    profile : SiteProfile
        With an ``ancillary`` section.
    actuals : backtest.actuals.Actuals
        With ``as_market``.
    mode : str
        ``day-ahead`` or ``real-time``.
    seed : int
        Seed of the SYNTHETIC deployments.
    time_limit_s : float
        Time limit of the day-ahead offer solve, s.
    offer_rule : str, optional
        The day-ahead offer rule (``ancillary.OFFER_RULES``; default ``ancillary.DEFAULT_OFFER_RULE``,
        read when the participant is made).

    Raises
    ------
    ValueError
        Unknown ``as_mode`` or ``offer_rule``, no ancillary section, no AS prices (naming the field).
    """

    def __init__(self, profile: SiteProfile, actuals: Any, *, mode: str = "day-ahead", seed: int = 0,
                 time_limit_s: float = 20.0, offer_rule: str | None = None) -> None:
        check_as_inputs(profile, actuals, mode)
        self.offer_rule = ancillary.DEFAULT_OFFER_RULE if offer_rule is None else offer_rule
        if self.offer_rule not in OFFER_RULES:
            raise ValueError(f"offer_rule: {self.offer_rule!r} is not one of {', '.join(OFFER_RULES)}")
        self.profile, self.actuals, self.mode, self.time_limit_s = profile, actuals, mode, time_limit_s
        section = profile.ancillary
        assert section is not None  # check_as_inputs
        self.issuer = section.issuer
        self.products = list(section.products)
        self.market: pd.DataFrame = actuals.as_market
        index = actuals.index
        T = len(index)
        self.mcpc = {p: _hourly_on_grid(self.market, p, index) for p in self.products}
        self.draws = synthetic_deployments(profile, index, seed=seed)
        self.response_s = max(section.groups[g].response_s for p in section.products.values() for g in p.group_mw)
        self.award_kw = {p: np.zeros(T) for p in self.products}
        self.deployed_kw = {p: np.zeros(T) for p in self.products}
        self.deployment_limit_kw = np.full(T, np.inf)
        self.deployment_due_kw = np.zeros(T)
        self.local_day = index.tz_convert(profile.tz).normalize()
        self.days = list(pd.unique(self.local_day))
        self._next_day = 0
        self._live: dict[str, list[str]] = {p: [] for p in self.products}  # product -> deployment ids in force
        da_note = DA_NOTE if self.offer_rule == "price-taking" else DA_NOTE.replace(
            "price-taking,", "valued at the expected MCPC less the real-time risk of holding them (offer rule rt-risk); "
                             "the market clears them as a price taker's,")
        self.notes: list[str] = [SYNTHETIC_LABEL, da_note if mode == "day-ahead" else RT_STAND_IN_NOTE,
                                 f"AS deployments measured on the simulated fleet (it obeys at once), dated by the "
                                 f"slowest qualified group's response_s ({self.response_s:g} s)"]
        if mode != "day-ahead" and offer_rule is not None:  # newcomer: it was ignored without a word
            self.notes.append(f"offer rule {offer_rule} ignored: it prices day-ahead offers, and --as-mode {mode} "
                              "re-decides reserve every interval")
        self.refused: list[str] = []
        self.undrawn = 0  # SYNTHETIC draws with nothing awarded to deploy

    # ------------------------------------------------------------------ hooks of the closed loop

    def wrap_runner(self, runner: Any) -> Any:
        """The loop's solver: as given (day-ahead), or offering reserve at its price (real-time)."""
        if self.mode != "real-time":
            return runner
        return ReserveOfferRunner(runner, self.profile, lambda index, now: as_price_forecast(
            self.market, self.products, index, now, self.profile.tz))

    def before_tick(self, loop: Any, k: int, now: datetime) -> None:
        """Recall deployments whose SYNTHETIC draw ended; deliver the day-ahead awards published by ``now``."""
        for product in self.products:
            if self._live[product] and not self.draws[product][k]:
                for deployment_id in self._live[product]:
                    self._deploy(loop, ASDeployMessage(deployment_id=deployment_id, product=product, issued_at=now,
                                                       deployed_kw=0.0, recalled=True, issuer=self.issuer), now)
                self._live[product] = []
        if self.mode != "day-ahead":
            return
        while self._next_day < len(self.days):
            day = pd.Timestamp(self.days[self._next_day])
            publish = day - pd.Timedelta(days=1) + pd.Timedelta(hours=DAM_PUBLISHED_LOCAL_HOUR)
            if pd.Timestamp(now) < publish:  # the window's first day was published before it began
                break
            self._award_day(loop, day, now)
            self._next_day += 1

    def after_tick(self, loop: Any, k: int, now: datetime, report: Any) -> None:
        """Real-time awards from this tick's plan; SYNTHETIC deployments starting now; record the interval."""
        if self.mode == "real-time" and report.schedule is not None:
            row = report.schedule.frame.iloc[0]
            end = now + self.actuals.step.to_pytimedelta()
            for product in self.products:
                column = reserve_column(product)
                kw = math.floor(float(row.get(column, 0.0)) / OFFER_STEP_KW + 1e-9) * OFFER_STEP_KW
                if kw > 0:
                    self._award(loop, ASAwardMessage(
                        award_id=f"RT-{now:%Y%m%dT%H%M}-{product}", product=product, start=now, end=end,
                        reserve_kw=kw, price_usd_mw_h=float(self.mcpc[product][k]), issuer=self.issuer), now)
        awards = loop.book.reserve_awards_at(now)
        for product in self.products:
            self.award_kw[product][k] = sum(awards.get(product, {}).values())
            starts = self.draws[product][k] and (k == 0 or not self.draws[product][k - 1])
            if not starts:
                continue
            if self.award_kw[product][k] <= 0:
                self.undrawn += 1
                continue
            deployment_id = f"SYN-{product}-{now:%Y%m%dT%H%M}"
            ack = self._deploy(loop, ASDeployMessage(deployment_id=deployment_id, product=product, issued_at=now,
                                                     deployed_kw=float(self.award_kw[product][k]),
                                                     issuer=self.issuer), now)
            if ack.status == "accepted":
                self._live[product].append(deployment_id)
        for deployment in loop.book.as_deployments.values():
            if deployment.in_force(now) and deployment.product in self.deployed_kw:
                self.deployed_kw[deployment.product][k] += deployment.deployed_kw
                if deployment.deadline > now:
                    continue  # not yet due: measured from its deadline on, as the report does
                self.deployment_due_kw[k] += deployment.deployed_kw
                # The limit in force now: the book's (its pre-deployment load less the MW in force;
                # no award moves it), the one the guard enforced.
                self.deployment_limit_kw[k] = min(self.deployment_limit_kw[k],
                                                  loop.book.deployment_limit_kw(deployment, now))

    def measure(self, loop: Any, k: int, now: datetime, import_kw: float) -> None:
        """Give the loop the interval's import after the cut, dated by the slowest group's response."""
        if any(self.deployed_kw[p][k] > 0 for p in self.products):
            loop.measure_as_deployments(import_kw, now + timedelta(seconds=self.response_s))

    def outcome(self, loop: Any) -> ASOutcome:
        """Everything :func:`settle_reserve` needs, and the deployments' measured performance."""
        notes = list(self.notes)
        if self.undrawn:
            notes.append(f"{self.undrawn} SYNTHETIC deployment draw(s) fell where nothing was awarded (not sent)")
        notes += self.refused
        # The hold shortfall the loop recorded per interval (and wrote to the audit trail): the
        # settlement charges exactly these numbers, so the report of the run's trail agrees.
        recorded = getattr(loop, "reserve_hold_short_kw", {})
        hold_short = {p: np.array([float(recorded.get(t, {}).get(p, 0.0)) for t in self.actuals.index])
                      for p in self.products}
        # ... and the obligation it checked them against (the one time-weighted rule, H6).
        checked = getattr(loop, "reserve_obligation_kw", {})
        obligation = {p: np.array([float(checked[t].get(p, 0.0)) if t in checked else math.nan
                                   for t in self.actuals.index]) for p in self.products}
        return ASOutcome(self.mode, self.award_kw, self.mcpc, self.deployed_kw, self.deployment_limit_kw,
                         [dict(p) for p in loop.as_performance.values()], notes, hold_short,
                         self.deployment_due_kw, obligation)

    # ------------------------------------------------------------------ messages

    def _award(self, loop: Any, message: ASAwardMessage, now: datetime) -> None:
        ack = loop.handle_as_award(message, now)
        if ack.status != "accepted":
            self.refused.append(f"award {message.award_id} refused by the loop: {ack.reason}")

    def _deploy(self, loop: Any, message: ASDeployMessage, now: datetime) -> Any:
        ack = loop.handle_as_deploy(message, now)
        if ack.status != "accepted":
            self.refused.append(f"deployment {message.deployment_id} refused by the loop: {ack.reason}")
        return ack

    def _award_day(self, loop: Any, day: pd.Timestamp, now: datetime) -> None:
        """The DAM's awards for operating day ``day`` (local midnight), from D−1's prices."""
        day_index = self.actuals.index[self.local_day == day]
        hours = day_index.floor("h").unique()
        today = self.market.reindex(hours)
        made = None if today[self.products].isna().any().any() else offers_for_day(
            self.profile, self.market, day, day_index, offer_rule=self.offer_rule, time_limit_s=self.time_limit_s)
        if made is None:
            self.notes.append(f"{day:%Y-%m-%d}: no awards (day-ahead or AS prices missing for it or the day before)")
            return
        offers, _ = made
        hour_of = day_index.floor("h")
        for hour in hours:
            inside = np.asarray(hour_of == hour)
            for product in self.products:
                kw = float(offers[product][inside].min())  # an hourly award: what every interval of it can hold
                if kw <= 0:
                    continue
                self._award(loop, ASAwardMessage(
                    award_id=f"DA-{hour:%Y%m%dT%H}-{product}", product=product, start=hour.to_pydatetime(),
                    end=(hour + pd.Timedelta(hours=1)).to_pydatetime(), reserve_kw=kw,
                    price_usd_mw_h=float(today.loc[hour, product]), issuer=self.issuer), now)


# ---------------------------------------------------------------------------------------- settlement

def _margin_usd_per_kwh(profile: SiteProfile, product: str, hashprice_usd_per_ph_day: np.ndarray,
                        energy_price_usd_mwh: np.ndarray) -> np.ndarray:
    """[T] what one kWh shed of ``product``'s carrying groups would have earned, floored at 0.

    Hashes per kWh of the group's best mode above idle (group_mw-weighted across carrying groups)
    at the settled hashprice and pool fee, less the energy price."""
    section = profile.ancillary
    assert section is not None
    shares = section.products[product].group_mw
    total_mw = sum(shares.values()) or 1.0
    fee = profile.economics.pool_fee_pct / 100.0
    usd_per_th_h = hashprice_usd_per_ph_day / 1000.0 / 24.0 * (1.0 - fee)
    value = np.zeros_like(energy_price_usd_mwh, dtype=float)
    groups = {g.id: g for g in profile.miner_groups}
    for group_id, mw in shares.items():
        group = groups[group_id]
        th_per_kwh = max(m.hashrate_th_s / (m.power_kw - group.idle_power_kw) for m in group.modes
                         if m.power_kw > group.idle_power_kw)
        value = value + mw / total_mw * th_per_kwh * usd_per_th_h
    return np.maximum(value - energy_price_usd_mwh / 1000.0, 0.0)


def settle_reserve(profile: SiteProfile, actuals: Any, counts: dict[tuple[int, int], np.ndarray],
                   outcome: ASOutcome, info: SolveInfo | None = None) -> Schedule:
    """Account ``mpc+as``: energy at the real-time price, reserve at the MCPC (see the module docstring).

    The reserve carried is recomputed from the counts by the optimizer's own rule
    (``schedule.reserve_from_counts``) against the obligation in force (award less what is deployed,
    time-weighted over the interval as the loop's hold check found it, ``outcome.obligation_kw``),
    so no policy's figures come from its own plan; the hold shortfall charged is the loop's record of
    the fleet as it ran (``outcome.hold_short_kw``, the audit trail's ``reserve_hold_short``) when
    the outcome has it, so the report of the run's trail charges the same.

    Parameters
    ----------
    profile : SiteProfile
    actuals : backtest.actuals.Actuals
    counts : dict of (g, m) to np.ndarray
        [T] units running per group and mode.
    outcome : ASOutcome
    info : SolveInfo, optional

    Returns
    -------
    Schedule
        The accounted schedule plus, per product P: ``as_award_kw_P``, ``as_mcpc_usd_mw_h_P``,
        ``as_deployed_kw_P``, ``reserve_P_kw`` (held), ``reserve_P_short_kw`` (hold shortfall);
        and ``as_deployment_limit_kw``, ``as_deployment_short_kw``, ``as_payment_usd`` (award × MCPC),
        ``as_clawback_usd`` (hold shortfall × MCPC, ``reserve_clawback_usd``), ``as_revenue_usd`` (payment − clawback),
        ``as_deployment_cost_usd`` (measured, not subtracted), ``synthetic_deployment`` (bool: a
        SYNTHETIC deployment in force, from its instruction), ``as_deployment_binds`` (bool: one is
        due, past its deadline; only then are ``as_deployment_limit_kw`` finite and
        ``as_deployment_short_kw`` counted, ``control.as_shortfall``);
        ``profit_usd`` = revenue − energy − carbon − starts + ``as_revenue_usd``.
    """
    from hashflex.backtest.actuals import actual_problem

    # The obligation the loop's hold check used (control.ancillary.mean_obligations_kw: award less
    # deployed, time-weighted over the interval; H6), where it checked one; else award − deployed at
    # the interval's start (the same on the backtest's grid: awards and deployments start at ticks).
    obligation = {p: np.where(outcome.deployed_kw[p] > 0, np.maximum(outcome.award_kw[p] - outcome.deployed_kw[p], 0.0),
                              outcome.award_kw[p]) for p in outcome.award_kw}
    if outcome.obligation_kw is not None:
        obligation = {p: np.where(np.isfinite(outcome.obligation_kw.get(p, np.full(len(v), np.nan))),
                                  outcome.obligation_kw.get(p, v), v) for p, v in obligation.items()}
    problem = actual_problem(profile, actuals, as_award_kw=obligation, as_price_usd_mw_h=outcome.mcpc_usd_mw_h)
    schedule = schedule_from_counts(problem, counts, info or SolveInfo(status=SolveStatus.OPTIMAL, message="accounting"))
    frame = schedule.frame.copy()
    dt_h = frame["duration_h"].to_numpy(dtype=float)
    payment, clawback, cost = np.zeros(len(frame)), np.zeros(len(frame)), np.zeros(len(frame))
    deployed_total = (outcome.deployment_due_kw if outcome.deployment_due_kw is not None
                      else sum(outcome.deployed_kw.values(), np.zeros(len(frame))))
    limit = outcome.deployment_limit_kw
    # The one deployment-shortfall rule of the report and the backtest (control.as_shortfall).
    deploy_short = deployment_shortfall_kw(frame["grid_import_kw"].to_numpy(dtype=float), limit, deployed_total)
    hashprice = frame["hashprice_usd_per_ph_day"].to_numpy(dtype=float)
    energy_price = frame["energy_price_usd_mwh"].to_numpy(dtype=float)
    for p in outcome.award_kw:
        mcpc = outcome.mcpc_usd_mw_h[p]
        award = outcome.award_kw[p]
        deployed = outcome.deployed_kw[p]
        share = np.divide(deployed, deployed_total, out=np.zeros(len(frame)), where=deployed_total > 0)
        frame[f"as_award_kw_{p}"] = award
        frame[f"as_mcpc_usd_mw_h_{p}"] = mcpc
        frame[f"as_deployed_kw_{p}"] = deployed
        if outcome.hold_short_kw is not None and p in outcome.hold_short_kw:
            # One number for the summary, the clawback and the audit trail: the loop's record.
            frame[reserve_column(p, "short_kw")] = outcome.hold_short_kw[p]
        payment += award * mcpc * dt_h / 1000.0
        # The one clawback definition (control.ancillary.reserve_clawback_usd): the hold shortfall
        # at the award's price; a deployment's shortfall is reported, not charged.
        clawback += reserve_clawback_usd(frame[reserve_column(p, "short_kw")].to_numpy(dtype=float), mcpc, dt_h)
        delivered = np.maximum(deployed - share * deploy_short, 0.0)
        cost += delivered * dt_h * _margin_usd_per_kwh(profile, p, hashprice, energy_price)
    as_revenue = payment - clawback
    frame["as_deployment_limit_kw"] = limit
    frame["as_deployment_short_kw"] = deploy_short
    # In force (from the instruction) vs binding (from its deadline, control.as_shortfall's rule): a
    # NSPIN deployment's first 30 min showed as_deployed_kw 2700 beside synthetic_deployment False (H8).
    frame["synthetic_deployment"] = sum(outcome.deployed_kw.values(), np.zeros(len(frame))) > 0
    frame["as_deployment_binds"] = deployed_total > 0
    frame["as_payment_usd"] = payment
    frame["as_clawback_usd"] = clawback
    frame["as_deployment_cost_usd"] = cost
    # Realised, not expected: profit carries the AS net payment instead of the plan's valuation.
    frame["profit_usd"] = (frame["profit_usd"] - frame["as_revenue_usd"] + frame["as_expected_deployment_cost_usd"]
                           + as_revenue)
    frame["as_revenue_usd"] = as_revenue
    return dataclasses.replace(schedule, frame=frame)
