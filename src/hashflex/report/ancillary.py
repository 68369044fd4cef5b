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

Figures, per deployment issued in the report period (units in the key names):

- ``deployed_mw`` = the deployment's ``deployed_kw`` / 1000 (the reduction asked);
- ``awarded_mw`` = Σ ``reserve_kw`` / 1000 of the accepted awards of the same product in force at
  the instruction (the latest accepted revision of each award recorded before the deployment);
- ``delivered_mw`` = (``baseline_kw`` − ``commanded_import_kw``) / 1000; ``shortfall_mw`` =
  max(``commanded_import_kw`` − ``limit_kw``, 0) / 1000; ``delivered_vs_awarded_pct`` =
  100 · delivered / awarded; ``response_s`` = ``commanded_after_s``; ``within_deadline`` whether
  the cut was commanded by the deadline (ERCOT Nodal Protocols §6.5.7.6.2: RRS and ECRS within
  10 minutes, Non-Spin within 30; ``profile.AS_PRODUCT_RULES``);
- metered, from ``measurement`` records: the deployment is in force from the instruction until
  the recall, else for the product's sustain duration; intervals starting at or after the
  deadline and before that end are assessed, each against the limit in force over it
  (:mod:`hashflex.report.deployment_limit`: the ack's limit plus the rise in reserve awarded since
  the instruction, the rule the loop, the guard and the backtest enforce): ``metered_import_kw`` =
  their h-weighted mean import, ``metered_limit_kw`` their h-weighted mean limit,
  ``metered_delivered_mw`` = (baseline − metered import) / 1000, ``metered_shortfall_mw`` = the
  h-weighted mean of max(import − limit, 0) / 1000 (the backtest's ``as_deployment_short_kw`` over
  the same intervals); ``metered_under_limit_by`` = the end of the first
  interval in force whose mean import is at or under its limit, and ``metered_response_s`` the
  time from the instruction to it (an upper bound: the trail holds one mean per interval). Null
  when no measurement covers the deployment;
- ``measured_response_s`` / ``measured_within_deadline``: from the site meter's (or summed telemetry's)
  individual readings, recorded by the loop in a later ``as_performance`` record: the time from the
  instruction to the first reading at or under the limit, and whether that was by the deadline (null
  until such a reading arrived).
- ``arrived_late`` / ``arrival_delay_s``: the deployment reached the site after its deadline / seconds
  from the instruction to its arrival (``control.as_intake.deployment_flags``); every response time
  above counts from the instruction, as ERCOT counts it, so a late one is never within its deadline;
- ``above_award_mw``: MW of the product deployed at the instruction beyond its awards then (obeyed in
  full); ``award_obligation_mw`` the deployment's MW less that, ``award_shortfall_mw`` what the
  commanded import is over baseline − that obligation (null on a trail written before these flags).

