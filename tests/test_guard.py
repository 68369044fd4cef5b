"""Guard: cuts exactly enough, in the stated order; noise under cap after the cut; expiry; property.

Tiny site, idle power 0 so totals are hand-checkable:
  old: eco 2 kW / 80 TH (25 J/TH, Lw 80), stock 3 kW / 100 TH (30 J/TH, Lw 84)
  new: eco 3 kW / 200 TH (15 J/TH, Lw 70), turbo 5 kW / 250 TH (20 J/TH, Lw 76)
  receptor "house": 40 dB from every unit, background 30 dBA, total cap 50 dBA, no margin.
Unit energies at the house: old stock 10^4.4, old eco 10^4, new turbo 10^3.6, new eco 10^3.
Everything on (5 old stock + 5 new turbo): 40 kW, 10·log10(5·10^4.4 + 5·10^3.6 + 10^3) = 51.66 dBA.
"""

from __future__ import annotations

import math
from datetime import datetime, time, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashflex.control.fleet import FleetState, Setpoint
from hashflex.control.guard import Guard, Limits, Measurements
from hashflex.profile import SiteProfile

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)  # 15:00 in Chicago
EXPIRY = NOW + timedelta(minutes=5)


def make_profile(groups: list[dict] | None = None, cap: float = 50.0, margin: float = 0.0,
                 interconnection: float = 100.0, renewable_kw: float = 50.0) -> SiteProfile:
    groups = groups or [
        {"id": "old", "model": "S19", "units": 5,
         "modes": [{"name": "eco", "power_kw": 2.0, "hashrate_th_s": 80, "sound_power_dba": 80},
                   {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 84}]},
        {"id": "new", "model": "S21", "units": 5,
         "modes": [{"name": "eco", "power_kw": 3.0, "hashrate_th_s": 200, "sound_power_dba": 70},
                   {"name": "turbo", "power_kw": 5.0, "hashrate_th_s": 250, "sound_power_dba": 76}]},
    ]
    return SiteProfile.model_validate({
        "site": {"name": "tiny", "settlement_point": "LZ_WEST"},
        "grid": {"import_limit_kw": interconnection},
        "miner_groups": groups,
        "renewables": [{"id": "pv", "kind": "solar", "capacity_kw": renewable_kw}],
        "receptors": [{"id": "house", "attenuation_db": {g["id"]: 40 for g in groups}, "background_dba": 30,
                       "model_margin_db": margin,
                       "caps": [{"name": "always", "start": "00:00", "end": "23:59", "cap_dba": cap},
                                {"name": "late", "start": "23:59", "end": "00:00", "cap_dba": cap}]}],
        "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
        "economics": {"hashprice_usd_per_ph_day": 50},
    })


QUIET = make_profile(cap=100.0)  # noise never binds
NOISY = make_profile()


def full_batch(profile: SiteProfile = QUIET, expires: datetime = EXPIRY) -> list[Setpoint]:
    top = {"old": ("stock", 3.0), "new": ("turbo", 5.0)}
    return [Setpoint(f"{g}-{i}", top[g][0], top[g][1], NOW, expires, group_id=g)
            for g in ("old", "new") for i in range(1, 6)]


def total_kw(batch: list[Setpoint]) -> float:
    return sum(sp.power_target_kw for sp in batch)


def mode_of(batch: list[Setpoint]) -> dict[str, str]:
    return {sp.miner_id: sp.mode for sp in batch}


def test_nothing_to_do_when_under_limits() -> None:
    result = Guard(QUIET).check(full_batch(), Measurements(), Limits(), NOW)
    assert not result.changed and result.batch == full_batch()


