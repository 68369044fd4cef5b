"""Evidence a utility and an auditor accept (issue 13): every new figure recomputed here from the raw
rows written to the trail — the ERCOT middle-8-of-10 baseline by hand over a small synthetic
history, a DR event's timeline and settlement rows, Scope 2 with instruments, curtailment by cause,
site-local times, the signed head, whole-trail reports — and a real simulated run
(``run_simulation`` with the real control loop and HiGHS) whose report says SIMULATED on every
section, table and plot, with the profile hash in force."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from hashflex.audit import AuditLog, config_payload, dr_ack_payload, dr_event_payload, measurement_payload
from hashflex.messages import DRAckMessage, DREventMessage
from hashflex.profile import CarbonSection, load_profile, profile_hash
from hashflex.report import build_report
from hashflex.report.cli import add_report_parsers
from hashflex.report.export import intervals_csv, settlement_csv
from hashflex.report.render import to_html

UTC = timezone.utc
CHI = ZoneInfo("America/Chicago")
Q = timedelta(minutes=15)


def _local(day: dt.date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=CHI).astimezone(UTC)


def _profile():
    base = load_profile("quiet_hollow")
    return base.model_copy(update={"carbon": CarbonSection(default_intensity_kg_per_mwh=400.0,
                                                           intensity_source="test factor")})


def _m(start: datetime, import_kw: float, *, full: float = 1000.0, renewable: float = 0.0,
       intensity: float | None = None) -> tuple[datetime, str, dict]:
    load = import_kw + renewable
    return (start + Q, "measurement", measurement_payload(start, 0.25, import_kw, renewable, load, 0.0, {}, intensity,
                                                          30.0, 0.0, 0.0, full_load_kw=full, intensity_source="grid"))


def _write(path: Path, rows: list[tuple[datetime, str, dict]]) -> None:
    with AuditLog(path) as log:
        for at, kind, payload in sorted(rows, key=lambda r: r[0]):
            log.append(kind, payload, at)


# --------------------------------------------------------------------------- the baseline by hand

EVENT_DAY = dt.date(2026, 4, 15)  # a Wednesday (CDT, UTC−5)
# the ten most recent like weekdays before it, newest first, each with its load L (kW) in the event
# window; Apr 8 had a DR event and Apr 2 misses an interval, so neither is a like day; older days
# and weekends carry loads that would change the answer if they were picked.
LIKE = {dt.date(2026, 4, 14): 500.0, dt.date(2026, 4, 13): 900.0, dt.date(2026, 4, 10): 300.0,
        dt.date(2026, 4, 9): 700.0, dt.date(2026, 4, 7): 800.0, dt.date(2026, 4, 6): 200.0,
        dt.date(2026, 4, 3): 600.0, dt.date(2026, 4, 1): 1000.0, dt.date(2026, 3, 31): 400.0,
        dt.date(2026, 3, 30): 650.0}
NOT_LIKE = {dt.date(2026, 4, 8): 3000.0, dt.date(2026, 4, 2): 3000.0, dt.date(2026, 3, 27): 5000.0,
            dt.date(2026, 3, 26): 5000.0, dt.date(2026, 4, 11): 9999.0, dt.date(2026, 4, 12): 9999.0,
            dt.date(2026, 4, 4): 9999.0, dt.date(2026, 4, 5): 9999.0}
EVENT_METERED = [900.0, 400.0, 250.0, 300.0]  # 14:00, 14:15, 14:30, 14:45 local
PRE_EVENT_KW = 727.5  # event day, 11:30-13:30 local (the adjustment window before the 13:30 notice)
LIMIT_KW = 300.0


@pytest.fixture
def baseline_db(tmp_path: Path) -> Path:
    path = tmp_path / "baseline.db"
    rows = [(_local(dt.date(2026, 3, 20), 0), "config", config_payload(_profile(), "start"))]
    for day, load in {**LIKE, **NOT_LIKE}.items():
        for k in range(8):  # adjustment window: the day's load, flat
            rows.append(_m(_local(day, 11, 30) + k * Q, load))
        for j in range(4):  # event window: load + 10 kW per interval
            if day == dt.date(2026, 4, 2) and j == 2:
                continue
            rows.append(_m(_local(day, 14) + j * Q, load + 10.0 * j))
    old = DREventMessage(event_id="apr8", modification_number=0, program="ERS-30", start=_local(dt.date(2026, 4, 8), 10),
                         end=_local(dt.date(2026, 4, 8), 11), import_limit_kw=0.0, issuer="ercot")
    rows.append((_local(dt.date(2026, 4, 8), 9), "dr_event",
                 dr_event_payload(old, True, "accepted", 0.0, _local(dt.date(2026, 4, 8), 9))))
    for k in range(8):
        rows.append(_m(_local(EVENT_DAY, 11, 30) + k * Q, PRE_EVENT_KW))
    notice = _local(EVENT_DAY, 13, 30)
    event = DREventMessage(event_id="ers-apr15", modification_number=0, program="ERS-30", start=_local(EVENT_DAY, 14),
                           end=_local(EVENT_DAY, 15), import_limit_kw=LIMIT_KW, issuer="ercot")
    rows.append((notice, "dr_event", dr_event_payload(event, True, "accepted", LIMIT_KW, notice)))
    ack = DRAckMessage(event_id="ers-apr15", modification_number=0, status="accepted", reason="ok",
                       acked_at=notice + timedelta(seconds=2))
    rows.append((notice + timedelta(seconds=2), "dr_ack", dr_ack_payload(ack)))
    rows.append((_local(EVENT_DAY, 14) + timedelta(seconds=1), "setpoints",
                 {"source": "guard", "miners": 3, "counts": {}, "power_target_kw": 0.0, "issued_at": None,
                  "expires_at": None}))
    for j, kw in enumerate(EVENT_METERED):
        rows.append(_m(_local(EVENT_DAY, 14) + j * Q, kw))
    _write(path, rows)
    return path


def _middle_8_of_10_by_hand() -> tuple[list[float], float]:
    """Rank the ten like days by their event-window mean, drop the highest and lowest, average."""
    ranked = sorted(LIKE.items(), key=lambda kv: (kv[1] + 15.0, kv[0]))  # window mean = L + 15
    kept = [load for _, load in ranked[1:-1]]
    assert sorted(kept) == sorted([500.0, 900.0, 300.0, 700.0, 800.0, 600.0, 400.0, 650.0])  # 1000, 200 dropped
    unadjusted = [sum(load + 10.0 * j for load in kept) / 8 for j in range(4)]  # 606.25 + 10 j
    factor = PRE_EVENT_KW / (sum(kept) / 8)  # event-day adjustment over the 2 h before the notice: 1.2
    return [factor * u for u in unadjusted], factor


def test_middle_8_of_10_baseline_and_event_timeline_by_hand(baseline_db: Path) -> None:
    report = build_report(baseline_db, "2026-04-15", "2026-04-15")
    assert report["report"]["simulated"] is False
    event = next(e for e in report["demand_response"]["events"] if e["event_id"] == "ers-apr15")
    expected, factor = _middle_8_of_10_by_hand()
    assert factor == pytest.approx(1.2)
    m8 = event["baselines"]["m8of10"]
    assert m8["days_dropped"] == ["2026-04-06", "2026-04-01"]
    assert m8["days_used"] == sorted(str(d) for d in LIKE if str(d) not in ("2026-04-06", "2026-04-01"))
    assert m8["adjustment_factor"] == pytest.approx(factor)
    rows = event["per_interval"]
    assert event["baseline_method"] == "ERCOT middle 8-of-10 like days"
    assert [r["baseline_kw"] for r in rows] == [round(v, 1) for v in expected]  # 727.5, 739.5, 751.5, 763.5
    assert [r["baseline_meter_before_kw"] for r in rows] == [PRE_EVENT_KW] * 4  # the hour before 13:30
    assert [r["metered_import_kw"] for r in rows] == EVENT_METERED
    assert [r["obligated_kw"] for r in rows] == [round(max(v - LIMIT_KW, 0.0), 1) for v in expected]
    delivered = [b - kw for b, kw in zip(expected, EVENT_METERED, strict=True)]
    assert [r["delivered_kw"] for r in rows] == [round(d, 1) for d in delivered]
    assert [r["delivered_mw"] for r in rows] == [round(d / 1000, 4) for d in delivered]
    assert [r["delivered_mwh"] for r in rows] == [round(d * 0.25 / 1000, 3) for d in delivered]  # to the kWh
    # ERS-30: intervals starting before 14:30 are the ramp, not assessed; the rest are under 300 kW
    assert [r["assessed"] for r in rows] == [False, False, True, True]
    assert [r["compliant"] for r in rows] == [False, False, True, True]
    assert event["pass"] is True and event["ramp_minutes"] == 30 and event["compliance_pct"] == 100.0
    owed = sum(max(v - LIMIT_KW, 0.0) for v in expected[2:])
    assert event["event_performance_factor"] == round(sum(delivered[2:]) / owed, 4)
    # timeline: notified 13:30, acked 2 s later, first setpoints 1 s after 14:00, metered import
    # under the limit in the 14:30 interval: by 14:45 at the latest (2700 s, interval resolution)
    assert event["notification_at"] == "2026-04-15T18:30:00+00:00"
    assert event["ack_s"] == 2.0 and event["first_setpoint_s"] == 1.0
    assert event["metered_under_limit_by"] == "2026-04-15T19:45:00+00:00"
    assert event["metered_under_limit_s"] == 2700.0 and event["metered_resolution_s"] == 900.0
    settle = list(csv.DictReader(io.StringIO(settlement_csv(report, event))))
    assert [row["interval_start_utc"] for row in settle] == [r["interval_start"] for r in rows]
    assert settle[0]["interval_start_local"] == "2026-04-15 14:00 CDT (UTC−05:00)"
    assert [float(row["delivered_mw"]) for row in settle] == [r["delivered_mw"] for r in rows]
    assert {row["simulated"] for row in settle} == {"false"}


def test_fewer_than_ten_like_days_gives_no_m8of10_baseline(tmp_path: Path) -> None:
    """Two like days only: ERCOT's type needs ten, so the meter-before baseline is used and says so."""
    path = tmp_path / "short.db"
    rows = [(_local(dt.date(2026, 4, 10), 0), "config", config_payload(_profile()))]
    for day in (dt.date(2026, 4, 13), dt.date(2026, 4, 14)):
        rows += [_m(_local(day, 14) + j * Q, 500.0) for j in range(4)]
    rows += [_m(_local(EVENT_DAY, 13) + k * Q, 640.0) for k in range(4)]
    event = DREventMessage(event_id="e", modification_number=0, program="utility", start=_local(EVENT_DAY, 14),
                           end=_local(EVENT_DAY, 14, 30), import_limit_kw=240.0, issuer="coop")
    rows.append((_local(EVENT_DAY, 14), "dr_event", dr_event_payload(event, True, "accepted", 240.0,
                                                                      _local(EVENT_DAY, 14))))
    rows += [_m(_local(EVENT_DAY, 14) + j * Q, kw) for j, kw in enumerate([300.0, 200.0])]
    _write(path, rows)
    ev = build_report(path)["demand_response"]["events"][0]
    assert "found 2" in ev["baselines"]["m8of10"]["note"]
    assert ev["baseline_method"] == "meter before event"
    assert [r["baseline_kw"] for r in ev["per_interval"]] == [640.0, 640.0]
    # owed = 640 - 240 per interval; factor = Σ delivered / Σ owed = (340 + 440) / (400 + 400), but a firm
    # limit fails on the 14:00 interval (300 kW > 240 kW; no ramp for a "utility" event)
    assert ev["event_performance_factor"] == round(780 / 800, 4)
    assert [r["compliant"] for r in ev["per_interval"]] == [False, True] and ev["pass"] is False
    assert ev["rule"].startswith("metered import at or under the limit")


