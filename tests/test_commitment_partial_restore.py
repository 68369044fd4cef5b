"""Issue 18 (task H10): a restart after a profile change keeps the commitment state of the miners
the change did not touch. Before, `load_control_state` threw the whole saved state away when the
profile's unit counts, groups or modes differed ("saved commitment state is for another fleet"),
so adding one miner to a group sent a sleep to every miner and then a start to every miner,
breaking minimum off times. Now each saved group that still exists with the same mode names is
restored miner by miner (rule-named ids matched by (group, n), so a zero-padding change keeps the
mapping); new miners and groups whose modes changed start asleep with no history. A real SQLite
store and the daemon's restart path; fleets and profiles here are SYNTHETIC.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from hashflex.control.daemon import load_control_state
from hashflex.control.fleet import SLEEP, FleetState
from hashflex.profile import parse_profile
from hashflex.store import Store

NOW = datetime(2025, 7, 15, 12, 0, tzinfo=UTC)


def _yaml(units_a: int, units_b: int, b_modes: str = "eco") -> str:
    """A SYNTHETIC two-group profile; group b's modes are named by ``b_modes`` (comma separated)."""
    modes_b = ", ".join(f"{{name: {name}, power_kw: {2.9 + 0.1 * k:.1f}, hashrate_th_s: 100, sound_power_dba: 80}}"
                        for k, name in enumerate(b_modes.split(",")))
    return f"""
site: {{id: partial, name: partial restore test (SYNTHETIC), settlement_point: LZ_WEST, horizon_hours: 2}}
grid: {{import_limit_kw: 10000}}
miner_groups:
  - {{id: a, model: S21, units: {units_a}, min_on_minutes: 30, modes: [{{name: stock, power_kw: 3.5, hashrate_th_s: 200, sound_power_dba: 84}}]}}
  - {{id: b, model: S19, units: {units_b}, modes: [{modes_b}]}}
carbon: {{default_intensity_kg_per_mwh: 370, intensity_source: test placeholder}}
economics: {{hashprice_usd_per_ph_day: 49}}
"""


def _busy_fleet(profile) -> FleetState:
    """SYNTHETIC history: a mix of running, stopped, degraded and unavailable miners with distinct times."""
    fleet = FleetState.from_profile(profile)
    for k, miner_id in enumerate(fleet.miners):
        miner = fleet.miners[miner_id]
        mode = fleet.groups[miner.group_id].modes[0].name
        if k % 3 != 2:
            miner.mode = mode
            miner.last_start = NOW - timedelta(minutes=k)
        if k % 3 != 0:
            miner.last_stop = NOW - timedelta(hours=1, minutes=k)
        miner.run_hours = 0.25 * k
        miner.healthy = k % 5 != 0
        miner.available = k % 7 != 0
    return fleet


def _row(fleet: FleetState, miner_id: str) -> tuple:
    m = fleet.miners[miner_id]
    return (m.mode, m.healthy, m.available, m.last_start, m.last_stop, m.run_hours)


def _n(miner_id: str) -> tuple[str, int]:
    group, n = miner_id.rsplit("-", 1)
    return group, int(n)


def _restart(tmp_path: Path, saved: dict, profile, caplog) -> FleetState | None:
    with Store(tmp_path / "s.db") as store:
        store.set_meta("fleet", saved)
        store.flush()
        with caplog.at_level(logging.WARNING):
            _, restored = load_control_state(store, profile)
    return restored


def _asleep_fresh(fleet: FleetState, miner_id: str) -> bool:
    return _row(fleet, miner_id) == (SLEEP, True, True, None, None, 0.0)


def test_one_unit_added_keeps_every_old_miner(tmp_path: Path, caplog) -> None:
    before = parse_profile(_yaml(12, 8))
    fleet = _busy_fleet(before)
    after = parse_profile(_yaml(12, 9))
    restored = _restart(tmp_path, fleet.to_compact(4), after, caplog)
    assert restored is not None, caplog.text  # failed before: the whole state was dropped
    assert sorted(restored.miners) == sorted(FleetState.from_profile(after).miners)
    for miner_id in fleet.miners:  # group a unchanged, group b's 8 old miners: field for field
        assert _row(restored, miner_id) == _row(fleet, miner_id), miner_id
    assert _asleep_fresh(restored, "b-9")
    assert restored.units_running() == fleet.units_running()
    assert "b: 1 new" in caplog.text