def test_import_cut_exactly_enough_least_efficient_first() -> None:
    result = Guard(QUIET).check(full_batch(), Measurements(), Limits({"DR:ev1": 30.0}), NOW)
    assert total_kw(result.batch) == pytest.approx(30.0)  # 40 − 10: three old to sleep, a fourth to eco
    modes = mode_of(result.batch)
    assert [modes[f"old-{i}"] for i in range(1, 6)] == ["sleep", "sleep", "sleep", "eco", "stock"]
    assert all(modes[f"new-{i}"] == "turbo" for i in range(1, 6))  # efficient units untouched
    (action,) = result.actions
    assert action.kind == "import_curtail" and action.miners == ("old-1", "old-2", "old-3", "old-4")
    assert "DR:ev1" in action.reason and "10.0 kW removed" in action.reason


def test_efficiency_order_crosses_groups_then_loudness_breaks_ties() -> None:
    result = Guard(QUIET).check(full_batch(), Measurements(), Limits({"op": 20.0}), NOW)
    # old stock (30 J/TH) all go first (15 kW), then new turbo (20 J/TH): 5 kW more = one turbo to sleep.
    assert total_kw(result.batch) == pytest.approx(20.0)
    assert result.actions[0].miners == ("old-1", "old-2", "old-3", "old-4", "old-5", "new-1")
    tie = make_profile(groups=[
        {"id": "aa", "model": "x", "units": 1,
         "modes": [{"name": "run", "power_kw": 1.0, "hashrate_th_s": 50, "sound_power_dba": 70}]},
        {"id": "zz", "model": "y", "units": 1,
         "modes": [{"name": "run", "power_kw": 1.0, "hashrate_th_s": 50, "sound_power_dba": 90}]}], cap=140)
    batch = [Setpoint("a", "run", 1.0, NOW, EXPIRY, group_id="aa"), Setpoint("z", "run", 1.0, NOW, EXPIRY, group_id="zz")]
    result = Guard(tie).check(batch, Measurements(), Limits({"op": 1.0}), NOW)
    assert mode_of(result.batch) == {"a": "run", "z": "sleep"}  # same J/TH: the louder one goes


def test_renewable_counts_only_when_measured_and_fresh() -> None:
    guard = Guard(QUIET)
    fresh = Measurements(at=NOW - timedelta(seconds=30), renewable_kw=6.0)
    assert not guard.check(full_batch(), fresh, Limits({"DR": 34.0}), NOW).changed  # 40 − 6 = 34
    stale = Measurements(at=NOW - timedelta(minutes=10), renewable_kw=6.0)
    result = guard.check(full_batch(), stale, Limits({"DR": 34.0}), NOW)
    assert total_kw(result.batch) == pytest.approx(34.0) and "older than" in result.actions[0].reason
    missing = guard.check(full_batch(), Measurements(), Limits({"DR": 34.0}), NOW)
    assert "renewable reading missing" in missing.actions[0].reason


def test_renewable_capped_at_nameplate_and_future_readings_distrusted() -> None:
    guard = Guard(make_profile(cap=100.0, renewable_kw=4.0))
    huge = Measurements(at=NOW, renewable_kw=1e308)
    result = guard.check(full_batch(), huge, Limits({"DR": 34.0}), NOW)  # 40 − 4 (nameplate) = 36 > 34: old-1 sleeps
    assert total_kw(result.batch) == pytest.approx(37.0) and "capped at the 4 kW nameplate" in result.actions[0].reason
    skewed = Measurements(at=NOW + timedelta(seconds=60), renewable_kw=4.0)  # within the 120 s skew
    assert guard.check(full_batch(), skewed, Limits({"DR": 36.0}), NOW).changed is False
    future = Measurements(at=NOW + timedelta(minutes=5), renewable_kw=4.0)
    result = guard.check(full_batch(), future, Limits({"DR": 36.0}), NOW)
    assert total_kw(result.batch) == pytest.approx(36.0) and "in the future" in result.actions[0].reason
    for bad in (float("nan"), float("inf"), -1.0):
        reading = Measurements(at=NOW, renewable_kw=bad)
        assert total_kw(guard.check(full_batch(), reading, Limits({"DR": 36.0}), NOW).batch) <= 36.0
    assert Guard(make_profile(renewable_kw=1.0).model_copy(update={"renewables": []})).renewable_nameplate_kw == 0.0


