"""Issue 18 (task H5): commitment state format 4 does not re-encode the miner ids on every save.

Format 3 (`FleetState.to_compact()`) wrote every miner id as text in each save (about 1.1 MB at
100,000 miners, escaped again by ``json.dumps`` and written again to SQLite on every batch that
changes a mode), though a fleet's ids never change. Format 4 (`to_compact(4)`) names the profile's
naming rule (``<group>-<n>``, `SiteProfile.miner_ids`) and the unit count for a group whose ids are
the rule's, and keeps any other group's ids inline. These tests check: no id text in a rule-named
save (this failed before: `to_compact` took no version and wrote the ids); a format-4 save after any
changes equals a cold save and restores the same fleet as format 3 does (hypothesis, random fleets
named by the rule or not); a format-3 state written by the previous release (frozen below) still
loads; a damaged rule field is refused naming the field; and a real SQLite store and the daemon's
restart path carry format 4. Fleets here are SYNTHETIC.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.daemon import load_control_state
from hashflex.control.fleet import NAMING_RULE, SLEEP, FleetState, Miner
from hashflex.profile import MinerGroup, MinerMode, parse_profile
from hashflex.store import Store
from test_commitment_save_reuse import _STEPS, _instants
from test_commitment_state import MODES, NOW, PROFILE_YAML, _profile_of, _rows, _same, fleets

# Written by the format-3 release (commit d987bd2, `FleetState.to_compact()`) for a SYNTHETIC fleet of two
# groups: a-1 stock (started NOW, 1.25 h), a-2 asleep and degraded (started NOW-3h, stopped NOW-1h), a-3 eco
# (started NOW); b-1 asleep and unavailable, b-2 eco (started NOW-15min, 0.25 h).
FORMAT_3_STATE = (
    '{"format": 3, "groups": [{"group_id": "a", "miner_ids": "a-1\\na-2\\na-3", "mode_names": ["off", "sleep", '
    '"eco", "stock"], "mode": "eAFjZPj/n4EBAAcFAgA=", "healthy": "eAFbAAAAoQCh", "available": "eAF7AAAA4QDh", '
    '"stamps": ["2025-07-15T12:00:00.250000+00:00", "2025-07-15T09:00:00.250000+00:00", '
    '"2025-07-15T11:00:00.250000+00:00"], "last_start": "eAFjYGBgYARiEAAAABQAAg==", "last_stop": '
    '"eAH7////fyYGBgYg9R8AM+gH+w==", "run_hours": "AAAAAAAA9D8AAAAAAAAAAAAAAAAAAAAA"}, {"group_id": "b", '
    '"miner_ids": "b-1\\nb-2", "mode_names": ["off", "sleep", "eco"], "mode": "eAH7/5+BAQAG/QH/", "healthy": '
    '"eAE7AAAAwQDB", "available": "eAFzAAAAQQBB", "stamps": ["2025-07-15T11:45:00.250000+00:00"], "last_start": '
    '"eAH7////fwYgAAAZ7gP9", "last_stop": "eAH7/x8CACPkB/k=", "run_hours": "AAAAAAAAAAAAAAAAAADQPw=="}]}')


def _rule_fleet(units: list[int], draw_mode=None) -> FleetState:
    """A fleet whose ids are the profile's naming rule (as `FleetState.from_profile` makes them)."""
    groups = [MinerGroup(id=f"g{k}", model="S21", units=max(n, 1), modes=MODES, idle_power_kw=0.01)
              for k, n in enumerate(units)]
    miners = []
    for group, n in zip(groups, units):
        width = len(str(n))
        miners += [Miner(f"{group.id}-{i:0{width}d}", group.id, mode=draw_mode(i) if draw_mode else SLEEP)
                   for i in range(1, n + 1)]
    return FleetState(miners, groups)


@st.composite
def named_fleets(draw: st.DrawFn) -> FleetState:
    """SYNTHETIC fleets: named by the rule (each group of 0-40 units), or `fleets()`'s free ids."""
    if draw(st.booleans()):
        return draw(fleets())
    units = draw(st.lists(st.integers(0, 40), min_size=1, max_size=3))
    modes = draw(st.lists(st.sampled_from([SLEEP, "eco", "stock", "turbo"]), min_size=41, max_size=41))
    fleet = _rule_fleet(units, lambda i: modes[i])
    for miner_id in draw(st.lists(st.sampled_from(sorted(fleet.miners)), max_size=5)) if len(fleet) else []:
        fleet.set_health(miner_id, False)
    return fleet


