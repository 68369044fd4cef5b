"""A listed event whose ``programID`` is given twice must be refused, not taken for another program's
event and then cancelled as deleted (issue 15, second newcomer review, finding 1, HIGH).

The VEN skips a listed event whose programID is not the listing's program (a VTN that ignores the
``programID`` query parameter lists other programs' events too). With the key given twice the
last value (another program's id) made the VEN skip the event *before* the duplicate-key check, and the
complete listing then no longer held the event: an accepted ECRS deployment was recalled and a DR
import limit lifted, with no rejection counted or audited. Real test VTN on 127.0.0.1, the
site's real loop; payloads SYNTHETIC.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from openadr_vtn import TestVTN
from test_openadr import T0, Site, limit_event, make_ven, prices, profile  # noqa: F401 - fixtures
from test_openadr_ancillary import (  # noqa: F401
    as_profile,
    as_site,
    as_ven,
    deploy_event,
    program_type,
)
from test_openadr_duplicate_keys import with_second


@pytest.fixture
def vtn():
    server = TestVTN().start()
    yield server
    server.stop()


def test_an_in_force_deployment_re_served_with_program_id_twice_is_refused_and_stays(
        vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    ecrs = vtn.create_program("qse-ecrs", **program_type("ECRS"))
    rrs = vtn.create_program("qse-rrs", **program_type("RRS"))
    as_site.tick()
    event = vtn.create_event(deploy_event(ecrs["id"], T0 - timedelta(minutes=1), 5.0, duration="PT2H"))
    ven = as_ven(vtn, as_site)
    ven.tick(as_site.now)
    limits = as_site.loop.book.import_limits_at(as_site.now)
    assert any(k.startswith("AS:ECRS") for k in limits), limits
    rejected_before = ven.counters["events_rejected"]

    vtn.put_raw_event(with_second({**event, "modificationDateTime": "2020-02-10T18:01:00Z"}, "programID", rrs["id"]))
    as_site.advance(1)
    ven.tick(as_site.now)
    as_site.tick()

    assert as_site.loop.book.import_limits_at(as_site.now) == limits, "the deployment must stay in force"
    assert ven.counters["events_rejected"] == rejected_before + 1
    assert not any("recalled" in (a.reason or "") for a in ven.as_acks)


def test_a_dr_limit_re_served_with_program_id_twice_is_refused_and_stays(vtn: TestVTN, as_site: Site) -> None:  # noqa: F811
    capacity = vtn.create_program("ercot-capacity")
    other = vtn.create_program("other")
    event = vtn.create_event(limit_event(capacity["id"], T0 - timedelta(minutes=1), [6_000.0]))
    ven = make_ven(vtn, as_site)
    ven.tick(as_site.now)
    before = as_site.loop.dr_book.limit_at(as_site.now)
    assert before[0] == pytest.approx(6_000.0)
    rejected_before = ven.counters["events_rejected"]

    vtn.put_raw_event(with_second({**event, "modificationDateTime": "2020-02-10T18:01:00Z"}, "programID", other["id"]))
    as_site.advance(1)
    ven.tick(as_site.now)

    assert as_site.loop.dr_book.limit_at(as_site.now) == before, "a VTN's malformed re-send never lifts a limit"
    assert ven.counters["events_rejected"] == rejected_before + 1
