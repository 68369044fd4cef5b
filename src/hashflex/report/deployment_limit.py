"""The import limit an AS deployment sets over time, as the limits book enforced it, rebuilt from the
audit trail (issue 15): the report must measure a deployment against the limit the loop, the guard and
the backtest enforced, by the book's own method, not a copy of it.

The rule (``LimitsBook.deployment_limit_kw``, :mod:`hashflex.control.ancillary`): a deployment's limit
is measured from the pre-deployment load only, constant from the instruction until its recall::

    limit = max(stacked baseline − its MW − Σ other deployments' MW in force, 0)

its stacked baseline being the load drawn at its arrival plus ``held_at_instruction_kw``, the MW of
the deployments in force then (kept in the ``as_performance`` record), so a recall of one deployment
raises the other's limit by exactly its MW (issue 15, H8;
:func:`hashflex.control.ancillary.stacked_limit_kw`). No award moves it: ERCOT measures a Load
Resource's response from its consumption before the instruction (Nodal Protocols §8.1.1.4.x), and
reserve awarded later that the site cannot hold under the limit is a hold shortfall. The former award
rise (``limit + max(0, A(t) − A₀)``) is gone, also for trails written while the book applied it: the
report assesses them by the rule ERCOT measures (the 2024-05-08 backtest trail showed shortfall 0
where 0.4 of 2.7 MW was delivered). :func:`book_limit_kw` computes it with the book's own method on
the deployments the book held, rebuilt from the trail (:class:`TrailBook`). A deployment recorded
before the stacking rule (no ``held_at_instruction_kw``) keeps its own limit, as the book keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from hashflex.control.ancillary import ASDeployment
from hashflex.control.limits_ancillary import AncillaryBookMixin

__all__ = ["TrailBook", "book_limit_kw"]


class TrailBook(AncillaryBookMixin):
    """The AS part of the limits book as the audit trail shows it held: the deployments known at one
    moment, on which the book's own method runs (``deployment_limit_kw``: the limit it enforces,
    stacked deployments included).

    Parameters
    ----------
    deployments : iterable of ASDeployment
        The deployments the book held, each in the revision it held (ids unique).
    """

    def __init__(self, deployments: Iterable[ASDeployment]) -> None:
        self.as_awards: dict[str, dict[str, Any]] = {}  # no award moves a deployment's limit
        self.as_deployments = {d.deployment_id: d for d in deployments}


def book_limit_kw(deployment: ASDeployment, others: Iterable[ASDeployment], start: datetime,
                  end: datetime | None = None) -> float:
    """The import limit the limits book enforced for ``deployment`` at ``start`` (or over
    ``[start, end)``), given the other deployments it held, kW.

    ``LimitsBook.deployment_limit_kw`` itself, run on a :class:`TrailBook`: its stacked baseline less
    its MW less the MW of every other deployment in force then (``ASDeployment.in_force``: a recalled
    one binds an interval only if it lasted to the interval's end;
    :func:`hashflex.control.ancillary.stacked_limit_kw`); a deployment with ``held_at_instruction_kw``
    None (recorded before the stacking rule) keeps its own limit, ``limit_kw``.

    Parameters
    ----------
    deployment : ASDeployment
        The deployment, in the revision that binds (``limit_kw`` = max(baseline_kw − deployed_kw, 0)
        under the stacking rule; the ack's limit on older trails).
    others : iterable of ASDeployment
        The other deployments the book held (in force or not: the book's rule decides), each in the
        revision it held; one with ``deployment``'s id is ignored.
    start : datetime
        The moment, or the interval's start; timezone-aware.
    end : datetime, optional
        The interval's end (None: the moment ``start``).

    Returns
    -------
    float
        The limit, kW.
    """
    book = TrailBook([d for d in others if d.deployment_id != deployment.deployment_id] + [deployment])
    return float(book.deployment_limit_kw(deployment, start, end))
