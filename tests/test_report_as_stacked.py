"""The AS evidence report measures each deployment against the limit the limits book enforced (issue 15,
H8): stacked deployments (a recall of one raises the other's limit by exactly its MW) and A₀, the
reserve awarded at the instruction or at the arrival, whichever is larger.

Every trail is written by the real control loop into a real store (inline HiGHS, simulated fleet, the
real audit recorder), on the SYNTHETIC test site of ``test_as_deployment_semantics``: 10 hydro
blocks of 1 MW, 10 kW each asleep (a block sheds 990 kW), energy at $200/MWh (only an award keeps
a block running); with n blocks running the import is 990 n + 100 kW. The metered load of each
interval is set to the limit the book enforced over it, read from ``LimitsBook.deployment_limit_kw``
during the run: a site exactly at its limit has no shortfall.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from test_as_deployment_semantics import (
    MIN,
    NOW,
    _award,
    _awarded_loop,
    _deploy,
    _loop,
    _running,
)

from hashflex.audit import AuditLog
from hashflex.control.records import AuditRecorder
from hashflex.report import REPORT_KINDS, build_report, report_from_records
from hashflex.store import Store

QUARTER = timedelta(minutes=15)


def _measure(loop, k: int, load_kw: float) -> None:
    """The interval NOW + k quarters metered at ``load_kw`` (SYNTHETIC meter reading)."""
    loop.record_measurement(NOW + k * QUARTER, 0.25, load_kw=load_kw, renewable_kw=0.0, hashrate_th_s=0.0,
                            noise={}, price_usd_mwh=200.0)


def _book_limits(loop, k: int) -> dict[str, float]:
    """Deployment id -> the limit the book enforces over the interval NOW + k quarters, kW (in force only)."""
    start = NOW + k * QUARTER
    book = loop.book
    return {d.deployment_id: book.deployment_limit_kw(d, start, start + QUARTER)
            for d in book.as_deployments.values() if d.in_force(start, start + QUARTER)}


def _stacked_trail(db: Path) -> dict[int, dict[str, float]]:
    """RRS 4,950 kW awarded (5 blocks, 5,050 kW). A sheds 1,980 kW at 17:01 (deadline 17:11), B 990 kW at
    17:03 (deadline 17:13) stacked on A: together 2,080 kW. A recalled at 17:30: B's limit rises by
    exactly A's 1,980 kW to 4,060 kW. Each interval is metered at the book's binding limit.

    Returns the book's limits per interval index (1: 17:15, 2: 17:30, 3: 17:45)."""
    book_limits: dict[int, dict[str, float]] = {}
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        a_at, b_at = NOW + MIN, NOW + 3 * MIN
        assert loop.handle_as_deploy(_deploy("A", a_at, 1980.0), a_at).status == "accepted"
        ack_b = loop.handle_as_deploy(_deploy("B", b_at, 990.0), b_at)
        assert ack_b.import_limit_kw == pytest.approx(2080.0), ack_b.reason
        loop.tick(b_at + MIN)
        assert _running(loop) == 2
        _measure(loop, 0, 3000.0)  # 17:00: no deadline passed yet, nothing binds
        book_limits[1] = _book_limits(loop, 1)
        _measure(loop, 1, min(book_limits[1].values()))
        recall_at = NOW + 2 * QUARTER
        assert loop.handle_as_deploy(_deploy("A", recall_at, recalled=True), recall_at).status == "accepted"
        loop.tick(recall_at + MIN)
        assert _running(loop) == 4  # B's 4,060 kW: four blocks run again
        for k in (2, 3):
            book_limits[k] = _book_limits(loop, k)
            _measure(loop, k, min(book_limits[k].values()))
        recorder.flush()
        recorder.close()
    # The book's rule, by hand: stacked, 5,050 − 1,980 − 990; after A's recall 5,050 − 990.
    assert book_limits[1] == {"A": pytest.approx(2080.0), "B": pytest.approx(2080.0)}
    assert book_limits[2] == {"B": pytest.approx(4060.0)} and book_limits[3] == {"B": pytest.approx(4060.0)}
    return book_limits


def _interval_limits(section: dict) -> dict[int, dict[str, float]]:
    """Interval index -> deployment id -> the report's limit for it over the interval, kW."""
    out: dict[int, dict[str, float]] = {}
    for interval in section["shortfall_intervals"]:
        k = int((pd.Timestamp(interval["interval_start"]) - pd.Timestamp(NOW)) / QUARTER)
        out[k] = {d["deployment_id"]: d["limit_kw"] for d in interval["deployments"]}
    return out


