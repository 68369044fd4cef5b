"""Counts on the hot path (issue 18): the array dispatch chooses exactly the units the per-miner
dispatch chooses, on random fleets (modes, health, availability, min on/off windows, run-hour ties)
and random counts (including more than available and unknown names)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.dispatch import plan_dispatch, plan_dispatch_arrays
from hashflex.control.fleet import SLEEP, FleetArrays, FleetState, Miner, Setpoint
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


# ---------------------------------------------------------------- the arrays as the loop's state

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fleets_and_counts(), later=st.integers(1, 90), hours=st.sampled_from([0.0, 0.25, 1.0]))
def test_arrays_update_from_applied_setpoints_as_fleet_state(case, later, hours) -> None:
    """Dispatch, apply (the arrays vs FleetState), accrue, dispatch again: same state, same setpoints."""
    fleet, counts = case
    arrays = FleetArrays.from_fleet(fleet)
    batch = plan_dispatch(counts, fleet, NOW, 300.0).setpoints
    fleet.apply_setpoints(batch, NOW)
    arrays.apply_setpoints(batch[::2], NOW)  # a partial result first (only some applied) ...
    arrays.apply_setpoints(batch[1::2], NOW)  # ... then the rest
    fleet.accrue_run_hours(hours)
    arrays.accrue_run_hours(hours)
    assert_same_state(arrays, FleetArrays.from_fleet(fleet))
    assert arrays.counts() == fleet.counts()
    then = NOW + timedelta(minutes=later)
    want = plan_dispatch(counts, fleet, then, 300.0)
    got = plan_dispatch_arrays(counts, arrays, then, 300.0)
    fresh = FleetArrays.from_fleet(fleet)
    arrays.apply_modes(got.modes, then)
    fleet.apply_setpoints(want.setpoints, then)
    assert got.to_setpoints(fresh, then, 300.0) == want.setpoints
    assert_same_state(arrays, FleetArrays.from_fleet(fleet))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fleets_and_counts(), later=st.integers(1, 90))
def test_fleet_state_applies_mode_columns_as_it_applies_setpoints(case, later) -> None:
    """`FleetState.apply_modes` (the tick's vector path) leaves the fleet exactly as `apply_setpoints`
    of the same batch does, miner views included, and returns the same before-states (what a failed
    setpoint reverts to); reverting them restores the fleet."""
    fleet, counts = case
    twin = FleetState.from_dict(fleet.to_dict(), _profile_of(fleet))
    then = NOW + timedelta(minutes=later)
    got = plan_dispatch_arrays(counts, FleetArrays.from_fleet(fleet), then, 300.0)
    batch = got.to_setpoints(FleetArrays.from_fleet(fleet), then, 300.0)
    original = {m: tuple(getattr(fleet.miners[m], k) for k in ("mode", "last_start", "last_stop")) for m in fleet.miners}
    before_vector = fleet.apply_modes(got.modes, then)
    before_per_miner = twin.apply_setpoints(batch, then)
    assert before_vector == before_per_miner
    assert fleet.miners == twin.miners
    assert_same_state(FleetArrays.from_fleet(fleet), FleetArrays.from_fleet(twin))
    assert all(original[m] == b for m, b in before_vector.items())
    for miner_id, was in before_vector.items():
        fleet.revert(miner_id, was)
    assert {m: tuple(getattr(fleet.miners[m], k) for k in ("mode", "last_start", "last_stop"))
            for m in fleet.miners} == original


def _profile_of(fleet: FleetState):
    """A stand-in profile for `FleetState.from_dict` (it reads only ``miner_groups``)."""
    from types import SimpleNamespace
    return SimpleNamespace(miner_groups=list(fleet.groups.values()))


def assert_same_state(a: FleetArrays, b: FleetArrays) -> None:
    for group_id in b.groups:
        x, y = a.groups[group_id], b.groups[group_id]
        for name in ("miner_id", "mode", "healthy", "available", "last_start_us", "last_stop_us", "run_hours"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), (group_id, name)


def test_arrays_refuse_unknown_miners_and_modes() -> None:
    group = MinerGroup(id="g", model="S21", units=2, modes=MODES, idle_power_kw=0.01)
    arrays = FleetArrays.from_fleet(FleetState([Miner("g-1", "g"), Miner("g-2", "g")], [group]))
    with pytest.raises(KeyError, match="g-9"):
        arrays.apply_setpoints([Setpoint("g-9", "eco", 2.9, NOW, NOW + timedelta(minutes=5), group_id="g")], NOW)
    with pytest.raises(ValueError, match="warp"):
        arrays.apply_setpoints([Setpoint("g-1", "warp", 2.9, NOW, NOW + timedelta(minutes=5), group_id="g")], NOW)
    with pytest.raises(ValueError, match="3 modes for 2 miners"):
        arrays.apply_modes({"g": np.array([0, 1, 2])}, NOW)
    arrays.set_available("g-2", False)
    arrays.set_health("g-1", False)
    assert arrays.groups["g"].available.tolist() == [True, False]
    assert arrays.groups["g"].healthy.tolist() == [False, True]


# ---------------------------------------------------------------- health score and hot units (issue 17)

def _ten_sleeping() -> FleetArrays:
    group = MinerGroup(id="g", model="S21", units=10, modes=MODES, idle_power_kw=0.01)
    return FleetArrays.from_fleet(FleetState([Miner(f"g-{i:02d}", "g") for i in range(10)], [group]))


def test_dispatch_starts_the_healthiest_units_first() -> None:
    arrays = _ten_sleeping()
    score = np.array([0.2, 0.9, 0.5, 1.0, 0.1, 0.95, 0.3, 0.8, 0.4, 0.6])
    got = plan_dispatch_arrays({("g", "stock"): 4}, arrays, NOW, 300.0, health_score={"g": score})
    # The four highest scores: g-03 (1.0), g-05 (0.95), g-01 (0.9), g-07 (0.8).
    assert np.flatnonzero(got.modes["g"] >= 0).tolist() == [1, 3, 5, 7]
    # Without scores: id order (all ties), as plan_dispatch.
    plain = plan_dispatch_arrays({("g", "stock"): 4}, arrays, NOW, 300.0)
    assert np.flatnonzero(plain.modes["g"] >= 0).tolist() == [0, 1, 2, 3]


def test_dispatch_stops_the_least_healthy_running_units_first() -> None:
    arrays = _ten_sleeping()
    arrays.groups["g"].mode[:] = 1  # all running in stock, past min-on
    score = np.linspace(1.0, 0.1, 10)  # g-00 healthiest ... g-09 least
    got = plan_dispatch_arrays({("g", "stock"): 7}, arrays, NOW, 300.0, health_score={"g": score})
    assert got.modes["g"].tolist() == [1] * 7 + [-1] * 3


def test_hot_units_take_the_lower_modes_counts_unchanged() -> None:
    arrays = _ten_sleeping()
    hot = np.zeros(10, dtype=bool)
    hot[[0, 1]] = True  # g-00 and g-01 run hot
    counts = {("g", "eco"): 2, ("g", "stock"): 2, ("g", "turbo"): 2}
    got = plan_dispatch_arrays(counts, arrays, NOW, 300.0, hot={"g": hot})
    modes = got.modes["g"]
    assert modes[[0, 1]].tolist() == [0, 0]  # both hot units in eco, the lowest-power mode
    assert np.bincount(modes[modes >= 0], minlength=3).tolist() == [2, 2, 2]  # the optimizer's counts kept
    # Three hot units, two eco slots: the third takes the next lowest mode (stock), not turbo.
    hot[2] = True
    got = plan_dispatch_arrays(counts, arrays, NOW, 300.0, hot={"g": hot})
    assert sorted(got.modes["g"][[0, 1, 2]].tolist()) == [0, 0, 1]
    assert np.bincount(got.modes["g"][got.modes["g"] >= 0], minlength=3).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="hot"):
        plan_dispatch_arrays(counts, arrays, NOW, 300.0, hot={"g": hot[:3]})


def test_setpoint_many_equals_setpoints_made_one_by_one_and_checks_the_batch() -> None:
    """`Setpoint.many` (the driver edge's batch constructor, issue 18) makes exactly the setpoints the
    checked constructor makes, and refuses what it refuses: naive or inverted times, a negative power."""
    ids, modes, powers = ["a-1", "a-2", "a-3"], ["eco", SLEEP, "turbo"], [2.9, 0.01, 4.2]
    expires = NOW + timedelta(seconds=300)
    made = Setpoint.many(ids, modes, powers, NOW, expires, "a")
    assert made == [Setpoint(i, m, p, NOW, expires, group_id="a") for i, m, p in zip(ids, modes, powers)]
    assert hash(made[0]) == hash(Setpoint("a-1", "eco", 2.9, NOW, expires, group_id="a"))
    with pytest.raises(ValueError, match="power_target_kw"):
        Setpoint.many(ids, modes, [2.9, -0.1, 4.2], NOW, expires, "a")
    with pytest.raises(ValueError, match="expires_at"):
        Setpoint.many(ids, modes, powers, NOW, NOW, "a")
    with pytest.raises(ValueError, match="timezone-aware"):
        Setpoint.many(ids, modes, powers, NOW.replace(tzinfo=None), expires.replace(tzinfo=None), "a")
    with pytest.raises(ValueError, match="length"):
        Setpoint.many(ids, modes[:2], powers, NOW, expires, "a")
    with pytest.raises(Exception):
        made[0].mode = "turbo"  # still frozen
