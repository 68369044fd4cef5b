"""Ancillary service deployments in the evidence report (issue 15): each deployment the QSE sent, what
the site was awarded, what it delivered and how fast, from the audit trail only.

What the trail holds (:mod:`hashflex.audit`, written by the control loop):

- ``as_award``: every award message and its acknowledgement (``message``, ``ack``);
- ``as_deploy``: every deployment message (and recall) and its acknowledgement; an accepted
  deployment's ack carries the import limit it set and its deadline;
- ``as_performance``: what the fast path commanded when the deployment arrived: the modelled
  import before (``baseline_kw``), the import limit (``baseline_kw − deployed``), the import the
  commanded setpoints leave (``commanded_import_kw``), delivered = baseline − commanded, shortfall =
  what the commanded import is still over the limit (idle draw and auxiliaries cannot be shed),
  and the time from the instruction to the command (``commanded_after_s``);
- ``measurement``: one record per control interval with the mean grid import.

Figures, per deployment first instructed in the report period, one row per accepted revision (an
amended deployment, ``in/as/deploy`` with the same id and a higher ``revision``, has a row for each
instruction as given: issue 15, a row mixed revision 0's MW with the latest's limit and delivery).
Every figure of a row comes from that revision's own message, ack and ``as_performance`` record;
``revision``, ``revisions`` (how many the deployment had), ``received_at`` (when the site received
the message: its ack's ``acked_at``), ``in_force_from`` (when the site held it: the revision's receipt
at the site — a late deployment is held, and assessed, from its arrival, not from its instruction;
response times still count from the instruction, below), ``in_force_until`` (the next revision's
arrival, else the deployment's end: its recall — the loop's ``ended_at``, else the first accepted
recall at or after it bound; a recall received earlier and dated before the instruction is older and
does not end it — else its release by the backstop ``ancillary.max_hold_h`` from the first
instruction, the book's ``release_at``; a trail written before deployments held until recall: the
product's sustain duration) and ``in_force_h`` (hours between the two). ``status``: ``accepted``,
``rejected``, or ``cancelled`` (recalled before it bound: the loop's ``cancelled``, or an end at or
before its receipt): a cancelled row has no in-force window, no delivery, shortfall, response or
metered figures, binds no interval and is no one's ``concurrent_with``. ``final``: every interval
the revision binds is final (:func:`final_through`). A deployment never accepted has one row
(``revision`` its message's, ``revisions`` 0, no delivery figures). Units in the key names:

- ``deployed_mw`` = the revision's ``deployed_kw`` / 1000 (the reduction asked);
- ``awarded_mw`` = Σ ``reserve_kw`` / 1000 of the accepted awards of the same product in force at
  the instruction or at the arrival, whichever is larger, as known then (the latest accepted
  revision of each award recorded before the deployment,
  :func:`~hashflex.control.ancillary.awarded_at_instruction_kw`, per product; an award that
  started between the instruction and the arrival is carried by the load drawn at the arrival);
  ``awarded_latest_mw`` the same awards as last revised in the trail (a later cut or withdrawal
  shows here, not in ``awarded_mw``); ``book_awarded_at_instruction_mw`` the reserve the book
  recorded as awarded at the instruction (all products, ``awarded_at_instruction_kw`` of the
  performance record; null on older trails): a record only, no award moves a deployment's limit;
- ``delivered_mw`` = (``baseline_kw`` − ``commanded_import_kw``) / 1000; ``commanded_limit_kw`` the
  limit the book held at the command (the book's own rule, :func:`~hashflex.report.deployment_limit.book_limit_kw`,
  at the revision's receipt on the awards and deployments it held then: the ack's ``import_limit_kw``);
  ``shortfall_mw`` = the one
  rule of :mod:`hashflex.control.as_shortfall` on the commanded import, min(max(commanded −
  ``commanded_limit_kw``, 0), deployed) / 1000 — the rule and the limit its intervals use, so a row
  and its ``shortfall_intervals`` agree; ``delivered_vs_deployed_pct`` = 100 · delivered / deployed (the deployment's own);
  ``delivered_vs_awarded_pct`` = 100 · delivered / awarded (of the whole award in force: a deployment of part
  of the award reads below 100 % when delivered in full); ``response_s`` = ``commanded_after_s``; ``within_deadline`` whether
  the cut was commanded by the deadline (ERCOT Nodal Protocols §6.5.7.6.2: RRS and ECRS within
  10 minutes, Non-Spin within 30; ``profile.AS_PRODUCT_RULES``);
- metered, from ``measurement`` records, by the one rule of :mod:`hashflex.control.as_shortfall`
  (the backtest's too). A deployment binds the intervals starting before its end; in each, the
  revision that binds is the latest received by the interval's start whose deadline has passed (one
  asking more MW gets the product's deadline from the amendment, and the one before binds until
  then; before the first deadline nothing binds). Each revision's limit over the interval is the
  limits book's (:func:`~hashflex.report.deployment_limit.book_limit_kw`: ``LimitsBook.deployment_limit_kw``
  run on the revisions that bind the interval): measured from the pre-deployment load only, its
  stacked baseline (the load drawn at its arrival + ``held_at_instruction_kw``, the MW of the
  deployments in force then) less its MW, less the MW of every other deployment that binds the
  interval and is in force over it; reserve awarded after the instruction does not raise it (issue
  15: the former award rise showed shortfall 0 where load had come back; a trail written under it is
  assessed by this rule). So after a recall of one of two
  stacked deployments the other's limit rises by exactly the recalled MW, as the book's did (issue
  15, H8: the report kept the later one's acked limit and showed a shortfall the book no longer
  enforced). A deployment not yet due (its deadline not passed) lowers no other's assessed limit,
  though the book enforces it at once. A trail written before the stacking rule (no
  ``held_at_instruction_kw``) keeps each deployment's own limit, the ack's, as the book keeps it. Per
  interval (``shortfall_intervals``): the lowest limit of the deployments that bind
  (``binding_limit_kw``), the shortfall max(import − that limit, 0) capped at their MW together
  (``deployed_kw``), shared pro rata to each one's MW. A row's assessed intervals are those its
  revision binds: ``metered_import_kw`` = their h-weighted mean import, ``metered_limit_kw`` their
  h-weighted mean limit (its own), ``metered_delivered_mw`` = (baseline − metered import) / 1000
  (negative when the site drew more than at the instruction), ``metered_shortfall_mw`` = the
  h-weighted mean of its share / 1000 (alone: min(max(import − limit, 0), deployed); the backtest's
  ``as_deployment_short_kw`` over the same intervals), ``concurrent_with`` the other deployments
  in force at any moment of the revision's in-force window (measured or not) or binding any of its
  intervals; ``metered_under_limit_by`` = the end of the first interval of the
  revision's span whose mean import is at or under its limit, and ``metered_response_s`` the time
  from the revision's instruction to it (an upper bound: the trail holds one mean per interval).
  Both come from the deployment's own records and every measurement of the trail, never from the
  report period (the same in any window that shows the row; a store still being written can add
  intervals: ``final``). Null when no measurement covers the revision;
- ``measured_response_s`` / ``measured_within_deadline``: from the site meter's (or summed telemetry's)
  individual readings, recorded by the loop in a later ``as_performance`` record: the time from the
  instruction to the first reading at or under the limit, and whether that was by the deadline (null
  until such a reading arrived).
- ``arrived_late`` / ``arrival_delay_s``: the deployment reached the site after its deadline / seconds
  from the instruction to its arrival (``control.as_intake.deployment_flags``); every response time
  above counts from the instruction, as ERCOT counts it, so a late one is never within its deadline;
- ``above_award_mw``: MW of the product deployed at the instruction beyond ``awarded_mw`` (the award in
  force at the instruction or at the arrival, whichever is larger: the ack's one definition, H8;
  obeyed in full); ``award_obligation_mw`` the deployment's MW less that, ``award_shortfall_mw`` what
  the commanded import is over baseline − that obligation (null on a trail written before these flags).

Money (:func:`reserve_money`, in the ``economics`` section). Payment and clawback are weighted by
the same time per award revision (issue 15: an award withdrawn at 17:05 was paid for 17:00–17:05
while the loop, measuring after the withdrawal, saw no award and wrote no hold-short record: net
paid for 0 kW held; an award starting at 17:05 was clawed back for the whole quarter and paid for
ten minutes). ``reserve_payment_usd`` = Σ over every
accepted revision of every award of ``reserve_kw`` / 1000 × its ``price_usd_mw_h`` × the hours of its
window inside the report period and before the next accepted revision of the same ``award_id`` was
recorded (the loop held each revision until the next replaced it; a withdrawal, ``reserve_kw`` 0,
ends the payment but not what was in force before it: issue 15, a live award withdrawn at 06:00 was
paid $0 for 05:00–06:00 while its hold shortfall then was charged). ERCOT pays a DAM AS award at its
MCPC per MW per hour, NP4-181-ER; ``reserve_clawback_usd``, per interval starting in the period
(with a ``reserve_hold_short`` record or a measurement) and product: the loop's record (the latest
per interval and product) through :func:`hashflex.control.ancillary.reserve_clawback_usd`
(``short_kw`` / 1000 × the awards' ``price_usd_mw_h`` × ``interval_h``; none: the loop found it
held) — the backtest's number — where it was written by the time-weighted rule (``obligation_basis``
``time-weighted``, issue 15 H6: :func:`hashflex.control.ancillary.mean_hold_shortfalls`) or the
product's award revisions are the same over the whole interval; on an older trail, where a revision
starts, ends or replaces another inside the interval, by the same rule: max(O − H, 0) / 1000 × P ×
the interval's hours, O the time-weighted mean over the interval of max(A − D, 0)
(:func:`hashflex.control.ancillary.mean_obligations_kw`), A the reserve of the revisions in force
(the payment's windows), D the MW of the product deployed and in force (each revision while in
force, :func:`_deployment_windows`: deployments one after another are not added up), P the
revisions' reserve- and time-weighted price, H the reserve held: the record's ``held_kw``; no
record where the measurement says the loop held by the time-weighted rule: it found it held; without a record,
the obligation the loop knew when it measured (awards recorded before the measurement, less D) if
it had one (it found it held), else the sheddable load of the product's qualified groups the loop
recorded with the measurement (``reserve_sheddable_kw``, per group, the figure its own hold check
uses: exact; issue 15, H1, H1b: per group the commanded load above idle capped by what its miners
were measured to draw above idle, a running miner without telemetry counted as commanded, one asleep
or powered off without it as 0, ``reserve_hold_basis`` ``metered``, ``partly metered`` (with
``reserve_unreported_running_units``) or ``commanded`` (no running miner reported), the last two
counted in notes; a trail written before H1b may carry the H1 figure, capped pro rata by the metered
load less every unit's idle draw; an older trail without the basis records the commanded figure, and
the report caps it by that H1 rule), else the metered running load above idle (``load_kw`` less every unit's idle draw; both
shared pro rata between products, capped by the product's qualified ``group_mw``; the load-based
ones are estimated: ``reserve_estimated_hold_intervals`` counts them; no measurement: 0 held). So a site
that held nothing nets $0 however its award changed. ``reserve_final_through`` /
``reserve_provisional_payment_usd``: the payment after the last final interval (:func:`final_through`),
whose clawback may still be queued. Reserve awarded and not held by running, sheddable,
qualified load, the failure to provide that ERCOT's settlement charges (Nodal Protocols §6.4.9.1.3,
§6.7.3; that function's docstring). The backtest settles with the same function on the same
numbers (the loop writes the records), so a backtest database's report equals its summary to the
cent. A deployment's metered shortfall is a performance figure (§8.1.1.4), reported per deployment
above, not charged; ``reserve_revenue_usd`` = payment − clawback.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from hashflex.control.ancillary import (
    ASDeployment,
    awarded_at_instruction_kw,
    mean_award_prices,
    mean_obligations_kw,
    reserve_clawback_usd,
    revision_windows,
)
from hashflex.control.as_shortfall import (
    binding_deployments,
    binding_revision,
    deployment_shortfall_kw,
    shortfall_shares,
)
from hashflex.profile import AS_PRODUCT_RULES
from hashflex.report.deployment_limit import book_limit_kw
from hashflex.report.inputs import ReportInputs, _r

__all__ = ["AWARD_COLUMNS", "DEPLOYMENT_COLUMNS", "ancillary_figures", "final_through", "reserve_money"]

DEPLOYMENT_COLUMNS = ["deployment_id", "revision", "product", "issued_at", "in_force_from", "in_force_until", "status",
                      "final", "deployed_mw", "awarded_mw", "awarded_latest_mw", "delivered_mw",
                      "delivered_vs_deployed_pct", "delivered_vs_awarded_pct", "shortfall_mw", "response_s", "deadline", "within_deadline",
                      "recalled_at", "metered_import_kw", "metered_limit_kw", "metered_delivered_mw",
                      "metered_shortfall_mw",
                      "metered_response_s", "measured_response_s", "arrived_late", "arrival_delay_s",
                      "above_award_mw", "award_shortfall_mw"]
"""The columns of the deployments table of the HTML report (every key is in the JSON)."""
AWARD_COLUMNS = ["award_id", "revision", "product", "award_start", "award_end", "reserve_mw", "price_usd_mw_h",
                 "accepted"]
"""The columns of the awards table of the HTML report."""


def _stamp(text: Any) -> pd.Timestamp | None:
    return None if not text else pd.Timestamp(text).tz_convert("UTC")


def _iso(moment: pd.Timestamp | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _accepted(record: Mapping[str, Any]) -> bool:
    return (record.get("ack") or {}).get("status") == "accepted"


def _awarded_kw(awards: list[dict[str, Any]], product: str, issued: pd.Timestamp, arrived: pd.Timestamp,
                before_seq: float) -> float:
    """kW of ``product`` awarded at a deployment (the reserve it carried, as the limits book records it): in
    force at the instruction ``issued`` or at the arrival ``arrived``, whichever is larger (:func:`~hashflex.control.ancillary.awarded_at_instruction_kw`),
    from the accepted award records before ``before_seq`` (the latest revision of each)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(awards, key=lambda r: r["seq"]):
        message = record["message"]
        if record["seq"] < before_seq and _accepted(record) and message.get("award_id"):
            latest[message["award_id"]] = message
    windows = []
    for message in latest.values():
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        if message.get("product") == product and start is not None and end is not None:
            windows.append((start.to_pydatetime(), end.to_pydatetime(), float(message.get("reserve_kw") or 0.0)))
    return awarded_at_instruction_kw(windows, issued.to_pydatetime(), arrived.to_pydatetime())


