"""Late and oversized AS deployments (issue 15): obeyed at once in full, and flagged in the ack, the
audit trail, /metrics and the evidence report.

The site (synthetic test data) is test_ancillary_control's: 10 hydro blocks of 1 MW, each drawing
10 kW asleep (a block sheds 990 kW), energy at $200/MWh (above breakeven: only an award keeps
blocks running). An RRS award of 4,950 kW keeps exactly 5 blocks running: modelled import
5 × 1,000 + 5 × 10 = 5,050 kW. RRS must be deployed within 600 s of the instruction.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from as_support import (
    NOW,
    award,
    deploy,
    flat_prices,
    hydro_profile_yaml,
    make_loop,
    metrics_text,
    running,
)

from hashflex.audit import AuditLog
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.report.render import to_html
from hashflex.store import Store

PROFILE = hydro_profile_yaml("AS Late", expected_deployments_per_month=None)
# RRS qualified for the whole hydro group (10 MW), for the deployments above the 4,950 kW award (up to
# 6,000 kW): a deployment may not exceed the qualification (92d4638 refuses one above it naming
# deployed_kw; with 5 MW these tests failed from then). test_as_intake_refusals takes PROFILE's 5 MW.
WIDE_PROFILE = hydro_profile_yaml("AS Late", expected_deployments_per_month=None, qualified_mw={"RRS": 10})


def _prices() -> pd.DataFrame:
    """SYNTHETIC flat $200/MWh, RT and DA."""
    return flat_prices()


def _award(kw: float = 4950.0) -> ASAwardMessage:
    return award("dam-0603-rrs", "RRS", kw, price_usd_mw_h=150.0)


def _deploy(deployment_id: str, issued_at, kw: float, product: str = "RRS", revision: int = 0) -> ASDeployMessage:
    return deploy(deployment_id, issued_at, kw, product=product, revision=revision)


def _loop(store: Store | None = None, recorder: AuditRecorder | None = None, profile_yaml: str = PROFILE
          ) -> ControlLoop:
    loop = make_loop(parse_profile(profile_yaml, source="test"), _prices(), store, recorder)
    assert loop.handle_as_award(_award(), NOW).status == "accepted"
    loop.tick(NOW)
    assert running(loop) == 5
    return loop


def test_a_deployment_arriving_after_its_deadline_is_cut_at_once_and_flagged_late() -> None:
    """RRS instructed at 17:03 (deadline 17:13) arrives at 17:14: 660 s after the instruction, 60 s
    late. Cut at once all the same (every block asleep: 100 kW idle, limit 5,050 − 4,000 = 1,050 kW:
    four blocks asleep leave 1,090 kW, over, so all five), and flagged everywhere."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    arrived = NOW + timedelta(minutes=14)
    ack = loop.handle_as_deploy(_deploy("late-1", issued, 4000.0), arrived)
    assert ack.status == "accepted", ack.reason
    assert ack.late is True and ack.late_by_s == pytest.approx(60.0)
    assert "late: arrived 660 s after the instruction, 60 s past the deadline; cut at once" in ack.reason
    assert ack.deadline == issued + timedelta(seconds=600)
    assert sum(loop.driver.running().values()) == 0  # obeyed at once: when in doubt, curtail
    performance = loop.as_performance["late-1"]
    assert performance["late"] is True and performance["arrival_delay_s"] == pytest.approx(660.0)
    # Time to respond counts from the instruction, as ERCOT counts it; the delay is shown beside it.
    assert performance["commanded_after_s"] == pytest.approx(660.0)
    assert performance["commanded_within_deadline"] is False
    assert loop.counters["as_late"] == 1 and loop.counters.get("as_above_award", 0) == 0
    # The meter read 100 kW 5 s after arrival: assessed on that first reading (none before was possible).
    loop.measure_as_deployments(100.0, arrived + timedelta(seconds=5))
    assert performance["measured_import_kw"] == pytest.approx(100.0)
    assert performance["measured_shortfall_kw"] == pytest.approx(0.0)
    assert performance["measured_response_s"] == pytest.approx(665.0)
    assert performance["measured_within_deadline"] is False
    text = metrics_text(loop, arrived)  # real HTTP on 127.0.0.1
    assert 'hashflex_events_total{counter="as_late"} 1.0' in text


