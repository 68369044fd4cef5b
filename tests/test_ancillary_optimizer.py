"""Ancillary services in the plan (issue 15): hand-checkable cases on real HiGHS solves.

One "block" is a 1 MW container earning $66.67/h at the hashprice used here (breakeven
$66.67/MWh), so every number below can be checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashflex.optimize.problem import problem_from_profile
from hashflex.optimize.solve import solve
from hashflex.profile import ProfileError, parse_profile

BLOCK_KW = 1000.0
HASHPRICE = 48.0  # $/PH/day: 33,333.3 TH/s earn 33.3333 PH/s × $48/day = $66.67/h per block

PROFILE = """
site: {{name: As Test, settlement_point: HB_WEST, timezone: America/Chicago}}
grid: {{import_limit_kw: 20000}}
miner_groups:
  - id: hydro
    model: container
    units: 10
    cooling: hydro
    modes: [{{name: run, power_kw: 1000, hashrate_th_s: 33333.333, sound_power_dba: 100}}]
receptors:
  - id: farm
    attenuation_db: {{hydro: 60}}
    background_dba: 30
    cap_applies_to: site
    model_margin_db: 0
    caps: [{{name: night, start: "22:00", end: "06:00", cap_dba: 43.5}}]
carbon: {{default_intensity_kg_per_mwh: 400, intensity_source: test}}
economics: {{hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}}
ancillary:
  issuer: qse-test
  groups: {{hydro: {{response_s: {response_s}, under_frequency_relay: {ufr}}}}}
  products:
    RRS: {{group_mw: {{hydro: 5}}, expected_deployments_per_month: 0}}
