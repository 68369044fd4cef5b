"""The simulated site's fleet in arrays (issue 18) behaves as the per-miner one it replaced: on
random batches, expiries and clocks, the same running counts, load, hashrate and expiry counts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.drivers.base import SLEEP, Setpoint
from hashflex.profile import SiteProfile
from hashflex.sim.site import SimulatedFleet, SimulatedFleetPerMiner

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)
PROFILE = SiteProfile.model_validate({
    "site": {"name": "small", "settlement_point": "LZ_WEST"}, "grid": {"import_limit_kw": 100.0},
    "miner_groups": [
        {"id": "old", "model": "S19", "units": 6, "idle_power_kw": 0.02,
         "modes": [{"name": "eco", "power_kw": 2.0, "hashrate_th_s": 80, "sound_power_dba": 80},
                   {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 84}]},
        {"id": "new", "model": "S21", "units": 5, "idle_power_kw": 0.01,
         "modes": [{"name": "eco", "power_kw": 3.0, "hashrate_th_s": 200, "sound_power_dba": 70},
                   {"name": "turbo", "power_kw": 5.0, "hashrate_th_s": 250, "sound_power_dba": 76}]}],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50},
})
MINERS = PROFILE.miner_ids()
MODES = {g.id: [SLEEP] + [m.name for m in g.modes] for g in PROFILE.miner_groups}

setpoint = st.builds(
    lambda miner, k, issued, life: Setpoint(miner, MODES[MINERS[miner]][k % len(MODES[MINERS[miner]])], 1.0,
                                            NOW + timedelta(minutes=issued),
                                            NOW + timedelta(minutes=issued + life), group_id=MINERS[miner]),
    st.sampled_from(sorted(MINERS)), st.integers(0, 5), st.integers(0, 20), st.integers(1, 15))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.lists(setpoint, max_size=12), st.integers(0, 30)), min_size=1, max_size=6))
def test_array_fleet_matches_the_per_miner_fleet(steps) -> None:
    new, old = SimulatedFleet(PROFILE), SimulatedFleetPerMiner(PROFILE)
    assert new.load_kw() == pytest.approx(old.load_kw())
    for batch, minutes in steps:
        assert [r.status for r in new.apply(batch)] == [r.status for r in old.apply(batch)]
        assert new.running() == old.running()
        now = NOW + timedelta(minutes=minutes)
        assert new.expire(now) == old.expire(now)
        assert new.running() == old.running()
        assert new.load_kw() == pytest.approx(old.load_kw())
        assert new.hashrate_th_s() == pytest.approx(old.hashrate_th_s())


def test_array_fleet_by_hand() -> None:
    fleet = SimulatedFleet(PROFILE)
    end = NOW + timedelta(minutes=5)
    fleet.apply([Setpoint("old-1", "stock", 3.0, NOW, end, group_id="old"),
                 Setpoint("new-1", "turbo", 5.0, NOW, end + timedelta(minutes=5), group_id="new")])
    assert fleet.running() == {("old", "stock"): 1, ("new", "turbo"): 1}
    assert fleet.load_kw() == pytest.approx(3.0 + 5.0 + 5 * 0.02 + 4 * 0.01)
    assert fleet.hashrate_th_s() == pytest.approx(350.0)
    assert fleet.expire(end) == 1  # old-1 expired at `end`: asleep
    assert fleet.running() == {("new", "turbo"): 1}
