"""Machine-readable exports of a report (times in UTC, plus the site-local time for people).

- :func:`intervals_csv`: one row per measured interval of the period (``report["intervals"]``):
  ``interval_start_utc``, ``interval_end_utc``, ``interval_start_local``, then every column of the
  rows (see :func:`hashflex.report.interval_rows`); ``simulated`` is ``true`` on simulated trails.
- :func:`settlement_csv`: one DR event's settlement rows
  (:data:`hashflex.report.dr_performance.SETTLEMENT_COLUMNS`).
- :func:`write_exports`: both into a directory: ``intervals.csv`` and ``dr_<event_id>.csv`` per
  event with intervals; returns the paths written.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from hashflex.report.dr_performance import SETTLEMENT_COLUMNS, settlement_rows
from hashflex.report.provenance import local_label

__all__ = ["intervals_csv", "settlement_csv", "write_exports"]


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _write(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def intervals_csv(report: dict[str, Any]) -> str:
    """The per-interval time series of the report's period as CSV text (header even when empty).

    Parameters
    ----------
    report : dict
        A report from :func:`hashflex.report.build_report`.

    Returns
    -------
    str
    """
    tz = report["report"].get("timezone") or "UTC"
    rows = report.get("intervals") or []
    extra: list[str] = []
    for row in rows:
        extra += [k for k in row if k not in extra and k not in ("interval_start", "interval_end")]
    columns = ["interval_start_utc", "interval_end_utc", "interval_start_local"] + extra
    out = [{"interval_start_utc": r["interval_start"], "interval_end_utc": r["interval_end"],
            "interval_start_local": local_label(r["interval_start"], tz), **r} for r in rows]
    return _write(out, columns)


def settlement_csv(report: dict[str, Any], event: dict[str, Any]) -> str:
    """One event's settlement rows as CSV text.

    Parameters
    ----------
    report : dict
        The report (its time zone and simulated flag).
    event : dict
        One of ``report["demand_response"]["events"]``.

    Returns
    -------
    str
    """
    tz = report["report"].get("timezone") or "UTC"
    return _write(settlement_rows(event, tz, simulated=bool(report["report"].get("simulated"))), SETTLEMENT_COLUMNS)


def write_exports(report: dict[str, Any], directory: str | Path) -> list[Path]:
    """``intervals.csv`` and ``dr_<event_id>.csv`` (events with intervals) into ``directory``.

    Parameters
    ----------
    report : dict
        The report.
    directory : str or Path
        Created if missing.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "intervals.csv"]
    written[0].write_text(intervals_csv(report), encoding="utf-8")
    for event in report["demand_response"]["events"]:
        if not event.get("per_interval"):
            continue
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", event["event_id"])[:100]
        path = out / f"dr_{safe}.csv"
        path.write_text(settlement_csv(report, event), encoding="utf-8")
        written.append(path)
    return written
