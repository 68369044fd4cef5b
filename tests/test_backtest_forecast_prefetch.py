"""The mpc backtest computes the next tick's forecast while the solver worker solves (issue 18:
``SnapshotForecaster.prefetch``). The run is the same run: the same forecasts, counts, profit and
audit trail as computing each forecast at its tick; and two days of each bundled profile through
the CLI are the code before's (no prefetch, the schedule record by pandas) to the cent and record
for record. (Against commit 1e0fd7c itself the trails differ since 7e7a4d1, another engineer's
solver change, in the 17th significant digit of some schedules' ``gap``.)"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hashflex.backtest.closed_loop import SnapshotForecaster, simulate_policy
from hashflex.backtest.runner import build_actuals, load_prices
from hashflex.control.solver import SolveRunner
from hashflex.data import bundled_path
from hashflex.profile import load_profile

REPO = Path(__file__).resolve().parents[1]


def _actuals(name: str, start: str, hours: int):
    profile = load_profile(name)
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")])
    begin = pd.Timestamp(start, tz=profile.tz)
    return profile, build_actuals(profile, prices, begin, begin + pd.Timedelta(hours=hours))


def _same_forecast(a, b) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        elif isinstance(x, pd.Index):
            assert x.equals(y), f.name
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for k in x:
                np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]), err_msg=f"{f.name}[{k}]")
        else:
            assert x == y or (pd.isna(x) and pd.isna(y)), f.name


def test_a_prefetched_forecast_is_the_forecast_of_the_call() -> None:
    profile, actuals = _actuals("west_texas", "2020-02-10", 24)
    fresh, prefetching = SnapshotForecaster(profile, actuals), SnapshotForecaster(profile, actuals)
    try:
        t0, t1 = actuals.index[8], actuals.index[9]
        prefetching.prefetch(t1.to_pydatetime(), t1, 96)
        got = prefetching(t1.to_pydatetime(), t1, 96)  # the prefetched one
        assert prefetching.prefetch_hits == 1
        _same_forecast(got, fresh(t1.to_pydatetime(), t1, 96))
        prefetching.prefetch(t1.to_pydatetime(), t1, 96)
        other = prefetching(t0.to_pydatetime(), t0, 96)  # not what was prefetched: computed at the call
        assert prefetching.prefetch_hits == 1
        _same_forecast(other, fresh(t0.to_pydatetime(), t0, 96))
        assert not np.array_equal(other.price_usd_mwh, got.price_usd_mwh)  # the two calls differ
    finally:
        prefetching.close()


def test_a_prefetch_that_fails_raises_at_the_call_as_the_call_would() -> None:
    profile, actuals = _actuals("west_texas", "2020-02-10", 6)
    forecaster = SnapshotForecaster(profile, actuals)
    t = actuals.index[2]
    try:
        # the last one fails inside the forecast (in the helper thread when prefetched)
        for bad in (("not a time", t, 96), (t.to_pydatetime(), "not a time", 96), (t.to_pydatetime(), t, "many"),
                    (t.to_pydatetime(), t, -5)):
            with pytest.raises(Exception) as direct:  # what the call raises without a prefetch
                forecaster(*bad)
            forecaster.prefetch(*bad)
            with pytest.raises(type(direct.value), match=re.escape(str(direct.value))):
                forecaster(*bad)
        forecaster.prefetch(t.to_pydatetime(), t, 96)  # and the forecaster still works
        assert len(forecaster(t.to_pydatetime(), t, 96).price_usd_mwh) == 96
    finally:
        forecaster.close()


def _audit(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, at_utc, kind, payload, hash FROM audit_log ORDER BY seq").fetchall()


def test_prefetch_on_a_real_worker_gives_the_same_run_and_audit_trail(tmp_path) -> None:
    from hashflex.store import Store

    profile, actuals = _actuals("west_texas", "2020-02-10T10:00", 6)
    runs, trails = {}, {}
    for prefetch in (False, True):
        with Store(tmp_path / f"{prefetch}.db") as store, SolveRunner(time_limit_s=20.0) as runner:
            runs[prefetch] = simulate_policy(profile, actuals, "mpc", store=store, runner=runner,
                                             prefetch_forecast=prefetch)
        trails[prefetch] = _audit(tmp_path / f"{prefetch}.db")
    assert runs[True].forecast_prefetch_hits == len(actuals.index) - 1  # every tick but the first
    assert runs[False].forecast_prefetch_hits == 0
    for key in runs[False].counts:
        np.testing.assert_array_equal(runs[True].counts[key], runs[False].counts[key])
    assert list(runs[True].extra["schedule_status"]) == list(runs[False].extra["schedule_status"])
    assert len(trails[True]) == len(trails[False]) > 3 * len(actuals.index)  # schedule, setpoints, measurement
    assert trails[True] == trails[False]  # record for record, to the last hash


# ------------------------------------------------------------------ the same as the code before

# The CLI's mpc backtest in a subprocess on this tree; with "before", the code paths this change
# replaced: each forecast computed at its tick (no prefetch) and the schedule record built by
# pandas' sum and value_counts (test_backtest_fast_payload's reference, the code before d314198).
RUN = r"""
import json, sys
sys.path.insert(0, sys.argv[6])
if sys.argv[5] == "before":
    import hashflex.audit
    from hashflex.backtest.closed_loop import SnapshotForecaster
    from test_backtest_fast_payload import schedule_payload_reference
    hashflex.audit.schedule_payload = schedule_payload_reference
    SnapshotForecaster.prefetch = lambda self, *args: None
from hashflex.cli import main
out = sys.argv[1]
main(["backtest", "--profile", sys.argv[2], "--from", sys.argv[3], "--to", sys.argv[4], "--policy", "mpc",
      "--quiet", "--out", out])
print("RESULT " + json.dumps(json.load(open(out + "/summary.json"))["policies"]))
"""


def _backtest(code: str, out: Path, profile: str, start: str, end: str) -> dict:
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", RUN, str(out), profile, start, end, code, str(REPO / "tests")], check=False,
                          cwd=out, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])["mpc"]


@pytest.mark.parametrize("profile", ["west_texas", "panhandle_120mw"])
def test_two_days_of_mpc_are_the_code_befores_to_the_cent_and_record(tmp_path, profile) -> None:
    """~1-3 min per profile (two 2-day mpc backtests through the CLI, with the solver worker)."""
    want = _backtest("before", tmp_path / "before", profile, "2020-02-10", "2020-02-11")
    got = _backtest("now", tmp_path / "now", profile, "2020-02-10", "2020-02-11")
    assert got["solves"] == want["solves"] > 0
    assert got["fallback_schedules"] == want["fallback_schedules"] == 0  # no solve hit its deadline
    assert got["profit_usd"] == want["profit_usd"]
    new, old = _audit(tmp_path / "now" / "backtest.db"), _audit(tmp_path / "before" / "backtest.db")
    assert len(new) == len(old) > 500
    assert new == old  # every record, payload and hash
