"""Predictive maintenance on the SYNTHETIC fleet: labels, features and a model that beats chance."""

from __future__ import annotations

import numpy as np
import pytest

from hashflex.health.predict import (
    FAILURE_MODES,
    FEATURES,
    RiskModel,
    evaluate,
    features,
    simulate_fleet,
    snapshots,
)


@pytest.fixture(scope="module")
def fleets():
    return simulate_fleet(90, 40, samples_per_day=4, failure_share=0.35, seed=11), \
        simulate_fleet(90, 40, samples_per_day=4, failure_share=0.35, seed=12)


def test_the_fleet_is_labelled_and_deterministic(fleets):
    train, _ = fleets
    modes = {m.failure_mode for m in train if m.failure_mode}
    assert modes == set(FAILURE_MODES)
    failing = next(m for m in train if m.failure_day is not None and m.failure_day < 40)
    # a failed miner reports nothing after its failure
    assert (failing.readings[-1].at - failing.readings[0].at).days < failing.failure_day
    again = simulate_fleet(90, 40, samples_per_day=4, failure_share=0.35, seed=11)
    assert [m.failure_day for m in again] == [m.failure_day for m in train]


def test_each_failure_mode_moves_its_feature(fleets):
    train, _ = fleets
    column = {"fan_bearing": "max_single_fan_slope", "thermal_degradation": "temp_rise_slope",
              "chip_degradation": "error_rate_growth", "psu_degradation": "efficiency_slope"}
    healthy = [features(m.readings[-28:]) for m in train if m.failure_mode is None][:30]
    for mode, name in column.items():
        sick = [features(m.readings[-28:]) for m in train
                if m.failure_mode == mode and m.failure_day is not None and m.failure_day < 40]
        j = FEATURES.index(name)
        assert sick, mode
        assert np.median([f[j] for f in sick]) > np.percentile([f[j] for f in healthy], 90), mode


def test_model_beats_chance_on_a_held_out_fleet(fleets):
    train, test = fleets
    x, y, _ = snapshots(train)
    model = RiskModel().fit(x, y)
    ev = evaluate(model, test, horizon_days=7, lead_days=2, flag_fraction=0.1)
    assert ev.failures >= 5
    assert ev.precision > 4 * ev.base_rate
    assert ev.lead_recall >= 0.6


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both failing and healthy"):
        RiskModel().fit(np.zeros((5, len(FEATURES))), np.zeros(5))
    with pytest.raises(RuntimeError, match="fit the model first"):
        RiskModel().risk(np.zeros((1, len(FEATURES))))
