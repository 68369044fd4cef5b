"""Issue 15, H8 (newcomer finding 6): a backtest's outputs say what they mean.

- ``intervals_mpc+as.csv``: a SYNTHETIC deployment in force shows ``synthetic_deployment`` True from
  its instruction; ``as_deployment_binds`` (and a finite ``as_deployment_limit_kw``) from its
  deadline on (control.as_shortfall's rule: a deployment binds after its deadline).
- A report on a finished backtest's trail knows it is complete (meta ``backtest_run_end`` at the
  trail's head): nothing "not final ... records may still be queued".
- The backtest's report says the AS qualification is ASSUMED, as summary.json does.
- Interval ends from float hours are not printed as 15:59:59.999999998.

One real run (``hashflex backtest --ancillary example --policy mpc+as --from 2024-05-08 --to
2024-05-08``: the bundled May 2024 ERCOT prices, real HiGHS, seed 0: a SYNTHETIC Non-Spin deployment
at 00:15 UTC on 9 May, deadline 30 min later).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from as_support import NOW, flat_prices, hydro_profile_yaml, make_loop

from hashflex.audit import AuditLog
from hashflex.backtest.cli import main as backtest_main
from hashflex.control.records import AuditRecorder
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.report.render import to_html
from hashflex.store import Store


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bt") / "out"
    code = backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
                          "--from", "2024-05-08", "--to", "2024-05-08", "--replan-minutes", "60", "--quiet",
                          "--out", str(out)])
    assert code == 0
    return out


def test_a_deployment_in_force_before_its_deadline_is_labelled_so(run: Path) -> None:
    frame = pd.read_csv(run / "intervals_mpc+as.csv", index_col=0, parse_dates=True)
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
    deployed = frame[[c for c in frame.columns if c.startswith("as_deployed_kw_")]].sum(axis=1).to_numpy() > 0
    assert deployed.any()
    # synthetic_deployment is "in force", every interval a deployment is (it was False before the deadline)
    np.testing.assert_array_equal(frame["synthetic_deployment"].to_numpy(bool), deployed)
    binds = frame["as_deployment_binds"].to_numpy(bool)
    limit = frame["as_deployment_limit_kw"].to_numpy(float)
    assert np.all(np.isfinite(limit) == binds)  # a limit is shown exactly where one binds
    assert not np.any(binds & ~deployed)
    for at in ("2024-05-09T00:15Z", "2024-05-09T00:30Z"):  # the newcomer's rows: before the 00:45 deadline
        row = frame.loc[pd.Timestamp(at)]
        assert row["as_deployed_kw_NSPIN"] > 0 and bool(row["synthetic_deployment"]) is True
        assert bool(row["as_deployment_binds"]) is False and row["as_deployment_short_kw"] == 0
    due = frame.loc[pd.Timestamp("2024-05-09T00:45Z")]
    assert bool(due["as_deployment_binds"]) is True and np.isfinite(due["as_deployment_limit_kw"])
    summary = json.loads((run / "summary.json").read_text())
    figures = summary["policies"]["mpc+as"]
    assert figures["as_synthetic_deployment_hours"] == pytest.approx(deployed.sum() * 0.25)


def test_the_report_of_a_finished_backtest_is_final_and_says_the_qualification_is_assumed(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert any(n.startswith("AS qualification: ASSUMED") for n in summary["notes"])
    report = build_report(run / "backtest.db")
    section = report["ancillary"]
    assert section["trail_complete"] is True
    assert section["final_through"] == "2024-05-09T05:00:00+00:00"  # the run's last interval end
    assert section["provisional_interval_count"] == 0
    assert not any("not final" in n for n in section["notes"])
    assert report["economics"]["reserve_provisional_payment_usd"] == 0
    assert section["qualification"].startswith("ASSUMED")
    assert any(n.startswith("AS qualification: ASSUMED") for n in report["report"]["notes"])
    assert "AS qualification: ASSUMED" in to_html(report)


def test_a_record_after_the_run_ended_is_not_taken_as_complete(run: Path, tmp_path: Path) -> None:
    """The run-end mark names the trail's head: a record appended later (another writer) leaves the
    trail judged as a daemon's store is (its last measurement not final)."""
    db = tmp_path / "copy.db"
    shutil.copy(run / "backtest.db", db)
    with AuditLog(db) as log:
        log.append("restart", {"reason": "appended after the run"}, pd.Timestamp("2024-05-09T05:01Z").to_pydatetime())
    section = build_report(db)["ancillary"]
    assert section["trail_complete"] is False
    assert section["final_through"] == "2024-05-09T05:00:00+00:00"  # the appended record follows the last one
    head_only = tmp_path / "head.db"
    shutil.copy(run / "backtest.db", head_only)
    with AuditLog(head_only) as log:
        log.conn.execute("DELETE FROM meta WHERE key = 'backtest_run_end'")
        log.conn.commit()
    plain = build_report(head_only)["ancillary"]
    assert plain["trail_complete"] is False and plain["final_through"] == "2024-05-09T04:45:00+00:00"


def test_an_interval_end_from_float_hours_is_shown_to_the_microsecond(tmp_path: Path) -> None:
    """A partial interval of 1/3 h (a daemon started at 16:40) ended at 16:59:59.999999998 in the
    report's intervals and final_through."""
    db = tmp_path / "partial.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(parse_profile(hydro_profile_yaml("AS H8"), source="test"), flat_prices(), store, recorder)
        loop.record_measurement(NOW - timedelta(minutes=20), 1.0 / 3.0, load_kw=100.0, renewable_kw=0.0,
                                hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        loop.record_measurement(NOW, 0.25, load_kw=100.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                                price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    report = build_report(db)
    assert report["intervals"][0]["interval_end"] == "2024-06-03T17:00:00+00:00"
    assert report["ancillary"]["final_through"] == "2024-06-03T17:00:00+00:00"