@dataclass
class _Revision:
    """One accepted revision of a deployment as the loop's book held it (figures from its own records)."""

    deployment_id: str
    revision: int
    record: dict[str, Any]
    performance: Mapping[str, Any] | None
    issued: pd.Timestamp  # this revision's instruction (``issued_at`` of its message)
    received: pd.Timestamp  # from when it bound: the first at min(instruction, arrival), a later one at arrival
    deadline: pd.Timestamp
    first_issued: pd.Timestamp  # the deployment's first instruction
    until: pd.Timestamp  # the next revision's arrival, else the deployment's end
    end: pd.Timestamp  # the deployment's end: its recall, else its release (max_hold_h; older trails: sustain)
    awarded_at_instruction_kw: float | None = None  # awarded at the instruction, as the book recorded it
    cancelled: bool = False  # recalled before it bound (the loop's ``cancelled``, or an end at or before its start)
    recalled_at: pd.Timestamp | None = None  # the recall that ended it (None: not recalled)
    first_received: pd.Timestamp | None = None  # the first revision's arrival (the book's ``received_at``)
    held_at_instruction_kw: float | None = None  # MW of the deployments in force at its arrival (None: older trails)

    @property
    def limit_kw(self) -> float | None:
        perf = self.performance or {}
        limit = perf.get("limit_kw", (self.record.get("ack") or {}).get("import_limit_kw"))
        return None if limit is None else float(limit)

    @property
    def deployed_kw(self) -> float:
        return float(self.record["message"].get("deployed_kw") or 0.0)

    def as_deployment(self) -> ASDeployment:
        """This revision as the limits book held it (an ``ASDeployment``), for :func:`book_limit_kw`.

        Under the stacking rule (``held_at_instruction_kw`` recorded) its own limit is the book's
        max(baseline_kw − deployed_kw, 0) from the performance record's load drawn at the arrival
        (the record's ``limit_kw`` is the ack's, the limit enforced at the arrival with the others
        then in force subtracted); on an older trail the record's (or ack's) ``limit_kw``, the book's
        own limit then. Call only when :attr:`limit_kw` is not None.
        """
        cached = getattr(self, "_deployment", None)
        if cached is not None:
            return cached
        message = self.record["message"]
        limit = float(self.limit_kw)  # type: ignore[arg-type]
        baseline = (self.performance or {}).get("baseline_kw")
        baseline_kw = float(baseline) if baseline is not None else limit + self.deployed_kw
        if self.held_at_instruction_kw is not None and baseline is not None:
            limit = max(baseline_kw - self.deployed_kw, 0.0)
        received = self.first_received if self.first_received is not None else self.received
        self._deployment = ASDeployment(
            deployment_id=self.deployment_id, product=str(message.get("product")), issuer=str(message.get("issuer")),
            issued_at=self.first_issued.to_pydatetime(), deployed_kw=self.deployed_kw, baseline_kw=baseline_kw,
            limit_kw=limit, deadline=self.deadline.to_pydatetime(), end=self.end.to_pydatetime(),
            revision=self.revision, recalled=self.recalled_at is not None, received_at=received.to_pydatetime(),
            awarded_at_instruction_kw=self.awarded_at_instruction_kw,
            held_at_instruction_kw=self.held_at_instruction_kw)
        return self._deployment


