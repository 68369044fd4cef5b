"""Two AS intake edges a newcomer found (issue 15, findings 8, 9 and 12), through the real
``ControlLoop`` with a ``SimulatedFleet``:

- a deployment dated slightly in the future (inside the clock-skew window) binds from its arrival,
  not from its ``issued_at`` (safety first), while its deadline and response stay measured from the
  instruction;
- ``deployed_kw: 0`` (not a recall) is refused naming ``deployed_kw`` and counted: it would freeze
  the site at its load for the whole sustain duration; a QSE ends a deployment with its recall;
- an award or deployment the book refuses (wrong issuer, above qualification, ...) is counted with
  the input rejections (``command_rejections`` → ``hashflex_input_rejections_total``) as well as
  in ``as_rejected``.

The site (SYNTHETIC test data) is test_as_late_deployments': 10 hydro blocks of 1 MW (10 kW asleep);
an RRS award of 4,950 kW keeps 5 blocks running: modelled import 5,050 kW.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from hashflex.control.ancillary import ASDeployment
from hashflex.control.http import input_rejections
from hashflex.feeds.mqtt import refusal_rule
from hashflex.messages import ASAwardMessage
from tests.test_as_late_deployments import NOW, _deploy, _loop


def test_a_deployment_dated_ahead_of_its_arrival_binds_from_its_arrival() -> None:
    """Dated 110 s ahead (inside the 120 s skew): its limit (5,050 − 1,000 = 4,050 kW) is in the
    book's limits at arrival and the fleet is cut at once; deadline from issued_at, and the book
    written and read back keeps when it binds."""
    loop = _loop()
    arrived = NOW + timedelta(minutes=3)
    issued = arrived + timedelta(seconds=110)
    ack = loop.handle_as_deploy(_deploy("ahead-1", issued, 1000.0), arrived)
    assert ack.status == "accepted", ack.reason
    assert ack.deadline == issued + timedelta(seconds=600)
    assert loop.book.import_limits_at(arrived)["AS:RRS:ahead-1"] == pytest.approx(4050.0)
    assert sum(loop.driver.running().values()) == 3  # cut at once: two blocks asleep, 3,070 kW
    deployment = loop.book.as_deployments["ahead-1"]
    assert deployment.binds_from == arrived
    assert ASDeployment.from_json(deployment.to_json()) == deployment
    assert loop.as_performance["ahead-1"]["issued_at"] == issued.isoformat()  # measured from the instruction


def test_deployed_kw_zero_is_refused_naming_the_field_and_counted() -> None:
    """deployed_kw 0 is refused (no limit set, nothing frozen); an amendment to 0 likewise; the
    refusal is counted in as_rejected and in the input rejections /metrics sums."""
    loop = _loop()
    issued = NOW + timedelta(minutes=3)
    ack = loop.handle_as_deploy(_deploy("zero-1", issued, 0.0), issued)
    assert ack.status == "rejected"
    assert ack.reason.startswith("deployed_kw: 0 kW sheds nothing; > 0 required")
    assert "recall" in ack.reason
    assert "zero-1" not in loop.book.as_deployments
    assert not any(k.startswith("AS:") for k in loop.book.import_limits_at(issued))
    assert loop.counters["as_rejected"] == 1
    assert loop.handle_as_deploy(_deploy("amend-1", issued, 1000.0), issued).status == "accepted"
    amended = loop.handle_as_deploy(_deploy("amend-1", issued + timedelta(seconds=30), 0.0, revision=1),
                                    issued + timedelta(seconds=30))
    assert amended.status == "rejected" and amended.reason.startswith("deployed_kw:")
    assert loop.book.as_deployments["amend-1"].deployed_kw == 1000.0
    counts = input_rejections(loop.status(issued + timedelta(seconds=30)))
    assert counts[("as_deploy", "refused:deployed_kw")] == 2  # the name /status inputs_refused gives it (H1 finding 7)


def test_refused_awards_are_counted_with_the_input_rejections() -> None:
    """A wrong issuer and an award above the qualification: as_rejected 2, and the same two in the
    input rejections (kind as_award, by the field the reason names)."""
    loop = _loop()
    wrong = ASAwardMessage(award_id="aw-x", product="RRS", start=NOW, end=NOW + timedelta(hours=1),
                           reserve_kw=1000.0, price_usd_mw_h=10.0, issuer="someone-else")
    big = ASAwardMessage(award_id="aw-big", product="ECRS", start=NOW, end=NOW + timedelta(hours=1),
                         reserve_kw=9000.0, price_usd_mw_h=10.0, issuer="qse-test")
    first, second = loop.handle_as_award(wrong, NOW), loop.handle_as_award(big, NOW)
    assert first.status == "rejected" and second.status == "rejected", (first.reason, second.reason)
    assert loop.counters["as_rejected"] == 2
    counts = input_rejections(loop.status(NOW))
    assert sum(v for (kind, _), v in counts.items() if kind == "as_award") == 2
    assert counts[("as_award", refusal_rule(first.reason, "as_award"))] >= 1
    assert refusal_rule(first.reason, "as_award") == "refused:issuer"