"""


def profile(response_s: float = 0.5, ufr: str = "true"):
    return parse_profile(PROFILE.format(response_s=response_s, ufr=ufr), source="test")


def hours(start_local: str, n: int) -> pd.DatetimeIndex:
    return pd.date_range(pd.Timestamp(start_local, tz="America/Chicago"), periods=n, freq="15min")


def test_high_rrs_price_keeps_exactly_the_offered_units_running_above_breakeven() -> None:
    """Energy at $200/MWh (> $66.67 breakeven): energy alone runs nothing. RRS at $150/MW-h: a block
    held loses $133.33/h on energy and earns $150/h of reserve, so the plan keeps exactly the 5 MW
    the site may offer running, and says why."""
    index = hours("2024-06-01 12:00", 4)
    energy_only = solve(problem_from_profile(profile(), index, np.full(4, 200.0)))
    assert (energy_only.frame["load_kw"] == 0).all()
    problem = problem_from_profile(profile(), index, np.full(4, 200.0), as_price_usd_mw_h={"RRS": 150.0})
    frame = solve(problem).frame
    assert (frame["units_hydro_run"] == 5).all()
    assert np.allclose(frame["reserve_RRS_kw"], 5000.0)
    assert np.allclose(frame["as_revenue_usd"], 5 * 150.0 * 0.25)
    assert (frame["reason"] == "reserve RRS 5 MW").all()
    # Profit = hashes − energy + reserve, by hand: 5 × (66.67 − 200 + 150) × 0.25 h per interval.
    assert frame["profit_usd"].to_numpy() == pytest.approx(np.full(4, 5 * (200 / 3 - 200 + 150) * 0.25), rel=1e-4)


def test_low_rrs_price_does_not_keep_units_on() -> None:
    """At $100/MW-h the reserve does not pay for the $133.33/h loss: nothing runs, nothing held."""
    index = hours("2024-06-01 12:00", 2)
    frame = solve(problem_from_profile(profile(), index, np.full(2, 200.0), as_price_usd_mw_h={"RRS": 100.0})).frame
    assert (frame["load_kw"] == 0).all() and (frame["reserve_RRS_kw"] == 0).all()


def test_award_is_a_minimum_running_load_of_exactly_the_awarded_units() -> None:
    """An award of 3 MW at a $1/MW-h price: the units carrying it run whatever the energy price."""
    index = hours("2024-06-01 12:00", 4)
    problem = problem_from_profile(profile(), index, np.full(4, 500.0), as_price_usd_mw_h={"RRS": 1.0},
                                   as_award_kw={"RRS": np.array([3000.0, 3000.0, 0.0, 2000.0])})
    frame = solve(problem).frame
    assert frame["units_hydro_run"].tolist() == [3, 3, 0, 2]
    assert frame["reserve_RRS_kw"].tolist() == pytest.approx([3000, 3000, 0, 2000])
    assert (frame["reserve_RRS_short_kw"] < 1e-6).all()
    assert frame["reason"].tolist()[:2] == ["reserve RRS 3 MW"] * 2


def test_night_noise_cap_limits_the_reserve() -> None:
    """From 22:00 the farm's cap (43.5 dB(A) for the site, 40 dB(A) per block) allows 2 blocks: the
    offer drops from 5 MW to 2 MW at 22:00, and an award of 5 MW is 3 MW short, reported."""
    index = hours("2024-06-01 21:30", 4)  # 21:30, 21:45, 22:00, 22:15 local
    frame = solve(problem_from_profile(profile(), index, np.full(4, 200.0), as_price_usd_mw_h={"RRS": 150.0})).frame
    assert frame["reserve_RRS_kw"].tolist() == pytest.approx([5000, 5000, 2000, 2000])
    assert frame["units_hydro_run"].tolist() == [5, 5, 2, 2]
    awarded = solve(problem_from_profile(profile(), index, np.full(4, 200.0), as_price_usd_mw_h={"RRS": 150.0},
                                         as_award_kw={"RRS": 5000.0})).frame
    assert awarded["reserve_RRS_short_kw"].tolist() == pytest.approx([0, 0, 3000, 3000])
    assert (awarded["noise_dba_farm"] <= awarded["noise_cap_dba_farm"] + 1e-9).all()


def test_dr_import_limit_wins_over_an_award() -> None:
    """A DR limit of 2 MW binds; the 5 MW award is short 3 MW, the limit holds (safety first)."""
    index = hours("2024-06-01 12:00", 2)
    frame = solve(problem_from_profile(profile(), index, np.full(2, 200.0), import_limit_kw=np.full(2, 2000.0),
                                       as_award_kw={"RRS": 5000.0}, as_price_usd_mw_h={"RRS": 150.0})).frame
    assert (frame["grid_import_kw"] <= 2000.0 + 1e-6).all()
    assert frame["reserve_RRS_short_kw"].tolist() == pytest.approx([3000, 3000])


def test_profile_refuses_a_group_too_slow_or_without_relay_for_rrs() -> None:
    with pytest.raises(ProfileError, match=r"ancillary.*products.RRS.group_mw.hydro: response_s 700 s"):
        profile(response_s=700)
    with pytest.raises(ProfileError, match=r"under_frequency_relay: true"):
        profile(ufr="false")


def test_award_for_an_unqualified_product_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"NSPIN"):
        problem_from_profile(profile(), hours("2024-06-01 12:00", 2), np.full(2, 20.0), as_award_kw={"NSPIN": 1000.0})


TWO_PRODUCTS = PROFILE.replace("grid: {{import_limit_kw: 20000}}", "grid: {{import_limit_kw: 3000}}").replace(
    "    RRS: {{group_mw: {{hydro: 5}}, expected_deployments_per_month: 0}}",
    "    RRS: {{group_mw: {{hydro: 5}}, expected_deployments_per_month: 0}}\n"
    "    ECRS: {{group_mw: {{hydro: 5}}, expected_deployments_per_month: 0}}")


def test_an_award_is_held_even_when_another_product_pays_more_for_the_same_megawatts() -> None:
    """H6's finding: the penalty for an award not held was below what another, offered product pays,
    so the plan sold the offered product and left the award short. 3 blocks may run (3 MW import
    limit); ECRS awarded 3 MW at $1/MW-h; RRS offered at $10,000/MW-h. The award must be held."""
    index = hours("2024-06-01 12:00", 2)
    problem = problem_from_profile(parse_profile(TWO_PRODUCTS.format(response_s=0.5, ufr="true"), source="test"),
                                   index, np.full(2, 20.0), as_price_usd_mw_h={"RRS": 10_000.0, "ECRS": 1.0},
                                   as_award_kw={"ECRS": np.full(2, 3000.0)})
    frame = solve(problem).frame
    assert (frame["units_hydro_run"] == 3).all()
    assert np.allclose(frame["reserve_ECRS_kw"], 3000.0)
    assert (frame["reserve_ECRS_short_kw"] < 1e-6).all()
    assert np.allclose(frame["reserve_RRS_kw"], 0.0, atol=1e-6)
