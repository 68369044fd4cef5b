"""Builders of every record's payload (the report reads exactly these keys; the kinds and keys are
listed in :mod:`hashflex.audit`), and the noise level arithmetic the measurement record uses.

Seam: what a record says, built from the loop's objects into JSON-safe dicts; nothing here
touches a database. Split from ``audit.py`` (issue 11).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from hashflex import acoustics
from hashflex.audit.chain import AuditError, iso_utc

__all__ = ["config_payload", "dr_ack_payload", "dr_event_payload", "guard_action_payload", "input_summary_payload",
           "laeq_dba", "measurement_payload", "noise_interval_summary", "reserve_hold_short_payload", "schedule_payload",
           "setpoints_payload"]


def _num(value: float | None) -> float | None:
    """JSON-safe number: None and non-finite values become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _nums(values: Mapping[str, float | None] | None) -> dict[str, float | None]:
    return {str(k): _num(v) for k, v in (values or {}).items()}


def laeq_dba(levels_dba: Iterable[float], durations_s: Iterable[float] | None = None) -> float:
    """Energy-average level (LAeq): :func:`hashflex.acoustics.laeq_dba`, the one definition."""
    return acoustics.laeq_dba(levels_dba, durations_s)


def noise_interval_summary(readings: Iterable[tuple[float, float]], cap_dba: float | None) -> tuple[float, float]:
    """(LAeq, minutes over cap) of ``(laeq_dba, averaging_s)`` readings inside one interval.

    Parameters
    ----------
    readings : iterable of (float, float)
        ``(laeq_dba, averaging_s)`` per reading.
    cap_dba : float or None
        The cap in force (dB(A)); None: no cap, 0 minutes over.

    Returns
    -------
    tuple of (float, float)
        The duration-weighted LAeq (dB(A), NaN without readings) and the minutes of readings above the cap.
    """
    readings = list(readings)
    level = laeq_dba([r[0] for r in readings], [r[1] for r in readings])
    over = 0.0 if cap_dba is None else sum(r[1] for r in readings if r[0] > cap_dba) / 60.0
    return level, over


def reserve_hold_short_payload(interval_start: datetime, interval_h: float, product: str, obligation_kw: float,
                               short_kw: float, price_usd_mw_h: float | None, clawback_usd: float | None) -> dict[str, Any]:
    """The ``reserve_hold_short`` payload (issue 15): one per product per control interval in which
    reserve awarded was not held by running, sheddable, qualified load, written by the loop after
    the interval (with its ``measurement``), so the report charges back what the backtest does.

    Parameters
    ----------
    interval_start : datetime
        Start of the control interval, timezone-aware.
    interval_h : float
        Interval length, h (> 0).
    product : str
        ``RRS``, ``ECRS`` or ``NSPIN``.
    obligation_kw : float
        Reserve to hold over the interval: the time-weighted mean of awards in force less the MW of
        the product deployed and in force (``control.ancillary.mean_obligations_kw``; the record says
        so with ``obligation_basis: "time-weighted"``; a trail without it is an older one), kW.
    short_kw : float
        What of it the running units did not hold, kW (``control.ancillary.reserve_hold_shortfalls`` on
        the sheddable load capped per group by what its miners were metered to draw, a running miner
        without telemetry counted as commanded; the loop adds that figure and its basis,
        ``reserve_sheddable_kw`` … ``reserve_unreported_running_units``, ``reserve_hold_basis``
        ``metered`` / ``partly metered`` / ``commanded``, ``ControlLoop.record_reserve_hold``).
    price_usd_mw_h : float or None
        The awards' price (reserve-weighted), $ per MW per hour; None when no award carried one.
    clawback_usd : float or None
        ``control.ancillary.reserve_clawback_usd`` of the above, $ (None without a price).

    Returns
    -------
    dict
        ``interval_start`` (ISO Z), ``interval_h``, ``product``, ``obligation_kw``, ``held_kw``,
        ``short_kw``, ``price_usd_mw_h``, ``clawback_usd``, ``obligation_basis`` (JSON-safe).

    Raises
    ------
    AuditError
        ``interval_h`` not positive, ``short_kw`` negative or above the obligation.
    """
    if not interval_h > 0:
        raise AuditError(f"interval_h: {interval_h!r} must be > 0")
    if short_kw < 0 or short_kw > obligation_kw + 1e-6:
        raise AuditError(f"short_kw: {short_kw!r} must be within [0, obligation_kw {obligation_kw!r}]")
    return {"interval_start": iso_utc(interval_start), "interval_h": float(interval_h), "product": str(product),
            "obligation_kw": _num(obligation_kw), "held_kw": _num(obligation_kw - short_kw), "short_kw": _num(short_kw),
            "price_usd_mw_h": _num(price_usd_mw_h), "clawback_usd": _num(clawback_usd),
            "obligation_basis": "time-weighted"}


