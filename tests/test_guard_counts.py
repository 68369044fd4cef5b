"""The guard in counts (issue 18): on random fleets, `CountGuard` cuts exactly the units the
per-miner `Guard` cuts: same modes miner for miner once `apply_moves` realises the moves, same
action kinds, for the full check (import + noise), the DR fast path, the site-meter cut and the noise fast path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.dispatch import plan_dispatch_arrays
from hashflex.control.fleet import SLEEP, FleetArrays, FleetState, Miner
from hashflex.control.guard import Guard, Limits, Measurements
from hashflex.control.guard_counts import CountGuard, apply_moves, counts_of
from hashflex.profile import SiteProfile

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)
EXPIRY_S = 300.0


@st.composite
def sites(draw: st.DrawFn) -> tuple[SiteProfile, FleetState, dict]:
    """A random profile (1-4 groups, 1-3 modes each, one receptor), its fleet asleep, and counts."""
    groups = []
    for g in range(draw(st.integers(1, 4))):
        n_modes = draw(st.integers(1, 3))
        # Distinct power, J/TH and sound per mode within a group (real modes differ).
        powers = sorted(draw(st.lists(st.integers(15, 60), min_size=n_modes, max_size=n_modes, unique=True)))
        sounds = sorted(draw(st.lists(st.integers(60, 90), min_size=n_modes, max_size=n_modes, unique=True)))
        rates = [p / 10 * 1000 / draw(st.integers(15, 30)) + k * 0.01 for k, p in enumerate(powers)]
        groups.append({"id": f"g{g}", "model": "S", "units": draw(st.integers(1, 12)),
                       "idle_power_kw": draw(st.sampled_from([0.0, 0.01, 0.02])),
                       "modes": [{"name": f"m{k}", "power_kw": p / 10, "hashrate_th_s": r, "sound_power_dba": s}
                                 for k, (p, r, s) in enumerate(zip(powers, rates, sounds))]})
    attenuation = {g["id"]: draw(st.sampled_from([35.0, 40.0, 45.0, 52.5])) for g in groups}
    profile = SiteProfile.model_validate({
        "site": {"name": "random", "settlement_point": "LZ_WEST"},
        "grid": {"import_limit_kw": 1000.0},
        "miner_groups": groups,
        "renewables": [{"id": "pv", "kind": "solar", "capacity_kw": 20.0}],
        "receptors": [{"id": "house", "attenuation_db": attenuation, "background_dba": 30,
                       "model_margin_db": draw(st.sampled_from([0.0, 1.0])),
                       "caps": [{"name": "always", "start": "00:00", "end": "23:59",
                                 "cap_dba": draw(st.sampled_from([40.0, 45.0, 50.0, 60.0, 100.0]))},
                                {"name": "late", "start": "23:59", "end": "00:00", "cap_dba": 100.0}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    miners = [Miner(miner_id, group_id) for miner_id, group_id in profile.miner_ids().items()]
    fleet = FleetState(miners, profile.miner_groups)
    counts = {}
    for group in profile.miner_groups:
        left = group.units
        for mode in group.modes:
            n = draw(st.integers(0, left))
            counts[group.id, mode.name] = n
            left -= n
    return profile, fleet, counts


def _modes_by_miner(batch) -> dict[str, str]:
    return {sp.miner_id: sp.mode for sp in batch}


def _modes_from_arrays(fleet: FleetArrays, modes: dict[str, np.ndarray]) -> dict[str, str]:
    out = {}
    for group_id, arrays in fleet.groups.items():
        names = arrays.mode_names
        for miner_id, k in zip(arrays.miner_id.tolist(), modes[group_id].tolist()):
            out[miner_id] = SLEEP if k < 0 else names[k]
    return out


def _kinds(actions) -> list[str]:
    return [a.kind for a in actions]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), limit_kw=st.floats(0.0, 80.0), renewable_kw=st.sampled_from([None, 0.0, 5.0, 30.0]),
       auxiliary_kw=st.sampled_from([0.0, 1.5]))
def test_count_guard_cuts_as_the_per_miner_guard(case, limit_kw, renewable_kw, auxiliary_kw) -> None:
    """Dispatch, then the full check, the DR cut and the noise cut both ways: the same modes."""
    profile, fleet, counts = case
    guard = Guard(profile)
    count_guard = CountGuard(guard)
    arrays = FleetArrays.from_fleet(fleet)
    dispatched = plan_dispatch_arrays(counts, arrays, NOW, EXPIRY_S)
    batch = dispatched.to_setpoints(arrays, NOW, EXPIRY_S)
    running = dispatched.counts(arrays)
    assert running == counts_of(FleetArrays(
        {g: type(a)(**{**a.__dict__, "mode": dispatched.modes[g]}) for g, a in arrays.groups.items()}))
    measurements = Measurements(at=NOW, renewable_kw=renewable_kw, auxiliary_kw=auxiliary_kw)
    limits = Limits({"DR:test": limit_kw})

    # full check: import, then noise
    want = guard.check(batch, measurements, limits, NOW)
    got = count_guard.check(running, measurements, limits, NOW)
    assert _modes_from_arrays(arrays, apply_moves(dispatched.modes, arrays, got.moves)) == _modes_by_miner(want.batch)
    assert _kinds(got.actions) == _kinds(want.actions)
    assert count_guard.net_import_kw(got.counts, auxiliary_kw) == pytest.approx(guard.net_import_kw(want.batch, auxiliary_kw))

    # fast path: DR cut
    want = guard.emergency_dr_cut(batch, limit_kw, measurements, now=NOW)
    got = count_guard.emergency_dr_cut(running, limit_kw, measurements, NOW)
    assert _modes_from_arrays(arrays, apply_moves(dispatched.modes, arrays, got.moves)) == _modes_by_miner(want.batch)
    assert _kinds(got.actions) == _kinds(want.actions)

    # fast path: the site meter reads over the limit, believed (fresh) and not (an hour old: the model)
    for measured_at in (NOW, NOW - timedelta(hours=1)):
        want = guard.import_over_limit_cut(limit_kw + 3.7, limit_kw, batch, measured_at=measured_at, now=NOW,
                                           measurements=measurements)
        got = count_guard.import_over_limit_cut(limit_kw + 3.7, limit_kw, running, measured_at=measured_at, now=NOW,
                                                measurements=measurements)
        assert _modes_from_arrays(arrays, apply_moves(dispatched.modes, arrays, got.moves)) == _modes_by_miner(want.batch)
        assert _kinds(got.actions) == _kinds(want.actions)

    # fast path: a sensor reads over the cap
    want = guard.noise_exceedance_cut("house", 55.0, 50.0, batch)
    got = count_guard.noise_exceedance_cut("house", 55.0, 50.0, running)
    assert _modes_from_arrays(arrays, apply_moves(dispatched.modes, arrays, got.moves)) == _modes_by_miner(want.batch)


def test_count_guard_by_hand() -> None:
    """Two groups, idle 0: old stock 3 kW (30 J/TH) goes first, the last unit steps to eco."""
    profile = SiteProfile.model_validate({
        "site": {"name": "tiny", "settlement_point": "LZ_WEST"}, "grid": {"import_limit_kw": 100.0},
        "miner_groups": [
            {"id": "old", "model": "S19", "units": 5,
             "modes": [{"name": "eco", "power_kw": 2.0, "hashrate_th_s": 80, "sound_power_dba": 80},
                       {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 84}]},
            {"id": "new", "model": "S21", "units": 5,
             "modes": [{"name": "eco", "power_kw": 3.0, "hashrate_th_s": 200, "sound_power_dba": 70},
                       {"name": "turbo", "power_kw": 5.0, "hashrate_th_s": 250, "sound_power_dba": 76}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    count_guard = CountGuard(Guard(profile))
    # 5 old stock (15 kW) + 5 new turbo (25 kW) = 40 kW; limit 33 kW: remove 7 kW = two old to
    # sleep (6 kW), the third old stock -> eco (1 kW).
    result = count_guard.emergency_dr_cut({("old", "stock"): 5, ("new", "turbo"): 5}, 33.0, Measurements(), NOW)
    assert result.counts == {("old", "stock"): 2, ("old", "eco"): 1, ("new", "turbo"): 5}
    assert [(m.group, m.from_mode, m.to_mode, m.n) for m in result.moves] == [
        ("old", "stock", SLEEP, 2), ("old", "stock", "eco", 1)]
    assert count_guard.net_import_kw(result.counts) == pytest.approx(33.0)
    with pytest.raises(ValueError, match="unknown group or mode"):
        count_guard.emergency_dr_cut({("old", "warp"): 1}, 33.0, Measurements(), NOW)
    with pytest.raises(ValueError, match="negative"):
        count_guard.emergency_dr_cut({("old", "eco"): -1}, 33.0, Measurements(), NOW)



class _NullDriver:
    """Accepts every batch (the loop's fast path is under test, not a driver)."""

    def apply(self, batch):
        from hashflex.drivers.base import SetpointResult, SetpointStatus
        return [SetpointResult(sp.miner_id, SetpointStatus.APPLIED, "ok") for sp in batch]


def _no_forecast(now, start, periods):
    raise AssertionError("the fast path must not forecast or solve")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), limit_kw=st.floats(0.0, 80.0), renewable_kw=st.sampled_from([None, 0.0, 30.0]))
