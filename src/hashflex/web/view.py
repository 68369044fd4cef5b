"""What the dashboard shows, as one JSON document built from the control loop (no I/O, no web).

:func:`dashboard_state` turns the loop's ``status(now)`` (plus the daemon's additions: ``inputs``,
``mqtt_connected``, ``input_rejections``), its last schedule, its fleet and its measurements into
the sections the page draws: ``now``, ``noise``, ``dr``, ``schedule`` (next 24 h), ``carbon``,
``events``, ``inputs``, ``limits``, ``health``. Units are in the key names (kW, dB(A), $/MWh, kg).
Non-finite numbers become ``null`` (JSON has no infinity).

What is kept between builds (the event log, feed ages, noise history) lives in
:mod:`hashflex.web.history`; :class:`EventLog`, :class:`FeedAges`, :class:`NoiseHistory` and
:class:`LogEntry` are re-exported here (their import path before the split). The
"available for curtailment" part is :mod:`hashflex.web.curtailment`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from hashflex.acoustics import compared_level_dba, modelled_laeq_dba
from hashflex.optimize.schedule import unit_column, grid_import_kw
from hashflex.profile import SiteProfile
from hashflex.web.curtailment import curtailment_section
from hashflex.web.history import EventLog, FeedAges, LogEntry, NoiseHistory  # re-exported (moved from here)

SLEEP = "sleep"  # the fleet's sleeping mode (control.fleet.SLEEP; web sits below control)

__all__ = ["unhealthy_causes", "EventLog", "FeedAges", "LogEntry", "NoiseHistory", "breakeven_usd_mwh", "dashboard_state",
           "finite"]


def unhealthy_causes(status: Mapping[str, Any]) -> list[str]:
    """The status's ``unhealthy_causes`` as a list of strings.

    Parameters
    ----------
    status : Mapping[str, Any]
        The loop's status document (``ControlLoop.status``).

    Returns
    -------
    list[str]
        [] when absent or malformed.
    """
    causes = status.get("unhealthy_causes")
    if isinstance(causes, (list, tuple)):
        return [str(c) for c in causes]
    return []


def finite(value: Any, digits: int | None = None) -> float | None:
    """A number as a float, or None when missing or not finite (JSON has no inf/NaN).

    Parameters
    ----------
    value : Any
        Anything ``float()`` takes.
    digits : int, optional
        Round to this many decimals.

    Returns
    -------
    float or None
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return round(number, digits) if digits is not None else number


def breakeven_usd_mwh(profile: SiteProfile, hashprice_usd_per_ph_day: float) -> dict[str, float]:
    """Per group, the settlement price at which one unit in its most efficient mode breaks even.

    Revenue after the pool fee equals the energy cost at this price, less the site's price adders.

    Parameters
    ----------
    profile : SiteProfile
    hashprice_usd_per_ph_day : float
        Hashprice ($ per PH/s per day).

    Returns
    -------
    dict[str, float]
        group id -> breakeven ($/MWh).
    """
    per_th_h = hashprice_usd_per_ph_day / 1000.0 / 24.0 * (1.0 - profile.economics.pool_fee_pct / 100.0)
    out = {}
    for group in profile.miner_groups:
        best = max((m.hashrate_th_s * per_th_h * 1000.0 / m.power_kw for m in group.modes if m.power_kw > 0),
                   default=0.0)
        out[group.id] = best - profile.grid.total_adder_usd_mwh
    return out


