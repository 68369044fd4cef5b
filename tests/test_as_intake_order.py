"""AS deployment intake order (issue 15): a reduction is never late, and a recall that overtakes its
deployment is kept (durably) and applied when the deployment arrives. One file for the rules that
test_as_intake_order.py and test_as_early_recall_and_reduction.py (two helpers, the same fixes
e937a66/75f8d5e) tested apart; merged by H7 (issue 15), every distinct case kept, three pairs of the
same scenario each joined into one test with both tests' assertions (none was the same to the letter).

Through ``ControlLoop.handle_as_deploy`` with a real SQLite store, the real audit recorder, real HTTP
/metrics and the restart path (``load_control_state``). The site (SYNTHETIC test data,
``as_support``): 10 hydro blocks of 1 MW, 10 kW asleep, energy at $200/MWh (above breakeven: only an
award keeps a block running); an RRS award of 4,950 kW keeps 5 blocks running (modelled import
5,050 kW); RRS must be deployed within 600 s.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from as_support import (
    MIN,
    NOW,
    SEC,
    audit_payloads,
    award,
    deploy,
    flat_prices,
    hydro_profile,
    make_loop,
    metrics_text,
    running,
)

from hashflex.control.daemon import load_control_state
from hashflex.control.limits import LimitsBook
from hashflex.control.loop import ControlLoop
from hashflex.control.records import AuditRecorder
from hashflex.store import Store

_running = running
_records = audit_payloads
_metrics = metrics_text


def _profile(extra: str = ""):
    return hydro_profile("AS Intake Order", extra, products=("RRS",))


def _deploy(deployment_id, issued_at, kw: float = 0.0, revision: int = 0, recalled: bool = False):
    return deploy(deployment_id, issued_at, kw, revision=revision, recalled=recalled)


def _loop(profile=None, store: Store | None = None, recorder: AuditRecorder | None = None,
          book: LimitsBook | None = None, award_rrs: bool = True, tick: bool = True) -> ControlLoop:
    """RRS 4,950 kW awarded 16:00–20:00 (unless ``award_rrs`` is false: a restart keeps the book's),
    then, with ``tick``, one plan at 17:00 that keeps 5 blocks running."""
    profile = profile or _profile()
    loop = make_loop(profile, flat_prices(start="2024-06-01T00:00Z"), store, recorder, book)
    if award_rrs:
        assert loop.handle_as_award(award("rrs", "RRS", 4950.0), NOW).status == "accepted"
    if tick:
        loop.tick(NOW)
        assert _running(loop) == 5
    return loop


# ---------------------------------------------------------------------------------------------- 1 reductions


def test_a_reduction_arriving_after_the_first_deadline_is_not_late(tmp_path: Path) -> None:
    """RRS 3,960 kW at 17:03 (deadline 17:13), met at once. At 17:15 the QSE amends it down to 1,980 kW
    (revision 1): it keeps the first deadline (it binds from receipt), and a reduction has no deadline
    to meet, so it is not late: not in the ack, not counted, not in the audit record. An increase
    arriving after its own deadline still is."""
    db = tmp_path / "r.db"
    issued = NOW + 3 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(store=store, recorder=recorder)
        first = loop.handle_as_deploy(_deploy("d", issued, 3960.0), issued + timedelta(seconds=2))
        assert first.status == "accepted" and first.late is False
        assert _running(loop) == 1
        at = NOW + 15 * MIN
        ack = loop.handle_as_deploy(_deploy("d", at, 1980.0, revision=1), at)
        assert ack.status == "accepted", ack.reason
        assert ack.deadline == issued + timedelta(seconds=600), "a reduction keeps the first deadline"
        assert ack.late is False and ack.late_by_s == 0.0, ack.reason
        assert "late" not in ack.reason and "binds from receipt" in ack.reason, ack.reason
        assert loop.counters.get("as_late", 0) == 0
        performance = loop.as_performance["d"]
        assert performance["late"] is False
        assert performance["commanded_within_deadline"] is True, "no deadline to miss"
        # The first reading after the reduction's receipt is its assessment (its deadline is past).
        loop.measure_as_deployments(3070.0, at + timedelta(seconds=5))
        assert performance["measured_import_kw"] == pytest.approx(3070.0)
        assert performance["measured_shortfall_kw"] == pytest.approx(0.0)
        # An increase arriving 660 s after its instruction is late (its deadline is from its own time).
        up_at = NOW + 20 * MIN
        up = loop.handle_as_deploy(_deploy("d", up_at, 2970.0, revision=2), up_at + 11 * MIN)
        assert up.status == "accepted" and up.late is True and up.late_by_s == pytest.approx(60.0), up.reason
        assert loop.counters["as_late"] == 1
        assert 'hashflex_events_total{counter="as_late"} 1.0' in _metrics(loop, up_at + 11 * MIN)
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    acks = [r["ack"] for r in _records(db, "as_deploy") if r["message"]["deployment_id"] == "d"]
    assert [a["late"] for a in acks] == [False, False, True]


def test_a_reduction_arriving_after_the_first_deadline_is_not_late_and_binds_from_receipt(tmp_path: Path) -> None:
    """RRS 3,960 kW at 17:05 (deadline 17:15), cut to 1 block. Its revision 1 asks 1,980 kW, instructed
    and received at 17:20, after the first deadline: a reduction has no deadline to meet, so it is
    neither flagged nor counted late; the ack says it binds from receipt; the site may run 3 blocks."""
    db = tmp_path / "r.db"
    at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(store=store, recorder=recorder)
        first = loop.handle_as_deploy(_deploy("cut", at, 3960.0), at)
        assert first.status == "accepted" and first.late is False
        assert _running(loop) == 1
        later = at + 15 * MIN
        ack = loop.handle_as_deploy(_deploy("cut", later, 1980.0, revision=1), later)
        assert ack.status == "accepted", ack.reason
        assert ack.late is not True and not ack.late_by_s, ack
        assert "late" not in ack.reason, ack.reason
        assert "binds from receipt" in ack.reason, ack.reason
        assert ack.import_limit_kw == pytest.approx(5050.0 - 1980.0)
        assert loop.book.as_deployments["cut"].deadline == at + 600 * SEC, "the first deadline is kept"
        assert loop.counters.get("as_late", 0) == 0
        performance = loop.as_performance["cut"]
        assert performance.get("late") is not True
        assert 'counter="as_late"' not in _metrics(loop, later)
        loop.tick(later + SEC)
        assert _running(loop) == 3
        recorder.flush()
        recorder.close()
    deploys = [p for p in _records(db, "as_deploy") if p["message"]["revision"] == 1]
    assert len(deploys) == 1 and deploys[0]["ack"]["late"] is not True
    assert all(p.get("late") is not True for p in _records(db, "as_performance") if p.get("revision") == 1)


def test_an_increase_arriving_after_its_own_deadline_is_still_late() -> None:
    """The rule keeps what is right: more MW has a deadline (from the amendment's time), and one
    received after it is flagged late."""
    loop = _loop()
    at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("up", at, 1980.0), at).status == "accepted"
    issued = at + MIN
    ack = loop.handle_as_deploy(_deploy("up", issued, 3960.0, revision=1), issued + 11 * MIN)
    assert ack.status == "accepted" and ack.late is True and ack.late_by_s == pytest.approx(60.0)
    assert loop.counters["as_late"] == 1


# ---------------------------------------------------------------------------------------------- 2 early recalls


def test_a_recall_that_overtakes_its_deployment_is_kept_across_a_restart_and_ends_it(tmp_path: Path) -> None:
    """The recall of ``over`` (instructed 17:05) arrives before the deployment (instructed 17:04, a
    QoS 1 redelivery after a reconnect). It used to be refused ("no deployment to recall") and the
    deployment then held 8 h. Now the recall is accepted as pending once durable, survives a restart,
    and the deployment arriving at 17:06 ends at 17:05: the site is not cut; audited and counted."""
    db = tmp_path / "o.db"
    profile = _profile()
    recall_at = NOW + 5 * MIN
    issued = NOW + 4 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(profile, store, recorder)
        ack = loop.handle_as_deploy(_deploy("over", recall_at, recalled=True), recall_at)
        assert ack.status == "accepted", ack.reason
        assert "no deployment yet" in ack.reason and "issued at or before the recall" in ack.reason, ack.reason
        assert loop.counters["as_recall_early"] == 1
        assert 'hashflex_events_total{counter="as_recall_early"} 1.0' in _metrics(loop, recall_at)
        # A restart resumes the pending recall from the committed book (it was durable before the ack).
        book, _ = load_control_state(store, profile)
        restarted = _loop(profile, store, recorder, book=book, award_rrs=False)
        arrived = NOW + 6 * MIN
        dep = restarted.handle_as_deploy(_deploy("over", issued, 3960.0), arrived)
        assert dep.status == "accepted", dep.reason
        assert "recall" in dep.reason and recall_at.isoformat() in dep.reason, dep.reason
        deployment = restarted.book.as_deployments["over"]
        assert deployment.recalled and deployment.end == recall_at
        assert "AS:RRS:over" not in restarted.book.import_limits_at(arrived)
        assert _running(restarted) == 5, "ended before it arrived: nothing is shed"
        assert restarted.counters["as_recall_early_ended"] == 1
        assert restarted.counters.get("as_late", 0) == 0
        assert "over" not in restarted.book.as_early_recalls, "applied: the note is spent"
        # The recall redelivered gets its first answer; it does not end anything else.
        again = restarted.handle_as_deploy(_deploy("over", recall_at, recalled=True), arrived)
        assert again.reason == ack.reason
        restarted.tick(arrived + MIN)
        assert _running(restarted) == 5
        recorder.flush()
        recorder.close()
        assert recorder.failures == 0
    deploys = _records(db, "as_deploy")
    assert [r["message"]["recalled"] for r in deploys if r["message"]["deployment_id"] == "over"][:2] == [True, False]
    ended = [p for p in _records(db, "as_performance") if p.get("deployment_id") == "over"]
    assert ended and ended[-1]["ended_at"] == recall_at.isoformat()
    assert "recall" in ended[-1]["end_reason"] and recall_at.isoformat() in ended[-1]["end_reason"]


def test_a_recall_that_overtook_its_deployment_is_kept_durably_and_ends_it_across_a_restart(tmp_path: Path) -> None:
    """The recall of ``lost`` (instructed 17:05) arrives first: accepted as pending, durable before the
    ack, counted (``as_recall_early``). After a restart, the deployment (instructed 17:04:30, resent)
    arrives at 17:06: it ended at the recall, so nothing is cut and it does not hold to the backstop."""
    db = tmp_path / "e.db"
    profile = _profile()
    recall_at = NOW + 5 * MIN
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(profile, store, recorder)
        ack = loop.handle_as_deploy(_deploy("lost", recall_at, recalled=True), recall_at + SEC)
        assert ack.status == "accepted", ack.reason
        assert "no deployment yet" in ack.reason and "issued at or before the recall" in ack.reason, ack.reason
        assert loop.counters["as_recall_early"] == 1
        assert 'hashflex_events_total{counter="as_recall_early"} 1.0' in _metrics(loop, recall_at)
        book, _ = load_control_state(store, profile)  # committed before the ack
        restarted = _loop(profile, store, recorder, book=book, award_rrs=False, tick=False)
        restarted.tick(recall_at + 30 * SEC)
        assert _running(restarted) == 5
        arrived = NOW + 6 * MIN
        issued = recall_at - 30 * SEC
        late_ack = restarted.handle_as_deploy(_deploy("lost", issued, 3960.0), arrived)
        assert late_ack.status == "accepted", late_ack.reason
        assert "recalled" in late_ack.reason and recall_at.isoformat() in late_ack.reason, late_ack.reason
        deployment = restarted.book.as_deployments["lost"]
        assert deployment.recalled and deployment.end == recall_at
        for t in (arrived, arrived + MIN, issued + timedelta(hours=2)):
            assert "AS:RRS:lost" not in restarted.book.import_limits_at(t), t
        assert _running(restarted) == 5, "ended before it arrived: nothing to cut"
        restarted.tick(arrived + SEC)
        assert _running(restarted) == 5
        assert restarted.counters["as_recall_early_ended"] == 1
        assert 'hashflex_events_total{counter="as_recall_early_ended"} 1.0' in _metrics(restarted, arrived)
        assert "lost" not in load_control_state(store, profile)[0].as_early_recalls, "the note is used once"
        recorder.flush()
        recorder.close()
    acks = [p["ack"] for p in _records(db, "as_deploy") if p["message"]["deployment_id"] == "lost"]
    assert [a["status"] for a in acks] == ["accepted", "accepted"]
    ended = [p for p in _records(db, "as_performance") if p.get("deployment_id") == "lost"]
    assert ended and ended[-1]["ended_at"] == recall_at.isoformat() and "recall" in ended[-1]["end_reason"]


def test_a_recall_that_overtook_its_deployment_before_it_bound_cancels_it() -> None:
    """Recall dated 17:05; the deployment, dated 17:05 too but arriving 17:04:50 would bind from arrival;
    here it arrives later (17:05:20) dated at the recall: it binds nothing (cancelled)."""
    loop = _loop()
    recall_at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("same", recall_at, recalled=True), recall_at + SEC).status == "accepted"
    ack = loop.handle_as_deploy(_deploy("same", recall_at, 3960.0), recall_at + 20 * SEC)
    assert ack.status == "accepted" and "cancelled" in ack.reason, ack.reason
    deployment = loop.book.as_deployments["same"]
    assert deployment.end == deployment.binds_from
    assert _running(loop) == 5


def test_a_deployment_issued_after_an_early_recall_is_a_new_instruction_and_holds() -> None:
    """The recall (17:05) is older than the deployment arriving after it (instructed 17:06): the
    deployment holds and is cut, counted ``as_recall_early_older``, and its ack says the older recall
    was not applied. Its own recall ends it as any recall does. (Both files' tests of this name, one
    scenario: joined with both sets of assertions.)"""
    loop = _loop()
    recall_at = NOW + 5 * MIN
    assert loop.handle_as_deploy(_deploy("again", recall_at, recalled=True), recall_at + SEC).status == "accepted"
    issued = NOW + 6 * MIN
    ack = loop.handle_as_deploy(_deploy("again", issued, 3960.0), issued + SEC)
    assert ack.status == "accepted" and "older" in ack.reason, ack.reason
    assert ack.import_limit_kw == pytest.approx(5050.0 - 3960.0)
    assert not loop.book.as_deployments["again"].recalled
    for held_at in (issued + 30 * MIN, issued + timedelta(hours=2)):
        assert loop.book.import_limits_at(held_at)["AS:RRS:again"] == pytest.approx(1090.0), held_at
    assert _running(loop) == 1
    assert loop.counters["as_recall_early_older"] == 1 and loop.counters.get("as_recall_early_ended", 0) == 0
    assert "again" not in loop.book.as_early_recalls
    end_at = NOW + 40 * MIN
    assert loop.handle_as_deploy(_deploy("again", end_at, recalled=True), end_at).status == "accepted"
    assert "AS:RRS:again" not in loop.book.import_limits_at(end_at)

def test_an_early_recall_not_made_durable_is_refused_and_the_deployment_holds(tmp_path: Path) -> None:
    """Store failure: the pending recall cannot be kept, so it is refused (``store_unavailable``, not
    accepted, not counted ``as_recall_early``) and nothing remembers it: the deployment arriving next
    holds (when in doubt, curtail). (Joined with test_an_early_recall_is_accepted_only_once_durable,
    the same scenario.)"""
    with Store(tmp_path / "f.db") as store:
        loop = _loop(store=store)
        recall_at = NOW + 5 * MIN
        store.fail_commits("database or disk is full")
        ack = loop.handle_as_deploy(_deploy("x", recall_at, recalled=True), recall_at)
        assert ack.status == "rejected" and ack.reason.startswith("store_unavailable"), ack.reason
        assert "x" not in loop.book.as_early_recalls
        assert loop.counters.get("as_recall_early", 0) == 0
        store.fail_commits(None)
        assert loop.handle_as_deploy(_deploy("x", NOW + 4 * MIN, 3960.0), NOW + 6 * MIN).status == "accepted"
        assert "AS:RRS:x" in loop.book.import_limits_at(NOW + 7 * MIN)

def test_pending_recalls_are_bounded_by_max_hold_h_and_a_count() -> None:
    """A pending recall is kept only while a deployment it could end could still be in force (the
    backstop, ``max_hold_h`` from the recall) and at most ``EARLY_RECALLS_KEPT`` of them (the oldest
    are dropped first: a forgotten note lets a deployment hold, the safe side)."""
    from hashflex.control.limits_ancillary import EARLY_RECALLS_KEPT

    profile = _profile("  max_hold_h: 3\n")
    book = LimitsBook(profile)
    book, ack = book.decide_as_deploy(_deploy("a", NOW, recalled=True), 0.0, NOW)
    assert ack.status == "accepted" and "a" in book.as_early_recalls
    assert "a" in LimitsBook.from_dict(book.to_dict(), profile).as_early_recalls, "durable"
    later = NOW + timedelta(hours=3, seconds=1)
    book, _ = book.decide_as_deploy(_deploy("b", later, recalled=True), 0.0, later)
    assert set(book.as_early_recalls) == {"b"}
    for k in range(EARLY_RECALLS_KEPT + 5):
        book, _ = book.decide_as_deploy(_deploy(f"n{k}", later, recalled=True), 0.0, later)
    assert len(book.as_early_recalls) == EARLY_RECALLS_KEPT
    assert "b" not in book.as_early_recalls and f"n{EARLY_RECALLS_KEPT + 4}" in book.as_early_recalls


def test_early_recalls_are_bounded_by_the_backstop_and_a_count() -> None:
    """Notes older than ``max_hold_h`` are dropped (a deployment issued before them has reached its
    backstop), and at most ``EARLY_RECALLS_KEPT`` are kept, the oldest dropped first."""
    from hashflex.control.limits_ancillary import EARLY_RECALLS_KEPT

    profile = _profile()
    book = LimitsBook(profile)
    old = NOW - timedelta(hours=9)
    book, ack = book.decide_as_deploy(_deploy("old", old, recalled=True), 0.0, old)
    assert ack.status == "accepted" and "old" in book.as_early_recalls
    book, _ = book.decide_as_deploy(_deploy("new", NOW, recalled=True), 0.0, NOW)
    assert set(book.as_early_recalls) == {"new"}, "the 9 h old note is past the 8 h backstop"
    for k in range(EARLY_RECALLS_KEPT + 5):
        book, _ = book.decide_as_deploy(_deploy(f"n{k}", NOW, recalled=True), 0.0, NOW + k * SEC)
    assert len(book.as_early_recalls) == EARLY_RECALLS_KEPT
    assert "new" not in book.as_early_recalls and f"n{EARLY_RECALLS_KEPT + 4}" in book.as_early_recalls
    restored = LimitsBook.from_dict(book.to_dict(), profile)
    assert restored.as_early_recalls == book.as_early_recalls


def test_of_two_pending_recalls_the_one_at_or_after_the_deployment_ends_it() -> None:
    """Two recalls of ``two`` overtake it (17:02 and 17:05: e.g. one by MQTT, one by a deleted OpenADR
    event). The deployment instructed at 17:04 is issued at or before the 17:05 recall, so that recall
    ends it, whatever the earlier one says (older than it): nothing is cut. (Both files' tests of this
    scenario, joined.)"""
    loop = _loop()
    for at in (NOW + 2 * MIN, NOW + 5 * MIN):
        assert loop.handle_as_deploy(_deploy("two", at, recalled=True), at).status == "accepted"
    arrived = NOW + 6 * MIN
    ack = loop.handle_as_deploy(_deploy("two", NOW + 4 * MIN, 3960.0), arrived)
    assert ack.status == "accepted", ack.reason
    deployment = loop.book.as_deployments["two"]
    assert deployment.recalled and deployment.end == NOW + 5 * MIN, ack.reason
    assert "AS:RRS:two" not in loop.book.import_limits_at(arrived) and _running(loop) == 5

def test_an_early_recall_does_not_lift_a_newer_deployment_held_in_memory(tmp_path: Path) -> None:
    """A deployment instructed 17:06 could not be committed (store full): the site holds its cut in
    memory. A recall dated 17:05 then arrives (it was overtaken); it is older than the deployment held,
    so the cut stays (when in doubt, curtail); the resent deployment holds, durable."""
    with Store(tmp_path / "h.db") as store:
        loop = _loop(store=store)
        store.fail_commits("database or disk is full")
        ack = loop.handle_as_deploy(_deploy("n", NOW + 6 * MIN, 3960.0), NOW + 6 * MIN)
        assert ack.status == "rejected" and _running(loop) == 1
        store.fail_commits(None)
        recall = loop.handle_as_deploy(_deploy("n", NOW + 5 * MIN, recalled=True), NOW + 7 * MIN)
        assert recall.status == "accepted", recall.reason
        loop.tick(NOW + 8 * MIN)
        assert _running(loop) == 1, "the newer instruction's cut is not lifted by an older recall"
        again = loop.handle_as_deploy(_deploy("n", NOW + 6 * MIN, 3960.0), NOW + 9 * MIN)
        assert again.status == "accepted" and not loop.book.as_deployments["n"].recalled, again.reason
        assert "AS:RRS:n" in loop.book.import_limits_at(NOW + 10 * MIN)