Money (:func:`reserve_money`, in the ``economics`` section): ``reserve_payment_usd`` = Σ over every
accepted revision of every award of ``reserve_kw`` / 1000 × its ``price_usd_mw_h`` × the hours of its
window inside the report period and before the next accepted revision of the same ``award_id`` was
recorded (the loop held each revision until the next replaced it; a withdrawal, ``reserve_kw`` 0,
ends the payment but not what was in force before it: issue 15, a live award withdrawn at 06:00 was
paid $0 for 05:00–06:00 while its hold shortfall then was charged). ERCOT pays a DAM AS award at its
MCPC per MW per hour, NP4-181-ER; ``reserve_clawback_usd`` = Σ over the
``reserve_hold_short`` records of intervals starting in the period (the latest per interval and
product) of :func:`hashflex.control.ancillary.reserve_clawback_usd` (``short_kw`` / 1000 × the
awards' ``price_usd_mw_h`` × ``interval_h``): reserve awarded and not held by running, sheddable,
qualified load, the failure to provide that ERCOT's settlement charges (Nodal Protocols §6.4.9.1.3,
§6.7.3; that function's docstring). The backtest settles with the same function on the same
numbers (the loop writes the records), so a backtest database's report equals its summary to the
cent. A deployment's metered shortfall is a performance figure (§8.1.1.4), reported per deployment
above, not charged; ``reserve_revenue_usd`` = payment − clawback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from hashflex.control.ancillary import reserve_clawback_usd
from hashflex.profile import AS_PRODUCT_RULES
from hashflex.report.deployment_limit import awards_known_before, deployment_limit_kw
from hashflex.report.inputs import ReportInputs, _r

__all__ = ["AWARD_COLUMNS", "DEPLOYMENT_COLUMNS", "ancillary_figures", "reserve_money"]

DEPLOYMENT_COLUMNS = ["deployment_id", "product", "issued_at", "accepted", "deployed_mw", "awarded_mw", "delivered_mw",
                      "delivered_vs_awarded_pct", "shortfall_mw", "response_s", "deadline", "within_deadline",
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


def _awarded_kw(awards: list[dict[str, Any]], product: str, at: pd.Timestamp, before_seq: int) -> float:
    """kW of ``product`` awarded and in force at ``at``, from accepted award records before ``before_seq``."""
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(awards, key=lambda r: r["seq"]):
        message = record["message"]
        if record["seq"] < before_seq and _accepted(record) and message.get("award_id"):
            latest[message["award_id"]] = message
    total = 0.0
    for message in latest.values():
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        if message.get("product") == product and start is not None and end is not None and start <= at < end:
            total += float(message.get("reserve_kw") or 0.0)
    return total


def _metered(history: pd.DataFrame | None, issued: pd.Timestamp, deadline: pd.Timestamp, until: pd.Timestamp,
             baseline_kw: float | None, limit_kw: float | None, tolerance_kw: float,
             awards: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"metered_intervals": 0, "metered_import_kw": None, "metered_limit_kw": None,
                           "metered_delivered_mw": None, "metered_shortfall_mw": None,
                           "metered_under_limit_by": None, "metered_response_s": None}
    if history is None or history.empty or limit_kw is None:
        return out
    rows = history[history["import_kw"].notna() & (history["interval_start"] < until)
                   & (history["interval_end"] > issued)].sort_values("interval_start").copy()
    # Each interval against the limit in force over it: it rises with reserve awarded since the
    # instruction (report.deployment_limit, the loop's, the guard's and the backtest's rule).
    rows["limit_kw"] = [
        deployment_limit_kw(float(limit_kw), issued.to_pydatetime(),
                            awards_known_before(awards or [], end), start.to_pydatetime(), end.to_pydatetime())
        for start, end in zip(rows["interval_start"], rows["interval_end"], strict=True)]
    under = rows[rows["import_kw"] <= rows["limit_kw"] + tolerance_kw]
    if len(under):
        crossing = under["interval_end"].iloc[0]
        out["metered_under_limit_by"] = crossing.isoformat()
        out["metered_response_s"] = _r((crossing - issued).total_seconds())
    assessed = rows[rows["interval_start"] >= deadline]
    hours = float(assessed["interval_h"].sum())
    if hours > 0:
        import_kw = float((assessed["import_kw"] * assessed["interval_h"]).sum() / hours)
        short_kw = float(((assessed["import_kw"] - assessed["limit_kw"]).clip(lower=0.0)
                          * assessed["interval_h"]).sum() / hours)
        out["metered_intervals"] = len(assessed)
        out["metered_import_kw"] = _r(import_kw)
        out["metered_limit_kw"] = _r(float((assessed["limit_kw"] * assessed["interval_h"]).sum() / hours))
        out["metered_shortfall_mw"] = _r(short_kw / 1000.0)
        if baseline_kw is not None:
            out["metered_delivered_mw"] = _r((baseline_kw - import_kw) / 1000.0)
    return out


def _mw(kw: Any) -> float | None:
    return None if kw is None else _r(float(kw) / 1000.0)


def _deployment_row(record: dict[str, Any], inputs: ReportInputs, performance: Mapping[str, Any] | None,
                    recalled_at: pd.Timestamp | None, tolerance_kw: float) -> dict[str, Any]:
    message, ack = record["message"], record["ack"]
    product = str(message.get("product"))
    issued = _stamp(message.get("issued_at")) or record["at"]
    rules = AS_PRODUCT_RULES.get(product, {})
    deadline = _stamp(ack.get("deadline")) or issued + pd.Timedelta(seconds=float(rules.get("deadline_s", 0.0)))
    until = issued + pd.Timedelta(hours=float(rules.get("sustain_h", 0.0)))
    if recalled_at is not None:
        until = min(until, recalled_at)
    awarded_kw = _awarded_kw(inputs.as_awards, product, issued, record["seq"])
    perf = performance or {}
    baseline, limit = perf.get("baseline_kw"), perf.get("limit_kw", ack.get("import_limit_kw"))
    delivered = perf.get("delivered_kw")
    shortfall = perf.get("shortfall_kw")
    row = {
        "deployment_id": message.get("deployment_id"), "product": product, "issuer": message.get("issuer"),
        "issued_at": issued.isoformat(), "accepted": _accepted(record), "reason": ack.get("reason"),
        "deployed_mw": _r(float(message.get("deployed_kw") or 0.0) / 1000.0),
        "awarded_mw": _r(awarded_kw / 1000.0),
        "deadline": deadline.isoformat(), "deadline_s": _r((deadline - issued).total_seconds()),
        "recalled_at": _iso(recalled_at),
        "baseline_kw": _r(baseline), "limit_kw": _r(limit), "commanded_import_kw": _r(perf.get("commanded_import_kw")),
        "delivered_mw": None if delivered is None else _r(float(delivered) / 1000.0),
        "shortfall_mw": None if shortfall is None else _r(float(shortfall) / 1000.0),
        "delivered_vs_awarded_pct": (_r(100.0 * float(delivered) / awarded_kw)
                                     if delivered is not None and awarded_kw > 0 else None),
        "response_s": _r(perf.get("commanded_after_s")),
        "within_deadline": perf.get("commanded_within_deadline"),
        # From the site meter's (or telemetry's) readings: the first at or under the limit (seconds).
        "measured_response_s": _r(perf.get("measured_response_s")),
        "measured_within_deadline": perf.get("measured_within_deadline"),
        # Late or above the award (the loop's flags, in the performance record and the ack).
        "arrived_late": perf.get("late", ack.get("late")),
        "arrival_delay_s": _r(perf.get("arrival_delay_s")),
        "above_award_mw": _mw(perf.get("above_award_kw", ack.get("above_award_kw"))),
        "award_obligation_mw": _mw(perf.get("award_obligation_kw")),
        "award_shortfall_mw": _mw(perf.get("award_shortfall_kw")),
    }
    metered = (_metered(inputs.history, issued, deadline, until, baseline, limit, tolerance_kw, inputs.as_awards)
               if performance
               else _metered(None, issued, deadline, until, None, None, tolerance_kw))
    row.update(metered)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def ancillary_figures(inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp, *,
                      tolerance_kw: float = 0.0) -> dict[str, Any]:
    """The report's ``ancillary`` section: every AS deployment issued in the period and the awards.

    Parameters
    ----------
    inputs : ReportInputs
        Decoded audit records (``as_awards``, ``as_deploys``, ``as_performance``, ``history``).
    period_start, period_end : pd.Timestamp
        The report period, UTC, half-open; a deployment belongs to it by its instruction time
        (``issued_at``), an award when its window overlaps the period.
    tolerance_kw : float
        kW a metered interval mean may be over the limit and still count as under it.

    Returns
    -------
    dict
        ``deployment_count``, ``accepted_count``, ``shortfall_count`` (deployments with a commanded
        or metered shortfall), ``late_count`` (cut not commanded by the deadline), ``late_arrival_count``
        (arrived after it), ``above_award_count`` (asked more than the award in force), ``deployments``
        (one row per deployment, the keys of the module docstring, in instruction order),
        ``awards`` (one row per award message), ``notes``.
    """
    performance = {p.get("deployment_id"): p for p in sorted(inputs.as_performance, key=lambda p: p["seq"])}
    recalls: dict[str, pd.Timestamp] = {}
    firsts: dict[str, dict[str, Any]] = {}
    for record in sorted(inputs.as_deploys, key=lambda r: r["seq"]):
        message = record["message"]
        deployment_id = message.get("deployment_id")
        if message.get("recalled"):
            if _accepted(record) and deployment_id not in recalls:
                recalls[deployment_id] = _stamp(message.get("issued_at")) or record["at"]
            continue
        held = firsts.get(deployment_id)
        if held is None or (not _accepted(held) and _accepted(record)):
            firsts[deployment_id] = record
    rows = []
    for deployment_id, record in firsts.items():
        issued = _stamp(record["message"].get("issued_at")) or record["at"]
        if period_start <= issued < period_end:
            rows.append(_deployment_row(record, inputs, performance.get(deployment_id) if _accepted(record) else None,
                                        recalls.get(deployment_id), tolerance_kw))
    rows.sort(key=lambda r: (r["issued_at"], str(r["deployment_id"])))
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
    short = [r for r in rows if (r["shortfall_mw"] or 0.0) > 0 or (r["metered_shortfall_mw"] or 0.0) > 0]
    notes = []
    if rows:
        notes.append("response_s is the time from the instruction to the cut the fast path commanded; metered "
                     "figures come from the interval means of the measurement records, so metered_response_s is "
                     "an upper bound at interval resolution")
    if any(r["arrived_late"] for r in rows):
        notes.append("a deployment that arrived after its deadline was cut at once; its response still counts "
                     "from the instruction (arrival_delay_s is the part before it reached the site)")
    if any((r["above_award_mw"] or 0.0) > 0 for r in rows):
        notes.append("a deployment above the award was obeyed in full; award_shortfall_mw measures it against "
                     "the award in force")
    return {
        "deployment_count": len(rows),
        "accepted_count": sum(1 for r in rows if r["accepted"]),
        "shortfall_count": len(short),
        "late_count": sum(1 for r in rows if r["within_deadline"] is False),
        "late_arrival_count": sum(1 for r in rows if r["arrived_late"] is True),
        "above_award_count": sum(1 for r in rows if (r["above_award_mw"] or 0.0) > 0),
        "deployments": rows,
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


def reserve_money(inputs: ReportInputs, period_start: pd.Timestamp, period_end: pd.Timestamp,
                  deployments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The reserve payment, clawback and net of the period, from the audit trail (module docstring).

    Parameters
    ----------
    inputs : ReportInputs
        Decoded audit records (``as_awards``, ``reserve_hold_short``).
    period_start, period_end : pd.Timestamp
        The report period, UTC, half-open.
    deployments : list of dict, optional
        The ``deployments`` rows of :func:`ancillary_figures`; not charged (a deployment's shortfall
        is a performance figure), accepted for the callers that pass them.

    Returns
    -------
    dict
        ``reserve_payment_usd``, ``reserve_clawback_usd``, ``reserve_revenue_usd`` ($; 0.0 without
        awards).
    """
    payment = 0.0
    for message, held_from, superseded in _award_revisions(inputs.as_awards):
        start, end = _stamp(message.get("start")), _stamp(message.get("end"))
        price = message.get("price_usd_mw_h")
        if start is None or end is None or price is None:
            continue
        if held_from is not None:
            start = max(start, pd.Timestamp(held_from))
        if superseded is not None:
            end = min(end, pd.Timestamp(superseded))
        hours = (min(end, period_end) - max(start, period_start)).total_seconds() / 3600.0
        if hours > 0:
            payment += float(message.get("reserve_kw") or 0.0) / 1000.0 * float(price) * hours
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted(inputs.reserve_hold_short, key=lambda r: r["seq"]):
        start = _stamp(record.get("interval_start"))
        if start is not None and period_start <= start < period_end:
            latest[str(record.get("interval_start")), str(record.get("product"))] = record
    clawback = 0.0
    for record in latest.values():
        price, short, hours = record.get("price_usd_mw_h"), record.get("short_kw"), record.get("interval_h")
        if price is not None and short is not None and hours is not None:
            clawback += reserve_clawback_usd(float(short), float(price), float(hours))
    return {"reserve_payment_usd": _r(payment, 4), "reserve_clawback_usd": _r(clawback, 4),
            "reserve_revenue_usd": _r(payment - clawback, 4)}
