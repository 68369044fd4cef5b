"""The import limit an AS deployment sets over time, as a pure function of the audit trail's awards
(issue 15): the report must measure a deployment against the limit the loop, the guard and the
backtest enforced, not the limit in its acknowledgement.

The rule is the limits book's own (``control.ancillary.deployment_limit_kw``, which
``LimitsBook.deployment_limit_kw`` calls); this module reads the awards the book held from the trail::

    limit(t) = limit_kw + max(0, A(t) − A(t₀))

``limit_kw`` = the baseline at the instruction − the MW deployed (the ack's ``import_limit_kw``);
A the reserve awarded over all products in force at the moment t (or overlapping the interval
[t, end)); t₀ the instruction (``issued_at``). A Load Resource awarded more reserve while deployed
must keep that load running and shed-able (ERCOT Nodal Protocols §3.18, §8.1.1.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.control.ancillary import (  # re-exported: the limits book's one rule
    awarded_kw,
    deployment_limit_kw,
)

__all__ = ["awarded_kw", "awards_known_before", "deployment_limit_kw"]


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
