"""The ``schedule`` audit payload, built at every tick of a backtest, made cheaper (issue 18), is the
payload the straightforward pandas code built, to the byte of the audit's canonical JSON: on the
greedy schedules of both bundled profiles, and on random frames (reasons with ties, missing values
of every kind, NaN in the summed columns)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashflex.audit.chain import canonical_json, iso_utc
from hashflex.audit.payloads import _column_sum, _jsonable, _num, _value_counts, schedule_payload
from hashflex.optimize.build import problem_from_profile
from hashflex.optimize.fallback import greedy_schedule
from hashflex.profile import load_profile


def schedule_payload_reference(schedule) -> dict:
    """The payload as built before issue 18's change (pandas ``Series.sum`` and ``value_counts``)."""
    frame, info = schedule.frame, schedule.info
    first = frame.iloc[0]
    dt_h = frame["duration_h"].to_numpy() if "duration_h" in frame else None
    totals = {"profit_usd": float(frame["profit_usd"].sum()), "revenue_usd": float(frame["revenue_usd"].sum()),
              "energy_cost_usd": float(frame["energy_cost_usd"].sum()),
              "emissions_kg": float(frame["emissions_kg"].sum())}
    if dt_h is not None:
        totals["grid_import_mwh"] = float((frame["grid_import_kw"].to_numpy() * dt_h).sum() / 1000.0)
        totals["hashrate_ph_h"] = float((frame["hashrate_th_s"].to_numpy() * dt_h).sum() / 1000.0)
    reasons = frame["reason"].fillna("").value_counts() if "reason" in frame else {}
    return {
        "status": getattr(info.status, "value", str(info.status)),
        "gap": _num(info.gap),
        "objective_usd": _num(info.objective_usd),
        "message": info.message,
        "horizon_start": iso_utc(frame.index[0].to_pydatetime()),
        "horizon_end": iso_utc(frame["interval_end"].iloc[-1].to_pydatetime()) if "interval_end" in frame else None,
        "intervals": int(len(frame)),
        "reasons": {str(k) or "full_load": int(v) for k, v in dict(reasons).items()},
        "totals": {k: _num(v) for k, v in totals.items()},
        "first_row": {"interval_start": iso_utc(frame.index[0].to_pydatetime()),
                      **{str(k): _jsonable(v) for k, v in first.items()}},
    }


def _greedy(profile_name: str, periods: int, prices: np.ndarray):
    profile = load_profile(profile_name)
    index = pd.date_range("2020-02-10T06:00Z", periods=periods, freq=f"{profile.site.interval_minutes}min")
    return greedy_schedule(problem_from_profile(profile, index, prices), reason="test")


def test_the_payload_of_real_schedules_is_the_reference_payload() -> None:
    rng = np.random.default_rng(18)
    for name, periods in (("west_texas", 96), ("panhandle_120mw", 288)):
        prices = rng.choice([-20.0, 15.0, 40.0, 180.0, 2500.0], size=periods)  # several reasons, with ties
        schedule = _greedy(name, periods, prices)
        assert schedule.frame["reason"].nunique() > 1
        assert canonical_json(schedule_payload(schedule)) == canonical_json(schedule_payload_reference(schedule))


def test_the_payload_with_nan_totals_and_missing_reasons_is_the_reference_payload() -> None:
    schedule = _greedy("west_texas", 96, np.full(96, 30.0))
    frame = schedule.frame.copy()
    frame.loc[frame.index[3], "profit_usd"] = np.nan  # pandas skips it; so must the fast sum
    frame["reason"] = frame["reason"].astype(object)
    frame.loc[frame.index[5], "reason"] = None
    frame.loc[frame.index[6], "reason"] = np.nan
    frame.loc[frame.index[7:20], "reason"] = "price"
    changed = type(schedule)(frame, schedule.info, schedule.group_modes, schedule.receptor_ids)
    got, want = schedule_payload(changed), schedule_payload_reference(changed)
    assert canonical_json(got) == canonical_json(want)
    assert math.isfinite(got["totals"]["profit_usd"])


MISSING = [None, float("nan"), np.nan, pd.NA]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codes=st.lists(st.sampled_from(["", "price", "noise", "equipment", "dr", "full_load", "M0", "M1", "M2", "M3"]),
                      min_size=1, max_size=60),
       holes=st.lists(st.tuples(st.integers(0, 59), st.integers(0, 3)), max_size=8),
       dtype=st.sampled_from(["object", "str"]))
def test_value_counts_is_pandas_value_counts_in_order(codes, holes, dtype) -> None:
    values: list = list(codes)
    for position, kind in holes:
        if position < len(values):
            values[position] = MISSING[kind]
    series = pd.Series(values, dtype=dtype)
    want = series.fillna("").value_counts()
    got = _value_counts(series.to_numpy(dtype=object))
    assert list(got.items()) == [(k, int(v)) for k, v in want.items()]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-1e9, 1e9, allow_nan=False), st.just(float("nan"))), min_size=1,
                       max_size=400))
def test_column_sum_is_pandas_sum_to_the_bit(values) -> None:
    frame = pd.DataFrame({"profit_usd": np.array(values, dtype=float)})
    assert _column_sum(frame, "profit_usd") == float(frame["profit_usd"].sum())
    ints = pd.DataFrame({"n": np.arange(len(values))})  # a non-float column: pandas' own sum
    assert _column_sum(ints, "n") == float(ints["n"].sum())