def test_the_loops_dr_fast_path_cuts_in_counts_as_the_per_miner_guard(case, limit_kw, renewable_kw) -> None:
    """As wired (issue 18): `ControlLoop._emergency_cut` decides in counts and realises the moves;
    the modes it sends are the per-miner guard's on the fleet's batch, miner for miner, and the
    action names exactly the miners that changed."""
    from hashflex.control.loop import ControlLoop

    profile, fleet, counts = case
    dispatched = plan_dispatch_arrays(counts, FleetArrays.from_fleet(fleet), NOW, EXPIRY_S)
    fleet.apply_setpoints(dispatched.to_setpoints(FleetArrays.from_fleet(fleet), NOW, EXPIRY_S), NOW)
    loop = ControlLoop(profile, forecaster=_no_forecast, driver=_NullDriver(), fleet=fleet)
    if renewable_kw is not None:
        loop.measurements = Measurements(at=NOW, renewable_kw=renewable_kw)
    want = loop.guard.emergency_dr_cut(fleet.as_setpoints(NOW, loop.expiry_s), limit_kw, loop.measurements, now=NOW)
    got = loop._emergency_cut(limit_kw, NOW)
    assert got.changed == want.changed
    assert _kinds(got.actions) == _kinds(want.actions)
    if want.changed:
        assert _modes_by_miner(got.batch) == _modes_by_miner(want.batch)
        assert len(got.batch) == len(fleet)
        assert all(sp.expires_at > NOW for sp in got.batch)
        before = {m.miner_id: m.mode for m in fleet.miners.values()}
        changed = {sp.miner_id for sp in got.batch if sp.mode != before[sp.miner_id]}
        assert set(got.actions[0].miners) == changed == set(want.actions[0].miners)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), limit_kw=st.floats(0.0, 80.0), offset_db=st.sampled_from([None, 0.0, 3.0]))
