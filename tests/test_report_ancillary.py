"""The evidence report's "Ancillary service deployments" section (issue 15), from a trail written by
the control loop itself: an award and a deployment go through ``handle_as_award`` /
``handle_as_deploy`` (inline HiGHS solve, in-process simulated fleet, the real audit recorder on a
real store), the loop records each interval's measurement, and the report's numbers are checked
against values worked out by hand below.

The site (synthetic test data): 10 hydro blocks of 1 MW, each drawing 10 kW asleep, energy at
$200/MWh (above breakeven: the plan runs only what an award keeps running). An award of 4,950 kW
keeps exactly 5 blocks running (a block sheds 990 kW): modelled import 5 × 1,000 + 5 × 10 =
5,050 kW.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from as_support import award, flat_prices, hydro_profile_yaml, make_loop

from hashflex.audit import AuditLog
from hashflex.control.records import AuditRecorder
from hashflex.messages import ASAwardMessage, ASDeployMessage
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.report.render import to_csv, to_html
from hashflex.store import Store

PROFILE = hydro_profile_yaml("AS Report", expected_deployments_per_month=None)
NOW = pd.Timestamp("2024-06-03T17:00Z").to_pydatetime()
QUARTER = timedelta(minutes=15)


def _prices() -> pd.DataFrame:
    """SYNTHETIC flat $200/MWh, RT and DA."""
    return flat_prices()


def _award(product: str) -> ASAwardMessage:
    return award(f"dam-0603-{product.lower()}", product, 4950.0, price_usd_mw_h=150.0)


def _trail(db: Path, product: str, deployed_kw: float, loads_kw: list[float],
           recall_after: timedelta | None = None, skip: tuple[int, ...] = ()) -> None:
    """Award at 17:00, plan, deployment at 17:03 (optionally recalled), then one measurement per
    quarter hour from 17:00 with the given mean site load (no renewables: import = load), except the
    quarters numbered in ``skip`` (the controller down: no record)."""
    profile = parse_profile(PROFILE, source="test")
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        assert loop.handle_as_award(_award(product), NOW).status == "accepted"
        loop.tick(NOW)
        assert sum(loop.driver.running().values()) == 5
        at = NOW + timedelta(minutes=3)
        message = ASDeployMessage(deployment_id="dep-1", product=product, issued_at=at, deployed_kw=deployed_kw,
                                  issuer="qse-test")
        assert loop.handle_as_deploy(message, at).status == "accepted"
        # The site meter: still over the limit 20 s after the instruction, under it at 45 s.
        loop.measure_as_deployments(loads_kw[0] * 10, at + timedelta(seconds=20))
        loop.measure_as_deployments(min(loads_kw), at + timedelta(seconds=45))
        if recall_after is not None:
            recall = message.model_copy(update={"recalled": True, "issued_at": at + recall_after})
            assert loop.handle_as_deploy(recall, at + recall_after).status == "accepted"
        for k, load_kw in enumerate(loads_kw):
            if k in skip:
                continue
            loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=load_kw, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    with AuditLog(db, readonly=True) as log:
        kinds = {r.kind for r in log.records()}
    assert {"as_award", "as_deploy", "as_performance", "measurement"} <= kinds


def _report(db: Path) -> dict:
    return build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")


def test_rrs_deployment_with_a_shortfall_is_listed_with_its_numbers(tmp_path: Path) -> None:
    """RRS deploys 5,000 kW at 17:03: limit 5,050 − 5,000 = 50 kW. The fast path sleeps all 5
    running blocks at once, leaving 10 × 10 kW idle = 100 kW: delivered 5,050 − 100 = 4,950 kW
    = 4.95 MW (100 % of the 4.95 MW awarded), shortfall 100 − 50 = 50 kW = 0.05 MW, commanded
    0 s after the instruction, well inside RRS's 10 minutes (deadline 17:13).

    Metered: 17:00–17:15 averages (3 min × 5,050 + 12 min × 100) / 15 = 1,090 kW; then 100 kW.
    Intervals starting at or after the deadline (17:15, 17:30, 17:45) average 100 kW: metered
    delivered (5,050 − 100) / 1000 = 4.95 MW, metered shortfall 0.05 MW; no interval is at or
    under 50 kW, so there is no metered time under the limit."""
    db = tmp_path / "rrs.db"
    _trail(db, "RRS", 5000.0, [1090.0, 100.0, 100.0, 100.0])
    section = _report(db)["ancillary"]
    assert section["deployment_count"] == 1 and section["accepted_count"] == 1
    assert section["shortfall_count"] == 1 and section["late_count"] == 0
    (row,) = section["deployments"]
    assert row["deployment_id"] == "dep-1" and row["product"] == "RRS" and row["accepted"] is True
    assert row["issued_at"] == "2024-06-03T17:03:00+00:00"
    assert row["deadline"] == "2024-06-03T17:13:00+00:00" and row["deadline_s"] == 600.0
    assert row["deployed_mw"] == 5.0 and row["awarded_mw"] == 4.95
    assert row["baseline_kw"] == 5050.0 and row["limit_kw"] == 50.0 and row["commanded_import_kw"] == 100.0
    assert row["delivered_mw"] == 4.95 and row["shortfall_mw"] == 0.05
    assert row["delivered_vs_awarded_pct"] == 100.0
    assert row["response_s"] == 0.0 and row["within_deadline"] is True
    assert row["metered_intervals"] == 3 and row["metered_import_kw"] == 100.0
    assert row["metered_delivered_mw"] == 4.95 and row["metered_shortfall_mw"] == 0.05
    assert row["metered_under_limit_by"] is None and row["metered_response_s"] is None
    assert row["measured_response_s"] is None  # no meter reading ever at or under 50 kW
    (award,) = section["awards"]
    assert award["product"] == "RRS" and award["reserve_mw"] == 4.95 and award["accepted"] is True


def test_ecrs_deployment_met_then_recalled_and_the_page_shows_it(tmp_path: Path) -> None:
    """ECRS deploys 3,000 kW at 17:03: limit 5,050 − 3,000 = 2,050 kW. Sleeping one block
    (990 kW) leaves 4,060 kW, three blocks 2,080 kW (still over), four blocks 1,090 kW: one block
    runs. Delivered 5,050 − 1,090 = 3,960 kW = 3.96 MW, 3.96 / 4.95 = 80.0 % of the award, no
    shortfall. Recalled at 17:40, so the deployment is in force [17:03, 17:40).

    Metered: 17:00–17:15 averages (3 × 5,050 + 12 × 1,090) / 15 = 1,882 kW, already under 2,050:
    under the limit by 17:15, 720 s after the instruction (an upper bound at interval resolution).
    Assessed: 17:15 and 17:30 at 1,090 kW (17:45, back at 5,050 kW, is after the recall): metered
    delivered 3.96 MW, shortfall 0."""
    db = tmp_path / "ecrs.db"
    _trail(db, "ECRS", 3000.0, [1882.0, 1090.0, 1090.0, 5050.0], recall_after=timedelta(minutes=37))
    report = _report(db)
    section = report["ancillary"]
    assert section["deployment_count"] == 1 and section["shortfall_count"] == 0 and section["late_count"] == 0
    (row,) = section["deployments"]
    assert row["product"] == "ECRS" and row["deployed_mw"] == 3.0 and row["awarded_mw"] == 4.95
    assert row["limit_kw"] == 2050.0 and row["commanded_import_kw"] == 1090.0
    assert row["delivered_mw"] == 3.96 and row["shortfall_mw"] == 0.0
    assert row["delivered_vs_awarded_pct"] == 80.0
    assert row["recalled_at"] == "2024-06-03T17:40:00+00:00"
    assert row["metered_under_limit_by"] == "2024-06-03T17:15:00+00:00" and row["metered_response_s"] == 720.0
    assert row["metered_intervals"] == 2 and row["metered_import_kw"] == 1090.0
    # The meter read 1,090 kW (under 2,050) 45 s after the instruction: measured response 45 s, in time.
    assert row["measured_response_s"] == 45.0 and row["measured_within_deadline"] is True
    assert row["metered_delivered_mw"] == 3.96 and row["metered_shortfall_mw"] == 0.0

    page = to_html(report)
    assert '<section id="ancillary"><h2>Ancillary service deployments</h2>' in page
    table = page[page.index('id="as-deployments"'):page.index("</table>", page.index('id="as-deployments"'))]
    for text in ("ECRS", "3.000", "4.950", "3.960", "80.0", "720"):
        assert text in table, text
    assert 'data-figure="ancillary.deployment_count"' in page
    csv_rows = dict(line.split(",", 1) for line in to_csv(report).splitlines()[1:] if line.startswith("ancillary."))
    assert csv_rows["ancillary.deployments.0.delivered_mw"] == "3.96"
    assert json.loads(json.dumps(report))["ancillary"]["deployments"][0]["deployment_id"] == "dep-1"


def test_a_trail_without_ancillary_services_says_so(tmp_path: Path) -> None:
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "none.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        loop.tick(NOW)
        loop.record_measurement(NOW, 0.25, load_kw=100.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                                price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    report = _report(db)
    assert report["ancillary"]["deployment_count"] == 0 and report["ancillary"]["deployments"] == []
    assert "No ancillary service deployments in the period." in to_html(report)


@pytest.mark.parametrize("recalled", [False, True])
def test_rejected_deployment_is_listed_without_delivery_figures(tmp_path: Path, recalled: bool) -> None:
    """A deployment from someone other than the site's QSE is refused by the loop; the report lists
    it as not accepted, with no delivered or metered figures (nothing was owed)."""
    profile = parse_profile(PROFILE, source="test")
    db = tmp_path / "refused.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, _prices(), store, recorder)
        loop.tick(NOW)
        at = NOW + timedelta(minutes=3)
        ack = loop.handle_as_deploy(ASDeployMessage(deployment_id="dep-x", product="RRS", issued_at=at,
                                                    deployed_kw=1000.0, issuer="mallory", recalled=recalled), at)
        assert ack.status == "rejected"
        loop.record_measurement(NOW, 0.25, load_kw=100.0, renewable_kw=0.0, hashrate_th_s=0.0, noise={},
                                price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
    section = _report(db)["ancillary"]
    if recalled:  # a refused recall of an unknown deployment is no deployment
        assert section["deployments"] == []
        return
    (row,) = section["deployments"]
    assert row["accepted"] is False and "issuer" in row["reason"]
    assert row["delivered_mw"] is None and row["shortfall_mw"] is None and row["metered_import_kw"] is None
    assert section["accepted_count"] == 0 and section["shortfall_count"] == 0
