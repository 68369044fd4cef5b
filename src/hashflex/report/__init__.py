"""Sustainability and demand-response reports, computed only from the audit trail.

``build_report(db, start, end, ...)`` reads the ``audit_log`` table of the store's database
(read-only), verifies the chain, decodes the records (:func:`figures.inputs_from_records`) and
computes every figure with the pure functions of :mod:`hashflex.report.figures` (definitions in its
docstring). The same database and period always give the same JSON (no generation time inside), so
anyone holding a copy of the database can reproduce the report. :mod:`hashflex.report.render`
writes it as HTML (self-contained, plots embedded), JSON, or CSV (``figure,value`` rows, the JSON
flattened with dotted keys and list indices). An optional RECs file is the only input from outside
the database; the report cites its SHA-256.

JSON keys (units in the names; null where a figure cannot be computed; times ISO UTC)
----------------------------------------------------------------------------------
Floats are rounded to what the instrument resolves (:data:`PRECISION`: dB(A) 0.1, MWh 0.001 = kWh,
$ 0.01, kW 0.1, % 0.1).

- ``report``: ``period_start``, ``period_end`` (half-open; default the whole trail), ``site``,
  ``timezone``, ``simulated``, ``provenance`` {``simulated``, ``basis`` (explicit | clock | reason |
  null), ``detail``} (:mod:`hashflex.report.provenance`), ``profile_hashes`` (every profile hash in
  force for a record of the period, by chain order), ``measurement_intervals``,
  ``superseded_measurements``, ``notes``, ``audit`` {``ok``, ``records``, ``head_seq``,
  ``head_hash``, ``first_bad_seq``, ``problem``, ``signed_head`` (null, or {``signature``, ``ok``,
  ``problem``, ``signed_seq``})}.
- ``energy``: ``intervals``, ``hours_covered``, ``grid_import_mwh``, ``load_mwh``,
  ``renewable_generation_mwh``, ``renewable_used_mwh``, ``renewable_share_annual_pct``,
  ``renewable_share_hourly_pct``.
- ``emissions`` (GHG Protocol Scope 2): ``grid_import_mwh``, ``location_based_kg``,
  ``location_intensity_sources`` {source: intervals}, ``intervals_recorded_intensity``,
  ``intervals_default_intensity``, ``market_based_kg``, ``market_method``, ``instruments`` [{``id``,
  ``kind``, ``source``, ``mwh_for_period``, ``mwh_applied``, ``emission_factor_kg_per_mwh``}],
  ``instruments_applied_mwh``, ``recs_mwh``, ``recs_applied_mwh``, ``recs_source``,
  ``residual_mix_kg_per_mwh``, ``residual_mix_source``, ``carbon_free_share_annual_pct``,
  ``carbon_free_share_hourly_pct``, ``hashrate_ph_h``, ``location_kg_per_ph_h``,
  ``market_kg_per_ph_h``, ``notes``, ``budget`` {``daily_budget_kg``, ``monthly_budget_kg``,
  ``used_kg``, ``limit_kg``, ``used_pct``, ``days_over``, ``per_day``, ``per_month``}.
- ``efficiency``: ``load_mwh``, ``hashrate_ph_h``, ``average_hashrate_ph_s``, ``average_j_per_th``.
- ``noise``: ``night_definition``, ``receptors`` {id: {``all``|``day``|``night``: {``hours``,
  ``measured_laeq_dba``, ``model_laeq_dba``, ``max_hourly_measured_dba``, ``lowest_cap_dba``,
  ``minutes_over_cap``, ``hours_over_cap``}, ``hourly``: [...]}}.
- ``demand_response``: ``tolerance_kw``, ``events`` (see :mod:`hashflex.report.dr_performance`:
  timeline, baselines, per-interval settlement rows, pass/fail), ``high_price`` {...}.
- ``ancillary``: ``covers_through_seq``, ``covers_through_at`` (the last record the report read),
  ``final_through`` (intervals after it may still have records queued by the daemon's writer:
  flagged ``final`` false; a finished backtest's trail, :data:`BACKTEST_RUN_END_KEY` at the head, is
  complete: ``trail_complete`` true, all final), ``qualification`` (a backtest's ``ASSUMED`` label, else null), ``provisional_interval_count``, ``deployment_count``, ``accepted_count``,
  ``cancelled_count``, ``shortfall_count``, ``late_count``, ``late_arrival_count``, ``above_award_count``,
  ``deployments`` [{``deployment_id``, ``product``, ``issued_at``, ``deployed_mw``, ``awarded_mw``,
  ``delivered_mw``, ``shortfall_mw``, ``response_s``, ``deadline``, ``within_deadline``, metered
  figures, ``arrived_late``, ``above_award_mw``, ...}], ``awards`` [...], ``notes``
  (:mod:`hashflex.report.ancillary`, issue 15).
- ``curtailment``: ``by_cause`` {cause: {``mwh``, ``hours``, ``intervals``}}, ``per_day``
  [{``day``, ``cause``, ``mwh``, ``hours``}], ``total_mwh``, ``total_hours``,
  ``intervals_without_full_load`` (:mod:`hashflex.report.curtailment`).
- ``economics``: ``revenue_usd``, ``energy_cost_usd``, ``reserve_payment_usd``, ``reserve_clawback_usd``,
  ``reserve_revenue_usd`` (AS awards at their price, less the clawback of reserve awarded and not
  held; a deployment's metered shortfall is reported, not charged:
  :func:`hashflex.report.ancillary.reserve_money`; payment and clawback weighted alike by the time each
  award revision was in force; ``reserve_final_through``, ``reserve_provisional_payment_usd``: the
  payment after the last final interval, ``reserve_estimated_hold_intervals``, ``reserve_unverified_payment_usd`` and
  ``reserve_unverified_hold_h``: award time no measurement record covers), ``profit_usd`` (revenue − energy cost + reserve
  revenue; start costs are not subtracted, unlike a backtest summary's profit), ``average_energy_cost_usd_per_mwh``,
  ``curtailment_hours`` (hours of intervals with any curtailment, not the summary's full-site
  ``curtailed_hours``), ``curtailed_mwh``, ``uncosted_intervals``, ``uncosted_hours``,
  ``uncosted_grid_import_mwh``, ``uncosted_revenue_usd`` (intervals without a real-time price: not
  costed, never at $0; ``energy_cost_usd``, ``profit_usd`` and the average cost exclude them), ``notes``.
- ``hourly``: per UTC hour: energy, ``location_kg``, ``location_kg_per_mwh``,
  ``intensity_source``, hashing, money (``energy_cost_usd`` of the priced intervals,
  ``uncosted_intervals``), ``price_usd_mwh``.
- ``intervals``: per measured interval (:func:`interval_rows`; exported by
  :mod:`hashflex.report.export` as ``intervals.csv``).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hashflex.audit import AuditError, AuditLog
from hashflex.report import figures as F
from hashflex.report.ancillary import ancillary_figures, reserve_money
from hashflex.report.curtailment import curtailment_figures, interval_causes
from hashflex.report.provenance import config_for_seq, provenance

__all__ = ["RecsInput", "apply_precision", "build_report", "load_recs", "report_from_records", "resolve_period",
           "trail_period"]

REPORT_KINDS = ("config", "measurement", "dr_event", "dr_ack", "dr_transition", "guard_action", "setpoints",
                "schedule", "meter_sample", "as_award", "as_deploy", "as_performance", "reserve_hold_short")
SECTIONS = ("report", "energy", "emissions", "efficiency", "noise", "demand_response", "ancillary", "curtailment",
            "economics", "hourly", "intervals")


@dataclass(frozen=True)
class RecsInput:
    """Renewable energy certificates for the period: ``mwh`` (pro rata to the period), an optional
    ``residual_mix_kg_per_mwh`` and ``source`` (the file's name and SHA-256).
    """

    mwh: float
    residual_mix_kg_per_mwh: float | None
    source: str


def load_recs(path: str | Path, start: pd.Timestamp, end: pd.Timestamp) -> RecsInput:
    """RECs retired for the site: CSV with ``mwh`` and optional ``period_start``, ``period_end``,
    ``residual_mix_kg_per_mwh``; or JSON ``{"recs": [{...}], "residual_mix_kg_per_mwh": x}``.
    A certificate with a period counts pro rata to its overlap with [start, end); without one, whole.

    Parameters
    ----------
    path : str or Path
        The RECs file (``.json``, else CSV).
    start, end : pd.Timestamp
        The report period, UTC, half-open.

    Returns
    -------
    RecsInput

    Raises
    ------
    ValueError
        The file has no ``mwh`` column.
    """
    path = Path(path)
    raw = path.read_bytes()
    residual = None
    if path.suffix.lower() == ".json":
        data = json.loads(raw)
        frame = pd.DataFrame(data.get("recs", []))
        residual = data.get("residual_mix_kg_per_mwh")
    else:
        frame = pd.read_csv(path)
        if "residual_mix_kg_per_mwh" in frame and frame["residual_mix_kg_per_mwh"].notna().any():
            residual = float(frame["residual_mix_kg_per_mwh"].dropna().iloc[0])
    if "mwh" not in frame:
        raise ValueError(f"{path}: RECs need an 'mwh' column")
    total = 0.0
    for row in frame.to_dict("records"):
        mwh = float(row["mwh"])
        p0, p1 = row.get("period_start"), row.get("period_end")
        if isinstance(p0, str) and isinstance(p1, str):
            a, b = pd.Timestamp(p0), pd.Timestamp(p1)
            a = a.tz_localize("UTC") if a.tzinfo is None else a
            b = b.tz_localize("UTC") if b.tzinfo is None else b
            overlap = (min(b, end) - max(a, start)).total_seconds()
            span = (b - a).total_seconds()
            mwh *= max(overlap, 0.0) / span if span > 0 else 0.0
        total += mwh
    digest = hashlib.sha256(raw).hexdigest()
    return RecsInput(total, None if residual is None else float(residual), f"{path.name} sha256:{digest}")


def interval_rows(m: pd.DataFrame, inputs: F.ReportInputs, *, simulated: bool) -> list[dict[str, Any]]:
    """One row per measured interval of the period (the per-interval export and the plots): the
    measurement, the import limit and its source from the plan that ran the interval (where no
    ``schedule`` record names it, as after a restart, the limit the loop recorded with the
    measurement; null on older trails without one), curtailed kW and its cause, the carbon intensity used.

    Parameters
    ----------
    m : pd.DataFrame
        The period's measurements (:attr:`ReportInputs.measurements`).
    inputs : ReportInputs
        The decoded records (configs, schedules, guard actions, noise).
    simulated : bool
        Label every row simulated.

    Returns
    -------
    list of dict
        JSON-safe (non-finite numbers are null).
    """
    if m.empty:
        return []
    intensity, source = F.intensity_used(m, inputs.configs)
    causes = interval_causes(m, inputs.schedules, inputs.guard_actions)
    plan: dict[pd.Timestamp, dict[str, Any]] = {}
    for rec in sorted(inputs.schedules, key=lambda r: r["seq"]):
        first = rec.get("first_row") or {}
        if first.get("interval_start"):
            plan[pd.Timestamp(first["interval_start"]).tz_convert("UTC")] = first
    noise = {}
    for r in inputs.noise.itertuples():
        noise.setdefault(r.interval_start, {})[r.receptor] = (r.measured_dba, r.cap_dba)
    rows = []
    for i, r in enumerate(m.itertuples()):
        first = plan.get(r.interval_start)
        if first is None:  # no plan ran it (a restart's partial interval): the book's, as measured
            first = {"import_limit_kw": getattr(r, "import_limit_kw", None),
                     "import_limit_source": getattr(r, "import_limit_source", None)}
        limit = first.get("import_limit_kw")
        # An unmeasured interval (no miner reported: load null) has no curtailment to explain (H9).
        measured = r.load_kw is not None and not pd.isna(r.load_kw)
        curtailed = (max((r.full_load_kw or 0.0) - r.load_kw, 0.0)
                     if measured and math.isfinite(r.full_load_kw) else None)
        row = {"interval_start": r.interval_start.isoformat(), "interval_end": r.interval_end.isoformat(),
               "interval_h": float(r.interval_h), "import_kw": r.import_kw, "renewable_kw": r.renewable_kw,
               "load_kw": r.load_kw, "full_load_kw": r.full_load_kw,
               "import_limit_kw": float(limit) if isinstance(limit, (int, float)) else None,
               "import_limit_source": first.get("import_limit_source"),
               "curtailed_kw": curtailed, "curtailment_cause": causes[i] if curtailed else None,
               "price_usd_mwh": r.price_usd_mwh, "location_kg_per_mwh": float(intensity.iloc[i]),
               "intensity_source": source.iloc[i], "hashrate_th_s": r.hashrate_th_s,
               "revenue_usd": r.revenue_usd,
               # Not costed without a price: the loop records 0.0 for it, which is not a cost of $0.
               "energy_cost_usd": r.energy_cost_usd if pd.notna(r.price_usd_mwh) else None, "simulated": simulated}
        for receptor, (measured, cap) in sorted(noise.get(r.interval_start, {}).items()):
            row[f"noise_{receptor}_dba"] = measured
            row[f"noise_cap_{receptor}_dba"] = cap
        rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return rows


def trail_period(records: list[Any]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """[first measured interval start, last measured interval end) of the trail (UTC), widened to
    every AS deployment's instruction time (``as_deploy`` ``message.issued_at``; the report lists a
    deployment by it, and a late one is issued before the site first measured: issue 15); without
    measurements, [first record, last record + 1 µs); None for an empty trail.

    Parameters
    ----------
    records : list of AuditRecord
        The trail's records.

    Returns
    -------
    tuple of (pd.Timestamp, pd.Timestamp) or None
    """
    starts, ends = [], []
    for rec in records:
        if rec.kind == "measurement" and rec.payload.get("interval_start"):
            s = pd.Timestamp(rec.payload["interval_start"]).tz_convert("UTC")
            starts.append(s)
            ends.append((s + pd.Timedelta(hours=float(rec.payload.get("interval_h") or 0.0))).round("us"))
    if not starts:
        stamps = [pd.Timestamp(r.at_utc).tz_convert("UTC") for r in records]
        if not stamps:
            return None
        return min(stamps), max(stamps) + pd.Timedelta(microseconds=1)
    for rec in records:
        message = rec.payload.get("message") if rec.kind == "as_deploy" else None
        accepted = (rec.payload.get("ack") or {}).get("status") == "accepted"  # a refused one held nothing
        if isinstance(message, dict) and message.get("issued_at") and not message.get("recalled") and accepted:
            try:
                issued = pd.Timestamp(message["issued_at"]).tz_convert("UTC")
            except (TypeError, ValueError):  # a malformed message was recorded as received; it has no period
                continue
            starts.append(issued)
            ends.append(issued + pd.Timedelta(microseconds=1))
    return min(starts), max(ends)


# decimals by the unit at the end of a key: what the instrument resolves (0.1 dB(A), kWh, $0.01)
PRECISION = (("_dba", 1), ("_usd_mwh", 2), ("_usd_per_mwh", 2), ("_usd", 2), ("_kg_per_mwh", 1), ("_mwh", 3),
             ("_kwh", 1), ("_kg_per_ph_h", 4), ("_kg", 1), ("_kw", 1), ("_mw", 4), ("_pct", 1))


def apply_precision(value: Any, key: str = "") -> Any:
    """Round every float leaf to the precision of its unit (from the key name); others unchanged.

    Parameters
    ----------
    value : Any
        A JSON value (dicts and lists are walked).
    key : str
        The key the value is under (its unit suffix picks the digits in :data:`PRECISION`).

    Returns
    -------
    Any
        The same structure with floats rounded.
    """
    if isinstance(value, dict):
        return {k: apply_precision(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [apply_precision(v, key) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        for suffix, digits in PRECISION:
            if key.endswith(suffix):
                return round(value, digits)
    return value


def report_from_records(records: list[Any], start: pd.Timestamp, end: pd.Timestamp, *, audit: dict[str, Any],
                        recs: RecsInput | None = None, high_price_usd_mwh: float = 100.0,
                        dr_tolerance_kw: float = 0.0, run_end: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every figure of the report from decoded audit records (pure).

    Parameters
    ----------
    records : list of AuditRecord
        The records of :data:`REPORT_KINDS`.
    start, end : pd.Timestamp
        The period, UTC, half-open.
    audit : dict
        The chain's verification result (``report.audit``).
    recs : RecsInput, optional
        RECs from a file.
    high_price_usd_mwh : float
        Threshold of the high-price curtailment figures, $/MWh.
    dr_tolerance_kw : float
        kW an interval may be over a DR or AS limit and still count as under it.
    run_end : mapping, optional
        A finished backtest's :data:`BACKTEST_RUN_END_KEY` value (None: a daemon's store). When its
        ``audit_head_seq`` is the trail's head, the trail is complete: every measured interval is
        final (nothing can still be queued: the run's writer was flushed and closed before it was
        written; H8 finding 6). Its ``as_qualification`` is stated in the notes (ASSUMED).

    Returns
    -------
    dict
        The report (JSON keys in the module docstring), rounded by :func:`apply_precision`.
    """
    inputs = F.inputs_from_records(records, start, end)
    m = inputs.measurements
    tz = F.site_timezone(inputs.configs)
    origin = provenance(records)
    # The profile in force for a record is the config chained before it (seq), not the latest by
    # time stamp: simulated and backtest trails stamp config with the wall clock (see provenance).
    hashes: set[str] = set()
    if inputs.configs:
        hashes |= {config_for_seq(inputs.configs, int(seq))["profile_hash"] for seq in m["seq"]}
        hashes |= {c["profile_hash"] for c in inputs.configs if start <= c["at"] < end}
        if not hashes:
            hashes.add(F.config_at(inputs.configs, start)["profile_hash"])
    hashes.discard(None)  # type: ignore[arg-type]
    notes = []
    if origin.simulated:
        notes.append(f"SIMULATED: {origin.detail}. Meters, sensors and any DR event here are simulated or "
                     f"synthetic; no figure of this report was measured at a real site.")
    if not audit["ok"]:
        notes.append(f"AUDIT CHAIN FAILED at seq {audit['first_bad_seq']}: {audit['problem']}")
    if not inputs.configs:
        notes.append("no config record: default carbon intensity, site timezone and budgets unknown (UTC used)")
    if m.empty:
        notes.append("no measurement records in the period")
    if inputs.superseded:
        notes.append(f"{inputs.superseded} measurement record(s) superseded by a later record for the same interval")
    site = (inputs.configs[-1]["profile"].get("site") or {}).get("name") if inputs.configs else None
    # What the report covers (issue 15: a store the daemon is still writing): the last committed record.
    head_seq = audit.get("head_seq") if audit.get("head_seq") is not None else (
        max(r.seq for r in records) if records else None)
    covered = [r for r in records if head_seq is None or r.seq <= head_seq]
    head_at = pd.Timestamp(max(covered, key=lambda r: r.seq).at_utc) if covered else None
    complete = False
    if run_end is not None:
        ended_seq = run_end.get("audit_head_seq")
        complete = bool(audit["ok"]) and ended_seq is not None and head_seq is not None and int(ended_seq) == head_seq
        notes.append(f"backtest trail: the run ended at record seq {ended_seq}; "
                     + ("the trail is complete, every measured interval is final" if complete else
                        f"the trail's head is seq {head_seq}: records after the run's end, finality judged as for a "
                        "daemon's store"))
        if run_end.get("as_qualification"):
            notes.append(f"AS qualification: {run_end['as_qualification']}")
    ancillary = ancillary_figures(inputs, start, end, tolerance_kw=dr_tolerance_kw, head_seq=head_seq,
                                  head_at=head_at, complete=complete,
                                  qualification=(run_end or {}).get("as_qualification"))
    report = {
        "report": {"period_start": start.isoformat(), "period_end": end.isoformat(), "site": site, "timezone": tz,
                   "simulated": origin.simulated, "provenance": origin.to_json(),
                   "profile_hashes": sorted(hashes), "measurement_intervals": int(len(m)),
                   "superseded_measurements": inputs.superseded, "notes": notes, "audit": audit},
        "energy": F.energy_figures(m),
        "emissions": F.emissions_figures(m, inputs.configs, recs_mwh=recs.mwh if recs else None,
                                         residual_mix_kg_per_mwh=recs.residual_mix_kg_per_mwh if recs else None,
                                         recs_source=recs.source if recs else None, tz=tz, period=(start, end)),
        "efficiency": F.efficiency_figures(m),
        "noise": F.noise_figures(inputs.noise, tz),
        "demand_response": F.dr_figures(m, inputs, start, end, tolerance_kw=dr_tolerance_kw,
                                        high_price_usd_mwh=high_price_usd_mwh, tz=tz, simulated=origin.simulated),
        "ancillary": ancillary,
        "curtailment": curtailment_figures(m, inputs.schedules, inputs.guard_actions, tz),
        "economics": F.economics_figures(m, reserve_money(
            inputs, start, end, ancillary["deployments"],
            final_through=None if ancillary["final_through"] is None else pd.Timestamp(ancillary["final_through"]))),
        "hourly": F.hourly_figures(m, inputs.configs),
        "intervals": interval_rows(m, inputs, simulated=origin.simulated),
    }
    return apply_precision(report)