def measurement_payload(
    interval_start: datetime,
    interval_h: float,
    import_kw: float,
    renewable_kw: float,
    load_kw: float,
    hashrate_th_s: float,
    noise_dba: Mapping[str, float | None],
    intensity_kg_per_mwh: float | None,
    price_usd_mwh: float | None,
    revenue_usd: float,
    energy_cost_usd: float,
    *,
    noise_model_dba: Mapping[str, float | None] | None = None,
    noise_cap_dba: Mapping[str, float | None] | None = None,
    noise_over_cap_min: Mapping[str, float] | None = None,
    full_load_kw: float | None = None,
    intensity_source: str | None = None,
    dr_baseline_kw: float | None = None,
    hashprice_usd_per_ph_day: float | None = None,
) -> dict[str, Any]:
    """The ``measurement`` payload: means over ``[interval_start, +interval_h)`` (see module docstring);
    ``hashprice_usd_per_ph_day``: the hashprice the revenue was valued at.

    Parameters
    ----------
    interval_start : datetime
        Start of the control interval, timezone-aware.
    interval_h : float
        Interval length in hours (> 0).
    import_kw, renewable_kw, load_kw : float
        Mean grid import at the meter, on-site renewable generation and site consumption, kW.
    hashrate_th_s : float
        Mean hashrate, TH/s.
    noise_dba : Mapping[str, float or None]
        Receptor id → measured LAeq over the interval, dB(A).
    intensity_kg_per_mwh : float or None
        Recorded grid carbon intensity, kg CO2/MWh (None: the report uses the profile's factor).
    price_usd_mwh : float or None
        Settlement point price, $/MWh.
    revenue_usd, energy_cost_usd : float
        Mining revenue and energy cost of the interval, $.
    noise_model_dba, noise_cap_dba, noise_over_cap_min : Mapping, optional
        Receptor id → modelled level (dB(A)), cap in force (dB(A), None = none), minutes over the cap.
    full_load_kw : float, optional
        Load with every available unit in its top mode, kW.
    intensity_source : str, optional
        Where the intensity came from.
    dr_baseline_kw : float, optional
        A DR baseline, kW.
    hashprice_usd_per_ph_day : float, optional
        The hashprice the revenue was valued at, $/PH/day.

    Returns
    -------
    dict
        JSON-safe (non-finite numbers become null).

    Raises
    ------
    AuditError
        ``interval_h`` not positive, or a naive ``interval_start``.
    """
    if interval_h <= 0:
        raise AuditError("interval_h must be > 0")
    return {
        "interval_start": iso_utc(interval_start),
        "interval_h": float(interval_h),
        "import_kw": _num(import_kw),
        "renewable_kw": _num(renewable_kw),
        "load_kw": _num(load_kw),
        "full_load_kw": _num(full_load_kw),
        "hashrate_th_s": _num(hashrate_th_s),
        "noise_dba": _nums(noise_dba),
        "noise_model_dba": _nums(noise_model_dba),
        "noise_cap_dba": _nums(noise_cap_dba),
        "noise_over_cap_min": _nums(noise_over_cap_min),
        "intensity_kg_per_mwh": _num(intensity_kg_per_mwh),
        "intensity_source": intensity_source,
        "price_usd_mwh": _num(price_usd_mwh),
        "revenue_usd": _num(revenue_usd),
        "energy_cost_usd": _num(energy_cost_usd),
        "dr_baseline_kw": _num(dr_baseline_kw),
        "hashprice_usd_per_ph_day": _num(hashprice_usd_per_ph_day),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return _num(value)
    if hasattr(value, "isoformat") and getattr(value, "tzinfo", None) is not None:
        return iso_utc(value)
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def _column_sum(frame: Any, column: str) -> float:
    """``float(frame[column].sum())`` to the bit: pandas' float sum skips NaN (filled with 0, then
    numpy's pairwise sum of the whole column, as ``np.nansum`` does) at a fraction of the cost per
    plan (issue 18: the schedule record is built at every tick of a backtest)."""
    values = frame[column].to_numpy()
    return float(np.nansum(values) if values.dtype.kind == "f" else frame[column].sum())


def _value_counts(values: np.ndarray) -> dict[Any, int]:
    """``Series.fillna("").value_counts()`` as a dict, in its order (most frequent first, ties in
    order of first appearance), from one C-level tally instead of pandas' hash table and sort
    (issue 18). Missing values (None, NaN, pd.NA) count as ``""``."""
    tally: Counter[Any] = Counter(values.tolist())
    missing = [key for key in tally if key is None or key is pd.NA or (isinstance(key, float) and key != key)]
    if missing:  # fillna(""): folded into "" where the first missing value or "" was (by identity:
        # pd.NA has no truth value and every NaN differs from itself)
        missing_ids = {id(key) for key in missing}
        merged: dict[Any, int] = {}
        for key, n in tally.items():  # a Counter keeps first-appearance order
            target = "" if id(key) in missing_ids else key
            merged[target] = merged.get(target, 0) + n
        tally = Counter(merged)
    return dict(sorted(tally.items(), key=lambda kv: -kv[1]))  # sorted() is stable: ties keep first appearance


def schedule_payload(schedule: Any) -> dict[str, Any]:
    """The ``schedule`` payload of an :class:`hashflex.optimize.schedule.Schedule`.

    Parameters
    ----------
    schedule : hashflex.optimize.schedule.Schedule
        An accepted plan (``frame`` with one row per interval, ``info`` with status, gap, objective).

    Returns
    -------
    dict
        ``status``, ``gap``, ``objective_usd``, ``message``, horizon, ``intervals``, ``reasons``
        {code: intervals}, ``totals`` and ``first_row`` (every column of the interval about to run).
    """
    frame, info = schedule.frame, schedule.info
    first = frame.iloc[0]
    dt_h = frame["duration_h"].to_numpy() if "duration_h" in frame else None
    totals = {"profit_usd": _column_sum(frame, "profit_usd"), "revenue_usd": _column_sum(frame, "revenue_usd"),
              "energy_cost_usd": _column_sum(frame, "energy_cost_usd"),
              "emissions_kg": _column_sum(frame, "emissions_kg")}
    if dt_h is not None:
        totals["grid_import_mwh"] = float((frame["grid_import_kw"].to_numpy() * dt_h).sum() / 1000.0)
        totals["hashrate_ph_h"] = float((frame["hashrate_th_s"].to_numpy() * dt_h).sum() / 1000.0)
    reasons = _value_counts(frame["reason"].to_numpy(dtype=object)) if "reason" in frame else {}
    return {
        "status": getattr(info.status, "value", str(info.status)),
        "gap": _num(info.gap),
        "objective_usd": _num(info.objective_usd),
        "message": info.message,
        "horizon_start": iso_utc(frame.index[0].to_pydatetime()),
        "horizon_end": iso_utc(frame["interval_end"].iloc[-1].to_pydatetime()) if "interval_end" in frame else None,
        "intervals": int(len(frame)),
        "reasons": {str(k) or "full_load": int(v) for k, v in reasons.items()},
        "totals": {k: _num(v) for k, v in totals.items()},
        "first_row": {"interval_start": iso_utc(frame.index[0].to_pydatetime()),
                      **{str(k): _jsonable(v) for k, v in first.items()}},
    }


def setpoints_payload(batch: Iterable[Any], *, source: str = "schedule") -> dict[str, Any]:
    """Batch summary of ``Setpoint``s: units per ``group/mode``, total target, earliest expiry.

    Parameters
    ----------
    batch : iterable of hashflex.drivers.base.Setpoint
        One setpoint per miner (``group_id``, ``mode``, ``power_target_kw``, ``issued_at``, ``expires_at``).
    source : str
        What made the batch (``schedule``, a guard action, ...).

    Returns
    -------
    dict
        ``source``, ``miners``, ``counts`` {"group/mode": units}, ``power_target_kw`` (kW),
        ``issued_at``, ``expires_at`` (earliest; null for an empty batch).
    """
    summary = getattr(batch, "audit_summary", None)
    if summary is not None:  # a columnar drivers.batch.SetpointBatch: the same summary, in counts (issue 18)
        return summary(source)
    batch = list(batch)
    # Tallied by (group, mode) pairs first (C-level Counter), labelled once per pair: a batch is the fleet.
    pairs = Counter((getattr(sp, "group_id", "?"), sp.mode) for sp in batch)
    counts = {f"{group_id}/{mode}": n for (group_id, mode), n in pairs.items()}
    return {
        "source": source,
        "miners": len(batch),
        "counts": dict(sorted(counts.items())),
        "power_target_kw": float(sum(sp.power_target_kw for sp in batch)),
        "issued_at": iso_utc(min(sp.issued_at for sp in batch)) if batch else None,
        "expires_at": iso_utc(min(sp.expires_at for sp in batch)) if batch else None,
    }


def guard_action_payload(action: str, reason: str, miners: Iterable[str] = (), *,
                         event_id: str | None = None) -> dict[str, Any]:
    """One guard action (``GuardAction.kind``/``reason``/``miners``), with the DR event behind it.

    Parameters
    ----------
    action : str
        The action kind.
    reason : str
        Why, in words.
    miners : iterable of str
        The miners it changed (the first 50 ids are kept).
    event_id : str, optional
        The DR event that triggered it.

    Returns
    -------
    dict
        ``action``, ``reason``, ``miners`` (count), ``miner_ids``, ``event_id``.
    """
    miners = list(miners)
    return {"action": action, "reason": reason, "miners": len(miners), "miner_ids": miners[:50],
            "event_id": event_id}


def config_payload(profile: Any, reason: str = "start") -> dict[str, Any]:
    """Profile hash and the full profile (``reason``: ``start`` or ``change``).

    Parameters
    ----------
    profile : hashflex.profile.SiteProfile
        The profile in force.
    reason : str
        ``start`` or ``change`` (callers may add more, e.g. a simulation's reason).

    Returns
    -------
    dict
        ``reason``, ``profile_hash``, ``profile`` (the whole profile as JSON).
    """
    from hashflex.profile import profile_hash

    return {"reason": reason, "profile_hash": profile_hash(profile),
            "profile": json.loads(profile.model_dump_json())}


def dr_event_payload(message: Any, accepted: bool, reason: str, limit_kw: float | None,
                     received_at: datetime) -> dict[str, Any]:
    """A DR message and the site's decision (``DRDecision`` fields).

    Parameters
    ----------
    message : hashflex.messages.DREventMessage
        The message received.
    accepted : bool
        Whether the site accepted it.
    reason : str
        The decision in words.
    limit_kw : float or None
        The import limit it set, kW (None: no limit).
    received_at : datetime
        When it arrived, timezone-aware.

    Returns
    -------
    dict
        ``event``, ``accepted``, ``reason``, ``limit_kw``, ``received_at``.
    """
    return {"event": json.loads(message.model_dump_json()), "accepted": bool(accepted), "reason": reason,
            "limit_kw": _num(limit_kw), "received_at": iso_utc(received_at)}


def dr_ack_payload(ack: Any) -> dict[str, Any]:
    """The ``dr_ack`` payload: the acknowledgement as sent.

    Parameters
    ----------
    ack : hashflex.messages.DRAckMessage
        The acknowledgement published on ``out/dr/ack``.

    Returns
    -------
    dict
        The message's JSON fields.
    """
    return json.loads(ack.model_dump_json())


def input_summary_payload(interval_start: datetime, interval_h: float, accepted: Mapping[str, int],
                          rejected: Mapping[str, int], rejected_reasons: Mapping[str, int] | None = None
                          ) -> dict[str, Any]:
    """The ``input_summary`` payload of one interval: messages accepted and rejected per kind, and the
    20 most frequent rejection reasons.

    Parameters
    ----------
    interval_start : datetime
        Start of the interval, timezone-aware.
    interval_h : float
        Interval length, hours.
    accepted, rejected : Mapping[str, int]
        Kind → count.
    rejected_reasons : Mapping[str, int], optional
        Reason → count (the top 20 are kept, most frequent first).

    Returns
    -------
    dict
        ``interval_start``, ``interval_h``, ``accepted``, ``rejected``, ``rejected_reasons``.
    """
    top = sorted((rejected_reasons or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    return {"interval_start": iso_utc(interval_start), "interval_h": float(interval_h),
            "accepted": {str(k): int(v) for k, v in accepted.items()},
            "rejected": {str(k): int(v) for k, v in rejected.items()},
            "rejected_reasons": {str(k): int(v) for k, v in top}}
