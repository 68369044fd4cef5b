"""Reports: every figure recomputed here by hand from the raw rows written to the audit trail, the
HTML parsed back (every section, figure row and plot present), the JSON keys, CSV, CLI and
reproducibility."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sqlite3
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hashflex.audit import (
    AuditLog,
    config_payload,
    dr_ack_payload,
    dr_event_payload,
    guard_action_payload,
    measurement_payload,
)
from hashflex.messages import DRAckMessage, DREventMessage
from hashflex.profile import CarbonSection, load_profile, profile_hash
from hashflex.report import build_report, resolve_period
from hashflex.report.cli import add_report_parsers
from hashflex.report.render import flatten, to_csv, to_html, to_json

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 21:00 CST on 1 March: hour 0 is day, hours 1-3 are night
START, END = "2026-03-02T00:00Z", "2026-03-03T00:00Z"
H = timedelta(hours=1)

# Four hourly intervals: import, renewable, load, full load, hashrate, intensity (None: profile default
# 370), price, revenue, energy cost, noise measured / modelled / cap / minutes over cap at "r1".
ROWS = [
    dict(import_kw=800.0, renewable_kw=200.0, load_kw=1000.0, full=1000.0, ths=40000.0, ci=400.0, price=50.0,
         rev=60.0, cost=40.0, meas=45.0, model=44.0, cap=50.0, over=0.0),
    dict(import_kw=300.0, renewable_kw=500.0, load_kw=700.0, full=1000.0, ths=28000.0, ci=None, price=150.0,
         rev=42.0, cost=45.0, meas=48.0, model=47.0, cap=45.0, over=20.0),
    dict(import_kw=100.0, renewable_kw=0.0, load_kw=100.0, full=1000.0, ths=4000.0, ci=500.0, price=200.0,
         rev=6.0, cost=20.0, meas=40.0, model=39.0, cap=45.0, over=0.0),
    dict(import_kw=0.0, renewable_kw=600.0, load_kw=500.0, full=1000.0, ths=20000.0, ci=300.0, price=-10.0,
         rev=30.0, cost=0.0, meas=42.0, model=41.0, cap=45.0, over=5.0),
]
DEFAULT_CI = 370.0
DAILY_BUDGET = 400.0


def _profile():
    base = load_profile("quiet_hollow")
    carbon = CarbonSection(daily_budget_kg=DAILY_BUDGET, default_intensity_kg_per_mwh=DEFAULT_CI,
                           intensity_source="test factor")
    return base.model_copy(update={"carbon": carbon})


def _measure(log: AuditLog, i: int, row: dict, start: datetime | None = None) -> None:
    s = start or T0 + i * H
    log.append("measurement", measurement_payload(
        s, 1.0, row["import_kw"], row["renewable_kw"], row["load_kw"], row["ths"], {"r1": row["meas"]}, row["ci"],
        row["price"], row["rev"], row["cost"], noise_model_dba={"r1": row["model"]}, noise_cap_dba={"r1": row["cap"]},
        noise_over_cap_min={"r1": row["over"]}, full_load_kw=row["full"], intensity_source="fuelmix"), s + H)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "site.db"
    profile = _profile()
    with AuditLog(path) as log:
        log.append("config", config_payload(profile, "start"), T0 - 5 * H)
        # outside the period, and a record later superseded for interval 0
        _measure(log, -1, {**ROWS[0], "import_kw": 9999.0}, start=datetime(2026, 3, 1, 23, tzinfo=UTC))
        _measure(log, 0, {**ROWS[0], "import_kw": 1.0})
        # DR: ev1 limit 200 kW on [04:00, 06:00), received 03:30, acked 5 s later, guard cut 2 s after start
        ev1 = DREventMessage(event_id="ev1", modification_number=0, program="ERS-10", start=T0 + H, end=T0 + 3 * H,
                             import_limit_kw=200.0, issuer="ercot")
        received = T0 + timedelta(minutes=30)
        log.append("dr_event", dr_event_payload(ev1, True, "accepted", 200.0, received), received)
        ack = DRAckMessage(event_id="ev1", modification_number=0, status="accepted", reason="ok",
                           acked_at=received + timedelta(seconds=5))
        log.append("dr_ack", dr_ack_payload(ack), received + timedelta(seconds=5))
        # ev2: shed 60 kW from a 100 kW baseline (limit 40) on [06:00, 08:00), cancelled at 06:30
        ev2 = DREventMessage(event_id="ev2", modification_number=0, program="utility", start=T0 + 3 * H,
                             end=T0 + 5 * H, shed_kw=60.0, baseline_kw=100.0, issuer="coop")
        log.append("dr_event", dr_event_payload(ev2, True, "accepted", 40.0, T0 + 2 * H), T0 + 2 * H)
        bad = DREventMessage(event_id="ev3", modification_number=0, program="utility", start=T0, end=T0 + H,
                             import_limit_kw=0.0, issuer="stranger")
        log.append("dr_event", dr_event_payload(bad, False, "unknown issuer", None, T0), T0)
        for i, row in enumerate(ROWS):
            _measure(log, i, row)
            if i == 0:
                log.append("guard_action", guard_action_payload("import_curtail", "DR ev1", ["m1"], event_id="ev1"),
                           T0 + H + timedelta(seconds=2))
                log.append("setpoints", {"source": "guard", "miners": 1, "counts": {"g/sleep": 1},
                                         "power_target_kw": 0.0, "issued_at": None, "expires_at": None},
                           T0 + H + timedelta(seconds=3))
        cancel = DREventMessage(event_id="ev2", modification_number=1, program="utility", start=T0 + 3 * H,
                                end=T0 + 5 * H, issuer="coop", cancelled=True)
        log.append("dr_event", dr_event_payload(cancel, True, "cancelled", None, T0 + 3.5 * H), T0 + 3.5 * H)
    return path


@pytest.fixture
def report(db: Path) -> dict:
    return build_report(db, START, END)


def col(key: str) -> list:
    return [r[key] for r in ROWS]


def mwh(key: str) -> float:
    return sum(col(key)) / 1000.0  # hourly intervals: kW·1 h


def energy_avg(levels: list[float]) -> float:
    return 10 * math.log10(sum(10 ** (x / 10) for x in levels) / len(levels))


# --------------------------------------------------------------------------- figures by hand


def test_report_header(report: dict) -> None:
    meta = report["report"]
    assert meta["audit"]["ok"] and meta["audit"]["head_seq"] == meta["audit"]["records"] == 14
    assert meta["simulated"] is False and meta["provenance"]["basis"] is None
    assert meta["profile_hashes"] == [profile_hash(_profile())]
    assert meta["timezone"] == "America/Chicago" and meta["measurement_intervals"] == 4
    assert meta["superseded_measurements"] == 1


def test_energy(report: dict) -> None:
    e = report["energy"]
    assert e["grid_import_mwh"] == pytest.approx(1.2) == pytest.approx(mwh("import_kw"))
    assert e["load_mwh"] == pytest.approx(2.3)
    assert e["renewable_generation_mwh"] == pytest.approx(1.3)
    used = sum(max(r["load_kw"] - r["import_kw"], 0) for r in ROWS) / 1000  # 0.2 + 0.4 + 0 + 0.5
    assert e["renewable_used_mwh"] == pytest.approx(used) == pytest.approx(1.1)
    assert e["renewable_share_annual_pct"] == round(100 * 1.3 / 2.3, 1)  # % to 0.1
    matched = sum(min(r["renewable_kw"], r["load_kw"]) for r in ROWS) / 1000  # 0.2 + 0.5 + 0 + 0.5
    assert e["renewable_share_hourly_pct"] == round(100 * matched / 2.3, 1)
    assert e["hours_covered"] == 4 and e["intervals"] == 4


def test_hour_matching_uses_clock_hours(tmp_path: Path) -> None:
    """Two half-hours: renewable all in the first, load all in the second. Per interval they never
    match; per hour the renewable covers the load."""
    path = tmp_path / "h.db"
    with AuditLog(path) as log:
        log.append("config", config_payload(_profile()), T0 - H)
        for k, (ren, load) in enumerate([(400.0, 0.0), (0.0, 400.0)]):
            s = T0 + k * timedelta(minutes=30)
            log.append("measurement", measurement_payload(s, 0.5, load, ren, load, 0.0, {}, None, 0.0, 0.0, 0.0), s)
    e = build_report(path, START, END)["energy"]
    assert e["renewable_share_hourly_pct"] == pytest.approx(100.0)
    assert e["renewable_used_mwh"] == 0.0 and e["renewable_share_annual_pct"] == pytest.approx(100.0)


def test_emissions_location_and_default_factor(report: dict) -> None:
    em = report["emissions"]
    location = 0.8 * 400 + 0.3 * DEFAULT_CI + 0.1 * 500 + 0.0 * 300  # 481 kg
    assert em["location_based_kg"] == pytest.approx(location)
    assert em["intervals_recorded_intensity"] == 3 and em["intervals_default_intensity"] == 1
    assert em["location_intensity_sources"] == {"recorded: fuelmix": 3, "profile default: test factor": 1}
    assert em["market_based_kg"] == pytest.approx(location) and em["market_method"] == "location"
    assert any("no contractual instruments" in n for n in em["notes"])
    ph_h = sum(col("ths")) / 1000  # 92 PH·h
    assert em["hashrate_ph_h"] == pytest.approx(ph_h)
    assert em["location_kg_per_ph_h"] == round(location / ph_h, 4)


def test_emissions_budget_per_local_day(report: dict) -> None:
    b = report["emissions"]["budget"]
    # local (CST) 1 March holds hours 0-2 (21:00-00:00), 2 March hour 3
    day1 = 0.8 * 400 + 0.3 * DEFAULT_CI + 0.1 * 500
    assert [d["day"] for d in b["per_day"]] == ["2026-03-01", "2026-03-02"]
    assert b["per_day"][0]["emissions_kg"] == pytest.approx(day1) and b["per_day"][0]["over"]
    assert b["per_day"][1]["emissions_kg"] == 0.0 and not b["per_day"][1]["over"]
    assert b["daily_budget_kg"] == DAILY_BUDGET and b["limit_kg"] == 2 * DAILY_BUDGET
    assert b["used_pct"] == round(100 * day1 / 800, 1) and b["days_over"] == 1


def test_market_based_with_recs(db: Path, tmp_path: Path) -> None:
    recs = tmp_path / "recs.csv"
    # 0.3 MWh whole, plus 0.4 MWh over two days of which one is in the period: 0.2
    recs.write_text("certificate_id,mwh,period_start,period_end\nA,0.3,,\n"
                    "B,0.4,2026-03-02T00:00Z,2026-03-04T00:00Z\n")
    em = build_report(db, START, END, recs_file=recs)["emissions"]
    location = 481.0
    assert em["recs_mwh"] == pytest.approx(0.5) and em["recs_applied_mwh"] == pytest.approx(0.5)
    assert em["market_based_kg"] == round(location * (1 - 0.5 / 1.2), 1)
    assert em["recs_source"].startswith("recs.csv sha256:")
    recs_json = tmp_path / "recs.json"
    recs_json.write_text(json.dumps({"recs": [{"mwh": 2.0}], "residual_mix_kg_per_mwh": 600}))
    em = build_report(db, START, END, recs_file=recs_json)["emissions"]
    assert em["recs_applied_mwh"] == pytest.approx(1.2) and em["market_based_kg"] == pytest.approx(0.0)
    recs_json.write_text(json.dumps({"recs": [{"mwh": 0.5}], "residual_mix_kg_per_mwh": 600}))
    em = build_report(db, START, END, recs_file=recs_json)["emissions"]
    assert em["market_based_kg"] == pytest.approx((1.2 - 0.5) * 600)
    assert em["market_method"] == "instruments, then residual mix"


def test_efficiency(report: dict) -> None:
    f = report["efficiency"]
    assert f["average_j_per_th"] == pytest.approx(1000 * sum(col("load_kw")) / sum(col("ths"))) == pytest.approx(25.0)
    assert f["hashrate_ph_h"] == pytest.approx(92.0) and f["average_hashrate_ph_s"] == pytest.approx(23.0)
    assert f["load_mwh"] == pytest.approx(2.3)


def test_noise(report: dict) -> None:
    n = report["noise"]["receptors"]["r1"]
    assert [h["measured_laeq_dba"] for h in n["hourly"]] == col("meas")
    assert [h["model_laeq_dba"] for h in n["hourly"]] == col("model")
    assert [h["cap_dba"] for h in n["hourly"]] == col("cap")
    assert [h["night"] for h in n["hourly"]] == [False, True, True, True]
    assert n["all"]["measured_laeq_dba"] == round(energy_avg(col("meas")), 1)  # dB(A) to 0.1
    assert n["day"]["measured_laeq_dba"] == pytest.approx(45.0)
    assert n["night"]["measured_laeq_dba"] == round(energy_avg([48.0, 40.0, 42.0]), 1)
    assert n["night"]["model_laeq_dba"] == round(energy_avg([47.0, 39.0, 41.0]), 1)
    assert n["all"]["minutes_over_cap"] == 25 and n["night"]["minutes_over_cap"] == 25
    assert n["day"]["minutes_over_cap"] == 0
    assert n["all"]["hours_over_cap"] == 1 and n["night"]["hours_over_cap"] == 1  # 48 > 45 in hour 1
    assert n["night"]["lowest_cap_dba"] == 45 and n["day"]["max_hourly_measured_dba"] == 45
    assert n["day"]["hours"] == 1 and n["night"]["hours"] == 3


def test_noise_hourly_is_energy_average_of_intervals(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with AuditLog(path) as log:
        for k, (level, over) in enumerate([(50.0, 15.0), (40.0, 0.0), (40.0, 0.0), (40.0, 0.0)]):
            s = T0 + k * timedelta(minutes=15)
            log.append("measurement", measurement_payload(s, 0.25, 0, 0, 0, 0, {"r": level}, None, 0, 0, 0,
                                                          noise_cap_dba={"r": 45.0 if k else 48.0},
                                                          noise_over_cap_min={"r": over}), s)
    hour = build_report(path, START, END)["noise"]["receptors"]["r"]["hourly"]
    assert len(hour) == 1
    assert hour[0]["measured_laeq_dba"] == round(10 * math.log10((1e5 + 3e4) / 4), 1)
    assert hour[0]["cap_dba"] == 45.0 and hour[0]["minutes_over_cap"] == 15.0


def test_demand_response(report: dict) -> None:
    dr = report["demand_response"]
    events = {e["event_id"]: e for e in dr["events"]}
    ev1 = events["ev1"]
    # ev1: limit 200 kW on [04:00, 06:00), ERS-10 (10 min ramp: the 04:00 interval is not assessed).
    # No history before 03:00 and no interval wholly in the hour before notice (03:30): no baseline.
    assert [i["metered_import_kw"] for i in ev1["per_interval"]] == [300.0, 100.0]
    assert [i["baseline_kw"] for i in ev1["per_interval"]] == [None, None] and ev1["baseline_method"] == "none"
    assert "found 0" in ev1["baselines"]["m8of10"]["note"]
    assert [i["compliant"] for i in ev1["per_interval"]] == [False, True]
    assert [i["assessed"] for i in ev1["per_interval"]] == [False, True] and ev1["ramp_minutes"] == 10
    assert ev1["assessed_intervals"] == 1 and ev1["compliance_pct"] == 100.0 and ev1["pass"] is True
    assert ev1["rule"].startswith("metered import at or under the limit")
    assert ev1["worst_excess_kw"] == 100.0
    assert ev1["notification_at"] == "2026-03-02T03:30:00+00:00"
    assert ev1["deployment_at"] == "2026-03-02T04:00:00+00:00"
    assert ev1["ack_s"] == 5.0 and ev1["ack_status"] == "accepted"
    assert ev1["first_setpoint_s"] == 3.0 and ev1["first_setpoint_source"] == "guard"
    # metered import first under the limit in [05:00, 06:00): by 06:00 at the latest, 7200 s after 04:00
    assert ev1["metered_under_limit_by"] == "2026-03-02T06:00:00+00:00" and ev1["metered_under_limit_s"] == 7200.0
    assert ev1["metered_resolution_s"] == 3600.0
    ev2 = events["ev2"]  # shed 60 of a given 100 kW baseline -> limit 40; cancelled 06:30: only hour 3 counts
    assert ev2["cancelled_at"] == "2026-03-02T06:30:00+00:00" and ev2["end"] == ev2["cancelled_at"]
    assert ev2["intervals"] == 1 and ev2["per_interval"][0]["baseline_method"] == "given by the event"
    assert ev2["obligated_reduction_kw"] == 60.0 and ev2["delivered_reduction_kw"] == 100.0
    assert ev2["event_performance_factor"] == round(100 / 60, 4) and ev2["pass"] is True
    assert ev2["per_interval"][0]["delivered_mw"] == 0.1 and ev2["per_interval"][0]["delivered_mwh"] == 0.1
    assert ev2["compliance_pct"] == 100.0 and ev2["limit_kw"] == 40.0
    assert events["ev3"]["accepted"] is False and events["ev3"]["rejections"] == ["unknown issuer"]
    high = dr["high_price"]  # price >= 100: hours 1 and 2, curtailed 300 and 900 kW
    assert high["intervals"] == 2 and high["hours"] == 2.0
    assert high["curtailed_mwh"] == pytest.approx((1000 - 700 + 1000 - 100) / 1000)


def test_economics(report: dict) -> None:
    ec = report["economics"]
    assert ec["revenue_usd"] == pytest.approx(sum(col("rev"))) == pytest.approx(138.0)
    assert ec["energy_cost_usd"] == pytest.approx(105.0)
    assert ec["profit_usd"] == pytest.approx(33.0)
    assert ec["average_energy_cost_usd_per_mwh"] == pytest.approx(105.0 / 1.2)
    assert ec["curtailment_hours"] == 3.0  # curtailed 0, 300, 900, 500 kW of 1000
    assert ec["curtailed_mwh"] == pytest.approx(1.7)


def test_hourly_series(report: dict) -> None:
    hourly = report["hourly"]
    assert [h["grid_import_mwh"] for h in hourly] == pytest.approx([0.8, 0.3, 0.1, 0.0])
    assert [h["location_kg"] for h in hourly] == pytest.approx([320.0, 111.0, 50.0, 0.0])
    assert [h["price_usd_mwh"] for h in hourly] == col("price")


def test_period_resolution() -> None:
    a, b = resolve_period("2026-03-01", "2026-03-01", "America/Chicago")
    assert a.isoformat() == "2026-03-01T06:00:00+00:00" and b.isoformat() == "2026-03-02T06:00:00+00:00"
    a, b = resolve_period("2026-03-08", "2026-03-08", "America/Chicago")  # DST starts: a 23-hour day
    assert (b - a).total_seconds() == 23 * 3600
    with pytest.raises(ValueError):
        resolve_period("2026-03-02T00:00Z", "2026-03-01T00:00Z")


def test_same_database_same_report(db: Path) -> None:
    assert to_json(build_report(db, START, END)) == to_json(build_report(db, START, END))


def test_tampered_trail_is_flagged_in_the_report(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET payload = replace(payload, '\"import_kw\":300.0', '\"import_kw\":30.0')")
    r = build_report(db, START, END)
    assert not r["report"]["audit"]["ok"] and r["report"]["audit"]["first_bad_seq"] is not None
    assert r["report"]["notes"][0].startswith("AUDIT CHAIN FAILED")
    assert "FAILED" in to_html(r)


# --------------------------------------------------------------------------- JSON, CSV, HTML


JSON_KEYS = {
    "report": {"period_start", "period_end", "site", "timezone", "profile_hashes", "measurement_intervals",
               "superseded_measurements", "notes", "audit", "simulated", "provenance"},
    "energy": {"intervals", "hours_covered", "grid_import_mwh", "load_mwh", "renewable_generation_mwh",
               "renewable_used_mwh", "renewable_share_annual_pct", "renewable_share_hourly_pct"},
    "emissions": {"grid_import_mwh", "location_based_kg", "location_intensity_sources",
                  "intervals_recorded_intensity", "intervals_default_intensity", "market_based_kg", "market_method",
                  "recs_mwh", "recs_applied_mwh", "recs_source", "residual_mix_kg_per_mwh", "hashrate_ph_h",
                  "location_kg_per_ph_h", "market_kg_per_ph_h", "notes", "budget", "instruments",
                  "instruments_applied_mwh", "residual_mix_source", "carbon_free_share_annual_pct",
                  "carbon_free_share_hourly_pct"},
    "efficiency": {"load_mwh", "hashrate_ph_h", "average_hashrate_ph_s", "average_j_per_th"},
    "noise": {"night_definition", "receptors"},
    "demand_response": {"tolerance_kw", "events", "high_price"},
    "ancillary": {"deployment_count", "accepted_count", "shortfall_count", "late_count", "late_arrival_count",
                  "above_award_count", "amended_count", "overrun_count", "released_count", "deployments", "shortfall_intervals", "awards", "notes",
                  # issue 15: what the report covers on a store still being written, cancelled deployments
                  "covers_through_seq", "covers_through_at", "final_through", "provisional_interval_count",
                  "cancelled_count", "trail_complete", "qualification"},  # H8: a finished backtest's trail
    "curtailment": {"by_cause", "per_day", "total_mwh", "total_hours", "intervals_without_full_load"},
    "economics": {"revenue_usd", "energy_cost_usd", "profit_usd", "average_energy_cost_usd_per_mwh",
                  "curtailment_hours", "curtailed_mwh",
                  "reserve_payment_usd", "reserve_clawback_usd", "reserve_revenue_usd",  # issue 15
                  "reserve_final_through", "reserve_provisional_payment_usd", "reserve_estimated_hold_intervals",
                  "reserve_unverified_payment_usd", "reserve_unverified_hold_h",
                  "uncosted_intervals", "uncosted_hours", "uncosted_grid_import_mwh", "uncosted_revenue_usd",
                  "notes"},
}


def test_json_keys(report: dict) -> None:
    data = json.loads(to_json(report))
    assert set(data) == set(JSON_KEYS) | {"hourly", "intervals"}
    for section, keys in JSON_KEYS.items():
        assert set(data[section]) == keys, section
    assert set(data["report"]["audit"]) == {"ok", "records", "head_seq", "head_hash", "first_bad_seq", "problem",
                                            "signed_head"}
    assert set(data["emissions"]["budget"]) == {"daily_budget_kg", "monthly_budget_kg", "used_kg", "limit_kg",
                                                "used_pct", "days_over", "per_day", "per_month"}
    r1 = data["noise"]["receptors"]["r1"]
    assert set(r1) == {"all", "day", "night", "hourly"}
    assert set(r1["night"]) == {"hours", "measured_laeq_dba", "model_laeq_dba", "max_hourly_measured_dba",
                                "lowest_cap_dba", "minutes_over_cap", "hours_over_cap"}
    ev = next(e for e in data["demand_response"]["events"] if e["event_id"] == "ev1")
    assert {"notification_at", "ack_at", "ack_s", "first_setpoint_at", "first_setpoint_s", "metered_under_limit_by",
            "metered_under_limit_s", "metered_resolution_s", "baseline_method", "baselines", "obligated_reduction_kw",
            "delivered_reduction_kw", "delivered_mwh", "event_performance_factor", "pass", "rule", "compliance_pct",
            "per_interval"} <= set(ev)
    assert set(data["demand_response"]["high_price"]) == {"threshold_usd_mwh", "intervals", "hours", "curtailed_mwh",
                                                          "intervals_without_full_load"}


def test_csv_is_the_json_flattened(report: dict) -> None:
    rows = list(csv.reader(io.StringIO(to_csv(report))))
    assert rows[0] == ["figure", "value"]
    values = dict(rows[1:])
    assert float(values["energy.grid_import_mwh"]) == pytest.approx(1.2)
    assert float(values["noise.receptors.r1.hourly.1.measured_laeq_dba"]) == 48.0
    assert values["demand_response.events.0.per_interval.0.compliant"] == "false"
    assert set(values) == {k for k, _ in flatten(report)}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.figures: set[str] = set()
        self.plots: dict[str, str] = {}
        self.meta: dict[str, str] = {}
        self.ids: set[str] = set()
        self._figure: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"] or "")
        if tag == "section":
            self.sections.append(a["id"] or "")
        if tag == "tr" and a.get("data-figure"):
            self.figures.add(a["data-figure"] or "")
        if tag == "figure":
            self._figure = a["id"]
        if tag == "img" and self._figure:
            self.plots[self._figure] = a.get("src") or ""
        if tag == "meta" and a.get("name"):
            self.meta[a["name"] or ""] = a.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _scalar_figures(value: object, prefix: str) -> set[str]:
    """Dotted keys the HTML must show as figure rows: scalars and lists of scalars; a dict whose values
    are not dicts counts as one figure (e.g. intensity sources); lists of dicts are tables, except DR
    events, which are shown one by one."""
    out: set[str] = set()
    if isinstance(value, dict):
        if value and not any(isinstance(v, (dict, list)) for v in value.values()) and prefix.endswith("sources"):
            return {prefix}
        for key, item in value.items():
            path = f"{prefix}.{key}"
            if isinstance(item, list) and item and isinstance(item[0], dict):
                if path == "demand_response.events":
                    for i, event in enumerate(item):
                        out |= _scalar_figures({k: v for k, v in event.items() if k != "per_interval"},
                                               f"{path}.{i}")
                continue
            out |= _scalar_figures(item, path)
        return out
    return {prefix}


def test_html_has_every_section_figure_plot_and_hash(report: dict) -> None:
    page = _Collector()
    page.feed(to_html(report))
    assert page.sections == ["audit", "energy", "emissions", "efficiency", "noise", "demand-response", "ancillary",
                             "curtailment", "economics", "definitions"]
    expected = set()
    for section in ("energy", "emissions", "efficiency", "noise", "demand_response", "economics", "curtailment"):
        expected |= _scalar_figures(report[section], section)
    expected = {e for e in expected if not e.startswith(("noise.receptors.", "curtailment.by_cause."))}
    expected |= {f"curtailment.by_cause.{cause}" for cause in report["curtailment"]["by_cause"]}
    for receptor, data in report["noise"]["receptors"].items():
        for period in ("all", "day", "night"):
            expected |= {f"noise.receptors.{receptor}.{period}.{k}" for k in data[period]}
    missing = expected - page.figures
    assert not missing, sorted(missing)
    for plot in ("plot-import", "plot-energy", "plot-emissions", "plot-noise-r1", "plot-dr-ev1", "plot-dr-ev2",
                 "plot-economics"):
        assert page.plots[plot].startswith("data:image/png;base64,"), plot
        assert len(page.plots[plot]) > 1000
    head = report["report"]["audit"]["head_hash"]
    assert page.meta["audit-head-hash"] == head and head in "".join(page.text)
    assert page.meta["profile-hash"] == profile_hash(_profile())
    assert {"noise-hourly-r1", "dr-intervals-ev1", "budget-per-day", "audit-head-hash", "profile-hash"} <= page.ids
    assert "http://" not in to_html(report) and "https://" not in to_html(report)  # self-contained


# --------------------------------------------------------------------------- CLI


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hashflex")
    add_report_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.mark.parametrize("fmt", ["html", "json", "csv"])
def test_cli_report_writes_each_format(db: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    assert _run(["report", "--from", "2026-03-01", "--to", "2026-03-02", "--db", str(db), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    if fmt == "json":
        data = json.loads(text)
        # bare dates are site-local: 1 March 00:00 CST to 3 March 00:00 CST covers the four hours and
        # also the 9999 kW record at 23:00 UTC (17:00 CST on 1 March) that the UTC period leaves out
        assert data["report"]["period_start"] == "2026-03-01T06:00:00+00:00"
        assert data["report"]["period_end"] == "2026-03-03T06:00:00+00:00"
        assert data["energy"]["grid_import_mwh"] == pytest.approx(1.2 + 9.999)
    elif fmt == "csv":
        assert text.startswith("figure,value\n")
    else:
        assert text.startswith("<!DOCTYPE html>")


def test_cli_report_on_tampered_db_exits_1(db: Path, tmp_path: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 3")
    out = tmp_path / "r.json"
    assert _run(["report", "--from", START, "--to", END, "--db", str(db), "--out", str(out)]) == 1
    assert json.loads(out.read_text())["report"]["audit"]["first_bad_seq"] == 3


def test_empty_period_has_no_events_and_still_renders(db: Path) -> None:
    r = build_report(db, "2026-03-05T00:00Z", "2026-03-06T00:00Z")
    assert r["demand_response"]["events"] == [] and r["report"]["measurement_intervals"] == 0
    assert r["energy"]["grid_import_mwh"] == 0.0 and r["energy"]["renewable_share_annual_pct"] is None
    assert r["efficiency"]["average_j_per_th"] is None and r["noise"]["receptors"] == {}
    assert "no measurement records in the period" in r["report"]["notes"]
    page = _Collector()
    page.feed(to_html(r))
    assert "demand-response" in page.sections
    to_csv(r)


def test_monthly_budget_limit(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    profile = _profile().model_copy(update={"carbon": CarbonSection(
        monthly_budget_kg=1000.0, default_intensity_kg_per_mwh=500.0, intensity_source="x")})
    with AuditLog(path) as log:
        log.append("config", config_payload(profile), T0 - H)
        log.append("measurement", measurement_payload(T0, 1.0, 400.0, 0, 400.0, 0, {}, None, 0, 0, 0), T0 + H)
    b = build_report(path, START, END)["emissions"]["budget"]
    assert b["limit_kg"] == 1000.0 and b["used_kg"] == 200.0 and b["used_pct"] == 20.0
    assert b["per_month"] == [{"month": "2026-03", "emissions_kg": 200.0, "budget_kg": 1000.0, "used_pct": 20.0,
                               "over": False}]
