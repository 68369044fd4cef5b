"""Demand-response performance per event, the way a utility settles it (pure functions).

For every DR event in force during the period (its latest accepted terms; a cancellation ends it
at its receipt; events never accepted are listed if received in the period, with the reasons):

Timeline (UTC in JSON, seconds as numbers)
    ``notification_at``: first receipt of an accepted message for the event (``dr_event``
    ``received_at``); ``deployment_at`` = max(start, notification): when the obligation begins;
    ``ack_at``/``ack_s``: the ``dr_ack`` of the accepted modification, seconds after notification;
    ``first_setpoint_at``/``first_setpoint_s``: the first ``setpoints`` batch recorded at or after
    deployment, seconds after deployment; ``metered_under_limit_by``/``metered_under_limit_s``:
    the end of the first interval from deployment on whose *metered* mean import is at or under
    the limit (+ tolerance), seconds after deployment — an UPPER BOUND at one interval's resolution
    (``metered_resolution_s``) — unless the trail holds ``meter_sample`` records (the live loop
    writes them, up to one a second, while an event is in force: the site meter's reading, or the
    sum of miner telemetry), in which case it is the first sample at or under the limit, in seconds
    (``metered_crossing_source`` says which).

Baseline (see :mod:`hashflex.report.baseline`)
    The event's own ``baseline_kw`` if the utility sent one; else ERCOT middle-8-of-10 like days
    (event-day adjusted) if the trail holds ten like days; else the meter-before-event mean; else
    the measurement's ``dr_baseline_kw``; else none. Both computed baselines are given per interval
    whenever computable (``baseline_m8of10_kw``, ``baseline_meter_before_kw``).

Per interval
    obligated kW: the event's ``shed_kw`` for a load-reduction event, else max(baseline − limit, 0);
    delivered kW = baseline − metered import, MW delivered = kW / 1000, MWh = MW × interval hours;
    compliant when metered import ≤ limit + tolerance. Intervals that start before deployment +
    the programme's ramp time are not assessed (ERS-10: 10 min, ERS-30: 30 min; from the
    programme name ``ERS-<minutes>``; other programmes: none).

Pass/fail (``rule`` names which applied)
    Import-limit events (a firm level, as ERCOT's "firm service level" type): pass when every
    assessed interval is compliant. Load-reduction events (``shed_kw``): event performance factor
    = Σ delivered / Σ obligated over the assessed intervals; pass at ≥ :data:`PASS_FACTOR` (ERCOT
    Nodal Protocols Section 8.1.3.1, performance evaluation of ERS Resources, uses an event
    performance factor with a 0.95 threshold). No assessed interval, or no baseline for a
    reduction event: ``pass`` is null and ``rule`` says why.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from hashflex.report.baseline import meter_before_event, middle_8_of_10
from hashflex.report.provenance import synthetic_event

__all__ = ["PASS_FACTOR", "event_terms", "events_performance", "ramp_minutes", "settlement_rows"]

PASS_FACTOR = 0.95
SETTLEMENT_COLUMNS = ["event_id", "interval_start_utc", "interval_end_utc", "interval_start_local", "interval_h",
                      "limit_kw", "baseline_kw", "baseline_method", "baseline_m8of10_kw", "baseline_meter_before_kw",
                      "metered_import_kw", "metered_import_kwh", "obligated_kw", "delivered_kw", "delivered_mw",
                      "delivered_mwh", "assessed", "compliant", "simulated"]


def _ts(text: Any) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


def _r(x: float | None, digits: int = 3) -> float | None:
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def ramp_minutes(program: str | None) -> int:
    """Ramp allowance of the programme: ``ERS-10`` → 10, ``ERS-30`` → 30, anything else 0.

    Parameters
    ----------
    program : str or None
        The DR programme name.

    Returns
    -------
    int
        Minutes after the obligation begins that are not assessed.
    """
    match = re.match(r"^ERS-(\d+)", str(program or ""), re.IGNORECASE)
    return int(match.group(1)) if match else 0


def _event_id(rec: Mapping[str, Any]) -> str:
    event = rec.get("event")
    if isinstance(event, Mapping) and event.get("event_id"):
        return str(event["event_id"])
    match = re.search(r'"event_id"\s*:\s*"([^"]{1,200})"', str(rec.get("payload_preview") or ""))
    return match.group(1) if match else "(unreadable message)"


def event_terms(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per event id: latest accepted terms, first accepted receipt, cancellation, messages,
    duplicates and rejection reasons. Rejected messages never change the terms.

    Parameters
    ----------
    records : sequence of Mapping
        Decoded ``dr_event`` records in chain order.

    Returns
    -------
    dict of str to dict
    """
    events: dict[str, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r["seq"]):
        eid = _event_id(rec)
        received = _ts(rec.get("received_at")) or rec["at"]
        entry = events.setdefault(eid, {"event_id": eid, "first_received_at": received, "notification_at": None,
                                        "terms": None, "limit_kw": None, "cancelled_at": None, "messages": 0,
                                        "duplicates": 0, "accepted": False, "rejections": [],
                                        "modification_number": None})
        entry["messages"] += 1
        if rec.get("duplicate"):
            entry["duplicates"] += 1
            continue
        if not rec.get("accepted") or not isinstance(rec.get("event"), Mapping):
            entry["rejections"].append(str(rec.get("reason")))
            continue
        event = rec["event"]
        entry["accepted"] = True
        if entry["notification_at"] is None:
            entry["notification_at"] = received
        if event.get("cancelled"):
            entry["cancelled_at"] = received
        else:
            entry["terms"], entry["limit_kw"] = event, rec.get("limit_kw")
            entry["modification_number"] = event.get("modification_number")
    return events