def test_the_ticks_guard_checks_in_counts_as_the_per_miner_guard(case, limit_kw, offset_db) -> None:
    """As wired in the tick (issue 18): `ControlLoop._guard_dispatched` checks the dispatched plan in
    counts; its batch is the per-miner guard's on the dispatched setpoints, miner for miner, with the
    same actions naming the same miners."""
    from hashflex.control.loop import ControlLoop

    profile, fleet, counts = case
    arrays = FleetArrays.from_fleet(fleet)
    dispatched = plan_dispatch_arrays(counts, arrays, NOW, EXPIRY_S)
    loop = ControlLoop(profile, forecaster=_no_forecast, driver=_NullDriver(), fleet=fleet)
    limits = Limits(import_limits_kw={"test": limit_kw}, noise_caps_dba={})
    loop.limits_now = lambda now: limits
    if offset_db is not None:
        loop.measurements = Measurements(noise_offset_db={"house": offset_db})
    want = loop.guard.check(dispatched.to_setpoints(arrays, NOW, loop.expiry_s), loop.measurements, limits, NOW)
    got, _ = loop._guard_dispatched(None, dispatched, arrays, NOW)
    assert _modes_by_miner(got.batch) == _modes_by_miner(want.batch)
    assert [(a.kind, set(a.miners)) for a in got.actions] == [(a.kind, set(a.miners)) for a in want.actions]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), measured_dba=st.floats(30.0, 70.0), cap_dba=st.sampled_from([35.0, 40.0, 45.0]))
def test_the_loops_noise_fast_path_cuts_in_counts_as_the_per_miner_guard(case, measured_dba, cap_dba) -> None:
    """As wired (issue 18): a noise reading over the cap cuts in counts (`_cut_noise_now`); the fleet
    ends with the per-miner guard's modes, miner for miner, and the record names the same miners."""
    from hashflex.control.loop import ControlLoop

    profile, fleet, counts = case
    dispatched = plan_dispatch_arrays(counts, FleetArrays.from_fleet(fleet), NOW, EXPIRY_S)
    fleet.apply_setpoints(dispatched.to_setpoints(FleetArrays.from_fleet(fleet), NOW, EXPIRY_S), NOW)
    loop = ControlLoop(profile, forecaster=_no_forecast, driver=_NullDriver(), fleet=fleet)
    recorded = []
    loop._record_guard = lambda result, now, event_id: recorded.append(result)
    want = loop.guard.noise_exceedance_cut("house", measured_dba, cap_dba, fleet.as_setpoints(NOW, loop.expiry_s))
    changed = loop._cut_noise_now("house", measured_dba, cap_dba, NOW)
    assert changed == want.changed
    assert {m: fleet.miners[m].mode for m in fleet.miners} == _modes_by_miner(want.batch)
    if changed:
        assert [(a.kind, set(a.miners)) for a in recorded[0].actions] == [(a.kind, set(a.miners)) for a in want.actions]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), data=st.data())
