"""The import limit an AS deployment sets over time, as a pure function of the audit trail's awards
(issue 15): the report must measure a deployment against the limit the loop, the guard and the
backtest enforced, not the limit in its acknowledgement.

The rule (``control.limits_binding.BindingMixin.deployment_limit_kw``, copied here rather than
imported because that method reads a live ``LimitsBook``; ``tests/test_report_as_limit.py`` checks
both give the same number on random inputs)::

    limit(t) = limit_kw + max(0, A(t) − A(t₀))

``limit_kw`` = the baseline at the instruction − the MW deployed (the ack's ``import_limit_kw``);
A the reserve awarded over all products in force at the moment t (or overlapping the interval
[t, end)); t₀ the instruction (``issued_at``). A Load Resource awarded more reserve while deployed
must keep that load running and shed-able (ERCOT Nodal Protocols §3.18, §8.1.1.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

__all__ = ["awarded_kw", "awards_known_before", "deployment_limit_kw"]


def awarded_kw(awards: Iterable[tuple[datetime, datetime, float]], start: datetime,
               end: datetime | None = None) -> float:
    """Reserve awarded over all products in force at ``start`` (``end`` None) or overlapping
    ``[start, end)``, kW.

    Parameters
    ----------
    awards : iterable of (start, end, reserve_kw)
        Each award's window (timezone-aware, half-open) and its reserve, kW.
    start : datetime
        The moment, or the interval's start; timezone-aware.
    end : datetime, optional
        The interval's end (None: the moment ``start``).

    Returns
    -------
    float
        Σ reserve_kw of the awards in force, kW.
    """
    total = 0.0
    for a_start, a_end, reserve_kw in awards:
        if (a_start <= start < a_end) if end is None else (a_start < end and a_end > start):
            total += float(reserve_kw)
    return total


def deployment_limit_kw(limit_kw: float, issued_at: datetime, awards: Sequence[tuple[datetime, datetime, float]],
                        start: datetime, end: datetime | None = None) -> float:
    """The import limit a deployment sets at ``start`` (or over ``[start, end)``), kW (module docstring).

    Parameters
    ----------
    limit_kw : float
        The limit at the instruction (baseline − deployed), kW.
    issued_at : datetime
        The instruction time t₀, timezone-aware.
    awards : sequence of (start, end, reserve_kw)
        The awards known (all products; a withdrawn award has reserve_kw 0).
    start, end : datetime
        The moment (``end`` None) or the interval, timezone-aware.

    Returns
    -------
    float
        ``limit_kw + max(0, A(start[, end]) − A(issued_at))``, kW.
    """
    rise = awarded_kw(awards, start, end) - awarded_kw(awards, issued_at)
    return float(limit_kw) + max(rise, 0.0)


def awards_known_before(records: Sequence[Mapping[str, Any]], before: pd.Timestamp) -> list[tuple[datetime, datetime, float]]:
    """The awards the loop's book held just before ``before``: the latest accepted revision of each
    ``award_id`` among the ``as_award`` records written before it.

    Parameters
    ----------
    records : sequence of Mapping
        Decoded ``as_award`` records (``seq``, ``at``, ``message``, ``ack``).
    before : pandas.Timestamp
        UTC; records with ``at`` at or after it are not yet known.

    Returns
    -------
    list of (start, end, reserve_kw)
        The awards' windows (UTC datetimes) and reserve, kW.
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["seq"]):
        message = record.get("message") or {}
        if ((record.get("ack") or {}).get("status") == "accepted" and message.get("award_id")
                and record["at"] < before):
            latest[str(message["award_id"])] = message
    out = []
    for message in latest.values():
        if message.get("start") and message.get("end"):
            out.append((pd.Timestamp(message["start"]).tz_convert("UTC").to_pydatetime(),
                        pd.Timestamp(message["end"]).tz_convert("UTC").to_pydatetime(),
                        float(message.get("reserve_kw") or 0.0)))
    return out