def test_idle_and_auxiliary_and_absent_units_count() -> None:
    groups = [{"id": "g", "model": "x", "units": 4, "idle_power_kw": 0.5,
               "modes": [{"name": "run", "power_kw": 2.0, "hashrate_th_s": 100, "sound_power_dba": 60}]}]
    guard = Guard(make_profile(groups=groups, cap=140))
    batch = [Setpoint(f"g-{i}", "run", 2.0, NOW, EXPIRY, group_id="g") for i in (1, 2)]  # g-3, g-4 absent: idle
    assert guard.net_import_kw(batch, auxiliary_kw=1.0) == pytest.approx(2 * 2.0 + 2 * 0.5 + 1.0)
    result = guard.check(batch, Measurements(auxiliary_kw=1.0), Limits({"DR": 4.5}), NOW)
    assert [sp.mode for sp in result.batch] == ["sleep", "run"]  # 6.0 − 1.5 = 4.5
    assert guard.net_import_kw(result.batch, auxiliary_kw=1.0) == pytest.approx(4.5)


def test_unreachable_limit_sleeps_everything_and_says_so() -> None:
    groups = [{"id": "g", "model": "x", "units": 2, "idle_power_kw": 0.5,
               "modes": [{"name": "run", "power_kw": 2.0, "hashrate_th_s": 100, "sound_power_dba": 60}]}]
    batch = [Setpoint(f"g-{i}", "run", 2.0, NOW, EXPIRY, group_id="g") for i in (1, 2)]
    result = Guard(make_profile(groups=groups, cap=140)).check(batch, Measurements(), Limits({"DR": 0.0}), NOW)
    assert all(sp.mode == "sleep" for sp in result.batch)
    assert [a.kind for a in result.actions] == ["import_curtail", "limit_unreachable"]


def test_noise_step_down_loudest_contributor_until_under_cap() -> None:
    guard = Guard(NOISY)
    assert guard.noise_level_dba(full_batch(NOISY), "house") == pytest.approx(51.66, abs=0.01)
    result = guard.check(full_batch(NOISY), Measurements(), Limits(), NOW)
    # Each old stock → eco removes 10^4.4 − 10^4 = 15 119; 145 500 − 4·15 119 = 85 024 ≤ 99 000 (three is not enough).
    modes = mode_of(result.batch)
    assert [modes[f"old-{i}"] for i in range(1, 6)] == ["eco", "eco", "eco", "eco", "stock"]
    assert guard.noise_level_dba(result.batch, "house") <= 50.0
    (action,) = result.actions
    assert action.kind == "noise_step_down" and len(action.miners) == 4 and "house" in action.reason


def test_noise_cap_override_and_sensor_offset_tighten() -> None:
    guard = Guard(NOISY)
    result = guard.check(full_batch(NOISY), Measurements(noise_offset_db={"house": 2.0}), Limits(), NOW)
    assert guard.noise_level_dba(result.batch, "house") <= 48.0
    loose = guard.check(full_batch(NOISY), Measurements(noise_offset_db={"house": -5.0}), Limits(), NOW)
    assert guard.noise_level_dba(loose.batch, "house") <= 50.0  # a negative offset never loosens the cap
    override = guard.check(full_batch(NOISY), Measurements(), Limits(noise_caps_dba={"house": 45.0}), NOW)
    assert guard.noise_level_dba(override.batch, "house") <= 45.0


def test_noise_below_background_sleeps_all_contributors() -> None:
    guard = Guard(make_profile(cap=29.0))
    result = guard.check(full_batch(), Measurements(), Limits(), NOW)
    assert all(sp.mode == "sleep" for sp in result.batch)
    assert result.actions[-1].kind == "limit_unreachable"


def test_import_cut_then_noise_both_hold() -> None:
    guard = Guard(NOISY)
    result = guard.check(full_batch(NOISY), Measurements(), Limits({"DR": 38.0}), NOW)
    # 2 kW over: old-1 to sleep (eco would save only 1 kW) → 37 kW, still 50.8 dBA → noise steps follow.
    assert [a.kind for a in result.actions] == ["import_curtail", "noise_step_down"]
    assert total_kw(result.batch) <= 37.0 and guard.noise_level_dba(result.batch, "house") <= 50.0