def test_a_padding_change_keeps_the_mapping(tmp_path: Path, caplog) -> None:
    before = parse_profile(_yaml(5, 99))  # ids b-01 .. b-99
    fleet = _busy_fleet(before)
    after = parse_profile(_yaml(5, 100))  # ids b-001 .. b-100
    for version in (3, 4):
        (tmp_path / str(version)).mkdir()
        restored = _restart(tmp_path / str(version), fleet.to_compact(version), after, caplog)
        assert restored is not None, caplog.text
        old_by_n = {_n(m): m for m in fleet.miners}
        for miner_id in restored.miners:
            old = old_by_n.get(_n(miner_id))
            if old is None:
                assert miner_id == "b-100" and _asleep_fresh(restored, miner_id)
            else:
                assert _row(restored, miner_id) == _row(fleet, old), (miner_id, old)
        assert "b-001" in restored.miners and "b-01" not in restored.miners
        assert restored.units_running() == fleet.units_running()


def test_a_mode_added_keeps_the_group(tmp_path: Path, caplog) -> None:
    """Group b gains a mode: every saved mode still exists, so its miners keep their state (the
    former whole-state check did too; requiring equal mode names put the group to sleep)."""
    before = parse_profile(_yaml(6, 4, "eco"))
    fleet = _busy_fleet(before)
    after = parse_profile(_yaml(6, 4, "low,eco"))
    restored = _restart(tmp_path, fleet.to_compact(4), after, caplog)
    assert restored is not None, caplog.text
    for miner_id in fleet.miners:
        assert _row(restored, miner_id) == _row(fleet, miner_id), miner_id
    assert "modes changed" not in caplog.text


def test_a_mode_renamed_keeps_the_group_running_in_its_lowest_mode(tmp_path: Path, caplog) -> None:
    """Newcomer finding (issue 18, High): renaming a group's only mode (stock -> standard) made the
    restart sleep the whole group (90,001 miners, 315 MW) and the plan start it again 0.6 s later,
    breaking its min on/off times. Now the gone mode's units run in the group's lowest-power mode
    with their saved times and history; the other group is untouched."""
    before = parse_profile(_yaml(6, 4, "eco"))
    fleet = _busy_fleet(before)
    after = parse_profile(_yaml(6, 4, "low"))  # group b's mode renamed
    restored = _restart(tmp_path, fleet.to_compact(4), after, caplog)
    assert restored is not None, caplog.text
    for miner_id in fleet.miners:
        saved, now = _row(fleet, miner_id), _row(restored, miner_id)
        if miner_id.startswith("a-") or saved[0] == SLEEP:
            assert now == saved, miner_id
        else:  # was in eco: runs in low, every other field kept
            assert now == ("low", *saved[1:]), (miner_id, now)
    assert restored.units_running() == fleet.units_running()
    assert "saved mode eco gone, its units in low" in caplog.text


def test_a_mode_removed_maps_its_units_to_the_lowest_power_mode(tmp_path: Path, caplog) -> None:
    """Group b had eco and turbo; turbo is removed: its units run in eco (the lowest-power mode),
    eco's stay in eco, times kept."""
    before = parse_profile(_yaml(6, 6, "eco,turbo"))
    fleet = _busy_fleet(before)
    for k, miner_id in enumerate(sorted(m for m in fleet.miners if m.startswith("b-"))):
        if k % 2 and fleet.miners[miner_id].mode != SLEEP:
            fleet.miners[miner_id].mode = "turbo"
    assert any(m.mode == "turbo" for m in fleet.miners.values())
    restored = _restart(tmp_path, fleet.to_compact(4), parse_profile(_yaml(6, 6, "eco")), caplog)
    assert restored is not None, caplog.text
    for miner_id, miner in fleet.miners.items():
        expected = ("eco" if miner.mode == "turbo" else miner.mode, *_row(fleet, miner_id)[1:])
        assert _row(restored, miner_id) == expected, miner_id
    assert restored.units_running() == fleet.units_running()

