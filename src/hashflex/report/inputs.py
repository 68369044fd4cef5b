"""Decoding the audit records a report reads into frames (:class:`ReportInputs`,
:func:`inputs_from_records`), the config in force, and the rounding every figure shares.

Seam: audit records in, plain frames and lists out; every figure (:mod:`.figures`,
:mod:`.emissions`, :mod:`.dr_performance`, :mod:`.curtailment`) computes from these. Split from
``report/figures.py`` (issue 11).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["LIMIT_COLUMNS", "MEASUREMENT_COLUMNS", "NOISE_COLUMNS", "RESERVE_HOLD_COLUMNS", "ReportInputs", "config_at",
           "inputs_from_records", "site_timezone"]

MEASUREMENT_COLUMNS = ["interval_start", "interval_h", "import_kw", "renewable_kw", "load_kw", "full_load_kw",
                       "hashrate_th_s", "intensity_kg_per_mwh", "intensity_source", "price_usd_mwh",
                       "revenue_usd", "energy_cost_usd", "dr_baseline_kw", "seq", "at"]
# What a measurement says of the reserve hold (kept as objects: per-group mappings, a label, a count of
# running units without telemetry, issue 15 H1b), read by report.ancillary's hold figures.
RESERVE_HOLD_COLUMNS = ["reserve_sheddable_kw", "reserve_hold_basis", "reserve_unreported_running_units",
                        # "time-weighted" (H6: the loop held each award revision while in force, the load
                        # over the interval); absent on older trails
                        "reserve_sheddable_commanded_basis"]
# The import limit the loop found in force for the interval and its source (the book's, recorded with the
# measurement): the report's limit where no plan covers the interval, as after a restart (issue 15,
# second newcomer finding 3); absent on older trails.
LIMIT_COLUMNS = ["import_limit_kw", "import_limit_source"]
NOISE_COLUMNS = ["interval_start", "interval_h", "receptor", "measured_dba", "model_dba", "cap_dba",
                 "over_cap_min"]


@dataclass
class ReportInputs:
    """What the figures are computed from, decoded from audit records (see :func:`inputs_from_records`)."""

    measurements: pd.DataFrame
    noise: pd.DataFrame
    configs: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", "profile_hash", "profile"}
    dr_events: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", payload...}
    dr_acks: list[dict[str, Any]] = field(default_factory=list)
    guard_actions: list[dict[str, Any]] = field(default_factory=list)
    superseded: int = 0
    history: pd.DataFrame | None = None  # every measurement of the trail (deduplicated), for DR baselines
    setpoints: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", payload...}
    schedules: list[dict[str, Any]] = field(default_factory=list)  # {"seq", "at", "first_row", "reasons"}
    transitions: list[dict[str, Any]] = field(default_factory=list)  # dr_transition payloads
    meter_samples: list[dict[str, Any]] = field(default_factory=list)  # {"at", "import_kw", "source"}: DR in force
    # ancillary services (issue 15): {"seq", "at", "message", "ack"} per as_award / as_deploy record,
    # {"seq", "at", payload...} per as_performance record (what the fast path commanded)
    as_awards: list[dict[str, Any]] = field(default_factory=list)
    as_deploys: list[dict[str, Any]] = field(default_factory=list)
    as_performance: list[dict[str, Any]] = field(default_factory=list)
    # {"seq", "at", payload...} per reserve_hold_short record (award not held over an interval)
    reserve_hold_short: list[dict[str, Any]] = field(default_factory=list)


def _ts(text: str | None) -> pd.Timestamp | None:
    return None if text is None else pd.Timestamp(text).tz_convert("UTC")


def inputs_from_records(records: Iterable[Any], start: pd.Timestamp, end: pd.Timestamp) -> ReportInputs:
    """Decode ``AuditRecord``s (any order) into frames; measurements with interval_start in [start, end).

    DR events, acks, guard actions and configs are kept whole (events may start before the period).

    Parameters
    ----------
    records : iterable of AuditRecord
        The records of the report's kinds.
    start, end : pd.Timestamp
        The period, UTC, half-open.

    Returns
    -------
    ReportInputs
    """
    records = sorted(records, key=lambda r: r.seq)
    rows, noise, configs, events, acks, actions = [], [], [], [], [], []
    setpoints, schedules, transitions, samples = [], [], [], []
    as_awards, as_deploys, as_performance, hold_short = [], [], [], []
    for rec in records:
        p, at = rec.payload, pd.Timestamp(rec.at_utc)
        if rec.kind == "measurement":
            # The reserve the loop's hold check used (per group) and on what basis (issue 15, H1, H1b:
            # "metered" capped by the load drawn, "partly metered" with the running units that sent
            # no telemetry counted as commanded, "commanded" unmetered; absent on older trails).
            rows.append({**{c: p.get(c) for c in MEASUREMENT_COLUMNS[:-2]}, "seq": rec.seq, "at": at,
                         **{c: p.get(c) for c in RESERVE_HOLD_COLUMNS}, **{c: p.get(c) for c in LIMIT_COLUMNS}})
        elif rec.kind == "config":
            configs.append({"seq": rec.seq, "at": at, "profile_hash": p.get("profile_hash"),
                            "profile": p.get("profile") or {}, "reason": p.get("reason")})
        elif rec.kind == "dr_event":
            events.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "dr_ack":
            acks.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "guard_action":
            actions.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "setpoints":
            setpoints.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "schedule":
            schedules.append({"seq": rec.seq, "at": at, "first_row": p.get("first_row") or {},
                              "reasons": p.get("reasons") or {}})
        elif rec.kind == "dr_transition":
            transitions.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "meter_sample":
            samples.append({"at": pd.Timestamp(p.get("at") or rec.at_utc).tz_convert("UTC"),
                            "import_kw": p.get("import_kw"), "source": p.get("source")})
        elif rec.kind in ("as_award", "as_deploy"):
            (as_awards if rec.kind == "as_award" else as_deploys).append(
                {"seq": rec.seq, "at": at, "message": p.get("message") or {}, "ack": p.get("ack") or {}})
        elif rec.kind == "as_performance":
            as_performance.append({"seq": rec.seq, "at": at, **p})
        elif rec.kind == "reserve_hold_short":
            hold_short.append({"seq": rec.seq, "at": at, **p})
    every = pd.DataFrame(rows, columns=[*MEASUREMENT_COLUMNS, *RESERVE_HOLD_COLUMNS, *LIMIT_COLUMNS])
    every["import_limit_kw"] = pd.to_numeric(every["import_limit_kw"], errors="coerce").astype("float64")
    every["interval_start"] = pd.to_datetime(every["interval_start"], utc=True, format="ISO8601")
    for column in MEASUREMENT_COLUMNS:
        if column not in ("interval_start", "intensity_source", "seq", "at"):
            every[column] = pd.to_numeric(every[column], errors="coerce").astype("float64")
    # Rounded to the trail's resolution (µs): a float interval_h (a partial interval's covered hours)
    # put ends like 15:59:59.999999998 into the report (H8 finding 6).
    every["interval_end"] = (every["interval_start"] + pd.to_timedelta(every["interval_h"], unit="h")).dt.round("us")
    history = (every.sort_values("seq").drop_duplicates("interval_start", keep="last")
               .sort_values("interval_start").reset_index(drop=True))
    m = every[(every["interval_start"] >= start) & (every["interval_start"] < end)]
    before = len(m)
    m = m.sort_values("seq").drop_duplicates("interval_start", keep="last").sort_values("interval_start")
    superseded = before - len(m)
    m = m.reset_index(drop=True)
    kept = set(m["seq"].tolist())
    for rec in records:
        if rec.kind == "measurement" and rec.seq in kept:
            p = rec.payload
            for r in sorted(set(p.get("noise_dba") or {}) | set(p.get("noise_model_dba") or {})
                            | set(p.get("noise_cap_dba") or {})):
                noise.append({"interval_start": pd.Timestamp(p["interval_start"]), "interval_h": p["interval_h"],
                              "receptor": r, "measured_dba": (p.get("noise_dba") or {}).get(r),
                              "model_dba": (p.get("noise_model_dba") or {}).get(r),
                              "cap_dba": (p.get("noise_cap_dba") or {}).get(r),
                              "over_cap_min": (p.get("noise_over_cap_min") or {}).get(r)})
    n = pd.DataFrame(noise, columns=NOISE_COLUMNS)
    for column in NOISE_COLUMNS[1:]:
        if column != "receptor":
            n[column] = pd.to_numeric(n[column], errors="coerce").astype("float64")
    n["interval_start"] = pd.to_datetime(n["interval_start"], utc=True)
    n = n.sort_values(["receptor", "interval_start"]).reset_index(drop=True)
    return ReportInputs(m, n, configs, events, acks, actions, superseded, history, setpoints, schedules, transitions,
                        samples, as_awards=as_awards, as_deploys=as_deploys, as_performance=as_performance,
                        reserve_hold_short=hold_short)


def _r(x: float | None, digits: int = 6) -> float | None:
    """Round for the report; NaN/inf become None (JSON null)."""
    if x is None:
        return None
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _mwh(kw: pd.Series, h: pd.Series) -> float:
    return float((kw.fillna(0.0) * h).sum() / 1000.0)


def config_at(configs: Sequence[Mapping[str, Any]], moment: pd.Timestamp) -> Mapping[str, Any] | None:
    """The config record in force at ``moment`` (last with at ≤ moment, else the first one).

    Parameters
    ----------
    configs : sequence of Mapping
        Decoded ``config`` records (``at``).
    moment : pd.Timestamp
        A time, UTC.

    Returns
    -------
    Mapping or None
        None without config records.
    """
    if not configs:
        return None
    before = [c for c in configs if c["at"] <= moment]
    return before[-1] if before else configs[0]


def site_timezone(configs: Sequence[Mapping[str, Any]]) -> str:
    """The site's time zone from the latest config record (UTC without one).

    Parameters
    ----------
    configs : sequence of Mapping
        Decoded ``config`` records.

    Returns
    -------
    str
    """
    if not configs:
        return "UTC"
    return (configs[-1]["profile"].get("site") or {}).get("timezone", "UTC")


