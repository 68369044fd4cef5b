"""Why ``mpc+as`` met 99.28 % of its reserve obligations on 8 May 2024 through the loop, not 100 %
(issue 15), as tiny hand-checkable cases. Of the 406.7 MW·h awarded that day, 2.890 MW·h were short
because of a deployment's fixed limit (first case) and 0.020 MW·h because the plan keeps a product a
unit short (second case, :func:`test_each_product_is_covered_by_its_own_groups`).

On that day a SYNTHETIC Non-Spin deployment of 2.7 MW began at 19:15 CDT and ran past 20:00, when the
hour's awards rose (RRS 9.9 → 10 MW, Non-Spin 2.7 → 4.9 MW). The deployment's import limit is fixed
at instruction as baseline − deployed (17,597 − 2,700 = 14,897 kW), but from 20:00 the site had to
keep 10,000 + 4,900 + (4,900 − 2,700) = 17,100 kW of sheddable load running: the hard limit wins and
the plan holds 2.3 MW of RRS too little for the deployment's remaining 75 minutes (2.9 of the day's
406.7 MW·h awarded; the rest of the 0.72 % gap). The same on a 10-block site:

10 hydro blocks of 1 MW (10 kW asleep), energy at $200/MWh (above breakeven: only an award keeps a
block running). RRS 1,980 kW awarded 17:00–19:00 keeps 2 blocks running: import 2 × 1,000 + 8 × 10
= 2,080 kW. RRS is deployed for its 1,980 kW at 17:05: limit 2,080 − 1,980 = 100 kW, both blocks
sleep (import 100 kW). From 18:00 an ECRS award of 1,980 kW must be held: 2 blocks running, import
2,080 kW — over the 100 kW limit, so today the plan holds none of it.

A former fix raised the limit with the awards (the "award rise", limit + max(0, A(t) − A(t₀)): here
2,080 kW from 18:00, the two ECRS blocks back). The project lead reversed it (issue 15, the 2024-05-08
newcomer: with the rise only 0.4 of a 2.7 MW deployment was delivered measured from the pre-deployment
load, while the report showed no shortfall): ERCOT measures the deployment from the load before the
instruction (Nodal Protocols §8.1.1.4.x) and a later award does not license load back, so the limit
stays 100 kW and the ECRS award is a hold shortfall, clawed back (tests/test_as_deployment_fixed_limit.py).
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
from as_support import (
    award,
    big_small_profile_yaml,
    flat_prices,
    hydro_profile_yaml,
    make_loop,
)

from hashflex.control.loop import ControlLoop
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile

PROFILE = hydro_profile_yaml("AS Obligations")

AT_17 = pd.Timestamp("2024-06-03T17:00Z").to_pydatetime()
HOUR = timedelta(hours=1)


def _prices() -> pd.DataFrame:
    """SYNTHETIC flat $200/MWh, RT and DA."""
    return flat_prices(start="2024-06-01T00:00Z")


def _award(award_id: str, product: str, start, end) -> ASAwardMessage:
    return award(award_id, product, 1980.0, start=start, end=end)


@pytest.fixture()
def deployed_loop() -> ControlLoop:
    """RRS awarded 17:00–19:00 and deployed at 17:05 (not recalled); ECRS awarded 18:00–19:00."""
    profile = parse_profile(PROFILE, source="test")
    loop = make_loop(profile, _prices())
    assert loop.handle_as_award(_award("rrs", "RRS", AT_17, AT_17 + 2 * HOUR), AT_17).status == "accepted"
    assert loop.handle_as_award(_award("ecrs", "ECRS", AT_17 + HOUR, AT_17 + 2 * HOUR), AT_17).status == "accepted"
    loop.tick(AT_17)
    assert sum(loop.driver.running().values()) == 2, "the RRS award keeps exactly 2 blocks running"
    at = AT_17 + timedelta(minutes=5)
    ack = loop.handle_as_deploy(ASDeployMessage(deployment_id="dep-rrs", product="RRS", issued_at=at,
                                                deployed_kw=1980.0, issuer="qse-test"), at)
    assert ack.status == "accepted"
    assert sum(loop.driver.running().values()) == 0, "the deployment sheds both blocks"
    return loop


def test_the_deployment_limit_is_baseline_less_deployed(deployed_loop: ControlLoop) -> None:
    """What holds today (and must keep holding): 2,080 − 1,980 = 100 kW while RRS alone is awarded."""
    limits, _ = deployed_loop.book.import_limits_over([pd.Timestamp(AT_17 + timedelta(minutes=30))],
                                                      timedelta(minutes=15))
    assert float(limits[0]) == pytest.approx(100.0)


def test_an_award_rising_during_a_deployment_is_a_hold_shortfall(deployed_loop: ControlLoop) -> None:
    """At 18:00 RRS stays deployed (shed) under its 100 kW limit; ECRS's 1,980 kW cannot be held
    under it: the plan runs no block and reports it short (the rule changed by decision: it ran 2
    blocks under the former award rise, 2,080 kW against a deployment measured from 2,080 kW)."""
    report = deployed_loop.tick(AT_17 + HOUR)
    frame = report.schedule.frame
    assert float(frame["reserve_ECRS_short_kw"].iloc[0]) == pytest.approx(1980.0, abs=1.0)
    assert float(frame["grid_import_kw"].iloc[0]) <= 100.0 + 1e-6
    assert sum(deployed_loop.driver.running().values()) == 0


ROUNDING_PROFILE = big_small_profile_yaml("AS Rounding", import_limit_kw=200000)


def test_each_product_is_covered_by_its_own_groups() -> None:
    """8 May 2024 kept 1,891 S19j units (4,897.7 kW sheddable) for a 4,900 kW Non-Spin award and
    1,730 S21 units (4,999.7 kW) for 5,000 kW of ECRS. The same, small: 1,000 efficient 100 kW units
    (breakeven $200/MWh) all run at $50/MWh and carry RRS 1,000 kW with 99 MW to spare; ECRS 1,001 kW
    may only come from 2.6 kW units (2.59 kW sheddable each; breakeven $38.6/MWh, so they run only
    for the award): ceil(1,001 / 2.59) = 387 units. Today the plan runs 386 (999.74 kW, 1.26 kW
    short): the rounding step sees 100,999.74 kW sheddable against 2,001 kW awarded in total and adds
    nothing, and the 1.26 kW × about $0.35/kWh penalty is far inside the 0.5 % gap of a $15,000 objective.
    Fix (optimize/rounding.py, H2's): cover each product from its own groups (``group_max_kw``),
    e.g. by the short of ``schedule.reserve_from_counts``, adding a unit to a carrying group of a
    short product while the import and noise rooms allow."""
    from hashflex.optimize.problem import problem_from_profile
    from hashflex.optimize.solve import solve

    profile = parse_profile(ROUNDING_PROFILE, source="test")
    index = pd.date_range("2024-06-03T00:00Z", periods=4, freq="15min")
    schedule = solve(problem_from_profile(profile, index, [50.0] * 4, as_award_kw={"RRS": 1000.0, "ECRS": 1001.0},
                                          as_price_usd_mw_h={"RRS": 1.0, "ECRS": 1.0}))
    frame = schedule.frame
    assert (frame["reserve_RRS_short_kw"] == 0).all()
    assert (frame["units_small_run"] >= 387).all()
    assert (frame["reserve_ECRS_short_kw"] <= 1e-6).all()