def test_after_a_recall_the_report_measures_the_later_deployment_against_the_limit_the_book_raised(
        tmp_path: Path) -> None:
    """Failed before: the report kept B's limit at its acked 2,080 kW after A's recall (the book enforced
    4,060 kW): a site metered at 4,060 kW showed 990 kW short for B, and A's 17:15 limit was its own
    3,070 kW, not the 2,080 kW the book held it to."""
    db = tmp_path / "stacked.db"
    book_limits = _stacked_trail(db)
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    assert _interval_limits(section) == {k: {d: pytest.approx(v, abs=0.01) for d, v in limits.items()}
                                         for k, limits in book_limits.items()}
    for interval in section["shortfall_intervals"]:
        assert interval["shortfall_kw"] == pytest.approx(0.0, abs=0.01), interval
    rows = {r["deployment_id"]: r for r in section["deployments"]}
    assert rows["B"]["metered_shortfall_mw"] == pytest.approx(0.0, abs=1e-6)
    assert rows["A"]["metered_shortfall_mw"] == pytest.approx(0.0, abs=1e-6)
    assert section["shortfall_count"] == 0
    # B's mean limit over its three intervals is the book's: (2,080 + 4,060 + 4,060) / 3.
    assert rows["B"]["metered_limit_kw"] == pytest.approx((2080.0 + 4060.0 + 4060.0) / 3, abs=0.01)
    # At its command B was held to the ack's limit, stacked on A (5,050 − 1,980 − 990).
    assert rows["B"]["commanded_limit_kw"] == pytest.approx(2080.0)
    assert rows["B"]["shortfall_mw"] == pytest.approx(0.0)


def test_a_trail_written_before_the_stacking_rule_keeps_the_own_limit(tmp_path: Path) -> None:
    """The same trail with ``held_at_instruction_kw`` taken out of the performance records (a trail
    written before the rule): as the book does for such deployments, each keeps its own limit
    (the ack's), so B stays at 2,080 kW after A's recall and the site at 4,060 kW is
    990 kW short. The rule is chosen by the key, not by the report's wish."""
    db = tmp_path / "legacy.db"
    _stacked_trail(db)
    with AuditLog(db, readonly=True) as log:
        records = log.records(kinds=REPORT_KINDS)
    for record in records:
        if record.kind == "as_performance":
            record.payload.pop("held_at_instruction_kw", None)
    audit = {"ok": True, "records": len(records), "head_seq": records[-1].seq, "head_hash": records[-1].hash,
             "first_bad_seq": None, "problem": None, "signed_head": None}
    section = report_from_records(records, pd.Timestamp("2024-06-03T17:00Z"), pd.Timestamp("2024-06-03T18:00Z"),
                                  audit=audit)["ancillary"]
    limits = _interval_limits(section)
    assert limits[1] == {"A": pytest.approx(3070.0), "B": pytest.approx(2080.0)}
    assert limits[2] == {"B": pytest.approx(2080.0)}
    rows = {r["deployment_id"]: r for r in section["deployments"]}
    assert rows["B"]["metered_shortfall_mw"] == pytest.approx((0.0 + 0.99 + 0.99) / 3, abs=1e-3)


def test_a_deployment_instructed_before_an_award_started_has_the_books_a0(tmp_path: Path) -> None:
    """Nothing awarded before 17:10; RRS 990 kW awarded 17:10–20:00 (1 block, 1,090 kW). A deployment of
    990 kW instructed at 17:08 arrives at 17:12: the book's A₀ is the award at the arrival, 990 kW (the
    load drawn then already runs for it). Failed before: the report's ``awarded_mw`` counted the award
    at 17:08 alone (0 MW, and no delivered_vs_awarded_pct). Its interval limits are the book's."""
    db = tmp_path / "a0.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(None, store, recorder)
        start = NOW + 10 * MIN
        assert loop.handle_as_award(_award("rrs", "RRS", 990.0, start=start), NOW).status == "accepted"
        loop.tick(start)
        assert _running(loop) == 1
        issued, arrived = NOW + 8 * MIN, NOW + 12 * MIN
        assert loop.handle_as_deploy(_deploy("late", issued, 990.0), arrived).status == "accepted"
        book_a0_kw = loop.book.as_deployments["late"].awarded_at_instruction_kw
        assert book_a0_kw == pytest.approx(990.0)
        _measure(loop, 0, 1090.0)
        book_limits = {k: _book_limits(loop, k) for k in (1, 2)}
        for k in (1, 2):
            _measure(loop, k, book_limits[k]["late"])
        recorder.flush()
        recorder.close()
    section = build_report(db, "2024-06-03T17:00Z", "2024-06-03T18:00Z")["ancillary"]
    (row,) = [r for r in section["deployments"] if r["deployment_id"] == "late"]
    assert row["book_awarded_at_instruction_mw"] == pytest.approx(book_a0_kw / 1000.0)
    assert row["awarded_mw"] == pytest.approx(book_a0_kw / 1000.0)  # one product: the book's A₀
    assert row["delivered_vs_awarded_pct"] is not None
    # Its deadline is 17:18 (RRS: 10 minutes from 17:08): the 17:30 interval is the first it binds.
    assert _interval_limits(section) == {2: {"late": pytest.approx(book_limits[2]["late"], abs=0.01)}}
    assert book_limits[2]["late"] == pytest.approx(100.0)  # 1,090 − 990, the award carried by the baseline
    assert row["metered_shortfall_mw"] == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------ H8 item 3: exact reserve held


