"""Dispatch's rank orders from quicker sorts (issue 18) equal the plain stable ones: a healthy fleet
(every health score equal) ranks by run hours alone, as ``np.lexsort((run_hours, -score))`` does,
and the run-hours sort from dense ranks equals ``np.argsort(kind="stable")`` with ties and NaNs.
Random fleets (hypothesis), SYNTHETIC."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.control.dispatch import _assign_arrays, _stable_argsort
from hashflex.control.fleet import NO_TIME_US, GroupArrays
from hashflex.profile import MinerGroup, MinerMode

MODES = [MinerMode(name=n, power_kw=p, hashrate_th_s=h, sound_power_dba=s)
         for n, p, h, s in [("eco", 2.9, 175, 81), ("stock", 3.5, 200, 84), ("turbo", 4.2, 230, 86)]]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 200), ties=st.booleans(), nan=st.booleans())
def test_the_stable_argsort_from_ranks_equals_numpys(seed: int, n: int, ties: bool, nan: bool) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, n).astype(float) if ties else rng.random(n) * 1e4
    if nan and n:
        values[rng.random(n) < 0.2] = np.nan
    np.testing.assert_array_equal(_stable_argsort(values), np.argsort(values, kind="stable"))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 80), nm=st.integers(1, 3), ties=st.booleans(),
       score=st.sampled_from([1.0, 0.5]), min_on=st.sampled_from([0, 30]), min_off=st.sampled_from([0, 15]))
def test_a_constant_health_score_assigns_as_no_score(seed: int, n: int, nm: int, ties: bool, score: float,
                                                      min_on: int, min_off: int) -> None:
    rng = np.random.default_rng(seed)
    group = MinerGroup(id="g", model="S", units=n, modes=MODES[:nm], min_on_minutes=min_on, min_off_minutes=min_off)
    now = 10**12
    arrays = GroupArrays(
        group=group, miner_id=np.array([f"g-{i:03d}" for i in range(n)], dtype=object),
        mode=rng.integers(-1, nm, n).astype(np.int16), healthy=rng.random(n) < 0.8, available=rng.random(n) < 0.9,
        last_start_us=np.where(rng.random(n) < 0.5, now - rng.integers(0, 3600 * 10**6, n), NO_TIME_US).astype(np.int64),
        last_stop_us=np.where(rng.random(n) < 0.5, now - rng.integers(0, 3600 * 10**6, n), NO_TIME_US).astype(np.int64),
        run_hours=rng.integers(0, 4, n).astype(float) if ties else rng.random(n) * 100)
    need = [int(x) for x in rng.integers(0, n + 2, nm)]
    with_score = _assign_arrays(arrays, need, now, np.full(n, score))
    # The reference: np.lexsort((run_hours, -score)), the path a constant score took before. An all-NaN
    # score still takes it (NaN != NaN, so it is not "one score"); NaN keys tie, so lexsort ranks by
    # run hours within them, as it did for any constant score.
    reference = _assign_arrays(arrays, need, now, np.full(n, np.nan))
    np.testing.assert_array_equal(with_score, reference)
    np.testing.assert_array_equal(_assign_arrays(arrays, need, now, None), reference)