def _held_by_book(revisions: Mapping[str, list[_Revision]], known_before: pd.Timestamp) -> list[ASDeployment]:
    """The deployments the limits book held just before ``known_before``: per deployment (not
    cancelled) the latest revision that had arrived by then, as an ``ASDeployment``."""
    out = []
    for held in revisions.values():
        if held[0].cancelled:
            continue
        latest = None
        for revision in held:
            if revision.received < known_before and revision.limit_kw is not None:
                latest = revision
        if latest is not None:
            out.append(latest.as_deployment())
    return out


def _binding_at(revisions: Mapping[str, list[_Revision]], start: pd.Timestamp) -> list[_Revision]:
    """The revisions that bind the interval starting at ``start``: per deployment not cancelled and not
    ended by then, the latest received by ``start`` whose deadline has passed
    (:func:`~hashflex.control.as_shortfall.binding_revision`)."""
    out = []
    for held in revisions.values():
        if held[0].cancelled or not start < held[0].end:
            continue
        revision = binding_revision([(r.received, r.deadline, r) for r in held if r.limit_kw is not None], start)
        if revision is not None:
            out.append(revision)
    return out


def _enforced_limit_kw(revision: _Revision, others: list[ASDeployment], start: pd.Timestamp,
                       end: pd.Timestamp | None = None) -> float:
    """The limits book's limit for ``revision`` at ``start`` (or over ``[start, end)``), kW, by the book's
    own rule (:func:`book_limit_kw`) with the ``others`` deployments given.

    Over an interval the others are the revisions that bind it (:func:`_binding_at`; a deployment
    whose deadline has not passed is not yet the site's to meet, so its MW lowers no other's
    assessed limit, though the book enforces it at once); at the command, every deployment the book
    held then (:func:`_held_by_book`: the ack's limit)."""
    return book_limit_kw(revision.as_deployment(), others, start.to_pydatetime(),
                         None if end is None else end.to_pydatetime())


def _arrival(record: Mapping[str, Any]) -> pd.Timestamp:
    """When the site received a deployment message: its ack's ``acked_at`` (the loop decides on
    arrival), else the record's time."""
    return _stamp((record.get("ack") or {}).get("acked_at")) or record["at"]


def _revisions(inputs: ReportInputs) -> tuple[dict[str, list[_Revision]], dict[str, dict[str, Any]],
                                              dict[str, pd.Timestamp]]:
    """Per deployment id: its accepted revisions in the order received (each with its span, deadline and
    its own performance record), the first record of each id that was never accepted, and the recalls
    that ended a deployment (id -> recall time)."""
    performance: dict[tuple[str, int], dict[str, Any]] = {}
    ended: dict[str, dict[str, Any]] = {}  # the loop's word on how a deployment ended (latest record with ended_at)
    for p in sorted(inputs.as_performance, key=lambda p: p["seq"]):
        performance[str(p.get("deployment_id")), int(p.get("revision") or 0)] = p
        if p.get("ended_at"):
            ended[str(p.get("deployment_id"))] = p
    recall_times: dict[str, list[pd.Timestamp]] = {}
    accepted: dict[str, list[dict[str, Any]]] = {}
    refused: dict[str, dict[str, Any]] = {}
    for record in sorted(inputs.as_deploys, key=lambda r: r["seq"]):
        message = record["message"]
        deployment_id = str(message.get("deployment_id"))
        if message.get("recalled"):
            if _accepted(record):
                recall_times.setdefault(deployment_id, []).append(_stamp(message.get("issued_at")) or record["at"])
            continue
        if _accepted(record):
            held = accepted.setdefault(deployment_id, [])
            if not held or int(message.get("revision") or 0) > int(held[-1]["message"].get("revision") or 0):
                held.append(record)  # a redelivery's repeated "accepted" is not a new revision
        elif deployment_id not in refused:
            refused[deployment_id] = record
    out: dict[str, list[_Revision]] = {}
    recalls: dict[str, pd.Timestamp] = {}
    for deployment_id, records in accepted.items():
        first = records[0]["message"]
        rules = AS_PRODUCT_RULES.get(str(first.get("product")), {})
        first_issued = _stamp(first.get("issued_at")) or records[0]["at"]
        # Held from when the site received it (issue 15): a late deployment cannot be held before it
        # arrived, a future-dated one binds from its arrival (the book's safety rule).
        first_received = _arrival(records[0])
        kept = [performance.get((deployment_id, int(r["message"].get("revision") or 0))) or {} for r in records]
        # Without a recall a deployment holds to its release (ancillary.max_hold_h, the book's
        # ``release_at``); trails written before it held until recall ended at the sustained duration.
        release = next((_stamp(p["release_at"]) for p in reversed(kept) if p.get("release_at")), None)
        end = release or first_issued + pd.Timedelta(hours=float(rules.get("sustain_h", 0.0)))
        at_instruction = next((float(p["awarded_at_instruction_kw"]) for p in kept
                               if p.get("awarded_at_instruction_kw") is not None), None)
        # The stacking rule's key (issue 15, H8): absent on a trail written before it (own limit kept).
        held_kw = next((float(p["held_at_instruction_kw"]) for p in kept
                        if p.get("held_at_instruction_kw") is not None), None)
        # The recall that ends it: the loop's performance record says when (``ended_at``); else the
        # first accepted recall at or after it bound (a recall received earlier and dated before the
        # instruction is an older one: the loop holds the deployment, issue 15).
        bound_from = min(first_issued, first_received)
        recalled_at = None
        loop_end = ended.get(deployment_id)
        if loop_end is not None:
            if str(loop_end.get("end_reason") or "").startswith("backstop") or loop_end.get("event") == "released":
                end = min(end, _stamp(loop_end["ended_at"]))  # released by max_hold_h: not a recall
            else:
                recalled_at = _stamp(loop_end["ended_at"])
        else:
            recalled_at = next((t for t in recall_times.get(deployment_id, []) if t >= bound_from), None)
        if recalled_at is not None:
            end = min(end, recalled_at)
            recalls[deployment_id] = recalled_at
        cancelled = bool(loop_end is not None and loop_end.get("cancelled")) or end <= first_received
        revisions = []
        for i, record in enumerate(records):
            message = record["message"]
            issued = _stamp(message.get("issued_at")) or record["at"]
            # The book replaces a revision when the next arrives; the first is held from its arrival.
            received = first_received if i == 0 else _arrival(record)
            deadline = (_stamp((record["ack"] or {}).get("deadline"))
                        or issued + pd.Timedelta(seconds=float(rules.get("deadline_s", 0.0))))
            until = min(_arrival(records[i + 1]), end) if i + 1 < len(records) else end
            revisions.append(_Revision(deployment_id, int(message.get("revision") or 0), record,
                                       performance.get((deployment_id, int(message.get("revision") or 0))),
                                       issued, received, deadline, first_issued, until, end, at_instruction,
                                       cancelled, recalled_at, first_received, held_kw))
        out[deployment_id] = revisions
    return out, refused, recalls


