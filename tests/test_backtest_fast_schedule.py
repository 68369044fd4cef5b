"""Schedules of a 5-minute site end each interval on the minute (found measuring the 5-minute
backtest, issue 18): 5 minutes as a float of hours ended every interval 2 ns early, and the audit
payload warned at each of the 288 plans a day (`Discarding nonzero nanoseconds`)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from hashflex.audit.payloads import schedule_payload
from hashflex.optimize.build import problem_from_profile
from hashflex.optimize.fallback import greedy_schedule
from hashflex.profile import load_profile


def test_five_minute_intervals_end_on_the_minute_and_audit_without_warnings() -> None:
    profile = load_profile("panhandle_120mw")
    index = pd.date_range("2020-02-10T06:00Z", periods=288, freq="5min")
    problem = problem_from_profile(profile, index, np.full(288, 20.0))
    schedule = greedy_schedule(problem, reason="test")  # schedule_from_counts, no solver needed
    ends = pd.DatetimeIndex(schedule.frame["interval_end"])
    assert (ends == index + pd.Timedelta(minutes=5)).all()
    assert ends.dtype == "datetime64[ns, UTC]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payload = schedule_payload(schedule)
    assert pd.Timestamp(payload["horizon_end"]) == pd.Timestamp("2020-02-11T06:00Z")
