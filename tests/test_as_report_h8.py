"""Issue 15, H8 (newcomer findings 4 and 7): the ack and the evidence report compare a deployment
with one award, and deployments refused on their ``issued_at`` are listed in the report.

The site is test_as_late_deployments' (SYNTHETIC test data): 10 hydro blocks of 1 MW, an RRS award
keeps blocks running; RRS must be deployed within 600 s of the instruction.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from as_support import NOW, award, deploy, flat_prices, hydro_profile_yaml, make_loop

from hashflex.control.records import AuditRecorder
from hashflex.profile import parse_profile
from hashflex.report import build_report
from hashflex.store import Store

PROFILE = hydro_profile_yaml("AS H8", expected_deployments_per_month=None)


def _run(db: Path, steps) -> None:
    """Run ``steps(loop)`` on a loop recording to a real store, then four measured quarters."""
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(parse_profile(PROFILE, source="test"), flat_prices(), store, recorder)
        steps(loop)
        for k, load_kw in enumerate([3000.0, 100.0, 100.0, 100.0]):
            loop.record_measurement(NOW + k * timedelta(minutes=15), 0.25, load_kw=load_kw, renewable_kw=0.0,
                                    hashrate_th_s=0.0, noise={}, price_usd_mwh=200.0)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0


def test_a_deployment_instructed_before_its_award_started_is_not_above_it(tmp_path: Path) -> None:
    """The newcomer's dep-D: an RRS award of 4,000 kW starts at 17:05; a 1,000 kW deployment
    instructed at 17:02 arrives at 17:13 (late), under the award. The ack once said awarded 0 kW,
    1,000 kW above it (obligation 0), while the report showed 4 MW awarded and still 1 MW above.
    Both now compare it with the award at the instruction or the arrival, whichever is larger."""
    db = tmp_path / "h8.db"
    acks = {}

    def steps(loop) -> None:
        late_award = award("aw-1", "RRS", 4000.0, start=NOW + timedelta(minutes=5), end=NOW + timedelta(hours=3))
        assert loop.handle_as_award(late_award, NOW).status == "accepted"
        loop.tick(NOW + timedelta(minutes=5))
        acks["d"] = loop.handle_as_deploy(deploy("dep-D", NOW + timedelta(minutes=2), 1000.0),
                                          NOW + timedelta(minutes=13))
        acks["perf"] = dict(loop.as_performance["dep-D"])

    _run(db, steps)
    ack = acks["d"]
    assert ack.status == "accepted", ack.reason
    assert ack.late is True
    assert ack.awarded_kw == pytest.approx(4000.0)
    assert ack.above_award_kw == 0.0
    assert "more than the" not in ack.reason and "awarded" not in ack.reason
    assert acks["perf"]["award_obligation_kw"] == pytest.approx(1000.0)

    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    (row,) = section["deployments"]
    assert row["awarded_mw"] == 4.0
    assert row["above_award_mw"] == 0.0 and row["award_obligation_mw"] == 1.0
    assert section["above_award_count"] == 0


def test_the_report_shows_an_older_trails_above_award_by_the_one_definition(tmp_path: Path) -> None:
    """A trail written under the former rule (the award at the instruction only): the performance
    record says 1,000 kW above a 0 kW award. The report measures it against its own ``awarded_mw``
    from the product's MW the loop recorded in force at the instruction (``deployed_in_force_kw``)."""
    db = tmp_path / "old.db"

    def steps(loop) -> None:
        late_award = award("aw-1", "RRS", 4000.0, start=NOW + timedelta(minutes=5), end=NOW + timedelta(hours=3))
        assert loop.handle_as_award(late_award, NOW).status == "accepted"
        loop.tick(NOW + timedelta(minutes=5))
        loop.handle_as_deploy(deploy("dep-D", NOW + timedelta(minutes=2), 1000.0), NOW + timedelta(minutes=13))
        perf = loop.as_performance["dep-D"]
        perf.update(above_award_kw=1000.0, award_obligation_kw=0.0, awarded_kw=0.0)  # the former rule's figures
        loop._record("as_performance", lambda: dict(perf), NOW + timedelta(minutes=14))

    _run(db, steps)
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    (row,) = section["deployments"]
    assert row["awarded_mw"] == 4.0 and row["above_award_mw"] == 0.0 and row["award_obligation_mw"] == 1.0
    assert section["above_award_count"] == 0


def test_deployments_refused_on_issued_at_are_in_the_deployments_table(tmp_path: Path) -> None:
    """The newcomer's d-old (9 h stale) and d-fut (1 h ahead) were refused and recorded, but their
    instruction time lies outside the report period, so the table left them out while other refusals
    were listed. A deployment never accepted belongs to the period by its arrival."""
    db = tmp_path / "refused.db"
    arrived = NOW + timedelta(minutes=10)

    def steps(loop) -> None:
        assert loop.handle_as_award(award("aw-1", "RRS", 4000.0), NOW).status == "accepted"
        old = loop.handle_as_deploy(deploy("d-old", arrived - timedelta(hours=9), 100.0), arrived)
        fut = loop.handle_as_deploy(deploy("d-fut", arrived + timedelta(hours=1), 100.0), arrived)
        zero = loop.handle_as_deploy(deploy("d-nspin", arrived, 100.0, product="NSPIN"), arrived)
        assert (old.status, fut.status, zero.status) == ("rejected", "rejected", "rejected")

    _run(db, steps)
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    rows = {r["deployment_id"]: r for r in section["deployments"]}
    assert set(rows) == {"d-old", "d-fut", "d-nspin"}
    assert rows["d-old"]["status"] == "rejected" and "issued_at" in rows["d-old"]["reason"]
    assert "h old" in rows["d-old"]["reason"]
    assert rows["d-fut"]["status"] == "rejected" and "clock-skew" in rows["d-fut"]["reason"]
    assert rows["d-fut"]["issued_at"] == "2024-06-03T18:10:00+00:00"
    # Outside its arrival's period it is not listed.
    later = build_report(db, "2024-06-03T18:00Z", "2024-06-03T19:00Z")["ancillary"]
    assert "d-fut" not in {r["deployment_id"] for r in later["deployments"]}
