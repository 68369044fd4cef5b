"""The DR book's values: the decision on a message (:class:`DRDecision`, with its ack), lifecycle transitions,
per-interval performance records and an event's compliance, and the source label of an event's limit.
Split from :mod:`hashflex.control.dr` along its seam; pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


from hashflex.messages import DRAckMessage




def source_label(event_id: str) -> str:
    """The source label of a DR event's import limit, e.g. ``DR:ev-42``.

    Parameters
    ----------
    event_id : str
        The event's id (``DREventMessage.event_id``).

    Returns
    -------
    str
        ``"DR:<event_id>"``, as shown in ``/status`` and the limits book.
    """
    return f"DR:{event_id}"


@dataclass(frozen=True)
class DRDecision:
    """The decision on one DR message (:meth:`DRBook.apply`).

    Parameters
    ----------
    event_id : str
        The event the message is about.
    modification_number : int
        The message's modification number.
    accepted : bool
        Whether the message changed the book.
    reason : str
        ``accepted: ...`` with what changed, or why it was rejected (the first failed rule of the
        module docstring).
    limit_kw : float, optional
        The event's import limit when accepted, kW (inf: no limit, e.g. a cancellation or level 0).
    """

    event_id: str
    modification_number: int
    accepted: bool
    reason: str
    limit_kw: float | None = None  # the event's import limit when accepted (inf: none)

    def to_ack(self, acked_at: datetime) -> DRAckMessage:
        """The acknowledgement published on ``out/dr/ack``.

        Parameters
        ----------
        acked_at : datetime
            When the decision is acknowledged, timezone-aware (after the book was committed).

        Returns
        -------
        DRAckMessage
            ``status`` ``accepted`` or ``rejected``, with this decision's reason.
        """
        return DRAckMessage(event_id=self.event_id, modification_number=self.modification_number,
                            status="accepted" if self.accepted else "rejected", reason=self.reason,
                            acked_at=acked_at)


@dataclass(frozen=True)
class DRTransition:
    """One status change of an event, reported by :meth:`DRBook.transitions`.

    Parameters
    ----------
    event_id : str
        The event.
    kind : str
        ``activated``, ``completed``, ``cancelled``, ``modified`` or ``deferred`` (active → pending
        after a modification moved its start).
    status : str
        The status to record now: ``pending``, ``active``, ``completed`` or ``cancelled``.
    at : datetime
        When the change was seen (the ``now`` of the call), timezone-aware.
    limit_kw : float
        The event's import limit, kW (inf: none).
    """

    event_id: str
    kind: str  # activated, completed, cancelled, modified, deferred (active -> pending after a modification)
    status: str  # the status to record now
    at: datetime
    limit_kw: float


@dataclass(frozen=True)
class DRRecord:
    """One interval's performance of an event (:meth:`DRBook.record`).

    Parameters
    ----------
    interval_start : datetime
        The interval's start, timezone-aware.
    baseline_kw : float or None
        The import the reduction is measured from, kW (None: no baseline known).
    limit_kw : float
        The event's import limit, kW (inf: none).
    measured_kw : float
        The site's measured import over the interval, kW.
    """

    interval_start: datetime
    baseline_kw: float | None
    limit_kw: float
    measured_kw: float


@dataclass(frozen=True)
class Compliance:
    """How well the site delivered one event, from its records (:meth:`DRBook.compliance`).

    Parameters
    ----------
    event_id : str
        The event.
    intervals : int
        Intervals recorded.
    compliant_intervals : int
        Intervals with measured import ≤ limit + tolerance.
    compliant_pct : float
        ``compliant_intervals / intervals`` × 100, % (NaN with no intervals).
    requested_reduction_kw : float
        Mean over intervals with a baseline and a finite limit of max(baseline − limit, 0), kW.
    delivered_reduction_kw : float
        Mean over the same intervals of baseline − measured, kW (negative: the site imported more).
    delivered_pct : float
        Delivered / requested × 100, % (NaN if nothing was requested).
    worst_excess_kw : float
        max(measured − limit) over the intervals, kW; 0 if always under.
    """

    event_id: str
    intervals: int
    compliant_intervals: int
    compliant_pct: float  # nan with no intervals
    requested_reduction_kw: float  # mean over intervals with a baseline: baseline − limit (>= 0)
    delivered_reduction_kw: float  # mean over the same intervals: baseline − measured
    delivered_pct: float  # delivered / requested × 100 (nan if nothing requested)
    worst_excess_kw: float  # max(measured − limit), 0 if always under