def test_an_unchanged_profile_restores_everything_without_a_warning(tmp_path: Path, caplog) -> None:
    profile = parse_profile(_yaml(7, 3))
    fleet = _busy_fleet(profile)
    restored = _restart(tmp_path, fleet.to_compact(4), profile, caplog)
    assert restored is not None
    assert all(_row(restored, m) == _row(fleet, m) for m in fleet.miners)
    assert "not restored" not in caplog.text


def test_a_group_missing_from_the_save_starts_asleep_and_is_named(tmp_path: Path, caplog) -> None:
    before = parse_profile(_yaml(4, 3))
    fleet = _busy_fleet(before)
    saved = fleet.to_compact(4)
    saved["groups"] = [saved["groups"][1]]  # only group b was saved: group a is new to it
    restored = _restart(tmp_path, saved, before, caplog)
    assert restored is not None
    assert all(_asleep_fresh(restored, m) for m in restored.miners if m.startswith("a-"))
    assert all(_row(restored, m) == _row(fleet, m) for m in restored.miners if m.startswith("b-"))
    assert "a: 4 new" in caplog.text
    assert int(np.sum([restored.miners[m].running for m in restored.miners if m.startswith("a-")])) == 0


def test_an_older_format_is_restored_group_by_group_too(tmp_path: Path, caplog) -> None:
    before = parse_profile(_yaml(6, 4, "eco"))
    fleet = _busy_fleet(before)
    old = fleet.to_dict()  # format 2 columns: no mode names saved
    after = parse_profile(_yaml(7, 4, "low"))  # a +1; b's only mode renamed (its running miners hold "eco")
    restored = _restart(tmp_path, old, after, caplog)
    assert restored is not None, caplog.text
    assert all(_row(restored, m) == _row(fleet, m) for m in fleet.miners if m.startswith("a-"))
    assert _asleep_fresh(restored, "a-7")
    assert all(_asleep_fresh(restored, m) for m in restored.miners if m.startswith("b-"))
    assert "a: 1 new" in caplog.text and "b: 4 (modes changed)" in caplog.text


def test_the_restart_batch_after_one_unit_added_stops_no_running_miner(tmp_path: Path, caplog) -> None:
    """The daemon's restart path end to end (real store, `ControlLoop.restore`): the batch it sends
    first keeps every saved running miner in its mode and sends the new miner sleep. Before H10 it
    sent sleep to all (the state was dropped), the 100,001-sleeps swing of the issue, in small."""
    from test_commitment_state import _flat

    from hashflex.control.loop import ControlLoop
    from hashflex.drivers.batch import BatchResult, SetpointBatch

    before = parse_profile(_yaml(12, 8))
    fleet = _busy_fleet(before)
    after = parse_profile(_yaml(12, 9))
    restored = _restart(tmp_path, fleet.to_compact(4), after, caplog)
    assert restored is not None
    sent: list[dict[str, str]] = []

    class Recording:
        def apply_batch(self, batch: SetpointBatch) -> BatchResult:
            sent.append({sp.miner_id: sp.mode for sp in batch})
            return BatchResult.all_applied(batch, "test driver")

    loop = ControlLoop(after, forecaster=_flat, driver=Recording(), fleet=restored)
    loop.restore(NOW + timedelta(minutes=1)).result()
    assert sent, "the restart sent nothing"
    first = sent[0]
    for miner_id in fleet.miners:
        if fleet.miners[miner_id].running:
            assert first.get(miner_id, fleet.miners[miner_id].mode) == fleet.miners[miner_id].mode, miner_id
    assert first.get("b-9", SLEEP) == SLEEP
    assert sum(loop.fleet.miners[m].running for m in fleet.miners) == fleet.units_running()