def test_the_price_ladders_cut_in_columns_sleeps_exactly_the_losing_classes(case, data) -> None:
    """The 5-minute price ladder's cut (issue 14) made in columns (issue 18): every unit of a losing
    (group, mode) and no other goes to sleep, the rest of the batch is the fleet as it runs."""
    from hashflex.control.loop import ControlLoop

    profile, fleet, counts = case
    dispatched = plan_dispatch_arrays(counts, FleetArrays.from_fleet(fleet), NOW, EXPIRY_S)
    fleet.apply_setpoints(dispatched.to_setpoints(FleetArrays.from_fleet(fleet), NOW, EXPIRY_S), NOW)
    loop = ControlLoop(profile, forecaster=_no_forecast, driver=_NullDriver(), fleet=fleet)
    classes = sorted((g.id, m.name) for g in profile.miner_groups for m in g.modes)
    losing = {key: 100.0 for key in data.draw(st.lists(st.sampled_from(classes), unique=True))}
    batch, stopped, _ = loop._sleep_losing(losing, NOW)
    want = {m.miner_id: (SLEEP if (m.group_id, m.mode) in losing else m.mode) for m in fleet.miners.values()}
    assert set(stopped) == {m for m in fleet.miners if want[m] != fleet.miners[m].mode}
    if stopped:
        assert _modes_by_miner(batch) == want
        assert all(sp.power_target_kw == fleet.power_kw(sp.group_id, sp.mode) for sp in batch)


def _boundary_case(g0_units: int, counts: dict) -> tuple[SiteProfile, FleetState, dict]:
    """The fleets hypothesis found (stored examples; a clean clone rarely draws them): the load equals
    renewable + limit to the last bit, so rounding in the two ways of summing decided whether to cut."""
    modes = [{"name": f"m{k}", "power_kw": p, "hashrate_th_s": h, "sound_power_dba": s}
             for k, (p, h, s) in enumerate([(1.5, 100.0, 60.0), (1.6, 106.67666666666668, 61.0),
                                            (1.7, 113.35333333333332, 62.0)])]
    profile = SiteProfile.model_validate({
        "site": {"name": "random", "settlement_point": "LZ_WEST"},
        "grid": {"import_limit_kw": 1000.0},
        "miner_groups": [{"id": "g0", "model": "S", "units": g0_units, "idle_power_kw": 0.0, "modes": modes},
                         {"id": "g1", "model": "S", "units": 1, "idle_power_kw": 0.0, "modes": modes[:2]},
                         {"id": "g2", "model": "S", "units": 1, "idle_power_kw": 0.0, "modes": modes[:1]}],
        "renewables": [{"id": "pv", "kind": "solar", "capacity_kw": 20.0}],
        "receptors": [{"id": "house", "attenuation_db": {"g0": 35.0, "g1": 35.0, "g2": 35.0}, "background_dba": 30,
                       "model_margin_db": 0.0,
                       "caps": [{"name": "always", "start": "00:00", "end": "23:59", "cap_dba": 40.0},
                                {"name": "late", "start": "23:59", "end": "00:00", "cap_dba": 100.0}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })
    miners = [Miner(miner_id, group_id) for miner_id, group_id in profile.miner_ids().items()]
    full = {(g.id, m.name): 0 for g in profile.miner_groups for m in g.modes}
    return profile, FleetState(miners, profile.miner_groups), {**full, **counts}


@pytest.mark.parametrize("g0_units, counts", [
    (2, {("g0", "m2"): 2, ("g1", "m1"): 1}),                   # 2 × 1.7 + 1.6 − 5.0 kW: at the limit
    (4, {("g0", "m1"): 1, ("g0", "m2"): 3, ("g1", "m1"): 1}),  # 3.3 kW over: the last step is 0.1 kW
])
def test_the_guards_agree_at_a_zero_limit_where_rounding_decided(g0_units: int, counts: dict) -> None:
    """The first failed before `_over_limit` (the per-miner guard cut a unit the count guard kept); the
    second failed with `_over_limit` alone, before `cut_tolerance_kw` (the per-miner guard stepped a unit
    down where the count guard left it: 0.1 kW left vs a 0.1 kW step, rounded two ways)."""
    case = _boundary_case(g0_units, counts)
    test_count_guard_cuts_as_the_per_miner_guard.hypothesis.inner_test(case, 0.0, 5.0, 0.0)
