"""Deployments of one product summed against its qualification (issue 15, second newcomer finding 4):
RRS dep-r2 (100 kW) was in force when dep-r3 (450 kW) arrived on a 500 kW RRS qualification; each
message was checked alone, dep-r3 was accepted, 550 kW in force clamped the limit to 0 kW and every
miner slept.

Decision: refused, naming ``deployed_kw``, as one deployment above the qualification already is
(:func:`hashflex.control.as_intake.deploy_intake_refusal`: a legitimate instruction never asks more
of a product than the site is qualified for; more is a slip or another resource's instruction) and
as awards are summed. The deployments in force keep holding; a deployment above the *award* but
within the qualification is still obeyed and flagged.

The SYNTHETIC hydro site of ``as_support`` (RRS qualified for 5 MW; 10 × 1 MW blocks), a real store
and recorder, inline HiGHS.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from as_support import (
    NOW,
    audit_payloads,
    award,
    deploy,
    flat_prices,
    hydro_profile,
    make_loop,
)

from hashflex.control.records import AuditRecorder
from hashflex.store import Store

MIN = timedelta(minutes=1)
SEC = timedelta(seconds=1)


def test_a_deployment_summing_above_the_qualification_is_refused_and_the_others_hold(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    profile = hydro_profile("AS Qualification Sum", import_limit_kw=20000.0)
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(profile, flat_prices(), store=store, recorder=recorder)
        assert loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW).status == "accepted"
        loop.tick(NOW)
        first = loop.handle_as_deploy(deploy("d1", NOW + 2 * MIN, 2970.0), NOW + 2 * MIN)
        assert first.status == "accepted", first.reason
        limit_d1 = loop.book.import_limits_at(NOW + 3 * MIN)["AS:RRS:d1"]
        second = loop.handle_as_deploy(deploy("d2", NOW + 4 * MIN, 2970.0), NOW + 4 * MIN)
        assert second.status == "rejected", second.reason
        assert second.reason.startswith("deployed_kw: 2970 kW with the RRS deployments in force (d1 2970 kW) "
                                        "sums to 5940 kW, more than the 5000 kW qualified for RRS"), second.reason
        limits = loop.book.import_limits_at(NOW + 5 * MIN)
        assert "AS:RRS:d2" not in limits and limits["AS:RRS:d1"] == limit_d1, "d1 holds, d2 cuts nothing"
        # Within the qualification it is accepted (above the 4950 kW award: obeyed and flagged).
        third = loop.handle_as_deploy(deploy("d3", NOW + 6 * MIN, 2000.0), NOW + 6 * MIN)
        assert third.status == "accepted", third.reason
        assert (third.above_award_kw or 0.0) > 0
        # An amendment of d1 is summed with the others only (not with its own former MW).
        amend = loop.handle_as_deploy(deploy("d1", NOW + 8 * MIN, 3000.0, revision=1), NOW + 8 * MIN)
        assert amend.status == "accepted", amend.reason
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    acks = {(p["message"]["deployment_id"], p["message"]["revision"]): p["ack"] for p in audit_payloads(db, "as_deploy")}
    assert acks[("d2", 0)]["status"] == "rejected" and "5000 kW qualified" in acks[("d2", 0)]["reason"]


def test_another_products_deployment_is_not_summed(tmp_path: Path) -> None:
    profile = hydro_profile("AS Qualification Sum", import_limit_kw=20000.0)
    loop = make_loop(profile, flat_prices())
    loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW)
    loop.handle_as_award(award("ecrs", "ECRS", 4950.0), NOW)
    loop.tick(NOW)
    assert loop.handle_as_deploy(deploy("r", NOW + 2 * MIN, 2970.0), NOW + 2 * MIN).status == "accepted"
    ack = loop.handle_as_deploy(deploy("e", NOW + 3 * MIN, 2970.0, product="ECRS"), NOW + 3 * MIN)
    assert ack.status == "accepted", ack.reason


def test_a_recall_is_never_refused_for_the_sum_in_force(tmp_path: Path) -> None:
    """A guard: deployments accepted under a 10 MW RRS qualification, then a profile reload (SIGHUP)
    lowering it to 5 MW: 9,000 kW in force is above it. A recall asks nothing more of the site, so the
    sum rule (which counts what a deployment adds) must not refuse it: it is accepted and gives back
    exactly its MW; the others hold. (Passes before and after the sum rule: recalls are decided
    before it.)"""
    db = tmp_path / "r.db"
    wide = hydro_profile("AS Qualification Sum", import_limit_kw=20000.0, qualified_mw={"RRS": 10})
    narrow = hydro_profile("AS Qualification Sum", import_limit_kw=20000.0)
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = make_loop(wide, flat_prices(), store=store, recorder=recorder)
        assert loop.handle_as_award(award("rrs", "RRS", 9900.0), NOW).status == "accepted"
        loop.tick(NOW)
        for i, at in enumerate((NOW + 2 * MIN, NOW + 3 * MIN, NOW + 3 * MIN + 30 * SEC)):
            ack = loop.handle_as_deploy(deploy(f"d{i}", at, 3000.0), at)
            assert ack.status == "accepted", ack.reason
        assert loop.reload_profile(narrow, NOW + 4 * MIN) == "reloaded"
        recall = loop.handle_as_deploy(deploy("d0", NOW + 5 * MIN, recalled=True), NOW + 5 * MIN)
        assert recall.status == "accepted", recall.reason
        assert "AS:RRS:d0" not in loop.book.import_limits_at(NOW + 6 * MIN)
        assert "AS:RRS:d1" in loop.book.import_limits_at(NOW + 6 * MIN)
        assert "AS:RRS:d2" in loop.book.import_limits_at(NOW + 6 * MIN)
        recorder.close()
