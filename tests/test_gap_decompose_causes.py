"""The per-interval cause of a gap in ``optimization/benchmarks/gap_decompose.py --top`` (issue 14, F2).

Pure: the breakevens at which a decision changes, from the west_texas profile and a hashprice, checked
against the formula by hand; and the labels of hand-made intervals (a rise and a fall across a breakeven,
a plan spending the day's carbon budget, and neither).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hashflex.profile import load_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimization" / "benchmarks"))

import gap_decompose as gd  # the benchmark, on the path above


def _by_hand(th_s: float, kw: float, hashprice: float, fee: float, adder: float) -> float:
    return hashprice / 1000.0 / 24.0 * th_s / kw * fee * 1000.0 - adder


def test_breakevens_are_each_mode_and_each_step_up() -> None:
    profile = load_profile("west_texas")
    fee = 1 - profile.economics.pool_fee_pct / 100
    adder = profile.grid.total_adder_usd_mwh
    values = gd.breakevens_usd_mwh(profile, 49.6)
    # S19j Pro stock (104 TH/s, 3.07 kW) and eco (90, 2.6); the S19j Pro step eco -> stock (14 TH/s for 0.47 kW)
    for th_s, kw in ((104.0, 3.07), (90.0, 2.6), (14.0, 0.47)):
        assert np.isclose(values, _by_hand(th_s, kw, 49.6, fee, adder)).any(), (th_s, kw)
    modes = sum(len(g.modes) for g in profile.miner_groups)
    steps = sum(len(g.modes) - 1 for g in profile.miner_groups)
    assert len(values) == modes + steps
    assert values.min() == pytest.approx(_by_hand(14.0, 0.47, 49.6, fee, adder))  # the least efficient step


def test_cause_labels() -> None:
    lines = [np.array([64.0, 110.0])] * 5
    price = np.array([120.0, 50.0, 30.0, 30.0, 70.0])
    forecast = np.array([90.0, 80.0, 31.0, 31.0, 66.0])
    spends = np.array([False, False, True, True, False])
    less = np.array([False, True, True, False, False])
    labels = gd.cause_labels(price, forecast, lines, spends, less)
    assert list(labels) == ["a rise not published",  # 110 between 90 and 120
                            "b fall not published",  # 64 between 50 and 80
                            "d carbon budget",  # no breakeven crossed, the plan spends the budget and ran less
                            "e other",  # spends it but did not plan less
                            "e other"]  # 66 -> 70 crosses nothing
    # NaN forecast (no tick recorded): nothing crossed
    assert gd.cause_labels(np.array([120.0]), np.array([np.nan]), lines[:1], np.array([False]),
                           np.array([False]))[0] == "e other"