def _shortfall_intervals(inputs: ReportInputs, revisions: Mapping[str, list[_Revision]]) -> list[dict[str, Any]]:
    """Per measured interval in which a deployment binds: the site's shortfall by the one rule
    (:mod:`hashflex.control.as_shortfall`: lowest limit of the deployments due, capped at their MW,
    shared pro rata), each deployment's limit over the interval the limits book's
    (:func:`_enforced_limit_kw`: stacked on the deployments in force at its arrival, less the MW of the
    others that bind; no award moves it)."""
    history = inputs.history
    if history is None or history.empty or not revisions:
        return []
    revisions = {k: v for k, v in revisions.items() if not v[0].cancelled}  # a cancelled one binds nothing
    if not revisions:
        return []
    first = min(r[0].received for r in revisions.values())
    last = max(r[0].end for r in revisions.values())
    rows = history[history["import_kw"].notna() & (history["interval_start"] < last)
                   & (history["interval_end"] > first)].sort_values("interval_start")
    out = []
    for start, end, h, import_kw in zip(rows["interval_start"], rows["interval_end"], rows["interval_h"],
                                        rows["import_kw"], strict=True):
        due = _binding_at(revisions, start)
        if not due:
            continue
        others = [r.as_deployment() for r in due]
        binding = [(r, _enforced_limit_kw(r, others, start, end)) for r in due]
        limit_kw, deployed_kw = binding_deployments([b[1] for b in binding], [b[0].deployed_kw for b in binding])
        short_kw = deployment_shortfall_kw(float(import_kw), limit_kw, deployed_kw)
        shares = shortfall_shares(short_kw, {f"{r.deployment_id}#{r.revision}": r.deployed_kw for r, _ in binding})
        out.append({"interval_start": start, "interval_end": end, "interval_h": float(h), "import_kw": float(import_kw),
                    "binding_limit_kw": limit_kw, "deployed_kw": deployed_kw, "shortfall_kw": short_kw,
                    "deployments": [{"deployment_id": r.deployment_id, "revision": r.revision, "limit_kw": limit,
                                     "deployed_kw": r.deployed_kw,
                                     "shortfall_kw": shares[f"{r.deployment_id}#{r.revision}"]}
                                    for r, limit in binding]})
    return out


def _metered(revision: _Revision, inputs: ReportInputs, intervals: list[dict[str, Any]],
             tolerance_kw: float, revisions: Mapping[str, list[_Revision]]) -> dict[str, Any]:
    """A revision's metered figures: over the intervals it binds (module docstring), its share of each
    interval's shortfall; the first interval of its span at or under its own limit."""
    out: dict[str, Any] = {"metered_intervals": 0, "metered_import_kw": None, "metered_limit_kw": None,
                           "metered_delivered_mw": None, "metered_shortfall_mw": None,
                           "metered_under_limit_by": None, "metered_response_s": None, "concurrent_with": []}
    history, limit_kw = inputs.history, revision.limit_kw
    if history is None or history.empty or limit_kw is None:
        return out
    span = history[history["import_kw"].notna() & (history["interval_start"] < revision.until)
                   & (history["interval_end"] > revision.received)].sort_values("interval_start")
    for start, end, import_kw in zip(span["interval_start"], span["interval_end"], span["import_kw"], strict=True):
        others = [r.as_deployment() for r in _binding_at(revisions, start)]
        limit = _enforced_limit_kw(revision, others, start, end)
        if import_kw <= limit + tolerance_kw:
            out["metered_under_limit_by"] = end.isoformat()
            out["metered_response_s"] = _r((end - revision.issued).total_seconds())
            break
    mine = [(i, d) for i in intervals for d in i["deployments"]
            if d["deployment_id"] == revision.deployment_id and d["revision"] == revision.revision]
    hours = sum(i["interval_h"] for i, _ in mine)
    if hours > 0:
        import_kw = sum(i["import_kw"] * i["interval_h"] for i, _ in mine) / hours
        out["metered_intervals"] = len(mine)
        out["metered_import_kw"] = _r(import_kw)
        out["metered_limit_kw"] = _r(sum(d["limit_kw"] * i["interval_h"] for i, d in mine) / hours)
        out["metered_shortfall_mw"] = _r(sum(d["shortfall_kw"] * i["interval_h"] for i, d in mine) / hours / 1000.0)
        baseline = (revision.performance or {}).get("baseline_kw")
        if baseline is not None:
            out["metered_delivered_mw"] = _r((float(baseline) - import_kw) / 1000.0)
        out["concurrent_with"] = sorted({d["deployment_id"] for i, _ in mine for d in i["deployments"]}
                                        - {revision.deployment_id})
    return out


def _mw(kw: Any) -> float | None:
    return None if kw is None else _r(float(kw) / 1000.0)


def _above_award(perf: Mapping[str, Any], ack: Mapping[str, Any], awarded_kw: float,
                 deployed_kw: float) -> dict[str, float | None]:
    """``above_award_mw``, ``award_obligation_mw``, ``award_shortfall_mw`` against ``awarded_kw`` (the
    row's ``awarded_mw``: in force at the instruction or at the arrival, whichever is larger), MW.

    One definition with the ack (H8 finding 4: a deployment instructed before its award started was
    acked 0 kW awarded, all above it, while the row showed the award): from the loop's record of the
    product's MW in force at the instruction (``deployed_in_force_kw``), so a trail written under the
    former rule (the award at the instruction only) is shown by this one; without that key, the
    loop's own figures."""
    in_force = perf.get("deployed_in_force_kw")
    if in_force is None:
        return {"above_award_mw": _mw(perf.get("above_award_kw", ack.get("above_award_kw"))),
                "award_obligation_mw": _mw(perf.get("award_obligation_kw")),
                "award_shortfall_mw": _mw(perf.get("award_shortfall_kw"))}
    above_kw = max(float(in_force) - awarded_kw, 0.0)
    above_kw = above_kw if above_kw > 1e-6 else 0.0
    obligation_kw = max(deployed_kw - above_kw, 0.0)
    baseline, commanded = perf.get("baseline_kw"), perf.get("commanded_import_kw")
    short = (None if baseline is None or commanded is None
             else max(float(commanded) - max(float(baseline) - obligation_kw, 0.0), 0.0))
    return {"above_award_mw": _mw(above_kw), "award_obligation_mw": _mw(obligation_kw), "award_shortfall_mw": _mw(short)}