def _receptor_levels(loop: Any, profile: SiteProfile, now: datetime, status: Mapping[str, Any],
                     counts: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    local = pd.Timestamp(now).tz_convert(profile.tz).to_pydatetime()
    overrides = (status.get("limits") or {}).get("noise_caps_dba") or {}
    rows = []
    for receptor in profile.receptors:
        cap = min(receptor.cap_at(local), float(overrides.get(receptor.id, math.inf)))
        measured = loop.measurements.noise_dba.get(receptor.id)
        # as loop.modelled_level_dba, from the counts taken once per build (10,000 miners: one pass)
        modelled = modelled_laeq_dba(profile, counts, receptor.id, include_background=receptor.cap_applies_to == "total")
        compared = None if measured is None else compared_level_dba(measured, receptor.background_dba,
                                                                      receptor.cap_applies_to)
        over = compared is not None and math.isfinite(cap) and compared > cap
        rows.append({"receptor_id": receptor.id, "measured_dba": finite(measured, 1),
                     "modelled_dba": finite(modelled, 1), "cap_dba": finite(cap, 1),
                     "cap_applies_to": receptor.cap_applies_to, "over_cap": bool(over),
                     "margin_db": None if compared is None or not math.isfinite(cap) else round(cap - compared, 1),
                     "cap_source": "manager override" if receptor.id in overrides else "profile"})
    return rows


def _schedule_section(profile: SiteProfile, frame: pd.DataFrame | None, breakeven: Mapping[str, float]) -> dict[str, Any]:
    if frame is None or frame.empty:
        return {"t": []}
    frame = frame[frame.index < frame.index[0] + pd.Timedelta(hours=24)]
    out: dict[str, Any] = {"t": [int(pd.Timestamp(t).timestamp()) for t in frame.index]}

    def col(name: str, digits: int = 1) -> list[float | None]:
        if name not in frame.columns:
            return [None] * len(frame)
        return [finite(v, digits) for v in frame[name].to_numpy()]

    load_by: dict[str, list[float | None]] = {}
    for group in profile.miner_groups:
        for mode in group.modes:
            column = unit_column(group.id, mode.name)
            if column in frame.columns:
                load_by[f"{group.id}/{mode.name}"] = [finite(v * mode.power_kw, 1) for v in frame[column].to_numpy()]
    out.update({
        "load_kw_by_group_mode": load_by,
        "load_kw": col("load_kw"), "full_load_kw": col("full_load_kw"), "grid_import_kw": col("grid_import_kw"),
        "import_limit_kw": col("import_limit_kw"), "price_usd_mwh": col("price_usd_mwh", 2),
        "breakeven_usd_mwh": {g: round(v, 2) for g, v in breakeven.items()},
        "noise_dba": {r.id: col(f"noise_dba_{r.id}") for r in profile.receptors},
        "noise_cap_dba": {r.id: col(f"noise_cap_dba_{r.id}") for r in profile.receptors},
        "reason": [str(v) for v in frame.get("reason", pd.Series([""] * len(frame))).to_numpy()],
        "reason_detail": [str(v) for v in frame.get("reason_detail", pd.Series([""] * len(frame))).to_numpy()],
        "import_limit_source": [str(v) for v in frame.get("import_limit_source", pd.Series([""] * len(frame)))],
    })
    return out


def _limit_label(source: str | None) -> str:
    if not source:
        return "interconnection"
    if source.startswith("DR:"):
        return f"DR event {source[3:]}"
    if source.startswith("limits:"):
        return f"manager override ({source[7:]})"
    if source.startswith("hold:"):
        return f"held in memory ({source[5:]})"
    return source


def _dr_section(loop: Any, status: Mapping[str, Any], now: datetime, log: EventLog | None) -> list[dict[str, Any]]:
    rows = []
    for event in (status.get("limits") or {}).get("dr_events", []):
        start = datetime.fromisoformat(event["start"])
        end = datetime.fromisoformat(event["end"]) if event.get("end") else None
        # In force from its start, even before the next tick records the transition to "active".
        active = event["status"] == "active" or (start <= now and (end is None or now < end))
        event = {**event, "status": "active" if active else event["status"]}
        seconds_left = ((end - now).total_seconds() if active and end else
                        (start - now).total_seconds() if not active else None)
        limit = event.get("limit_kw")
        held = broken = 0
        worst = None
        if limit is not None:
            for interval_start, (kw, _h) in list(loop.measured_import_kw.items()):
                t = interval_start.to_pydatetime()
                if start <= t < now and (end is None or t < end):
                    worst = kw if worst is None else max(worst, kw)
                    if kw <= limit + 1e-6:
                        held += 1
                    else:
                        broken += 1
        rows.append({**event, "seconds_left": finite(seconds_left, 0),
                     "countdown_to": "end" if active else "start",
                     "acked_at": (log.dr_acked_at.get(event["event_id"]) if log else None),
                     "compliance": {"intervals_held": held, "intervals_over": broken,
                                    "max_import_kw": finite(worst, 1)}})
    return rows


def dashboard_state(loop: Any, status: Mapping[str, Any], now: datetime, *,
                    log: EventLog | None = None, noise_history: NoiseHistory | None = None,
                    measured: Mapping[str, float] | None = None, simulated: bool = False,
                    feed_ages_s: Mapping[str, float] | None = None,
                    miner_readings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dashboard document at ``now``.

    Never raises on a missing part: a section without data is empty.

    Parameters
    ----------
    loop : ControlLoop
        :class:`hashflex.control.loop.ControlLoop`: its profile, fleet, last schedule, measurements,
        emissions tally and driver are read (never changed).
    status : Mapping[str, Any]
        Its ``status(now)`` plus the daemon's additions (``inputs``, ``mqtt_connected``,
        ``input_rejections``).
    now : datetime
        Site time (timezone-aware).
    log : EventLog, optional
        The event log (``events`` section, DR acknowledgement times).
    noise_history : NoiseHistory, optional
        Updated with the receptor levels now, and sent as ``noise.history``.
    measured : Mapping[str, float], optional
        The site meter's latest ``load_kw``, ``grid_import_kw``, ``renewable_kw`` (kW) and
        ``price_usd_mwh`` where known (else telemetry or the fleet model is used, and said).
    simulated : bool, default False
        The site is simulated (``site.simulated``; the page shows a SIMULATED badge).
    feed_ages_s : Mapping[str, float], optional
        Seconds since each input feed was last heard (:meth:`FeedAges.ages_s`).
    miner_readings : Mapping[str, MinerReading], optional
        Each miner's latest telemetry reading, for ``now.curtailment``
        (:func:`hashflex.web.curtailment.curtailment_section`).

    Returns
    -------
    dict
        JSON-ready sections ``site``, ``health``, ``now``, ``noise``, ``dr``, ``schedule``,
        ``carbon``, ``limits``, ``events``, ``inputs``, ``counters``; units in the key names, None
        for numbers that are missing or not finite.
    """
    profile: SiteProfile = loop.profile
    measured = dict(measured or {})
    report = loop.last_report
    frame = report.schedule.frame if report is not None and report.schedule is not None else None
    first = frame.iloc[0] if frame is not None and not frame.empty else None
    fallbacks = [str(f) for f in status.get("fallbacks_in_use") or []]
    hashprice = finite(first["hashprice_usd_per_ph_day"], 2) if first is not None else None
    if hashprice is None:
        hashprice = profile.economics.hashprice_usd_per_ph_day
    hashprice_source = (f"{profile.economics.hashprice_source} (profile value)"
                        if first is None or any("hashprice" in f for f in fallbacks) else "hashprice feed")
    breakeven = breakeven_usd_mwh(profile, hashprice)

    counts: dict[tuple[str, str], int] = {}
    available_by_group: dict[str, int] = {}
    for miner in list(loop.fleet.miners.values()):  # one pass over the fleet (10,000 miners)
        if miner.available:
            available_by_group[miner.group_id] = available_by_group.get(miner.group_id, 0) + 1
        if miner.mode != SLEEP:
            counts[miner.group_id, miner.mode] = counts.get((miner.group_id, miner.mode), 0) + 1
    units = []
    model_load_kw = 0.0
    for group in profile.miner_groups:
        on = 0
        for mode in group.modes:
            n = counts.get((group.id, mode.name), 0)
            on += n
            model_load_kw += n * mode.power_kw
            units.append({"group": group.id, "mode": mode.name, "running": n})
        available = available_by_group.get(group.id, 0)
        units.append({"group": group.id, "mode": "sleep", "running": available - on})
        model_load_kw += (available - on) * group.idle_power_kw
    telemetry = sum(loop.telemetry_kw.values()) if loop.telemetry_kw else None
    load_kw, load_source = ((measured["load_kw"], "meter") if measured.get("load_kw") is not None else
                            (telemetry, "miner telemetry") if telemetry is not None else (model_load_kw, "fleet model"))
    renewable = measured.get("renewable_kw", loop.measurements.renewable_kw)
    grid_import = measured.get("grid_import_kw")
    if grid_import is None:
        grid_import = grid_import_kw(load_kw, renewable or 0.0)
    limits = status.get("limits") or {}
    interconnection = profile.grid.import_limit_kw
    limit_kw = limits.get("import_limit_kw")
    source = limits.get("import_limit_source")
    if limit_kw is None or limit_kw >= interconnection:
        limit_kw, source = interconnection, None
    price = measured.get("price_usd_mwh", finite(first["price_usd_mwh"], 2) if first is not None else None)
    levels = _receptor_levels(loop, profile, now, status, counts)
    if noise_history is not None:
        noise_history.add(now, levels)

    local = pd.Timestamp(now).tz_convert(profile.tz)
    emitted_day = loop.emitted_kg.get(local.strftime("%Y-%m-%d"), 0.0)
    emitted_month = loop.emitted_kg.get(local.strftime("%Y-%m"), 0.0)
    overrides = limits.get("carbon_budget_overrides_kg") or {}

    def budget(profile_kg: float | None, key: str, used: float) -> dict[str, Any]:
        candidates = [v for v in (profile_kg, overrides.get(key)) if v is not None]
        total = min(candidates) if candidates else None
        return {"used_kg": round(used, 1), "budget_kg": finite(total, 1),
                "left_kg": None if total is None else round(max(total - used, 0.0), 1),
                "source": "manager override" if key in overrides and overrides[key] == total else
                ("profile" if total is not None else "no budget")}

    inputs = status.get("inputs") or {}
    return {
        "site": {"id": profile.site_id, "name": profile.site.name, "timezone": str(profile.tz),
                 "interval_minutes": profile.site.interval_minutes, "simulated": simulated,
                 "at": now.isoformat(), "local_time": f"{local:%Y-%m-%d %H:%M %Z}",
                 "managers": list(profile.site.managers)},
        "health": {"healthy": bool(status.get("healthy")), "unhealthy_causes": list(status.get("unhealthy_causes") or []),
                   "last_tick_age_s": finite(status.get("last_tick_age_s"), 1),
                   "last_solve": status.get("last_solve")},
        "now": {"grid_import_kw": finite(grid_import, 1), "import_limit_kw": finite(limit_kw, 1),
                "import_limit_source": source or "interconnection", "import_limit_label": _limit_label(source),
                "import_limits_kw": {k: finite(v, 1) for k, v in (limits.get("import_limits_kw") or {}).items()},
                "load_kw": finite(load_kw, 1), "load_source": load_source,
                "renewable_kw": finite(renewable, 1), "price_usd_mwh": finite(price, 2),
                "units": units, "units_running": sum(counts.values()),
                "breakeven_usd_mwh": {g: round(v, 2) for g, v in breakeven.items()},
                "reason": None if first is None else str(first.get("reason_detail", "")),
                "curtailment": curtailment_section(loop, miner_readings, now, counts)},
        "noise": {"receptors": levels, "history": noise_history.to_json() if noise_history is not None else {}},
        "dr": _dr_section(loop, status, now, log),
        "schedule": _schedule_section(profile, frame, breakeven),
        "carbon": {"day": budget(profile.carbon.daily_budget_kg, "day", emitted_day),
                   "month": budget(profile.carbon.monthly_budget_kg, "month", emitted_month),
                   "hashprice_usd_per_ph_day": hashprice, "hashprice_source": hashprice_source},
        "limits": {"manager_limits": limits.get("manager_limits", []), "holds": limits.get("holds", []),
                   "noise_caps_dba": limits.get("noise_caps_dba", {})},
        "events": log.recent() if log is not None else [],
        "inputs": {"feed_ages_s": {k: finite(v, 0) for k, v in (feed_ages_s or {}).items()},
                   "messages": inputs, "fallbacks_in_use": fallbacks,
                   "mqtt_connected": status.get("mqtt_connected"),
                   "store": "unavailable" if any(str(c).startswith("store_unavailable") for c in
                                                 status.get("unhealthy_causes") or []) else "ok",
                   "input_rejections": status.get("input_rejections") or {},
                   "miners_unavailable": len(status.get("miners_unavailable") or {})},
        "counters": status.get("counters", {}),
    }
