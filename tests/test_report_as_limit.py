"""The report measures an AS deployment against the limit the loop enforced (issue 15, newcomer
finding 2), by the book's own method. Since the project lead's decision on the 2024-05-08 backtest
(tests/test_as_deployment_fixed_limit.py) that limit is measured from the pre-deployment load only:
baseline − deployed, constant until the recall; reserve awarded later does not raise it (the former
"award rise", limit + max(0, A(t) − A(t₀)), let load come back with shortfall 0 in the report).

The trail is written by the real control loop into a real store (as ``test_report_ancillary``).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from as_support import make_loop
from test_report_ancillary import NOW, PROFILE, QUARTER, _award, _prices

from hashflex.control.limits_ancillary import AncillaryBookMixin
from hashflex.control.records import AuditRecorder
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.store import Store


class _Book(AncillaryBookMixin):
    """Only what the book's ``deployment_limit_kw`` could read: the awards held (no other deployment in
    force, so the stacking rule subtracts nothing)."""

    def __init__(self, awards: dict[str, dict]) -> None:
        self.as_awards = awards
        self.as_deployments: dict = {}


def test_no_award_moves_the_book_limit_on_random_awards() -> None:
    """The rule changed by decision (was: the limit rose with awards beyond A₀, checked here against a
    copy of it): on 500 random award sets, moments and intervals the book's limit is the deployment's
    own, baseline − deployed (older books: ``limit_kw``), whatever was awarded before or after."""
    rng = random.Random(15)
    base = datetime(2024, 5, 9, tzinfo=UTC)
    for _ in range(500):
        awards = {}
        for i in range(rng.randint(0, 5)):
            start = base + timedelta(minutes=15 * rng.randint(0, 16))
            awards[f"a{i}"] = {"start": start.isoformat(),
                               "end": (start + timedelta(minutes=15 * rng.randint(1, 12))).isoformat(),
                               "reserve_kw": rng.choice([0.0, 100.0, 2700.0, rng.uniform(0, 5000)])}
        issued = base + timedelta(seconds=rng.randint(0, 4 * 3600))
        baseline, deployed = rng.uniform(0, 20000), rng.uniform(1, 5000)
        old = SimpleNamespace(issued_at=issued, limit_kw=max(baseline - deployed, 0.0), deployment_id="d",
                              awarded_at_instruction_kw=rng.choice([None, 0.0, 2700.0]))
        new = SimpleNamespace(**vars(old), baseline_kw=baseline, deployed_kw=deployed,
                              held_at_instruction_kw=0.0)
        start = issued + timedelta(seconds=rng.randint(0, 3 * 3600))
        end = None if rng.random() < 0.5 else start + timedelta(minutes=15)
        assert _Book(awards).deployment_limit_kw(old, start, end) == pytest.approx(max(baseline - deployed, 0.0))
        assert _Book(awards).deployment_limit_kw(new, start, end) == pytest.approx(max(baseline - deployed, 0.0))


def test_metered_shortfall_keeps_the_instruction_limit_after_a_later_award(tmp_path: Path) -> None:
    """RRS 4,950 kW awarded 16:00–20:00; RRS deploys 3,000 kW at 17:03: limit 5,050 − 3,000 =
    2,050 kW. At 17:20 ECRS 2,000 kW is awarded for 17:30–20:00. The rule changed by decision (was:
    the limit rose to 4,050 kW from 17:30 and the shortfall was 0.05 MW): the later award does not
    license load back, the limit stays 2,050 kW in the loop and in the report alike.

    Metered means: 17:15 2,000 kW, 17:30 4,000, 17:45 4,200 kW. Assessed (from the 17:13 deadline):
    17:15 under 2,050; 17:30 1,950 kW over; 17:45 2,150 kW over. Shortfall = (0 + 1,950 + 2,150) / 3
    = 1,366.7 kW = 1.3667 MW; mean limit 2,050 kW, equal to the loop's own rule per interval."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "later-award.db"
    loads = [1882.0, 2000.0, 4000.0, 4200.0]
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        assert loop.handle_as_award(_award("RRS"), NOW).status == "accepted"
        loop.tick(NOW)
        at = NOW + timedelta(minutes=3)
        deploy = ASDeployMessage(deployment_id="dep-1", product="RRS", issued_at=at, deployed_kw=3000.0,
                                 issuer="qse-test")
        assert loop.handle_as_deploy(deploy, at).status == "accepted"
        later = NOW + timedelta(minutes=20)
        ecrs = ASAwardMessage(award_id="ecrs-late", product="ECRS", start=NOW + timedelta(minutes=30),
                              end=NOW + timedelta(hours=3), reserve_kw=2000.0, price_usd_mw_h=10.0, issuer="qse-test")
        ack = loop.handle_as_award(ecrs, later)
        assert ack.status == "accepted", ack.reason
        for k, load_kw in enumerate(loads):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=load_kw, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        # The loop's own limit over each assessed interval (the one the plan and the guard use).
        (deployment,) = loop.book.as_deployments.values()
        loop_limits = [loop.book.deployment_limit_kw(deployment, NOW + k * QUARTER, NOW + (k + 1) * QUARTER)
                       for k in (1, 2, 3)]
        recorder.flush()
        recorder.close()
    assert loop_limits == pytest.approx([2050.0, 2050.0, 2050.0])
    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")
    (row,) = report["ancillary"]["deployments"]
    assert row["limit_kw"] == 2050.0  # the ack's limit, at the instruction
    assert row["metered_intervals"] == 3
    assert row["metered_limit_kw"] == pytest.approx(sum(loop_limits) / 3, abs=0.05)
    assert row["metered_shortfall_mw"] == pytest.approx(1.3667, abs=1e-4)
    assert row["metered_import_kw"] == pytest.approx(10200.0 / 3, abs=0.05)
    # 17:00–17:15 averaged 1,882 kW, under 2,050 already: the first interval under its limit ends 17:15.
    assert pd.Timestamp(row["metered_under_limit_by"]) == pd.Timestamp("2024-06-03T17:15Z")