def test_expired_and_unknown_setpoints_refused() -> None:
    batch = full_batch(expires=NOW + timedelta(seconds=1))
    batch[0] = Setpoint("old-1", "stock", 3.0, NOW - timedelta(minutes=5), NOW, group_id="old")
    batch[1] = Setpoint("old-2", "turbo", 3.0, NOW, EXPIRY, group_id="old")
    result = Guard(QUIET).check(batch, Measurements(), Limits(), NOW)
    assert [sp.miner_id for sp in result.batch] == [sp.miner_id for sp in batch[2:]]
    assert {(a.kind, a.miners) for a in result.actions} == {("refused_expired", ("old-1",)),
                                                           ("refused_unknown", ("old-2",))}


def test_emergency_dr_cut_uses_renewable_only_when_known() -> None:
    guard = Guard(QUIET)
    cut = guard.emergency_dr_cut(full_batch(), 30.0, Measurements(renewable_kw=5.0, at=NOW))
    # Without ``now`` the batch's issue time is the reference: the reading is fresh. 5 kW over: old-1 and old-2 to sleep (the second's eco step saves 1 of the 2 kW left) → 34 kW.
    assert total_kw(cut.batch) == pytest.approx(34.0) and cut.actions[0].kind == "emergency_dr_cut"
    worst = guard.emergency_dr_cut(full_batch(), 30.0, Measurements())
    assert total_kw(worst.batch) == pytest.approx(30.0)
    undated = guard.emergency_dr_cut(full_batch(), 30.0, Measurements(renewable_kw=5.0))
    assert total_kw(undated.batch) == pytest.approx(30.0)  # no timestamp: not trusted
    stale = guard.emergency_dr_cut(full_batch(), 30.0, Measurements(renewable_kw=5.0, at=NOW),
                                   now=NOW + timedelta(minutes=3))
    assert total_kw(stale.batch) == pytest.approx(30.0) and "older than" in stale.actions[-1].reason


def test_emergency_cut_on_fleet_state() -> None:
    fleet = FleetState.from_profile(QUIET)
    for miner in fleet.miners.values():
        miner.mode = "stock" if miner.group_id == "old" else "turbo"
    cut = Guard(QUIET).emergency_dr_cut(fleet.as_setpoints(NOW, 60), 0.0, Measurements())
    assert total_kw(cut.batch) == 0.0 and len(cut.actions[0].miners) == 10


def test_import_over_limit_cut_removes_measured_excess() -> None:
    guard = Guard(QUIET)
    result = guard.import_over_limit_cut(42.0, 40.0, full_batch(), measured_at=NOW, now=NOW)
    assert total_kw(full_batch()) - total_kw(result.batch) == pytest.approx(3.0)  # eco saves only 1: sleep
    assert result.actions[0].miners == ("old-1",) and "2.0 kW over" in result.actions[0].reason
    result = guard.import_over_limit_cut(40.5, 40.0, full_batch(), measured_at=NOW)  # reference: batch issue time
    assert mode_of(result.batch)["old-1"] == "eco"  # 1 kW step covers 0.5 kW
    assert not guard.import_over_limit_cut(39.0, 40.0, full_batch(), measured_at=NOW, now=NOW).changed


def test_import_over_limit_cut_falls_back_to_the_model_when_the_meter_is_not_believed() -> None:
    guard = Guard(QUIET)
    aux = Measurements(auxiliary_kw=2.0, renewable_kw=1.0, at=NOW)  # model: 40 + 2 − 1 = 41 kW
    for reading, at, why in ((39.0, None, "undated"), (39.0, NOW - timedelta(minutes=5), "old"),
                             (39.0, NOW + timedelta(days=365), "in the future"), (float("nan"), NOW, "not finite")):
        result = guard.import_over_limit_cut(reading, 38.0, full_batch(), measured_at=at, now=NOW, measurements=aux)
        assert guard.net_import_kw(result.batch, 2.0, 1.0) <= 38.0 + 1e-9, why
        assert why in result.actions[0].reason and "modelled import 41.0 kW" in result.actions[0].reason


