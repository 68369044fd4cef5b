"""Counts on the hot path (issue 18): the array dispatch chooses exactly the units the per-miner
dispatch chooses, on random fleets (modes, health, availability, min on/off windows, run-hour ties)
and random counts (including more than available and unknown names)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.dispatch import plan_dispatch, plan_dispatch_arrays
from hashflex.control.fleet import SLEEP, FleetArrays, FleetState, Miner
from hashflex.profile import MinerGroup, MinerMode

NOW = datetime(2025, 7, 15, 12, 0, tzinfo=timezone.utc)
MODES = [MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
         MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84),
         MinerMode(name="turbo", power_kw=4.2, hashrate_th_s=230, sound_power_dba=86)]


@st.composite
def fleets_and_counts(draw: st.DrawFn) -> tuple[FleetState, dict[tuple[str, str], int]]:
    groups = []
    for g in range(draw(st.integers(1, 3))):
        groups.append(MinerGroup(
            id=f"g{g}", model="S21", units=1, modes=MODES[:draw(st.integers(1, 3))], idle_power_kw=0.01,
            min_on_minutes=draw(st.sampled_from([0.0, 15.0, 30.0])),
            min_off_minutes=draw(st.sampled_from([0.0, 10.0, 15.0]))))
    miners = []
    # Moments on a 5-minute grid around now: window edges (exactly 15 min ago) are drawn often.
    moments = st.one_of(st.none(), st.integers(0, 12).map(lambda k: NOW - timedelta(minutes=5 * k)))
    for group in groups:
        for i in range(draw(st.integers(0, 25))):
            miners.append(Miner(
                miner_id=f"{group.id}-{draw(st.integers(0, 999)):03d}-{i}", group_id=group.id,
                mode=draw(st.sampled_from([SLEEP] + [m.name for m in group.modes])),
                healthy=draw(st.booleans()), available=draw(st.sampled_from([True, True, True, False])),
                last_start=draw(moments), last_stop=draw(moments),
                run_hours=float(draw(st.sampled_from([0.0, 1.0, 2.5, 100.0]))),
            ))
    counts = {}
    for group in groups:
        for mode in group.modes:
            if draw(st.booleans()):
                counts[group.id, mode.name] = draw(st.integers(0, 30))
    return FleetState(miners, groups), counts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fleets_and_counts())
def test_array_dispatch_gives_the_per_miner_setpoints(case) -> None:
    fleet, counts = case
    want = plan_dispatch(counts, fleet, NOW, 300.0)
    got = plan_dispatch_arrays(counts, FleetArrays.from_fleet(fleet), NOW, 300.0)
    assert got.to_setpoints(FleetArrays.from_fleet(fleet), NOW, 300.0) == want.setpoints
    assert got.notes == want.notes


def test_array_dispatch_refuses_what_the_per_miner_one_refuses() -> None:
    group = MinerGroup(id="air", model="S21", units=2, modes=MODES[:1])
    fleet = FleetState([Miner("air-1", "air"), Miner("air-2", "air")], [group])
    arrays = FleetArrays.from_fleet(fleet)
    with pytest.raises(ValueError, match="unknown group 'hydro'"):
        plan_dispatch_arrays({("hydro", "eco"): 1}, arrays, NOW, 300.0)
    with pytest.raises(ValueError, match="unknown mode 'turbo'"):
        plan_dispatch_arrays({("air", "turbo"): 1}, arrays, NOW, 300.0)
    with pytest.raises(ValueError, match="negative unit count"):
        plan_dispatch_arrays({("air", "eco"): -1}, arrays, NOW, 300.0)
    with pytest.raises(ValueError, match="expiry_s"):
        plan_dispatch_arrays({("air", "eco"): 1}, arrays, NOW, 0.0)