def _payloads(db: Path, kind: str) -> list[dict]:
    with AuditLog(db, readonly=True) as log:
        return [r.payload for r in log.records(kinds=(kind,))]


def test_the_loop_records_the_sheddable_load_per_group_with_each_measurement_and_hold_record(
        tmp_path: Path) -> None:
    """Five blocks run for RRS 4,950 kW: the measurement records 5 × (1,000 − 10) = 4,950 kW sheddable
    in ``hydro``; after a 1,980 kW deployment, 3 blocks: 2,970 kW. On a site where nothing runs (no
    plan) the hold-short record says 0 kW of 4,950 held and carries the same figure (0 kW). Failed
    before: no ``reserve_sheddable_kw`` in either record (the report estimated it from the metered
    load where an award changed mid-interval)."""
    db = tmp_path / "sheddable.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        _measure(loop, 0, 5050.0)
        at = NOW + QUARTER + MIN
        assert loop.handle_as_deploy(_deploy("cut", at, 1980.0), at).status == "accepted"
        assert _running(loop) == 3
        _measure(loop, 1, 3070.0)
        recorder.flush()
        recorder.close()
    measured = _payloads(db, "measurement")
    assert [m["reserve_sheddable_kw"] for m in measured] == [{"hydro": pytest.approx(4950.0)},
                                                             {"hydro": pytest.approx(2970.0)}]
    db = tmp_path / "idle.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _loop(None, store, recorder)
        assert loop.handle_as_award(_award("rrs", "RRS", 4950.0), NOW).status == "accepted"
        _measure(loop, 0, 100.0)
        recorder.flush()
        recorder.close()
    (short,) = _payloads(db, "reserve_hold_short")
    assert short["held_kw"] == pytest.approx(0.0) and short["reserve_sheddable_kw"] == {"hydro": 0.0}
    assert _payloads(db, "measurement")[0]["reserve_sheddable_kw"] == {"hydro": 0.0}


def test_an_award_withdrawn_mid_interval_is_held_by_the_loops_recorded_figure_not_an_estimate(
        tmp_path: Path) -> None:
    """RRS 4,950 kW at $150/MW-h, withdrawn at 17:05; five blocks run all interval (the loop records
    4,950 kW sheddable) while the meter reads 1,000 kW (SYNTHETIC: the meter and the fleet disagree).
    The loop's own figure is recorded, so no interval is estimated; since H1 (issue 15: units
    commanded but not drawing hold nothing) that figure is capped by the load drawn, 1,000 − 100 idle
    = 900 kW. Since H6 the loop holds each award revision while in force: obligation 4,950 × 5/15 =
    1,650 kW, 750 kW short, clawed back 0.75 × $150 × 0.25 h = $28.125, its record and the report's
    (before H6 the loop, seeing no award when it measured, wrote no record; before H1 the commanded
    4,950 kW held: $0)."""
    db = tmp_path / "withdrawn.db"
    with Store(db) as store:
        recorder = AuditRecorder(store)
        loop = _awarded_loop(None, store, recorder)
        award = _award("rrs", "RRS", 4950.0, revision=1).model_copy(update={"price_usd_mw_h": 150.0})
        assert loop.handle_as_award(award, NOW).status == "accepted"
        withdrawal = award.model_copy(update={"revision": 2, "reserve_kw": 0.0})
        assert loop.handle_as_award(withdrawal, NOW + 5 * MIN).status == "accepted"
        assert _running(loop) == 5
        _measure(loop, 0, 1000.0)
        recorder.flush()
        recorder.close()
    (short,) = _payloads(db, "reserve_hold_short")
    assert short["obligation_kw"] == pytest.approx(1650.0) and short["short_kw"] == pytest.approx(750.0)
    economics = build_report(db, "2024-06-03T17:00Z", "2024-06-03T17:15Z")["economics"]
    assert economics["reserve_payment_usd"] == pytest.approx(4.95 * 150 * 5 / 60, abs=0.01)
    assert economics["reserve_estimated_hold_intervals"] == 0
    assert _payloads(db, "measurement")[0]["reserve_sheddable_kw"] == {"hydro": pytest.approx(900.0)}
    assert economics["reserve_clawback_usd"] == pytest.approx(0.75 * 150 * 0.25, abs=0.01)
