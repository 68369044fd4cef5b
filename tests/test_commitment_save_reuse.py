"""Issue 18: `FleetState.to_compact` reuses a column's packed text while the column is unchanged since
the last save (a batch that starts units leaves their stops, health and availability alone) and a
time's text once seen. Whatever happened in between, a save must equal what a fleet with nothing
cached writes for the same miners (a cold save of a copy made through the format-2 columns, which
share no cache), and restore the same fleet."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.fleet import FleetState
from test_commitment_state import NOW, _profile_of, _rows, fleets


def _cold(fleet: FleetState) -> dict:
    """The compact state of a copy of ``fleet`` that has never saved (no text cached)."""
    return FleetState.from_dict(json.loads(json.dumps(fleet.to_dict())), _profile_of(fleet)).to_compact()


def _instants(saved: dict) -> dict:
    """``saved`` with each group's stamp texts as instants: one instant held with two UTC offsets is
    saved with either text (documented in `to_compact`), so that is the one freedom a save has."""
    return {**saved, "groups": [{**g, "stamps": [datetime.fromisoformat(t) for t in g["stamps"]]}
                                for g in saved["groups"]]}


_STEPS = st.lists(st.tuples(st.sampled_from(["modes", "hours", "health", "available", "revert", "save"]),
                            st.integers(0, 2**32 - 1)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), steps=_STEPS)
def test_a_save_after_any_changes_equals_a_cold_save(fleet: FleetState, steps: list[tuple[str, int]]) -> None:
    profile = _profile_of(fleet)
    ids = list(fleet.miners)
    fleet.to_compact()  # the caches filled
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
        saved = fleet.to_compact()
        assert _instants(saved) == _instants(_cold(fleet))
        restored = FleetState.from_dict(json.loads(json.dumps(saved)), profile)
        assert sorted(_rows(restored)) == sorted(_rows(fleet))


def test_a_column_changed_in_place_is_packed_again() -> None:
    """The reuse compares values, not identity: the fleet changes its columns in place (views, reverts)."""
    from test_commitment_state import MODES
    from hashflex.control.fleet import Miner
    from hashflex.profile import MinerGroup

    group = MinerGroup(id="g", model="S21", units=4, modes=MODES)
    fleet = FleetState([Miner(f"g-{i}", "g") for i in range(4)], [group])
    first = fleet.to_compact()["groups"][0]
    fleet.miners["g-2"].healthy = False
    fleet.miners["g-3"].run_hours = 7.5
    fleet.miners["g-1"].mode = "turbo"
    second = fleet.to_compact()["groups"][0]
    for field in ("healthy", "run_hours", "mode"):
        assert second[field] != first[field], field
    assert second["available"] == first["available"]
    restored = FleetState.from_dict(fleet.to_compact(), _profile_of(fleet))
    assert (restored.miners["g-2"].healthy, restored.miners["g-3"].run_hours, restored.miners["g-1"].mode) == (
        False, 7.5, "turbo")
