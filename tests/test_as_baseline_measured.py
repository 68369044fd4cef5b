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

from tests.test_as_late_deployments import NOW, _deploy, _loop


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
    """A reading older than the guard's freshness window is not believed, and one above the model
    is not used (the lower of the two is the safe one): both shed from the modelled 5,050 kW."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    loop.handle_meter(3000.0, issued - timedelta(seconds=600), issued - timedelta(seconds=600))
    ack = loop.handle_as_deploy(_deploy("stale-1", issued, 1000.0), issued)
    assert ack.import_limit_kw == pytest.approx(4050.0)
    assert "from 5050 kW (modelled)" in ack.reason
    assert loop.as_performance["stale-1"]["baseline_source"] == "modelled"
    loop = _loop()
    loop.handle_meter(5400.0, issued - timedelta(seconds=1), issued - timedelta(seconds=1))
    ack = loop.handle_as_deploy(_deploy("high-1", issued, 1000.0), issued)
    assert ack.import_limit_kw == pytest.approx(4050.0)
    assert "(modelled)" in ack.reason