def test_noise_exceedance_cut_lowers_model_by_measured_excess() -> None:
    guard = Guard(QUIET)
    before = guard.noise_level_dba(full_batch(), "house")
    result = guard.noise_exceedance_cut("house", 53.0, 50.0, full_batch())
    after = guard.noise_level_dba(result.batch, "house")
    assert after <= before - 3.0
    # Exactly enough: undoing the last step would leave the level above the target.
    last = result.actions[0].miners[-1]
    undone = [sp if sp.miner_id != last else next(f for f in full_batch() if f.miner_id == last)
              for sp in result.batch]
    assert guard.noise_level_dba(undone, "house") > before - 3.0
    assert not guard.noise_exceedance_cut("house", 49.0, 50.0, full_batch()).changed
    with pytest.raises(ValueError):
        guard.noise_exceedance_cut("nowhere", 60.0, 50.0, full_batch())


# --------------------------------------------------------------------------- property

@st.composite
def fleets(draw):  # noqa: ANN001, ANN201
    groups = []
    for g in range(draw(st.integers(1, 3))):
        modes = []
        for m in range(draw(st.integers(1, 3))):
            modes.append({"name": f"m{m}", "power_kw": draw(st.floats(0.5, 10)),
                          "hashrate_th_s": draw(st.floats(10, 500)), "sound_power_dba": draw(st.floats(50, 95))})
        groups.append({"id": f"g{g}", "model": "x", "units": draw(st.integers(1, 30)),
                       "idle_power_kw": draw(st.sampled_from([0.0, 0.01, 0.2])), "modes": modes})
    profile = make_profile(groups=groups, cap=draw(st.floats(30, 80)))
    batch = []
    for group in groups:
        names = ["sleep"] + [m["name"] for m in group["modes"]]
        for i in range(group["units"]):
            mode = draw(st.sampled_from(names))
            power = group["idle_power_kw"] if mode == "sleep" else next(
                m["power_kw"] for m in group["modes"] if m["name"] == mode)
            batch.append(Setpoint(f"{group['id']}-{i}", mode, power, NOW, EXPIRY, group_id=group["id"]))
    return profile, batch


@settings(max_examples=200, deadline=None)
@given(fleets(), st.floats(0, 1), st.floats(0, 50), st.floats(0, 5))
def test_guard_output_never_exceeds_limits(case, fraction, renewable, auxiliary) -> None:  # noqa: ANN001
    profile, batch = case
    guard = Guard(profile)
    measurements = Measurements(at=NOW, renewable_kw=renewable, auxiliary_kw=auxiliary)
    floor = guard.net_import_kw([], auxiliary, renewable)  # everything asleep
    ceiling = guard.net_import_kw(batch, auxiliary, renewable)
    limit = floor + fraction * max(ceiling - floor, 0.0)
    result = guard.check(batch, measurements, Limits({"DR": limit}), NOW)
    assert guard.net_import_kw(result.batch, auxiliary, renewable) <= limit + 1e-6
    level = guard.noise_level_dba(result.batch, "house")
    cap = profile.receptors[0].caps[0].cap_dba
    if 10 ** (cap / 10) > 10 ** 3:  # above the 30 dBA background the cap is reachable
        assert level <= cap + 1e-6
    else:
        assert all(sp.mode == "sleep" for sp in result.batch)
    emergency = guard.emergency_dr_cut(batch, limit, measurements)
    assert guard.net_import_kw(emergency.batch, auxiliary, renewable) <= limit + 1e-6
    # Nothing is ever stepped up.
    before = {sp.miner_id: sp.power_target_kw for sp in batch}
    assert all(sp.power_target_kw <= before[sp.miner_id] + 1e-12 for sp in result.batch)
    assert math.isfinite(sum(sp.power_target_kw for sp in result.batch))