def build_report(db: str | Path, start: Any = None, end: Any = None, *, recs_file: str | Path | None = None,
                 high_price_usd_mwh: float = 100.0, dr_tolerance_kw: float = 0.0,
                 signature: str | None = None) -> dict[str, Any]:
    """Read the audit trail of ``db`` (read-only), verify it, and compute the report for the period.

    ``start``/``end``: timestamps with an offset are instants (end exclusive); a bare date or naive
    time is site-local (timezone of the latest ``config`` record, else UTC), and a bare ``end``
    date includes that whole day (``--from 2026-03-01 --to 2026-03-31`` is all of March). Either
    omitted: the trail's first measured interval / the end of its last (:func:`trail_period`).
    ``signature``: a signed head (``hashflex audit sign``) to check; the result is in
    ``report.audit.signed_head`` (the HMAC key comes from ``HASHFLEX_AUDIT_HMAC_KEY``).

    Parameters
    ----------
    db : str or Path
        The store's database.
    start, end : Any, optional
        The period (ISO 8601 text or timestamps).
    recs_file : str or Path, optional
        RECs retired for the site (:func:`load_recs`).
    high_price_usd_mwh : float
        Threshold of the high-price figures, $/MWh.
    dr_tolerance_kw : float
        kW an interval may be over a DR or AS limit and still count as under it.
    signature : str, optional
        A signed head to check.

    Returns
    -------
    dict
        The report.

    Raises
    ------
    FileNotFoundError
        No such database.
    ValueError
        An empty trail without ``start`` and ``end``, or an end not after the start.
    """
    log = AuditLog(db, readonly=True)
    try:
        result = log.verify()
        records = log.records(kinds=REPORT_KINDS)
        signed = None
        if signature:
            try:
                checked = log.verify_head(signature)
                signed = {"signature": signature.strip(), "ok": checked.ok, "problem": checked.problem or None,
                          "signed_seq": _signed_seq(signature)}
            except AuditError as exc:
                signed = {"signature": signature.strip(), "ok": False, "problem": str(exc),
                          "signed_seq": _signed_seq(signature)}
        run_end = _backtest_run_end(log)
    finally:
        log.close()
    tz = F.site_timezone([{"profile": r.payload.get("profile") or {}} for r in records if r.kind == "config"])
    whole = trail_period(records)
    if whole is None and (start is None or end is None):
        raise ValueError(f"{db}: the audit trail has no records; give --from and --to")
    start = whole[0] if start is None else start  # type: ignore[index]
    end = whole[1] if end is None else end  # type: ignore[index]
    start, end = resolve_period(start, end, tz)
    audit = {"ok": result.ok, "records": result.records, "head_seq": result.head_seq,
             "head_hash": result.head_hash, "first_bad_seq": result.first_bad_seq, "problem": result.problem,
             "signed_head": signed}
    if not result.ok:
        audit["head_seq"] = records[-1].seq if records else None
        audit["head_hash"] = records[-1].hash if records else None
    recs = load_recs(recs_file, start, end) if recs_file else None
    return report_from_records(records, start, end, audit=audit, recs=recs, high_price_usd_mwh=high_price_usd_mwh,
                               dr_tolerance_kw=dr_tolerance_kw, run_end=run_end)


