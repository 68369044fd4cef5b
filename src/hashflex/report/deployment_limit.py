"""The import limit an AS deployment sets over time, as a pure function of the audit trail's awards
(issue 15): the report must measure a deployment against the limit the loop, the guard and the
backtest enforced, not the limit in its acknowledgement.

The rule is the limits book's own (``control.ancillary.deployment_limit_kw``, which
``LimitsBook.deployment_limit_kw`` calls); this module reads the awards the book held from the trail::

    limit(t) = limit_kw + max(0, A(t) − A(t₀))

``limit_kw`` = max(the load drawn at the instruction − the MW deployed, 0) (the ack's
``import_limit_kw`` on a trail written before the stacking rule below; since it, the ack's limit is
the book's enforced one, with the deployments then in force subtracted);
A the reserve awarded over all products in force at the moment t (or overlapping the interval
[t, end)); t₀ the instruction (``issued_at``). A Load Resource awarded more reserve while deployed
must keep that load running and shed-able (ERCOT Nodal Protocols §3.18, §8.1.1.2).

**Stacked deployments** (issue 15, H8): the limit the book enforces for a deployment is not its own
limit alone but ``max(stacked baseline − its MW + rise − Σ other deployments' MW in force, 0)``
(:func:`hashflex.control.ancillary.stacked_limit_kw`), its stacked baseline being the load drawn at
its arrival plus ``held_at_instruction_kw``, the MW of the deployments in force then (kept in the
``as_performance`` record): so a recall of one deployment raises the other's limit by exactly its
MW. :func:`book_limit_kw` computes it with the book's own method
(``AncillaryBookMixin.deployment_limit_kw``, which ``LimitsBook`` uses) on the awards and
deployments the book held, rebuilt from the trail (:class:`TrailBook`): one rule, not a copy. A
deployment recorded before this rule (no ``held_at_instruction_kw``) keeps its own limit, as the
book keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.control.ancillary import (  # re-exported: the limits book's one rule
    ASDeployment,
    awarded_kw,
    deployment_limit_kw,
)
from hashflex.control.limits_ancillary import AncillaryBookMixin

__all__ = ["TrailBook", "awarded_kw", "awards_known_before", "book_limit_kw", "deployment_limit_kw"]


class TrailBook(AncillaryBookMixin):
    """The AS part of the limits book as the audit trail shows it held: the awards and deployments
    known at one moment, on which the book's own methods run (``deployment_limit_kw``: the limit it
    enforces, stacked deployments and award rise included).

    Parameters
    ----------
    awards : sequence of (start, end, reserve_kw)
        The awards the book held (all products; a withdrawn award has reserve_kw 0), timezone-aware
        datetimes and kW (:func:`awards_known_before`).
    deployments : iterable of ASDeployment
        The deployments the book held, each in the revision it held (ids unique).
    """

    def __init__(self, awards: Sequence[tuple[datetime, datetime, float]], deployments: Iterable[ASDeployment],
                 full_load_kw: float | None = None) -> None:
        self.full_load_kw = full_load_kw  # the profile's, from the trail's config: the book's rise cap
        self.as_awards = {str(i): {"start": start.isoformat(), "end": end.isoformat(), "reserve_kw": float(kw)}
                          for i, (start, end, kw) in enumerate(awards)}
        self.as_deployments = {d.deployment_id: d for d in deployments}


def book_limit_kw(deployment: ASDeployment, others: Iterable[ASDeployment],
                  awards: Sequence[tuple[datetime, datetime, float]], start: datetime,
                  end: datetime | None = None, full_load_kw: float | None = None) -> float:
    """The import limit the limits book enforced for ``deployment`` at ``start`` (or over
    ``[start, end)``), given the other deployments and the awards it held, kW.

    ``LimitsBook.deployment_limit_kw`` itself, run on a :class:`TrailBook`: its own limit
    (``limit_kw`` + the rise of the reserve awarded over A₀, :func:`deployment_limit_kw`) less the MW
    of every other deployment in force then (``ASDeployment.in_force``: a recalled one binds an
    interval only if it lasted to the interval's end), from its stacked baseline
    (:func:`hashflex.control.ancillary.stacked_limit_kw`); a deployment with
    ``held_at_instruction_kw`` None (recorded before the stacking rule) keeps its own limit.

    Parameters
    ----------
    deployment : ASDeployment
        The deployment, in the revision that binds (``limit_kw`` = max(baseline_kw − deployed_kw, 0)
        under the stacking rule; the ack's limit on older trails).
    others : iterable of ASDeployment
        The other deployments the book held (in force or not: the book's rule decides), each in the
        revision it held; one with ``deployment``'s id is ignored.
    awards : sequence of (start, end, reserve_kw)
        The awards the book held (:func:`awards_known_before`), kW.
    start : datetime
        The moment, or the interval's start; timezone-aware.
    end : datetime, optional
        The interval's end (None: the moment ``start``).
    full_load_kw : float, optional
        The fleet's full load in the profile in force (``SiteProfile.full_load_kw``), kW: the book
        caps the award rise with it; None: no cap (a trail without a config record).

    Returns
    -------
    float
        The limit, kW.
    """
    book = TrailBook(awards, [d for d in others if d.deployment_id != deployment.deployment_id] + [deployment],
                     full_load_kw)
    return float(book.deployment_limit_kw(deployment, start, end))


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
