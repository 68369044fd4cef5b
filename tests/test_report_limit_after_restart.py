"""The report keeps the import limit the loop recorded with a measurement when no plan covers the
interval (issue 15, second newcomer review, finding 3): after a restart the partial intervals have a
``measurement`` record (with ``import_limit_kw`` / ``import_limit_source`` from the book) but no
``schedule`` record whose first row starts there; the report read the limit only from plans and
called the AS cut "unattributed (no plan recorded for the interval)".

The two measurement payloads are those of the newcomer's trail (quiet_hollow, RRS dep-r2 in force).
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from hashflex.audit.payloads import measurement_payload
from hashflex.report import interval_rows
from hashflex.report.curtailment import curtailment_figures
from hashflex.report.inputs import inputs_from_records

START = pd.Timestamp("2026-12-02T16:44:12.823566Z")
RESTART = pd.Timestamp("2026-12-02T16:48:18.512095Z")


def _measurement(seq: int, start: pd.Timestamp, hours: float, load_kw: float, limit_kw: float | None,
                 source: str | None) -> SimpleNamespace:
    payload = measurement_payload(start.to_pydatetime(), hours, load_kw, 0.0, load_kw, 1000.0, {}, 370.0,
                                  30.0, 1.0, 0.5, full_load_kw=1191.2, intensity_source="test")
    if limit_kw is not None:
        payload = {**payload, "import_limit_kw": limit_kw, "import_limit_source": source}
    return SimpleNamespace(seq=seq, at_utc=(start + pd.Timedelta(hours=hours)).isoformat(), kind="measurement",
                           payload=payload)


def _inputs(records: list[SimpleNamespace]):
    return inputs_from_records(records, START.floor("h"), START.floor("h") + pd.Timedelta(hours=1))


def test_partial_intervals_keep_the_recorded_limit_and_its_source() -> None:
    records = [_measurement(108, START, 0.013104565, 353.1, 447.97, "AS:RRS:dep-r2"),
               _measurement(197, RESTART, 0.1948577513888889, 0.0, 397.97, "AS:RRS:dep-r2")]
    inputs = _inputs(records)
    rows = interval_rows(inputs.measurements, inputs, simulated=False)
    assert [r["import_limit_kw"] for r in rows] == [447.97, 397.97]
    assert [r["import_limit_source"] for r in rows] == ["AS:RRS:dep-r2", "AS:RRS:dep-r2"]
    assert [r["curtailment_cause"] for r in rows] == ["AS:RRS:dep-r2", "AS:RRS:dep-r2"]
    figures = curtailment_figures(inputs.measurements, inputs.schedules, inputs.guard_actions, "America/Chicago")
    assert set(figures["by_cause"]) == {"AS:RRS:dep-r2"}


def test_a_limit_above_full_load_does_not_explain_a_curtailment() -> None:
    """The interconnection at 2,000 kW did not hold a 1,191 kW site down: still unattributed; a
    manager limit below full load is named as the plan's reason would name it."""
    records = [_measurement(1, START, 0.25, 600.0, 2000.0, "interconnection"),
               _measurement(2, START + pd.Timedelta(minutes=15), 0.25, 600.0, 700.0, "limits:ops")]
    inputs = _inputs(records)
    rows = interval_rows(inputs.measurements, inputs, simulated=False)
    assert [r["import_limit_kw"] for r in rows] == [2000.0, 700.0]
    assert [r["curtailment_cause"] for r in rows] == ["unattributed (no plan recorded for the interval)",
                                                     "manager limit (ops)"]


def test_older_trails_without_a_recorded_limit_stay_unattributed() -> None:
    inputs = _inputs([_measurement(1, START, 0.25, 600.0, None, None)])
    rows = interval_rows(inputs.measurements, inputs, simulated=False)
    assert rows[0]["import_limit_kw"] is None and rows[0]["import_limit_source"] is None
    assert rows[0]["curtailment_cause"] == "unattributed (no plan recorded for the interval)"