def _cold4(fleet: FleetState) -> dict:
    """Format 4 of a copy of ``fleet`` that has never saved (made through the format-2 columns)."""
    return FleetState.from_dict(json.loads(json.dumps(fleet.to_dict())), _profile_of(fleet)).to_compact(4)


def test_a_rule_named_fleet_saves_no_id_text() -> None:
    """The fault: every save carried every id. Format 4 names the rule instead (failed before: no version)."""
    fleet = _rule_fleet([5000, 5000])
    fleet.apply_modes({g: np.where(np.arange(5000) % 3 == 0, -1, 1) for g in fleet.groups}, NOW)
    fleet.accrue_run_hours(0.25)
    saved = fleet.to_compact(4)
    assert saved["format"] == 4
    text = json.dumps(saved)
    assert [g["miner_ids"] for g in saved["groups"]] == [{"naming_rule": NAMING_RULE, "units": 5000}] * 2
    assert "g0-0001" not in text and "g1-5000" not in text
    old = len(json.dumps(fleet.to_compact(3)))
    assert len(text) < old - 8 * len(fleet), (len(text), old)  # format 3 spent 9 bytes a miner here on ids
    _same(FleetState.from_dict(json.loads(text), _profile_of(fleet)), fleet)


def test_the_rule_is_the_profiles() -> None:
    """A fleet made from a profile (`SiteProfile.miner_ids`) is saved by the rule and restores its ids."""
    profile = parse_profile(PROFILE_YAML)
    fleet = FleetState.from_profile(profile)
    saved = json.loads(json.dumps(fleet.to_compact(4)))
    assert all(isinstance(g["miner_ids"], dict) for g in saved["groups"])
    restored = FleetState.from_dict(saved, profile)
    assert sorted(restored.miners) == sorted(profile.miner_ids())
    assert {m: restored.miners[m].group_id for m in restored.miners} == profile.miner_ids()


def test_ids_not_by_the_rule_stay_inline() -> None:
    group = MinerGroup(id="g", model="S21", units=3, modes=MODES[:1])
    for ids in (["g-0", "g-1", "g-2"], ["g-1", "g-3"], ["g-01", "g-02", "g-03"], ["h-1", "h-2", "h-3"]):
        fleet = FleetState([Miner(m, "g") for m in ids], [group])
        saved = fleet.to_compact(4)
        assert saved["groups"][0]["miner_ids"] == "\n".join(ids), ids
        _same(FleetState.from_dict(json.loads(json.dumps(saved)), _profile_of(fleet)), fleet)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=named_fleets(), steps=_STEPS)
def test_a_format_4_save_after_any_changes_equals_a_cold_save(fleet: FleetState, steps: list[tuple[str, int]]) -> None:
    """Random changes between saves (modes, hours, health, availability, reverts), saves in either format in
    between: each format-4 save equals a cold one, restores the fleet, and restores as its format-3 save does."""
    profile = _profile_of(fleet)
    ids = list(fleet.miners)
    fleet.to_compact(4)  # the caches filled
    last_before = None
    for k, (step, seed) in enumerate(steps):
        rng = np.random.default_rng(seed)
        at = NOW + timedelta(minutes=15 * (k + 1), microseconds=int(rng.integers(0, 3)))
        if step == "modes":
            modes = {g: rng.integers(-1, len(group.modes), fleet.group_size(g)) for g, group in fleet.groups.items()
                     if rng.random() < 0.7}
            last_before = fleet.apply_modes(modes, at)
        elif step == "hours":
            fleet.accrue_run_hours(float(rng.choice([0.25, 0.5, 1e-9])))
        elif step in ("health", "available") and ids:
            miner_id = ids[int(rng.integers(0, len(ids)))]
            (fleet.set_health if step == "health" else fleet.set_available)(miner_id, bool(rng.random() < 0.5))
        elif step == "revert" and last_before:
            miner_id = list(last_before)[int(rng.integers(0, len(last_before)))]
            fleet.revert(miner_id, last_before[miner_id])
        if rng.random() < 0.3:
            fleet.to_compact(3)  # the two formats share the column caches
        saved = fleet.to_compact(4)
        assert saved["format"] == 4
        assert _instants(saved) == _instants(_cold4(fleet))
        three = fleet.to_compact(3)
        assert {k: v for k, v in _instants(saved).items() if k != "format"} == {  # only the ids' field differs
            "groups": [dict(g, miner_ids=f["miner_ids"]) for g, f in zip(_instants(three)["groups"], saved["groups"])]}
        restored = FleetState.from_dict(json.loads(json.dumps(saved)), profile)
        _same(restored, FleetState.from_dict(json.loads(json.dumps(three)), profile))
        assert sorted(_rows(restored)) == sorted(_rows(fleet))
        assert json.loads(json.dumps(restored.to_compact(4))) == json.loads(json.dumps(saved)) or (
            _instants(restored.to_compact(4)) == _instants(saved))