def _deployment_row(record: dict[str, Any], inputs: ReportInputs, revision: _Revision | None,
                    recalled_at: pd.Timestamp | None, intervals: list[dict[str, Any]], revision_count: int,
                    tolerance_kw: float, revisions: Mapping[str, list[_Revision]]) -> dict[str, Any]:
    """One row: an accepted revision (``revision`` given: every figure from that revision's own message,
    ack and performance record), or a deployment never accepted (``revision`` None)."""
    message, ack = record["message"], record["ack"]
    product = str(message.get("product"))
    issued = _stamp(message.get("issued_at")) or record["at"]
    rules = AS_PRODUCT_RULES.get(product, {})
    deadline = (revision.deadline if revision is not None else
                _stamp(ack.get("deadline")) or issued + pd.Timedelta(seconds=float(rules.get("deadline_s", 0.0))))
    arrived = _arrival(record)
    awarded_kw = _awarded_kw(inputs.as_awards, product, issued, arrived, record["seq"])
    # The same product's awards covering the instruction (or arrival) as last revised in the trail (a
    # later cut or withdrawal shows here; ``awarded_mw`` stays as known at the arrival: as the book recorded it).
    awarded_latest_kw = _awarded_kw(inputs.as_awards, product, issued, arrived, math.inf)
    perf = (revision.performance if revision is not None else None) or {}
    cancelled = revision is not None and revision.cancelled
    held = revision is not None and not cancelled
    baseline = perf.get("baseline_kw")
    limit = revision.limit_kw if revision is not None else None
    delivered = perf.get("delivered_kw") if not cancelled else None
    commanded = perf.get("commanded_import_kw") if not cancelled else None
    # One rule for the row and its intervals (control.as_shortfall): the commanded import against
    # the limit the book held at the command (its own rule on what it held then: the ack's limit),
    # capped at the MW deployed.
    commanded_limit = shortfall = None
    if held and limit is not None:
        known = revision.received + pd.Timedelta(microseconds=1)  # the book just after it decided
        commanded_limit = _enforced_limit_kw(revision, _held_by_book(revisions, known), revision.received)
        if commanded is not None:
            shortfall = deployment_shortfall_kw(float(commanded), commanded_limit, revision.deployed_kw)
    status = "cancelled" if cancelled else ("accepted" if _accepted(record) else "rejected")
    row = {
        "deployment_id": message.get("deployment_id"), "revision": int(message.get("revision") or 0),
        "revisions": revision_count, "product": product, "issuer": message.get("issuer"),
        "issued_at": issued.isoformat(), "accepted": _accepted(record), "status": status, "cancelled": cancelled,
        "reason": ack.get("reason"),
        "received_at": _iso(_arrival(record)),
        "in_force_from": _iso(revision.received) if held else None,
        "in_force_until": _iso(revision.until) if held else None,
        "in_force_h": _r((revision.until - revision.received).total_seconds() / 3600.0) if held else None,
        "deployed_mw": _r(float(message.get("deployed_kw") or 0.0) / 1000.0),
        "awarded_mw": _r(awarded_kw / 1000.0),
        "awarded_latest_mw": _r(awarded_latest_kw / 1000.0),
        # The reserve the book recorded as awarded at the instruction (all products): a record only.
        "book_awarded_at_instruction_mw": (_mw(revision.awarded_at_instruction_kw)
                                           if revision is not None and revision.awarded_at_instruction_kw is not None
                                           else None),
        "deadline": deadline.isoformat(), "deadline_s": _r((deadline - issued).total_seconds()),
        "recalled_at": _iso(recalled_at),
        "baseline_kw": _r(baseline), "limit_kw": _r(limit), "commanded_import_kw": _r(commanded),
        "commanded_limit_kw": _r(commanded_limit),
        "delivered_mw": None if delivered is None else _r(float(delivered) / 1000.0),
        "shortfall_mw": None if shortfall is None else _r(float(shortfall) / 1000.0),
        # Of what this deployment asked (second newcomer finding 6: 300 of a 400 kW award delivered in
        # full read 75.5 % against the award alone).
        "delivered_vs_deployed_pct": (_r(100.0 * float(delivered) / float(message.get("deployed_kw")))
                                      if delivered is not None and float(message.get("deployed_kw") or 0.0) > 0
                                      else None),
        "delivered_vs_awarded_pct": (_r(100.0 * float(delivered) / awarded_kw)
                                     if delivered is not None and awarded_kw > 0 else None),
        "response_s": _r(perf.get("commanded_after_s")) if not cancelled else None,
        "within_deadline": perf.get("commanded_within_deadline") if not cancelled else None,
        # From the site meter's (or telemetry's) readings: the first at or under the limit (seconds).
        "measured_response_s": _r(perf.get("measured_response_s")),
        "measured_within_deadline": perf.get("measured_within_deadline"),
        # Late or above the award (the loop's flags, in the performance record and the ack).
        "arrived_late": perf.get("late", ack.get("late")),
        "arrival_delay_s": _r(perf.get("arrival_delay_s")),
        **_above_award(perf, ack, awarded_kw, float(message.get("deployed_kw") or 0.0)),
    }
    if held and revision.performance:
        row.update(_metered(revision, inputs, intervals, tolerance_kw, revisions))
    else:
        row.update({"metered_intervals": 0, "metered_import_kw": None, "metered_limit_kw": None,
                    "metered_delivered_mw": None, "metered_shortfall_mw": None, "metered_under_limit_by": None,
                    "metered_response_s": None, "concurrent_with": []})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def final_through(inputs: ReportInputs, head_seq: int | None, complete: bool = False) -> pd.Timestamp | None:
    """Until when the trail's interval figures are final (issue 15: a report on a store the daemon is
    still writing): the end of the latest measured interval whose ``measurement`` record has a record
    committed after it (seq below ``head_seq``). The loop writes an interval's ``reserve_hold_short``
    records right after its measurement, through one writer in order, so a measurement that is the
    trail's last record may still have them queued; intervals after the last measurement have no
    record yet. (With several products short in one interval, a head that is the first of them
    cannot show whether the others are still queued: that interval counts as final.)

    Parameters
    ----------
    inputs : ReportInputs
        Decoded audit records (``history``: every measurement, with its ``seq``).
    head_seq : int or None
        The seq of the last record committed in the trail (None: the last measurement's seq).
    complete : bool
        The trail is complete (a finished backtest's, its writer closed: ``report.BACKTEST_RUN_END_KEY``):
        nothing can be queued, so every measured interval is final.

    Returns
    -------
    pandas.Timestamp or None
        UTC; None when no measured interval is final.
    """
    history = inputs.history
    if history is None or history.empty:
        return None
    if complete:
        return pd.Timestamp(history["interval_end"].max())
    seqs = history["seq"].astype("int64")
    head = int(seqs.max()) if head_seq is None else int(head_seq)
    done = history[seqs < head]
    return None if done.empty else pd.Timestamp(done["interval_end"].max())


def ancillary_figures(inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp, *,
                      tolerance_kw: float = 0.0, head_seq: int | None = None,
                      head_at: pd.Timestamp | None = None, complete: bool = False,
                      qualification: str | None = None) -> dict[str, Any]:
    """The report's ``ancillary`` section: every AS deployment issued in the period and the awards.

    Parameters
    ----------
    inputs : ReportInputs
        Decoded audit records (``as_awards``, ``as_deploys``, ``as_performance``, ``history``).
    period_start, period_end : pd.Timestamp
        The report period, UTC, half-open; a deployment belongs to it by its first instruction time
        (``issued_at`` of revision 0), with all its revisions, a deployment never accepted by its arrival (one
        refused on its ``issued_at`` is listed, with the reason); an award when its window overlaps the period.
    tolerance_kw : float
        kW a metered interval mean may be over the limit and still count as under it.
    head_seq : int, optional
        The seq of the last record committed in the trail (the audit head); None: the last
        measurement's. Figures of intervals after :func:`final_through` are flagged not final.
    head_at : pandas.Timestamp, optional
        That record's time (``covers_through_at``).
    complete : bool
        The trail is complete (:func:`final_through`): no figure is flagged not final.
    qualification : str, optional
        How the site's AS qualification was set, when not the site's registration (a backtest's
        ``--ancillary example``: ``ASSUMED ...``): stated in ``qualification`` and the first note.

    Returns
    -------
    dict
        ``covers_through_seq`` / ``covers_through_at`` (the last record the report read),
        ``trail_complete`` (``complete``), ``qualification`` (``qualification`` or null),
        ``final_through`` (:func:`final_through`; ISO or null), ``provisional_interval_count`` (shortfall
        intervals of the period after it), ``deployment_count``, ``accepted_count`` (accepted and not
        cancelled), ``cancelled_count`` (recalled before they bound), ``shortfall_count`` (deployments with a commanded
        or metered shortfall in any revision), ``late_count`` (a cut not commanded by its deadline),
        ``late_arrival_count`` (arrived after it), ``above_award_count`` (asked more than the award in
        force), ``amended_count`` (deployments with more than one revision), ``deployments`` (one row
        per accepted revision of each deployment, or one for a deployment never accepted; the keys of
        the module docstring; in instruction order), ``shortfall_intervals`` (per measured interval of
        the period in which a deployment binds: the site's shortfall and each deployment's share),
        ``awards`` (one row per award message), ``notes``.
    """
    revisions, refused, recalls = _revisions(inputs)
    intervals = _shortfall_intervals(inputs, revisions)
    keyed = []  # (first instruction, id, revision): the revisions of one deployment stay together
    for deployment_id, held in revisions.items():
        if period_start <= held[0].issued < period_end:
            keyed += [((held[0].issued, deployment_id, r.revision),
                       _deployment_row(r.record, inputs, r, recalls.get(deployment_id), intervals, len(held),
                                       tolerance_kw, revisions)) for r in held]
    for deployment_id, record in refused.items():
        issued = _stamp(record["message"].get("issued_at")) or record["at"]
        # A refused deployment belongs to the period by its arrival (H8 finding 7): it bound nothing,
        # and its instruction time may be the very reason it was refused (9 h stale, 1 h ahead).
        if deployment_id not in revisions and period_start <= _arrival(record) < period_end:
            keyed.append(((issued, deployment_id, 0),
                          _deployment_row(record, inputs, None, recalls.get(deployment_id), intervals, 0,
                                          tolerance_kw, revisions)))
    rows = [row for _, row in sorted(keyed, key=lambda kr: kr[0])]
    # Deployments in force together (issue 15): by their in-force windows, measured or not.
    spans = {d: (held[0].received, held[0].end) for d, held in revisions.items() if not held[0].cancelled}
    final = final_through(inputs, head_seq, complete)
    for row in rows:
        if row["in_force_from"] is None:
            row["final"] = True  # refused or cancelled: nothing to measure
            continue
        start, until = pd.Timestamp(row["in_force_from"]), pd.Timestamp(row["in_force_until"])
        overlapping = {d for d, (a, b) in spans.items() if a < until and b > start}
        row["concurrent_with"] = sorted((set(row["concurrent_with"]) | overlapping) - {row["deployment_id"]})
        # Final when every interval it binds is: its metered figures will not change with later records.
        row["final"] = final is not None and until <= final
    awards = []
    for record in sorted(inputs.as_awards, key=lambda r: r["seq"]):
        message = record["message"]
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        if start is None or end is None or not (start < period_end and end > period_start):
            continue
        awards.append({"award_id": message.get("award_id"), "revision": message.get("revision"),
                       "product": message.get("product"), "award_start": start.isoformat(),
                       "award_end": end.isoformat(), "reserve_mw": _r(float(message.get("reserve_kw") or 0.0) / 1000.0),
                       "price_usd_mw_h": _r(message.get("price_usd_mw_h")), "accepted": _accepted(record),
                       "reason": (record["ack"] or {}).get("reason")})

    def count(hit: Any) -> int:
        return len({r["deployment_id"] for r in rows if hit(r)})

    # Deployments held past the product's sustained duration without a recall, and those the backstop
    # (ancillary.max_hold_h) released: the loop's as_performance records with an ``event``.
    shown_ids = {r["deployment_id"] for r in rows}
    events = {e: {str(p.get("deployment_id")) for p in inputs.as_performance if p.get("event") == e} & shown_ids
              for e in ("overrun", "released")}

    notes = [f"AS qualification: {qualification}"] if qualification else []
    covers = head_seq if head_seq is not None else (
        int(inputs.history["seq"].max()) if inputs.history is not None and not inputs.history.empty else None)
    if (rows or awards) and (final is None or final < period_end):
        notes.append(f"not final after {_iso(final) if final is not None else 'the first interval'}: the report "
                     f"covers the trail through seq {covers}"
                     f"{f' ({_iso(head_at)})' if head_at is not None else ''}; an interval without a measurement "
                     f"record followed by another record may still have records queued by the daemon's writer "
                     f"(rows and shortfall_intervals with final false)")
    if any(r["cancelled"] for r in rows):
        notes.append("a cancelled deployment (recalled before it bound) has no in-force window, shortfall or "
                     "metered figures")
    if any(r["status"] != "cancelled" and r["awarded_latest_mw"] != r["awarded_mw"] for r in rows):
        notes.append("awarded_mw is the product's award in force at the instruction or at the arrival, whichever is "
                     "larger, as known then (the limits book's A0 rule, what the deployment is measured against); "
                     "awarded_latest_mw the same award as last revised in the trail (a later cut or withdrawal)")
    if rows:
        notes.append("response_s is the time from the instruction to the cut the fast path commanded; metered "
                     "figures come from the interval means of the measurement records, so metered_response_s is "
                     "an upper bound at interval resolution")
    if any(r["revisions"] > 1 for r in rows):
        notes.append("an amended deployment has one row per revision: each with the MW, limit and deadline of that "
                     "instruction, in force from its arrival until the next revision's; an interval is assessed "
                     "against the revision due at its start (one asking more MW binds from its own deadline)")
    if any(r["concurrent_with"] for r in rows):
        notes.append("with deployments in force together, an interval is measured against the lowest limit of "
                     "those due, its shortfall capped at their MW together and shared pro rata to each one's MW "
                     "(shortfall_intervals; hashflex.control.as_shortfall, the backtest's rule)")
    if any(r["arrived_late"] for r in rows):
        notes.append("a deployment that arrived after its deadline was cut at once; its response still counts "
                     "from the instruction (arrival_delay_s is the part before it reached the site)")
    if events["overrun"]:
        notes.append(f"{len(events['overrun'])} deployment(s) held past the product's sustained duration without a "
                     f"recall (overrun_count; still held, as a Load Resource stays deployed until recalled), "
                     f"{len(events['released'])} released by the backstop ancillary.max_hold_h (released_count)")
    if any((r["above_award_mw"] or 0.0) > 0 for r in rows):
        notes.append("a deployment above the award was obeyed in full; award_shortfall_mw measures it against "
                     "the award in force")
    shown = [{**i, "interval_start": i["interval_start"].isoformat(), "interval_end": i["interval_end"].isoformat(),
              **{k: _r(i[k]) for k in ("import_kw", "binding_limit_kw", "deployed_kw", "shortfall_kw")},
              "deployments": [{**d, **{k: _r(d[k]) for k in ("limit_kw", "deployed_kw", "shortfall_kw")}}
                              for d in i["deployments"]]}
             for i in intervals if period_start <= i["interval_start"] < period_end]
    for shown_interval, interval in zip(shown, [i for i in intervals if period_start <= i["interval_start"] < period_end],
                                        strict=True):
        shown_interval["final"] = final is not None and interval["interval_end"] <= final
    return {
        "covers_through_seq": covers,
        "covers_through_at": _iso(head_at),
        "trail_complete": complete,
        "qualification": qualification,
        "final_through": _iso(final),
        "provisional_interval_count": sum(1 for i in shown if not i["final"]),
        "deployment_count": count(lambda r: True),
        "accepted_count": count(lambda r: r["status"] == "accepted"),
        "cancelled_count": count(lambda r: r["cancelled"]),
        "shortfall_count": count(lambda r: (r["shortfall_mw"] or 0.0) > 0 or (r["metered_shortfall_mw"] or 0.0) > 0),
        "late_count": count(lambda r: r["within_deadline"] is False),
        "late_arrival_count": count(lambda r: r["arrived_late"] is True),
        "above_award_count": count(lambda r: (r["above_award_mw"] or 0.0) > 0),
        "amended_count": count(lambda r: r["revisions"] > 1),
        "overrun_count": len(events["overrun"]),
        "released_count": len(events["released"]),
        "deployments": rows,
        "shortfall_intervals": shown,
        "awards": awards,
        "notes": notes,
    }