# --------------------------------------------------------------------------- Scope 2, curtailment, CSV


def test_scope2_with_profile_instruments_curtailment_by_cause_and_interval_csv(tmp_path: Path) -> None:
    """Instruments and a residual mix read from the profile JSON of the config record (the fields the
    lead is asked to add to profile.py); schedule records name the binding reason per interval."""
    path = tmp_path / "s2.db"
    config = config_payload(_profile())
    config["profile"]["carbon"]["instruments"] = [
        {"id": "rec-1", "kind": "REC", "mwh": 0.2, "source": "M-RETS certificate 42"},
        {"id": "ppa-1", "kind": "PPA", "mwh": 1.0, "emission_factor_kg_per_mwh": 50.0,
         "period_start": "2026-04-15T00:00Z", "period_end": "2026-04-17T00:00Z", "source": "wind PPA"}]
    config["profile"]["carbon"]["residual_mix_kg_per_mwh"] = 600.0
    config["profile"]["carbon"]["residual_mix_source"] = "Green-e residual mix 2025"
    t0 = _local(EVENT_DAY, 10)
    rows = [(t0 - timedelta(hours=1), "config", config)]
    # four intervals: import kW, renewable kW, full load kW, intensity, plan reason
    spec = [(400.0, 0.0, 1000.0, 500.0, "price"), (200.0, 300.0, 1000.0, None, "noise:r1"),
            (800.0, 0.0, 800.0, 300.0, ""), (100.0, 100.0, 1000.0, 450.0, "DR:ev9")]
    for k, (imp, ren, full, ci, reason) in enumerate(spec):
        start = t0 + k * Q
        rows.append(_m(start, imp, full=full, renewable=ren, intensity=ci))
        rows.append((start, "schedule", {"first_row": {"interval_start": start.isoformat(), "reason": reason,
                                                       "import_limit_kw": 900.0, "import_limit_source": "import limit"},
                                         "reasons": {}}))
    _write(path, rows)
    r = build_report(path)
    em = r["emissions"]
    import_mwh = [imp * 0.25 / 1000 for imp, *_ in spec]  # 0.1, 0.05, 0.2, 0.025
    factor = [ci if ci is not None else 400.0 for *_, ci, _ in spec]
    location = sum(mwh * f for mwh, f in zip(import_mwh, factor, strict=True))
    assert em["location_based_kg"] == round(location, 1)
    total = sum(import_mwh)  # 0.375 MWh
    # the report period is the trail: 10:00-11:00 CDT; the PPA's 1 MWh over 48 h gives 1/48 MWh to it
    ppa = 1.0 / 48
    rec = 0.2
    market = ppa * 50.0 + (total - rec - ppa) * 600.0  # the REC (factor 0) covers 0.2 MWh first
    assert em["market_based_kg"] == round(market, 1) and em["market_method"] == "instruments, then residual mix"
    assert [i["mwh_applied"] for i in em["instruments"]] == [0.2, round(ppa, 3)]
    assert em["residual_mix_source"] == "Green-e residual mix 2025"
    load = [imp + ren for imp, ren, *_ in spec]
    load_mwh = sum(load) * 0.25 / 1000
    used = sum(ren for _, ren, *_ in spec) * 0.25 / 1000  # renewable never exceeds load here
    assert em["carbon_free_share_annual_pct"] == round(100 * (used + rec + ppa) / load_mwh, 1)
    assert em["carbon_free_share_hourly_pct"] == round(100 * used / load_mwh, 1)  # one clock hour
    hour = r["hourly"][0]
    assert hour["location_kg_per_mwh"] == round(sum(factor) / 4, 1)
    assert hour["intensity_source"] == "profile default: test factor; recorded: grid"
    cur = r["curtailment"]["by_cause"]  # curtailed = full - load: 600, 500, 0, 800 kW
    assert cur == {"price": {"mwh": 0.15, "hours": 0.25, "intervals": 1},
                   "noise at r1": {"mwh": 0.125, "hours": 0.25, "intervals": 1},
                   "DR ev9": {"mwh": 0.2, "hours": 0.25, "intervals": 1}}
    assert r["curtailment"]["per_day"][0]["day"] == "2026-04-15"
    table = list(csv.DictReader(io.StringIO(intervals_csv(r))))
    assert len(table) == 4 and table[0]["interval_start_utc"] == "2026-04-15T15:00:00+00:00"
    assert table[0]["interval_start_local"] == "2026-04-15 10:00 CDT (UTC−05:00)"
    assert [float(row["import_kw"]) for row in table] == [imp for imp, *_ in spec]
    assert [row["curtailment_cause"] for row in table] == ["price", "noise at r1", "", "DR ev9"]
    assert [float(row["import_limit_kw"]) for row in table] == [900.0] * 4
    page = to_html(r)
    assert "2026-04-15 10:00 CDT (UTC−05:00)" in page and "SIMULATED" not in page


