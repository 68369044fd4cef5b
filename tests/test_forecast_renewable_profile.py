"""The diurnal profile of on-site output (forecast rule 3 for renewables) at the plan's interval (issue 14, H4).

Before, the profile was the mean by local *hour*: flat through a solar ramp, so at the end of an evening hour
it was ~760 kW above the output (7-9 May 2024, SYNTHETIC clear sky) and the perfect-price MPC bought those
kW at 1,912 $/MWh (gap_decompose.py). Hand-made histories; the expected values are computed by hand.
"""

from __future__ import annotations

import pandas as pd
import pytest

from hashflex.forecast import SNAPSHOT_COLUMNS, ForecastConfig, Snapshot, build_forecast
from hashflex.profile import parse_profile

PROFILE = parse_profile("""
site: {name: test, settlement_point: LZ_WEST, interval_minutes: 15, horizon_hours: 2}
grid: {import_limit_kw: 1000}
miner_groups:
  - id: g
    model: m
    units: 100
    modes: [{name: stock, power_kw: 3.0, hashrate_th_s: 200, sound_power_dba: 80}]
renewables:
  - {id: pv, kind: solar, capacity_kw: 5000}
carbon: {default_intensity_kg_per_mwh: 400, intensity_source: test}
economics: {hashprice_usd_per_ph_day: 50.0}
""")
Q = pd.Timedelta(minutes=15)
# The evening ramp 17:00-17:45 CDT (22:00-22:45 UTC) on each of three days: 4000, 3000, 2000, 1000 kW.
RAMP_KW = [4000.0, 3000.0, 2000.0, 1000.0]
NOW = pd.Timestamp("2024-06-10 21:00", tz="UTC")  # 16:00 CDT: 17:00-17:45 CDT are intervals 4..7


def observations(step: pd.Timedelta) -> pd.DataFrame:
    """Three days of the ramp measured every ``step`` (15 min: each slot; 1 h: only at :00), published at once."""
    rows = []
    for day in (3, 2, 1):
        first = pd.Timestamp("2024-06-10 22:00", tz="UTC") - pd.Timedelta(days=day)
        for k in range(0, 4, int(step / Q)):
            rows.append(("pv", first + k * Q, RAMP_KW[k], first + k * Q))
    return pd.DataFrame(rows, columns=list(SNAPSHOT_COLUMNS["renewable_observations"]))


def test_profile_follows_the_ramp_within_the_hour() -> None:
    """Each 15-min slot is forecast at its own mean over the days; the hourly mean (2,500 kW in every
    slot) was 1,500 kW high at 17:45 and 1,500 kW low at 17:00."""
    out = build_forecast(PROFILE, Snapshot(renewable_observations=observations(Q)), NOW, NOW, 8)
    assert list(out.renewable_kw[4:8]) == pytest.approx(RAMP_KW)
    assert set(out.renewable_source["pv"][4:8]) == {"diurnal profile"}


def test_slot_never_measured_takes_the_hours_mean() -> None:
    """Hourly measurements only (17:00 CDT, 4,000 kW): every slot of that hour gets the hour's mean, as before."""
    out = build_forecast(PROFILE, Snapshot(renewable_observations=observations(pd.Timedelta(hours=1))), NOW, NOW, 8)
    assert list(out.renewable_kw[4:8]) == pytest.approx([4000.0] * 4)
    assert list(out.renewable_kw[:4]) == [0.0] * 4  # 16:00 CDT never measured: 0 kW


def test_hourly_profile_is_the_rule_before() -> None:
    """``renewable_profile_hourly=True`` keeps the hour-of-day mean (for comparisons in the benchmarks)."""
    out = build_forecast(PROFILE, Snapshot(renewable_observations=observations(Q)), NOW, NOW, 8,
                         config=ForecastConfig(renewable_profile_hourly=True))
    assert list(out.renewable_kw[4:8]) == pytest.approx([2500.0] * 4)
