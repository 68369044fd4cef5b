"""The noise margin as a compliance level (issue 14): the p-quantile of the meter's measured −
modelled residuals instead of a fixed 1 dB, reported with the share of readings it covers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd

from hashflex.acoustics import noise_margin_db
from hashflex.control.loop import ControlLoop, HorizonForecast
from hashflex.control.solver import SolveRunner
from hashflex.messages import NoiseMessage
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet

T0 = datetime(2025, 7, 2, 4, 0, tzinfo=timezone.utc)  # 23:00 CDT


def profile(probability: float | None) -> SiteProfile:
    return SiteProfile.model_validate({
        "site": {"name": "quiet", "settlement_point": "LZ_WEST", "horizon_hours": 2},
        "grid": {"import_limit_kw": 100},
        "miner_groups": [{"id": "air", "model": "S19", "units": 20,
                          "modes": [{"name": "stock", "power_kw": 3, "hashrate_th_s": 100, "sound_power_dba": 95}]}],
        "receptors": [{"id": "porch", "distance_m": {"air": 300}, "background_dba": 30, "model_margin_db": 1.0,
                       "compliance_probability": probability, "compliance_min_samples": 20,
                       "caps": [{"name": "always", "start": "00:00", "end": "23:59", "cap_dba": 45}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })


def test_margin_rules_by_hand() -> None:
    fixed, compliant = profile(None).receptors[0], profile(0.9).receptors[0]
    assert noise_margin_db(fixed) == (1.0, "fixed")
    assert noise_margin_db(fixed, offset_db=1.6) == (1.6, "calibrated")
    residuals = [0.1] * 95 + [2.0] * 5  # the 90th percentile is 0.1 dB
    margin, basis = noise_margin_db(compliant, offset_db=0.4, residuals_db=residuals)
    assert margin == 0.1 and basis == "compliance p=0.9 (n=100)"
    assert noise_margin_db(compliant, residuals_db=residuals[:10])[1] == "fixed", "too few samples yet"
    assert noise_margin_db(compliant, residuals_db=[-2.0] * 30)[0] == 0.0, "never a negative margin"


def test_a_meter_that_agrees_with_the_model_earns_back_the_fixed_margin() -> None:
    site = profile(0.95)
    fleet = SimulatedFleet(site)

    def cheap(now, start, periods):  # noqa: ANN001, ANN202
        return HorizonForecast(pd.date_range(start, periods=periods, freq="15min"), np.full(periods, 10.0))

    loop = ControlLoop(site, forecaster=cheap, driver=fleet, solver=SolveRunner(inline=True))
    before = loop.tick(T0)
    units_fixed = sum(fleet.running().values())
    rng = np.random.default_rng(7)
    for k in range(60):  # the meter reads the model ± 0.2 dB
        modelled = loop.modelled_level_dba("porch")
        reading = NoiseMessage(receptor_id="porch", laeq_dba=float(modelled + rng.normal(0.0, 0.2)), averaging_s=60,
                               timestamp=T0 + timedelta(minutes=k), meter_class=1)
        loop.handle_noise(reading, T0 + timedelta(minutes=k))
    compliance = loop.status(T0 + timedelta(hours=1))["noise_compliance"]["porch"]
    assert compliance["basis"].startswith("compliance p=0.95") and compliance["margin_db"] < 1.0
    assert compliance["covered_share"] >= 0.95
    after = loop.tick(T0 + timedelta(minutes=75))
    # 20 units × 95 dB(A) at 300 m against 45 dB(A): the fixed 1 dB margin admits fewer units than
    # the ~0.3 dB compliance margin does.
    assert sum(fleet.running().values()) > units_fixed
    assert after.schedule.frame["load_kw"].iloc[0] > before.schedule.frame["load_kw"].iloc[0]