def _in_force_days(events: Mapping[str, Mapping[str, Any]], tz: ZoneInfo) -> set[dt.date]:
    days: set[dt.date] = set()
    for entry in events.values():
        terms = entry["terms"]
        if terms is None or terms.get("start") is None:
            continue
        start = _ts(terms["start"])
        end = _ts(terms.get("end")) or start + pd.Timedelta(hours=4)
        day = start.tz_convert(tz).date()
        while day <= (end - pd.Timedelta(microseconds=1)).tz_convert(tz).date():
            days.add(day)
            day += dt.timedelta(days=1)
    return days


def events_performance(m: pd.DataFrame, history: pd.DataFrame, dr_events: Sequence[Mapping[str, Any]],
                       dr_acks: Sequence[Mapping[str, Any]], setpoints: Sequence[Mapping[str, Any]],
                       period_start: pd.Timestamp, period_end: pd.Timestamp, tz: str, *,
                       tolerance_kw: float = 0.0, simulated: bool = False,
                       meter_samples: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Every event's performance (see the module docstring). ``m``: the period's measurements;
    ``history``: every measurement in the trail (baselines look back before the period).

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements.
    history : pd.DataFrame
        Every measurement of the trail (deduplicated).
    dr_events, dr_acks, setpoints : sequence of Mapping
        Decoded ``dr_event``, ``dr_ack`` and ``setpoints`` records.
    period_start, period_end : pd.Timestamp
        The report period, UTC, half-open.
    tz : str
        The site's time zone.
    tolerance_kw : float
        kW an interval may be over the limit and still comply.
    simulated : bool
        The trail is simulated (every event is then labelled so).
    meter_samples : sequence of Mapping
        Decoded ``meter_sample`` records (second-resolution crossing times).

    Returns
    -------
    list of dict
        One entry per event: timeline, baselines, per-interval settlement rows, pass/fail.
    """
    zone = ZoneInfo(tz)
    terms_by_id = event_terms(dr_events)
    excluded = _in_force_days(terms_by_id, zone)
    out = []
    for eid, entry in terms_by_id.items():
        row: dict[str, Any] = {"event_id": eid, "synthetic": synthetic_event(eid) or simulated,
                               "accepted": entry["accepted"], "messages": entry["messages"],
                               "duplicates": entry["duplicates"], "rejections": entry["rejections"]}
        terms = entry["terms"]
        if terms is None:
            if period_start <= entry["first_received_at"] < period_end:
                row["notification_at"] = entry["first_received_at"].isoformat()
                out.append(row)
            continue
        start = _ts(terms["start"])
        end = _ts(terms.get("end")) or period_end
        if entry["cancelled_at"] is not None:
            end = min(end, max(entry["cancelled_at"], start))
        if end <= period_start or start >= period_end:
            continue
        row.update(_one_event(m, history, entry, terms, start, end, dr_acks, setpoints, tz, excluded,
                              tolerance_kw))
        row.update(_crossing_from_samples(row, meter_samples, start, end, tolerance_kw))
        out.append(row)
    return out


def _one_event(m: pd.DataFrame, history: pd.DataFrame, entry: Mapping[str, Any], terms: Mapping[str, Any],
               start: pd.Timestamp, end: pd.Timestamp, dr_acks: Sequence[Mapping[str, Any]],
               setpoints: Sequence[Mapping[str, Any]], tz: str, excluded: set[dt.date],
               tolerance_kw: float) -> dict[str, Any]:
    eid = entry["event_id"]
    notified = entry["notification_at"]
    deployed = max(start, notified)
    limit = entry["limit_kw"]
    lim = math.inf if limit is None else float(limit)
    shed = terms.get("shed_kw")
    sel = m[(m["interval_start"] < end) & (m["interval_end"] > start)].reset_index(drop=True)
    step_h = float(sel["interval_h"].iloc[0]) if len(sel) else (float(m["interval_h"].median()) if len(m) else None)
    starts = list(sel["interval_start"])
    anchor = min(notified, start)
    m8 = middle_8_of_10(history, starts, tz, excluded_days=excluded, adjust_anchor=anchor, interval_h=step_h)
    before = meter_before_event(history, anchor, len(starts))
    given = terms.get("baseline_kw")
    if given is not None:
        chosen, method = [float(given)] * len(starts), "given by the event"
    elif m8.ok:
        chosen, method = m8.per_interval_kw, m8.method
    elif before.ok:
        chosen, method = before.per_interval_kw, before.method
    else:
        recorded = [None if v is None or not math.isfinite(v) else float(v) for v in sel["dr_baseline_kw"]]
        chosen, method = recorded, ("recorded with the measurement" if any(v is not None for v in recorded)
                                    else "none")
    ramp = ramp_minutes(terms.get("program"))
    assess_from = deployed + pd.Timedelta(minutes=ramp)
    intervals = []
    for i, r in enumerate(sel.itertuples()):
        base = chosen[i] if i < len(chosen) else None
        metered = None if r.import_kw is None or not math.isfinite(r.import_kw) else float(r.import_kw)
        if shed is not None:
            obligated = float(shed)
        elif base is not None and math.isfinite(lim):
            obligated = max(base - lim, 0.0)
        else:
            obligated = None
        delivered = base - metered if base is not None and metered is not None else None
        intervals.append({
            "interval_start": r.interval_start.isoformat(), "interval_end": r.interval_end.isoformat(),
            "interval_h": float(r.interval_h), "limit_kw": _r(limit, 1), "baseline_kw": _r(base, 1),
            "baseline_method": method, "baseline_m8of10_kw": _r(m8.per_interval_kw[i], 1),
            "baseline_meter_before_kw": _r(before.per_interval_kw[i], 1),
            "metered_import_kw": _r(metered, 1),
            "metered_import_kwh": _r(metered * r.interval_h, 1) if metered is not None else None,
            "obligated_kw": _r(obligated, 1), "delivered_kw": _r(delivered, 1),
            "delivered_mw": _r(delivered / 1000.0, 4) if delivered is not None else None,
            "delivered_mwh": _r(delivered * r.interval_h / 1000.0, 4) if delivered is not None else None,
            "assessed": bool(r.interval_start >= assess_from),
            "compliant": bool(metered is not None and metered <= lim + tolerance_kw)})
    assessed = [i for i in intervals if i["assessed"]]
    ok = sum(i["compliant"] for i in assessed)
    with_base = [i for i in assessed if i["obligated_kw"] is not None and i["delivered_kw"] is not None]
    obligated_kwh = sum(i["obligated_kw"] * i["interval_h"] for i in with_base)
    delivered_kwh = sum(i["delivered_kw"] * i["interval_h"] for i in with_base)
    factor = delivered_kwh / obligated_kwh if obligated_kwh > 0 else None
    if not assessed:
        passed, rule = None, "no assessed interval in the period"
    elif shed is not None:
        if factor is None:
            passed, rule = None, "load-reduction event without a baseline: cannot assess"
        else:
            passed = factor >= PASS_FACTOR
            rule = f"event performance factor (delivered ÷ obligated) ≥ {PASS_FACTOR:.2f}"
    else:
        passed = ok == len(assessed)
        rule = "metered import at or under the limit in every assessed interval"
    first_ok = next((i for i in intervals if i["compliant"] and pd.Timestamp(i["interval_end"]) > deployed), None)
    ack = next((a for a in dr_acks if a.get("event_id") == eid
                and a.get("modification_number") == entry.get("modification_number")), None)
    batch = next((s for s in sorted(setpoints, key=lambda s: s["seq"]) if s["at"] >= deployed), None)
    ack_at = _ts(ack.get("acked_at")) if ack else None
    worst = max([i["metered_import_kw"] - float(i["limit_kw"]) for i in intervals
                 if i["limit_kw"] is not None and i["metered_import_kw"] is not None], default=0.0)
    return {
        "program": terms.get("program"), "issuer": terms.get("issuer"),
        "modification_number": entry.get("modification_number"),
        "start": start.isoformat(), "end": end.isoformat(),
        "cancelled_at": entry["cancelled_at"].isoformat() if entry["cancelled_at"] is not None else None,
        "limit_kw": _r(limit, 1), "shed_kw": _r(shed, 1),
        "notification_at": notified.isoformat(), "deployment_at": deployed.isoformat(),
        "ack_at": ack_at.isoformat() if ack_at is not None else None,
        "ack_status": ack.get("status") if ack else None,
        "ack_s": _r((ack_at - notified).total_seconds()) if ack_at is not None else None,
        "first_setpoint_at": batch["at"].isoformat() if batch else None,
        "first_setpoint_source": batch.get("source") if batch else None,
        "first_setpoint_s": _r((batch["at"] - deployed).total_seconds()) if batch else None,
        "metered_under_limit_by": first_ok["interval_end"] if first_ok else None,
        "metered_under_limit_s": _r((pd.Timestamp(first_ok["interval_end"]) - deployed).total_seconds())
        if first_ok else None,
        "metered_resolution_s": _r(step_h * 3600.0) if step_h else None,
        "baseline_method": method,
        "baselines": {"m8of10": m8.to_json(), "meter_before": before.to_json()},
        "ramp_minutes": ramp, "intervals": len(intervals), "assessed_intervals": len(assessed),
        "compliant_intervals": ok, "compliance_pct": _r(100.0 * ok / len(assessed), 1) if assessed else None,
        "obligated_reduction_kw": _r(obligated_kwh / sum(i["interval_h"] for i in with_base), 1) if with_base else None,
        "delivered_reduction_kw": _r(delivered_kwh / sum(i["interval_h"] for i in with_base), 1) if with_base else None,
        "delivered_mwh": _r(delivered_kwh / 1000.0, 4) if with_base else None,
        "event_performance_factor": _r(factor, 4),
        "pass": passed, "rule": rule,
        "worst_excess_kw": _r(max(worst, 0.0), 1),
        "per_interval": intervals,
    }


def _crossing_from_samples(row: Mapping[str, Any], samples: Sequence[Mapping[str, Any]], start: pd.Timestamp,
                           end: pd.Timestamp, tolerance_kw: float) -> dict[str, Any]:
    """With ``meter_sample`` records (the loop writes them at up to one a second while an event is
    in force), the time the metered import first fell to the limit is measured, not bounded:
    ``metered_under_limit_by``/``_s`` become that sample's time and its seconds after deployment,
    ``metered_resolution_s`` the largest gap between samples up to it, ``metered_crossing_source``
    the sample source (site meter or telemetry). Without samples the interval bound stays."""
    limit = row.get("limit_kw")
    deployed = _ts(row.get("deployment_at"))
    if limit is None or deployed is None:
        return {}
    inside = sorted((s for s in samples if deployed - pd.Timedelta(minutes=5) <= s["at"] < end
                     and s.get("import_kw") is not None), key=lambda s: s["at"])
    after = [s for s in inside if s["at"] >= deployed]
    hit = next((s for s in after if float(s["import_kw"]) <= float(limit) + tolerance_kw), None)
    if hit is None:
        return {"meter_samples": len(after)} if after else {}
    upto = [s["at"] for s in inside if s["at"] <= hit["at"]]
    gaps = [(b - a).total_seconds() for a, b in zip(upto, upto[1:])]
    return {"metered_under_limit_by": hit["at"].isoformat(),
            "metered_under_limit_s": _r(max((hit["at"] - deployed).total_seconds(), 0.0)),
            "metered_resolution_s": _r(max(gaps, default=0.0)),
            "metered_crossing_source": hit.get("source"), "meter_samples": len(after)}


def settlement_rows(event: Mapping[str, Any], tz: str, *, simulated: bool) -> list[dict[str, Any]]:
    """The settlement CSV rows of one event (:data:`SETTLEMENT_COLUMNS`): UTC and site-local times.

    Parameters
    ----------
    event : Mapping
        One entry of :func:`events_performance`.
    tz : str
        The site's time zone.
    simulated : bool
        Label every row simulated.

    Returns
    -------
    list of dict
    """
    from hashflex.report.provenance import local_label

    rows = []
    for i in event.get("per_interval") or []:
        rows.append({"event_id": event["event_id"], "interval_start_utc": i["interval_start"],
                     "interval_end_utc": i["interval_end"],
                     "interval_start_local": local_label(i["interval_start"], tz),
                     **{k: i.get(k) for k in SETTLEMENT_COLUMNS[4:-1]},
                     "simulated": bool(simulated or event.get("synthetic"))})
    return rows