# --------------------------------------------------------------------------- signed head, whole trail


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hashflex")
    add_report_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_signed_head_is_shown_with_its_verification(baseline_db: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HASHFLEX_AUDIT_HMAC_KEY", "test-key")
    with AuditLog(baseline_db, readonly=True) as log:
        signature = log.sign_head()
    out = tmp_path / "r.json"
    assert _cli(["report", "--db", str(baseline_db), "--out", str(out), "--signature", signature]) == 0
    data = json.loads(out.read_text())
    assert data["report"]["audit"]["signed_head"]["ok"] is True
    # whole trail without --from/--to: the first history interval to the end of the event day's last one
    assert data["report"]["period_start"] == _local(dt.date(2026, 3, 26), 11, 30).isoformat()
    assert data["report"]["period_end"] == (_local(EVENT_DAY, 14, 45) + Q).isoformat()
    page = tmp_path / "r.html"
    assert _cli(["report", "--db", str(baseline_db), "--out", str(page), "--signature", signature]) == 0
    assert signature in page.read_text() and "matches" in page.read_text()
    monkeypatch.setenv("HASHFLEX_AUDIT_HMAC_KEY", "another-key")
    assert _cli(["report", "--db", str(baseline_db), "--out", str(out), "--signature", signature]) == 1
    assert json.loads(out.read_text())["report"]["audit"]["signed_head"]["ok"] is False


# --------------------------------------------------------------------------- a real simulated run


class _Page(HTMLParser):
    """Sections with their SIMULATED banners, tables with their captions, figures with their captions."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.sections: dict[str, bool] = {}
        self.tables: list[str] = []
        self.figures: list[str] = []
        self._section: str | None = None
        self._in: list[str] = []
        self._text: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id") or ""
            self.sections[self._section] = False
        if tag == "p" and "simulated" in (a.get("class") or "") and self._section is not None:
            self.sections[self._section] = True
        if tag in ("caption", "figcaption", "title"):
            self._in.append(tag)
            self._text[tag] = []
        if tag == "table":
            self.tables.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("caption", "figcaption", "title") and self._in and self._in[-1] == tag:
            self._in.pop()
            text = "".join(self._text[tag])
            if tag == "caption":
                self.tables[-1] = text
            elif tag == "figcaption":
                self.figures.append(text)
            else:
                self.title = text

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text[self._in[-1]].append(data)


@pytest.fixture(scope="module")
def simulated_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from hashflex.backtest.runner import load_prices
    from hashflex.data import bundled_path
    from hashflex.sim.site import run_simulation, simulation_window

    profile = load_profile("west_texas")
    prices = load_prices(profile, [bundled_path("ercot/RTM-2020-02.csv")], [])
    window = simulation_window(profile, prices, intervals=8)
    begin = (window.start + pd.Timedelta(minutes=45)).to_pydatetime()
    event = DREventMessage(event_id="demo-test-1", modification_number=0, program="ERS-10", start=begin,
                           end=begin + timedelta(minutes=45), level=3, issuer=profile.dr.issuers[0])
    path = tmp_path_factory.mktemp("sim") / "hashflex.db"
    run_simulation(profile, prices, window.start, window.intervals, dr_events=[event], time_limit_s=5.0,
                   store_path=str(path))
    return path, profile


def test_simulated_run_report_is_labelled_everywhere(simulated_db: tuple[Path, object], tmp_path: Path) -> None:
    path, profile = simulated_db
    report = build_report(path)
    meta = report["report"]
    assert meta["simulated"] is True and meta["provenance"]["basis"] == "explicit"  # the loop marks its run mode
    # the config record carries the wall clock, the rest simulated 2020 time: the hash is still in force
    assert meta["profile_hashes"] == [profile_hash(profile)]
    assert meta["measurement_intervals"] == 8
    event = report["demand_response"]["events"][0]
    assert event["event_id"] == "demo-test-1" and event["synthetic"] is True
    # At night a 0 kW emergency limit is unreachable (idle and auxiliary load stay on): the report
    # recomputes the verdict from the metered rows rather than echoing the simulator's "held"
    rows = event["per_interval"]
    assessed = [r for r in rows if r["assessed"]]
    assert event["pass"] == all(r["metered_import_kw"] <= r["limit_kw"] for r in assessed)
    assert event["worst_excess_kw"] == max(r["metered_import_kw"] - r["limit_kw"] for r in rows)
    assert event["first_setpoint_s"] == 0.0 and event["first_setpoint_source"] == "guard"
    page = _Page()
    page.feed(to_html(report))
    assert page.title.startswith("SIMULATED")
    assert set(page.sections) >= {"audit", "energy", "emissions", "noise", "demand-response", "curtailment",
                                  "economics", "definitions"}
    assert all(page.sections.values()), [s for s, ok in page.sections.items() if not ok]
    assert page.tables and all(c.startswith("SIMULATED") for c in page.tables), page.tables
    assert len(page.figures) >= 5 and all(c.startswith("SIMULATED") for c in page.figures), page.figures
    assert "CST (UTC−06:00)" in page.title
    out = tmp_path / "exports"
    assert _cli(["report", "--db", str(path), "--out", str(tmp_path / "r.html"), "--export-dir", str(out)]) == 0
    table = list(csv.DictReader((out / "intervals.csv").open()))
    assert len(table) == 8 and {row["simulated"] for row in table} == {"true"}
    settle = list(csv.DictReader((out / "dr_demo-test-1.csv").open()))
    assert settle and {row["simulated"] for row in settle} == {"true"}


def test_the_simulated_report_opens_in_a_real_browser(simulated_db: tuple[Path, object], tmp_path: Path) -> None:
    """The report as an auditor opens it: headless Chromium renders the HTML, the SIMULATED banner
    is visible text, every plot image loaded, and a screenshot is kept as an artefact."""
    from test_dashboard_browser import browser

    path, _ = simulated_db
    html = tmp_path / "report.html"
    assert _cli(["report", "--db", str(path), "--out", str(html)]) == 0
    driver = browser()
    try:
        driver.get(html.as_uri())
        body = driver.find_element("tag name", "body").text
        assert body.lstrip().startswith("SIMULATED") or "SIMULATED" in body.splitlines()[0]
        images = driver.find_elements("tag name", "img")
        assert len(images) >= 5
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)
                   for i in images), "every embedded plot decodes"
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
