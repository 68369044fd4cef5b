"""An AS deployment's baseline is the lower of the modelled import and the latest fresh measured
import (issue 15, newcomer finding 1): while miners are still booting the plan's commanded load is
above what is drawn, and a limit of (commanded − deployed) would let the load RISE during the
deployment and still count as delivered. ERCOT measures a Load Resource from telemetry, so the
site sheds from what it actually drew at the instruction (when in doubt, curtail).

The site (SYNTHETIC test data) is test_as_late_deployments': 10 hydro blocks of 1 MW (10 kW asleep);
an RRS award of 4,950 kW keeps 5 blocks running: modelled import 5 × 1,000 + 5 × 10 = 5,050 kW.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from hashflex.control.loop import ControlLoop
from hashflex.control.solver import SolveRunner
from hashflex.messages import ASAwardMessage
from hashflex.profile import parse_profile
from hashflex.sim.site import ReplayForecaster, SimulatedFleet
from tests.test_as_late_deployments import NOW, _deploy, _loop, _prices


def test_a_deployment_sheds_from_the_fresh_metered_import_when_it_is_below_the_model() -> None:
    """The meter reads 4,000 kW (a block still booting) while the model says 5,050 kW: RRS 1,000 kW
    sets the limit 4,000 − 1,000 = 3,000 kW (not 4,050 kW, which would let the load rise 50 kW above
    what was drawn), the ack says the baseline was measured, and the performance record's
    baseline, delivered and shortfall use the same baseline."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    loop.handle_meter(4000.0, issued - timedelta(seconds=2), issued - timedelta(seconds=2))
    ack = loop.handle_as_deploy(_deploy("meas-1", issued, 1000.0), issued)
    assert ack.status == "accepted", ack.reason
    assert ack.import_limit_kw == pytest.approx(3000.0)
    assert "from 4000 kW (measured: site meter)" in ack.reason
    assert loop.book.import_limits_at(issued)["AS:RRS:meas-1"] == pytest.approx(3000.0)
    performance = loop.as_performance["meas-1"]
    assert performance["baseline_kw"] == pytest.approx(4000.0)
    assert performance["baseline_source"] == "measured: site meter"
    assert performance["modelled_baseline_kw"] == pytest.approx(5050.0)
    # Two blocks asleep leave 3 × 1,000 + 7 × 10 = 3,070 kW > 3,000: three asleep, 2,080 kW.
    assert sum(loop.driver.running().values()) == 2
    assert performance["delivered_kw"] == pytest.approx(4000.0 - 2080.0)
    assert performance["shortfall_kw"] == pytest.approx(0.0)


def test_a_stale_or_higher_reading_leaves_the_modelled_baseline() -> None:
    """A reading older than the guard's freshness window below the model is the only evidence of
    what was drawn: the baseline is the lower of the two, named stale (issue 15, H2 finding 5: the
    modelled 5,050 kW credited megawatts the meter never showed). One above the model is not used
    (the lower of the two is the safe one): it sheds from the modelled 5,050 kW."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    loop.handle_meter(3000.0, issued - timedelta(seconds=600), issued - timedelta(seconds=600))
    ack = loop.handle_as_deploy(_deploy("stale-1", issued, 1000.0), issued)
    assert ack.import_limit_kw == pytest.approx(2000.0)
    assert "from 3000 kW (measured: site meter, stale 600 s)" in ack.reason, ack.reason
    assert loop.as_performance["stale-1"]["baseline_source"] == "measured: site meter, stale 600 s"
    loop = _loop()
    loop.handle_meter(5400.0, issued - timedelta(seconds=1), issued - timedelta(seconds=1))
    ack = loop.handle_as_deploy(_deploy("high-1", issued, 1000.0), issued)
    assert ack.import_limit_kw == pytest.approx(4050.0)
    assert "(modelled)" in ack.reason


SMALL = """
site: {name: AS Telemetry, settlement_point: HB_WEST, settlement_point_type: HU, timezone: America/Chicago}
grid: {import_limit_kw: 2000}
miner_groups:
  - id: hydro
    model: S21 hydro
    units: 20
    cooling: hydro
    idle_power_kw: 0.01
    modes: [{name: run, power_kw: 5.0, hashrate_th_s: 166.67, sound_power_dba: 70}]
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 48, pool_fee_pct: 0}
ancillary:
  issuer: qse-test
  groups: {hydro: {response_s: 0.5, under_frequency_relay: true}}
  products:
    RRS: {group_mw: {hydro: 0.1}}
"""


def _small_loop():
    profile = parse_profile(SMALL, source="test")
    loop = ControlLoop(profile, forecaster=ReplayForecaster(profile, _prices()), driver=SimulatedFleet(profile),
                       solver=SolveRunner(inline=True))
    award = ASAwardMessage(award_id="rrs", product="RRS", start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=3),
                           reserve_kw=49.9, price_usd_mw_h=150.0, issuer="qse-test")
    assert loop.handle_as_award(award, NOW).status == "accepted"
    loop.tick(NOW)
    running = sorted(m for m in loop.fleet.miners if loop.fleet.miners[m].mode != "sleep")
    assert len(running) == 10
    return loop, running


def test_miner_telemetry_stands_in_for_a_meter_only_once_nearly_every_miner_has_reported() -> None:
    """SYNTHETIC 20 miners of 5 kW; an RRS award of 49.9 kW keeps 10 running (50.1 kW modelled with the
    sleepers' 0.1 kW). Five miners have reported 5 kW (after a restart, say): their 25 kW sum is not the
    site's load, and a baseline from it would cut the site to 15 kW for a 10 kW deployment (failed
    before: limit 15 kW). Once every miner has reported (10 running at 4.8 kW, 10 asleep at 0.01 kW:
    48.1 kW, below the model), the sum is the baseline: limit 38.1 kW."""
    from hashflex.messages import TelemetryMessage

    def report(loop, miner_id: str, kw: float, at) -> None:
        loop.on_message(TelemetryMessage(miner_id=miner_id, power_kw=kw, hashrate_th_s=0.0, mode="run",
                                         temperature_c=40.0, timestamp=at - timedelta(seconds=1)), at)

    at = NOW + timedelta(minutes=3)
    loop, running = _small_loop()
    for miner_id in running[:5]:
        report(loop, miner_id, 5.0, at)
    ack = loop.handle_as_deploy(_deploy("tel-1", at, 10.0), at)
    assert ack.status == "accepted", ack.reason
    assert "(modelled)" in ack.reason and ack.import_limit_kw == pytest.approx(40.1)

    loop, running = _small_loop()
    for miner_id in loop.fleet.miners:
        report(loop, miner_id, 4.8 if miner_id in running else 0.01, at)
    ack = loop.handle_as_deploy(_deploy("tel-2", at, 10.0), at)
    assert "(measured: miner telemetry)" in ack.reason, ack.reason
    assert ack.import_limit_kw == pytest.approx(38.1)