def _award_revisions(awards: list[dict[str, Any]]
                     ) -> list[tuple[dict[str, Any], pd.Timestamp | None, pd.Timestamp | None]]:
    """Every accepted revision of every award with when the loop's book held it: (message, from, until).
    ``from`` is None for an award's first revision (its whole window) and, for a later one, the time it
    was recorded (it replaced the one before then, not at the window's start: a revision paid from the
    start too paid that stretch twice, newcomer finding); ``until`` is when the next accepted revision
    of the same ``award_id`` was recorded (None for the latest). A withdrawal is a revision with
    ``reserve_kw`` 0."""
    revisions: dict[str, list[tuple[dict[str, Any], pd.Timestamp]]] = {}
    for record in sorted(awards, key=lambda r: r["seq"]):
        message = record["message"]
        if _accepted(record) and message.get("award_id"):
            revisions.setdefault(str(message["award_id"]), []).append((message, record["at"]))
    out: list[tuple[dict[str, Any], pd.Timestamp | None, pd.Timestamp | None]] = []
    for held in revisions.values():
        out += [(message, at if i > 0 else None, held[i + 1][1] if i + 1 < len(held) else None)
                for i, (message, at) in enumerate(held)]
    return out


def _award_windows(awards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each accepted award revision's held window (:func:`_award_revisions`): ``product``,
    ``reserve_kw``, ``price_usd_mw_h`` (None without one), ``start``, ``end`` (UTC; empty windows left out)."""
    out = []
    for message, held_from, superseded in _award_revisions(awards):
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        if start is None or end is None:
            continue
        if held_from is not None:
            start = max(start, pd.Timestamp(held_from))
        if superseded is not None:
            end = min(end, pd.Timestamp(superseded))
        if end > start:
            price = message.get("price_usd_mw_h")
            out.append({"product": str(message.get("product")), "reserve_kw": float(message.get("reserve_kw") or 0.0),
                        "price_usd_mw_h": None if price is None else float(price), "start": start, "end": end})
    return out


def _deployment_windows(revisions: Mapping[str, list[_Revision]], product: str, start: pd.Timestamp,
                        end: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.Timestamp, float]]:
    """``product``'s deployed MW over ``[start, end)``: each revision of each deployment not cancelled
    over the time it was in force, (from, until, kW) — the first from when it bound (min(instruction,
    arrival), the book's ``binds_from``), a later one from its arrival, each until the next or the
    deployment's end (``control.ancillary.revision_windows``, the loop's rule, issue 15 H6). Shed
    load is not held as reserve, but only while it is shed: deployments one after another inside an
    interval are not added up (newcomer finding 1: 800 + 400 + 100 + 500 kW, one of 9 s, were
    subtracted from the award for the whole interval)."""
    out = []
    for held in revisions.values():
        first = held[0]
        if first.cancelled or str(first.record["message"].get("product")) != product:
            continue
        bound = min(first.first_issued, first.received)
        if not (bound < end and first.end > start):
            continue
        spans = revision_windows([(None if i == 0 else r.received, bound, first.end) for i, r in enumerate(held)])
        out += [(a, b, held[i].deployed_kw) for i, a, b in spans if a < end and b > start]
    return out


def _measured_sheddable_kw(inputs: ReportInputs, row: Any) -> float | None:
    """The running load above idle over a measured interval, kW: its mean ``load_kw`` less every unit's
    idle draw (a unit asleep draws its idle power, a running one its mode's power), from the profile
    in force for the record (``config``). None without a load or a profile."""
    from hashflex.report.provenance import config_for_seq

    load = getattr(row, "load_kw", None)
    if load is None or not math.isfinite(float(load)) or not inputs.configs:
        return None
    config = config_for_seq(inputs.configs, int(row.seq))
    groups = ((config or {}).get("profile") or {}).get("miner_groups") or []
    idle = sum(float(g.get("units") or 0) * float(g.get("idle_power_kw") or 0.0) for g in groups)
    return max(float(load) - idle, 0.0)


def _recorded_sheddable_kw(inputs: ReportInputs, row: Any, product: str) -> float | None:
    """The load the running units held over a measured interval in the groups qualified for
    ``product``, kW, as the loop recorded it with the measurement (``reserve_sheddable_kw``, per group:
    exact, issue 15 H8 item 3); None when the record has no such figure (a trail written before it,
    or a report input that does not carry it).

    The loop's rule (H1): units commanded but not drawing hold nothing. A record with a
    ``reserve_hold_basis`` already carries the figure its hold check used (capped by the load drawn,
    or commanded and labelled so); on an older trail, whose figure is the commanded fleet, the same
    cap is applied here (``control.ancillary.drawn_sheddable_kw`` with the metered load less every
    unit's idle draw, :func:`_measured_sheddable_kw`), so both report the same shortfall."""
    from hashflex.control.ancillary import drawn_sheddable_kw
    from hashflex.report.provenance import config_for_seq

    recorded = getattr(row, "reserve_sheddable_kw", None)
    if not isinstance(recorded, Mapping):
        return None
    if not isinstance(getattr(row, "reserve_hold_basis", None), str):  # older trail: the commanded fleet
        recorded = drawn_sheddable_kw({g: float(kw) for g, kw in recorded.items() if math.isfinite(float(kw))},
                                      _measured_sheddable_kw(inputs, row))
    config = config_for_seq(inputs.configs, int(row.seq)) if inputs.configs else None
    section = (((config or {}).get("profile") or {}).get("ancillary") or {}).get("products") or {}
    groups = (section.get(product) or {}).get("group_mw") or {}
    return sum(max(float(kw), 0.0) for g, kw in recorded.items() if g in groups and math.isfinite(float(kw)))


def _qualified_kw(inputs: ReportInputs, row: Any, product: str) -> float:
    """kW of ``product`` the profile in force qualifies (Σ ``ancillary.products[P].group_mw`` × 1000;
    inf without the section)."""
    from hashflex.report.provenance import config_for_seq

    config = config_for_seq(inputs.configs, int(row.seq)) if inputs.configs else None
    section = (((config or {}).get("profile") or {}).get("ancillary") or {}).get("products") or {}
    if product not in section:
        return math.inf
    return 1000.0 * sum(float(v) for v in (section[product].get("group_mw") or {}).values())


class _WindowIndex:
    """The award windows per product sorted by start, to find those overlapping an interval in
    O(log n + k) (a month of 5-minute intervals against thousands of hourly award revisions)."""

    def __init__(self, windows: list[dict[str, Any]], awards: list[dict[str, Any]]) -> None:
        self.parsed = _parsed_awards(awards)  # for what the loop knew at a moment
        self.by_product: dict[str, tuple[list[pd.Timestamp], list[dict[str, Any]], pd.Timedelta]] = {}
        for product in {w["product"] for w in windows}:
            mine = sorted((w for w in windows if w["product"] == product), key=lambda w: w["start"])
            longest = max((w["end"] - w["start"] for w in mine), default=pd.Timedelta(0))
            self.by_product[product] = ([w["start"] for w in mine], mine, longest)

    def overlapping(self, product: str, start: pd.Timestamp, end: pd.Timestamp) -> list[dict[str, Any]]:
        """``product``'s windows overlapping ``[start, end)``."""
        if product not in self.by_product:
            return []
        starts, mine, longest = self.by_product[product]
        lo, hi = bisect.bisect_right(starts, start - longest), bisect.bisect_left(starts, end)
        return [w for w in mine[max(lo - 1, 0):hi] if w["start"] < end and w["end"] > start]


def _interval_clawback_usd(inputs: ReportInputs, index: _WindowIndex, revisions: Mapping[str, list[_Revision]],
                           start: pd.Timestamp, end: pd.Timestamp, records: Mapping[str, Mapping[str, Any]],
                           measured: Any) -> tuple[float, list[str]]:
    """One interval's clawback, $, over the products awarded in it (:func:`reserve_money`), and the
    products whose held reserve was estimated from the metered load."""
    overlapping = {p: index.overlapping(p, start, end) for p in index.by_product}
    products = {p for p, mine in overlapping.items() if mine} | set(records)
    total, estimated = 0.0, []
    need: dict[str, float] = {}
    pending: dict[str, tuple[list[tuple[float, float | None, float]], float]] = {}
    for product in sorted(products):
        mine = overlapping.get(product, [])
        record = records.get(product)
        if (record is not None and record.get("obligation_basis") == "time-weighted"
                and record.get("price_usd_mw_h") is not None and record.get("short_kw") is not None):
            # The loop's record by the one time-weighted rule (H6, ``mean_hold_shortfalls``): each
            # award and deployment revision while it was held, the load held over the interval.
            total += float(reserve_clawback_usd(float(record["short_kw"]), float(record["price_usd_mw_h"]),
                                                float(record.get("interval_h") or (end - start).total_seconds() / 3600.0)))
            continue
        constant = all(w["start"] <= start and w["end"] >= end for w in mine)
        if constant:
            # The awards did not change inside the interval: the loop's record is the clawback (the
            # backtest settles the same number); no record: the loop found the award held.
            if record is not None and record.get("price_usd_mw_h") is not None and record.get("short_kw") is not None:
                total += float(reserve_clawback_usd(float(record["short_kw"]), float(record["price_usd_mw_h"]),
                                                    float(record.get("interval_h") or (end - start).total_seconds() / 3600.0)))
            continue
        # The one rule (control.ancillary.mean_hold_shortfalls, H6): the obligation time-weighted over
        # the award revisions (as held, the payment's windows) and the deployments (each revision
        # while in force), clawed back at the awards' reserve- and time-weighted price.
        shed = _deployment_windows(revisions, product, start, end)
        span_h = (end - start).total_seconds() / 3600.0
        obligation = mean_obligations_kw([(product, w["start"], w["end"], w["reserve_kw"]) for w in mine],
                                         [(product, a, b, kw) for a, b, kw in shed], start, end).get(product, 0.0)
        price = mean_award_prices([(product, w["start"], w["end"], w["reserve_kw"], w["price_usd_mw_h"])
                                   for w in mine], start, end).get(product)
        if record is not None:  # an older trail's record: what the running units held, as the loop measured it
            held = float(record.get("held_kw", float(record.get("obligation_kw") or 0.0)
                                    - float(record.get("short_kw") or 0.0)))
        elif measured is not None and getattr(measured, "reserve_sheddable_commanded_basis", None) == "time-weighted":
            continue  # the loop held each revision while in force by this rule and found it held (H6)
        else:
            # No record on an older trail: the loop found the obligation it knew when it measured (the
            # awards recorded before the measurement, less the MW deployed) held, if it had one; else
            # estimate from the metered load.
            deployed = sum(kw * (min(b, end) - max(a, start)).total_seconds() for a, b, kw in shed) / 3600.0 / span_h
            known_at = getattr(measured, "at", None) if measured is not None else None
            loop_awarded = 0.0
            if known_at is not None:
                loop_awarded = _known_awarded_kw(index.parsed, product, pd.Timestamp(known_at), start, end)
            if loop_awarded - deployed > 1e-6:
                held = loop_awarded - deployed
            else:
                need[product] = obligation
                pending[product] = (obligation, price)
                continue
        if price is not None:
            total += float(reserve_clawback_usd(max(obligation - held, 0.0), price, span_h))
    if pending:
        sheddable = _measured_sheddable_kw(inputs, measured) if measured is not None else None
        share_total = sum(max(v, 0.0) for v in need.values())
        span_h = (end - start).total_seconds() / 3600.0
        for product, (obligation, price) in pending.items():
            estimated.append(product)
            share = max(need[product], 0.0) / share_total if share_total > 0 else 1.0 / len(pending)
            recorded = _recorded_sheddable_kw(inputs, measured, product) if measured is not None else None
            if recorded is not None:  # the loop's own figure for the qualified groups: exact, not estimated
                estimated.pop()
                held = min(recorded * share, _qualified_kw(inputs, measured, product))
            elif sheddable is None:
                held = 0.0  # no evidence it was held: when in doubt, not held
            else:
                held = min(sheddable * share, _qualified_kw(inputs, measured, product))
            if price is not None:
                total += float(reserve_clawback_usd(max(obligation - held, 0.0), price, span_h))
    return total, estimated


def _parsed_awards(awards: list[dict[str, Any]]) -> list[tuple[pd.Timestamp, str, str, pd.Timestamp, pd.Timestamp, float]]:
    """The accepted award records in chain order, parsed once: (at, award_id, product, start, end, reserve_kw)."""
    out = []
    for record in sorted(awards, key=lambda r: r["seq"]):
        message = record["message"]
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        if _accepted(record) and message.get("award_id") and start is not None and end is not None:
            out.append((record["at"], str(message["award_id"]), str(message.get("product")), start, end,
                        float(message.get("reserve_kw") or 0.0)))
    return out


def _known_awarded_kw(parsed: list[tuple[pd.Timestamp, str, str, pd.Timestamp, pd.Timestamp, float]], product: str,
                      before: pd.Timestamp, start: pd.Timestamp, end: pd.Timestamp) -> float:
    """kW of ``product`` awarded over ``[start, end)`` as the loop's book held the awards just before
    ``before`` (the latest accepted revision of each id recorded before it; :func:`_parsed_awards`)."""
    latest: dict[str, tuple[pd.Timestamp, pd.Timestamp, float, str]] = {}
    for at, award_id, award_product, a_start, a_end, kw in parsed:
        if at < before:
            latest[award_id] = (a_start, a_end, kw, award_product)
    return sum(kw for a_start, a_end, kw, award_product in latest.values()
               if award_product == product and a_start < end and a_end > start)


def reserve_money(inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp,
                  deployments: list[dict[str, Any]] | None = None, *,
                  final_through: pd.Timestamp | None = None) -> dict[str, Any]:
    """The reserve payment, clawback and net of the period, from the audit trail (module docstring).

    Parameters
    ----------
    inputs : ReportInputs
        Decoded audit records (``as_awards``, ``reserve_hold_short``, ``history``, ``configs``).
    period_start, period_end : pd.Timestamp
        The report period, UTC, half-open.
    deployments : list of dict, optional
        The ``deployments`` rows of :func:`ancillary_figures`; not charged (a deployment's shortfall
        is a performance figure), accepted for the callers that pass them.
    final_through : pd.Timestamp, optional
        Until when the trail's intervals are final (:func:`final_through`); the payment after it is
        reported apart as provisional (its clawback may not be written yet). None: nothing is final.

    Returns
    -------
    dict
        ``reserve_payment_usd``, ``reserve_clawback_usd``, ``reserve_revenue_usd`` ($; 0.0 without
        awards), ``reserve_final_through`` (ISO or null), ``reserve_provisional_payment_usd`` (the
        part of the payment after it, inside the period), ``reserve_estimated_hold_intervals``
        (interval-products whose held reserve came from the metered load),
        ``reserve_unverified_payment_usd`` (the part of the final payment for award time no
        ``measurement`` record covers: the daemon was down or not started, so the reserve held then
        is not evidenced — a newcomer found a kill -9 gap paid in full with no hold check),
        ``reserve_unverified_hold_h`` (that award time, h, summed over awards), ``notes``.
    """
    windows = _award_windows(inputs.as_awards)
    payment = provisional = 0.0
    final = period_start if final_through is None else min(max(pd.Timestamp(final_through), period_start), period_end)
    for w in windows:
        if w["price_usd_mw_h"] is None:
            continue
        rate = w["reserve_kw"] / 1000.0 * w["price_usd_mw_h"]
        hours = (min(w["end"], period_end) - max(w["start"], period_start)).total_seconds() / 3600.0
        if hours > 0:
            payment += rate * hours
        late = (min(w["end"], period_end) - max(w["start"], final)).total_seconds() / 3600.0
        if late > 0:
            provisional += rate * late
    latest: dict[pd.Timestamp, dict[str, dict[str, Any]]] = {}
    lengths: dict[pd.Timestamp, float] = {}
    for record in sorted(inputs.reserve_hold_short, key=lambda r: r["seq"]):
        start = _stamp(record.get("interval_start"))
        if start is not None and period_start <= start < period_end and record.get("interval_h") is not None:
            latest.setdefault(start, {})[str(record.get("product"))] = record
            lengths[start] = float(record["interval_h"])
    measured: dict[pd.Timestamp, Any] = {}
    history = inputs.history
    if history is not None and not history.empty:
        for row in history[(history["interval_start"] >= period_start)
                           & (history["interval_start"] < period_end)].itertuples():
            measured[pd.Timestamp(row.interval_start)] = row
            lengths.setdefault(pd.Timestamp(row.interval_start), float(row.interval_h))
    # award time inside the final part of the period that no measurement covers (kill -9, start-up)
    spans = sorted((t, t + pd.Timedelta(hours=float(row.interval_h))) for t, row in measured.items()
                   if row.interval_h is not None and math.isfinite(float(row.interval_h)))
    unverified_usd = unverified_h = 0.0
    for w in windows:
        lo, hi = max(w["start"], period_start), min(w["end"], period_end, final)
        if hi <= lo:
            continue
        gap_h = (hi - lo).total_seconds() / 3600.0 - sum(
            max((min(hi, b) - max(lo, a)).total_seconds(), 0.0) for a, b in spans) / 3600.0
        if gap_h > 1e-9 and w["reserve_kw"] > 0:
            unverified_h += gap_h
            if w["price_usd_mw_h"] is not None:
                unverified_usd += w["reserve_kw"] / 1000.0 * w["price_usd_mw_h"] * gap_h
    revisions = _revisions(inputs)[0] if windows else {}
    index = _WindowIndex(windows, inputs.as_awards)
    clawback, estimated, commanded, partly, unreported = 0.0, 0, 0, 0, 0
    for start in sorted(lengths):
        end = start + pd.Timedelta(hours=lengths[start])
        if start not in latest and not any(index.overlapping(p, start, end) for p in index.by_product):
            continue  # no award, no record: nothing to claw back
        basis = getattr(measured[start], "reserve_hold_basis", None) if start in measured else "metered"
        if basis == "partly metered":  # some running units without telemetry, counted as commanded (H1b)
            partly += 1
            try:
                silent = float(getattr(measured[start], "reserve_unreported_running_units", None))
            except (TypeError, ValueError):
                silent = math.nan
            unreported += int(silent) if math.isfinite(silent) else 0
        elif basis != "metered":
            commanded += 1  # the loop's hold check saw the commanded fleet, not the load drawn (H1)
        usd, guessed = _interval_clawback_usd(inputs, index, revisions, start, end, latest.get(start, {}),
                                              measured.get(start))
        clawback += usd
        estimated += len(guessed)
    notes = []
    if windows:
        notes.append("reserve payment and clawback are weighted by the time each award revision was in force "
                     "inside an interval (an award amended, withdrawn or starting inside an interval is paid and "
                     "clawed back for the same part of it)")
        notes.append("no deployment cost is subtracted: load shed for a deployment neither hashed nor drew, so "
                     "revenue_usd and energy_cost_usd already leave out the margin it would have earned and "
                     "profit_usd includes that cost (a backtest's as_deployment_cost_usd measures it; it is not "
                     "subtracted again there either)")
    if estimated:
        notes.append(f"{estimated} interval-product(s) whose award changed inside the interval without a hold-short "
                     f"record: reserve held estimated from the metered load (load less every unit's idle draw)")
    if commanded:
        notes.append(f"{commanded} interval(s) with an award whose reserve hold the loop checked against the "
                     "commanded fleet, not the load measured as drawn (no telemetry then, or a trail written "
                     "before the metered check): where the award was constant, its hold-short records stand")
    if partly:
        notes.append(f"{partly} interval(s) with an award whose reserve hold the loop checked partly metered: "
                     f"{unreported} running unit-interval(s) without telemetry counted as drawing their commanded "
                     "mode (the units that reported counted as measured)")
    if unverified_h > 0:
        notes.append(f"{_r(unverified_usd, 2)} $ of the reserve payment is for {_r(unverified_h, 3)} h of award time "
                     "no measurement record covers (the controller was down or not yet started): the reserve "
                     "held then is not evidenced (reserve_unverified_payment_usd)")
    if windows and provisional > 0:
        notes.append(f"reserve money after {_iso(final)} is not final (reserve_provisional_payment_usd "
                     f"{_r(provisional, 2)} $ of the payment): its clawback records may not be written yet")
    return {"reserve_payment_usd": _r(payment, 4), "reserve_clawback_usd": _r(clawback, 4),
            "reserve_revenue_usd": _r(payment - clawback, 4), "reserve_final_through": _iso(final_through),
            "reserve_provisional_payment_usd": _r(provisional, 4),
            "reserve_estimated_hold_intervals": estimated,
            "reserve_unverified_payment_usd": _r(unverified_usd, 4), "reserve_unverified_hold_h": _r(unverified_h, 4),
            "notes": notes}
