"""AS intake faults a newcomer found (issue 15, helper task H11), each reproduced through the real
``ControlLoop`` (in-process simulated fleet, inline HiGHS solve):

1. an acknowledged early recall was lost: a recall of ``dep-3`` naming NSPIN arrived before its
   deployment and was acked "accepted: pending"; a second recall of the same id naming RRS, also
   acked pending, overwrote it; the NSPIN deployment then arrived (instructed before the recall),
   held and cut load. Now the second recall is refused naming ``product`` and the acknowledged one
   is kept and applied;
2. awards were checked against the qualification one at a time: aw-3 (RRS 600 kW) was accepted
   while aw-1 (RRS 1,500 kW, overlapping) was in force, 2,100 kW against 2,000 kW qualified. Now an
   award (or an amendment) whose product's awards in force at any moment of its window would sum
   above the qualification is refused naming ``reserve_kw`` and the overlapping awards.

The site (SYNTHETIC test data, ``as_support``): 10 hydro blocks of 1 MW, 10 kW asleep, energy at
$200/MWh (above breakeven: only an award keeps a block running), qualified for 2 MW of RRS and
5 MW each of ECRS and NSPIN.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from as_support import (
    MIN,
    NOW,
    award,
    deploy,
    flat_prices,
    hydro_profile,
    hydro_profile_yaml,
    make_loop,
    running,
)

from hashflex.control.loop import ControlLoop
from hashflex.messages.parse import refusal_rule
from hashflex.profile import parse_profile

HOUR = timedelta(hours=1)


def _loop(profile=None) -> ControlLoop:
    profile = profile or hydro_profile("AS Intake Totals", products=("RRS", "ECRS", "NSPIN"),
                                       qualified_mw={"RRS": 2})
    return make_loop(profile, flat_prices(start="2024-06-01T00:00Z"))


# ------------------------------------------------------------------ 1. a pending recall of another product


def test_a_pending_recall_is_not_overwritten_by_one_naming_another_product() -> None:
    """RRS 1,500 kW awarded keeps 2 blocks running. The NSPIN recall of dep-3 (17:05) arrives first:
    pending. A recall of dep-3 naming RRS (17:06) is refused naming ``product`` and NSPIN; the
    pending NSPIN recall is kept. dep-3 NSPIN 300 kW instructed 17:04 arrives 17:07: ended by the
    acknowledged recall at 17:05, nothing cut (it used to hold and cut 300 kW)."""
    loop = _loop()
    assert loop.handle_as_award(award("aw-1", "RRS", 1500.0), NOW).status == "accepted"
    loop.tick(NOW)
    before = running(loop)
    assert before >= 2
    recall_at = NOW + 5 * MIN
    first = loop.handle_as_deploy(deploy("dep-3", recall_at, product="NSPIN", recalled=True), recall_at)
    assert first.status == "accepted" and first.reason.startswith("accepted: pending"), first.reason

    other = loop.handle_as_deploy(deploy("dep-3", NOW + 6 * MIN, product="RRS", recalled=True), NOW + 6 * MIN)
    assert other.status == "rejected", other.reason
    assert other.reason.startswith("product:") and "NSPIN" in other.reason, other.reason
    assert refusal_rule(other.reason, "as_deploy") == "refused:product"
    pending = loop.book.as_early_recalls["dep-3"]
    assert pending["product"] == "NSPIN" and pending["recalls_at"] == [recall_at.isoformat()]
    assert loop.command_rejections["as_deploy"]["refused:product"] == 1

    arrived = NOW + 7 * MIN
    dep = loop.handle_as_deploy(deploy("dep-3", NOW + 4 * MIN, 300.0, product="NSPIN"), arrived)
    assert dep.status == "accepted", dep.reason
    assert "recalled at" in dep.reason and recall_at.isoformat() in dep.reason, dep.reason
    assert "not applied" not in dep.reason
    deployment = loop.book.as_deployments["dep-3"]
    assert deployment.recalled and deployment.end == recall_at
    assert not [k for k in loop.book.import_limits_at(arrived) if k.startswith("AS:")]
    assert running(loop) == before, "ended before it arrived: nothing is shed"
    assert loop.counters["as_recall_early_ended"] == 1


def test_a_pending_recall_of_the_same_product_still_merges() -> None:
    """(Regression guard; passes before and after.) A second pending recall naming the same product
    is accepted and its time kept beside the first."""
    loop = _loop()
    first_at, second_at = NOW + 5 * MIN, NOW + 9 * MIN
    assert loop.handle_as_deploy(deploy("dep-4", first_at, product="NSPIN", recalled=True), first_at).status \
        == "accepted"
    ack = loop.handle_as_deploy(deploy("dep-4", second_at, product="NSPIN", recalled=True), second_at)
    assert ack.status == "accepted", ack.reason
    assert loop.book.as_early_recalls["dep-4"]["recalls_at"] == [first_at.isoformat(), second_at.isoformat()]


# ------------------------------------------------------------------ 2. awards summed against the qualification


def test_an_award_that_would_sum_above_the_qualification_is_refused_naming_the_overlap() -> None:
    """aw-1 RRS 1,500 kW 16:00–20:00 in force; aw-3 RRS 600 kW 17:30–18:30 would make 2,100 kW on a
    2,000 kW RRS qualification: refused naming ``reserve_kw`` and aw-1, not stored, counted. The
    same 600 kW after aw-1 ends, 500 kW inside it (2,000 kW exactly) and 600 kW of ECRS are accepted."""
    loop = _loop()
    assert loop.handle_as_award(award("aw-1", "RRS", 1500.0), NOW).status == "accepted"
    ack = loop.handle_as_award(award("aw-3", "RRS", 600.0, start=NOW + 30 * MIN, end=NOW + 90 * MIN), NOW)
    assert ack.status == "rejected", ack.reason
    assert ack.reason.startswith("reserve_kw:"), ack.reason
    assert "aw-1" in ack.reason and "2100" in ack.reason and "2000" in ack.reason, ack.reason
    assert refusal_rule(ack.reason, "as_award") == "refused:reserve_kw"
    assert "aw-3" not in loop.book.as_awards
    assert loop.command_rejections["as_award"]["refused:reserve_kw"] == 1
    assert max(sum(v.values()) for v in [loop.book.reserve_awards_at(NOW + 45 * MIN).get("RRS", {})]) == 1500.0

    after = loop.handle_as_award(award("aw-5", "RRS", 600.0, start=NOW + 3 * HOUR, end=NOW + 4 * HOUR), NOW)
    assert after.status == "accepted", after.reason
    exact = loop.handle_as_award(award("aw-6", "RRS", 500.0, start=NOW + 30 * MIN, end=NOW + 90 * MIN), NOW)
    assert exact.status == "accepted", exact.reason
    ecrs = loop.handle_as_award(award("aw-7", "ECRS", 600.0), NOW)
    assert ecrs.status == "accepted", ecrs.reason


def test_an_amendment_is_summed_with_its_previous_revision_replaced() -> None:
    """aw-1 RRS 1,500 kW; its revision 1 at 1,900 kW replaces it in the sum (accepted, not 3,400 kW).
    aw-2 RRS 600 kW 20:00–21:00 (after aw-1) is accepted; its amendment moving it to 19:00–21:00
    overlaps aw-1 (2,500 kW) and is refused naming aw-1, the accepted revision 0 kept. A cut of aw-1
    is never refused."""
    loop = _loop()
    assert loop.handle_as_award(award("aw-1", "RRS", 1500.0), NOW).status == "accepted"
    up = loop.handle_as_award(award("aw-1", "RRS", 1900.0, revision=1), NOW)
    assert up.status == "accepted", up.reason
    late = {"start": NOW + 3 * HOUR, "end": NOW + 4 * HOUR}
    assert loop.handle_as_award(award("aw-2", "RRS", 600.0, **late), NOW).status == "accepted"
    moved = loop.handle_as_award(award("aw-2", "RRS", 600.0, revision=1, start=NOW + 2 * HOUR, end=NOW + 4 * HOUR),
                                 NOW)
    assert moved.status == "rejected", moved.reason
    assert moved.reason.startswith("reserve_kw:") and "aw-1" in moved.reason and "2500" in moved.reason, moved.reason
    assert loop.book.as_awards["aw-2"]["revision"] == 0
    assert datetime.fromisoformat(loop.book.as_awards["aw-2"]["start"]) == NOW + 3 * HOUR
    down = loop.handle_as_award(award("aw-1", "RRS", 1000.0, revision=2), NOW)
    assert down.status == "accepted", down.reason


def test_the_sum_is_bounded_by_max_mw() -> None:
    """RRS qualified 5 MW of the group but capped at ``max_mw`` 2: 1,500 + 600 kW is refused."""
    text = hydro_profile_yaml("AS Intake Totals max", products=("RRS",)).replace(
        "RRS: {group_mw:", "RRS: {max_mw: 2, group_mw:")
    loop = _loop(parse_profile(text, source="test"))
    assert loop.handle_as_award(award("aw-1", "RRS", 1500.0), NOW).status == "accepted"
    ack = loop.handle_as_award(award("aw-3", "RRS", 600.0), NOW)
    assert ack.status == "rejected" and "aw-1" in ack.reason and "2000" in ack.reason, ack.reason
