"""Issue 18, the 100 ms tick at 100,000 miners: the parts of the tick made vector work keep their
results. `realise` names an action's miners as columns (`MovedMiners`), equal to the tuple the
per-group comparison made (same ids, same order, same hash, same audit payload); plan stability reads
the plan's unit columns as one block, equal to reading them column by column."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.audit.payloads import guard_action_payload
from hashflex.control.dispatch import plan_dispatch_arrays
from hashflex.control.fleet import FleetArrays
from hashflex.control.guard import Guard, Limits, Measurements
from hashflex.control.guard_counts import CountGuard, MovedMiners, apply_moves, realise
from hashflex.control.stability import _unit_block
from hashflex.optimize.schedule import unit_column
from test_guard_counts import EXPIRY_S, NOW, sites


def _moved_tuples(cut, fleet: FleetArrays, modes: dict[str, np.ndarray]) -> list[tuple[str, ...]]:
    """Per cutting action, the ids its moves changed, as `realise` named them before (every group
    moved and compared, ids made into a tuple): the reference."""
    current = {g: np.asarray(v, dtype=np.int16) for g, v in modes.items()}
    out = []
    for _, first, end in cut.spans:
        after = apply_moves(current, fleet, cut.moves[first:end])
        out.append(tuple(m for g, arrays in fleet.groups.items() for m in arrays.miner_id[after[g] != current[g]].tolist()))
        current = after
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=sites(), limit_kw=st.floats(0.0, 80.0), offset_db=st.sampled_from([None, 0.0, 6.0]),
       head=st.integers(0, 60))
def test_realise_names_the_moved_miners_as_the_tuple_did(case, limit_kw, offset_db, head) -> None:
    profile, fleet, counts = case
    arrays = FleetArrays.from_fleet(fleet)
    dispatched = plan_dispatch_arrays(counts, arrays, NOW, EXPIRY_S)
    guard = CountGuard(Guard(profile))
    measurements = Measurements(noise_offset_db={"house": offset_db}) if offset_db is not None else Measurements()
    present = {g: len(a.miner_id) for g, a in arrays.groups.items()}
    cut = guard.check(dispatched.counts(arrays), measurements,
                      Limits(import_limits_kw={"test": limit_kw}, noise_caps_dba={}), NOW, present=present)
    modes, actions = realise(cut, arrays, dispatched.modes)
    want = _moved_tuples(cut, arrays, dispatched.modes)
    assert [action for action, _, _ in cut.spans] == sorted({a for a, _, _ in cut.spans})
    for (action, _, _), ids in zip(cut.spans, want):
        got = actions[action].miners
        assert isinstance(got, MovedMiners)
        assert len(got) == len(ids)
        assert got[:head] == ids[:head]  # read without making the rest
        assert got == ids and ids == got and tuple(got) == ids and list(got) == list(ids)
        assert hash(got) == hash(ids)
        if ids:
            assert got[-1] == ids[-1] and got[len(ids) // 2] == ids[len(ids) // 2]
        assert guard_action_payload("import_curtail", "r", got) == guard_action_payload("import_curtail", "r", ids)
    # the modes are those of the moves applied in order (every group, as before)
    everything = apply_moves(dispatched.modes, arrays, cut.moves)
    assert set(modes) == set(everything)
    for g in modes:
        assert np.array_equal(modes[g], everything[g]) and modes[g].dtype == np.int16


def test_moved_miners_is_a_read_only_sequence_in_group_then_id_order() -> None:
    ids_a = np.array(["a-1", "a-2", "a-3"], dtype=object)
    ids_b = np.array(["b-1", "b-2"], dtype=object)
    moved = MovedMiners([(ids_a, np.array([0, 2])), (ids_b, np.array([], dtype=np.int64)), (ids_b, np.array([1]))])
    assert len(moved) == 3 and moved == ("a-1", "a-3", "b-2")
    assert moved[:2] == ("a-1", "a-3") and moved[1:] == ("a-3", "b-2") and moved[:0] == ()
    assert moved != ("a-1", "a-3") and moved != ["a-1", "a-3", "b-2"]  # a tuple's equality, not a list's
    assert "b-2" in moved and "b-1" not in moved
    assert repr(moved) == "MovedMiners(('a-1', 'a-3', 'b-2'))"
    assert len(MovedMiners([])) == 0 and MovedMiners([]) == ()


@settings(max_examples=80, deadline=None)
@given(data=st.data(), periods=st.integers(1, 8), n_groups=st.integers(1, 4))
def test_the_unit_block_is_the_columns_read_one_by_one(data, periods, n_groups) -> None:
    group_modes = tuple((f"g{g}", m) for g in range(n_groups)
                        for m in data.draw(st.lists(st.sampled_from(["eco", "stock", "turbo"]), min_size=1,
                                                    max_size=3, unique=True)))
    frame = pd.DataFrame({unit_column(g, m): data.draw(st.lists(st.integers(0, 500), min_size=periods,
                                                                  max_size=periods)) for g, m in group_modes})
    frame["profit_usd"] = 1.5  # other columns are left out
    block = _unit_block(frame, group_modes)
    assert block.shape == (periods, len(group_modes))
    for j, (g, m) in enumerate(group_modes):
        assert np.array_equal(block[:, j], frame[unit_column(g, m)].to_numpy(dtype=int))
