"""Dispatch: which physical units run. Tiny fleet: 2 groups of 5 miners."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json

import pytest

from hashflex.control.dispatch import Setpoint, dispatch, plan_dispatch
from hashflex.control.fleet import FleetState
from hashflex.profile import SiteProfile

NOW = datetime(2025, 7, 1, 20, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)

PROFILE = SiteProfile.model_validate({
    "site": {"name": "tiny", "settlement_point": "LZ_WEST"},
    "grid": {"import_limit_kw": 100},
    "miner_groups": [
        {"id": "old", "model": "S19", "units": 5, "idle_power_kw": 0.01, "min_on_minutes": 20,
         "min_off_minutes": 10,
         "modes": [{"name": "eco", "power_kw": 2.0, "hashrate_th_s": 80, "sound_power_dba": 80},
                   {"name": "stock", "power_kw": 3.0, "hashrate_th_s": 100, "sound_power_dba": 84}]},
        {"id": "new", "model": "S21", "units": 5,
         "modes": [{"name": "eco", "power_kw": 3.0, "hashrate_th_s": 200, "sound_power_dba": 70},
                   {"name": "turbo", "power_kw": 5.0, "hashrate_th_s": 250, "sound_power_dba": 76}]},
    ],
    "carbon": {"default_intensity_kg_per_mwh": 400, "intensity_source": "test"},
    "economics": {"hashprice_usd_per_ph_day": 50},
})


def fleet(**overrides: dict) -> FleetState:
    """10 asleep miners old-1..5, new-1..5; ``overrides[miner_id]`` sets fields."""
    state = FleetState.from_profile(PROFILE)
    for miner_id, fields in overrides.items():
        miner = state.miners[miner_id.replace("_", "-")]
        for key, value in fields.items():
            setattr(miner, key, value)
    return state


def modes(setpoints: list[Setpoint]) -> dict[str, str]:
    return {sp.miner_id: sp.mode for sp in setpoints}


def running(setpoints: list[Setpoint], group: str | None = None) -> set[str]:
    return {sp.miner_id for sp in setpoints if sp.mode != "sleep" and (group is None or sp.group_id == group)}


def test_one_setpoint_per_miner_with_expiry_and_power() -> None:
    sps = dispatch({("old", "stock"): 2, ("new", "turbo"): 1}, fleet(), NOW, 300)
    assert len(sps) == 10 and len({sp.miner_id for sp in sps}) == 10
    assert all(sp.issued_at == NOW and sp.expires_at == NOW + timedelta(seconds=300) for sp in sps)
    assert sum(sp.power_target_kw for sp in sps) == pytest.approx(2 * 3.0 + 5.0 + 3 * 0.01)
    assert [sp.mode for sp in sps if sp.group_id == "old"].count("stock") == 2


def test_units_already_running_are_kept() -> None:
    state = fleet(old_4={"mode": "stock", "run_hours": 900}, old_5={"mode": "stock", "run_hours": 800})
    sps = dispatch({("old", "stock"): 2}, state, NOW, 60)
    assert running(sps) == {"old-4", "old-5"}  # no churn, even though they have the most hours


def test_rotation_starts_fewest_hours_and_stops_most_hours() -> None:
    hours = {f"old_{i}": {"run_hours": h} for i, h in zip(range(1, 6), [50, 10, 40, 20, 30])}
    sps = dispatch({("old", "eco"): 2}, fleet(**hours), NOW, 60)
    assert running(sps) == {"old-2", "old-4"}
    on = {f"old_{i}": {"run_hours": h, "mode": "eco"} for i, h in zip(range(1, 6), [50, 10, 40, 20, 30])}
    sps = dispatch({("old", "eco"): 2}, fleet(**on), NOW, 60)
    assert running(sps) == {"old-2", "old-4"}  # old-1 (50 h), old-3 (40 h), old-5 (30 h) stop


def test_min_on_keeps_a_recent_start_and_min_off_defers_a_recent_stop() -> None:
    on = {f"old_{i}": {"mode": "eco", "run_hours": 10.0 * i} for i in range(1, 4)}
    on["old_3"]["last_start"] = NOW - 5 * MIN  # inside min-on (20 min), most hours
    sps = dispatch({("old", "eco"): 1}, fleet(**on), NOW, 60)
    assert running(sps) == {"old-3"}
    off = {"old_1": {"last_stop": NOW - 5 * MIN}, "old_2": {"run_hours": 99.0}}  # old-1 inside min-off
    sps = dispatch({("old", "eco"): 4}, fleet(**off), NOW, 60)
    assert running(sps) == {"old-2", "old-3", "old-4", "old-5"}
    sps = dispatch({("old", "eco"): 5}, fleet(**off), NOW, 60)  # forced: counts win over min-off
    assert running(sps, "old") == {f"old-{i}" for i in range(1, 6)}


def test_mode_change_preferred_over_a_start() -> None:
    sps = dispatch({("old", "stock"): 1}, fleet(old_3={"mode": "eco"}), NOW, 60)
    assert modes(sps)["old-3"] == "stock" and running(sps) == {"old-3"}


def test_same_mode_runners_not_stolen_by_another_mode() -> None:
    state = fleet(new_1={"mode": "eco"}, new_2={"mode": "turbo"})
    sps = dispatch({("new", "eco"): 1, ("new", "turbo"): 1}, state, NOW, 60)
    assert modes(sps)["new-1"] == "eco" and modes(sps)["new-2"] == "turbo"
    assert running(sps) == {"new-1", "new-2"}


def test_health_preferred_and_unhealthy_runner_replaced() -> None:
    state = fleet(old_1={"healthy": False, "run_hours": 0.0}, old_2={"mode": "eco", "healthy": False})
    sps = dispatch({("old", "eco"): 3}, state, NOW, 60)
    assert running(sps) == {"old-3", "old-4", "old-5"}
    sps = dispatch({("old", "eco"): 5}, state, NOW, 60)  # healthy ones run out: unhealthy used too
    assert running(sps) == {f"old-{i}" for i in range(1, 6)}


def test_unavailable_never_scheduled_and_counts_clipped() -> None:
    state = fleet(new_1={"available": False, "mode": "turbo"}, new_2={"available": False})
    result = plan_dispatch({("new", "turbo"): 2, ("new", "eco"): 2}, state, NOW, 60)
    sps = result.setpoints
    assert modes(sps)["new-1"] == "sleep" and modes(sps)["new-2"] == "sleep"
    assert sorted(sp.mode for sp in sps if sp.group_id == "new" and sp.mode != "sleep") == ["eco", "eco", "turbo"]
    assert len(result.notes) == 1 and "only 3 are available" in result.notes[0]


def test_bad_input_rejected() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        dispatch({("old", "turbo"): 1}, fleet(), NOW, 60)
    with pytest.raises(ValueError, match="unknown group"):
        dispatch({("nope", "eco"): 1}, fleet(), NOW, 60)
    with pytest.raises(ValueError, match="expiry_s"):
        dispatch({}, fleet(), NOW, 0)


def test_fleet_records_starts_stops_hours_and_round_trips() -> None:
    state = fleet(old_1={"mode": "eco"})
    sps = dispatch({("old", "eco"): 0, ("new", "eco"): 1}, state, NOW, 60)
    state.apply_setpoints(sps, NOW)
    assert state.miners["old-1"].last_stop == NOW and state.miners["new-1"].last_start == NOW
    state.accrue_run_hours(0.25)
    assert state.miners["new-1"].run_hours == 0.25 and state.miners["old-1"].run_hours == 0.0
    assert state.counts() == {("new", "eco"): 1}
    again = FleetState.from_dict(state.to_dict(), PROFILE)
    assert again.miners == state.miners
    # Next tick, the same counts: nothing changes.
    assert modes(dispatch({("new", "eco"): 1}, again, NOW + 15 * MIN, 60)) == modes(sps)


def test_saved_fleet_is_columnar_and_the_older_row_form_still_loads() -> None:
    """Issue 18: the commitment state is saved after every batch, so it is one column per field, not a
    dict per miner; a state saved by an older version (rows) restores to the same fleet."""
    state = fleet(old_1={"mode": "eco"}, new_2={"healthy": False, "available": False})
    state.apply_setpoints(dispatch({("old", "eco"): 0, ("new", "eco"): 1}, state, NOW, 60), NOW)
    state.accrue_run_hours(0.5)
    saved = json.loads(json.dumps(state.to_dict()))
    assert saved["format"] == 2 and "miners" not in saved
    assert saved["columns"]["miner_id"] == list(state.miners)
    assert FleetState.from_dict(saved, PROFILE).miners == state.miners
    rows = [dict(zip(saved["columns"], values)) for values in zip(*saved["columns"].values())]
    assert FleetState.from_dict({"miners": rows}, PROFILE).miners == state.miners
    broken = {"format": 2, "columns": dict(saved["columns"], mode=saved["columns"]["mode"][:-1])}
    with pytest.raises(ValueError, match="unequal length"):
        FleetState.from_dict(broken, PROFILE)


def test_first_row_counts_from_a_schedule() -> None:
    import pandas as pd

    from hashflex.control.dispatch import first_row_counts
    from hashflex.optimize.schedule import Schedule, SolveInfo, SolveStatus

    index = pd.DatetimeIndex([NOW, NOW + 15 * MIN], name="interval_start")
    frame = pd.DataFrame({"units_old_eco": [2, 0], "units_old_stock": [1, 5], "units_new_eco": [0, 0],
                          "units_new_turbo": [4, 5]}, index=index)
    schedule = Schedule(frame, SolveInfo(SolveStatus.OPTIMAL),
                        (("old", "eco"), ("old", "stock"), ("new", "eco"), ("new", "turbo")), ())
    counts = first_row_counts(schedule)
    assert counts == {("old", "eco"): 2, ("old", "stock"): 1, ("new", "eco"): 0, ("new", "turbo"): 4}
    sps = dispatch(counts, fleet(), NOW, 60)
    assert sum(sp.mode != "sleep" for sp in sps) == 7