def test_a_format_3_state_of_the_previous_release_still_loads() -> None:
    modes = [MinerMode(name="eco", power_kw=2.9, hashrate_th_s=175, sound_power_dba=81),
             MinerMode(name="stock", power_kw=3.5, hashrate_th_s=200, sound_power_dba=84)]
    groups = [MinerGroup(id="a", model="S21", units=3, modes=modes), MinerGroup(id="b", model="S19", units=2,
                                                                                 modes=modes[:1])]
    t = datetime(2025, 7, 15, 12, 0, 0, 250_000, tzinfo=timezone.utc)
    want = FleetState([Miner("a-1", "a", mode="stock", last_start=t, run_hours=1.25),
                       Miner("a-2", "a", healthy=False, last_stop=t - timedelta(hours=1),
                             last_start=t - timedelta(hours=3)),
                       Miner("a-3", "a", mode="eco", last_start=t), Miner("b-1", "b", available=False),
                       Miner("b-2", "b", mode="eco", last_start=t - timedelta(minutes=15), run_hours=0.25)], groups)
    profile = SimpleNamespace(miner_groups=groups)
    restored = FleetState.from_dict(json.loads(FORMAT_3_STATE), profile)
    _same(restored, want)
    # and saved again in format 4 (the rule: a-1..a-3, b-1..b-2), it restores the same fleet
    again = json.loads(json.dumps(restored.to_compact(4)))
    assert [g["miner_ids"] for g in again["groups"]] == [{"naming_rule": NAMING_RULE, "units": 3},
                                                         {"naming_rule": NAMING_RULE, "units": 2}]
    _same(FleetState.from_dict(again, profile), want)
    assert json.loads(json.dumps(restored.to_compact(3))) == json.loads(FORMAT_3_STATE)


@pytest.mark.parametrize("field, message", [
    ({"naming_rule": "<n>", "units": 3}, "expected {'naming_rule'"),
    ({"naming_rule": NAMING_RULE}, "expected {'naming_rule'"),
    ({"naming_rule": NAMING_RULE, "units": -1}, "units -1: must be an integer"),
    ({"naming_rule": NAMING_RULE, "units": True}, "units True: must be an integer"),
    ({"naming_rule": NAMING_RULE, "units": 3.0}, "units 3.0: must be an integer"),
    ({"naming_rule": NAMING_RULE, "units": 10**9}, "units 1000000000: must be an integer"),
    ({"naming_rule": NAMING_RULE, "units": 4}, "mode: 3 values for 4 miners"),
    (7, "miner_ids: expected the ids' text, a list or the naming rule, got int"),
])
def test_a_damaged_rule_field_is_refused_naming_it(field, message) -> None:
    fleet = _rule_fleet([3])
    saved = json.loads(json.dumps(fleet.to_compact(4)))
    saved["groups"][0]["miner_ids"] = field
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        FleetState.from_dict(saved, _profile_of(fleet))


def test_the_rule_field_in_a_format_3_state_is_refused() -> None:
    fleet = _rule_fleet([3])
    saved = dict(fleet.to_compact(4), format=3)
    with pytest.raises(ValueError, match="naming rule is format 4's, the state says format 3"):
        FleetState.from_dict(saved, _profile_of(fleet))


@pytest.mark.parametrize("version", [2, 5, "4", True])
def test_an_unknown_version_is_refused(version) -> None:
    with pytest.raises(ValueError, match="version .*: must be 3 or 4"):
        _rule_fleet([2]).to_compact(version)


def test_format_4_through_a_real_store_and_the_daemons_restart(tmp_path: Path, caplog) -> None:
    profile = parse_profile(PROFILE_YAML)
    fleet = FleetState.from_profile(profile)
    fleet.apply_modes({"a": np.where(np.arange(40) % 4 == 0, -1, 0), "b": np.arange(30) % 3 - 1}, NOW)
    fleet.accrue_run_hours(0.25)
    fleet.set_health("b-03", False)
    fleet.set_available("a-07", False)
    with Store(tmp_path / "s.db") as store:
        store.set_meta("fleet", fleet.to_compact(4))
        store.flush()
        assert store.get_meta("fleet")["format"] == 4
        with caplog.at_level(logging.WARNING):
            _, restored = load_control_state(store, profile)
    assert restored is not None, caplog.text
    _same(restored, FleetState.from_dict(fleet.to_compact(3), profile))
    assert sorted(_rows(restored)) == sorted(_rows(fleet))
