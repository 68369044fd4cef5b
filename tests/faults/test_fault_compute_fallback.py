"""Fault (issue 16): when HiGHS fails on a site with GPUs, the greedy fallback plans the miners
with every GPU idle; it must count that idle draw (and the idle cooling noise) against the limits,
or the fallback plan breaks the very import limit (DR) it exists to keep."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_compute_site import T, make_problem

from hashflex.optimize.fallback import greedy_schedule


def test_greedy_fallback_keeps_the_import_limit_with_idle_gpus() -> None:
    # 1,000 kW limit; 1,000 idle GPUs draw 0.2 kW each + 15 % cooling = 230 kW before any miner runs.
    problem = make_problem(limit_kw=np.full(T, 1000.0))
    frame = greedy_schedule(problem, reason="solver error: test").frame
    assert np.all(frame["grid_import_kw"] <= 1000.0 + 1e-6)
    np.testing.assert_allclose(frame["cluster_kw_g1"], 230.0)
    assert np.all(frame["units_s19_stock"] <= (1000.0 - 230.0) // 3.25)


def test_greedy_fallback_keeps_the_noise_cap_with_idle_cooling() -> None:
    # Idle cooling alone: 45 dB(A) at full IT load × 20 % idle → 38.0 dB(A); with 30 dB(A) background
    # a 40 dB(A) cap leaves room for few miners; put the miners near the home too.
    problem = make_problem(receptor_cap_dba=np.full(T, 40.0), inference=False, batch_work_gpu_h=0.0)
    import dataclasses

    receptor = dataclasses.replace(problem.receptors[0], attenuation_db={"s19": 70.0})
    problem = dataclasses.replace(problem, receptors=(receptor,))
    frame = greedy_schedule(problem, reason="solver error: test").frame
    assert np.all(frame["noise_dba_home"] <= 40.0 + 1e-6)
