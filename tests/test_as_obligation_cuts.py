"""Cuts for a hard limit keep the units that hold other awards (issue 15: obligations met 100 %).

Traced in ``ancillary_value.py --loop --from 2024-05-01 --days 10`` (price-taking offers, 2.985 of
3,955.7 MW·h awarded short, 99.925 %):

- 2.564 MW·h: a SYNTHETIC RRS deployment (9.9 MW on 9 May 21:45 CDT, 10 MW on 10 May 14:15) was cut
  by the fast path "least efficient (J/TH) first": it slept the S19j Pro hall, which held the whole
  4.9 MW Non-Spin award, and 455 kW of the S21 hall's ECRS award, while the hydro containers that
  carry RRS kept mining. Non-Spin and ECRS were short for the interval (the next plan restored them).
- 0.33 MW·h: at sunset and sunrise the plan's solar forecast was above what was measured (e.g. 1,444
  vs 556 kW at 18:45); the tick's guard cut the import excess from the same S19j Pro hall,
  leaving Non-Spin 54–608 kW short, while the S21 hall ran at turbo 5 MW above its ECRS award.

The fix (`CountGuard.reserve_keep`, set by the loop from the awards in force and the deployments):
a cut takes first what no award needs (per group, the running sheddable kW above what the awards in
force need of it, `control.ancillary.reserve_keep_kw`), in the usual order; only if the limit still
needs more does it cut reserve-holding units (a hard limit wins; what is then short is recorded).

A hand-checkable site: 10 hydro blocks of 1 MW at 20 J/TH (mine at $60/MWh), 10 air blocks of 1 MW at
50 J/TH (breakeven $40/MWh: only the Non-Spin award keeps 2 running). Energy at $60/MWh, 48 $/PH/day.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from as_support import award, big_small_profile_yaml, flat_prices

from hashflex.control.ancillary import reserve_keep_kw
from hashflex.control.guard import Guard, Limits, Measurements
from hashflex.control.guard_counts import CountGuard
from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet

PROFILE = """
site: {name: AS Cuts, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
grid: {import_limit_kw: 30000}
miner_groups:
  - id: hydro
    model: container
    units: 10
    cooling: hydro
    idle_power_kw: 10
    modes: [{name: run, power_kw: 1000, hashrate_th_s: 50000, sound_power_dba: 90}]
  - id: old_air
    model: hall
    units: 10
    cooling: air
    idle_power_kw: 10
    modes: [{name: run, power_kw: 1000, hashrate_th_s: 20000, sound_power_dba: 90}]
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
ancillary:
  issuer: qse-test
  groups: {hydro: {response_s: 0.5, under_frequency_relay: true}, old_air: {response_s: 30}}
  products:
    RRS: {group_mw: {hydro: 5}, expected_deployments_per_month: 0}
    NSPIN: {group_mw: {old_air: 5}, expected_deployments_per_month: 0}
"""
NOW = pd.Timestamp("2024-06-03T17:00Z").to_pydatetime()


def _prices(level: float = 60.0) -> pd.DataFrame:
    """SYNTHETIC flat prices, RT and DA."""
    return flat_prices(level)


def _award(award_id: str, product: str, kw: float) -> ASAwardMessage:
    return award(award_id, product, kw, start=NOW, end=NOW + timedelta(hours=2))


def _running(fleet: SimulatedFleet, group: str) -> int:
    return sum(n for (g, _), n in fleet.running().items() if g == group)


def test_the_keep_is_what_each_award_needs_of_its_groups() -> None:
    profile = parse_profile(PROFILE, source="test")
    keep = reserve_keep_kw(profile, {"RRS": 2000.0, "NSPIN": 1980.0}, {"hydro": 9990.0, "old_air": 1998.0})
    assert keep == {"hydro": pytest.approx(2000.0), "old_air": pytest.approx(1980.0)}
    # A product's groups cannot give more than they run: what is missing is not kept elsewhere.
    assert reserve_keep_kw(profile, {"NSPIN": 3000.0}, {"old_air": 999.0}) == {"old_air": pytest.approx(999.0)}
    assert reserve_keep_kw(profile, {}, {"hydro": 9990.0}) == {}


def test_the_guard_cuts_an_import_excess_from_units_no_award_needs() -> None:
    """10 hydro + 2 old blocks run (12,000 kW + 8 × 10 kW idle); the limit is 11,000 kW. Least
    efficient first would sleep both old blocks (Non-Spin 1,980 kW short); with the keep it sleeps 2
    hydro blocks, which RRS (2,000 kW of 10 running) does not need."""
    profile = parse_profile(PROFILE, source="test")
    guard = CountGuard(Guard(profile))
    guard.reserve_keep = lambda sheddable, now: reserve_keep_kw(profile, {"RRS": 2000.0, "NSPIN": 1980.0}, sheddable)
    counts = {("hydro", "run"): 10, ("old_air", "run"): 2}
    limits = Limits(import_limits_kw={"DR:test": 11000.0})
    cut = guard.check(counts, Measurements(at=NOW, renewable_kw=0.0), limits, NOW)
    assert cut.counts == {("hydro", "run"): 8, ("old_air", "run"): 2}
    assert guard.net_import_kw(cut.counts) <= 11000.0


def test_a_hard_limit_still_wins_over_the_keep() -> None:
    """The limit needs more than the units no award needs: reserve-holding units are cut too (the
    import limit is hard), and the action says so."""
    profile = parse_profile(PROFILE, source="test")
    guard = CountGuard(Guard(profile))
    guard.reserve_keep = lambda sheddable, now: reserve_keep_kw(profile, {"RRS": 2000.0, "NSPIN": 1980.0}, sheddable)
    cut = guard.emergency_dr_cut({("hydro", "run"): 10, ("old_air", "run"): 2}, 1500.0,
                                 Measurements(at=NOW, renewable_kw=0.0), NOW)
    assert guard.net_import_kw(cut.counts) <= 1500.0
    assert any("award" in a.reason for a in cut.actions)


def test_an_rrs_deployment_sheds_rrs_units_and_keeps_the_non_spin_award() -> None:
    """Through the loop: RRS 2,000 kW and Non-Spin 1,980 kW awarded; RRS deployed for 2,000 kW. The
    fast path must shed 3 hydro blocks (990 kW each above idle: 2,000 kW needs 3), not the 2 old
    blocks that hold Non-Spin (before the fix it slept both old blocks and one hydro block: least
    efficient first)."""
    profile = parse_profile(PROFILE, source="test")
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=fleet,
                       solver=SolveRunner(inline=True))
    assert loop.handle_as_award(_award("rrs", "RRS", 2000.0), NOW).status == "accepted"
    assert loop.handle_as_award(_award("nspin", "NSPIN", 1980.0), NOW).status == "accepted"
    loop.tick(NOW)
    assert (_running(fleet, "hydro"), _running(fleet, "old_air")) == (10, 2)
    at = NOW + timedelta(minutes=5)
    ack = loop.handle_as_deploy(ASDeployMessage(deployment_id="dep-rrs", product="RRS", issued_at=at,
                                                deployed_kw=2000.0, issuer="qse-test"), at)
    assert ack.status == "accepted"
    assert (_running(fleet, "hydro"), _running(fleet, "old_air")) == (7, 2)


SWAP_PROFILE = big_small_profile_yaml("AS Swap", import_limit_kw=101010)


def test_the_cover_makes_room_under_a_full_limit_from_units_no_award_needs() -> None:
    """The third cause of 1–10 May (0.094 MW·h: Non-Spin 0.2–90 kW short at 38 of 39 or 1,891 of
    1,892 S19j units while the carbon budget, the import limit or a noise cap was full): the cover
    only added units, and none fitted. Small: 1,000 big units (100 kW, RRS 1,000 kW needs 10) mine
    at $50/MWh and fill the 101,010 kW limit with 386 small units (999.74 kW sheddable) for an ECRS
    award of 1,001 kW, 1.26 kW short. A big unit that RRS does not need makes room: the cover
    sleeps one (100 kW) and runs the 387th small unit; ECRS is held, RRS too, the limit kept."""
    import numpy as np

    from hashflex.optimize.problem import problem_from_profile
    from hashflex.optimize.rounding import (
        cover_reserve_obligations,
        load_kw,
        reserve_uncovered_kw,
    )

    profile = parse_profile(SWAP_PROFILE, source="test")
    index = pd.date_range("2024-06-03T00:00Z", periods=4, freq="15min")
    problem = problem_from_profile(profile, index, [50.0] * 4, as_award_kw={"RRS": 1000.0, "ECRS": 1001.0},
                                   as_price_usd_mw_h={"RRS": 1.0, "ECRS": 1.0})
    counts = {(0, 0): np.full(4, 1000), (1, 0): np.full(4, 386)}
    assert (reserve_uncovered_kw(problem, counts) > 1.0).all()
    assert (load_kw(problem, counts) <= problem.import_limit_kw + problem.renewable_kw + 1e-6).all()
    cover_reserve_obligations(problem, counts)
    assert (reserve_uncovered_kw(problem, counts) <= 1e-6).all()
    assert (counts[1, 0] == 387).all() and (counts[0, 0] == 999).all()
    assert (load_kw(problem, counts) <= problem.import_limit_kw + problem.renewable_kw + 1e-6).all()


# The noise cuts (the rest of 1–10 May: 0.027 MW·h, a measured noise exceedance stepped down the
# Non-Spin hall on 3 May 05:00 and 9 May 06:00). Same site with a receptor: the old hall is nearer
# (35 dB attenuation: 55 dB(A) a block there) than the hydro containers (40 dB: 50 dB(A) a block).
NOISE_PROFILE = PROFILE + """
receptors:
  - id: ranch
    attenuation_db: {hydro: 40, old_air: 35}
    background_dba: 30
    caps: [{name: always, start: "00:00", end: "23:59", cap_dba: 70},
           {name: late, start: "23:59", end: "00:00", cap_dba: 70}]
"""


def _noise_guard(awards: dict[str, float]) -> tuple[CountGuard, object]:
    profile = parse_profile(NOISE_PROFILE, source="test")
    guard = CountGuard(Guard(profile))
    guard.reserve_keep = lambda sheddable, now: reserve_keep_kw(profile, awards, sheddable)
    return guard, profile


def test_a_noise_exceedance_steps_down_units_no_award_needs_first() -> None:
    """10 hydro (60.0 dB(A)) + 2 old blocks (58.0 dB(A)) + 30 dB(A) background: 62.1 dB(A) modelled. A
    reading 1 dB over the cap must take ~0.34 of the 1.63 (×10⁶) energy: loudest first sleeps both
    old blocks (0.63), Non-Spin 1,980 kW short; with the keep it sleeps 4 hydro blocks (0.10 each)."""
    guard, _ = _noise_guard({"NSPIN": 1980.0})
    counts = {("hydro", "run"): 10, ("old_air", "run"): 2}
    without = guard.noise_exceedance_cut("ranch", 63.0, 62.0, counts)  # no time: no keep, loudest first
    assert without.counts == {("hydro", "run"): 10}
    cut = guard.noise_exceedance_cut("ranch", 63.0, 62.0, counts, NOW)
    assert cut.counts == {("hydro", "run"): 6, ("old_air", "run"): 2}
    before, after = guard.noise_level_dba(counts, "ranch"), guard.noise_level_dba(cut.counts, "ranch")
    assert after <= before - 1.0, "the cut still removes the measured excess"
    assert "units no reserve award needs first" in cut.actions[0].reason


def test_the_noise_cap_still_wins_over_the_keep() -> None:
    """RRS 5,000 kW of hydro and Non-Spin 1,980 kW of the old blocks: only 4 hydro blocks are free
    (9,900 − 5,000 kW). A reading 6 dB over needs more: reserve-holding units step too, and say so."""
    guard, _ = _noise_guard({"RRS": 5000.0, "NSPIN": 1980.0})
    counts = {("hydro", "run"): 10, ("old_air", "run"): 2}
    cut = guard.noise_exceedance_cut("ranch", 68.0, 62.0, counts, NOW)
    assert guard.noise_level_dba(cut.counts, "ranch") <= guard.noise_level_dba(counts, "ranch") - 6.0
    assert "holding awarded reserve" in cut.actions[0].reason


def test_the_ticks_noise_step_down_keeps_the_non_spin_units() -> None:
    """The tick's check: a 61 dB(A) cap (model margin 0) over a 62.1 dB(A) plan steps hydro down, not
    the Non-Spin hall."""
    guard, _ = _noise_guard({"NSPIN": 1980.0})
    counts = {("hydro", "run"): 10, ("old_air", "run"): 2}
    cut = guard.check(counts, Measurements(at=NOW, renewable_kw=0.0),
                      Limits(noise_caps_dba={"ranch": 61.0}), NOW)
    assert cut.counts.get(("old_air", "run")) == 2
    assert guard.noise_level_dba(cut.counts, "ranch") <= 61.0 + 1e-9


def test_a_noise_reading_over_the_cap_keeps_the_non_spin_award_through_the_loop() -> None:
    """Through the loop's fast path (`handle_noise`): awards of RRS 2,000 kW and Non-Spin 1,980 kW, a
    reading 1 dB over the cap: hydro blocks go, the two old blocks keep running (before: both slept)."""
    from hashflex.messages import NoiseMessage

    profile = parse_profile(NOISE_PROFILE, source="test")
    fleet = SimulatedFleet(profile)
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=fleet,
                       solver=SolveRunner(inline=True))
    assert loop.handle_as_award(_award("rrs", "RRS", 2000.0), NOW).status == "accepted"
    assert loop.handle_as_award(_award("nspin", "NSPIN", 1980.0), NOW).status == "accepted"
    loop.tick(NOW)
    assert (_running(fleet, "hydro"), _running(fleet, "old_air")) == (10, 2)
    at = NOW + timedelta(minutes=5)
    loop.handle_noise(NoiseMessage(receptor_id="ranch", laeq_dba=71.0, averaging_s=60, timestamp=at,
                                   meter_class=1), at)
    assert _running(fleet, "old_air") == 2
    assert _running(fleet, "hydro") < 10