BACKTEST_RUN_END_KEY = "backtest_run_end"
"""The store meta key a finished ``hashflex backtest --out`` writes (``backtest.cli``): ``audit_head_seq``
and ``audit_head_hash`` (the trail's last record when the run ended), ``as_qualification`` (the
qualification's label, ``ASSUMED ...`` for ``--ancillary example``; null without an ancillary section)."""


def _backtest_run_end(log: AuditLog) -> dict[str, Any] | None:
    """The store's :data:`BACKTEST_RUN_END_KEY` meta value, or None (not a finished backtest's store, or
    a store without a meta table)."""
    try:
        row = log.conn.execute("SELECT value FROM meta WHERE key = ?", (BACKTEST_RUN_END_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    value = json.loads(row[0])
    return value if isinstance(value, dict) else None


def _signed_seq(signature: str) -> int | None:
    parts = signature.strip().split(":")
    return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None


def resolve_period(start: Any, end: Any, tz: str = "UTC") -> tuple[pd.Timestamp, pd.Timestamp]:
    """UTC [start, end) from CLI-style values (see :func:`build_report`).

    Parameters
    ----------
    start, end : Any
        ISO 8601 text or timestamps; naive values are site-local.
    tz : str
        The site's time zone.

    Returns
    -------
    tuple of (pd.Timestamp, pd.Timestamp)
        UTC.

    Raises
    ------
    ValueError
        The end is not after the start (or a value is not a time).
    """
    def one(value: Any, is_end: bool) -> pd.Timestamp:
        if isinstance(value, pd.Timestamp) and value.tzinfo is not None:
            return value.tz_convert("UTC")
        bare_date = isinstance(value, str) and len(value.strip()) == 10
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize(tz)
        if is_end and bare_date:
            stamp = (stamp.tz_localize(None) + pd.Timedelta(days=1)).tz_localize(tz)
        return stamp.tz_convert("UTC")

    a, b = one(start, False), one(end, True)
    if b <= a:
        raise ValueError(f"period end {b} is not after start {a}")
    return a, b
