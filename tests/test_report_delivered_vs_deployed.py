"""A deployment's delivery against what it asked (issue 15, second newcomer finding 6): dep-r1 asked
300 kW of a 400 kW RRS award and delivered 301.8 kW, and the report's only percentage,
``delivered_vs_awarded_pct`` 75.5, read as under-performance. It is of the whole award in force (its
label now says so); ``delivered_vs_deployed_pct`` = 100 · delivered / deployed is the deployment's own.

Trails written by the real control loop into a real store (``test_report_ancillary._trail``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_report_ancillary import _report, _trail

from hashflex.report.ancillary import DEPLOYMENT_COLUMNS
from hashflex.report.labels import LABELS


def test_a_partial_deployment_delivered_in_full_reads_100_pct_of_what_it_asked(tmp_path: Path) -> None:
    """ECRS 3,000 kW of a 4,950 kW award: one block keeps running, delivered 5,050 − 1,090 = 3,960 kW
    (block granularity: more than asked): 132.0 % of the deployment, 80.0 % of the award."""
    db = tmp_path / "ecrs.db"
    _trail(db, "ECRS", 3000.0, [1882.0, 1090.0, 1090.0, 5050.0], recall_after=timedelta(minutes=37))
    (row,) = _report(db)["ancillary"]["deployments"]
    assert row["delivered_mw"] == 3.96
    assert row["delivered_vs_deployed_pct"] == 132.0
    assert row["delivered_vs_awarded_pct"] == 80.0


def test_the_columns_and_labels_say_what_each_percentage_is_of(tmp_path: Path) -> None:
    """RRS 5,000 kW: delivered 4,950 kW, 99.0 % of the deployment; the table shows both, labelled."""
    db = tmp_path / "rrs.db"
    _trail(db, "RRS", 5000.0, [1090.0, 100.0, 100.0, 100.0])
    (row,) = _report(db)["ancillary"]["deployments"]
    assert row["delivered_vs_deployed_pct"] == 99.0
    assert "delivered_vs_deployed_pct" in DEPLOYMENT_COLUMNS
    assert "deployed" in LABELS["delivered_vs_deployed_pct"]
    assert "whole award" in LABELS["delivered_vs_awarded_pct"]
