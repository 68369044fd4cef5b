"""Late and oversized AS deployments over OpenADR 3 (issue 15): the VEN hands them to the loop, which
cuts at once and flags them; the VEN counts the flags, and a deployment whose whole interval was over
before the VEN read it is counted and audited as missed. Real HTTP on 127.0.0.1 (the test VTN behind
the validating proxy), the real control loop on a simulated fleet (SYNTHETIC test data: the
west_texas profile with the ancillary section of test_openadr_ancillary)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from openadr_vtn import TestVTN
from test_openadr import T0, Site, cert, prices, profile, site, vtn  # noqa: F401
from test_openadr_ancillary import as_profile, as_site, as_ven, deploy_event, program_type  # noqa: F401


def test_an_ecrs_deployment_read_after_its_deadline_is_cut_flagged_and_counted(vtn: TestVTN,  # noqa: F811
                                                                               as_site: Site) -> None:  # noqa: F811
    """ECRS instructed 11 minutes before the VEN reads it (deadline 10 minutes): accepted, cut at once,
    ``late`` 60 s past the deadline; the site's ECRS award is 0, so all of it is above the award."""
    program = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    as_site.tick()
    before_kw = as_site.fleet.load_kw()
    event = vtn.create_event(deploy_event(program["id"], as_site.now - timedelta(minutes=11), 5.0, duration="PT30M"))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    (ack,) = ven.as_acks
    assert ack.status == "accepted" and ack.late is True, ack.reason
    assert ack.late_by_s == pytest.approx(60.0)
    assert ack.above_award_kw == pytest.approx(5000.0) and ack.awarded_kw == 0.0
    assert as_site.fleet.load_kw() <= ack.import_limit_kw + 1e-6 < before_kw, "cut at once all the same"
    assert ven.counters["as_late"] == 1 and ven.counters["as_above_award"] == 1
    assert as_site.loop.counters["as_late"] == 1 and as_site.loop.counters["as_above_award"] == 1
    performance = as_site.loop.as_performance[f"{event['id']}:0"]
    assert performance["late"] is True and performance["arrival_delay_s"] == pytest.approx(660.0)


def test_a_deployment_over_before_the_ven_read_it_is_counted_as_missed(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    """A 15-minute RRS interval that ended 5 minutes before the VEN first read it: nothing is sent
    (nothing left to shed), but the miss is counted and kept in the VEN's rejections."""
    program = vtn.create_program("qse-rrs", **program_type("RRS"))
    as_site.tick()
    event = vtn.create_event(deploy_event(program["id"], as_site.now - timedelta(minutes=20), 2.0, duration="PT15M"))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    assert ven.as_acks == [] and as_site.loop.book.as_deployments == {}
    assert ven.counters["as_missed"] == 1
    (rejection,) = [r for r in ven.rejections if r["id"] == f"{event['id']}:0"]
    assert "over before the VEN read it" in rejection["reason"]
    ven.tick(as_site.now + timedelta(minutes=1))
    assert ven.counters["as_missed"] == 1, "counted once"