def test_noise_cap_taken_at_site_local_time() -> None:
    profile = make_profile()
    receptor = profile.receptors[0].model_copy(update={"caps": [
        profile.receptors[0].caps[0].model_copy(update={"name": "day", "start": time(7), "end": time(21),
                                                        "cap_dba": 52.0}),
        profile.receptors[0].caps[0].model_copy(update={"name": "night", "start": time(21), "end": time(7),
                                                        "cap_dba": 45.0})]})
    guard = Guard(profile.model_copy(update={"receptors": [receptor]}))
    day = guard.check(full_batch(), Measurements(), Limits(), NOW)  # 15:00 CDT: 51.66 ≤ 52
    assert not day.changed
    night_time = datetime(2025, 7, 2, 3, 0, tzinfo=timezone.utc)  # 22:00 CDT
    batch = full_batch(expires=night_time + timedelta(minutes=5))
    night = guard.check(batch, Measurements(), Limits(), night_time)
    assert guard.noise_level_dba(night.batch, "house") <= 45.0
    assert "Tue 22:00 local" in night.actions[0].reason


def test_limits_at_gathers_dr_and_latest_override_per_issuer() -> None:
    from hashflex.control.dr import DRBook
    from hashflex.control.guard import limits_at
    from hashflex.messages import DREventMessage, LimitsChangeMessage

    profile = make_profile().model_copy(update={"dr": make_profile().dr.model_copy(update={"issuers": ["utility"]})})
    book = DRBook()
    book.apply(DREventMessage(event_id="ev1", modification_number=0, program="utility", start=NOW, end=None,
                              issuer="utility", import_limit_kw=25.0), NOW, profile)
    hour = timedelta(hours=1)
    changes = [
        LimitsChangeMessage(issuer="ops", reason="transformer work", issued_at=NOW - 2 * hour, import_limit_kw=10.0),
        LimitsChangeMessage(issuer="ops", reason="work done", issued_at=NOW - hour, import_limit_kw=60.0),
        LimitsChangeMessage(issuer="county", reason="event", issued_at=NOW - hour, valid_until=NOW + hour,
                            noise_caps=[{"receptor_id": "house", "cap_dba": 44.0, "window_start": NOW - hour,
                                         "window_end": NOW + hour}]),
        LimitsChangeMessage(issuer="late", reason="future", issued_at=NOW + hour, import_limit_kw=1.0),
    ]
    limits = limits_at(NOW, book, changes)
    assert limits.import_limits_kw == {"DR:ev1": 25.0, "limits:ops": 60.0}
    assert limits.noise_caps_dba == {"house": 44.0}
    assert Guard(make_profile(cap=100.0)).import_limit(limits) == (25.0, "DR:ev1")
    assert limits_at(NOW + 2 * hour, None, changes).noise_caps_dba == {}


def test_fast_paths_refuse_unknown_and_expired_setpoints() -> None:
    guard = Guard(QUIET)
    batch = full_batch()
    batch[0] = Setpoint("old-1", "turbo", 9.0, NOW, EXPIRY, group_id="old")  # the old group has no turbo
    batch[1] = Setpoint("old-2", "stock", 3.0, NOW - timedelta(minutes=5), NOW, group_id="old")
    cut = guard.emergency_dr_cut(batch, 100.0, Measurements(), now=NOW)
    assert [a.kind for a in cut.actions] == ["refused_expired", "refused_unknown"] and len(cut.batch) == 8
    for result in (guard.import_over_limit_cut(50.0, 40.0, batch, measured_at=NOW),
                   guard.noise_exceedance_cut("house", 60.0, 50.0, batch)):
        assert result.actions[0].kind == "refused_unknown" and "old-1" not in {sp.miner_id for sp in result.batch}
    with pytest.raises(ValueError, match="timezone"):
        guard.check(batch, Measurements(), Limits(), NOW.replace(tzinfo=None))