def test_a_deployment_in_time_is_not_late_and_a_redelivery_keeps_its_flags() -> None:
    """2 s after the instruction: not late, not above the 4,950 kW award. A late one redelivered
    gets its first ack (flags included) and is counted once."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(_deploy("ontime", issued, 1000.0), issued + timedelta(seconds=2))
    assert ack.late is False and ack.late_by_s == 0.0 and ack.above_award_kw == 0.0 and ack.awarded_kw == 4950.0
    assert "late" not in ack.reason
    assert loop.counters.get("as_late", 0) == 0
    late = loop.handle_as_deploy(_deploy("late-2", issued, 500.0), issued + timedelta(minutes=11))
    again = loop.handle_as_deploy(_deploy("late-2", issued, 500.0), issued + timedelta(minutes=12))
    assert again == late and again.late is True
    assert loop.counters["as_late"] == 1  # the redelivery is not counted twice


def test_a_deployment_above_the_award_is_obeyed_in_full_and_measured_against_the_award() -> None:
    """RRS deploys 6,000 kW against a 4,950 kW award: 1,050 kW above it. The site obeys the full
    instruction (limit max(5,050 − 6,000, 0) = 0 kW: every block asleep, 100 kW idle left) and its
    obligation against the award is 4,950 kW: award limit 5,050 − 4,950 = 100 kW, met (0 short),
    while against the full instruction 100 kW is still over (idle draw cannot be shed)."""
    loop = _loop(profile_yaml=WIDE_PROFILE)
    issued = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(_deploy("big-1", issued, 6000.0), issued)
    assert ack.status == "accepted"
    assert ack.above_award_kw == pytest.approx(1050.0) and ack.awarded_kw == pytest.approx(4950.0)
    assert ack.late is False
    assert "more than the 4950 kW awarded" in ack.reason and "obeyed in full" in ack.reason
    assert ack.import_limit_kw == pytest.approx(0.0)
    assert sum(loop.driver.running().values()) == 0
    performance = loop.as_performance["big-1"]
    assert performance["above_award_kw"] == pytest.approx(1050.0)
    assert performance["award_obligation_kw"] == pytest.approx(4950.0)
    assert performance["award_limit_kw"] == pytest.approx(100.0)
    assert performance["shortfall_kw"] == pytest.approx(100.0)
    assert performance["award_shortfall_kw"] == pytest.approx(0.0)
    loop.measure_as_deployments(100.0, issued + timedelta(seconds=3))
    assert performance["measured_award_shortfall_kw"] == pytest.approx(0.0)
    assert performance["measured_shortfall_kw"] == pytest.approx(100.0)
    assert loop.counters["as_above_award"] == 1 and loop.counters.get("as_late", 0) == 0
    text = metrics_text(loop, issued)
    assert 'hashflex_events_total{counter="as_above_award"} 1.0' in text


def test_two_deployments_together_above_the_award_flag_the_second() -> None:
    """RRS 3,000 kW then another 3,000 kW while the first is in force: 6,000 kW deployed against
    4,950 kW awarded. Each alone is under the award; the second takes the product above it by
    1,050 kW, so its obligation against the award is 3,000 − 1,050 = 1,950 kW. RRS qualified for 10 MW
    (WIDE_PROFILE): 6,000 kW in force together is more than the default 5 MW, which the intake refuses (H10)."""
    loop = _loop(profile_yaml=WIDE_PROFILE)
    issued = NOW + timedelta(minutes=3)
    first = loop.handle_as_deploy(_deploy("a", issued, 3000.0), issued)
    assert first.above_award_kw == 0.0
    second = loop.handle_as_deploy(_deploy("b", issued + timedelta(minutes=1), 3000.0), issued + timedelta(minutes=1))
    assert second.above_award_kw == pytest.approx(1050.0)
    assert "6000 kW of RRS deployed is more than the 4950 kW awarded" in second.reason
    assert loop.as_performance["b"]["award_obligation_kw"] == pytest.approx(1950.0)
    assert loop.counters["as_above_award"] == 1


def test_an_amendment_above_the_award_is_flagged() -> None:
    """2,000 kW amended to 5,500 kW (revision 1): 550 kW above the 4,950 kW award."""
    loop = _loop(profile_yaml=WIDE_PROFILE)
    issued = NOW + timedelta(minutes=3)
    assert loop.handle_as_deploy(_deploy("m", issued, 2000.0), issued).above_award_kw == 0.0
    amended = loop.handle_as_deploy(_deploy("m", issued + timedelta(minutes=2), 5500.0, revision=1),
                                    issued + timedelta(minutes=2))
    assert amended.status == "accepted" and amended.above_award_kw == pytest.approx(550.0)
    assert loop.counters["as_above_award"] == 1


def test_late_and_oversized_deployments_are_in_the_audit_trail_and_the_report(tmp_path: Path) -> None:
    """Through the real recorder on a real store: the ack and the performance record carry the
    flags, and the evidence report's deployments table shows them (and counts them)."""
    db = tmp_path / "late.db"
    issued = NOW + timedelta(minutes=3)
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(store, recorder, WIDE_PROFILE)
        assert loop.handle_as_deploy(_deploy("late-1", issued, 6000.0), issued + timedelta(minutes=11)).late
        for k, load_kw in enumerate([3000.0, 100.0, 100.0, 100.0]):
            loop.record_measurement(NOW + k * timedelta(minutes=15), 0.25, load_kw=load_kw, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    with AuditLog(db, readonly=True) as log:
        records = [r for r in log.records() if r.kind in ("as_deploy", "as_performance")]
    deploy = next(r.payload for r in records if r.kind == "as_deploy")
    assert deploy["ack"]["late"] is True and deploy["ack"]["above_award_kw"] == pytest.approx(1050.0)
    performance = next(r.payload for r in records if r.kind == "as_performance")
    assert performance["late"] is True and performance["arrival_delay_s"] == pytest.approx(660.0)
    assert performance["above_award_kw"] == pytest.approx(1050.0)

    report = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")
    section = report["ancillary"]
    assert section["late_arrival_count"] == 1 and section["above_award_count"] == 1
    (row,) = section["deployments"]
    assert row["arrived_late"] is True and row["arrival_delay_s"] == 660.0
    assert row["response_s"] == 660.0  # from the instruction
    assert row["above_award_mw"] == 1.05 and row["award_obligation_mw"] == 4.95
    assert row["award_shortfall_mw"] == 0.0 and row["shortfall_mw"] == 0.1
    page = to_html(report)
    table = page[page.index('id="as-deployments"'):page.index("</table>", page.index('id="as-deployments"'))]
    assert "Arrived after its deadline" in table and "Deployed above the award" in table
    assert 'data-figure="ancillary.late_arrival_count"' in page