def test_default_period_keeps_a_late_deployment_issued_before_the_first_measurement(tmp_path: Path) -> None:
    """Newcomer finding 3: without --from/--to the report covers the whole trail (README), but it
    began at the first measurement, so a deployment issued 15 min before it and arriving late was
    dropped (late_arrival_count 0). RRS 3,000 kW issued 16:45, received 17:00 (deadline 16:55)."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "late.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        assert loop.handle_as_award(_award("RRS"), NOW).status == "accepted"
        loop.tick(NOW)
        late = ASDeployMessage(deployment_id="dep-late", product="RRS", issued_at=NOW - QUARTER,
                               deployed_kw=3000.0, issuer="qse-test")
        ack = loop.handle_as_deploy(late, NOW)
        assert ack.status == "accepted" and ack.late is True, ack.reason
        for k in range(2):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=1000.0, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    report = build_report(db)  # the whole trail
    assert pd.Timestamp(report["report"]["period_start"]) == pd.Timestamp("2024-06-03T16:45Z")
    assert pd.Timestamp(report["report"]["period_end"]) == pd.Timestamp("2024-06-03T17:30Z")
    section = report["ancillary"]
    assert [r["deployment_id"] for r in section["deployments"]] == ["dep-late"]
    assert section["late_arrival_count"] == 1


def test_a_withdrawn_award_is_paid_for_the_time_it_was_held(tmp_path: Path) -> None:
    """Newcomer finding 5: a live award (RRS 4,950 kW at $150/MW-h, 16:00–20:00) withdrawn at
    18:00 by revision 1 (0 kW, 18:00–20:00, no price) showed reserve_payment_usd 0 while the hold
    shortfall of the same award was charged: the report paid only the latest revision. Report
    17:00–18:30: revision 0 held 17:00–18:00 (until revision 1 was recorded): 4.95 × 150 × 1 h =
    $742.50; the clawback is the loop's reserve_hold_short records at the same award's price."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "withdrawn.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        award = _award("RRS")
        assert loop.handle_as_award(award, NOW).status == "accepted"
        loop.tick(NOW)
        for k in range(4):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=5050.0, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        withdraw = award.model_copy(update={"revision": 1, "reserve_kw": 0.0, "price_usd_mw_h": None,
                                            "start": NOW + timedelta(hours=1)})
        ack = loop.handle_as_award(withdraw, NOW + timedelta(hours=1))
        assert ack.status == "accepted", ack.reason
        loop.record_measurement(NOW + 4 * QUARTER, 0.25, load_kw=5050.0, renewable_kw=0.0,
                                hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:30Z")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(742.5, abs=0.01)
    assert economics["reserve_revenue_usd"] == pytest.approx(742.5 - economics["reserve_clawback_usd"], abs=0.01)


def test_an_amended_award_is_paid_from_when_it_was_received_not_twice(tmp_path: Path) -> None:
    """Second newcomer finding 1: RRS 4,950 kW at $150/MW-h over 16:00–20:00, amended at 18:00 by
    revision 1 to 3,000 kW over the same window. Report 17:00–19:00: revision 0 held 17:00–18:00
    (4.95 × 150 × 1 h = $742.50), revision 1 18:00–19:00 (3.0 × 150 × 1 h = $450). The report paid
    revision 1 from the window's start too ($900 + $742.50: 17:00–18:00 paid twice)."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "amended.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        award = _award("RRS")
        assert loop.handle_as_award(award, NOW).status == "accepted"
        raised = award.model_copy(update={"revision": 1, "reserve_kw": 3000.0})
        assert loop.handle_as_award(raised, NOW + timedelta(hours=1)).status == "accepted"
        for k in range(8):
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=7050.0, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T19:00Z")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(742.5 + 450.0, abs=0.01)


def test_the_page_says_how_profit_and_curtailment_hours_differ_from_the_backtest_summary(tmp_path: Path) -> None:
    """Newcomer finding 7: report profit ≠ summary profit by the start cost, and curtailment_hours
    (19.0) ≠ the summary's curtailed_hours (10.57), neither labelled. The page now says both."""
    from test_report_ancillary import _report, _trail

    from hashflex.report.render import to_html

    db = tmp_path / "rrs.db"
    _trail(db, "RRS", 5000.0, [1090.0, 100.0, 100.0, 100.0])
    page = to_html(_report(db))
    assert "start costs not subtracted" in page
    assert "curtailed_hours weighs each interval by the share of units asleep" in page
    assert "Reserve charged back (awarded reserve not held)" in page
    assert "for deployment shortfalls" not in page  # the stale label


def test_on_a_backtest_db_the_report_shortfall_equals_the_backtest(tmp_path: Path) -> None:
    """The newcomer's case (finding 2): ``hashflex backtest --profile west_texas --ancillary example
    --policy mpc+as`` over 2024-05-08 (real bundled prices; SYNTHETIC deployments), then the report
    of its backtest.db. The report said metered_shortfall_mw 1.93 for SYN-NSPIN-20240509T0015, the
    summary 0.0 (the NSPIN award rose 2.7 → 4.9 MW at 01:00 UTC and the limit with it). Per
    deployment the report's metered shortfall must equal the backtest's per-interval
    ``as_deployment_short_kw`` over the same assessed intervals (h-weighted), and be 0 where the
    summary's measured shortfall is 0. Takes about 1.5 min (one simulated day through the loop)."""
    from hashflex.backtest.cli import main as backtest_main

    out = tmp_path / "bt"
    assert backtest_main(["backtest", "--profile", "west_texas", "--ancillary", "example", "--policy", "mpc+as",
                          "--from", "2024-05-08", "--to", "2024-05-08", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())["policies"]["mpc+as"]
    frame = pd.read_csv(out / "intervals_mpc+as.csv", parse_dates=["interval_start"])
    frame["interval_start"] = pd.to_datetime(frame["interval_start"], utc=True)
    rows = {r["deployment_id"]: r for r in build_report(out / "backtest.db")["ancillary"]["deployments"]}
    assert summary["as_deployments"], "the seeded SYNTHETIC draws put a deployment in this day"
    for deployment in summary["as_deployments"]:
        row = rows[deployment["deployment_id"]]
        deadline = pd.Timestamp(row["deadline"])
        until = pd.Timestamp(deployment["ended_at"]) if deployment.get("ended_at") else None
        inside = frame[(frame["interval_start"] >= deadline)
                       & ((frame["interval_start"] < until) if until is not None else True)]
        expected_kw = float((inside["as_deployment_short_kw"] * inside["duration_h"]).sum()
                            / inside["duration_h"].sum())
        assert row["metered_shortfall_mw"] == pytest.approx(expected_kw / 1000.0, abs=1e-3)
        if deployment["measured_shortfall_kw"] == 0.0:
            assert row["metered_shortfall_mw"] == 0.0
